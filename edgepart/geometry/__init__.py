"""Exact tile and halo arithmetic (SOLVERS.md §3 B.1-B.2)."""

from edgepart.geometry.region import (
    Interval,
    Region,
    disjoint_cover,
    hull_all,
    split_interval,
    subtract,
    tiles_partition,
)
from edgepart.geometry.tiles import (
    GeometryError,
    TileGeometry,
    WindowSlice,
    backprop,
    conv_input_channels,
    grid_regions,
    required_input,
    window_slice,
    window_slices,
)

__all__ = [
    "GeometryError", "Interval", "Region", "TileGeometry", "WindowSlice", "backprop",
    "conv_input_channels", "disjoint_cover", "grid_regions", "hull_all", "required_input", "split_interval",
    "subtract", "tiles_partition", "window_slice", "window_slices",
]
