"""AR-MDI allocation: contiguous unit ranges covering the model once, each cut the closest to its target
(checked against brute force), |P(b_n) − R_n| ≤ max W_u; γ as an EWMA whose fixed point balances the shares."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepart.executor import Executor, compare
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_graph, load_model, trace_ref
from edgepart.policy.allocation import (
    RingAllocation,
    UnitTable,
    ar_mdi_allocation,
    parameter_shares,
    ring_from,
    round_cumulative,
)
from edgepart.policy.errors import PolicyError
from edgepart.policy.gamma import GammaEstimator


def table_of(params: list[int]) -> UnitTable:
    # units of 2 layers each, so unit and layer indices differ
    return UnitTable(tuple(range(0, 2 * len(params) + 1, 2)), tuple(params))


@settings(max_examples=300, deadline=None)
@given(params=st.lists(st.integers(0, 1000), min_size=1, max_size=12),
       gamma=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6))
def test_ranges_are_contiguous_cover_once_and_each_cut_is_the_closest(params: list[int], gamma: list[float]) -> None:
    table = table_of(params)
    ring = [f"w{i}" for i in range(len(gamma))]
    allocation = ar_mdi_allocation(table, dict(zip(ring, gamma, strict=True)), ring, ring[0])
    shares = allocation.shares
    assert [s.worker for s in shares] == ring
    assert shares[0].start_unit == 0 and shares[-1].stop_unit == table.count
    for a, b in itertools.pairwise(shares):
        assert a.stop_unit == b.start_unit
    assert all(s.start_unit <= s.stop_unit for s in shares)
    assert [(s.start, s.stop) for s in shares] == [table.layers(s.start_unit, s.stop_unit) for s in shares]
    assert sum(s.params for s in shares) == table.total
    # |P(b_n) − R_n| ≤ max W, and b_n is the argmin over [b_{n−1}, U] (brute force; ties to the smaller b)
    prefix = table.prefix()
    targets = list(itertools.accumulate(parameter_shares(gamma, table.total)))
    for n, share in enumerate(shares[:-1]):
        assert abs(prefix[share.stop_unit] - targets[n]) <= max(params) + 1e-6 * table.total
        low = share.start_unit
        best = min(range(low, table.count + 1), key=lambda b: (abs(prefix[b] - targets[n]), b))
        assert share.stop_unit == best


def test_shares_follow_one_over_gamma() -> None:
    assert parameter_shares([1.0, 2.0, 4.0], 700) == pytest.approx((400.0, 200.0, 100.0))
    # equal parameters per unit: a twice-as-fast worker gets twice the units
    allocation = ar_mdi_allocation(table_of([10] * 9), {"a": 1.0, "b": 2.0}, ["a", "b"], "a")
    assert [(s.start_unit, s.stop_unit) for s in allocation.shares] == [(0, 6), (6, 9)]


def test_the_ring_starts_at_each_source() -> None:
    table = table_of([10] * 6)
    gamma = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert ring_from(["a", "b", "c"], "b") == ("b", "c", "a")
    allocation = ar_mdi_allocation(table, gamma, ["a", "b", "c"], "b")
    assert [(s.worker, s.start_unit, s.stop_unit) for s in allocation.shares] == [("b", 0, 2), ("c", 2, 4), ("a", 4, 6)]
    assert allocation.last == "a"
    assert allocation.next_holder("b") == "c" and allocation.next_holder("a") is None
    assert allocation.cuts == (4, 8)


def test_a_worker_with_an_empty_share_relays() -> None:
    # c is so slow that its share rounds to nothing: b's activation crosses c to reach a
    table = table_of([10, 10, 10, 10])
    allocation = ar_mdi_allocation(table, {"a": 1.0, "b": 1.0, "c": 100.0, "d": 1.0}, ["b", "c", "d", "a"], "b")
    c = allocation.share_of("c")
    assert c.empty and c.params == 0
    assert [s.worker for s in allocation.holders] == ["b", "d", "a"]
    assert allocation.next_holder("b") == "d"
    assert allocation.path("b") == ("c", "d")
    assert allocation.next_holder("c") == "d"  # a relay knows where to send on
    assert allocation.path("a") == ()


def test_real_graph_cuts_are_cut_points_and_cover_every_layer() -> None:
    graph = load_graph(ModelRef("mobilenet_v2", (1, 3, 256, 256)))
    table = UnitTable.of(graph)
    assert table.total == sum(layer.params for layer in graph.layers)
    assert table.boundaries[-1] == len(graph.layers)
    ring = [f"w{i}" for i in range(5)]
    allocation = ar_mdi_allocation(table, dict.fromkeys(ring, 1e-8), ring, "w2")
    covered = [i for s in allocation.shares for i in range(s.start, s.stop)]
    assert covered == list(range(len(graph.layers)))
    for cut in allocation.cuts:
        assert graph.is_cut(cut)
    # the classifier holds 36% of MobileNetV2's parameters: one fifth of W rounds it into a share of its own
    assert allocation.shares[-1].params == graph.layers[-1].params


@pytest.mark.parametrize(("gamma", "field"), [({"a": 0.0, "b": 1.0}, "gamma[0]"), ({"a": 1.0}, "gamma: no")])
def test_bad_gamma_names_the_field(gamma: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ar_mdi_allocation(table_of([1, 2]), gamma, ["a", "b"], "a")


def test_unknown_source_and_bad_ring_are_refused() -> None:
    with pytest.raises(PolicyError, match="source 'z' is not on the ring"):
        ar_mdi_allocation(table_of([1, 2]), {"a": 1.0}, ["a"], "z")
    with pytest.raises(PolicyError, match="distinct"):
        ar_mdi_allocation(table_of([1, 2]), {"a": 1.0}, ["a", "a"], "a")
    with pytest.raises(PolicyError, match="is not on the ring"):
        RingAllocation("a", ()).share_of("b")


def test_round_cumulative_gives_every_unit_to_the_last_worker_when_shares_are_zero() -> None:
    assert round_cumulative((0, 0, 0), (0.0, 0.0)) == (0, 0, 2)


# ------------------------------------------------------------------ γ


def test_gamma_is_an_ewma_of_seconds_per_parameter() -> None:
    estimator = GammaEstimator.prior(2.0, 1000, smoothing=0.25)
    assert estimator.value == pytest.approx(2e-3)
    after = estimator.observed(1.0, 100)  # 1e-2 s per parameter
    assert after.value == pytest.approx(0.75 * 2e-3 + 0.25 * 1e-2)
    assert after.samples == 1
    assert estimator.value == pytest.approx(2e-3)  # a value: the original is unchanged
    assert after.observed(0.5, 0) == after  # a share without parameters says nothing about γ


def test_gamma_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(PolicyError, match=r"gamma\.smoothing"):
        GammaEstimator(1.0, smoothing=0.0)
    with pytest.raises(PolicyError, match=r"gamma\.value"):
        GammaEstimator(-1.0)
    with pytest.raises(PolicyError, match="seconds"):
        GammaEstimator(1.0).observed(float("nan"), 3)


def test_measured_gamma_moves_the_allocation_to_equal_share_times() -> None:
    # early units compute a lot per parameter (like a CNN's first convolutions), late ones little
    params = [10, 10, 10, 40, 40, 40, 200, 200]
    seconds = [5.0, 5.0, 5.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    table = table_of(params)
    ring = ["a", "b"]
    estimators = {w: GammaEstimator.prior(sum(seconds), table.total, smoothing=0.5) for w in ring}
    first = ar_mdi_allocation(table, {w: e.value for w, e in estimators.items()}, ring, "a")
    cuts = []
    for _ in range(30):
        allocation = ar_mdi_allocation(table, {w: e.value for w, e in estimators.items()}, ring, "a")
        cuts.append(allocation.shares[0].stop_unit)
        for share in allocation.shares:
            spent = sum(seconds[share.start_unit:share.stop_unit])
            estimators[share.worker] = estimators[share.worker].observed(spent, share.params)
    # by parameters alone a runs 22 of the 23 s; equal times lie between cut 2 (10 s | 13 s) and cut 3 (15 | 8):
    # measured γ brings the cut there and keeps it on one of those two
    assert [sum(seconds[s.start_unit:s.stop_unit]) for s in first.shares] == [22.0, 1.0]
    assert set(cuts[6:]) <= {2, 3}


def test_any_allocation_computes_exactly_what_the_whole_model_computes() -> None:
    ref = ModelRef("mobilenet_v2", (1, 3, 128, 128))  # the input size changes no cut point
    gm, graph = trace_ref(ref, load_model(ref))
    executor = Executor(gm, graph)
    table = UnitTable.of(graph)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    expected = executor.run_whole(x)
    ring = ["a", "b", "c", "d", "e"]
    cases = [({"a": 1.0, "b": 1.0}, "b"), ({"a": 1.0, "b": 2.0, "c": 0.5}, "c"),
             ({"a": 1.0, "b": 300.0, "c": 1.0, "d": 1.0, "e": 3.0}, "a")]  # b's share rounds to nothing
    for gamma, source in cases:
        allocation = ar_mdi_allocation(table, gamma, ring[:len(gamma)], source)
        if gamma["b"] > 100:  # the activation crosses b on its way from a to c
            assert allocation.share_of("b").empty and allocation.path("a") == ("b", "c")
        current = x
        for share in allocation.holders:  # each worker runs its range on what the previous one sent
            region = Region.full(graph.shape_at(share.stop) if share.stop < len(graph.layers) else graph.output_shape)
            current = executor.runner(share.start, share.stop, region)(current)
        assert compare(expected, current).allclose, (gamma, source)
