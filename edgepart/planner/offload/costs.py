"""Per-path costs of fused-layer (FL) paths from the real geometry and the cluster's cost model.

An FL strategy (SOLVERS.md §5) fuses the first τ units and cuts the output of
unit τ into a P_h x P_w grid of equal tiles ("paths"). Path p cut at unit
o ∈ {0..τ} runs units [0, o) on the end device (its tile's halo included),
sends the activation crossing cut o over the uplink (o = 0: the raw input
tile), and runs units [o, τ) on the server. So each path has, per cut o:

    a[o]  end-device compute of units [0, o)          (Device.layer_time, §2 A.1)
    b[o]  uplink transfer of the cut-o region         (Cluster.tx end -> server: wire + both ends' message cost)
    e[o]  server compute of units [o, τ)

Speed. Equal tiles of one grid come in few shapes (first, interior and last
strip of each axis, two strip sizes when the split is uneven), and a tile's
costs depend only on its per-layer extents. So tiles are grouped into
*classes* of identical cost vectors, and costs are computed once per class:
a layer's predicted time on a tile is affine in its output and input element
counts (§2 A.1, the executor terms included), i.e. bilinear in the tile's row
and column extents, which `axes.AxisMaps` give for every strip at once (a
layer costed by the roofline fallback is the larger of two such terms; a tile
that reaches some layer only through padding is costed exactly). The tests
check every class against `geometry.backprop` + `Device.layer_time`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgepart.geometry import Interval, Region, backprop, split_interval
from edgepart.graph.layer_graph import Layer, LayerGraph
from edgepart.planner.cluster import Cluster, Device
from edgepart.planner.costmodel import TileCounts, bytes_moved, tile_counts
from edgepart.planner.errors import PlanningError
from edgepart.planner.offload.axes import (
    COLS,
    ROWS,
    AxisMaps,
    argument_channels,
    build_axis_maps,
    full_regions,
)
from edgepart.planner.offload.settings import OffloadSettings, pick_devices
from edgepart.planner.stage_costs import dtype_at

FloatArray = np.ndarray


@dataclass(frozen=True)
class _Affine:
    """Seconds = const + out * output elements + args[i] * elements read from argument i (one device)."""

    const: float
    out: float
    args: tuple[float, ...]


@dataclass(frozen=True)
class _LayerCost:
    """A layer's seconds on a tile: `rest`, plus the larger of the two `roofline` terms when the profile has
    no model for its op family (the roofline fallback, max(FLOPs / peak, bytes / bandwidth)); all affine."""

    rest: _Affine
    roofline: tuple[_Affine, _Affine] | None


def _probe(layer: Layer, seconds: Callable[[float, Sequence[float]], float]) -> _Affine:
    """The coefficients of an affine function of a tile's output and input element counts."""
    # probe at the layer's own sizes: differences of large numbers keep the per-element slopes precise
    full_out = float(math.prod(layer.out_shape))
    full_in = [float(math.prod(s)) for s in layer.in_shapes]
    zero = [0.0] * len(full_in)
    base = seconds(0.0, zero)
    out = (seconds(full_out, zero) - base) / full_out
    args = tuple((seconds(0.0, [n if j == i else 0.0 for j in range(len(zero))]) - base) / n
                 for i, n in enumerate(full_in))
    return _Affine(base, out, args)


def _layer_cost(device: Device, layer: Layer, batch: int) -> _LayerCost:
    """`Device.layer_time` of `layer` as a function of its tile's element counts."""
    profile = device.profile

    def counts(out: float, ins: Sequence[float]) -> TileCounts:
        return tile_counts(layer, out, ins, None, batch)

    def total(out: float, ins: Sequence[float]) -> float:
        return profile.time_of_counts(layer, counts(out, ins)) / device.speed

    if profile.model_for(layer) is not None:
        return _LayerCost(_probe(layer, total), None)
    scale = profile.executor_scale / device.speed

    def compute(out: float, ins: Sequence[float]) -> float:
        return scale * counts(out, ins).flops / profile.roofline.peak_flops

    def memory(out: float, ins: Sequence[float]) -> float:
        return scale * bytes_moved(layer, counts(out, ins)) / profile.roofline.mem_bandwidth

    def rest(out: float, ins: Sequence[float]) -> float:
        return total(out, ins) - max(compute(out, ins), memory(out, ins))

    return _LayerCost(_probe(layer, rest), (_probe(layer, compute), _probe(layer, memory)))


@dataclass(frozen=True)
class AxisSplit:
    """One axis split into `parts` equal strips: the classes present, and each strip's index among them."""

    strips: tuple[Interval, ...]
    classes: np.ndarray  # table classes present, ascending
    local: np.ndarray  # per strip: index into `classes`
    first: np.ndarray  # per present class: its first strip


@dataclass(frozen=True)
class AxisTable:
    """Every strip of one axis split into 1..max_parts equal strips, grouped into classes of equal extents."""

    maps: AxisMaps
    spans: np.ndarray  # (classes, extents): extent lengths of each class
    degenerate: np.ndarray  # (classes,): some layer's extent is empty (cost such tiles exactly)
    splits: tuple[AxisSplit, ...]  # splits[parts - 1]
    example: tuple[Interval, ...]  # one strip of each class

    @property
    def of_strip(self) -> tuple[np.ndarray, ...]:
        """of_strip[parts - 1][i]: table class of strip i."""
        return tuple(split.classes[split.local] for split in self.splits)

    @staticmethod
    def build(maps: AxisMaps, max_parts: int, checked: np.ndarray) -> AxisTable:
        strips = [tuple(split_interval(maps.size, [1.0] * parts)) for parts in range(1, max_parts + 1)]
        flat = [s for group in strips for s in group]
        spans = maps.spans([s[0] for s in flat], [s[1] for s in flat])
        # a strip that reaches some layer only through padding is costed exactly, on its own: the maps'
        # extents past an empty range are not its geometry
        empty = np.any(spans[:, checked] <= 0, axis=1)
        keyed = np.hstack([spans, np.where(empty, [s[0] for s in flat], -1)[:, None],
                           np.where(empty, [s[1] for s in flat], -1)[:, None]])
        unique_keyed, first, inverse = np.unique(keyed, axis=0, return_index=True, return_inverse=True)
        unique = unique_keyed[:, :-2]
        inverse = inverse.reshape(-1)
        splits = []
        offset = 0
        for group in strips:
            of_strip = inverse[offset: offset + len(group)]
            offset += len(group)
            classes, first_strip, local = np.unique(of_strip, return_index=True, return_inverse=True)
            splits.append(AxisSplit(group, classes, local.reshape(-1), first_strip))
        degenerate = np.any(unique[:, checked] <= 0, axis=1)
        return AxisTable(maps, unique, degenerate, tuple(splits), tuple(flat[i] for i in first))


@dataclass(frozen=True)
class PairTable:
    """Costs of a row class times a column class, [row class, column class, cut o]."""

    local: FloatArray
    uplink: FloatArray
    server: FloatArray
    nbytes: FloatArray


@dataclass(frozen=True)
class PathCosts:
    """Costs of the paths of one (τ, grid), grouped into classes of identical cost vectors.

    Path p is tile (p // P_w, p % P_w) of the grid, row-major. Arrays are
    indexed [class, o] for cuts o = 0..τ (in units).
    """

    tau: int
    grid: tuple[int, int]
    path_class: np.ndarray  # (P,)
    counts: np.ndarray  # (classes,)
    local: FloatArray  # a: end-device compute of units [0, o)
    uplink: FloatArray  # b: transfer of the cut-o activation (0 bytes: 0 s)
    server: FloatArray  # e: server compute of units [o, τ)
    cut_bytes: FloatArray
    post_s: float  # server compute of the layers after cut τ (whole tensors)
    return_s: float  # the model output sent back to the end device
    fuse_message_s: float  # a path's server part hands its tile to the fusion: a local message on the server
    # a device's compute tasks take turns (plan meta.turns): each after the one before it, told by a local message
    end_turn_s: float = 0.0
    server_turn_s: float = 0.0

    @property
    def paths(self) -> int:
        return int(self.path_class.shape[0])

    @property
    def classes(self) -> int:
        return int(self.counts.shape[0])

    @cached_property
    def members(self) -> tuple[tuple[int, ...], ...]:
        """Paths of each class, in index order."""
        groups: list[list[int]] = [[] for _ in range(self.classes)]
        for p, k in enumerate(self.path_class.tolist()):
            groups[k].append(p)
        return tuple(tuple(g) for g in groups)

    @property
    def end_unit_s(self) -> FloatArray:
        """[class, u]: end-device compute of unit u of a path's tile (halo included), u = 0..τ-1."""
        return np.diff(self.local, axis=1)

    @property
    def server_unit_s(self) -> FloatArray:
        """[class, u]: server compute of unit u of a path's tile (halo included)."""
        return -np.diff(self.server, axis=1)

    def fuse_delay(self, cut: int) -> float:
        """Delay between a path's last compute and the fusion having its tile (local hand-off on the server)."""
        return self.fuse_message_s if cut < self.tau else 0.0


@dataclass
class PrefixCosts:
    """Everything that depends on τ only: B.1 maps of both axes, the bilinear cost weights per device, and
    the costs of every (row class, column class) pair of the grids up to `max_parts`."""

    problem: OffloadProblem
    tau: int
    rows: AxisMaps
    cols: AxisMaps
    weights: dict[str, tuple[FloatArray, FloatArray]]  # device role -> (W (extents x units), const (units))
    # device role -> per roofline-costed layer: (unit, (W, const) of its FLOP term, (W, const) of its bytes term)
    maxima: dict[str, list[tuple[int, tuple[FloatArray, float], tuple[FloatArray, float]]]]
    checked: np.ndarray  # extents that must be non-empty for the affine formula (outputs and reads)
    cut_extent: tuple[int, ...]  # extent index of the tensor crossing cut o
    cut_scale: FloatArray  # bytes per (row x col) of the tensor crossing cut o
    cut_channels: tuple[int, ...]
    max_parts: tuple[int, int]

    @staticmethod
    def build(problem: OffloadProblem, tau: int) -> PrefixCosts:
        graph = problem.graph
        bounds = problem.bounds
        stop = bounds[tau]
        producers = [graph.producer_at(bounds[o]) for o in range(tau + 1)]
        rows = build_axis_maps(graph, stop, ROWS, producers)
        cols = build_axis_maps(graph, stop, COLS, producers)
        regions = full_regions(graph, stop)
        unit_of = {i: u for u in range(tau) for i in range(bounds[u], bounds[u + 1])}
        n_ext = len(rows.extents)
        checked = list(range(n_ext - (tau + 1)))  # layer outputs and argument reads (the rest: cut tensors)
        extents_of: dict[int, list[int]] = {}
        for k in checked:
            extents_of.setdefault(rows.extents[k].layer, []).append(k)

        def extent_weights(coefficients: _Affine, index: int) -> FloatArray:
            """Seconds per (row x column) of each of layer `index`'s extents."""
            layer, region = graph.layers[index], regions[index]
            w = np.zeros(n_ext)
            for k in extents_of[index]:
                arg = rows.extents[k].arg
                if arg < 0:
                    w[k] = coefficients.out * (region.channels[1] - region.channels[0])
                else:
                    w[k] = coefficients.args[arg] * argument_channels(layer, region, arg)
            return w

        weights: dict[str, tuple[FloatArray, FloatArray]] = {}
        maxima: dict[str, list[tuple[int, tuple[FloatArray, float], tuple[FloatArray, float]]]] = {}
        for role, device in (("end", problem.end), ("server", problem.server)):
            w = np.zeros((n_ext, tau))
            const = np.zeros(tau)
            maxima[role] = []
            for i in range(stop):
                cost = _layer_cost(device, graph.layers[i], graph.batch)
                u = unit_of[i]
                const[u] += cost.rest.const
                w[:, u] += extent_weights(cost.rest, i)
                if cost.roofline is not None:
                    flop, byte = cost.roofline
                    maxima[role].append((u, (extent_weights(flop, i), flop.const),
                                         (extent_weights(byte, i), byte.const)))
            weights[role] = (w, const)
        cut_extent = tuple(range(n_ext - (tau + 1), n_ext))
        channels = tuple(graph.shape_at(bounds[o])[0] for o in range(tau + 1))
        scale = np.array([channels[o] * dtype_at(graph, bounds[o]) * graph.batch for o in range(tau + 1)], float)
        height, width = rows.size, cols.size
        gh, gw = problem.settings.grid_max
        return PrefixCosts(problem, tau, rows, cols, weights, maxima, np.array(checked, dtype=int), cut_extent,
                           scale, channels, (min(gh, height), min(gw, width)))

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width of the output of unit τ (the fused tensor)."""
        return self.rows.size, self.cols.size

    @cached_property
    def row_table(self) -> AxisTable:
        return AxisTable.build(self.rows, self.max_parts[0], self.checked)

    @cached_property
    def col_table(self) -> AxisTable:
        return AxisTable.build(self.cols, self.max_parts[1], self.checked)

    @cached_property
    def pairs(self) -> PairTable:
        """Costs of every (row class, column class) pair: per unit, a matrix product of the two axes' extents."""
        rows, cols = self.row_table, self.col_table
        r = rows.spans.astype(float)
        c = cols.spans.astype(float)
        tau = self.tau
        shape = (r.shape[0], c.shape[0], tau + 1)
        local = np.zeros(shape)
        server = np.zeros(shape)
        units = {role: np.empty((r.shape[0], c.shape[0], tau)) for role in self.weights}
        for role, (w, const) in self.weights.items():
            for u in range(tau):
                units[role][:, :, u] = (r * w[:, u]) @ c.T + const[u]
            for u, (w_flop, k_flop), (w_byte, k_byte) in self.maxima[role]:
                units[role][:, :, u] += np.maximum((r * w_flop) @ c.T + k_flop, (r * w_byte) @ c.T + k_byte)
        for i, j in zip(*np.nonzero(np.logical_or.outer(rows.degenerate, cols.degenerate)), strict=True):
            units["end"][i, j], units["server"][i, j] = self.exact_unit_times(
                self._tile(rows.example[i], cols.example[j]))
        np.cumsum(units["end"], axis=2, out=local[:, :, 1:])
        server[:, :, :tau] = np.cumsum(units["server"][:, :, ::-1], axis=2)[:, :, ::-1]
        cut = list(self.cut_extent)
        nbytes = r[:, None, cut] * c[None, :, cut] * self.cut_scale
        for i, j in zip(*np.nonzero(np.logical_or.outer(rows.degenerate, cols.degenerate)), strict=True):
            regions = self.exact_cut_regions(self._tile(rows.example[i], cols.example[j]))
            graph = self.problem.graph
            nbytes[i, j] = [region.size * dtype_at(graph, self.problem.bounds[o]) * graph.batch
                            for o, region in enumerate(regions)]
        link = self.problem.uplink
        uplink = np.where(nbytes > 0, link.alpha_s + nbytes / link.bandwidth_Bps, 0.0)
        return PairTable(local, uplink, server, nbytes)

    def grid_costs(self, grid: tuple[int, int]) -> PathCosts:
        """Costs of every path of the P_h x P_w grid, grouped into classes of identical costs."""
        ph, pw = grid
        if not (1 <= ph <= self.max_parts[0] and 1 <= pw <= self.max_parts[1]):
            raise PlanningError(f"grid: {ph}x{pw} paths do not fit the output of unit {self.tau} "
                                f"({self.rows.size}x{self.cols.size}) within grid_max {self.problem.settings.grid_max}")
        rows, cols = self.row_table.splits[ph - 1], self.col_table.splits[pw - 1]
        pairs = self.pairs
        block = np.ix_(rows.classes, cols.classes)
        n_cols = cols.classes.size
        n = rows.classes.size * n_cols
        local = pairs.local[block].reshape(n, -1)
        uplink = pairs.uplink[block].reshape(n, -1)
        server = pairs.server[block].reshape(n, -1)
        nbytes = pairs.nbytes[block].reshape(n, -1)
        # classes of identical cost vectors (mirror-image tiles cost the same), numbered by their first path
        table = np.hstack([local, uplink, server])
        first_path = (rows.first.reshape(-1, 1) * pw + cols.first.reshape(1, -1)).reshape(-1)
        class_of_key: dict[bytes, int] = {}
        class_of_pair = np.empty(n, dtype=int)
        representative: list[int] = []
        for pair in np.argsort(first_path).tolist():
            key = table[pair].tobytes()
            klass = class_of_key.get(key)
            if klass is None:
                klass = class_of_key[key] = len(representative)
                representative.append(pair)
            class_of_pair[pair] = klass
        path_class = class_of_pair[(rows.local.reshape(-1, 1) * n_cols + cols.local.reshape(1, -1)).reshape(-1)]
        counts = np.bincount(path_class, minlength=len(representative))
        problem = self.problem
        return PathCosts(self.tau, grid, path_class, counts, local[representative], uplink[representative],
                         server[representative], nbytes[representative], problem.post_s(self.tau),
                         problem.return_s, problem.fuse_message_s, problem.end_turn_s, problem.server_turn_s)

    # ------------------------------------------------------------ regions of one path

    def strips(self, grid: tuple[int, int]) -> tuple[tuple[Interval, ...], tuple[Interval, ...]]:
        return self.row_table.splits[grid[0] - 1].strips, self.col_table.splits[grid[1] - 1].strips

    def _tile(self, rows: Interval, cols: Interval) -> Region:
        channels = self.cut_channels[self.tau]
        return Region.of((0, channels), rows, cols)

    def tile(self, grid: tuple[int, int], path: int) -> Region:
        """Path `path`'s share of the output of unit τ."""
        rows, cols = self.strips(grid)
        i, j = divmod(path, grid[1])
        return self._tile(rows[i], cols[j])

    def cut_region(self, grid: tuple[int, int], path: int, cut: int) -> Region:
        """The region of the tensor crossing cut `cut` that path `path` needs (what its uplink carries)."""
        rows, cols = self.strips(grid)
        i, j = divmod(path, grid[1])
        row_split, col_split = self.row_table.splits[grid[0] - 1], self.col_table.splits[grid[1] - 1]
        if (self.row_table.degenerate[row_split.classes[row_split.local[i]]]
                or self.col_table.degenerate[col_split.classes[col_split.local[j]]]):
            return self.exact_cut_regions(self._tile(rows[i], cols[j]))[cut]
        k = self.cut_extent[cut]
        (a, b), (c, d) = rows[i], cols[j]
        return Region.of((0, self.cut_channels[cut]),
                         (int(self.rows.lo[k, a]), int(self.rows.hi[k, b - 1])),
                         (int(self.cols.lo[k, c]), int(self.cols.hi[k, d - 1])))

    def exact_cut_regions(self, tile: Region) -> list[Region]:
        """The region of the tensor crossing each unit cut o = 0..τ that `tile` needs, from `backprop`."""
        graph = self.problem.graph
        bounds = self.problem.bounds
        geometry = backprop(graph, 0, bounds[self.tau], tile)
        return [geometry.input_region if o == 0 else geometry.regions[graph.producer_at(bounds[o])]
                for o in range(self.tau + 1)]

    def exact_unit_times(self, tile: Region) -> tuple[FloatArray, FloatArray]:
        """Per-unit compute of `tile` on the end device and on the server from `geometry.backprop` (used for
        tiles that reach a layer only through padding)."""
        problem = self.problem
        graph = problem.graph
        bounds = problem.bounds
        geometry = backprop(graph, 0, bounds[self.tau], tile)
        end = np.zeros(self.tau)
        server = np.zeros(self.tau)
        for u in range(self.tau):
            for i in range(bounds[u], bounds[u + 1]):
                region = geometry.regions.get(i)
                if region is None:
                    continue
                end[u] += problem.end.layer_time(graph.layers[i], region, graph.batch)
                server[u] += problem.server.layer_time(graph.layers[i], region, graph.batch)
        return end, server


class OffloadProblem:
    """A graph, the end device, the edge server and the uplink between them, plus per-τ caches."""

    def __init__(self, graph: LayerGraph, cluster: Cluster, settings: OffloadSettings | None = None):
        self.graph = graph
        self.cluster = cluster
        self.settings = settings or OffloadSettings()
        self.end, self.server = pick_devices(graph, cluster, self.settings)
        self.bounds = graph.unit_boundaries()
        self.units = len(self.bounds) - 1
        self.uplink = cluster.link(self.end.name, self.server.name)
        self.return_s = cluster.tx(self.server.name, self.end.name, graph.bytes_at(len(graph)))
        self.fuse_message_s = cluster.local_s(self.server.name)
        self.end_return_s = cluster.local_s(self.end.name)  # an output computed on the end device, to its gateway
        # the turn from one compute task of a device to the next (the deployed plans take turns: turnstile)
        self.end_turn_s = cluster.local_s(self.end.name)
        self.server_turn_s = cluster.local_s(self.server.name)
        batch = graph.batch
        self.end_unit_s = tuple(sum(self.end.layer_time(graph.layers[i], None, batch)
                                    for i in range(self.bounds[u], self.bounds[u + 1])) for u in range(self.units))
        self.server_unit_s = tuple(sum(self.server.layer_time(graph.layers[i], None, batch)
                                       for i in range(self.bounds[u], self.bounds[u + 1]))
                                   for u in range(self.units))
        fusable = graph.longest_fusable_prefix()
        limit = self.settings.tau_max
        self.tau_limit = fusable if limit is None else min(fusable, limit)
        self._prefix: dict[int, PrefixCosts] = {}

    def post_s(self, tau: int) -> float:
        return float(sum(self.server_unit_s[tau:]))

    def cut_bytes(self, cut: int) -> int:
        """Bytes of the whole tensor crossing unit cut `cut`."""
        return self.graph.bytes_at(self.bounds[cut])

    def prefix(self, tau: int) -> PrefixCosts:
        if not 1 <= tau <= self.tau_limit:
            raise PlanningError(f"tau: the FL path length must be in 1..{self.tau_limit} (the fusable prefix of "
                                f"{self.graph.model_name!r} in units), got {tau}")
        found = self._prefix.get(tau)
        if found is None:
            found = self._prefix[tau] = PrefixCosts.build(self, tau)
        return found

    def taus(self) -> range:
        if self.tau_limit < 1:
            raise PlanningError(f"{self.graph.model_name!r} has no fusable prefix (its first unit "
                                f"{self.graph.units[0].name!r} needs its whole input): use nfl")
        return range(1, self.tau_limit + 1)

    def grids(self, tau: int, max_paths: int | None = None) -> list[tuple[int, int]]:
        """Candidate grids P_h x P_w for FL path length τ (settings' caps and the fused output's size)."""
        height, width = self.graph.shape_at(self.bounds[tau])[1:]
        gh, gw = self.settings.grid_max
        cap = self.settings.max_paths
        if max_paths is not None:
            cap = max_paths if cap is None else min(cap, max_paths)
        return [(ph, pw) for ph in range(1, min(gh, height) + 1) for pw in range(1, min(gw, width) + 1)
                if cap is None or ph * pw <= cap]
