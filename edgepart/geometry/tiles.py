"""Exact tile geometry: which input region a range of layers needs for a given output region.

SOLVERS.md §3 B.1: for a sliding window with kernel k, stride s, leading padding
p and dilation d over an input of n rows, output rows [a, b) need the virtual
input rows [a*s - p, (b-1)*s - p + d*(k-1) + 1). The part outside [0, n) is
padding that exists only at a real image border, so a tile pads locally by
exactly the amount it sticks out (zeros for conv and avg-pool, -inf for
max-pool) and runs the layer with no other padding. This is exact, also for
ceil_mode pooling. Rows and columns are independent. In a DAG the region a
tensor must have is the hull of what its consumers need (B.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgepart.errors import EdgepartError
from edgepart.geometry.region import Interval, Region, hull_all
from edgepart.graph.layer_graph import Layer, LayerGraph
from edgepart.graph.ops import OpKind, Spatial, Window


class GeometryError(EdgepartError, ValueError):
    """A region request the layers cannot satisfy."""


@dataclass(frozen=True)
class WindowSlice:
    """Input rows [lo, hi) (clipped to the real input) plus local padding before and after."""

    lo: int
    hi: int
    pad_before: int
    pad_after: int


def window_slice(out: Interval, kernel: int, stride: int, pad_before: int, dilation: int, in_size: int) -> WindowSlice:
    a, b = out
    if b <= a:
        return WindowSlice(0, 0, 0, 0)
    lo_virtual = a * stride - pad_before
    hi_virtual = (b - 1) * stride - pad_before + dilation * (kernel - 1) + 1
    lo = min(max(0, lo_virtual), in_size)
    hi = max(min(in_size, hi_virtual), lo)
    if hi == lo:  # the window lies wholly in the padding: no input rows, only pad values
        return WindowSlice(0, 0, hi_virtual - lo_virtual, 0)
    return WindowSlice(lo, hi, lo - lo_virtual, hi_virtual - hi)


def window_slices(window: Window, out: Region, in_shape: Sequence[int]) -> tuple[WindowSlice, WindowSlice]:
    rows = window_slice(out.rows, window.kernel[0], window.stride[0], window.padding[0], window.dilation[0], in_shape[1])
    cols = window_slice(out.cols, window.kernel[1], window.stride[1], window.padding[2], window.dilation[1], in_shape[2])
    return rows, cols


def conv_input_channels(layer: Layer, out_channels: Interval) -> Interval:
    """Input channels a (grouped) conv needs for output channels [c0, c1)."""
    cin, cout, groups = layer.in_shapes[0][0], layer.out_shape[0], layer.spec.groups
    if groups == 1:
        return (0, cin)
    out_per_group, in_per_group = cout // groups, cin // groups
    c0, c1 = out_channels
    g0, g1 = c0 // out_per_group, -(-c1 // out_per_group)
    return (g0 * in_per_group, g1 * in_per_group)


def required_input(layer: Layer, out: Region, arg: int) -> Region:
    """The region of argument `arg` that computes region `out` of `layer`."""
    in_shape = layer.in_shapes[arg]
    spatial = layer.spec.spatial
    if out.empty:
        return Region(tuple((0, 0) for _ in in_shape))
    if spatial is Spatial.GLOBAL:
        if layer.op is OpKind.FC and len(out.dims) == 1:
            return Region.full(in_shape)  # any output features need all input features
        return Region.full(in_shape)
    if len(in_shape) != 3:  # pointwise op on a flat tensor
        return out
    channels = _required_channels(layer, out, arg)
    if spatial is Spatial.WINDOW:
        assert layer.spec.window is not None
        rows, cols = window_slices(layer.spec.window, out, in_shape)
        return Region.of(channels, (rows.lo, rows.hi), (cols.lo, cols.hi))
    if spatial is Spatial.POINTWISE:
        return Region.of(channels, out.rows, out.cols)
    f = layer.spec.factor
    if spatial is Spatial.UPSAMPLE:
        (a, b), (c, d) = out.rows, out.cols
        return Region.of(channels, (a // f, (b - 1) // f + 1), (c // f, (d - 1) // f + 1))
    # space-to-depth
    (a, b), (c, d) = out.rows, out.cols
    return Region.of(channels, (a * f, b * f), (c * f, d * f))


def _required_channels(layer: Layer, out: Region, arg: int) -> Interval:
    full = (0, layer.in_shapes[arg][0])
    op = layer.op
    if op is OpKind.CONV:
        return conv_input_channels(layer, out.channels)
    if op in (OpKind.CONCAT, OpKind.LRN, OpKind.SPACE_TO_DEPTH):
        return full
    if out.channels == (0, layer.out_shape[0]):
        return full
    return out.channels  # channel-wise op: the same channels


@dataclass(frozen=True)
class TileGeometry:
    """What one partition of layers [start, stop) computes.

    `regions[i]` is the region layer i must produce (the hull of what its
    consumers in the range need); `input_region` is the region of the tensor
    crossing cut point `start` that the partition receives.
    """

    start: int
    stop: int
    output_region: Region
    input_region: Region
    regions: dict[int, Region]

    def halo_fraction(self, graph: LayerGraph) -> float:
        """Computed elements over owned elements minus one, summed over the range (redundancy)."""
        computed = sum(self.regions[i].size for i in self.regions)
        total = sum(graph.layers[i].out_elems for i in self.regions)
        return computed / total if total else 0.0


def backprop(graph: LayerGraph, start: int, stop: int, output_region: Region) -> TileGeometry:
    """Back-propagate `output_region` of layer stop-1 through layers [start, stop)."""
    if not (0 <= start < stop <= len(graph)):
        raise GeometryError(f"layer range [{start}, {stop}) is outside [0, {len(graph)})")
    if not graph.is_cut(start) or not graph.is_cut(stop):
        raise GeometryError(f"layer range [{start}, {stop}) does not start and end at cut points")
    last = graph.layers[stop - 1]
    full_out = Region.full(last.out_shape)
    if output_region.ndim != full_out.ndim or not full_out.contains(output_region) or output_region.empty:
        raise GeometryError(f"output region {output_region} is not a non-empty part of {full_out} "
                            f"(the output of layer {last.name!r})")
    needs: dict[int, list[Region]] = {stop - 1: [output_region]}
    regions: dict[int, Region] = {}
    for index in range(stop - 1, start - 1, -1):
        layer = graph.layers[index]
        wanted = needs.get(index)
        if not wanted:
            continue  # dead inside this range: nothing downstream needs it
        region = hull_all(wanted)
        regions[index] = region
        for arg, pred in enumerate(layer.preds):
            needs.setdefault(pred, []).append(required_input(layer, region, arg))
    entry = graph.producer_at(start)
    if entry not in needs:
        raise GeometryError(f"layers [{start}, {stop}) do not read the tensor crossing cut point {start}")
    outside = [p for p in needs if p != entry and not start <= p < stop]
    if outside:
        raise GeometryError(f"layers [{start}, {stop}) read tensors from outside the range: {outside}")
    return TileGeometry(start, stop, output_region, hull_all(needs[entry]), regions)


def grid_regions(shape: Sequence[int], row_splits: Sequence[Interval], col_splits: Sequence[Interval]) -> list[Region]:
    """Row-major grid of regions over a (C, H, W) tensor, all channels each."""
    return [Region.of((0, shape[0]), r, c) for r in row_splits for c in col_splits]
