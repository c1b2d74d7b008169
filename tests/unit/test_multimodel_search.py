"""Multilevel k-way blocks, PSO-GA and the memetic algorithm against exhaustive search, HEFT, LO."""

from __future__ import annotations

import dataclasses
import itertools
import random

import numpy as np
import pytest
from multimodel_fakes import table_platform, traced

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel import (
    PsoSettings,
    SearchSettings,
    Workload,
    block_problem,
    boundary_fm,
    cost_graph,
    cut,
    heft,
    makespans,
    memetic,
    multilevel_kway,
    multilevel_per_model,
    piecewise_dag,
    prepare_blocks,
    prepare_units,
    pso_ga,
    pso_ga_server_order,
    run_method,
    task_graph,
    weighted_graph,
)
from edgepart.planner.multimodel.methods import Method, PieceSettings, Prepared
from edgepart.planner.multimodel.multilevel import WeightedGraph, rebalance
from edgepart.planner.multimodel.search import feasible
from edgepart.planner.multimodel.tasks import CostGraph


def two_models() -> tuple[LayerGraph, LayerGraph]:
    return traced("net-a")[1], traced("net-b")[1]


def integer_weights(dag_size: int, edges: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    return [float(rng.randint(1, 20)) for _ in range(dag_size)], [float(rng.randint(1, 50)) for _ in range(edges)]


@pytest.mark.parametrize("same_piece", [True, False])
def test_multilevel_returns_exactly_k_blocks_and_fm_never_increases_the_cut(same_piece: bool) -> None:
    dag = piecewise_dag(list(two_models()), K=3)
    for seed, k in itertools.product(range(3), range(3, 12)):
        node_s, edge_s = integer_weights(len(dag), len(dag.edges), seed)
        part = multilevel_kway(dag, k, eps=0.1, same_piece=same_piece, node_s=node_s, edge_s=edge_s)
        assert sorted(set(part.labels)) == list(range(k))
        if same_piece:
            for block in range(k):
                assert len({p.piece for p in dag.pieces if part.labels[p.index] == block}) == 1
        assert all(level.cut_refined <= level.cut_balanced for level in part.levels)
        assert part.cut == cut(weighted_graph(dag, node_s, edge_s), part.labels)
        unrefined = multilevel_kway(dag, k, 0.1, same_piece, refine=False, node_s=node_s, edge_s=edge_s)
        assert all(level.cut_refined == level.cut_balanced == level.cut_projected for level in unrefined.levels)


def test_boundary_fm_never_increases_the_cut_of_random_labels() -> None:
    dag = piecewise_dag(list(two_models()), K=3)
    rng = random.Random(5)
    for seed in range(20):
        node_s, edge_s = integer_weights(len(dag), len(dag.edges), seed)
        graph = weighted_graph(dag, node_s, edge_s)
        k = rng.randint(2, 6)
        labels = [rng.randrange(k) for _ in range(len(dag))]
        if len(set(labels)) < k:
            continue
        refined = boundary_fm(graph, labels, k, eps=0.3, same_piece=False)
        assert cut(graph, refined) <= cut(graph, labels)
        assert sorted(set(refined)) == list(range(k))  # no block emptied


def test_boundary_fm_keeps_the_best_prefix_of_moves_under_the_balance_bound() -> None:
    # a path 0-1-2-3 with a heavy middle edge, blocks {0,1} {2,3}: moving 1 over gains 5 - 1 = 4; moving
    # 3 next would lose 1, and any further move breaks the bound (1 + 0.5) * 4 / 2 = 3 nodes per block
    graph = WeightedGraph((1.0, 1.0, 1.0, 1.0), (0, 0, 0, 0), (4.0, 3.0, 2.0, 1.0),
                          ({1: 1.0}, {0: 1.0, 2: 5.0}, {1: 5.0, 3: 1.0}, {2: 1.0}))
    assert boundary_fm(graph, [0, 0, 1, 1], 2, eps=0.5) == [0, 1, 1, 1]
    # with eps = 0 no block may grow beyond 2 nodes: nothing moves
    assert boundary_fm(graph, [0, 0, 1, 1], 2, eps=0.0) == [0, 0, 1, 1]


def test_rebalance_moves_the_best_node_out_of_an_overweight_block() -> None:
    # blocks {0,1,2} (weight 3) and {3} (weight 1), bound 2.2: node 2 borders block 1 and moves there
    graph = WeightedGraph((1.0, 1.0, 1.0, 1.0), (0, 0, 0, 0), (4.0, 3.0, 2.0, 1.0),
                          ({1: 1.0}, {0: 1.0, 2: 1.0}, {1: 1.0, 3: 4.0}, {2: 4.0}))
    assert rebalance(graph, [0, 0, 0, 1], 2, bound=2.2) == [0, 0, 1, 1]
    # with one piece index per block a node only goes to a block of its piece index
    split = WeightedGraph(graph.weight, (0, 0, 0, 1), graph.rank, graph.adjacency)
    assert rebalance(split, [0, 0, 0, 1], 2, bound=2.2, same_piece=True) == [0, 0, 0, 1]


def test_multilevel_per_model_gives_each_model_its_own_k_blocks() -> None:
    dag = piecewise_dag(list(two_models()), K=3)
    part = multilevel_per_model(dag, 4)
    assert part.k == 8
    for m in (0, 1):
        assert len({part.labels[p.index] for p in dag.pieces if p.model == m}) == 4


def test_k_below_the_piece_indices_is_refused_when_blocks_keep_one_piece() -> None:
    dag = piecewise_dag([traced("net-a")[1]], K=3)
    with pytest.raises(PlanningError, match="k = 2"):
        multilevel_kway(dag, 2)
    assert len(set(multilevel_kway(dag, 2, same_piece=False).labels)) == 2
    with pytest.raises(PlanningError, match="k = 99"):
        multilevel_kway(dag, 99)


def small_problem(blocks: int = 8, same_piece: bool = True) -> tuple[CostGraph, np.ndarray]:
    """`blocks` blocks x 3 devices; the slow device cannot hold everything. The costs and every assignment."""
    graphs = list(two_models())
    dag = piecewise_dag(graphs, K=3)
    labels = multilevel_kway(dag, blocks, same_piece=same_piece).labels
    tasks = task_graph(dag, labels, fuse=False)
    platform, sources = table_platform(("net-a", "net-b"), small_memory=60_000)
    cost = cost_graph(tasks, platform, sources[:2])
    every = np.array(list(itertools.product(range(3), repeat=blocks)))
    return cost, every


def search_twenty_seeds(blocks: int, same_piece: bool) -> tuple[float, dict[str, list[float]]]:
    """The exhaustive optimum and what each search returns for seeds 0-19, with the invariants checked."""
    cost, every = small_problem(blocks, same_piece)
    problem = block_problem(cost)
    fits = feasible(problem, every)
    assert 0 < fits.sum() < len(every)  # memory matters on this instance
    optimum = float(makespans(cost, cost.task_devices(every[fits])).min())
    found: dict[str, list[float]] = {"pso": [], "ma": []}
    for seed in range(20):
        for name, result in (("pso", pso_ga(problem, seed=seed)), ("ma", memetic(problem, seed=seed))):
            assert feasible(problem, np.array([result.assignment]))[0]
            assert all(b <= a for a, b in itertools.pairwise(result.history))
            assert result.history[-1] == result.fitness
            assert result.fitness == pytest.approx(float(makespans(cost, cost.task_devices(
                np.array([result.assignment])))[0]), rel=1e-12)
            assert result.fitness >= optimum - 1e-12
            found[name].append(result.fitness)
    return optimum, found


def hits(optimum: float, values: list[float]) -> int:
    return sum(value <= optimum * (1 + 1e-12) for value in values)


def test_pso_ga_and_memetic_find_the_exhaustive_optimum_of_seven_blocks() -> None:
    optimum, found = search_twenty_seeds(7, same_piece=False)
    assert hits(optimum, found["pso"]) >= 15
    assert hits(optimum, found["ma"]) >= 15
    assert np.mean(found["ma"]) <= np.mean(found["pso"]) + 1e-12


def test_memetic_finds_the_optimum_where_pso_ga_stalls_on_its_all_on_the_server_start() -> None:
    # 8 one-piece blocks: the optimum moves three blocks off the server together, which no single
    # mutation from the all-on-the-server particle improves; the local search gets there
    optimum, found = search_twenty_seeds(8, same_piece=True)
    assert hits(optimum, found["ma"]) >= 18
    assert np.mean(found["ma"]) <= np.mean(found["pso"]) + 1e-12


def test_searches_are_reproducible_and_seeds_matter() -> None:
    cost, _ = small_problem(7, same_piece=False)
    problem = block_problem(cost)
    short = PsoSettings(particles=10, iterations=20, patience=20, memetic=True)
    assert pso_ga(problem, short, seed=3) == pso_ga(problem, short, seed=3)
    layers = prepare_units(Workload(two_models(), *table_platform(("net-a", "net-b"))), K=1).cost
    first = pso_ga_server_order(layers, settings=short, seed=3)
    assert first == pso_ga_server_order(layers, settings=short, seed=3)
    assert len({pso_ga_server_order(layers, settings=short, seed=s).priority for s in range(4)}) > 1


def test_memory_repair_moves_blocks_to_the_fallback_when_the_device_is_full() -> None:
    cost, _ = small_problem()
    problem = block_problem(cost)
    everything_on_slow = np.zeros((1, cost.blocks), dtype=np.int64)
    assert not feasible(problem, everything_on_slow)[0]
    from edgepart.planner.multimodel.search import repair

    repair(problem, everything_on_slow, np.random.default_rng(0))
    assert feasible(problem, everything_on_slow)[0]
    assert set(everything_on_slow[0].tolist()) == {0, cost.fallback}


def test_server_order_encoding_returns_a_priority_permutation_it_was_scored_with() -> None:
    prepared = prepare_units(Workload(two_models(), *table_platform(("net-a", "net-b"))), K=1)
    cost = prepared.cost
    result = pso_ga_server_order(cost, settings=PsoSettings(particles=10, iterations=40), seed=1)
    assert result.priority is not None and sorted(result.priority) == list(range(cost.tasks))
    again = makespans(cost, np.array([result.assignment]), "free", np.array([result.priority]))[0]
    assert result.fitness == again
    assert all(b <= a for a, b in itertools.pairwise(result.history))


def test_heft_runs_a_chain_on_the_fastest_device_unless_memory_forbids() -> None:
    # one model, whole units: a chain, nothing runs in parallel, links cost next to nothing
    platform, sources = table_platform(("net-b",), bandwidth=1e12)
    prepared = prepare_units(Workload((traced("net-b")[1],), platform, sources), K=1)
    placed = np.array(heft(prepared.cost))
    computing = prepared.cost.compute_s[:, 2] > 0  # the flatten unit costs nothing in the table model
    assert set(placed[computing].tolist()) == {2}
    tight = prepared.cost
    capacity = tight.capacity_bytes.copy()
    capacity[2] = tight.memory_bytes.sum() / 2
    limited = dataclasses.replace(tight, capacity_bytes=capacity)
    placed = np.array(heft(limited))
    used = np.bincount(placed, weights=limited.memory_bytes, minlength=3)
    assert np.all(used <= capacity) and set(placed.tolist()) != {2}


def test_the_four_methods_run_end_to_end_and_contention_never_helps() -> None:
    workload = Workload(two_models(), *table_platform(("net-a", "net-b")))
    workload = Workload(workload.models, workload.platform, workload.sources[:2])
    blocks = prepare_blocks(workload, PieceSettings(blocks_per_model=3, fuse=False))
    layers = prepare_units(workload, K=1)
    pieces = prepare_units(workload, K=3)
    settings = SearchSettings(pso=PsoSettings(particles=10, iterations=30),
                              memetic=PsoSettings(particles=10, iterations=30, memetic=True))
    runs: tuple[tuple[Method, Prepared], ...] = (("LO", layers), ("PO", blocks), ("MO", blocks), ("HEFT", pieces))
    for method, prepared in runs:
        result = run_method(method, prepared, seed=0, settings=settings)
        assert set(result.fitness) == {"free", "fifo"}
        assert result.fitness["fifo"] >= result.fitness["free"] - 1e-12
        assert len(result.task_devices) == prepared.cost.tasks
