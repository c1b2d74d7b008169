"""The resource manager: a finite-state machine that keeps the dispatch configuration right at run time.

    IDLE ──request──▶ LOOKUP ──table stale──▶ PROFILE ──all measured──▶ LOOKUP
                        │                                                 │
                        └─────────────▶ CONFIGURE (load or swap variants) ◀┘
                                            │ all loaded
                                            ▼
                     IDLE ◀── AGGREGATE ◀── EXECUTE ◀── DISPATCH
                                            │ a node leaves, or a part's measured
                                            │ throughput deviates > 10% from the
                                            ▼ prediction it was dispatched with
                                          LOOKUP (re-plan; lost images are dispatched again)

It is pure: `step(settings, state, event)` returns the next state, the actions
to carry out and the phases passed through. The data plane (processes, HTTP)
and the simulator (`edgepart.sim.dispatch`) drive the same code and differ
only in how they carry out actions and where events come from.

[R] Choices the paper leaves open:
- Requests are admitted in arrival order, at most `window` at a time (1: the paper's one request at a
  time; more lets the next request's transfers overlap this one's compute). LOOKUP, CONFIGURE and
  DISPATCH serve the admitted request; EXECUTE waits for parts; AGGREGATE answers every request whose
  parts are all done.
- The table is stale when a live node lacks a θ estimate for some variant (a node that joined, or one
  that left and came back: its estimates are forgotten when it leaves). PROFILE asks for those
  measurements; predictions from the cost model count as estimates, so a fresh manager seeded with
  them goes straight to CONFIGURE.
- Every finished part refines θ (EWMA); the configuration is only re-chosen when a node joins or leaves,
  a profile completes, or a deviation > `deviation` triggers. A deviating measurement replaces the
  estimate (and scales the node's other variants alike) instead of being averaged in: the node has
  changed, and re-planning on a half-corrected estimate would only trigger again. A deviation on the last part of a request
  is acted on at the next request's LOOKUP.
- A variant swap (`LoadVariant`) replaces what a node has loaded; the node finishes the parts it holds
  with the variant they were dispatched with, so no image in flight is lost. Nodes turned off keep
  their variant loaded (switching back costs nothing).
- When a node leaves, the images of its unfinished parts go back to the request's pending images and
  are dispatched again over the nodes that remain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from edgepart.errors import EdgepartError
from edgepart.planner.cluster import LOCAL, Link
from edgepart.policy.dse import OFF, DseProblem, Medium, Node, Variant, dispatch_order, image_counts
from edgepart.policy.select import Policy, Selection, Target
from edgepart.policy.throughput import ThroughputEstimates, deviation, measured_throughput


class ManagerError(EdgepartError, ValueError):
    """An event the resource manager cannot accept (malformed, or contradicting its state)."""


class Phase(StrEnum):
    IDLE = "IDLE"
    LOOKUP = "LOOKUP"
    PROFILE = "PROFILE"
    CONFIGURE = "CONFIGURE"
    DISPATCH = "DISPATCH"
    EXECUTE = "EXECUTE"
    AGGREGATE = "AGGREGATE"


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class RequestArrived:
    request: str
    images: int


@dataclass(frozen=True)
class Profiled:
    """A profiling run: `images` of `variant` took `seconds` of compute on `node`."""

    node: str
    variant: str
    images: int
    seconds: float


@dataclass(frozen=True)
class VariantLoaded:
    node: str
    variant: str


@dataclass(frozen=True)
class PartDone:
    """A part is answered; `seconds` is the node's compute time for its `images`."""

    request: str
    part: int
    node: str
    images: int
    seconds: float


@dataclass(frozen=True)
class NodeLeft:
    node: str


@dataclass(frozen=True)
class NodeJoined:
    node: str


Event = RequestArrived | Profiled | VariantLoaded | PartDone | NodeLeft | NodeJoined


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class Profile:
    """Measure θ of `variant` on `node` (answer with `Profiled`)."""

    node: str
    variant: str


@dataclass(frozen=True)
class LoadVariant:
    """Load `variant` on `node`, replacing its current one once the parts it holds are done (answer with
    `VariantLoaded`)."""

    node: str
    variant: str


@dataclass(frozen=True)
class Dispatch:
    """Send images [start, stop) of `request` to `node`, to be answered by `variant` (answer with `PartDone`)."""

    request: str
    part: int
    node: str
    variant: str
    start: int
    stop: int


@dataclass(frozen=True)
class Selected:
    """A configuration was (re-)chosen; `selection.feasible` is False when the target cannot be met."""

    reason: str
    selection: Selection


@dataclass(frozen=True)
class Reply:
    """Every image of `request` is answered. `accuracy` is the expected accuracy of the answers: the
    accuracies of the variants that answered them, weighted by image counts."""

    request: str
    images: int
    accuracy: float
    answered_by: tuple[tuple[str, str, int], ...]  # (node, variant, images) per part, in part order


@dataclass(frozen=True)
class Stalled:
    """No node can take the request; it waits for one to join."""

    reason: str


Action = Profile | LoadVariant | Dispatch | Selected | Reply | Stalled


# ---------------------------------------------------------------- settings and state


@dataclass(frozen=True)
class ManagerSettings:
    variants: tuple[Variant, ...]  # the family, with accuracies
    policy: Policy
    target: Target | None = None
    node_power_w: Mapping[str, float] = field(default_factory=dict)  # per node; absent: 0
    links: Mapping[str, tuple[Link, Link]] = field(default_factory=dict)  # node -> (to it, from it)
    default_link: tuple[Link, Link] = (LOCAL, LOCAL)  # for nodes without an entry
    local_node: str | None = None  # the dispatcher's own device, if it also computes
    image_bytes: float = 0.0
    result_bytes: float = 0.0
    medium: Medium = "switched"
    deviation: float = 0.10  # relative throughput deviation that triggers a re-plan
    window: int = 1  # requests in flight at once: 1 is the paper's one request at a time

    def __post_init__(self) -> None:
        if not self.variants:
            raise ManagerError("settings.variants: need at least one variant")
        if not self.deviation > 0:
            raise ManagerError(f"settings.deviation must be > 0, got {self.deviation}")
        if self.window < 1:
            raise ManagerError(f"settings.window must be >= 1, got {self.window}")

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def accuracy_of(self, variant: str) -> float:
        for v in self.variants:
            if v.name == variant:
                return v.accuracy
        raise ManagerError(f"unknown variant {variant!r}; the family has {list(self.variant_names)}")

    def problem(self, nodes: tuple[str, ...], estimates: ThroughputEstimates) -> DseProblem:
        built = []
        for name in nodes:
            link_in, link_out = self.links.get(name, self.default_link)
            built.append(Node(name, tuple(estimates.get(name, v) for v in self.variant_names),
                              self.node_power_w.get(name, 0.0), link_in, link_out, name == self.local_node))
        return DseProblem(self.variants, tuple(built), self.image_bytes, self.result_bytes, self.medium)


@dataclass(frozen=True)
class Part:
    id: int
    node: str
    variant: str
    start: int
    stop: int
    predicted: float  # θ the dispatch assumed (images/s)

    @property
    def images(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RequestProgress:
    request: str
    images: int
    pending: tuple[tuple[int, int], ...]  # image ranges still to dispatch (never sent, or lost with a node)
    running: tuple[Part, ...] = ()
    done: tuple[Part, ...] = ()
    next_part: int = 0

    @property
    def pending_images(self) -> int:
        return sum(b - a for a, b in self.pending)

    @property
    def finished(self) -> bool:
        return not self.pending and not self.running


@dataclass(frozen=True)
class ManagerState:
    nodes: tuple[str, ...]  # live nodes, in the order they joined
    estimates: ThroughputEstimates
    phase: Phase = Phase.IDLE
    loaded: Mapping[str, str] = field(default_factory=dict)  # node -> variant it has loaded (acknowledged)
    table_version: int = 0  # bumped by every trigger; the selection is re-chosen when it changes
    selection: Selection | None = None
    problem: DseProblem | None = None  # what `selection` was chosen on
    selected_at: tuple[tuple[str, ...], int] | None = None  # (nodes, table_version) of the selection
    awaiting: frozenset[tuple[str, str]] = frozenset()  # profiles (PROFILE) or loads (CONFIGURE) not answered
    queue: tuple[RequestArrived, ...] = ()  # arrived, not yet admitted
    active: tuple[RequestProgress, ...] = ()  # admitted and not yet answered, in arrival order
    replan_reason: str = "request"  # why the next LOOKUP re-chooses

    def request(self, request: str) -> RequestProgress | None:
        return next((r for r in self.active if r.request == request), None)

    def describe(self) -> dict[str, object]:
        """What `edgepart status` and the gateway's metrics show."""
        selection, problem = self.selection, self.problem
        configuration = None
        if selection is not None and problem is not None:
            configuration = {n.name: v for n, v in zip(problem.nodes, selection.variants, strict=True)}
        return {
            "phase": str(self.phase),
            "nodes": list(self.nodes),
            "configuration": configuration,
            "predictedThroughput": None if selection is None else selection.throughput,
            "predictedAccuracy": None if selection is None else selection.accuracy,
            "targetMet": None if selection is None else selection.feasible,
            "note": "" if selection is None else selection.note,
            "queued": len(self.queue),
            "requests": [{"id": r.request, "images": r.images, "answered": sum(p.images for p in r.done)}
                         for r in self.active],
        }


@dataclass(frozen=True)
class Step:
    state: ManagerState
    actions: tuple[Action, ...]
    phases: tuple[Phase, ...]  # every phase entered during the step, in order


def initial_state(nodes: tuple[str, ...], estimates: ThroughputEstimates | None = None) -> ManagerState:
    """A manager over `nodes`, seeded with `estimates` (e.g. the cost model's predictions) or none (then the
    first request profiles every node)."""
    if len(set(nodes)) != len(nodes):
        raise ManagerError(f"nodes: duplicate names in {list(nodes)}")
    return ManagerState(nodes, estimates if estimates is not None else ThroughputEstimates())


# ---------------------------------------------------------------- transitions


class _Run:
    """One step's scratch: the state so far, the actions and phases collected."""

    def __init__(self, settings: ManagerSettings, state: ManagerState) -> None:
        self.settings = settings
        self.state = state
        self.actions: list[Action] = []
        self.phases: list[Phase] = []

    def enter(self, phase: Phase, **changes: object) -> None:
        self.state = replace(self.state, phase=phase, **changes)  # type: ignore[arg-type]
        self.phases.append(phase)

    def update(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]

    def trigger(self, reason: str) -> None:
        """Something that invalidates the current configuration happened."""
        self.update(table_version=self.state.table_version + 1, replan_reason=reason)

    def replace_request(self, progress: RequestProgress) -> None:
        self.update(active=tuple(progress if r.request == progress.request else r for r in self.state.active))

    def _admit(self) -> bool:
        """Admit the next queued request if the window allows; True when one was admitted."""
        if not self.state.queue or len(self.state.active) >= self.settings.window:
            return False
        head, *rest = self.state.queue
        self.update(queue=tuple(rest),
                    active=(*self.state.active, RequestProgress(head.request, head.images, ((0, head.images),))))
        return True

    def advance(self) -> None:
        """Take every transition that needs no outside answer."""
        while True:
            phase = self.state.phase
            if phase is Phase.IDLE:
                if not self._admit():
                    return
                self.enter(Phase.LOOKUP)
            elif phase is Phase.LOOKUP:
                if not self._lookup():
                    return
            elif phase is Phase.PROFILE:
                if self.state.awaiting:
                    return
                self.enter(Phase.LOOKUP)
            elif phase is Phase.CONFIGURE:
                if self.state.awaiting:
                    return
                self.enter(Phase.DISPATCH)
            elif phase is Phase.DISPATCH:
                self._dispatch()
                self.enter(Phase.EXECUTE)
            elif phase is Phase.EXECUTE:
                if any(r.finished for r in self.state.active):
                    self.enter(Phase.AGGREGATE)
                elif any(r.pending for r in self.state.active) or self._admit():
                    self.enter(Phase.LOOKUP)  # images lost with a node, or room for the next request
                elif not self.state.active:
                    self.enter(Phase.IDLE)
                else:
                    return
            elif phase is Phase.AGGREGATE:
                for progress in [r for r in self.state.active if r.finished]:
                    self._reply(progress)
                self.update(active=tuple(r for r in self.state.active if not r.finished))
                self.enter(Phase.EXECUTE if self.state.active else Phase.IDLE)

    def _lookup(self) -> bool:
        """LOOKUP's work; False when it must wait (no node at all)."""
        state, settings = self.state, self.settings
        if not state.nodes:
            self.actions.append(Stalled("no node is available; waiting for one to join"))
            return False
        missing = state.estimates.missing(state.nodes, settings.variant_names)
        if missing:
            self.actions.extend(Profile(n, v) for n, v in missing)
            self.enter(Phase.PROFILE, awaiting=frozenset(missing))
            return True
        key = (state.nodes, state.table_version)
        if state.selected_at != key:
            images = next((r.pending_images for r in state.active if r.pending), 1)
            problem = settings.problem(state.nodes, state.estimates)
            selection = settings.policy.choose(problem, settings.target, images)
            self.actions.append(Selected(state.replan_reason, selection))
            self.update(selection=selection, problem=problem, selected_at=key, replan_reason="request")
        self._configure()
        return True

    def _configure(self) -> None:
        selection = self.state.selection
        assert selection is not None
        loads = [(node, variant) for node, variant in zip(self.state.nodes, selection.variants, strict=True)
                 if variant is not None and self.state.loaded.get(node) != variant]
        self.actions.extend(LoadVariant(n, v) for n, v in loads)
        self.enter(Phase.CONFIGURE, awaiting=frozenset(loads))

    def _dispatch(self) -> None:
        """Split the pending images of every admitted request over the selected nodes."""
        selection, problem = self.state.selection, self.state.problem
        assert selection is not None and problem is not None
        choices = selection.assignment.choices
        for progress in [r for r in self.state.active if r.pending]:
            counts = image_counts(selection.assignment.weights, progress.pending_images)
            ranges = list(progress.pending)
            parts = list(progress.running)
            next_id = progress.next_part
            for n in dispatch_order(problem, choices, counts):
                need = counts[n]
                theta = problem.nodes[n].throughput[choices[n]]
                assert theta is not None and choices[n] != OFF
                variant = problem.variants[choices[n]].name
                while need:
                    start, stop = ranges[0]
                    take = min(need, stop - start)
                    part = Part(next_id, problem.nodes[n].name, variant, start, start + take, theta)
                    self.actions.append(Dispatch(progress.request, part.id, part.node, variant, part.start,
                                                 part.stop))
                    parts.append(part)
                    next_id += 1
                    need -= take
                    ranges[0] = (start + take, stop)
                    if ranges[0][0] == stop:
                        ranges.pop(0)
            self.replace_request(replace(progress, pending=(), running=tuple(parts), next_part=next_id))

    def _reply(self, progress: RequestProgress) -> None:
        parts = sorted(progress.done, key=lambda p: p.id)
        accuracy = sum(p.images * self.settings.accuracy_of(p.variant) for p in parts) / progress.images
        self.actions.append(Reply(progress.request, progress.images, accuracy,
                                  tuple((p.node, p.variant, p.images) for p in parts)))


def step(settings: ManagerSettings, state: ManagerState, event: Event) -> Step:
    """Apply one event: the next state, the actions to carry out, the phases entered."""
    run = _Run(settings, state)
    if isinstance(event, RequestArrived):
        _on_request(run, event)
    elif isinstance(event, Profiled):
        _on_profiled(run, event)
    elif isinstance(event, VariantLoaded):
        _on_loaded(run, event)
    elif isinstance(event, PartDone):
        _on_part_done(run, event)
    elif isinstance(event, NodeLeft):
        _on_node_left(run, event)
    elif isinstance(event, NodeJoined):
        _on_node_joined(run, event)
    else:  # pragma: no cover - the union is exhaustive
        raise ManagerError(f"unknown event {event!r}")
    run.advance()
    return Step(run.state, tuple(run.actions), tuple(run.phases))


def _on_request(run: _Run, event: RequestArrived) -> None:
    if event.images < 1:
        raise ManagerError(f"request {event.request!r}: images must be >= 1, got {event.images}")
    known = {r.request for r in run.state.queue} | {r.request for r in run.state.active}
    if event.request in known:
        raise ManagerError(f"request {event.request!r} is already queued or running")
    run.update(queue=(*run.state.queue, event))


def _on_profiled(run: _Run, event: Profiled) -> None:
    if event.variant not in run.settings.variant_names:
        raise ManagerError(f"profile of unknown variant {event.variant!r}; the family has "
                           f"{list(run.settings.variant_names)}")
    if event.node not in run.state.nodes:
        return  # it left meanwhile
    run.update(estimates=run.state.estimates.observe(event.node, event.variant, event.images, event.seconds))
    pair = (event.node, event.variant)
    if run.state.phase is Phase.PROFILE and pair in run.state.awaiting:
        run.update(awaiting=run.state.awaiting - {pair})
        if not run.state.awaiting:
            run.trigger("profiled")


def _on_loaded(run: _Run, event: VariantLoaded) -> None:
    if event.node not in run.state.nodes:
        return
    run.update(loaded={**run.state.loaded, event.node: event.variant})
    pair = (event.node, event.variant)
    if run.state.phase is Phase.CONFIGURE and pair in run.state.awaiting:
        run.update(awaiting=run.state.awaiting - {pair})


def _on_part_done(run: _Run, event: PartDone) -> None:
    progress = run.state.request(event.request)
    part = None if progress is None else next((p for p in progress.running if p.id == event.part), None)
    if progress is None or part is None:
        return  # a part that was dispatched again after its node left, or of a request already answered
    if event.node != part.node or event.images != part.images:
        raise ManagerError(f"request {event.request!r} part {event.part}: reported by {event.node!r} for "
                           f"{event.images} images, dispatched to {part.node!r} with {part.images}")
    measured = measured_throughput(event.images, event.seconds)
    deviated = deviation(part.predicted, measured) > run.settings.deviation
    # within the band the estimate is smoothed (EWMA); beyond it the node has changed: take the measurement
    run.update(estimates=run.state.estimates.observe(part.node, part.variant, event.images, event.seconds,
                                                     1.0 if deviated else None))
    run.replace_request(replace(progress, running=tuple(p for p in progress.running if p is not part),
                                done=(*progress.done, part)))
    if deviated:
        run.trigger(f"throughput of {part.variant} on {part.node}: measured {measured:.4g} images/s, predicted "
                    f"{part.predicted:.4g} ({measured / part.predicted - 1:+.0%})")
        unfinished = any(not r.finished for r in run.state.active)
        if run.state.phase in (Phase.CONFIGURE, Phase.EXECUTE) and unfinished:
            run.enter(Phase.LOOKUP)


def _on_node_left(run: _Run, event: NodeLeft) -> None:
    state = run.state
    if event.node not in state.nodes:
        return
    loaded = {k: v for k, v in state.loaded.items() if k != event.node}
    awaiting = frozenset(p for p in state.awaiting if p[0] != event.node)
    run.update(nodes=tuple(n for n in state.nodes if n != event.node), estimates=state.estimates.without(event.node),
               loaded=loaded, awaiting=awaiting)
    run.trigger(f"node {event.node} left")
    lost = False
    for progress in run.state.active:
        gone = tuple(p for p in progress.running if p.node == event.node)
        if gone:
            lost = True
            pending = tuple(sorted((*progress.pending, *((p.start, p.stop) for p in gone))))
            run.replace_request(replace(progress, pending=pending,
                                        running=tuple(p for p in progress.running if p.node != event.node)))
    selection, problem = state.selection, state.problem
    was_on = selection is not None and problem is not None and any(
        n.name == event.node and v is not None for n, v in zip(problem.nodes, selection.variants, strict=True))
    if run.state.phase in (Phase.CONFIGURE, Phase.DISPATCH, Phase.EXECUTE) and (lost or was_on):
        run.enter(Phase.LOOKUP)


def _on_node_joined(run: _Run, event: NodeJoined) -> None:
    if event.node in run.state.nodes:
        return
    run.update(nodes=(*run.state.nodes, event.node))
    run.trigger(f"node {event.node} joined")
