"""The resource-manager FSM: every transition and trigger, and no image lost across swaps and node losses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgepart.planner.cluster import Cluster, Device, reference_profile
from edgepart.policy.dse import Variant, image_counts
from edgepart.policy.manager import (
    Dispatch,
    LoadVariant,
    ManagerError,
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
    Step,
    VariantLoaded,
    initial_state,
    step,
)
from edgepart.policy.select import AccuracyAwarePolicy, ProportionalSplit, ThroughputTarget
from edgepart.policy.throughput import ThroughputError, ThroughputEstimates, variant_throughput
from edgepart.variants import family_graphs, shipped_family

VARIANTS = (Variant("small", 0.80), Variant("big", 0.95))
THETA = {("a", "small"): 40.0, ("a", "big"): 10.0, ("b", "small"): 20.0, ("b", "big"): 5.0,
         ("c", "small"): 8.0, ("c", "big"): 2.0}
# 30 images/s: every node on "big" sustains only 17, every node on "small" 68, so the policy has to mix
SETTINGS = ManagerSettings(VARIANTS, AccuracyAwarePolicy(), ThroughputTarget(30.0))


def fresh(nodes: tuple[str, ...] = ("a", "b", "c")) -> ManagerState:
    return initial_state(nodes, ThroughputEstimates({k: v for k, v in THETA.items() if k[0] in nodes}))


def of(actions: tuple[object, ...], kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]


def load_all(state: ManagerState, first: Step, settings: ManagerSettings = SETTINGS) -> Step:
    """Acknowledge the loads `first` asked for, starting from `state`."""
    result = Step(state, (), ())
    for load in of(first.actions, LoadVariant):
        result = step(settings, result.state, VariantLoaded(load.node, load.variant))
    return result


def answer(state: ManagerState, dispatch: Dispatch, slowdown: float = 1.0,
           settings: ManagerSettings = SETTINGS) -> Step:
    """The node answers a part at its estimated speed divided by `slowdown`."""
    theta = THETA[(dispatch.node, dispatch.variant)] / slowdown
    images = dispatch.stop - dispatch.start
    return step(settings, state, PartDone(dispatch.request, dispatch.part, dispatch.node, images, images / theta))


def test_a_request_goes_through_every_phase() -> None:
    first = step(SETTINGS, fresh(), RequestArrived("r1", 100))
    assert first.phases == (Phase.LOOKUP, Phase.CONFIGURE)
    (selected,) = of(first.actions, Selected)
    assert selected.reason == "request" and selected.selection.feasible
    assert selected.selection.throughput >= 30.0
    loads = of(first.actions, LoadVariant)
    assert {(x.node, x.variant) for x in loads} == {(n, v) for n, v in zip("abc", selected.selection.variants,
                                                                           strict=True) if v}
    # nothing is dispatched until every load is acknowledged
    partial = step(SETTINGS, first.state, VariantLoaded(loads[0].node, loads[0].variant))
    assert partial.phases == () and partial.state.phase is Phase.CONFIGURE
    ready = load_all(first.state, first)
    assert ready.phases[-2:] == (Phase.DISPATCH, Phase.EXECUTE)
    dispatches = of(ready.actions, Dispatch)
    counts = image_counts(selected.selection.assignment.weights, 100)
    assert {d.node: d.stop - d.start for d in dispatches} == {n: c for n, c in zip("abc", counts, strict=True) if c}
    assert sorted((d.start, d.stop) for d in dispatches)[0][0] == 0
    assert sum(d.stop - d.start for d in dispatches) == 100
    state = ready.state
    for d in dispatches[:-1]:
        result = answer(state, d)
        assert result.phases == () and result.state.phase is Phase.EXECUTE
        state = result.state
    last = answer(state, dispatches[-1])
    assert last.phases == (Phase.AGGREGATE, Phase.IDLE)
    (reply,) = of(last.actions, Reply)
    expected = sum((d.stop - d.start) * {"small": 0.8, "big": 0.95}[d.variant] for d in dispatches) / 100
    assert reply.images == 100 and reply.accuracy == pytest.approx(expected)
    assert last.state.active == () and last.state.describe()["phase"] == "IDLE"
    # the next request reuses the configuration: no selection, no load, straight to EXECUTE
    again = step(SETTINGS, last.state, RequestArrived("r2", 10))
    assert again.phases == (Phase.LOOKUP, Phase.CONFIGURE, Phase.DISPATCH, Phase.EXECUTE)
    assert not of(again.actions, Selected) and not of(again.actions, LoadVariant)
    assert sum(d.stop - d.start for d in of(again.actions, Dispatch)) == 10


def run_request(state: ManagerState, request: str, images: int, settings: ManagerSettings = SETTINGS
                ) -> tuple[ManagerState, list[object]]:
    """Drive a request to its reply with every node at its estimated speed."""
    out = step(settings, state, RequestArrived(request, images))
    actions = list(out.actions)
    out = load_all(out.state, out, settings)
    actions += out.actions
    state = out.state
    for d in [a for a in actions if isinstance(a, Dispatch)]:
        out = answer(state, d, settings=settings)
        state = out.state
        actions += out.actions
    return state, actions


def test_stale_table_is_profiled_first() -> None:
    state = initial_state(("a", "b"), ThroughputEstimates({k: v for k, v in THETA.items() if k[0] == "a"}))
    first = step(SETTINGS, state, RequestArrived("r1", 10))
    assert first.phases == (Phase.LOOKUP, Phase.PROFILE)
    assert of(first.actions, Profile) == [Profile("b", "small"), Profile("b", "big")]
    one = step(SETTINGS, first.state, Profiled("b", "small", 32, 32 / 20.0))
    assert one.phases == () and one.state.awaiting == {("b", "big")}
    done = step(SETTINGS, one.state, Profiled("b", "big", 32, 32 / 5.0))
    assert done.phases == (Phase.LOOKUP, Phase.CONFIGURE)
    assert done.state.estimates.get("b", "big") == pytest.approx(5.0)
    assert of(done.actions, Selected)[0].reason == "profiled"


def test_a_node_joining_is_profiled_at_the_next_request() -> None:
    state, _ = run_request(fresh(("a", "b")), "r1", 20)
    joined = step(SETTINGS, state, NodeJoined("c"))
    assert joined.phases == () and joined.state.nodes == ("a", "b", "c")
    nxt = step(SETTINGS, joined.state, RequestArrived("r2", 20))
    assert nxt.phases == (Phase.LOOKUP, Phase.PROFILE)
    assert {(p.node, p.variant) for p in of(nxt.actions, Profile)} == {("c", "small"), ("c", "big")}


def test_node_loss_mid_request_loses_no_image() -> None:
    first = step(SETTINGS, fresh(), RequestArrived("r1", 100))
    ready = load_all(first.state, first)
    dispatches = of(ready.actions, Dispatch)
    victim = max(dispatches, key=lambda d: d.stop - d.start).node
    survivor = next(d for d in dispatches if d.node != victim)
    state = answer(ready.state, survivor).state  # one part answered before the loss
    left = step(SETTINGS, state, NodeLeft(victim))
    assert left.phases[0] is Phase.LOOKUP and left.state.nodes == tuple(n for n in "abc" if n != victim)
    assert of(left.actions, Selected)[0].reason == f"node {victim} left"
    redo = load_all(left.state, left)
    assert redo.state.phase is Phase.EXECUTE
    lost = sum(d.stop - d.start for d in dispatches if d.node == victim)
    again = of(redo.actions, Dispatch)
    assert sum(d.stop - d.start for d in again) == lost and all(d.node != victim for d in again)
    state = redo.state
    # a late answer from the node that left is ignored
    stale = next(d for d in dispatches if d.node == victim)
    assert step(SETTINGS, state, PartDone("r1", stale.part, victim, stale.stop - stale.start, 1.0)).state == state
    for d in [d for d in dispatches if d.node != victim and d is not survivor] + again:
        out = answer(state, d)
        state = out.state
    (reply,) = of(out.actions, Reply)
    assert out.state.active == ()  # the request is closed
    covered = sorted((d.start, d.stop) for d in [*(d for d in dispatches if d.node != victim), *again])
    position = 0
    for start, stop in covered:  # every image answered exactly once
        assert start == position
        position = stop
    assert position == 100 and reply.images == 100
    assert sum(images for _, _, images in reply.answered_by) == 100


def test_throughput_deviation_replans_and_swaps_without_losing_parts() -> None:
    settings = replace(SETTINGS, target=ThroughputTarget(20.0))
    first = step(settings, fresh(), RequestArrived("r1", 200))
    ready = load_all(first.state, first, settings)
    before = of(first.actions, Selected)[0].selection
    dispatches = of(ready.actions, Dispatch)
    slow = max(dispatches, key=lambda d: THETA[(d.node, d.variant)])
    # within 10%: nothing happens
    calm = answer(ready.state, slow, slowdown=1.05, settings=settings)
    assert calm.phases == () and calm.state.table_version == ready.state.table_version
    # the fastest node runs at a third of its estimate: re-plan while the others still compute
    hit = answer(ready.state, slow, slowdown=3.0, settings=settings)
    assert hit.phases[0] is Phase.LOOKUP
    (selected,) = of(hit.actions, Selected)
    theta = THETA[(slow.node, slow.variant)]
    assert selected.reason.startswith(f"throughput of {slow.variant} on {slow.node}: measured")
    assert "(-67%)" in selected.reason
    assert hit.state.estimates.get(slow.node, slow.variant) == pytest.approx(theta / 3)  # taken as measured
    other = next(v.name for v in VARIANTS if v.name != slow.variant)
    assert hit.state.estimates.get(slow.node, other) == pytest.approx(THETA[(slow.node, other)] / 3)
    # within the band a measurement is averaged in
    assert calm.state.estimates.get(slow.node, slow.variant) == pytest.approx(0.5 * theta + 0.5 * theta / 1.05)
    assert selected.selection != before
    # parts still running keep their variant; new loads are acknowledged while they run
    state = load_all(hit.state, hit, settings).state
    assert state.phase is Phase.EXECUTE
    for d in dispatches:
        if d is not slow:
            out = answer(state, d, settings=settings)
            state = out.state
    (reply,) = of(out.actions, Reply)
    assert sorted(reply.answered_by) == sorted((d.node, d.variant, d.stop - d.start) for d in dispatches)


def test_deviation_on_the_last_part_replans_at_the_next_lookup() -> None:
    first = step(SETTINGS, fresh(), RequestArrived("r1", 60))
    ready = load_all(first.state, first)
    state = ready.state
    dispatches = of(ready.actions, Dispatch)
    for d in dispatches[:-1]:
        state = answer(state, d).state
    last = answer(state, dispatches[-1], slowdown=1.5)
    assert last.phases == (Phase.AGGREGATE, Phase.IDLE)
    nxt = step(SETTINGS, last.state, RequestArrived("r2", 60))
    assert of(nxt.actions, Selected)[0].reason.startswith(f"throughput of {dispatches[-1].variant}")


def test_requests_queue_and_start_in_turn() -> None:
    first = step(SETTINGS, fresh(), RequestArrived("r1", 30))
    queued = step(SETTINGS, first.state, RequestArrived("r2", 12))
    assert queued.phases == () and queued.state.queue == (RequestArrived("r2", 12),)
    ready = load_all(queued.state, first)
    state = ready.state
    for d in of(ready.actions, Dispatch):
        out = answer(state, d)
        state = out.state
    assert out.phases == (Phase.AGGREGATE, Phase.IDLE, Phase.LOOKUP, Phase.CONFIGURE, Phase.DISPATCH, Phase.EXECUTE)
    assert of(out.actions, Reply)[0].request == "r1"
    assert {d.request for d in of(out.actions, Dispatch)} == {"r2"}
    with pytest.raises(ManagerError, match="request 'r2' is already queued or running"):
        step(SETTINGS, out.state, RequestArrived("r2", 1))


def test_every_node_gone_stalls_until_one_joins() -> None:
    state, _ = run_request(fresh(("a",)), "r1", 5)
    state = step(SETTINGS, state, NodeLeft("a")).state
    stalled = step(SETTINGS, state, RequestArrived("r2", 5))
    assert stalled.phases == (Phase.LOOKUP,) and of(stalled.actions, Stalled)
    back = step(SETTINGS, stalled.state, NodeJoined("a"))  # it was forgotten when it left: profiled again
    assert back.phases == (Phase.PROFILE,) and {p.variant for p in of(back.actions, Profile)} == {"small", "big"}


def test_infeasible_target_is_reported() -> None:
    settings = replace(SETTINGS, target=ThroughputTarget(1000.0))
    first = step(settings, fresh(), RequestArrived("r1", 10))
    (selected,) = of(first.actions, Selected)
    assert not selected.selection.feasible and selected.selection.variants == ("small", "small", "small")
    assert "exceeds the most any configuration sustains (68 images/s)" in selected.selection.note
    assert first.state.describe()["targetMet"] is False


def test_baseline_policies_drive_the_same_machine() -> None:
    settings = replace(SETTINGS, policy=ProportionalSplit(), target=None)
    _, actions = run_request(fresh(), "r1", 34)
    assert of(actions, Reply)
    _, actions = run_request(fresh(), "r1", 34, settings)
    (reply,) = of(actions, Reply)
    assert reply.accuracy == pytest.approx(0.95) and sum(i for *_, i in reply.answered_by) == 34


def test_malformed_events_are_refused() -> None:
    first = step(SETTINGS, fresh(), RequestArrived("r1", 10))
    ready = load_all(first.state, first)
    d = of(ready.actions, Dispatch)[0]
    with pytest.raises(ManagerError, match=f"part {d.part}: reported by 'zz' for"):
        step(SETTINGS, ready.state, PartDone("r1", d.part, "zz", d.stop - d.start, 1.0))
    with pytest.raises(ManagerError, match="images must be >= 1"):
        step(SETTINGS, ready.state, RequestArrived("r9", 0))
    with pytest.raises(ManagerError, match="profile of unknown variant 'huge'"):
        step(SETTINGS, ready.state, Profiled("a", "huge", 1, 1.0))
    with pytest.raises(ThroughputError, match="positive duration"):
        step(SETTINGS, ready.state, PartDone("r1", d.part, d.node, d.stop - d.start, 0.0))


def test_estimates_from_the_cost_model_and_ewma() -> None:
    family = shipped_family().family
    graphs = family_graphs(family, batch=32)
    device = Device("d", reference_profile(), speed=0.5)
    cluster = Cluster((device, Device("e", reference_profile(), speed=2.0)), "d")
    estimates = ThroughputEstimates.predicted(cluster, graphs)
    for name, graph in graphs.items():
        expected = 32 / sum(device.layer_time(layer, None, 32) for layer in graph.layers)
        assert estimates.get("d", name) == pytest.approx(expected) == pytest.approx(variant_throughput(device, graph))
        assert estimates.get("e", name) == pytest.approx(4 * expected)
    xs, xl = estimates.get("d", "digits-xs"), estimates.get("d", "digits-xl")
    assert xs is not None and xl is not None and xs > 5 * xl  # the family spans a real cost range
    refined = estimates.observe("d", "digits-xl", 100, 100 / (xl / 2))
    assert refined.get("d", "digits-xl") == pytest.approx(0.75 * xl) and refined.version == estimates.version + 1
    assert refined.get("d", "digits-xs") == pytest.approx(0.75 * xs)  # the node slowed down, not one variant
    assert refined.get("e", "digits-xl") == estimates.get("e", "digits-xl")
    assert refined.without("d").missing(("d", "e"), ("digits-xs",)) == (("d", "digits-xs"),)
    assert ThroughputEstimates().observe("n", "v", 10, 2.0).get("n", "v") == 5.0  # first measurement as is


def test_a_window_admits_the_next_request_while_one_runs() -> None:
    settings = replace(SETTINGS, window=2)
    first = step(settings, fresh(), RequestArrived("r1", 40))
    ready = load_all(first.state, first, settings)
    r1 = of(ready.actions, Dispatch)
    second = step(settings, ready.state, RequestArrived("r2", 40))
    assert second.phases == (Phase.LOOKUP, Phase.CONFIGURE, Phase.DISPATCH, Phase.EXECUTE)
    r2 = of(second.actions, Dispatch)
    assert {d.request for d in r2} == {"r2"} and sum(d.stop - d.start for d in r2) == 40
    third = step(settings, second.state, RequestArrived("r3", 40))
    assert third.phases == () and [q.request for q in third.state.queue] == ["r3"]  # the window is full
    state = third.state
    for d in r1:
        out = answer(state, d, settings=settings)
        state = out.state
    # r1 answered; r3 admitted in the same step while r2 still runs
    assert [a.request for a in of(out.actions, Reply)] == ["r1"]
    assert out.phases == (Phase.AGGREGATE, Phase.EXECUTE, Phase.LOOKUP, Phase.CONFIGURE, Phase.DISPATCH,
                          Phase.EXECUTE)
    assert [r.request for r in out.state.active] == ["r2", "r3"]
    # a node loss re-dispatches the lost images of every request in flight
    victim = r2[0].node
    left = step(settings, out.state, NodeLeft(victim))
    again = of(left.actions + load_all(left.state, left, settings).actions, Dispatch)
    lost = {r: sum(p.images for p in progress.running if p.node == victim)
            for r, progress in ((p.request, p) for p in out.state.active)}
    assert {r: sum(d.stop - d.start for d in again if d.request == r) for r in lost} == lost
    with pytest.raises(ManagerError, match="window must be >= 1"):
        replace(SETTINGS, window=0)
