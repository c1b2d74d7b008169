"""Piece-wise DAG of one or more models (SOLVERS.md §6 E.1).

Every *unit* of a model's LayerGraph (the span between two cut points; a
residual or inception block is one unit) becomes one or more *pieces*: a
spatial unit is cut into K row pieces of its output (the first K-1 get
floor(H/K) rows, the last the rest [S][C]); a unit that needs its whole input
(fc, global pooling, flatten) stays whole unless `split_fc`, which cuts it by
output features (channels) instead. A unit with fewer than K output rows stays
whole.

Unlike the authors' approximation [C dag_data_generator.py], the input a
piece needs comes from the exact geometry (`geometry.backprop` over the
unit), and an edge from a piece of unit u-1 to a piece of unit u carries the
bytes that really cross: the producer's output region intersected with the
region the consumer needs. Several models give one DAG made of disjoint
components.

Each piece keeps its model, unit range, piece index and regions, so a set of
pieces on one device (a block) can later be turned into tasks of a plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from edgepart.geometry import Region, TileGeometry, backprop
from edgepart.graph.layer_graph import INPUT, LayerGraph, Unit
from edgepart.graph.ops import OpKind
from edgepart.planner.errors import PlanningError


class Split(StrEnum):
    """How the pieces of a unit divide its output."""

    ROWS = "rows"  # K row bands
    FEATURES = "features"  # K bands of output channels / features (split_fc)
    WHOLE = "whole"  # one piece


@dataclass(frozen=True)
class Piece:
    index: int  # node id in the DAG
    model: int  # index into PieceDAG.models
    unit: int  # index into the model's LayerGraph.units
    start: int  # the unit's layers [start, stop)
    stop: int
    piece: int  # piece index r in [0, K); 0 for a whole unit
    split: Split
    geometry: TileGeometry  # output region, input region (at cut `start`) and per-layer regions

    @property
    def output(self) -> Region:
        return self.geometry.output_region

    @property
    def input(self) -> Region:
        return self.geometry.input_region


@dataclass(frozen=True)
class PieceEdge:
    src: int
    dst: int
    region: Region  # of the tensor crossing the consumer's first cut: producer output ∩ consumer input
    nbytes: int


@dataclass(frozen=True)
class PieceDAG:
    models: tuple[LayerGraph, ...]
    pieces: tuple[Piece, ...]
    edges: tuple[PieceEdge, ...]
    K: int
    split_fc: bool

    def __len__(self) -> int:
        return len(self.pieces)

    @cached_property
    def preds(self) -> tuple[tuple[PieceEdge, ...], ...]:
        into: list[list[PieceEdge]] = [[] for _ in self.pieces]
        for edge in self.edges:
            into[edge.dst].append(edge)
        return tuple(tuple(e) for e in into)

    @cached_property
    def succs(self) -> tuple[tuple[PieceEdge, ...], ...]:
        out: list[list[PieceEdge]] = [[] for _ in self.pieces]
        for edge in self.edges:
            out[edge.src].append(edge)
        return tuple(tuple(e) for e in out)

    def unit_pieces(self, model: int, unit: int) -> tuple[Piece, ...]:
        return self._by_unit[(model, unit)]

    @cached_property
    def _by_unit(self) -> dict[tuple[int, int], tuple[Piece, ...]]:
        groups: dict[tuple[int, int], list[Piece]] = {}
        for piece in self.pieces:
            groups.setdefault((piece.model, piece.unit), []).append(piece)
        return {key: tuple(value) for key, value in groups.items()}

    def input_bytes(self, piece: Piece) -> int:
        """Bytes a piece of a model's first unit reads from the model input (0 for the others)."""
        if piece.start != 0:
            return 0
        graph = self.models[piece.model]
        return piece.input.size * graph.batch * dtype_bytes_at(graph, 0)

    def output_bytes(self, piece: Piece) -> int:
        """Bytes of the model output a piece of the last unit produces (0 for the others)."""
        graph = self.models[piece.model]
        if piece.stop != len(graph):
            return 0
        return piece.output.size * graph.batch * dtype_bytes_at(graph, piece.stop)

    def flops(self, piece: Piece) -> float:
        """FLOPs of the piece, halo recomputation inside the unit included."""
        graph = self.models[piece.model]
        return sum(graph.layers[i].flops * region.size / graph.layers[i].out_elems
                   for i, region in piece.geometry.regions.items())

    def weight_bytes(self, piece: Piece) -> int:
        return self.models[piece.model].weight_bytes(piece.start, piece.stop)

    def memory_bytes(self, piece: Piece) -> int:
        """[R] weights of its unit plus its input and output buffers (each task loads its own weights)."""
        graph = self.models[piece.model]
        in_bytes = piece.input.size * graph.batch * dtype_bytes_at(graph, piece.start)
        out_bytes = piece.output.size * graph.batch * dtype_bytes_at(graph, piece.stop)
        return self.weight_bytes(piece) + in_bytes + out_bytes


def dtype_bytes_at(graph: LayerGraph, position: int) -> int:
    producer = graph.producer_at(position)
    return 4 if producer == INPUT else graph.layers[producer].dtype_bytes


def split_rows(length: int, parts: int) -> list[tuple[int, int]]:
    """The first parts-1 bands get floor(length/parts) rows, the last the rest [S 000][C]."""
    size = length // parts
    bounds = [i * size for i in range(parts)] + [length]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def unit_split(graph: LayerGraph, unit: Unit, K: int, split_fc: bool) -> Split:  # noqa: N803
    shape = graph.layers[unit.stop - 1].out_shape
    if K == 1:
        return Split.WHOLE
    if unit.fusable and len(shape) == 3 and shape[1] >= K:
        return Split.ROWS
    if split_fc and not unit.fusable and shape[0] >= K:
        return Split.FEATURES
    return Split.WHOLE


def unit_regions(graph: LayerGraph, unit: Unit, K: int, split_fc: bool) -> tuple[Split, list[Region]]:  # noqa: N803
    shape = graph.layers[unit.stop - 1].out_shape
    split = unit_split(graph, unit, K, split_fc)
    full = Region.full(shape)
    if split is Split.ROWS:
        return split, [full.replace(1, rows) for rows in split_rows(shape[1], K)]
    if split is Split.FEATURES:
        return split, [full.replace(0, band) for band in split_rows(shape[0], K)]
    return split, [full]


def piecewise_dag(models: Sequence[LayerGraph], K: int = 3, split_fc: bool = False) -> PieceDAG:  # noqa: N803
    """The piece-wise DAG of `models` (one disjoint component per model, in order)."""
    if K < 1:
        raise PlanningError(f"K (pieces per unit) must be >= 1, got {K}")
    if not models:
        raise PlanningError("piecewise_dag needs at least one model")
    pieces: list[Piece] = []
    edges: list[PieceEdge] = []
    for m, graph in enumerate(models):
        previous: list[Piece] = []
        for u, unit in enumerate(graph.units):
            split, regions = unit_regions(graph, unit, K, split_fc)
            current = []
            for r, region in enumerate(regions):
                geometry = backprop(graph, unit.start, unit.stop, region)
                piece = Piece(len(pieces), m, u, unit.start, unit.stop, r, split, geometry)
                pieces.append(piece)
                current.append(piece)
            dtype = dtype_bytes_at(graph, unit.start)
            for consumer in current:
                for producer in previous:
                    overlap = producer.output.intersect(consumer.input)
                    if not overlap.empty:
                        edges.append(PieceEdge(producer.index, consumer.index, overlap,
                                               overlap.size * graph.batch * dtype))
            previous = current
    return PieceDAG(tuple(models), tuple(pieces), tuple(edges), K, split_fc)


# [C dag_data_generator.py] the authors' workload counts multiply-accumulates of conv and fc layers
# and window positions of pooling layers; other layers cost nothing
def macs(graph: LayerGraph, geometry: TileGeometry) -> float:
    total = 0.0
    for i, region in geometry.regions.items():
        layer = graph.layers[i]
        share = region.size / layer.out_elems
        if layer.op in (OpKind.CONV, OpKind.FC):
            total += layer.flops / 2 * share
        elif layer.op in (OpKind.POOL_MAX, OpKind.POOL_AVG, OpKind.GAP, OpKind.ADAPTIVE_POOL):
            total += layer.flops * share
    return total

