"""Exact tile geometry: random layer stacks, random uneven tilings, compared with the whole model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import (
    GeometryError,
    Region,
    backprop,
    grid_regions,
    split_interval,
    tiles_partition,
    window_slice,
)
from edgepart.graph import trace

use_exact_kernels()


def _out_size(n: int, k: int, s: int, p_lo: int, p_hi: int, d: int, ceil: bool) -> int:
    eff = n + p_lo + p_hi - d * (k - 1) - 1
    if eff < 0:
        return 0
    out = (-(-eff // s) if ceil else eff // s) + 1
    if ceil and (out - 1) * s >= n + p_lo:
        out -= 1  # PyTorch: the last window must start inside the input or the left padding
    return out


@st.composite
def layer_stacks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """A random stack of window and pointwise layers whose sizes stay valid."""
    channels = draw(st.integers(1, 4)) * 2
    h, w = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    shape = (1, channels, h, w)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "pad", "bn_relu", "upsample"]))
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, channels) if channels % g == 0]))
            out_ch = groups * draw(st.integers(1, 3))
            p = (draw(st.integers(0, k[0])), draw(st.integers(0, k[1])))
            new = (_out_size(h, k[0], s[0], p[0], p[0], d[0], False), _out_size(w, k[1], s[1], p[1], p[1], d[1], False))
            if min(new) < 1:
                continue
            layers.append(nn.Conv2d(channels, out_ch, k, s, p, d, groups))
            channels, (h, w) = out_ch, new
        elif kind in ("maxpool", "avgpool"):
            ceil = draw(st.booleans())
            p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
            dil = d if kind == "maxpool" else (1, 1)
            new = (_out_size(h, k[0], s[0], p[0], p[0], dil[0], ceil), _out_size(w, k[1], s[1], p[1], p[1], dil[1], ceil))
            if min(new) < 1:
                continue
            if kind == "maxpool":
                layers.append(nn.MaxPool2d(k, s, p, dil, ceil_mode=ceil))
            else:
                layers.append(nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=draw(st.booleans())))
            h, w = new
        elif kind == "pad":
            pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
            layers.append(nn.ZeroPad2d(pads))
            h, w = h + pads[2] + pads[3], w + pads[0] + pads[1]
        elif kind == "bn_relu":
            bn = nn.BatchNorm2d(channels)
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
            layers.extend([bn, nn.ReLU()])
        elif h * w < 400:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            h, w = 2 * h, 2 * w
    if not layers:
        layers.append(nn.Conv2d(channels, channels, 3, 1, 1))
    return nn.Sequential(*layers).eval(), shape


def _random_cuts(draw: st.DrawFn, length: int, max_parts: int) -> list[tuple[int, int]]:
    parts = draw(st.integers(1, min(max_parts, length)))
    cuts = sorted(draw(st.lists(st.integers(1, length - 1), min_size=parts - 1, max_size=parts - 1, unique=True))) \
        if length > 1 else []
    bounds = [0, *cuts, length]
    return list(itertools.pairwise(bounds))


def _run_tiled(model: nn.Module, shape: tuple[int, ...], rows: list[tuple[int, int]],
               cols: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    gm, graph = trace(model, shape)
    executor = Executor(gm, graph)
    x = torch.randn(shape)
    expected = executor.run_whole(x)
    out = torch.full_like(expected, math.nan)
    for region in grid_regions(graph.output_shape, rows, cols):
        runner = executor.runner(0, len(graph), region)
        assert Region.full(graph.input_shape[1:]).contains(runner.input_region)
        out[region.slices()] = runner(x[runner.input_region.slices()])
    return expected, out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stack=layer_stacks())
def test_random_stacks_with_uneven_tiles_match_the_whole_model(
        data: st.DataObject, stack: tuple[nn.Module, tuple[int, int, int, int]]) -> None:
    model, shape = stack
    with torch.no_grad():
        out_shape = model(torch.zeros(shape)).shape
    rows = data.draw(st.composite(lambda d: _random_cuts(d, out_shape[2], 4))())
    cols = data.draw(st.composite(lambda d: _random_cuts(d, out_shape[3], 3))())
    expected, actual = _run_tiled(model, shape, rows, cols)
    assert not torch.isnan(actual).any(), "some output element was never written"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


class Branchy(nn.Module):
    """Residual add, channel concat, nearest upsample and space-to-depth in one fusable DAG."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, (1, 5), padding=(0, 2))
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.up = nn.Upsample(scale_factor=2)
        self.s2d = nn.PixelUnshuffle(2)
        self.tail = nn.Conv2d(64, 4, 3, stride=2, padding=2, dilation=2)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.stem(x))
        y = self.relu(self.a(x)) + x  # residual: the same ReLU module called twice
        z = torch.cat([self.b(y), self.up(self.pool(y))], dim=1)
        return self.tail(self.s2d(z))


@pytest.mark.parametrize("rows,cols", [
    ([(0, 1), (1, 6), (6, 9)], [(0, 9)]),
    ([(0, 4), (4, 9)], [(0, 2), (2, 3), (3, 9)]),
    ([(i, i + 1) for i in range(9)], [(i, i + 1) for i in range(9)]),
])
def test_dag_blocks_tile_exactly(rows: list[tuple[int, int]], cols: list[tuple[int, int]]) -> None:
    torch.manual_seed(3)
    model = Branchy().eval()
    shape = (1, 3, 36, 36)
    assert model(torch.zeros(shape)).shape[2:] == (9, 9)
    expected, actual = _run_tiled(model, shape, rows, cols)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def test_reused_module_gets_one_layer_per_call() -> None:
    _, graph = trace(Branchy().eval(), (1, 3, 36, 36))
    relu_layers = [layer for layer in graph.layers if layer.target == "relu"]
    assert len(relu_layers) == 2
    assert len({layer.name for layer in relu_layers}) == 2


def test_window_slice_matches_formula_b1() -> None:
    # k=3, s=2, p=1 over 10 rows: output rows [0, 2) need input rows -1..3 -> [0, 4) with one pad row on top
    cut = window_slice((0, 2), 3, 2, 1, 1, 10)
    assert (cut.lo, cut.hi, cut.pad_before, cut.pad_after) == (0, 4, 1, 0)
    cut = window_slice((4, 5), 3, 2, 1, 1, 10)  # last row: needs 7..9, virtual 7..9 -> no padding
    assert (cut.lo, cut.hi, cut.pad_before, cut.pad_after) == (7, 10, 0, 0)
    cut = window_slice((5, 6), 3, 2, 1, 1, 10)  # a ceil-mode extra window sticks out by 2
    assert (cut.lo, cut.hi, cut.pad_before, cut.pad_after) == (9, 10, 0, 2)
    cut = window_slice((2, 3), 3, 1, 0, 2, 10)  # dilation 2: rows 2, 4, 6
    assert (cut.lo, cut.hi) == (2, 7)


def test_split_interval_is_proportional_and_complete() -> None:
    assert split_interval(10, [1, 1, 1]) == [(0, 4), (4, 7), (7, 10)]
    assert split_interval(12, [2, 1, 1]) == [(0, 6), (6, 9), (9, 12)]
    assert split_interval(3, [100, 1, 1]) == [(0, 1), (1, 2), (2, 3)]  # everyone gets a row
    with pytest.raises(ValueError, match="cannot split 2 rows into 3"):
        split_interval(2, [1, 1, 1])


def test_tiles_partition_reports_overlap_and_gaps() -> None:
    a = Region.of((0, 4), (0, 5), (0, 8))
    b = Region.of((0, 4), (5, 8), (0, 8))
    assert tiles_partition([a, b], (4, 8, 8)) is None
    assert "overlap" in str(tiles_partition([a, Region.of((0, 4), (4, 8), (0, 8))], (4, 8, 8)))
    assert "cover" in str(tiles_partition([a], (4, 8, 8)))


def test_backprop_rejects_regions_outside_the_output() -> None:
    _, graph = trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval(), (1, 3, 8, 8))
    with pytest.raises(GeometryError, match="not a non-empty part"):
        backprop(graph, 0, 1, Region.of((0, 4), (0, 9), (0, 8)))
