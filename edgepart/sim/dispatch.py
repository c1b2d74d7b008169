"""Simulated accuracy-aware dispatch: the resource manager in a loop with simulated nodes, links and time.

The manager (`edgepart.policy.manager`) is the same code the data plane
runs; this module only carries out its actions and feeds it events:

- `Dispatch`: the input goes out on the dispatcher's send queue (one FIFO; on
  a `shared` medium the one FIFO of the medium), then waits for the node,
  which computes its parts one after another at its *true* throughput (which
  may differ from the manager's estimate, and change over time); the result
  comes back on the dispatcher's receive queue in order of completion (on a
  `shared` medium the same FIFO). The dispatcher's own node crosses no queue.
  Exactly the timing of `policy.dse.timeline`, extended to a stream.
- `LoadVariant`: acknowledged after the node's load time.
- `Profile`: the node computes `profile_images` images of the variant in its
  queue and reports the time.
- Scenario events: a node slows down (a factor from some time on), leaves
  (its unfinished parts are lost; the manager dispatches them again), or
  joins.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgepart.errors import EdgepartError
from edgepart.policy.manager import (
    Dispatch,
    Event,
    LoadVariant,
    ManagerSettings,
    ManagerState,
    NodeJoined,
    NodeLeft,
    PartDone,
    Phase,
    Profile,
    Profiled,
    Reply,
    RequestArrived,
    Selected,
    Stalled,
    VariantLoaded,
    step,
)


class DispatchSimError(EdgepartError, ValueError):
    """A scenario the dispatch simulator cannot run."""


@dataclass(frozen=True)
class SimNode:
    name: str
    throughput: Mapping[str, float]  # true images/s per variant
    load_s: float = 0.0  # seconds to load (or swap to) a variant
    slowdowns: tuple[tuple[float, float], ...] = ()  # (from time s, factor): compute is `factor` times slower
    leaves_at: float | None = None
    joins_at: float | None = None  # absent from the start, joins then

    def theta(self, variant: str, at: float) -> float:
        base = self.throughput.get(variant)
        if base is None or not base > 0:
            raise DispatchSimError(f"node {self.name!r} has no true throughput for variant {variant!r}")
        factor = 1.0
        for since, slower in sorted(self.slowdowns):
            if at >= since:
                factor = slower
        return base / factor


@dataclass(frozen=True)
class Stream:
    requests: int
    images: int  # per request
    interval_s: float = 0.0  # between arrivals; 0 queues every request at time 0 (saturated stream)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.images < 1:
            raise DispatchSimError(f"stream: requests and images must be >= 1, got {self.requests}, {self.images}")
        if self.interval_s < 0:
            raise DispatchSimError(f"stream: interval_s must be >= 0, got {self.interval_s}")


@dataclass(frozen=True)
class AnsweredPart:
    request: str
    node: str
    variant: str
    start: int
    stop: int
    answered_s: float


@dataclass(frozen=True)
class StreamResult:
    makespan_s: float  # first arrival to last reply
    images: int
    replies: tuple[tuple[float, Reply], ...]
    parts: tuple[AnsweredPart, ...]  # every part the manager accepted
    selections: tuple[tuple[float, Selected], ...]
    phases: tuple[tuple[float, Phase], ...]
    lost_parts: int  # parts that were on a node when it left
    final_state: ManagerState = field(repr=False)

    @property
    def throughput(self) -> float:
        return self.images / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def accuracy(self) -> float:
        """Expected accuracy of all answers: each reply's, weighted by its images."""
        return sum(r.accuracy * r.images for _, r in self.replies) / self.images


@dataclass(frozen=True)
class _Arrived:
    """A part's input reached its node."""

    action: Dispatch


@dataclass(frozen=True)
class _Computed:
    action: Dispatch
    seconds: float


@dataclass(frozen=True)
class _Answered:
    """A part's result reached the dispatcher."""

    action: Dispatch
    seconds: float


_Happening = Event | _Arrived | _Computed | _Answered


@dataclass
class _World:
    settings: ManagerSettings
    nodes: dict[str, SimNode]
    profile_images: int
    now: float = 0.0
    queue: list[tuple[float, int, _Happening]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    queue_free: dict[str, float] = field(default_factory=dict)  # "send", "receive", or "medium" when shared
    node_free: dict[str, float] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    lost: int = 0

    def at(self, time: float, happening: _Happening) -> None:
        heapq.heappush(self.queue, (time, next(self.seq), happening))

    def transfer(self, direction: str, node: str, seconds: float) -> float:
        """When a message of `seconds` on the dispatcher's `direction` queue, ready now, is delivered."""
        if node == self.settings.local_node:
            return self.now + seconds
        lane = "medium" if self.settings.medium == "shared" else direction
        end = max(self.queue_free.get(lane, 0.0), self.now) + seconds
        self.queue_free[lane] = end
        return end

    def compute(self, node: str, ready: float, images: int, variant: str) -> tuple[float, float]:
        """Queue `images` on `node` from `ready`; (start, end) of the compute."""
        start = max(ready, self.node_free.get(node, 0.0))
        end = start + images / self.nodes[node].theta(variant, start)
        self.node_free[node] = end
        return start, end

    def carry_out(self, action: object) -> None:
        settings = self.settings
        if isinstance(action, Dispatch):
            if action.node in self.gone:
                return
            link_in, _ = settings.links.get(action.node, settings.default_link)
            cost = link_in.time((action.stop - action.start) * settings.image_bytes)
            self.at(self.transfer("send", action.node, cost), _Arrived(action))
        elif isinstance(action, LoadVariant) and action.node not in self.gone:
            self.at(self.now + self.nodes[action.node].load_s, VariantLoaded(action.node, action.variant))
        elif isinstance(action, Profile) and action.node not in self.gone:
            start, end = self.compute(action.node, self.now, self.profile_images, action.variant)
            self.at(end, Profiled(action.node, action.variant, self.profile_images, end - start))

    def arrived(self, action: Dispatch) -> None:
        if action.node in self.gone:
            return
        images = action.stop - action.start
        start, end = self.compute(action.node, self.now, images, action.variant)
        self.at(end, _Computed(action, end - start))

    def computed(self, action: Dispatch, seconds: float) -> None:
        if action.node in self.gone:
            return
        settings = self.settings
        _, link_out = settings.links.get(action.node, settings.default_link)
        cost = link_out.time((action.stop - action.start) * settings.result_bytes)
        self.at(self.transfer("receive", action.node, cost), _Answered(action, seconds))


def simulate_dispatch(settings: ManagerSettings, state: ManagerState, nodes: Sequence[SimNode], stream: Stream,
                      profile_images: int = 32, until_s: float = 1e9) -> StreamResult:
    """Run `stream` through the manager (starting from `state`) on simulated `nodes`."""
    world = _World(settings, {n.name: n for n in nodes}, profile_images)
    unknown = set(state.nodes) - set(world.nodes)
    if unknown:
        raise DispatchSimError(f"the manager knows nodes {sorted(unknown)} that the scenario does not describe")
    for node in nodes:
        if node.leaves_at is not None:
            world.at(node.leaves_at, NodeLeft(node.name))
        if node.joins_at is not None:
            world.at(node.joins_at, NodeJoined(node.name))
    for i in range(stream.requests):
        world.at(i * stream.interval_s, RequestArrived(f"r{i}", stream.images))
    replies: list[tuple[float, Reply]] = []
    parts: list[AnsweredPart] = []
    selections: list[tuple[float, Selected]] = []
    phases: list[tuple[float, Phase]] = []
    stalled = False
    while world.queue and len(replies) < stream.requests:
        time, _, happening = heapq.heappop(world.queue)
        if time > until_s:
            raise DispatchSimError(f"the stream did not finish by {until_s} s ({len(replies)} of "
                                   f"{stream.requests} requests answered)")
        world.now = time
        event: Event | None = None
        if isinstance(happening, _Arrived):
            world.arrived(happening.action)
        elif isinstance(happening, _Computed):
            world.computed(happening.action, happening.seconds)
        elif isinstance(happening, _Answered):
            action = happening.action
            progress = state.request(action.request)
            accepted = progress is not None and any(p.id == action.part for p in progress.running)
            if action.node not in world.gone and accepted:
                event = PartDone(action.request, action.part, action.node, action.stop - action.start,
                                 happening.seconds)
                parts.append(AnsweredPart(action.request, action.node, action.variant, action.start, action.stop,
                                          time))
        else:
            event = happening
            if isinstance(event, NodeLeft):
                world.gone.add(event.node)
                world.lost += sum(1 for r in state.active for p in r.running if p.node == event.node)
            elif isinstance(event, NodeJoined):
                world.gone.discard(event.node)
                world.node_free[event.node] = time
        if event is None:
            continue
        result = step(settings, state, event)
        state = result.state
        phases.extend((time, p) for p in result.phases)
        for act in result.actions:
            if isinstance(act, Reply):
                replies.append((time, act))
            elif isinstance(act, Selected):
                selections.append((time, act))
            elif isinstance(act, Stalled):
                stalled = True
            else:
                world.carry_out(act)
    if len(replies) < stream.requests:
        why = "every node left" if stalled else "events ran out"
        raise DispatchSimError(f"the stream stopped after {len(replies)} of {stream.requests} requests: {why}")
    images = sum(r.images for _, r in replies)
    return StreamResult(replies[-1][0], images, tuple(replies), tuple(parts), tuple(selections), tuple(phases),
                        world.lost, state)
