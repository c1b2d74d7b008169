"""DSE table, Pareto front (dynamic program vs brute force), shares, image counts, completion time, policy."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from edgepart.planner.cluster import Link
from edgepart.policy.dse import (
    MAX_TABLE_ROWS,
    OFF,
    Configuration,
    DseError,
    DseProblem,
    Node,
    Variant,
    all_configurations,
    brute_force_front,
    completion_time,
    dse_table,
    image_counts,
    pareto_front,
    timeline,
)
from edgepart.policy.select import (
    AccuracyAwarePolicy,
    AccuracyTarget,
    Assignment,
    BestSingleNode,
    EqualSplit,
    FastestEverywhere,
    ProportionalSplit,
    ThroughputTarget,
    assignment_metrics,
    select,
)


def random_problem(rng: random.Random, nodes: int, variants: int) -> DseProblem:
    """Random instances; a third use few distinct values so that exact ties (same Θ, A or P) are common."""
    ties = rng.random() < 0.35
    power = rng.random() < 0.7
    accs = sorted(rng.choice([0.8, 0.9, 0.95]) if ties else round(rng.uniform(0.6, 0.99), 4) for _ in range(variants))
    cost = sorted((rng.choice([10.0, 20.0]) if ties else rng.uniform(5, 100) for _ in range(variants)), reverse=True)
    result = []
    for n in range(nodes):
        speed = rng.choice([1.0, 2.0]) if ties else rng.uniform(0.2, 3)
        theta = tuple(None if m and rng.random() < 0.1 else c * speed * (1 if ties else rng.uniform(0.7, 1.3))
                      for m, c in enumerate(cost))
        watts = (rng.choice([0.0, 5.0]) if ties else round(rng.uniform(1, 10), 2)) if power else 0.0
        result.append(Node(f"n{n}", theta, watts))
    return DseProblem(tuple(Variant(f"v{m}", a) for m, a in enumerate(accs)), tuple(result))


CASES = [random_problem(random.Random(seed), random.Random(seed).randint(1, 4), random.Random(-seed).randint(1, 4))
         for seed in range(150)]


@pytest.mark.parametrize("seed", range(len(CASES)))
def test_dynamic_program_equals_brute_force(seed: int) -> None:
    problem = CASES[seed]
    assert pareto_front(problem).configurations == brute_force_front(problem).configurations


def test_front_is_non_dominated_and_covers_every_configuration() -> None:
    for problem in CASES[:60]:
        front = pareto_front(problem).configurations
        for a, b in itertools.permutations(front, 2):
            assert not a.score.dominates(b.score)
            assert a.score != b.score  # one representative per point
        for c in all_configurations(problem):
            assert any(f.score.dominates(c.score) or f.score == c.score for f in front)
            same = [f for f in front if f.score == c.score]
            assert not same or same[0].choices <= c.choices  # the representative is the smallest choice tuple


def test_front_at_8_nodes_by_5_variants() -> None:
    problem = random_problem(random.Random(8), 8, 5)
    front = pareto_front(problem)
    assert problem.configuration_count > 700_000
    assert front.examined < problem.configuration_count // 20  # the pruning is what makes it tractable
    scores = [c.score for c in front.configurations]
    assert all(not a.dominates(b) for a in scores for b in scores)


def test_scores_are_exact() -> None:
    problem = DseProblem((Variant("a", 0.9), Variant("b", 0.6)),
                         (Node("x", (10.0, 30.0), 2.0), Node("y", (5.0, 15.0), 3.5)))
    score = problem.score((0, 1))  # x runs a at 10/s, y runs b at 15/s
    assert score.throughput == pytest.approx(25.0)
    assert score.accuracy_exact == Fraction(10 * 900_000 + 15 * 600_000, 25)
    assert score.accuracy == pytest.approx((10 * 0.9 + 15 * 0.6) / 25)
    assert score.power_w == pytest.approx(5.5)
    assert problem.score((OFF, 0)).power_w == pytest.approx(3.5)


def test_image_counts_by_largest_remainder() -> None:
    assert image_counts((1, 1, 1), 10) == (4, 3, 3)  # ties go to the lower index
    assert image_counts((5, 3, 2), 7) == (4, 2, 1)  # 3.5, 2.1, 1.4 -> remainders .5, .1, .4
    assert image_counts((0, 2, 0, 1), 5) == (0, 3, 0, 2)
    rng = random.Random(3)
    for _ in range(500):
        weights = [rng.choice([0, rng.randint(1, 10**9)]) for _ in range(rng.randint(1, 8))]
        if not any(weights):
            weights[0] = 1
        images = rng.randint(0, 5000)
        counts = image_counts(weights, images)
        assert sum(counts) == images
        for w, c in zip(weights, counts, strict=True):
            assert abs(Fraction(c) - Fraction(images * w, sum(weights))) < 1
            assert w or not c
    with pytest.raises(DseError, match="at least one weight"):
        image_counts((0, 0), 3)


def test_table_rows_shares_sum_to_one_and_counts_to_the_request() -> None:
    problem = random_problem(random.Random(4), 4, 5)
    rows = dse_table(problem, 97)
    assert len(rows) == problem.configuration_count
    for row in rows:
        assert sum(row.shares) == pytest.approx(1.0, abs=1e-12)
        assert sum(row.counts) == 97
        assert all((v is None) == (s == 0) for v, s in zip(row.variants, row.shares, strict=True))
        assert row.completion_s > 0
    big = DseProblem((Variant("a", 0.5),) * 1 + (Variant("b", 0.6),),
                     tuple(Node(f"n{i}", (1.0, 2.0)) for i in range(12)))
    assert big.configuration_count > MAX_TABLE_ROWS
    with pytest.raises(DseError, match=r"12 nodes x 2 variants make 531440 configurations.*use pareto_front"):
        dse_table(big, 10)


def test_completion_time_by_hand() -> None:
    # the dispatcher's NIC sends 1000 B/s after 0.1 s of alpha; images 100 B, results 10 B
    link = Link(0.1, 1000.0)
    nodes = (Node("slow", (2.0,), link_in=link, link_out=link), Node("fast", (8.0,), link_in=link, link_out=link))
    switched = DseProblem((Variant("v", 0.9),), nodes, image_bytes=100, result_bytes=10)
    counts = image_counts(switched.weights((0, 0)), 10)
    assert counts == (2, 8)
    # tails: slow 2/2 + 0.1 + 0.02 = 1.12, fast 8/8 + 0.1 + 0.08 = 1.18 -> fast first
    # fast: in 0.1 + 0.8 = 0.9, done 1.9, back 1.9 + 0.18 = 2.08
    # slow: in 0.9 + 0.1 + 0.2 = 1.2, done 2.2, back max(2.2, 2.08) + 0.12 = 2.32
    parts = timeline(switched, (0, 0), counts)
    assert [t for p in parts for t in (p.arrive_s, p.done_s, p.back_s)] == pytest.approx([1.2, 2.2, 2.32, 0.9, 1.9, 2.08])
    assert completion_time(switched, (0, 0), counts) == pytest.approx(2.32)
    # the dispatcher's own node crosses no NIC: its input arrives after the alpha alone
    local = DseProblem((Variant("v", 0.9),), (Node("me", (2.0,), link_in=Link(0.01, float("inf")),
                                                   link_out=Link(0.01, float("inf")), local=True), nodes[1]),
                       image_bytes=100, result_bytes=10)
    assert timeline(local, (0, 0), (2, 8))[0].arrive_s == pytest.approx(0.01)
    # shared medium: results wait for the last input to be sent
    shared = DseProblem(switched.variants, nodes, 1000, 10, "shared")
    one = timeline(shared, (0, 0), (1, 1))  # tails slow 0.5+0.11, fast 0.125+0.11; slow first: in 1.1, fast in 2.2
    assert [t for p in one for t in (p.arrive_s, p.back_s)] == pytest.approx([1.1, 2.31, 2.2, 2.435])


def brute_force_choice(problem: DseProblem, floor: float,
                       everything: list[Configuration] | None = None) -> Configuration | None:
    feasible = [c for c in (everything or all_configurations(problem)) if c.score.throughput_q >= math.ceil(round(floor * 1e6, 6))]
    if not feasible:
        return None
    return min(feasible, key=lambda c: (-c.score.accuracy_exact, c.score.power_q, -c.score.throughput_q, c.choices))


@pytest.mark.parametrize("seed", range(0, 150, 3))
def test_throughput_target_picks_the_exact_optimum(seed: int) -> None:
    problem = CASES[seed]
    front = pareto_front(problem)
    top = max(c.score.throughput for c in front.configurations)
    for fraction in (0.05, 0.3, 0.5, 0.8, 1.0):
        floor = math.floor(top * fraction * 1000) / 1000
        expected = brute_force_choice(problem, floor)
        chosen = select(front, ThroughputTarget(floor))
        assert expected is not None and chosen.feasible
        assert chosen.assignment.choices == expected.choices


def test_infeasible_targets_are_reported_with_the_best_available() -> None:
    problem = random_problem(random.Random(11), 3, 3)
    front = pareto_front(problem)
    fastest = max(front.configurations, key=lambda c: (c.score.throughput_q, c.score.accuracy_exact))
    chosen = select(front, ThroughputTarget(fastest.score.throughput * 2))
    assert not chosen.feasible and chosen.assignment.choices == fastest.choices
    assert "infeasible: throughput >= " in chosen.note and "exceeds the most any configuration sustains" in chosen.note
    chosen = select(front, AccuracyTarget(0.999), images=50)
    most = max(front.configurations, key=lambda c: (c.score.accuracy_exact, c.score.throughput_q))
    assert not chosen.feasible and chosen.assignment.choices == most.choices and "infeasible: accuracy" in chosen.note


def test_accuracy_target_picks_the_least_completion_time() -> None:
    problem = random_problem(random.Random(5), 4, 4)
    front = pareto_front(problem)
    floor = sorted(c.score.accuracy for c in front.configurations)[len(front) // 2]
    chosen = select(front, AccuracyTarget(floor), images=40)
    assert chosen.feasible and chosen.accuracy >= floor - 1e-9
    times = {c.choices: completion_time(problem, c.choices, image_counts(problem.weights(c.choices), 40))
             for c in front.configurations if c.score.accuracy >= floor - 1e-12}
    assert times[chosen.assignment.choices] == min(times.values())


def test_lookup_in_log_time_matches_a_scan() -> None:
    for problem in CASES[:20]:
        front = pareto_front(problem)
        everything = list(all_configurations(problem))
        for c in front.configurations:
            for floor in (c.score.throughput, c.score.throughput * 0.999):
                fast = front.most_accurate_reaching(floor)
                slow = brute_force_choice(problem, floor, everything)
                assert fast is not None and slow is not None and fast.choices == slow.choices
        assert front.most_accurate_reaching(max(front.throughputs) * 1e-6 * 1.01) is None


def test_baselines() -> None:
    problem = DseProblem((Variant("small", 0.8), Variant("big", 0.95)),
                         (Node("a", (40.0, 10.0), 5.0), Node("b", (20.0, 5.0), 3.0), Node("c", (8.0, None), 2.0)))
    equal = EqualSplit().choose(problem, ThroughputTarget(12.0), 10)
    assert equal.variants == ("big", "big", None)  # c cannot run big
    assert equal.throughput == pytest.approx(10.0)  # b saturates first: 5 images/s for half the stream
    assert equal.accuracy == pytest.approx(0.95) and equal.power_w == pytest.approx(8.0) and not equal.feasible
    proportional = ProportionalSplit().choose(problem, ThroughputTarget(12.0), 10)
    assert proportional.throughput == pytest.approx(15.0) and proportional.feasible
    fastest = FastestEverywhere().choose(problem, None, 10)
    assert fastest.variants == ("small", "small", "small") and fastest.throughput == pytest.approx(68.0)
    assert fastest.accuracy == pytest.approx(0.8)
    single = BestSingleNode().choose(problem, None, 10)
    assert single.variants == ("big", None, None) and single.throughput == pytest.approx(10.0)
    ours = AccuracyAwarePolicy().choose(problem, ThroughputTarget(30.0), 10)
    # brute force: the most accurate configuration reaching 30/s
    expected = brute_force_choice(problem, 30.0)
    assert expected is not None and ours.assignment.choices == expected.choices and ours.feasible
    assert ours.accuracy > fastest.accuracy and ours.throughput >= 30.0
    assert assignment_metrics(problem, Assignment((1, OFF, OFF), (1, 0, 0))) == pytest.approx((10.0, 0.95, 5.0))


def test_bad_problems_name_the_field() -> None:
    with pytest.raises(DseError, match="node 'x': 1 throughputs for 2 variants"):
        DseProblem((Variant("a", 0.5), Variant("b", 0.6)), (Node("x", (1.0,)),))
    with pytest.raises(DseError, match=r"node 'x': throughput\[0\] must be a finite number > 0 or None, got -1"):
        Node("x", (-1.0,))
    with pytest.raises(DseError, match="variant 'a': accuracy must be in"):
        Variant("a", 1.5)
    with pytest.raises(DseError, match=r"nodes: duplicate names \['x'\]"):
        DseProblem((Variant("a", 0.5),), (Node("x", (1.0,)), Node("x", (2.0,))))
    with pytest.raises(DseError, match="no variant can run there"):
        DseProblem((Variant("a", 0.5),), (Node("x", (None,)),))
    with pytest.raises(DseError, match="a node is off exactly when its weight is 0"):
        Assignment((0, OFF), (0, 1))
