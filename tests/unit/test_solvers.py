"""fused-dp and pipeline-dp against brute force on random small instances, plus the searches' invariants.

Instances are small CNNs traced with torch.fx (2-5 units: convs of random kernel and
stride, pools, conv+bn+relu, sometimes a flatten + fc head), 1-4 devices of random
speed, random bandwidth, latency and medium, a random master. Brute force enumerates
every plan of the same space and costs it with the reference evaluator from the exact
geometry, so a mismatch is a search bug (or a fast-path cost bug).
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from torch import nn

from edgepart.executor import compare, use_exact_kernels
from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.graph.loader import ModelRef
from edgepart.plan import StagedPlan, check_plan, check_stages
from edgepart.planner.brute_force import solve_brute_force
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import check_memory, evaluate, memory_use
from edgepart.planner.fused_dp import solve_fused_dp
from edgepart.planner.pipeline_dp import device_types, solve_pipeline_dp
from edgepart.planner.problem import Lane, Problem, balance
from edgepart.planner.registry import solve

INSTANCES = 120


def costed(staged: StagedPlan, graph: LayerGraph, cluster: Cluster):  # type: ignore[no-untyped-def]
    """The evaluator's prediction for a chain solver's stages (as the task graph `solve` returns)."""
    return evaluate(staged.to_plan(cluster.master), graph, cluster)


def random_graph(rng: random.Random, name: str, max_units: int = 5) -> LayerGraph:
    c, size = rng.choice([3, 4]), rng.choice([8, 12, 16])
    layers: list[nn.Module] = []
    channels, h = c, size
    for _ in range(rng.randint(2, max_units)):
        r = rng.random()
        if r < 0.6:
            k = rng.choice([1, 3])
            s = 2 if rng.random() < 0.25 and h >= 6 else 1
            out = rng.choice([4, 8])
            layers += [nn.Conv2d(channels, out, k, s, k // 2), nn.ReLU()]
            channels, h = out, (h + 2 * (k // 2) - k) // s + 1
        elif r < 0.8 and h >= 4:
            layers.append(nn.MaxPool2d(2, 2))
            h //= 2
        else:
            layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU()]
    if rng.random() < 0.3:
        layers += [nn.Flatten(), nn.Linear(channels * h * h, 10)]
    _, graph = trace(nn.Sequential(*layers).eval(), (1, c, size, size), name)
    return graph


def random_cluster(rng: random.Random, devices: int | None = None, memory: int = 2**30) -> Cluster:
    n = devices or rng.randint(1, 4)
    base = reference_profile()
    devs = tuple(Device(f"d{i}", base, rng.choice([0.001, 0.002, 0.005, 0.01]) * rng.uniform(0.5, 2), memory)
                 for i in range(n))
    link = Link(rng.choice([0.0, 1e-4, 1e-3]), rng.choice([1e5, 1e6, 1e7]))
    return Cluster(devs, devs[rng.randrange(n)].name, rng.choice(["switched", "shared"]), link)


def instance(seed: int) -> tuple[LayerGraph, Cluster, ModelRef]:
    rng = random.Random(seed)
    graph = random_graph(rng, f"rand{seed}")
    return graph, random_cluster(rng), ModelRef(f"rand{seed}", input_shape=graph.input_shape)


@pytest.mark.parametrize("chunk", range(4))
def test_fused_dp_equals_brute_force(chunk: int) -> None:
    compared = 0
    for seed in range(chunk, INSTANCES, 4):
        graph, cluster, ref = instance(seed)
        problem = Problem(graph, cluster, ref)
        for sets in ("prefix", "subsets"):
            try:
                oracle = solve_brute_force(problem, "latency", device_sets=sets, max_plans=20_000)
            except PlanningError:
                continue  # too many plans for the oracle
            plan = solve_fused_dp(problem, device_sets=sets)
            check_stages(plan, graph)
            best = costed(oracle, graph, cluster).latency_s
            found = costed(plan, graph, cluster).latency_s
            assert math.isclose(found, best, rel_tol=1e-9), (seed, sets, found, best)
            assert math.isclose(plan.meta["search_latency_s"], found, rel_tol=1e-9), seed
            compared += 1
    assert compared >= INSTANCES // 4  # most instances are small enough for the oracle


@pytest.mark.parametrize("chunk", range(2))
def test_pipeline_dp_equals_brute_force(chunk: int) -> None:
    for seed in range(chunk, INSTANCES, 2):
        graph, cluster, ref = instance(seed)
        problem = Problem(graph, cluster, ref)
        for objective in ("throughput", "latency"):
            oracle = costed(solve_brute_force(problem, objective, space="pipeline"), graph, cluster)
            plan = solve_pipeline_dp(problem, objective)
            check_stages(plan, graph)
            found = costed(plan, graph, cluster)
            devices = [p.device for s in plan.stages for p in s.partitions]
            assert len(devices) == len(set(devices)), "pipeline stages must use distinct devices"
            if objective == "throughput":
                assert math.isclose(found.throughput_per_s, oracle.throughput_per_s, rel_tol=1e-9), seed
            assert math.isclose(found.latency_s, oracle.latency_s, rel_tol=1e-9) or (objective == "throughput" \
                and found.latency_s <= oracle.latency_s * (1 + 1e-9)), seed
            assert math.isclose(1 / found.throughput_per_s, plan.meta["search_bottleneck_s"], rel_tol=1e-9)


def test_pipeline_dp_respects_memory_and_says_when_nothing_fits() -> None:
    rng = random.Random(7)
    graph = random_graph(rng, "mem", max_units=5)
    ref = ModelRef("mem", input_shape=graph.input_shape)
    loose = random_cluster(random.Random(1), devices=3)
    problem = Problem(graph, loose, ref)
    need = max(problem.single_memory(i, i + 1) for i in range(problem.L))
    total = problem.single_memory(0, problem.L)
    # each device holds a bit more than the largest unit but less than the whole model
    tight = Cluster(tuple(Device(d.name, d.profile, d.speed, need + 1) for d in loose.devices), loose.master,
                    loose.medium, loose.network)
    assert total > need + 1
    plan = solve(graph, ref, tight, "throughput", "pipeline-dp")
    check_memory(plan, graph, tight)
    assert all(use <= need + 1 for use in memory_use(plan, graph).values())
    assert len(plan.stage_view()) >= 2  # the model had to be cut to fit
    tiny = Cluster(tuple(Device(d.name, d.profile, d.speed, 64) for d in loose.devices), loose.master)
    with pytest.raises(PlanningError, match=r"needs .* MiB"):
        solve(graph, ref, tiny, "throughput", "pipeline-dp")
    with pytest.raises(PlanningError, match="memory"):
        solve(graph, ref, tiny, "latency", "fused-dp")


@pytest.mark.parametrize("seed", range(12))
def test_adding_a_device_never_makes_the_optimum_worse(seed: int) -> None:
    rng = random.Random(100 + seed)
    graph = random_graph(rng, f"add{seed}")
    ref = ModelRef(f"add{seed}", input_shape=graph.input_shape)
    cluster = random_cluster(rng, devices=rng.randint(1, 3))
    extra = Device("extra", reference_profile(), rng.choice([0.001, 0.004, 0.02]), 2**30)
    bigger = cluster.with_device(extra)
    small, large = Problem(graph, cluster, ref), Problem(graph, bigger, ref)
    before = costed(solve_fused_dp(small, device_sets="subsets"), graph, cluster).latency_s
    after = costed(solve_fused_dp(large, device_sets="subsets"), graph, bigger).latency_s
    assert after <= before * (1 + 1e-9)
    before_t = costed(solve_pipeline_dp(small), graph, cluster).throughput_per_s
    after_t = costed(solve_pipeline_dp(large), graph, bigger).throughput_per_s
    assert after_t >= before_t * (1 - 1e-9)


@pytest.mark.parametrize("solver", ["fused-dp", "pipeline-dp", "single", "layerwise", "ftp-grid", "auto"])
def test_every_solver_plan_covers_layers_in_order_and_carries_the_evaluators_prediction(solver: str) -> None:
    for seed in range(6):
        graph, cluster, ref = instance(1000 + seed)
        for objective in ("latency", "throughput"):
            try:
                plan = solve(graph, ref, cluster, objective, solver)
            except PlanningError as err:
                assert solver == "ftp-grid", err  # a graph whose first unit cannot be tiled
                continue
            check_plan(plan, graph)  # every task's input covered, the output covered, at cut points
            stages = plan.stage_view()  # a chain: stages cover [0, L) in order, their outputs tile exactly
            assert stages[0].start == 0 and stages[-1].stop == len(graph)
            assert all(a.stop == b.start for a, b in itertools.pairwise(stages))
            assert all(sum(t.output.size for t in s.tasks) == math.prod(graph.shape_at(s.stop)) for s in stages)
            assert plan.predicted == evaluate(plan, graph, cluster)
            check_memory(plan, graph, cluster)
            assert plan.meta["master"] == cluster.master


def test_fused_dp_beats_or_matches_every_builder() -> None:
    for seed in range(8):
        graph, cluster, ref = instance(2000 + seed)
        best = solve(graph, ref, cluster, "latency", "fused-dp", device_sets="subsets").predicted
        assert best is not None
        for solver in ("single", "layerwise"):
            other = solve(graph, ref, cluster, "latency", solver).predicted
            assert other is not None
            # layerwise splits units fused-dp also considers (equal shares are one of many options) only
            # when every unit is splittable; single always is in its space
            if solver == "single":
                assert best.latency_s <= other.latency_s * (1 + 1e-9)


# ------------------------------------------------------------------ B.3 balancing


def _lanes(times: list[tuple[float, float]], n: int) -> list[Lane]:
    """Lanes with cost k + r·rows and no transfers (the classic min-max partition)."""
    return [Lane(f"d{i}", True, k, [-math.inf, *(r * b for b in range(1, n + 1))], [r * a for a in range(n + 1)])
            for i, (k, r) in enumerate(times)]


def _makespan(lanes: list[Lane], parts: list[tuple[int, int, int]]) -> float:
    return max(lanes[i].total(a, b) for i, a, b in parts)


def _compositions(n: int, k: int) -> list[list[int]]:
    if k == 1:
        return [[n]]
    return [[first, *rest] for first in range(n + 1) for rest in _compositions(n - first, k - 1)]


@pytest.mark.parametrize("seed", range(40))
def test_balance_is_optimal_for_a_fixed_order_and_beats_proportional(seed: int) -> None:
    rng = random.Random(seed)
    n, k = rng.randint(1, 20), rng.randint(1, 4)
    lanes = _lanes([(rng.choice([0.0, 0.1, 1.0]), rng.uniform(0.2, 5.0)) for _ in range(k)], n)
    refined, prop = balance(lanes, n)
    assert sum(b - a for _, a, b in refined) == n
    assert all(b > a for _, a, b in refined)
    assert [i for i, _, _ in refined] == sorted(i for i, _, _ in refined)  # order kept
    best = min(max((lanes[i].total(0, c) if c else 0.0) for i, c in enumerate(sizes))
               for sizes in _compositions(n, k))
    assert _makespan(lanes, refined) <= best * (1 + 2e-4)
    assert _makespan(lanes, refined) <= _makespan(lanes, prop) * (1 + 2e-4)


# ------------------------------------------------------------------ zoo plans, verified exactly


@pytest.mark.parametrize("name", ["vgg16", "yolov2"])
def test_fused_dp_zoo_plans_compute_the_whole_models_answer(name: str, zoo_traced) -> None:  # type: ignore[no-untyped-def]
    use_exact_kernels()
    _, graph, executor = zoo_traced(name)
    ref = ModelRef(name)
    base = reference_profile()
    devices = (Device("cam", base, 0.2), Device("jetson", base, 0.5), Device("pi", base, 0.2),
               Device("server", base, 1.0))
    cluster = Cluster(devices, "cam", "switched", Link(2e-3, 1e9 / 8))
    plan = solve(graph, ref, cluster, "latency", "fused-dp")
    assert any(len(s.tasks) > 1 for s in plan.stage_view()), \
        "at 1 Gbps the search should split some segment"
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(0))
    result = compare(executor.run_whole(x), executor.run_plan(plan, x))
    assert result.allclose, result


def test_device_types_group_identical_devices_only() -> None:
    base = reference_profile()
    devices = tuple(Device(f"d{i}", base, 1.0 if i < 4 else 0.5) for i in range(6))
    cluster = Cluster(devices, "d0", overrides={("d1", "d2"): Link(0.0, 1e9)})
    groups = sorted(sorted(g) for g in device_types(cluster))
    assert groups == [[0], [1], [2], [3], [4, 5]]


@pytest.mark.parametrize("seed", range(3))
def test_fused_dp_equals_brute_force_with_message_overheads(seed: int) -> None:
    rng = random.Random(4000 + seed)
    compared = 0
    for _ in range(6):
        graph = random_graph(rng, f"ovh{seed}")
        loose = random_cluster(rng, devices=rng.randint(2, 3))
        devices = tuple(Device(d.name, d.profile, d.speed, d.memory_bytes,
                               message_overhead_s=rng.choice([0.0, 1e-6, 1e-5, 1e-4]) * rng.uniform(0.5, 2))
                        for d in loose.devices)
        cluster = Cluster(devices, loose.master, loose.medium, loose.network)
        ref = ModelRef(f"ovh{seed}", input_shape=graph.input_shape)
        problem = Problem(graph, cluster, ref)
        try:
            oracle = solve_brute_force(problem, "latency", device_sets="subsets", max_plans=20_000)
        except PlanningError:
            continue  # too many plans for the oracle
        best = costed(oracle, graph, cluster).latency_s
        found = costed(solve_fused_dp(problem, device_sets="subsets"), graph, cluster).latency_s
        assert math.isclose(found, best, rel_tol=1e-9), (seed, found, best)
        compared += 1
    assert compared >= 2


def test_a_large_message_overhead_makes_fused_dp_use_fewer_partitions() -> None:
    layers = [layer for _ in range(4) for layer in (nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())]
    _, graph = trace(nn.Sequential(*layers).eval(), (1, 16, 64, 64), "convs")
    ref = ModelRef("convs", input_shape=graph.input_shape)

    def partitions(overhead: float) -> int:
        base = reference_profile()
        cluster = Cluster(tuple(Device(f"d{i}", base, 1.0, message_overhead_s=overhead) for i in range(4)), "d0",
                          "switched", Link(1e-4, 1e9 / 8))
        plan = solve(graph, ref, cluster, "latency", "fused-dp")
        return len(plan.compute_tasks)

    cheap, costly, prohibitive = partitions(0.0), partitions(2e-3), partitions(1.0)
    assert cheap > 1
    assert prohibitive == 1  # any hop costs more than the whole model: it stays on the master
    assert cheap >= costly >= prohibitive
