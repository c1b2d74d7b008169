"""Stage costs (SOLVERS.md §2 A.3, §4 C.0): how the chain solvers (fused-dp, pipeline-dp, brute force) cost
ordered stages, the detail behind their caches (`problem.py`). Every plan they return is costed again by the
task-graph evaluator (`evaluate.py`), which gives exactly these numbers on the task graph
`plan.plan_from_stages` makes of the stages (tests/unit/test_evaluator.py checks it over the zoo).

Single-request latency. Stages run one after the other; stage s starts when
the whole tensor it reads is assembled at its *holder* device h_s, and ends
when its output is assembled at h_{s+1}. Within a stage, in an idle system:

- scatter: h_s sends each partition its input region, in partition order,
  one FIFO per NIC direction (`switched`) or one FIFO for everything (`shared`);
- compute: each partition starts when its input has arrived and its device is
  free (a device's partitions queue in arrival order);
- gather: in order of compute completion, each partition sends its output
  region to h_{s+1}. A partition on h_s receives nothing. One on h_{s+1}
  hands its output to the process there in a local message: no wire and no
  NIC queue, but both ends' software time (`Cluster.local_s`), as the runtime
  sends it from one partition process to the next.

The stage time is the last arrival at h_{s+1}; latency is the sum of stage
times (the client is co-located with the master [R]).

Routing [R] (A.3 gathers at the master between segments; we keep that and
avoid pointless hops): h_0 = h_S = master; an interior holder is the device
of the stage that starts there when that stage has one partition (its input
goes straight to it: a pipeline ships u→v directly, as PipeEdge does), and
the master otherwise (a split stage is scattered by the master, through a
relay task in the task graph).

Pipelined throughput is the bottleneck law: with U_r the busy time per
request of each resource r (a device's compute, a NIC direction, or the
shared medium), Θ = 1 / max_r U_r.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgepart.geometry import Region, backprop, required_input
from edgepart.graph.layer_graph import INPUT, LayerGraph
from edgepart.graph.ops import OpKind
from edgepart.plan import Stage, StageCost, StagedPlan, StagedPredicted
from edgepart.planner.cluster import Cluster
from edgepart.planner.errors import PlanningError


@dataclass(frozen=True)
class PartWork:
    """What one partition costs, independent of where its data comes from."""

    device: str
    in_bytes: float
    out_bytes: float
    compute_s: float


@dataclass(frozen=True)
class PartTimes:
    """When one partition's transfers and compute happen, relative to its stage's start."""

    device: str
    scatter: tuple[float, float] | None  # (start, end) of its input transfer; None when local
    compute: tuple[float, float]
    gather: tuple[float, float] | None


@dataclass(frozen=True)
class StageSchedule:
    time_s: float
    scatter_s: float  # last input arrival
    compute_s: float  # longest partition compute
    gather_s: float  # from the last compute completion to the stage end
    parts: tuple[PartTimes, ...]
    source: str  # holder the stage reads from
    sink: str  # holder its output goes to


def dtype_at(graph: LayerGraph, position: int) -> int:
    producer = graph.producer_at(position)
    return 4 if producer == INPUT else graph.layers[producer].dtype_bytes


def part_work(graph: LayerGraph, cluster: Cluster, start: int, stop: int, device: str,
              output_region: Region) -> PartWork:
    """Bytes in, bytes out and predicted compute of one partition, from the exact geometry."""
    dev = cluster.device(device)
    geometry = backprop(graph, start, stop, output_region)
    compute = sum(dev.layer_time(graph.layers[i], region, graph.batch) for i, region in geometry.regions.items())
    in_bytes = geometry.input_region.size * graph.batch * dtype_at(graph, start)
    out_bytes = output_region.size * graph.batch * dtype_at(graph, stop)
    return PartWork(device, float(in_bytes), float(out_bytes), compute)


def stage_work(graph: LayerGraph, cluster: Cluster, stage: Stage) -> tuple[PartWork, ...]:
    return tuple(part_work(graph, cluster, stage.start, stage.stop, p.device, p.output_region)
                 for p in stage.partitions)


def holders(stages: Sequence[Sequence[str]], master: str) -> list[str]:
    """Holder device at each stage boundary (len = stages + 1) from each stage's partition devices."""
    result = [master]
    for devices in stages[1:]:
        result.append(devices[0] if len(devices) == 1 else master)
    result.append(master)
    return result


@dataclass
class _Front:
    """State of a stage after its scatter and compute phases; gathers are appended per sink."""

    ready: list[float]
    scatter: list[tuple[float, float] | None]
    done: list[float]
    compute: list[tuple[float, float]]
    gather_order: list[int]
    send: dict[str, float]
    recv: dict[str, float]
    medium: float


def _scatter_compute(parts: Sequence[PartWork], source: str, cluster: Cluster) -> _Front:
    shared = cluster.medium == "shared"
    send: dict[str, float] = {}
    recv: dict[str, float] = {}
    medium = 0.0
    count = len(parts)
    ready = [0.0] * count
    scatter: list[tuple[float, float] | None] = [None] * count
    for i, p in enumerate(parts):
        if p.device == source or p.in_bytes <= 0:
            continue
        duration = cluster.tx(source, p.device, p.in_bytes)
        start = medium if shared else max(send.get(source, 0.0), recv.get(p.device, 0.0))
        end = start + duration
        if shared:
            medium = end
        else:
            send[source] = recv[p.device] = end
        ready[i] = end
        scatter[i] = (start, end)
    free: dict[str, float] = {}
    done = [0.0] * count
    rank = [0] * count
    compute: list[tuple[float, float]] = [(0.0, 0.0)] * count
    for r, i in enumerate(sorted(range(count), key=lambda k: (ready[k], k))):
        p = parts[i]
        start = max(ready[i], free.get(p.device, 0.0))
        done[i] = free[p.device] = start + p.compute_s
        rank[i] = r
        compute[i] = (start, done[i])
    order = sorted(range(count), key=lambda k: (done[k], rank[k]))
    return _Front(ready, scatter, done, compute, order, send, recv, medium)


def _gather(parts: Sequence[PartWork], front: _Front, sink: str, cluster: Cluster,
            record: list[tuple[float, float] | None] | None = None) -> float:
    shared = cluster.medium == "shared"
    medium = front.medium
    send = front.send.get
    recv_sink = front.recv.get(sink, 0.0)
    busy_send: dict[str, float] = {}
    finish = 0.0
    for i in front.gather_order:
        p = parts[i]
        done = front.done[i]
        if p.out_bytes <= 0:
            finish = max(finish, done)
            continue
        if p.device == sink:
            finish = max(finish, done + cluster.local_s(sink))
            continue
        duration = cluster.tx(p.device, sink, p.out_bytes)
        if shared:
            start = max(done, medium)
            medium = start + duration
        else:
            start = max(done, busy_send.get(p.device, send(p.device, 0.0)), recv_sink)
            busy_send[p.device] = recv_sink = start + duration
        if record is not None:
            record[i] = (start, start + duration)
        finish = max(finish, start + duration)
    return finish


def schedule_stage(parts: Sequence[PartWork], source: str, sink: str, cluster: Cluster) -> StageSchedule:
    """The A.3 timeline of one stage in an idle system (see the module docstring)."""
    front = _scatter_compute(parts, source, cluster)
    gather: list[tuple[float, float] | None] = [None] * len(parts)
    finish = _gather(parts, front, sink, cluster, gather)
    last_compute = max(front.done, default=0.0)
    return StageSchedule(
        time_s=finish, scatter_s=max(front.ready, default=0.0),
        compute_s=max((p.compute_s for p in parts), default=0.0), gather_s=finish - last_compute,
        parts=tuple(PartTimes(p.device, front.scatter[i], front.compute[i], gather[i])
                    for i, p in enumerate(parts)),
        source=source, sink=sink,
    )


def stage_time(parts: Sequence[PartWork], source: str, sink: str, cluster: Cluster) -> float:
    return schedule_stage(parts, source, sink, cluster).time_s


def stage_times(parts: Sequence[PartWork], source: str, sinks: Sequence[str], cluster: Cluster) -> list[float]:
    """`stage_time` for several sinks at once (the scatter and compute phases do not depend on the sink)."""
    front = _scatter_compute(parts, source, cluster)
    return [_gather(parts, front, sink, cluster) for sink in sinks]


def busy_times(works: Sequence[Sequence[PartWork]], route: Sequence[str], cluster: Cluster) -> dict[str, float]:
    """Busy seconds per request of every resource (C.0): compute:<dev>, send:<dev>, recv:<dev> or medium."""
    busy: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        busy[key] = busy.get(key, 0.0) + seconds

    def transfer(u: str, v: str, nbytes: float) -> None:
        if u == v or nbytes <= 0:
            return
        t = cluster.tx(u, v, nbytes)
        if cluster.medium == "shared":
            add("medium", t)
        else:
            add(f"send:{u}", t)
            add(f"recv:{v}", t)

    for s, parts in enumerate(works):
        for p in parts:
            transfer(route[s], p.device, p.in_bytes)
            add(f"compute:{p.device}", p.compute_s)
            transfer(p.device, route[s + 1], p.out_bytes)
    return busy


def throughput_of(busy: dict[str, float]) -> float:
    bottleneck = max(busy.values(), default=0.0)
    return 1.0 / bottleneck if bottleneck > 0 else math.inf


@dataclass(frozen=True)
class StagedEvaluation:
    """Everything the stage costs give for one staged plan (the summary plus the timelines)."""

    latency_s: float
    throughput_per_s: float
    stages: tuple[StageSchedule, ...]
    busy: dict[str, float]
    works: tuple[tuple[PartWork, ...], ...]

    @property
    def bottleneck(self) -> tuple[str, float]:
        key = max(self.busy, key=lambda k: self.busy[k])
        return key, self.busy[key]

    def predicted(self) -> StagedPredicted:
        return StagedPredicted(
            latency_s=self.latency_s,
            throughput_per_s=self.throughput_per_s if math.isfinite(self.throughput_per_s) else 0.0,
            stages=tuple(StageCost(index=i, scatter_s=s.scatter_s, compute_s=s.compute_s, gather_s=s.gather_s,
                                   time_s=s.time_s) for i, s in enumerate(self.stages)),
        )


def evaluate_works(works: Sequence[Sequence[PartWork]], cluster: Cluster) -> StagedEvaluation:
    route = holders([[p.device for p in parts] for parts in works], cluster.master)
    schedules = tuple(schedule_stage(parts, route[s], route[s + 1], cluster) for s, parts in enumerate(works))
    busy = busy_times(works, route, cluster)
    return StagedEvaluation(sum(s.time_s for s in schedules), throughput_of(busy), schedules, busy,
                      tuple(tuple(p) for p in works))


def _check_devices(plan: StagedPlan, cluster: Cluster) -> None:
    known = set(cluster.names)
    for stage in plan.stages:
        for part in stage.partitions:
            if part.device not in known:
                raise PlanningError(f"stage {stage.index} partition {part.id}: device {part.device!r} is not in "
                                    f"the cluster {list(cluster.names)}")


def evaluate_staged(plan: StagedPlan, graph: LayerGraph, cluster: Cluster) -> StagedEvaluation:
    _check_devices(plan, cluster)
    return evaluate_works([stage_work(graph, cluster, stage) for stage in plan.stages], cluster)


# ------------------------------------------------------------------ memory

_SLICED_PARAMS = frozenset({OpKind.CONV, OpKind.FC, OpKind.BN})


def partition_memory(graph: LayerGraph, start: int, stop: int, output_region: Region) -> int:
    """Bytes one partition holds [R]: its weights (sliced with its channels), its input and output
    buffers, and the largest working set of one layer (the layer's inputs and output tiles)."""
    geometry = backprop(graph, start, stop, output_region)
    batch = graph.batch
    weights = 0.0
    peak = 0
    for i, region in geometry.regions.items():
        layer = graph.layers[i]
        share = 1.0
        if layer.op in _SLICED_PARAMS and layer.out_shape:
            share = (region.channels[1] - region.channels[0]) / layer.out_shape[0]
        weights += layer.weight_bytes * share
        ins = sum(required_input(layer, region, a).size for a in range(len(layer.preds)))
        peak = max(peak, (ins + region.size) * batch * layer.dtype_bytes)
    buffers = (geometry.input_region.size * dtype_at(graph, start)
               + output_region.size * dtype_at(graph, stop)) * batch
    return math.ceil(weights) + buffers + peak


def staged_memory_use(plan: StagedPlan, graph: LayerGraph) -> dict[str, int]:
    """Bytes each device holds: every partition placed on it stays loaded."""
    use: dict[str, int] = {}
    for stage in plan.stages:
        for part in stage.partitions:
            need = partition_memory(graph, stage.start, stage.stop, part.output_region)
            use[part.device] = use.get(part.device, 0) + need
    return use


def check_staged_memory(plan: StagedPlan, graph: LayerGraph, cluster: Cluster) -> None:
    """Raise PlanningError naming every device whose partitions do not fit its memory."""
    raise_if_over(plan.solver, staged_memory_use(plan, graph), cluster)


def raise_if_over(solver: str, use: dict[str, int], cluster: Cluster) -> None:
    over = []
    for device, need in use.items():
        capacity = cluster.device(device).memory_bytes
        if need > capacity:
            over.append(f"{device} needs {need / 2**20:.1f} MiB but has {capacity / 2**20:.1f} MiB")
    if over:
        raise PlanningError(f"{solver} plan does not fit in memory: " + "; ".join(over))
