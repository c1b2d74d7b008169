"""Discrete-event simulation of a Plan on a cluster under a stream of requests.

Requests arrive at the master (Poisson with rate R, or all at once to
measure saturated throughput). Each request runs the plan's stages in order
with exactly the evaluator's semantics (`planner/evaluate.py`): the holder
scatters each partition its input, partitions compute when their input has
arrived and their device is free, and send their outputs to the next holder.
Every resource — a device's compute, a NIC direction (`switched`) or the one
medium (`shared`) — serves in FIFO order of readiness; a transfer holds its
sender's and its receiver's queue for its whole duration. Requests overlap:
one request's stage 1 runs while the next one's stage 0 does.

With one request the simulated latency equals the evaluator's; with many
back-to-back requests the measured throughput approaches the bottleneck law.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import Plan
from edgepart.planner.cluster import Cluster
from edgepart.planner.evaluate import Evaluation, PartWork, evaluate_plan, holders


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


@dataclass
class _Request:
    arrival: float
    stage_start: list[float]
    stage_end: list[float]
    scatter_end: list[float]
    compute_max: list[float]
    queued: list[float]
    finished: float = math.nan


def _link_resources(cluster: Cluster, u: str, v: str) -> tuple[str, ...]:
    return ("medium",) if cluster.medium == "shared" else (f"send:{u}", f"recv:{v}")


def simulate_works(works: Sequence[Sequence[PartWork]], cluster: Cluster, arrivals: Sequence[float],
                   predicted: Evaluation) -> SimResult:
    engine = _Engine()
    route = holders([[p.device for p in parts] for parts in works], cluster.master)
    n_stages = len(works)
    requests = [_Request(t, [0.0] * n_stages, [0.0] * n_stages, [0.0] * n_stages, [0.0] * n_stages,
                         [0.0] * n_stages) for t in arrivals]

    def start_stage(r: _Request, s: int) -> None:
        now = engine.now
        r.stage_start[s] = now
        parts = works[s]
        pending = [len(parts)]
        source, sink = route[s], route[s + 1]

        def part_done() -> None:
            pending[0] -= 1
            if pending[0] == 0:
                r.stage_end[s] = engine.now
                if s + 1 < n_stages:
                    start_stage(r, s + 1)
                else:
                    r.finished = engine.now

        def computed(p: PartWork) -> Callable[[], None]:
            def run() -> None:
                if p.out_bytes <= 0:
                    part_done()
                    return
                if p.device == sink:  # a local message: software time, no wire (as the evaluator)
                    engine.at(engine.now + cluster.local_s(sink), part_done)
                    return
                duration = cluster.tx(p.device, sink, p.out_bytes)
                start, end = engine.reserve(_link_resources(cluster, p.device, sink), engine.now, duration)
                r.queued[s] += start - engine.now
                engine.at(end, part_done)
            return run

        def ready(p: PartWork) -> Callable[[], None]:
            def run() -> None:
                r.scatter_end[s] = max(r.scatter_end[s], engine.now - r.stage_start[s])
                start, end = engine.reserve((f"compute:{p.device}",), engine.now, p.compute_s)
                r.queued[s] += start - engine.now
                r.compute_max[s] = max(r.compute_max[s], p.compute_s)
                engine.at(end, computed(p))
            return run

        for p in parts:
            if p.device == source or p.in_bytes <= 0:
                engine.at(now, ready(p))
                continue
            duration = cluster.tx(source, p.device, p.in_bytes)
            start, end = engine.reserve(_link_resources(cluster, source, p.device), now, duration)
            r.queued[s] += start - now
            engine.at(end, ready(p))

    for r in requests:
        engine.at(r.arrival, lambda r=r: start_stage(r, 0))  # type: ignore[misc]
    engine.run()
    first = min(arrivals)
    last = max(r.finished for r in requests)
    makespan = last - first
    count = len(requests)
    stages = tuple(
        StageStats(s, statistics.fmean(r.stage_end[s] - r.stage_start[s] for r in requests),
                   statistics.fmean(r.scatter_end[s] for r in requests),
                   statistics.fmean(r.compute_max[s] for r in requests),
                   statistics.fmean(r.queued[s] for r in requests))
        for s in range(n_stages))
    utilisation = {k: v / makespan for k, v in sorted(engine.busy.items())} if makespan > 0 else {}
    throughput = count / makespan if makespan > 0 else math.inf
    return SimResult(count, None, makespan, throughput,
                     LatencyStats.of([r.finished - r.arrival for r in requests]), stages, utilisation, predicted)


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


def simulate(plan: Plan, graph: LayerGraph, cluster: Cluster, rate: float | None = None, requests: int = 1000,
             seed: int = 0) -> SimResult:
    """Simulate `requests` requests; Poisson arrivals at `rate` per second, or all at t = 0 when None."""
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    evaluation = evaluate_plan(plan, graph, cluster)
    arrivals = [0.0] * requests if rate is None else poisson_arrivals(rate, requests, seed)
    result = simulate_works(evaluation.works, cluster, arrivals, evaluation)
    return SimResult(result.requests, rate, result.makespan_s, result.throughput_per_s, result.latency,
                     result.stages, result.utilisation, evaluation)
