"""Discrete-event simulation of a Plan on a cluster under a stream of requests.

Requests arrive at the models' sources (Poisson with rate R, or all at once
to measure saturated throughput); each arrival is one request of every model
of the plan. Every request runs the task graph with exactly the evaluator's
semantics (`planner/evaluate.py`): a task is ready when every region it reads
has arrived, a device runs one task at a time (the oldest request first, then
the lowest priority), and every transfer holds its sender's and receiver's NIC
queue (`switched`) or the one medium (`shared`) in the order it was issued.
Requests overlap: one request's last tasks run while the next one's first do.

With one request the simulated latency equals the evaluator's; with many
back-to-back requests the measured throughput approaches the bottleneck law.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import Plan
from edgepart.planner.cluster import Cluster
from edgepart.planner.evaluate import SOURCE, CostGraph, Evaluation, evaluate_plan, transfer_cost


@dataclass(frozen=True)
class LatencyStats:
    mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float

    @staticmethod
    def of(samples: Sequence[float]) -> LatencyStats:
        ordered = sorted(samples)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return LatencyStats(statistics.fmean(ordered), pct(0.5), pct(0.95), pct(0.99), ordered[-1])


@dataclass(frozen=True)
class StageStats:
    """Per-stage means over all requests (seconds)."""

    index: int
    time_s: float  # from the stage's start to its output assembled at the next holder
    scatter_s: float  # until the last input arrived
    compute_s: float  # the longest partition compute
    queue_s: float  # time spent waiting for busy devices or NICs


@dataclass(frozen=True)
class SimResult:
    requests: int
    rate_per_s: float | None  # None: all requests at t = 0 (saturation)
    makespan_s: float
    throughput_per_s: float
    latency: LatencyStats
    stages: tuple[StageStats, ...]
    utilisation: dict[str, float]  # busy fraction of each resource over the makespan
    predicted: Evaluation = field(repr=False)

    @property
    def bottleneck(self) -> str:
        return max(self.utilisation, key=lambda k: self.utilisation[k])


class _Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.free: dict[str, float] = {}
        self.busy: dict[str, float] = {}

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (time, next(self._seq), action))

    def run(self) -> None:
        while self._queue:
            self.now, _, action = heapq.heappop(self._queue)
            action()

    def reserve(self, resources: Sequence[str], ready: float, duration: float) -> tuple[float, float]:
        """FIFO: start when ready and every resource is free; hold them all for `duration`."""
        start = max([ready, *(self.free.get(r, 0.0) for r in resources)])
        end = start + duration
        for r in resources:
            self.free[r] = end
            self.busy[r] = self.busy.get(r, 0.0) + duration
        return start, end


def _link_resources(cluster: Cluster, u: str, v: str) -> tuple[str, ...]:
    return ("medium",) if cluster.medium == "shared" else (f"send:{u}", f"recv:{v}")


@dataclass
class _Request:
    arrival: float
    ready: list[float]
    start: list[float]
    end: list[float]
    sent: list[float]  # last arrival of what each task sent
    waiting: list[float]  # time each task's transfers and compute waited for busy resources
    arrived: list[int]
    finished: float = math.nan


def simulate_graph(graph: CostGraph, cluster: Cluster, arrivals: Sequence[float], predicted: Evaluation,
                   stage_of: Sequence[int | None] = ()) -> SimResult:
    """Run `len(arrivals)` requests of the cost graph; `stage_of[i]` groups task i for the per-stage means."""
    engine = _Engine()
    tasks, edges = graph.tasks, graph.edges
    count = len(tasks)
    incoming = [0] * count
    outgoing: list[list[int]] = [[] for _ in range(count)]
    initial: list[int] = []
    for e, edge in enumerate(edges):
        if edge.dst != SOURCE:
            incoming[edge.dst] += 1
        (initial if edge.src == SOURCE else outgoing[edge.src]).append(e)
    outputs = sum(1 for edge in edges if edge.dst == SOURCE)
    requests = [_Request(t, [0.0] * count, [0.0] * count, [0.0] * count, [0.0] * count, [0.0] * count, [0] * count)
                for t in arrivals]
    delivered = [0] * len(requests)
    queues: dict[str, list[tuple[int, int, int]]] = {}
    running: set[str] = set()

    def dispatch(device: str) -> None:
        queue = queues.get(device)
        if device in running or not queue:
            return
        r_index, _, i = heapq.heappop(queue)
        r = requests[r_index]
        start, end = engine.reserve((f"compute:{device}",), engine.now, tasks[i].compute_s)
        r.start[i], r.end[i] = start, end
        r.waiting[i] += start - r.ready[i]
        running.add(device)
        engine.at(end, lambda: completed(r_index, i, device))

    def completed(r_index: int, i: int, device: str) -> None:
        running.discard(device)
        for e in outgoing[i]:
            issue(r_index, e)
        dispatch(device)

    def ready(r_index: int, i: int) -> None:
        task = tasks[i]
        r = requests[r_index]
        if task.relay:
            r.start[i] = r.end[i] = engine.now
            for e in outgoing[i]:
                issue(r_index, e)
            return
        heapq.heappush(queues.setdefault(task.device, []), (r_index, task.priority, i))
        dispatch(task.device)

    def issue(r_index: int, e: int) -> None:
        edge = edges[e]
        r = requests[r_index]
        u, v, seconds, wire = transfer_cost(graph, edge, cluster)
        now = engine.now
        end = now + seconds
        if wire:
            start, end = engine.reserve(_link_resources(cluster, u, v), now, seconds)
            if edge.src != SOURCE:
                r.waiting[edge.src] += start - now
        if edge.src != SOURCE:
            r.sent[edge.src] = max(r.sent[edge.src], end)
        if edge.dst == SOURCE:
            engine.at(end, lambda: output_arrived(r_index))
            return
        d = edge.dst
        r.ready[d] = max(r.ready[d], end)
        r.arrived[d] += 1
        if r.arrived[d] == incoming[d]:
            engine.at(r.ready[d], lambda: ready(r_index, d))

    def output_arrived(r_index: int) -> None:
        delivered[r_index] += 1
        if delivered[r_index] == outputs:
            requests[r_index].finished = engine.now

    def arrive(r_index: int) -> None:
        for e in initial:
            issue(r_index, e)

    for k, r in enumerate(requests):
        engine.at(r.arrival, lambda k=k: arrive(k))  # type: ignore[misc]
    engine.run()
    first = min(arrivals)
    last = max(r.finished for r in requests)
    makespan = last - first
    utilisation = {k: v / makespan for k, v in sorted(engine.busy.items())} if makespan > 0 else {}
    throughput = len(requests) / makespan if makespan > 0 else math.inf
    return SimResult(len(requests), None, makespan, throughput,
                     LatencyStats.of([r.finished - r.arrival for r in requests]),
                     _stage_stats(requests, graph, stage_of), utilisation, predicted)


def _stage_stats(requests: Sequence[_Request], graph: CostGraph, stage_of: Sequence[int | None]
                 ) -> tuple[StageStats, ...]:
    stages = sorted({s for s in stage_of if s is not None})
    if not stages or any(s is None for i, s in enumerate(stage_of) if not graph.tasks[i].relay):
        return ()
    members = {s: [i for i, k in enumerate(stage_of) if k == s] for s in stages}
    rows: dict[int, list[tuple[float, float, float, float]]] = {s: [] for s in stages}
    for r in requests:
        previous = r.arrival
        for s in stages:
            ids = members[s]
            end = max(r.sent[i] for i in ids)
            rows[s].append((end - previous, max(r.ready[i] for i in ids) - previous,
                            max(graph.tasks[i].compute_s for i in ids), sum(r.waiting[i] for i in ids)))
            previous = end
    return tuple(StageStats(s, *(statistics.fmean(row[k] for row in rows[s]) for k in range(4))) for s in stages)


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    t = 0.0
    times = []
    for _ in range(count):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def simulate(plan: Plan, graph: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster, rate: float | None = None, requests: int = 1000,
             seed: int = 0) -> SimResult:
    """Simulate `requests` requests; Poisson arrivals at `rate` per second, or all at t = 0 when None."""
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    evaluation = evaluate_plan(plan, graph, cluster)
    arrivals = [0.0] * requests if rate is None else poisson_arrivals(rate, requests, seed)
    stage_of = [t.stage for t in plan.tasks]
    result = simulate_graph(evaluation.graph, cluster, arrivals, evaluation, stage_of)
    return SimResult(result.requests, rate, result.makespan_s, result.throughput_per_s, result.latency,
                     result.stages, result.utilisation, evaluation)
