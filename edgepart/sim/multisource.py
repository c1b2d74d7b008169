"""Discrete-event simulation of several image sources sharing a ring of workers (seed 001, SOLVERS.md §7).

Some devices on the ring are *sources*: they produce images (Poisson at a
rate, or a backlog waiting at t = 0) and want each image's result back.
`simulate_multisource` runs one policy on one ring; `MultiSourceResult` says
what happened.
Every decision is the policy package's (`edgepart.policy`), the same code
the data plane calls: where an arrival goes (`Policy.route`), what an idle
worker serves (`Policy.pick`), which worker runs which layers of an image
(`ar_mdi_allocation`, from γ estimates the workers refresh as they compute).

Resources, each FIFO:

- a worker's CPU runs one task at a time: the whole model (LOCAL), or its
  share of one image of one source. Compute is the cost model's
  (`Device.layer_time` over the share's layers, `compute="layers"`) or the
  paper's γ·ΣW_l with γ the device's whole-model time over W
  (`compute="parameters"`); the whole model costs the same in both.
- a message costs its software time (`Device.message_s`) on the sender's CPU
  (at the end of the task that produced it) and on the receiver's (before
  its next task), and its wire time (`Cluster.wire`) on the sender's and the
  receiver's NIC (`switched`) or on the one medium (`shared`). Uncontended,
  a hop takes `Cluster.tx`, as everywhere in the cost model; under load the
  software time competes with compute, as it does in a worker process [R].

An image admitted for distributed inference waits in its source's queue
q_i^i and gets the source's current allocation when the source starts it
(γ estimates reach the sources on the heartbeat); its activation goes from holder to holder
(through workers whose share is empty, which relay it) and the result goes
straight back to the source. Queues hold at most `queue_bound` images: a
source rejects an arrival whose queue is full (counted), and a worker whose
next holder's queue is full keeps the activation (and serves that source
no more) until a slot frees, so nothing admitted is lost.

Queue lengths travel as in the data plane: the response to every frame
carries the receiver's queue lengths, and every worker reports them (and its
γ estimates) to every other on a heartbeat. Decisions use the latest report;
how old it was and how far from the truth is measured at every decision
that used one.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster
from edgepart.policy.allocation import RingAllocation, UnitTable, ar_mdi_allocation
from edgepart.policy.errors import PolicyError
from edgepart.policy.gamma import GammaEstimator
from edgepart.policy.scheduling import (
    ArrivalView,
    Decision,
    DecisionSettings,
    Report,
    SchedulerName,
    SourceQueue,
    WorkerView,
    make_policy,
)
from edgepart.sim.simulate import LatencyStats

ComputeModel = Literal["layers", "parameters"]


@dataclass(frozen=True)
class SourceLoad:
    """One source: a device on the ring producing `count` images, Poisson at `rate` per second (None: all at t = 0)."""

    device: str
    count: int
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise PolicyError(f"sources[{self.device}].count: must be >= 0, got {self.count}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise PolicyError(f"sources[{self.device}].rate: must be a finite rate > 0, got {self.rate}")


@dataclass(frozen=True)
class MultiSourceSettings:
    scheduler: SchedulerName = "ms-mdi"
    decision: DecisionSettings = field(default_factory=DecisionSettings)  # strict, report age, weights (MS-MDI)
    compute: ComputeModel = "layers"  # cost model per layer, or the paper's γ·ΣW_l
    queue_bound: int | None = None  # images per queue; None: unbounded
    heartbeat_s: float = 0.5  # period of queue-length and γ reports between workers
    piggyback: bool = True  # responses to frames carry the receiver's queue lengths
    adaptive_gamma: bool = True  # refresh γ from measured compute (EWMA); False: the profile's prior throughout
    gamma_smoothing: float = 0.2
    trace_period_s: float | None = 1.0  # sample every queue's length this often (None: no trace)
    until_s: float | None = None  # stop here (images still in the system count as queued); None: run to the end
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queue_bound is not None and self.queue_bound < 1:
            raise PolicyError(f"queue_bound: must be >= 1, got {self.queue_bound}")
        if not self.heartbeat_s > 0:
            raise PolicyError(f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        if self.trace_period_s is not None and not self.trace_period_s > 0:
            raise PolicyError(f"trace_period_s: must be > 0, got {self.trace_period_s}")
        if self.until_s is not None and not self.until_s > 0:
            raise PolicyError(f"until_s: must be > 0, got {self.until_s}")
        if self.compute not in ("layers", "parameters"):
            raise PolicyError(f"compute: expected 'layers' or 'parameters', got {self.compute!r}")


@dataclass(frozen=True)
class SourceResult:
    source: str
    arrived: int
    done: int
    rejected: int
    queued: int  # still in the system when the run stopped
    done_locally: int  # images run whole at the source
    completion_s: float  # when its last result came home (0 when none did)
    latency: LatencyStats | None  # arrival to result, over its done images


@dataclass(frozen=True)
class Staleness:
    """The downstream reports decisions used: how old, and how far from the queue's true length then."""

    reports: int
    mean_age_s: float
    p95_age_s: float
    max_age_s: float
    mean_error: float  # |reported − true| images
    max_error: int


@dataclass(frozen=True)
class QueueTrace:
    times: tuple[float, ...]
    lengths: Mapping[str, tuple[int, ...]]  # "worker/local" or "worker/<source>" -> length at each time


@dataclass(frozen=True)
class MultiSourceResult:
    scheduler: SchedulerName
    arrived: int
    done: int
    queued: int
    rejected: int
    total_time_s: float  # from t = 0 to the last result home
    latency: LatencyStats | None
    sources: tuple[SourceResult, ...]
    busy: Mapping[str, float]  # each worker's CPU busy fraction over the total time
    max_queue: Mapping[str, int]
    staleness: Staleness
    held: int  # activations that waited at their worker because the next holder's queue was full
    trace: QueueTrace = field(repr=False)
    allocations: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # each source's last cuts (layers)

    @property
    def per_image_s(self) -> float:
        """Total time over the images done: the paper's "processing time per image"."""
        return self.total_time_s / self.done if self.done else math.nan

    @property
    def conserved(self) -> bool:
        return self.arrived == self.done + self.queued + self.rejected


# ---------------------------------------------------------------------------------------------- the engine


class _Events:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (time, next(self._seq), action))

    def run(self, until: float | None) -> None:
        while self._heap:
            if until is not None and self._heap[0][0] > until:
                self.now = until
                return
            self.now, _, action = heapq.heappop(self._heap)
            action()


@dataclass(eq=False)
class _Image:
    id: int
    source: str
    arrival: float
    distributed: bool = False  # False: runs whole at the source
    allocation: RingAllocation | None = None  # fixed when the source starts it (distributed images)
    enqueued: float = 0.0


@dataclass(eq=False)
class _Worker:
    name: str
    is_source: bool
    local: deque[_Image] = field(default_factory=deque)
    queues: dict[str, deque[_Image]] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)  # images on their way into each queue
    outbox: dict[str, deque[_Image]] = field(default_factory=dict)  # computed, waiting for the next holder's slot
    busy: bool = False
    busy_s: float = 0.0
    debt_s: float = 0.0  # software time of messages received since the last task (paid before the next)
    # latest report of each other worker's queue lengths: worker -> (lengths by source, measured at)
    known: dict[str, tuple[Mapping[str, int], float]] = field(default_factory=dict)


class _Simulation:
    def __init__(self, graph: LayerGraph, cluster: Cluster, ring: Sequence[str], sources: Sequence[SourceLoad],
                 settings: MultiSourceSettings) -> None:
        _check(cluster, ring, sources)
        self.graph, self.cluster, self.ring, self.settings = graph, cluster, tuple(ring), settings
        self.loads = tuple(sources)
        self.source_names = tuple(s.device for s in sources)
        self.policy = make_policy(settings.scheduler, settings.decision)
        self.table = UnitTable.of(graph)
        self.events = _Events()
        self.workers = {w: _Worker(w, w in self.source_names) for w in self.ring}
        for worker in self.workers.values():
            for s in self.source_names:
                worker.queues[s], worker.reserved[s], worker.outbox[s] = deque(), 0, deque()
            empty = {s: 0 for s in self.source_names}
            worker.known = {other: (empty, 0.0) for other in self.ring if other != worker.name}
        # compute: prefix sums of the cost model per device, so a share costs O(1)
        self.layer_prefix = {w: (0.0, *itertools.accumulate(cluster.device(w).layer_time(layer) for layer in graph))
                             for w in self.ring}
        self.whole_s = {w: self.layer_prefix[w][-1] for w in self.ring}
        total = self.table.total
        self.estimators = {(w, s): GammaEstimator.prior(self.whole_s[w], total, settings.gamma_smoothing)
                           for w in self.ring for s in self.source_names}
        self.published = {key: est.value for key, est in self.estimators.items()}
        self._allocations: dict[tuple[str, tuple[float, ...]], RingAllocation] = {}
        self.waiting: dict[tuple[str, str], deque[str]] = {}  # (holder, source) -> workers whose outbox waits on it
        self.in_transit: set[int] = set()
        self.held: set[int] = set()  # images whose activation waited for a slot at the next holder
        self.in_service: dict[str, _Image] = {}
        self.done: dict[int, float] = {}
        self.images: list[_Image] = []
        self.rejected = {s: 0 for s in self.source_names}
        self.done_locally = {s: 0 for s in self.source_names}
        self.max_queue: dict[str, int] = {}
        self.ages: list[float] = []
        self.errors: list[int] = []
        self.trace_times: list[float] = []
        self.trace: dict[str, list[int]] = {}
        self.pending_arrivals = 0
        self.free: dict[str, float] = {}  # when each NIC direction (or the shared medium) is next free
        # only MS-MDI reads other workers' queue lengths: the others' runs skip the report messages
        self.reads_reports = self.measure_staleness = settings.scheduler == "ms-mdi"
        self._message_s = {w: cluster.device(w).message_s for w in self.ring}

    # ------------------------------------------------------------------ helpers

    def allocation(self, source: str) -> RingAllocation:
        gamma = tuple(self.published[(w, source)] for w in self.ring)
        key = (source, gamma)
        if key not in self._allocations:
            self._allocations[key] = ar_mdi_allocation(self.table, dict(zip(self.ring, gamma, strict=True)),
                                                        self.ring, source)
        return self._allocations[key]

    def share_seconds(self, worker: str, allocation: RingAllocation) -> tuple[float, int]:
        share = allocation.share_of(worker)
        if self.settings.compute == "parameters":
            return self.whole_s[worker] * share.params / self.table.total, share.params
        prefix = self.layer_prefix[worker]
        return prefix[share.stop] - prefix[share.start], share.params

    def message_s(self, device: str) -> float:
        return self._message_s[device]

    def in_system(self, worker: _Worker, source: str | None) -> int:
        """Images in `worker`'s local queue (None) or its queue for `source`, the one it is computing included."""
        queue = worker.local if source is None else worker.queues[source]
        current = self.in_service.get(worker.name)
        running = current is not None and (not current.distributed if source is None
                                           else current.distributed and current.source == source)
        return len(queue) + running

    def lengths(self, worker: _Worker) -> dict[str, int]:
        return {s: self.in_system(worker, s) for s in worker.queues}

    def note_length(self, name: str, length: int) -> None:
        if length > self.max_queue.get(name, 0):
            self.max_queue[name] = length

    def has_room(self, worker: _Worker, source: str) -> bool:
        bound = self.settings.queue_bound
        return bound is None or len(worker.queues[source]) + worker.reserved[source] < bound

    def transfer(self, path: Sequence[str], nbytes: int, delivered: Callable[[], None]) -> None:
        """Send `nbytes` hop by hop along `path` (first entry: the sender); relays pay both messages' software time."""
        u, v = path[0], path[1]
        wire = self.cluster.wire(u, v).time(nbytes)
        resources = ("medium",) if self.cluster.medium == "shared" else (f"send:{u}", f"recv:{v}")
        start = max([self.events.now, *(self.free.get(r, 0.0) for r in resources)])
        for r in resources:
            self.free[r] = start + wire

        def arrive() -> None:
            self.owe(self.workers[v], self.message_s(v))
            if len(path) > 2:  # a relay reads it and sends it on
                self.owe(self.workers[v], self.message_s(v))
                self.events.at(self.events.now + 2 * self.message_s(v),
                               lambda: self.transfer(path[1:], nbytes, delivered))
            else:
                delivered()

        self.events.at(start + wire, arrive)

    def owe(self, worker: _Worker, seconds: float) -> None:
        """CPU time spent on a message outside a task: it delays the worker's next task."""
        worker.debt_s += seconds
        worker.busy_s += seconds

    def report(self, sender: str, receiver: str) -> None:
        """`sender`'s queue lengths now, arriving at `receiver` after the wire's latency."""
        lengths, measured = self.lengths(self.workers[sender]), self.events.now

        def arrive() -> None:
            worker = self.workers[receiver]
            if worker.known[sender][1] <= measured:
                worker.known[sender] = (lengths, measured)
                self.start_next(worker)

        self.events.at(self.events.now + self.cluster.wire(sender, receiver).alpha_s, arrive)

    # ------------------------------------------------------------------ arrivals

    def arrive(self, image: _Image) -> None:
        self.pending_arrivals -= 1
        self.images.append(image)
        source = self.workers[image.source]
        first_hop = Report(self.in_system(source, image.source))  # q_i^i: the source's own queue for its images
        route = self.policy.route(ArrivalView(self.in_system(source, None), first_hop))
        queue = source.local if route == "local" else source.queues[image.source]
        if self.settings.queue_bound is not None and len(queue) >= self.settings.queue_bound:
            self.rejected[image.source] += 1
            return
        image.distributed = route == "mdi"
        image.enqueued = self.events.now
        queue.append(image)
        self.note_length(f"{source.name}/{'local' if route == 'local' else image.source}", len(queue))
        self.start_next(source)

    def allocation_of(self, image: _Image) -> RingAllocation:
        """The image's allocation: fixed once the source started it, the source's current one before."""
        return image.allocation if image.allocation is not None else self.allocation(image.source)

    def _report(self, worker: _Worker, other: str, source: str) -> Report:
        lengths, measured = worker.known[other]
        return Report(lengths[source], self.events.now - measured)

    def enqueue(self, worker: _Worker, image: _Image) -> None:
        image.enqueued = self.events.now
        queue = worker.queues[image.source]
        queue.append(image)
        self.note_length(f"{worker.name}/{image.source}", len(queue))
        self.start_next(worker)

    def deliver(self, sender: str, holder: _Worker, image: _Image) -> None:
        holder.reserved[image.source] -= 1
        self.in_transit.discard(image.id)
        self.enqueue(holder, image)
        if self.settings.piggyback and self.reads_reports:
            self.report(holder.name, sender)

    # ------------------------------------------------------------------ decisions

    def view(self, worker: _Worker) -> WorkerView:
        now = self.events.now
        queues = []
        for s in self.source_names:
            queue = worker.queues[s]
            downstream: Report | None = None
            task = None
            if queue:
                allocation = self.allocation_of(queue[0])
                after = allocation.next_holder(worker.name)
                if after is not None:
                    downstream = self._report(worker, after, s)
                task = self.task_seconds(worker.name, s, allocation)
            queues.append(SourceQueue(s, len(queue), now - queue[0].enqueued if queue else 0.0, downstream,
                                      bool(worker.outbox[s]), task))
        local = len(worker.local) if worker.is_source else None
        head_wait = now - worker.local[0].enqueued if worker.local else 0.0
        return WorkerView(local, tuple(queues), head_wait, self.whole_s[worker.name])

    def start_next(self, worker: _Worker) -> None:
        if worker.busy or not (worker.local or any(worker.queues.values())):
            return
        view = self.view(worker)
        decision = self.policy.pick(view)
        if decision is None:
            return
        if self.measure_staleness and decision.source is not None:
            self.note_staleness(worker, view, decision.source)
        self.run_task(worker, decision)

    def task_seconds(self, worker: str, source: str, allocation: RingAllocation) -> float:
        """What serving one image of `source` costs `worker`: its share, reading the activation, sending it on."""
        messages = (worker != source) + (allocation.next_holder(worker) is not None or worker != source)
        return max(self.share_seconds(worker, allocation)[0] + messages * self.message_s(worker), 1e-12)

    def note_staleness(self, worker: _Worker, view: WorkerView, source: str) -> None:
        """How old the report behind this decision was, and how far from the next holder's true queue length."""
        chosen = next(q for q in view.queues if q.source == source)
        if chosen.downstream is None:
            return
        after = self.allocation_of(worker.queues[source][0]).next_holder(worker.name)
        assert after is not None
        self.ages.append(chosen.downstream.age_s)
        self.errors.append(abs(chosen.downstream.length - self.in_system(self.workers[after], source)))

    def run_task(self, worker: _Worker, decision: Decision) -> None:
        now = self.events.now
        if decision.local:
            image = worker.local.popleft()
            seconds, params, allocation = self.whole_s[worker.name], 0, None
            sends = False
        else:
            assert decision.source is not None
            image = worker.queues[decision.source].popleft()
            allocation = image.allocation = self.allocation_of(image)
            seconds, params = self.share_seconds(worker.name, allocation)
            sends = allocation.next_holder(worker.name) is not None or image.source != worker.name
            self.free_slot(worker.name, decision.source)
        own = seconds + (self.message_s(worker.name) if sends else 0.0)
        cpu = worker.debt_s + own
        worker.debt_s = 0.0
        worker.busy = True
        worker.busy_s += own
        self.in_service[worker.name] = image

        def finished() -> None:
            worker.busy = False
            del self.in_service[worker.name]
            if allocation is None:
                self.complete(image, local=True)
            else:
                if self.settings.adaptive_gamma:
                    key = (worker.name, image.source)
                    self.estimators[key] = self.estimators[key].observed(seconds, params)
                self.forward(worker, image)
            self.start_next(worker)

        self.events.at(now + cpu, finished)

    def forward(self, worker: _Worker, image: _Image) -> None:
        allocation = image.allocation
        assert allocation is not None
        after = allocation.next_holder(worker.name)
        if after is None:
            if image.source == worker.name:
                self.complete(image, local=False)
                return
            self.in_transit.add(image.id)
            home = self.workers[image.source]

            def arrived_home() -> None:  # done once the source has read it: its message time, as in `Cluster.tx`
                def read() -> None:
                    self.in_transit.discard(image.id)
                    self.complete(image, local=False)

                self.events.at(self.events.now + self.message_s(home.name), read)
                if self.settings.piggyback and self.reads_reports:
                    self.report(home.name, worker.name)

            self.transfer((worker.name, home.name), self.graph.bytes_at(len(self.graph)), arrived_home)
            return
        worker.outbox[image.source].append(image)
        self.flush(worker, image.source)

    def flush(self, worker: _Worker, source: str) -> None:
        """Send the outbox's head images while their next holder has room; otherwise wait for a slot there."""
        outbox = worker.outbox[source]
        while outbox:
            image = outbox[0]
            assert image.allocation is not None
            after = image.allocation.next_holder(worker.name)
            assert after is not None
            holder = self.workers[after]
            if not self.has_room(holder, source):
                waiting = self.waiting.setdefault((after, source), deque())
                if worker.name not in waiting:
                    waiting.append(worker.name)
                if image.id not in self.held:
                    self.held.add(image.id)
                return
            outbox.popleft()
            holder.reserved[source] += 1
            self.in_transit.add(image.id)
            path = (worker.name, *image.allocation.path(worker.name))
            cut = image.allocation.share_of(worker.name).stop
            self.transfer(path, self.graph.bytes_at(cut),
                          lambda image=image, holder=holder: self.deliver(worker.name, holder, image))  # type: ignore[misc]

    def free_slot(self, holder: str, source: str) -> None:
        """A slot freed in `holder`'s queue for `source`: wake the workers waiting on it until one takes it."""
        waiting = self.waiting.get((holder, source))
        while waiting and self.has_room(self.workers[holder], source):
            upstream = self.workers[waiting.popleft()]
            self.flush(upstream, source)
            self.start_next(upstream)

    def complete(self, image: _Image, local: bool) -> None:
        if image.id in self.done:
            raise AssertionError(f"image {image.id} of {image.source} answered twice")
        self.done[image.id] = self.events.now
        if local:
            self.done_locally[image.source] += 1

    # ------------------------------------------------------------------ periodic

    def active(self) -> bool:
        return self.pending_arrivals > 0 or len(self.done) + sum(self.rejected.values()) < len(self.images)

    def heartbeat(self) -> None:
        if not self.active():
            return
        self.published = {key: est.value for key, est in self.estimators.items()}
        if self.reads_reports:
            for sender in self.ring:
                for receiver in self.ring:
                    if receiver != sender:
                        self.report(sender, receiver)
        self.events.at(self.events.now + self.settings.heartbeat_s, self.heartbeat)

    def sample(self) -> None:
        if not self.active():
            return
        self.trace_times.append(self.events.now)
        for worker in self.workers.values():
            if worker.is_source:
                self.trace.setdefault(f"{worker.name}/local", []).append(len(worker.local))
            for s, queue in worker.queues.items():
                self.trace.setdefault(f"{worker.name}/{s}", []).append(len(queue))
        assert self.settings.trace_period_s is not None
        self.events.at(self.events.now + self.settings.trace_period_s, self.sample)

    # ------------------------------------------------------------------ run

    def run(self) -> MultiSourceResult:
        rng = random.Random(self.settings.seed)
        ids = itertools.count()
        for load in self.loads:
            t = 0.0
            for _ in range(load.count):
                image = _Image(next(ids), load.device, t)
                self.events.at(t, lambda image=image: self.arrive(image))  # type: ignore[misc]
                if load.rate is not None:
                    t += rng.expovariate(load.rate)
            self.pending_arrivals += load.count
        self.events.at(self.settings.heartbeat_s, self.heartbeat)
        if self.settings.trace_period_s is not None:
            self.events.at(0.0, self.sample)
        self.events.run(self.settings.until_s)
        return self.result()

    def queued(self) -> dict[str, int]:
        count = dict.fromkeys(self.source_names, 0)
        seen: set[int] = set()
        for worker in self.workers.values():
            for image in itertools.chain(worker.local, *worker.queues.values(), *worker.outbox.values()):
                count[image.source] += 1
                seen.add(image.id)
        for image in self.in_service.values():
            count[image.source] += 1
            seen.add(image.id)
        by_id = {image.id: image for image in self.images}
        for image_id in self.in_transit:
            if image_id not in seen:
                count[by_id[image_id].source] += 1
        return count

    def result(self) -> MultiSourceResult:
        arrival = {image.id: image for image in self.images}
        queued = self.queued()
        total = max(self.done.values(), default=0.0)
        sources = []
        for name in self.source_names:
            times = [t - arrival[i].arrival for i, t in self.done.items() if arrival[i].source == name]
            ends = [t for i, t in self.done.items() if arrival[i].source == name]
            sources.append(SourceResult(
                name, sum(1 for image in self.images if image.source == name), len(times), self.rejected[name],
                queued[name], self.done_locally[name], max(ends, default=0.0),
                LatencyStats.of(times) if times else None))
        latencies = [t - arrival[i].arrival for i, t in self.done.items()]
        end = self.events.now if self.settings.until_s is not None else total
        busy = {w.name: (w.busy_s / end if end > 0 else 0.0) for w in self.workers.values()}
        ordered = sorted(self.ages)
        staleness = Staleness(
            len(ordered), statistics.fmean(ordered) if ordered else 0.0,
            ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0,
            ordered[-1] if ordered else 0.0, statistics.fmean(self.errors) if self.errors else 0.0,
            max(self.errors, default=0))
        cuts = {s: self.allocation(s).cuts for s in self.source_names}
        return MultiSourceResult(
            self.settings.scheduler, len(self.images), len(self.done), sum(queued.values()),
            sum(self.rejected.values()), total, LatencyStats.of(latencies) if latencies else None, tuple(sources),
            busy, dict(self.max_queue), staleness, len(self.held),
            QueueTrace(tuple(self.trace_times), {k: tuple(v) for k, v in self.trace.items()}), cuts)


def _check(cluster: Cluster, ring: Sequence[str], sources: Sequence[SourceLoad]) -> None:
    if not ring:
        raise PolicyError("ring: need at least one worker")
    if len(set(ring)) != len(ring):
        raise PolicyError(f"ring: workers must be distinct, got {list(ring)}")
    for i, worker in enumerate(ring):
        if worker not in cluster.names:
            raise PolicyError(f"ring[{i}]: {worker!r} is not a device of the cluster {list(cluster.names)}")
    if not sources:
        raise PolicyError("sources: need at least one source")
    names = [s.device for s in sources]
    if len(set(names)) != len(names):
        raise PolicyError(f"sources: each device may be one source, got {names}")
    for s in sources:
        if s.device not in ring:
            raise PolicyError(f"sources[{s.device}]: not on the ring {list(ring)}")


def simulate_multisource(graph: LayerGraph, cluster: Cluster, ring: Sequence[str], sources: Sequence[SourceLoad],
                         settings: MultiSourceSettings | None = None) -> MultiSourceResult:
    """Simulate `sources` feeding the ring `ring` of `cluster`'s devices under `settings.scheduler`."""
    return _Simulation(graph, cluster, ring, sources, settings or MultiSourceSettings()).run()
