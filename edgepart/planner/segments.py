"""Constant-time cost of any row strip of a fused segment, for the searches.

The searches cost thousands of candidate tiles, so they cannot run the exact
geometry (`backprop`) and the per-layer regression for each one. Two facts
make every strip cost O(1) after an O(layers x rows) precomputation:

1. Separability (§3 B.1): for output rows [a, b) of a segment's last layer,
   every layer ℓ computes rows [lo_ℓ(a), hi_ℓ(b)): the top depends only on a
   and the bottom only on b, for windows, pointwise ops, upsampling and
   space-to-depth alike, and hulls of such intervals keep the property.
2. Linearity (§2 A.1): with channels and columns fixed, every feature of a
   layer's tile is affine in its output rows and in each input's rows.

So the compute time of strip [a, b) on a device is K + U[b] - V[a], with U, V
cumulative over the segment's layers. `RowMaps` are the vectorised B.1 maps
from one end layer; `SegmentCost` holds K, U, V per device cost model. Layers
whose model is not affine (the roofline fallback) or strips that touch only
padding (empty tiles) are costed exactly instead. Tests check both paths
against `backprop` + `Device.layer_time`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgepart.geometry import Region, backprop, required_input
from edgepart.graph.layer_graph import INPUT, Layer, LayerGraph
from edgepart.graph.ops import Spatial
from edgepart.planner.costmodel import DeviceProfile, tile_counts

IntArray = np.ndarray


def _window_rows(layer: Layer, arg: int, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Vectorised `geometry.window_slice` on the row axis (non-empty outputs)."""
    window = layer.spec.window
    assert window is not None
    k, s, p, d = window.kernel[0], window.stride[0], window.padding[0], window.dilation[0]
    n = layer.in_shapes[arg][1]
    lo_v = lo * s - p
    hi_v = (hi - 1) * s - p + d * (k - 1) + 1
    rlo = np.minimum(np.maximum(lo_v, 0), n)
    rhi = np.minimum(hi_v, n)
    return rlo, rhi


def required_rows(layer: Layer, arg: int, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Rows of argument `arg` that rows [lo, hi) of `layer` read (lo depends on lo only, hi on hi only)."""
    spatial = layer.spec.spatial
    if spatial is Spatial.WINDOW:
        return _window_rows(layer, arg, lo, hi)
    if spatial is Spatial.POINTWISE:
        return lo, hi
    f = layer.spec.factor
    if spatial is Spatial.UPSAMPLE:
        return lo // f, (hi - 1) // f + 1
    if spatial is Spatial.SPACE_TO_DEPTH:
        return lo * f, hi * f
    raise ValueError(f"layer {layer.name!r} needs its whole input; it cannot be in a row strip")


@dataclass
class RowMaps:
    """Row back-propagation from the output rows of layer `end - 1` down to cut point `run_start`.

    `lo[ℓ][a]` is the first row layer ℓ computes for output rows starting at a;
    `hi[ℓ][b - 1]` one past its last row for output rows ending at b. `arg_lo`,
    `arg_hi` are the rows each layer reads from each argument; `need_lo`,
    `need_hi` the hull each tensor must hold (per producer, INPUT included).
    Channels and columns of every tile are those of the full-width strip.
    """

    graph: LayerGraph
    run_start: int
    end: int
    rows: int
    lo: dict[int, IntArray] = field(default_factory=dict)
    hi: dict[int, IntArray] = field(default_factory=dict)
    arg_lo: dict[tuple[int, int], IntArray] = field(default_factory=dict)
    arg_hi: dict[tuple[int, int], IntArray] = field(default_factory=dict)
    need_lo: dict[int, IntArray] = field(default_factory=dict)
    need_hi: dict[int, IntArray] = field(default_factory=dict)
    full_regions: dict[int, Region] = field(default_factory=dict)  # channels/cols per layer
    entry_regions: dict[int, Region] = field(default_factory=dict)  # per producer: region of the full strip
    degenerate: bool = False  # some strip reaches a layer only through padding: cost exactly

    @staticmethod
    def build(graph: LayerGraph, run_start: int, end: int) -> RowMaps:
        shape = graph.shape_at(end)
        maps = RowMaps(graph, run_start, end, shape[1])
        full = backprop(graph, run_start, end, Region.full(shape))
        maps.full_regions = dict(full.regions)
        rows = shape[1]
        maps.need_lo[end - 1] = np.arange(rows)
        maps.need_hi[end - 1] = np.arange(1, rows + 1)
        for index in range(end - 1, run_start - 1, -1):
            layer = graph.layers[index]
            lo, hi = maps.need_lo[index], maps.need_hi[index]
            maps.lo[index], maps.hi[index] = lo, hi
            if np.any(hi <= lo):  # hi[i] vs lo[i] is the single-row strip [i, i+1), the thinnest
                maps.degenerate = True
            for arg, pred in enumerate(layer.preds):
                rlo, rhi = required_rows(layer, arg, lo, hi)
                maps.arg_lo[(index, arg)], maps.arg_hi[(index, arg)] = rlo, rhi
                if np.any(rhi <= rlo):
                    maps.degenerate = True
                if pred in maps.need_lo:
                    maps.need_lo[pred] = np.minimum(maps.need_lo[pred], rlo)
                    maps.need_hi[pred] = np.maximum(maps.need_hi[pred], rhi)
                else:
                    maps.need_lo[pred], maps.need_hi[pred] = rlo, rhi
                region = full.regions[index]
                maps.entry_regions.setdefault(pred, required_input(layer, region, arg))
                maps.entry_regions[pred] = maps.entry_regions[pred].hull(required_input(layer, region, arg))
        return maps

    def entry(self, start: int) -> int:
        return self.graph.producer_at(start)

    def entry_rows(self, start: int, a: int, b: int) -> tuple[int, int]:
        p = self.entry(start)
        return int(self.need_lo[p][a]), int(self.need_hi[p][b - 1])

    def entry_row_bytes(self, start: int) -> float:
        """Bytes of one row of the strip's input tensor (channels x cols x dtype x batch)."""
        p = self.entry(start)
        region = self.entry_regions[p]
        dtype = 4 if p == INPUT else self.graph.layers[p].dtype_bytes
        return float(region.shape[0] * region.shape[2] * dtype * self.graph.batch)

    def out_row_bytes(self) -> float:
        shape = self.graph.shape_at(self.end)
        layer = self.graph.layers[self.end - 1]
        return float(shape[0] * shape[2] * layer.dtype_bytes * self.graph.batch)


@dataclass(frozen=True)
class _Affine:
    """t = const + out·rows_out + Σ args[a]·rows_in[a] for one layer on one profile."""

    const: float
    out: float
    args: tuple[float, ...]


def _layer_affine(profile: DeviceProfile, layer: Layer, region: Region, in_regions: Sequence[Region],
                  batch: int) -> _Affine | None:
    """Per-row coefficients of one layer's strip time, or None when its model is not affine."""
    if profile.model_for(layer) is None:
        return None
    per_out_row = region.shape[0] * region.shape[2]
    per_in_row = [r.shape[0] * r.shape[2] for r in in_regions]

    def t(out_rows: float, in_rows: Sequence[float]) -> float:
        counts = tile_counts(layer, per_out_row * out_rows, [c * r for c, r in zip(per_in_row, in_rows, strict=True)],
                             None, batch)
        return profile.time_of_counts(layer, counts)

    zero = [0.0] * len(in_regions)
    base = t(0.0, zero)
    args = tuple(t(0.0, [1.0 if j == i else 0.0 for j in range(len(zero))]) - base for i in range(len(zero)))
    return _Affine(base, t(1.0, zero) - base, args)


class EndCosts:
    """Cumulative strip-cost arrays of every segment ending at `maps.end`, for one device profile.

    Walking the layers from the end down, the arrays at each cut point are the
    costs of the segment starting there; segments sharing an end share the work.
    Times are for speed 1.
    """

    def __init__(self, maps: RowMaps, profile: DeviceProfile, starts: Sequence[int]):
        self.maps = maps
        self.profile = profile
        graph = maps.graph
        rows = maps.rows
        const = 0.0
        u = np.zeros(rows)  # indexed by b - 1
        v = np.zeros(rows)  # indexed by a
        exact: list[int] = []
        self.snapshots: dict[int, tuple[float, np.ndarray, np.ndarray, tuple[int, ...]]] = {}
        wanted = set(starts)
        for index in range(maps.end - 1, maps.run_start - 1, -1):
            layer = graph.layers[index]
            region = maps.full_regions[index]
            ins = [required_input(layer, region, arg) for arg in range(len(layer.preds))]
            affine = None if maps.degenerate else _layer_affine(profile, layer, region, ins, graph.batch)
            if affine is None:
                exact.append(index)
            else:
                const += affine.const
                u = u + affine.out * maps.hi[index]
                v = v + affine.out * maps.lo[index]
                for arg, coef in enumerate(affine.args):
                    if coef:
                        u = u + coef * maps.arg_hi[(index, arg)]
                        v = v + coef * maps.arg_lo[(index, arg)]
            if index in wanted:
                self.snapshots[index] = (const, u, v, tuple(exact))

    def segment(self, start: int) -> SegmentCost:
        const, u, v, exact = self.snapshots[start]
        return SegmentCost(self.maps, start, self.profile, const, u, v, exact)


class SegmentCost:
    """Compute seconds of strip [a, b) of segment [start, end) on one device profile, in O(1).

    Times are for `speed` 1: divide by the device's speed.
    """

    def __init__(self, maps: RowMaps, start: int, profile: DeviceProfile, const: float, u: np.ndarray,
                 v: np.ndarray, exact_layers: Sequence[int]):
        self.maps = maps
        self.start = start
        self.profile = profile
        self.const = const
        self.u = u
        self.v = v
        self.exact_layers = tuple(exact_layers)

    @staticmethod
    def build(maps: RowMaps, start: int, profile: DeviceProfile) -> SegmentCost:
        return EndCosts(maps, profile, [start]).segment(start)

    @property
    def exact(self) -> bool:
        """True when every strip is costed by the O(1) formula."""
        return not self.exact_layers

    def time(self, a: int, b: int) -> float:
        t = self.const + float(self.u[b - 1]) - float(self.v[a])
        if self.exact_layers:
            t += self._exact_part(a, b)
        return t

    def _exact_part(self, a: int, b: int) -> float:
        graph = self.maps.graph
        shape = graph.shape_at(self.maps.end)
        geometry = backprop(graph, self.start, self.maps.end, Region.of((0, shape[0]), (a, b), (0, shape[2])))
        return sum(self.profile.layer_time(graph.layers[i], geometry.regions[i], graph.batch)
                   for i in self.exact_layers if i in geometry.regions)

    def full_time(self) -> float:
        return self.time(0, self.maps.rows)


def strip_region(graph: LayerGraph, end: int, a: int, b: int) -> Region:
    shape = graph.shape_at(end)
    return Region.of((0, shape[0]), (a, b), (0, shape[2]))
