"""Vectorised §3 B.1 back-propagation along one spatial axis, for every strip of a fused prefix at once.

Rows and columns back-propagate independently (B.1), and along one axis the
first index a layer computes depends only on the first output index of the
strip and the last only on the last (`segments.py` uses the same fact for row
strips). So for the fused prefix [0, stop) and one axis, `AxisMaps` holds,
for every extent the cost model or the transfers need (each layer's computed
output, each layer's read of each argument, the tensor at each unit cut), two
arrays: `lo[k][a]` for strips starting at a and `hi[k][b - 1]` for strips
ending at b. A tile of a P_h x P_w grid is a row strip times a column strip,
so its extents are products of two such lookups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepart.geometry import Region, backprop, required_input
from edgepart.graph.layer_graph import Layer, LayerGraph
from edgepart.graph.ops import Spatial

IntArray = np.ndarray
ROWS, COLS = 1, 2  # axes of a (C, H, W) tensor


def _window(layer: Layer, arg: int, axis: int, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """`geometry.window_slice` on `axis`, vectorised (non-empty output strips)."""
    window = layer.spec.window
    assert window is not None
    i = axis - 1
    k, s, d = window.kernel[i], window.stride[i], window.dilation[i]
    p = window.padding[0] if axis == ROWS else window.padding[2]
    n = layer.in_shapes[arg][axis]
    lo_v = lo * s - p
    hi_v = (hi - 1) * s - p + d * (k - 1) + 1
    return np.minimum(np.maximum(lo_v, 0), n), np.minimum(hi_v, n)


def required_span(layer: Layer, arg: int, axis: int, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Indices of argument `arg` along `axis` that output indices [lo, hi) of `layer` read."""
    spatial = layer.spec.spatial
    if spatial is Spatial.WINDOW:
        return _window(layer, arg, axis, lo, hi)
    if spatial is Spatial.POINTWISE:
        return lo, hi
    f = layer.spec.factor
    if spatial is Spatial.UPSAMPLE:
        return lo // f, (hi - 1) // f + 1
    if spatial is Spatial.SPACE_TO_DEPTH:
        return lo * f, hi * f
    raise ValueError(f"layer {layer.name!r} needs its whole input; it cannot be in a fused prefix")


@dataclass(frozen=True)
class Extent:
    """One extent the costs need: a layer's output (arg = -1), a layer's read of an argument, or a cut's tensor."""

    layer: int  # layer index; for a cut tensor, its producer (INPUT for the model input)
    arg: int  # -1: the layer's own output (or the cut tensor); >= 0: that argument's read


@dataclass(frozen=True)
class AxisMaps:
    """Per extent k (see `extents`): first index `lo[k, a]` and stop `hi[k, b - 1]` for the strip [a, b)."""

    axis: int
    size: int  # length of the prefix output along the axis
    extents: tuple[Extent, ...]
    lo: IntArray  # (len(extents), size)
    hi: IntArray

    def spans(self, starts: Sequence[int], stops: Sequence[int]) -> IntArray:
        """Extent lengths (strips x extents) of the strips [starts[i], stops[i])."""
        a = np.asarray(starts)
        b = np.asarray(stops) - 1
        spans: IntArray = (self.hi[:, b] - self.lo[:, a]).T
        return spans


def full_regions(graph: LayerGraph, stop: int) -> dict[int, Region]:
    """The regions the whole prefix [0, stop) computes (channels of every layer and argument)."""
    return dict(backprop(graph, 0, stop, Region.full(graph.shape_at(stop))).regions)


def build_axis_maps(graph: LayerGraph, stop: int, axis: int, cut_producers: Sequence[int]) -> AxisMaps:
    """B.1 maps along `axis` for the prefix [0, stop): every layer's output and argument reads, and the
    tensors produced by `cut_producers` (INPUT included) at unit cuts."""
    size = graph.shape_at(stop)[axis]
    need_lo: dict[int, IntArray] = {stop - 1: np.arange(size)}
    need_hi: dict[int, IntArray] = {stop - 1: np.arange(1, size + 1)}
    extents: list[Extent] = []
    los: list[IntArray] = []
    his: list[IntArray] = []
    for index in range(stop - 1, -1, -1):
        layer = graph.layers[index]
        if index not in need_lo:
            raise ValueError(f"layer {layer.name!r} is dead in the prefix [0, {stop})")
        lo, hi = need_lo[index], need_hi[index]
        extents.append(Extent(index, -1))
        los.append(lo)
        his.append(hi)
        for arg, pred in enumerate(layer.preds):
            rlo, rhi = required_span(layer, arg, axis, lo, hi)
            extents.append(Extent(index, arg))
            los.append(rlo)
            his.append(rhi)
            if pred in need_lo:
                need_lo[pred] = np.minimum(need_lo[pred], rlo)
                need_hi[pred] = np.maximum(need_hi[pred], rhi)
            else:
                need_lo[pred], need_hi[pred] = rlo, rhi
    for producer in cut_producers:
        extents.append(Extent(producer, -1))
        los.append(need_lo[producer])
        his.append(need_hi[producer])
    return AxisMaps(axis, size, tuple(extents), np.stack(los), np.stack(his))


def argument_channels(layer: Layer, region: Region, arg: int) -> int:
    """Channels of argument `arg` that `layer` reads to compute `region` (all its own channels)."""
    needed = required_input(layer, region, arg)
    return needed.channels[1] - needed.channels[0]
