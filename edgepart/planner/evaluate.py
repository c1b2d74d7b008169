"""The task-graph evaluator: the one cost oracle every solver's plan is costed by.

One request of every model of the plan is issued at t = 0 in an idle system,
and the task graph is list-scheduled:

- a task is *ready* when every region it reads has arrived; a device runs one
  task at a time and, when free, starts the ready task with the lowest
  `priority` (ties: plan order). A relay (a task that computes nothing) takes
  no device time;
- a task's compute is the sum of `Device.layer_time` over the regions the
  exact geometry says each of its layers must produce;
- when a task completes it sends every consumer the region it reads (and the
  model's output tasks send their output to the model's source), in plan
  order of the consumers. A transfer from device u to v holds u's send FIFO
  and v's receive FIFO (`switched`) or the one medium (`shared`) for
  `Cluster.tx(u, v, bytes)`: the link's latency, bytes / bandwidth and both
  ends' message software time. The model input starts at its source at t = 0
  (transfers issued in plan order);
- a message between two processes on one device crosses no wire but costs
  both ends' software time (`Cluster.local_s`); what a relay or the input
  holder hands to a task on its own device costs nothing more (the holder's
  buffer, as the stage costs charge it), and an empty region (a trigger for a
  tile that lies wholly in padding) arrives at once;
- a transfer the plan encodes (a codec, float16 on the wire) carries the
  encoded bytes and holds its link for the codec's CPU time too
  (`codec_cost.wire_cost`: compress on the sender, decompress on the receiver);
- in a plan that asks for turns (`meta.turns`, the partial-offloading
  plans), each compute task of a device waits for the one before it in its
  device's chain (`plan.device_turns`) to have completed and told it so: a
  *turn*, a local message (`Cluster.local_s`) with no data.

Latency of a model = the last arrival of its output at its source; the plan's
latency is the makespan over models. Throughput is the bottleneck law over the
busy time per request of every resource (a device's compute, a NIC direction,
or the shared medium). On the task graph `plan_from_stages` makes of a chain
solver's stages these are exactly the stage costs (`stage_costs.py`).

`schedule` works on a precomputed `CostGraph` (device and seconds per task,
bytes per edge), so search-based solvers can call it in their inner loop.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

from edgepart.geometry import backprop
from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import (
    INPUT,
    Plan,
    Predicted,
    StageCost,
    Task,
    TaskInput,
    TaskTiming,
    device_turns,
)
from edgepart.planner.cluster import Cluster
from edgepart.planner.codec_cost import wire_cost
from edgepart.planner.errors import PlanningError
from edgepart.planner.stage_costs import dtype_at, partition_memory, raise_if_over

SOURCE = -1  # edge endpoint: the model's source device (input holder, output sink)


@dataclass(frozen=True)
class CostTask:
    id: str
    device: str
    compute_s: float
    priority: int = 0
    relay: bool = False  # takes no device time; hands over on its device for free
    model: str = ""


@dataclass(frozen=True)
class CostEdge:
    src: int  # task index, or SOURCE (the model input at its source device)
    dst: int  # task index, or SOURCE (the model output to its source device)
    nbytes: float  # on the wire: after the plan's codec and wire dtype
    model: str = ""
    cpu_s: float = 0.0  # compress on the sender plus decompress on the receiver (a link crossed only)
    turn: bool = False  # a turn between two tasks of one device: a local message that carries no data


@dataclass(frozen=True)
class CostGraph:
    """What the scheduler needs: tasks (device, seconds), edges (bytes) and each model's source device."""

    tasks: tuple[CostTask, ...]
    edges: tuple[CostEdge, ...]
    sources: Mapping[str, str]


@dataclass(frozen=True)
class Transfer:
    edge: int
    source: str
    target: str
    start_s: float
    end_s: float
    wire: bool  # crossed a link (False: a local message or a free hand-over)


@dataclass(frozen=True)
class Schedule:
    ready: tuple[float, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    transfers: tuple[Transfer, ...]
    latency: dict[str, float]  # per model: output assembled at its source
    busy: dict[str, float]  # busy seconds per request of every resource

    @property
    def makespan(self) -> float:
        return max(self.latency.values(), default=0.0)


def transfer_cost(graph: CostGraph, edge: CostEdge, cluster: Cluster) -> tuple[str, str, float, bool]:
    """(sender device, receiver device, seconds, crosses a wire) of one edge."""
    src_dev = graph.sources[edge.model] if edge.src == SOURCE else graph.tasks[edge.src].device
    dst_dev = graph.sources[edge.model] if edge.dst == SOURCE else graph.tasks[edge.dst].device
    if edge.turn:
        return src_dev, dst_dev, cluster.local_s(src_dev), False
    if edge.nbytes <= 0:
        return src_dev, dst_dev, 0.0, False
    if src_dev == dst_dev:
        holder = edge.src == SOURCE or graph.tasks[edge.src].relay
        return src_dev, dst_dev, 0.0 if holder else cluster.local_s(src_dev), False
    return src_dev, dst_dev, cluster.tx(src_dev, dst_dev, edge.nbytes) + edge.cpu_s, True


def busy_of(graph: CostGraph, cluster: Cluster) -> dict[str, float]:
    """Busy seconds per request of every resource (C.0): compute:<dev>, send:<dev>, recv:<dev> or medium."""
    busy: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        busy[key] = busy.get(key, 0.0) + seconds

    for task in graph.tasks:
        if not task.relay:
            add(f"compute:{task.device}", task.compute_s)
    for edge in graph.edges:
        u, v, seconds, wire = transfer_cost(graph, edge, cluster)
        if not wire:
            continue
        if cluster.medium == "shared":
            add("medium", seconds)
        else:
            add(f"send:{u}", seconds)
            add(f"recv:{v}", seconds)
    return busy


def schedule(graph: CostGraph, cluster: Cluster) -> Schedule:
    """List-schedule one request of every model (see the module docstring)."""
    tasks = graph.tasks
    count = len(tasks)
    incoming = [0] * count
    outgoing: list[list[int]] = [[] for _ in range(count)]
    initial: list[int] = []
    for e, edge in enumerate(graph.edges):
        if edge.dst != SOURCE:
            incoming[edge.dst] += 1
        if edge.src == SOURCE:
            initial.append(e)
        else:
            outgoing[edge.src].append(e)
    if any(n == 0 for n in incoming):
        missing = [tasks[i].id for i, n in enumerate(incoming) if n == 0]
        raise PlanningError(f"tasks {missing} read nothing")
    ready = [0.0] * count
    start = [math.nan] * count
    end = [math.nan] * count
    arrived = [0] * count
    latency: dict[str, float] = {}
    transfers: list[Transfer] = []
    shared = cluster.medium == "shared"
    send_free: dict[str, float] = {}
    recv_free: dict[str, float] = {}
    medium_free = 0.0
    device_free: dict[str, float] = {}
    queues: dict[str, list[tuple[int, int]]] = {}
    # events: (time, kind, priority, index); kind 0 = a task completes, 1 = a task is ready
    events: list[tuple[float, int, int, int]] = []

    def issue(e: int, now: float) -> None:
        nonlocal medium_free
        edge = graph.edges[e]
        u, v, seconds, wire = transfer_cost(graph, edge, cluster)
        begin = now
        if wire:
            if shared:
                begin = max(now, medium_free)
                medium_free = begin + seconds
            else:
                begin = max(now, send_free.get(u, 0.0), recv_free.get(v, 0.0))
                send_free[u] = recv_free[v] = begin + seconds
        finish = begin + seconds
        transfers.append(Transfer(e, u, v, begin, finish, wire))
        if edge.dst == SOURCE:
            latency[edge.model] = max(latency.get(edge.model, 0.0), finish)
            return
        d = edge.dst
        ready[d] = max(ready[d], finish)
        arrived[d] += 1
        if arrived[d] == incoming[d]:
            heapq.heappush(events, (ready[d], 1, tasks[d].priority, d))

    for e in initial:
        issue(e, 0.0)
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, kind, _, i = heapq.heappop(events)
            task = tasks[i]
            if kind == 0:
                for e in outgoing[i]:
                    issue(e, now)
            elif task.relay:
                start[i] = end[i] = now
                heapq.heappush(events, (now, 0, task.priority, i))
            else:
                heapq.heappush(queues.setdefault(task.device, []), (task.priority, i))
        for device, queue in queues.items():
            if queue and device_free.get(device, 0.0) <= now:
                _, i = heapq.heappop(queue)
                start[i] = now
                end[i] = device_free[device] = now + tasks[i].compute_s
                heapq.heappush(events, (end[i], 0, tasks[i].priority, i))
    unfinished = [tasks[i].id for i in range(count) if math.isnan(end[i])]
    if unfinished:
        raise PlanningError(f"tasks {unfinished[:5]} never run: the task graph has a cycle")
    return Schedule(tuple(ready), tuple(start), tuple(end), tuple(transfers), latency, busy_of(graph, cluster))


# ------------------------------------------------------------------ plans


def _graphs_for(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph]) -> dict[str, LayerGraph]:
    if isinstance(graphs, LayerGraph):
        if len(plan.models) != 1:
            raise PlanningError(f"the plan has {len(plan.models)} models; give a graph for each")
        return {plan.models[0].id: graphs}
    return dict(graphs)


def task_compute(task: Task, graph: LayerGraph, cluster: Cluster) -> float:
    if task.relay:
        return 0.0
    device = cluster.device(task.device)
    geometry = backprop(graph, task.start, task.stop, task.output)
    return sum(device.layer_time(graph.layers[i], region, graph.batch) for i, region in geometry.regions.items())


def cost_graph(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster) -> CostGraph:
    """The plan's tasks and edges with their predicted seconds and bytes on `cluster`."""
    by_model = _graphs_for(plan, graphs)
    known = set(cluster.names)
    for task in plan.tasks:
        if task.device not in known:
            raise PlanningError(f"task {task.id}: device {task.device!r} is not in the cluster {list(cluster.names)}")
    index = {t.id: i for i, t in enumerate(plan.tasks)}
    tasks = tuple(CostTask(t.id, t.device, task_compute(t, by_model[t.model], cluster), t.priority, t.relay,
                           t.model) for t in plan.tasks)
    sources = {m.id: m.source or plan.master for m in plan.models}

    def edge(src: int, dst: int, task: Task, item: TaskInput) -> CostEdge:
        graph = by_model[task.model]
        width = dtype_at(graph, task.start)
        sender = sources[task.model] if src == SOURCE else tasks[src].device
        send_speed = cluster.device(sender).speed if sender in known else 1.0  # unknown: refused below
        cost = wire_cost(float(item.region.size * width * graph.batch), task.start, item, send_speed,
                         cluster.device(task.device).speed, dtype_bytes=width)
        return CostEdge(src, dst, cost.nbytes, task.model, cost.cpu_s)

    edges: list[CostEdge] = []
    for i, task in enumerate(plan.tasks):
        edges.extend(edge(SOURCE, i, task, item) for item in task.inputs if item.source == INPUT)
    # a producer's sends, in plan order of its consumers; then the model outputs
    for i, task in enumerate(plan.tasks):
        edges.extend(edge(index[item.source], i, task, item) for item in task.inputs if item.source != INPUT)
    for mid, ids in plan.outputs.items():
        graph = by_model[mid]
        width = graph.batch * dtype_at(graph, len(graph))
        for tid in ids:
            edges.append(CostEdge(index[tid], SOURCE, float(plan.task(tid).output.size * width), mid))
    for tid, (before, _) in device_turns(plan).items():
        if before is not None:
            edges.append(CostEdge(index[before], index[tid], 0.0, plan.task(tid).model, turn=True))
    for mid, device in sources.items():
        if device not in known:
            raise PlanningError(f"model {mid}: its source {device!r} is not in the cluster {list(cluster.names)}")
    return CostGraph(tasks, _issue_order(edges), sources)


def _issue_order(edges: list[CostEdge]) -> tuple[CostEdge, ...]:
    """Input edges first (issued at t = 0 in plan order), then each producer's edges in consumer order."""
    return tuple(sorted(edges, key=lambda e: (e.src != SOURCE, e.dst == SOURCE)))


@dataclass(frozen=True)
class Evaluation:
    """Everything the evaluator computes for one plan: the `Predicted` summary and the timeline."""

    plan: Plan
    graph: CostGraph
    schedule: Schedule

    @property
    def latency_s(self) -> float:
        return self.schedule.makespan

    @property
    def throughput_per_s(self) -> float:
        return throughput_of(self.schedule.busy)

    @property
    def busy(self) -> dict[str, float]:
        return self.schedule.busy

    @property
    def bottleneck(self) -> tuple[str, float]:
        key = max(self.busy, key=lambda k: self.busy[k])
        return key, self.busy[key]

    def stage_costs(self) -> tuple[StageCost, ...]:
        """Per-stage times when every compute task carries a stage (a chain plan), else ()."""
        plan, sched = self.plan, self.schedule
        if len(plan.models) != 1 or any(t.stage is None for t in plan.compute_tasks):
            return ()
        stage_of = {i: t.stage for i, t in enumerate(plan.tasks) if not t.relay}
        ends: dict[int, float] = {}
        for transfer in sched.transfers:
            src = self.graph.edges[transfer.edge].src
            if src != SOURCE and src in stage_of:
                s = stage_of[src]
                assert s is not None
                ends[s] = max(ends.get(s, 0.0), transfer.end_s)
        costs = []
        previous = 0.0
        for s in sorted(ends):
            members = [i for i, k in stage_of.items() if k == s]
            last_ready = max(sched.ready[i] for i in members)
            last_done = max(sched.end[i] for i in members)
            compute = max(self.graph.tasks[i].compute_s for i in members)
            costs.append(StageCost(index=s, scatter_s=max(0.0, last_ready - previous), compute_s=compute,
                                   gather_s=max(0.0, ends[s] - last_done), time_s=max(0.0, ends[s] - previous)))
            previous = ends[s]
        return tuple(costs)

    def predicted(self) -> Predicted:
        sched = self.schedule
        throughput = self.throughput_per_s
        timings = tuple(TaskTiming(id=t.id, ready_s=sched.ready[i], start_s=sched.start[i], end_s=sched.end[i])
                        for i, t in enumerate(self.plan.tasks))
        return Predicted(latency_s=self.latency_s, throughput_per_s=throughput if math.isfinite(throughput) else 0.0,
                         models=dict(sched.latency), stages=self.stage_costs(), tasks=timings)


def throughput_of(busy: dict[str, float]) -> float:
    bottleneck = max(busy.values(), default=0.0)
    return 1.0 / bottleneck if bottleneck > 0 else math.inf


def evaluate_plan(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster) -> Evaluation:
    graph = cost_graph(plan, graphs, cluster)
    return Evaluation(plan, graph, schedule(graph, cluster))


def evaluate(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster) -> Predicted:
    """Latency per model, makespan, pipelined throughput and the per-task timeline of `plan`."""
    return evaluate_plan(plan, graphs, cluster).predicted()


# ------------------------------------------------------------------ memory


def task_memory(task: Task, graph: LayerGraph) -> int:
    """Bytes one task's process holds [R]: see `stage_costs.partition_memory`; a relay holds its buffer."""
    if task.relay:
        return task.output.size * graph.batch * dtype_at(graph, task.start)
    return partition_memory(graph, task.start, task.stop, task.output)


def memory_use(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph]) -> dict[str, int]:
    """Bytes each device holds: every task placed on it stays loaded."""
    by_model = _graphs_for(plan, graphs)
    use: dict[str, int] = {}
    for task in plan.tasks:
        use[task.device] = use.get(task.device, 0) + task_memory(task, by_model[task.model])
    return use


def check_memory(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster) -> None:
    """Raise PlanningError naming every device whose tasks do not fit its memory."""
    raise_if_over(plan.solver, memory_use(plan, graphs), cluster)
