"""Partial offloading (SOLVERS.md §5): path costs against the exact geometry, the two resource models on
hand-computed cases, MW against a step-by-step MW and against the exact optimum, NFL against every single
cut, and the invariants of every schedule (dependencies, one thing at a time, makespan >= busy time)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import statistics
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from edgepart.executor import Executor, compare
from edgepart.geometry import Region, backprop, hull_all, tiles_partition
from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.errors import PlanningError
from edgepart.planner.offload import (
    OffloadProblem,
    OffloadResult,
    OffloadSettings,
    PathCosts,
    timeline,
)
from edgepart.planner.offload.bf import bf_runs, solve_bf_problem
from edgepart.planner.offload.mw import mw_runs, solve_mw_problem
from edgepart.planner.offload.nfl import solve_nfl_problem
from edgepart.planner.offload.schedule import Run, expand_runs, runs_makespan

MODELS = ("paper", "sequential")


# ------------------------------------------------------------------ instances


def small_graph(rng: random.Random, name: str) -> LayerGraph:
    """A small CNN: 2-5 fusable units (convs of random kernel/stride, pools, conv+bn+relu), maybe an fc head."""
    channels, size = 3, rng.choice([8, 10, 12, 16])
    layers: list[nn.Module] = []
    c, h = channels, size
    for _ in range(rng.randint(2, 5)):
        r = rng.random()
        if r < 0.6:
            k = rng.choice([1, 3, 5])
            s = 2 if rng.random() < 0.3 and h >= 6 else 1
            out = rng.choice([4, 8])
            layers += [nn.Conv2d(c, out, k, s, k // 2), nn.ReLU()]
            c, h = out, (h + 2 * (k // 2) - k) // s + 1
        elif r < 0.8 and h >= 4:
            layers.append(nn.MaxPool2d(2, 2))
            h //= 2
        else:
            layers += [nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU()]
    if rng.random() < 0.4:
        layers += [nn.Flatten(), nn.Linear(c * h * h, 10)]
    _, graph = trace(nn.Sequential(*layers).eval(), (1, channels, size, size), name)
    return graph


def two_devices(rng: random.Random) -> Cluster:
    base = reference_profile()
    end_speed = rng.choice([0.001, 0.003, 0.01])
    server_speed = end_speed * rng.choice([2.0, 4.0, 10.0, 20.0])
    # small per-message costs, so that splitting into several paths can pay off
    message = rng.choice([0.0, 1e-7, 1e-6])
    devices = (Device("phone", base, end_speed, message_overhead_s=message),
               Device("server", base, server_speed, message_overhead_s=message))
    link = Link(rng.choice([0.0, 1e-4, 1e-3]), rng.choice([2e4, 1e5, 1e6, 1e7]))
    return Cluster(devices, "phone", rng.choice(["switched", "shared"]), link)


def problem_of(seed: int, model: str, max_paths: int = 5) -> OffloadProblem:
    rng = random.Random(seed)
    graph = small_graph(rng, f"off{seed}")
    settings = OffloadSettings(compute_model=model, grid_max=(max_paths, max_paths), max_paths=max_paths,  # type: ignore[arg-type]
                               bf_max_paths=min(max_paths, 6))
    return OffloadProblem(graph, two_devices(rng), settings)


def synthetic(tau: int, local: Sequence[Sequence[float]], uplink: Sequence[Sequence[float]],
              server: Sequence[Sequence[float]], counts: Sequence[int] | None = None, post: float = 1.0,
              back: float = 0.25, fuse: float = 0.5) -> PathCosts:
    """Hand-made path costs: class k has counts[k] paths (default one each), numbered class by class."""
    counts = list(counts or [1] * len(local))
    path_class = np.repeat(np.arange(len(counts)), counts)
    a, b, e = (np.array(x, dtype=float) for x in (local, uplink, server))
    return PathCosts(tau, (1, len(path_class)), path_class, np.array(counts), a, b, e, np.ones_like(a), post, back,
                     fuse)


# ------------------------------------------------------------------ costs against the exact geometry


def exact_costs(problem: OffloadProblem, tau: int, tile: Region) -> tuple[list[float], list[float], list[int]]:
    """(a[o], e[o], bytes[o]) of one tile from `backprop` + `Device.layer_time`, o = 0..τ."""
    graph = problem.graph
    bounds = problem.bounds
    geometry = backprop(graph, 0, bounds[tau], tile)
    end, server = [0.0] * tau, [0.0] * tau
    for u in range(tau):
        for i in range(bounds[u], bounds[u + 1]):
            if i in geometry.regions:
                end[u] += problem.end.layer_time(graph.layers[i], geometry.regions[i], graph.batch)
                server[u] += problem.server.layer_time(graph.layers[i], geometry.regions[i], graph.batch)
    local = [sum(end[:o]) for o in range(tau + 1)]
    remote = [sum(server[o:]) for o in range(tau + 1)]
    nbytes = []
    for o in range(tau + 1):
        region = geometry.input_region if o == 0 else geometry.regions[graph.producer_at(bounds[o])]
        nbytes.append(region.size * 4)
    return local, remote, nbytes


@pytest.mark.parametrize("seed", range(12))
def test_class_costs_equal_the_exact_geometry_on_every_path(seed: int) -> None:
    problem = problem_of(seed, "sequential", max_paths=16)
    for tau in problem.taus():
        prefix = problem.prefix(tau)
        for grid in problem.grids(tau)[:: max(1, len(problem.grids(tau)) // 6)]:
            costs = prefix.grid_costs(grid)
            for p in range(costs.paths):
                tile = prefix.tile(grid, p)
                local, remote, nbytes = exact_costs(problem, tau, tile)
                k = costs.path_class[p]
                assert costs.local[k] == pytest.approx(local, rel=1e-9, abs=1e-15)
                assert costs.server[k] == pytest.approx(remote, rel=1e-9, abs=1e-15)
                assert costs.cut_bytes[k].tolist() == nbytes
                tx = [problem.cluster.tx("phone", "server", n) for n in nbytes]
                assert costs.uplink[k] == pytest.approx(tx, rel=1e-12)
            tiles = [prefix.tile(grid, p) for p in range(costs.paths)]
            assert tiles_partition(tiles, problem.graph.shape_at(problem.bounds[tau])) is None
            assert costs.counts.sum() == grid[0] * grid[1]


def test_interior_tiles_share_one_class(zoo_traced) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster((Device("phone", reference_profile(), 0.1), Device("server", reference_profile(), 1.0)),
                      "phone", "switched", Link(1e-3, 1e6))
    prefix = OffloadProblem(zoo_traced("alexnet")[1], cluster).prefix(1)  # conv 11x11/4 + relu: 55 x 55
    costs = prefix.grid_costs((5, 5))  # 11 x 11 tiles: first, interior and last strips on each axis
    assert costs.classes <= 9  # mirror-image tiles (49 x 51 and 51 x 49 input rows) may share a class too
    assert max(costs.counts.tolist()) == 9  # the 3 x 3 interior tiles


def test_class_costs_on_zoo_models(zoo_traced) -> None:  # type: ignore[no-untyped-def]
    base = reference_profile()
    cluster = Cluster((Device("phone", base, 0.1), Device("server", base, 1.0)), "phone", "switched",
                      Link(1e-3, 1e6))
    for name, taus in (("alexnet", (1, 3, 8)), ("squeezenet1_1", (4, 21))):
        problem = OffloadProblem(zoo_traced(name)[1], cluster)
        for tau in taus:
            prefix = problem.prefix(tau)
            for grid in ((1, 1), (3, 2), (5, 5)):
                costs = prefix.grid_costs(grid)
                for p in range(costs.paths):
                    local, remote, nbytes = exact_costs(problem, tau, prefix.tile(grid, p))
                    k = costs.path_class[p]
                    assert costs.local[k] == pytest.approx(local, rel=1e-9)
                    assert costs.server[k] == pytest.approx(remote, rel=1e-9, abs=1e-15)
                    assert costs.end_unit_s[k] == pytest.approx(np.diff(local), rel=1e-9)
                    assert costs.server_unit_s[k] == pytest.approx(-np.diff(remote), rel=1e-9)
                    assert costs.cut_bytes[k].tolist() == nbytes
                assert costs.classes <= costs.paths


# ------------------------------------------------------------------ the resource models


def test_three_paths_by_hand_under_both_models() -> None:
    # τ = 2, every path cut at 1: (a, b, e) = (2, 1, 3), (2, 1, 3), (1, 2, 1); fusion delay 0.5, post 1, back 0.25
    costs = synthetic(2, [[0, 2, 9]] * 2 + [[0, 1, 9]], [[9, 1, 9]] * 2 + [[9, 2, 9]], [[9, 3, 0]] * 2 + [[9, 1, 0]])
    sequential = timeline(costs, (0, 1, 2), (1, 1, 1), "sequential")
    # L = 2, 4, 5; X = 3, 5, 7; E = 6, 9, 10; F = 10.5
    assert [p.local for p in sequential.paths] == [(0, 2), (2, 4), (4, 5)]
    assert [p.uplink for p in sequential.paths] == [(2, 3), (4, 5), (5, 7)]
    assert [p.server for p in sequential.paths] == [(3, 6), (6, 9), (9, 10)]
    assert sequential.makespan_s == 11.75
    paper = timeline(costs, (0, 1, 2), (1, 1, 1), "paper")
    # L = 2, 2, 1; X = 3, 4, 6; E = 6, 7, 7; F = 7.5
    assert [p.uplink for p in paper.paths] == [(2, 3), (3, 4), (4, 6)]
    assert [p.server for p in paper.paths] == [(3, 6), (4, 7), (6, 7)]
    assert paper.makespan_s == 8.75


def test_two_paths_by_hand_local_and_raw_input() -> None:
    # path 0 cut at τ = 2 (wholly local: a 5, b 0.5, no server part), path 1 cut at 0 (raw input: b 3, e 2)
    costs = synthetic(2, [[0, 9, 5], [0, 9, 9]], [[9, 9, 0.5], [3, 9, 9]], [[9, 9, 0], [2, 9, 0]])
    for model in MODELS:
        first_raw = timeline(costs, (1, 0), (2, 0), model)  # type: ignore[arg-type]
        assert first_raw.paths[1].server is None and first_raw.paths[0].local is None
        assert first_raw.makespan_s == 6.75  # F = max(5 + 0.5, 5.5)
        first_local = timeline(costs, (0, 1), (2, 0), model)  # type: ignore[arg-type]
        assert first_local.makespan_s == 12.25  # X = 5.5, then 8.5, E = 10.5, F = 11


@pytest.mark.parametrize("model", MODELS)
def test_closed_form_runs_equal_the_step_by_step_timeline(model: str) -> None:
    rng = random.Random(7)
    for _ in range(300):
        tau, classes = rng.randint(1, 4), rng.randint(1, 4)
        counts = [rng.randint(1, 6) for _ in range(classes)]
        local = [[0.0, *sorted(rng.uniform(0, 3) for _ in range(tau))] for _ in range(classes)]
        uplink = [[rng.uniform(0.1, 2) for _ in range(tau + 1)] for _ in range(classes)]
        server = [[*sorted((rng.uniform(0, 3) for _ in range(tau)), reverse=True), 0.0] for _ in range(classes)]
        costs = synthetic(tau, local, uplink, server, counts, fuse=rng.choice([0.0, 0.3]))
        runs: list[Run] = []
        left = counts[:]
        while sum(left):
            k = rng.choice([j for j in range(classes) if left[j]])
            n = rng.randint(1, left[k])
            left[k] -= n
            runs.append(Run(k, rng.randint(0, tau), n))
        order, cuts = expand_runs(costs, runs)
        step = timeline(costs, order, cuts, model)  # type: ignore[arg-type]
        assert runs_makespan(costs, runs, model) == pytest.approx(step.makespan_s, rel=1e-12)  # type: ignore[arg-type]


# ------------------------------------------------------------------ MW


def reference_mw(costs: PathCosts, model: str) -> tuple[list[int], list[int]]:
    """MW one path at a time, with no repetition shortcut (the same rules and tie-breaks)."""
    sequential = model == "sequential"
    left = costs.counts.tolist()
    taken = [0] * costs.classes
    cands = [(k, o) for k in range(costs.classes) for o in range(costs.tau + 1)]
    order: list[int] = []
    cuts = [0] * costs.paths

    def take(k: int, o: int) -> None:
        p = costs.members[k][taken[k]]
        taken[k] += 1
        left[k] -= 1
        order.append(p)
        cuts[p] = o

    k, o = min(cands, key=lambda c: (costs.local[c] + costs.uplink[c], c[0], c[1]))
    a, b = float(costs.local[k, o]), float(costs.uplink[k, o])
    v = b if sequential else a + b
    take(k, o)
    while len(order) < costs.paths:
        alive = [c for c in cands if left[c[0]] > 0]
        k, o = min(alive, key=lambda c: (abs(v - costs.local[c]), max(v, costs.local[c]) + costs.uplink[c],
                                         c[0], c[1]))
        a, b = float(costs.local[k, o]), float(costs.uplink[k, o])
        v = max(v - a, 0.0) + b if sequential else max(v, a) + b
        take(k, o)
    return order, cuts


def test_mw_repeats_a_two_step_cycle() -> None:
    # one class of 7 paths, cuts (a, b) = (0, 9), (1, 4), (4, 1): from v = 4 MW alternates cut 2 (a = 4, v -> 1)
    # and cut 1 (a = 1, v -> 4); the cycle is detected and repeated in bulk
    costs = synthetic(2, [[0, 1, 4]], [[9, 4, 1]], [[3, 1, 0]], counts=[7])
    runs = mw_runs(costs, "sequential")
    assert [(r.cut, r.count) for r in runs] == [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1)]
    assert expand_runs(costs, runs) == tuple(map(tuple, reference_mw(costs, "sequential")))


@pytest.mark.parametrize("model", MODELS)
def test_mw_with_repetition_equals_mw_step_by_step(model: str) -> None:
    rng = random.Random(11)
    for _ in range(400):
        tau, classes = rng.randint(1, 4), rng.randint(1, 5)
        counts = [rng.randint(1, 40) for _ in range(classes)]
        # few distinct values, so ties and repeated states are common
        local = [[0.0, *sorted(rng.choice([0.5, 1, 2, 3, 4]) for _ in range(tau))] for _ in range(classes)]
        uplink = [[rng.choice([0.5, 1, 2, 4]) for _ in range(tau + 1)] for _ in range(classes)]
        server = [[*sorted((rng.choice([0.5, 1, 2]) for _ in range(tau)), reverse=True), 0.0]
                  for _ in range(classes)]
        costs = synthetic(tau, local, uplink, server, counts)
        fast = expand_runs(costs, mw_runs(costs, model))  # type: ignore[arg-type]
        slow = reference_mw(costs, model)
        assert fast == (tuple(slow[0]), tuple(slow[1]))


def test_mw_on_real_paths_equals_mw_step_by_step() -> None:
    for seed in range(8):
        for model in MODELS:
            problem = problem_of(seed, model, max_paths=30)
            for tau in problem.taus():
                for grid in problem.grids(tau)[::7]:
                    costs = problem.prefix(tau).grid_costs(grid)
                    fast = expand_runs(costs, mw_runs(costs, model))  # type: ignore[arg-type]
                    slow = reference_mw(costs, model)
                    assert fast == (tuple(slow[0]), tuple(slow[1]))


@pytest.mark.parametrize("model", MODELS)
def test_lower_bound_pruning_does_not_change_mw(model: str) -> None:
    for seed in range(15):
        problem = problem_of(seed, model, max_paths=20)
        pruned = solve_mw_problem(problem)
        full = solve_mw_problem(problem, prune=False)
        assert (pruned.tau, pruned.grid, pruned.order, pruned.cuts) == (full.tau, full.grid, full.order, full.cuts)
        assert pruned.makespan_s == full.makespan_s
        assert full.skipped == 0 and pruned.searched + pruned.skipped == full.searched


# ------------------------------------------------------------------ brute force


def enumerate_grid(costs: PathCosts, model: str) -> float:
    """The best makespan of one (τ, grid) over every order and cut vector, by plain enumeration."""
    best = math.inf
    for order in itertools.permutations(range(costs.paths)):
        for cuts in itertools.product(range(costs.tau + 1), repeat=costs.paths):
            best = min(best, timeline(costs, order, cuts, model).makespan_s)  # type: ignore[arg-type]
    return best


@pytest.mark.parametrize("model", MODELS)
def test_pareto_program_equals_plain_enumeration(model: str) -> None:
    checked = 0
    for seed in range(25):
        problem = problem_of(seed, model, max_paths=3)
        for tau in problem.taus():
            if tau > 3:
                break
            for grid in problem.grids(tau):
                costs = problem.prefix(tau).grid_costs(grid)
                runs = bf_runs(costs, model)  # type: ignore[arg-type]
                assert runs is not None
                order, cuts = expand_runs(costs, runs)
                found = timeline(costs, order, cuts, model).makespan_s  # type: ignore[arg-type]
                assert found == pytest.approx(enumerate_grid(costs, model), rel=1e-12)
                checked += 1
    assert checked > 60


@pytest.mark.parametrize("model", MODELS)
def test_mw_is_never_better_than_brute_force(model: str, record_property) -> None:  # type: ignore[no-untyped-def]
    gaps = []
    for seed in range(30):
        problem = problem_of(seed, model, max_paths=5)
        mw = solve_mw_problem(problem)
        bf = solve_bf_problem(problem)
        assert mw.makespan_s >= bf.makespan_s * (1 - 1e-12)
        # the brute force's search, without bounds, finds the same optimum
        assert solve_bf_problem(problem, prune=False).makespan_s == pytest.approx(bf.makespan_s, rel=1e-12)
        gaps.append(mw.makespan_s / bf.makespan_s - 1)
    summary = f"MW / BF - 1 over 30 instances ({model}): mean {statistics.mean(gaps):.2%}, max {max(gaps):.2%}"
    record_property("mw_gap", summary)
    print(summary)


# ------------------------------------------------------------------ NFL


def test_nfl_equals_every_single_cut_tried() -> None:
    for seed in range(20):
        problem = problem_of(seed, "sequential")
        graph, cluster = problem.graph, problem.cluster
        times = []
        for o, position in enumerate(problem.bounds):
            local = sum(cluster.device("phone").layer_time(layer) for layer in graph.layers[:position])
            if position == len(graph):  # the output handed to the gateway, a process on the same device
                times.append((local + cluster.local_s("phone"), o))
                continue
            rest = sum(cluster.device("server").layer_time(layer) for layer in graph.layers[position:])
            sent = cluster.tx("phone", "server", graph.bytes_at(position))
            back = cluster.tx("server", "phone", graph.bytes_at(len(graph)))
            times.append((local + sent + rest + back, o))
        best, cut = min(times)
        nfl = solve_nfl_problem(problem)
        assert nfl.cuts == (cut,)
        assert nfl.makespan_s == pytest.approx(best, rel=1e-12)
        assert not nfl.fused


# ------------------------------------------------------------------ invariants of every schedule


def check_schedule(result: OffloadResult, fuse_delay: float) -> None:
    eps = 1e-12
    sequential = result.compute_model == "sequential"
    for path in result.paths:
        local_end = path.local[1] if path.local else 0.0
        assert local_end <= path.uplink[0] + eps
        if path.server is not None:
            assert path.uplink[1] <= path.server[0] + eps
            if result.fused:
                assert path.ready == pytest.approx(path.server[1] + fuse_delay)
        elif result.fused:
            assert path.ready == path.uplink[1]
    spans = {"uplink": [p.uplink for p in result.paths]}
    if sequential:
        spans["end"] = [p.local for p in result.paths if p.local]
        spans["server"] = [p.server for p in result.paths if p.server]
    for resource, intervals in spans.items():
        for first, second in itertools.pairwise(intervals):  # in the order S, one at a time
            assert first[1] <= second[0] + eps, (resource, first, second)
    busy = {name: sum(b - a for a, b in intervals) for name, intervals in spans.items()}
    if result.fuse is not None:
        assert result.fuse[0] == pytest.approx(max(p.ready for p in result.paths))
        assert result.fuse[0] >= max((end for _, end in spans.get("server", [])), default=0.0) - eps
        busy["server"] = busy.get("server", 0.0) + result.fuse[1] - result.fuse[0]
    for name, seconds in busy.items():
        assert result.makespan_s >= seconds - eps, name


@pytest.mark.parametrize("model", MODELS)
def test_every_schedule_respects_dependencies_and_resources(model: str) -> None:
    for seed in range(20):
        problem = problem_of(seed, model, max_paths=12)
        delay = problem.fuse_message_s
        for result in (solve_mw_problem(problem), solve_bf_problem(problem), solve_nfl_problem(problem)):
            check_schedule(result, delay)
            assert result.compute_model == model
            assert len(result.paths) == result.grid[0] * result.grid[1] == len(result.cuts)
            assert sorted(result.order) == list(range(len(result.paths)))
            costs = problem.prefix(result.tau).grid_costs(result.grid) if result.fused else None
            if costs is not None:
                assert timeline(costs, result.order, result.cuts, model).makespan_s == result.makespan_s
                assert costs.tau == result.tau


# ------------------------------------------------------------------ the tasks a result becomes


def run_tasks(result: OffloadResult, executor: Executor, x: torch.Tensor) -> torch.Tensor:
    """Run the result's task sketches one by one with the slice executor, as a plan v2 would."""
    graph = executor.graph
    outputs: dict[str, tuple[torch.Tensor, Region]] = {"input": (x[0:1], Region.full(graph.input_shape[1:]))}
    for task in result.tasks():
        hull = hull_all(region for _, region in task.inputs)
        buffer = torch.zeros((1, *hull.shape))
        for source, region in task.inputs:
            tensor, have = outputs[source]
            assert have.contains(region), (task.id, source)
            buffer[region.relative_to(hull).slices()] = tensor[region.relative_to(have).slices()]
        if task.start == task.stop:  # a relay: assembles its inputs
            outputs[task.id] = (buffer, hull)
            continue
        runner = executor.runner(task.start, task.stop, task.output)
        assert hull.contains(runner.input_region), task.id
        outputs[task.id] = (runner(buffer[runner.input_region.relative_to(hull).slices()]), task.output)
    final = result.tasks()[-1]
    out, region = outputs[final.id]
    assert region == Region.full(graph.output_shape)
    return out


def test_task_sketches_compute_the_whole_model_exactly(zoo_traced) -> None:  # type: ignore[no-untyped-def]
    _gm, graph, executor = zoo_traced("alexnet")
    base = reference_profile()
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(0))
    expected = executor.run_whole(x)
    results = []
    for rate in (2e5, 5e6):  # slow and fast uplinks give different τ, grids and cuts
        cluster = Cluster((Device("phone", base, 0.1), Device("server", base, 1.0)), "phone", "switched",
                          Link(1e-3, rate))
        for model in MODELS:
            problem = OffloadProblem(graph, cluster, OffloadSettings(compute_model=model, max_paths=9))  # type: ignore[arg-type]
            results += [solve_mw_problem(problem), solve_bf_problem(problem), solve_nfl_problem(problem)]
    distinct = {(r.tau, r.grid, r.order, r.cuts): r for r in results}
    assert len(distinct) >= 4
    for result in distinct.values():
        assert compare(expected, run_tasks(result, executor, x)).allclose, result.describe()
        for task in result.tasks():
            assert graph.is_cut(task.start) and graph.is_cut(task.stop)


def test_task_sketches_of_random_models_are_exact() -> None:
    for seed in range(10):
        rng = random.Random(seed)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 6, 3, 1, 1),
                              nn.ReLU(), nn.Conv2d(6, 4, 5, 2, 2)).eval()
        gm, graph = trace(model, (1, 3, 12, 12), f"tasks{seed}")
        settings = OffloadSettings(compute_model=rng.choice(MODELS), grid_max=(4, 4))  # type: ignore[arg-type]
        problem = OffloadProblem(graph, two_devices(rng), settings)
        x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(seed))
        executor = Executor(gm, graph)
        for result in (solve_mw_problem(problem), solve_bf_problem(problem)):
            assert compare(executor.run_whole(x), run_tasks(result, executor, x)).allclose


# ------------------------------------------------------------------ devices and options


def test_default_devices_are_the_master_and_the_fastest_other_device() -> None:
    rng = random.Random(0)
    graph = small_graph(rng, "devices")
    base = reference_profile()
    devices = (Device("a", base, 1.0), Device("b", base, 3.0), Device("c", base, 5.0), Device("d", base, 2.0))
    cluster = Cluster(devices, "b", "switched", Link(1e-3, 1e6))
    problem = OffloadProblem(graph, cluster)
    assert (problem.end.name, problem.server.name) == ("b", "c")
    chosen = OffloadProblem(graph, cluster, OffloadSettings(end="d", server="a"))
    assert (chosen.end.name, chosen.server.name) == ("d", "a")
    assert OffloadProblem(graph, cluster, OffloadSettings(end="c")).server.name == "b"
    for settings, field in ((OffloadSettings(end="x"), "end"), (OffloadSettings(server="x"), "server"),
                            (OffloadSettings(end="a", server="a"), "server")):
        with pytest.raises(PlanningError, match=f"^{field}:"):
            OffloadProblem(graph, cluster, settings)
    with pytest.raises(PlanningError, match="needs an edge server"):
        OffloadProblem(graph, cluster.restrict(["b"]))


def test_bad_options_name_the_field() -> None:
    for kwargs, field in (({"compute_model": "fast"}, "compute_model"), ({"tau_max": 0}, "tau_max"),
                          ({"grid_max": (0, 3)}, "grid_max"), ({"max_paths": 0}, "max_paths"),
                          ({"bf_max_paths": 9}, "bf_max_paths")):
        with pytest.raises(PlanningError, match=f"^{field}:"):
            OffloadSettings(**kwargs)


def test_tau_max_and_grid_caps_limit_the_search() -> None:
    problem = problem_of(3, "sequential", max_paths=4)
    capped = OffloadProblem(problem.graph, problem.cluster, OffloadSettings(tau_max=1, grid_max=(2, 1)))
    result = solve_mw_problem(capped)
    assert result.tau == 1 and result.grid in ((1, 1), (2, 1))
    assert capped.grids(1) == [(1, 1), (2, 1)]


def test_a_model_without_a_fusable_prefix_is_refused_by_mw_but_not_by_nfl() -> None:
    _, graph = trace(nn.Sequential(nn.Flatten(), nn.Linear(48, 4)).eval(), (1, 3, 4, 4), "flat")
    problem = OffloadProblem(graph, two_devices(random.Random(1)))
    with pytest.raises(PlanningError, match="no fusable prefix"):
        solve_mw_problem(problem)
    assert solve_nfl_problem(problem).cuts[0] in (0, 1, 2)


def test_paper_results_say_they_are_not_what_the_runtime_measures() -> None:
    problem = problem_of(4, "paper")
    result = solve_mw_problem(problem)
    assert len(result.paths) > 1
    assert "not what the runtime measures" in result.describe()
    assert "not what" not in solve_nfl_problem(problem).describe()  # one path: both models agree
    assert "not what" not in solve_mw_problem(problem_of(4, "sequential")).describe()


# ------------------------------------------------------------------ tiles costed exactly


def test_tiles_in_padding_and_roofline_layers_cost_what_the_geometry_says() -> None:
    # a 1x1 conv with padding 1: its first and last output rows read only padding, so a one-row tile there
    # is empty in every earlier layer (costed exactly); and a profile without a max-pool model falls back to
    # the roofline, max(FLOPs / peak, bytes / bandwidth), costed per class as the larger of two bilinear terms
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 1, 1, 1)).eval()
    _, graph = trace(model, (1, 3, 8, 8), "padded")
    base = reference_profile()
    rooflined = dataclasses.replace(base, ops={k: v for k, v in base.ops.items() if k != "pool_max"})
    for profile in (base, rooflined):
        devices = (Device("phone", profile, 0.01, message_overhead_s=0.0), Device("server", profile, 0.1))
        problem = OffloadProblem(graph, Cluster(devices, "phone", "switched", Link(1e-3, 1e6)),
                                 OffloadSettings(grid_max=(6, 6)))
        tau = problem.tau_limit
        prefix = problem.prefix(tau)
        assert prefix.row_table.degenerate.any()
        assert bool(prefix.maxima["end"]) == (profile is rooflined)  # pooling: the larger of two terms
        for grid in ((6, 1), (6, 6), (3, 2)):
            costs = prefix.grid_costs(grid)
            for p in range(costs.paths):
                tile = prefix.tile(grid, p)
                local, remote, nbytes = exact_costs(problem, tau, tile)
                k = costs.path_class[p]
                assert costs.local[k] == pytest.approx(local, rel=1e-9, abs=1e-15)
                assert costs.server[k] == pytest.approx(remote, rel=1e-9, abs=1e-15)
                assert costs.cut_bytes[k].tolist() == nbytes
                for o in range(tau + 1):
                    assert prefix.cut_region(grid, p, o).size * 4 == nbytes[o]
