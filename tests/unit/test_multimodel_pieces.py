"""Piece-wise DAG and tasks: bytes against brute force, tasks against the whole model."""

from __future__ import annotations

import random

import pytest
import torch
from multimodel_fakes import table_platform, traced
from torch import nn

from edgepart.executor import Executor
from edgepart.geometry import Region
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel import cost_graph, piecewise_dag, task_graph
from edgepart.planner.multimodel.pieces import Split, split_rows


def needed(unit: nn.Module, in_shape: tuple[int, ...], output: Region, axis: int) -> set[int]:
    """Input rows (axis 2) or columns (axis 3) that reach `output` of the unit: poison one at a time with NaN."""
    found = set()
    for index in range(in_shape[axis]):
        x = torch.randn(in_shape)
        x.select(axis, index).fill_(float("nan"))
        with torch.no_grad():
            y = unit(x)
        if torch.isnan(y[output.slices()]).any():
            found.add(index)
    return found


def test_split_rows_gives_the_first_bands_floor_h_over_k() -> None:
    assert split_rows(23, 3) == [(0, 7), (7, 14), (14, 23)]
    assert split_rows(7, 3) == [(0, 2), (2, 4), (4, 7)]


def test_edges_carry_the_bytes_the_brute_force_receptive_field_says() -> None:
    gm, graph = traced("stack")
    model = gm  # a Sequential traced by fx keeps the numbered submodules
    dag = piecewise_dag([graph], K=3)
    for piece in dag.pieces:
        modules = nn.Sequential(*[model.get_submodule(graph.layers[i].target) for i in range(piece.start, piece.stop)])
        in_shape = (1, *graph.shape_at(piece.start))
        rows = needed(modules, in_shape, piece.output, axis=2)
        cols = needed(modules, in_shape, piece.output, axis=3)
        assert piece.input.rows == (min(rows), max(rows) + 1)
        assert piece.input.cols == (min(cols), max(cols) + 1)
        channels, width = in_shape[1], len(cols)
        incoming = {e.src: e.nbytes for e in dag.preds[piece.index]}
        if piece.unit == 0:
            assert not incoming
            assert dag.input_bytes(piece) == len(rows) * channels * width * 4
            continue
        for producer in dag.unit_pieces(0, piece.unit - 1):
            overlap = len(rows & set(range(*producer.output.rows))) * channels * width * 4
            assert incoming.get(producer.index, 0) == overlap


def test_units_split_into_k_row_pieces_and_fc_only_when_asked() -> None:
    _, graph = traced("net-a")
    plain = piecewise_dag([graph], K=3)
    assert [len(plain.unit_pieces(0, u)) for u in range(len(graph.units))] == [3, 3, 3, 1, 1]
    split = piecewise_dag([graph], K=3, split_fc=True)
    assert [len(split.unit_pieces(0, u)) for u in range(len(graph.units))] == [3, 3, 3, 3, 3]
    fc = split.unit_pieces(0, 4)
    assert [p.split for p in fc] == [Split.FEATURES] * 3
    assert [p.output.dims for p in fc] == [((0, 3),), ((3, 6),), ((6, 10),)]
    # every fc piece needs all of the flattened features: one edge from each producer piece, all its bytes
    for piece in fc:
        assert sorted(e.nbytes for e in split.preds[piece.index]) == sorted(
            p.output.size * 4 for p in split.unit_pieces(0, 3))


def test_several_models_make_disjoint_components_with_their_own_ids() -> None:
    _, a = traced("net-a")
    _, b = traced("net-b")
    dag = piecewise_dag([a, b], K=2)
    assert {p.model for p in dag.pieces} == {0, 1}
    assert all(dag.pieces[e.src].model == dag.pieces[e.dst].model for e in dag.edges)
    assert [p.index for p in dag.pieces] == list(range(len(dag)))


def test_bad_arguments_name_the_field() -> None:
    _, graph = traced("net-a")
    with pytest.raises(PlanningError, match="K"):
        piecewise_dag([graph], K=0)
    dag = piecewise_dag([graph], K=3)
    with pytest.raises(PlanningError, match="labels"):
        task_graph(dag, [0] * (len(dag) - 1))
    with pytest.raises(PlanningError, match="blocks"):
        task_graph(dag, [0] * (len(dag) - 1) + [2])


def run_tasks(name: str, labels: list[int], fuse: bool) -> None:
    """Run every task on its own, reading only its producers' outputs; compare with the whole model."""
    gm, graph = traced(name)
    executor = Executor(gm, graph)
    dag = piecewise_dag([graph], K=3)
    tasks = task_graph(dag, labels, fuse)
    x = torch.randn(graph.input_shape)
    outputs: dict[int, torch.Tensor] = {}
    producers = {t.index: [e for e in tasks.edges if e.dst == t.index] for t in tasks.tasks}
    for task in tasks.tasks:  # built in unit order: producers come first
        shape = (1, *graph.shape_at(task.start))
        buffer = torch.full(shape, float("nan"))
        if task.start == 0:
            buffer = x.clone()
        for edge in producers[task.index]:
            source = tasks.tasks[edge.src]
            assert source.stop == task.start
            assert source.output.contains(edge.region)
            local = edge.region.relative_to(source.output)
            buffer[edge.region.slices()] = outputs[edge.src][local.slices()]
        tile = buffer[task.input.slices()]
        assert not torch.isnan(tile).any(), f"task {task.index} lacks part of its input"
        outputs[task.index] = executor.runner(task.start, task.stop, task.output)(tile)
    final = torch.full((1, *graph.output_shape), float("nan"))
    for task in tasks.tasks:
        if task.stop == len(graph):
            final[task.output.slices()] = outputs[task.index]
    torch.testing.assert_close(final, executor.run_whole(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", ["stack", "net-b"])
def test_tasks_of_any_blocks_compute_the_whole_model(name: str, fuse: bool) -> None:
    _, graph = traced(name)
    pieces = len(piecewise_dag([graph], K=3))
    rng = random.Random(3)
    for _ in range(4):
        labels = [rng.randrange(3) for _ in range(pieces)]
        used = sorted(set(labels))
        run_tasks(name, [used.index(label) for label in labels], fuse)


def test_stripes_recompute_halos_and_break_where_any_piece_changes_block() -> None:
    _, graph = traced("stack")
    dag = piecewise_dag([graph], K=3)
    # pieces of unit u are 3u, 3u+1, 3u+2: piece index r stays in block r for units 0-2, then all in block 3
    labels = [r for _ in range(3) for r in range(3)] + [3] * 6
    tasks = task_graph(dag, labels)
    spans = [(t.first_unit, t.stop_unit, t.piece, t.block) for t in tasks.tasks]
    # the last two units stay one stripe per piece index (nothing changes block between them)
    assert spans == [(0, 3, 0, 0), (0, 3, 1, 1), (0, 3, 2, 2), (3, 5, 0, 3), (3, 5, 1, 3), (3, 5, 2, 3)]
    first = tasks.tasks[0]
    assert first.pieces == (0, 3, 6)
    assert first.output == dag.pieces[6].output
    # the stripe needs more input rows than its first piece alone (the halo of units 1-2, recomputed)
    assert first.input.rows[1] > dag.pieces[0].input.rows[1]
    unfused = task_graph(dag, labels, fuse=False)
    assert len(unfused) == len(dag)


def test_cost_graph_orders_tasks_topologically_and_costs_each_device() -> None:
    _, a = traced("net-a")
    _, b = traced("net-b")
    dag = piecewise_dag([a, b], K=3)
    platform, sources = table_platform()
    cost = cost_graph(task_graph(dag, list(range(len(dag))), fuse=False), platform, sources[:2])
    position = {int(v): i for i, v in enumerate(cost.order)}
    assert all(position[int(u)] < position[int(v)] for u, v in zip(cost.edge_src, cost.edge_dst, strict=True))
    # the table's seconds: MACs x intensity / frequency, so the slow device takes exactly 5 times the server's
    assert cost.compute_s[:, 0] == pytest.approx(cost.compute_s[:, 2] * 5)
    # first-unit pieces of 16 rows in 3: rows [0,5) [5,10) [10,16) of a 3x3 conv read 6 + 7 + 7 input rows
    assert cost.input_bytes.sum() == (6 + 7 + 7) * 3 * 16 * 4 * 2
