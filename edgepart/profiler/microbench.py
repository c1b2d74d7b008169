"""Time one layer computing one tile, the way a partition computes it.

`tile_call(layer, region)` builds the tensors a partition would hold for that
tile (the input rows it receives, halo included, the weights of its channel
slice) and a closure running the same torch kernels as the executor: local
border padding, then the layer with no padding of its own. `time_call` is the
micro-benchmark harness: warm-up runs, then the median of repeated runs, each
run looping enough times to be well above the timer's resolution.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from edgepart.executor import conv2d_rows
from edgepart.geometry import Region, conv_input_channels, required_input, window_slices
from edgepart.graph.layer_graph import Layer
from edgepart.graph.ops import OpKind, Spatial
from edgepart.planner.costmodel import layer_signature

Call = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    median_s: float
    runs: int
    inner: int  # calls per run


Clock = Callable[[], float]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_MAX = -4


def partition_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Keep the C heap's freed memory for reuse: the allocator settings tiles are timed (and partitions should
    run) with.

    [R] The native convolution unfolds its input into a scratch matrix of in_channels·k²·out_rows·out_cols
    floats (115 MB for vgg16's second conv). With glibc's defaults a buffer that large is mmap'ed and unmapped
    on every call, or trimmed back to the kernel once freed, so each call page-faults it in again (~1.3 µs a
    4 KiB page: vgg16 features_2 ran 140 ms instead of 63 ms). Whether a tile faults then depends on its size
    against glibc's moving mmap threshold and on what ran before: layer time jumped (non-linearly) with tile
    size and tiles' times swung by tens of percent between runs. With no mmap'ed chunks and no trimming below
    `trim_threshold`, scratch pages stay mapped and warm and a layer's time is close to linear in its tile
    (what remains is the scratch outgrowing the last-level cache). Buffers over 64 MiB allocated on other
    threads still came fresh from the kernel on every call (measured, even with one arena), so tiles are
    timed on the main thread, and partitions should compute there too. True when applied (glibc, no MALLOC_*_ variable set by the operator).
    """
    if not sys.platform.startswith("linux") or any(
            os.environ.get(name) for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the kernel (glibc's malloc_trim), between phases that free a lot.

    [R] `partition_allocator` keeps freed memory mapped for timing, so a released model's weights stayed
    resident and the next model's came on top (the profile peaked at 1.4 GiB with one model at a time)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


def default_clock() -> Clock:
    """The calling thread's CPU time when torch computes on this one thread, else wall time.

    [R] With one thread, CPU time is the op's own cost even when other processes
    share the cores (a busy 2-core machine inflated wall times 5-10x in our runs);
    with several threads only wall time sees the parallel work.
    """
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_call(fn: Call, warmup: int = 3, repeats: int = 10, min_run_s: float = 2e-4,
              clock: Clock | None = None) -> Timing:
    """Median seconds of one call: `warmup` discarded runs, then `repeats` timed runs.

    Calls shorter than `min_run_s` are looped inside one timed run so the timer's
    resolution and Python's call overhead do not dominate.
    """
    now = clock or default_clock()
    for _ in range(max(warmup, 1)):
        fn()
    start = now()
    fn()
    once = now() - start
    inner = 1 if once >= min_run_s else min(1000, math.ceil(min_run_s / max(once, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = now()
        for _ in range(inner):
            fn()
        samples.append((now() - start) / inner)
    return Timing(statistics.median(samples), repeats, inner)


def _activation(gm: fx.GraphModule | None, layer: Layer) -> Callable[[Tensor], Tensor]:
    """The layer's own activation when it is a parameter-free module, else ReLU ([R] same cost class)."""
    if gm is not None:
        node = next((n for n in gm.graph.nodes if n.name == layer.name), None)
        if node is not None and node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
                if isinstance(module, nn.Dropout | nn.Dropout2d):
                    return lambda x: x
                return lambda x: torch.as_tensor(module(x))
    return torch.relu


def tile_call(layer: Layer, region: Region | None = None, batch: int = 1,
              gm: fx.GraphModule | None = None) -> Call:
    """A closure computing `region` of `layer` (default: all of it) from freshly made inputs."""
    region = region or Region.full(layer.out_shape)
    inputs = [torch.randn(batch, *required_input(layer, region, arg).shape) for arg in range(len(layer.preds))]
    op = layer.op
    window = layer.spec.window
    if layer.spec.spatial is Spatial.WINDOW and len(layer.out_shape) == 3 and window is not None:
        rows, cols = window_slices(window, region, layer.in_shapes[0])
        pads = (cols.pad_before, cols.pad_after, rows.pad_before, rows.pad_after)
        x = inputs[0]
        value = window.pad_value
        if op is OpKind.CONV:
            groups = layer.spec.groups
            c_in = conv_input_channels(layer, region.channels)
            in_per_group = layer.in_shapes[0][0] // groups
            g = max(1, (c_in[1] - c_in[0]) // in_per_group) if groups > 1 else 1
            weight = torch.randn(region.shape[0], in_per_group, *window.kernel).mul_(0.05)  # in place: one copy
            bias = torch.randn(region.shape[0])

            def conv() -> Tensor:
                return conv2d_rows(F.pad(x, pads, value=value), weight, bias, window.stride, window.dilation, g)
            return conv
        if op is OpKind.POOL_MAX:
            return lambda: F.max_pool2d(F.pad(x, pads, value=value), window.kernel, window.stride, 0,
                                        window.dilation, False)
        if op is OpKind.POOL_AVG:
            divisor = torch.full(region.shape[1:], float(window.kernel[0] * window.kernel[1]))
            return lambda: F.avg_pool2d(F.pad(x, pads, value=value), window.kernel, window.stride, 0,
                                        False, True, 1) / divisor
        return lambda: F.pad(x, pads, value=value)
    x = inputs[0]
    if op is OpKind.FC:
        c0, c1 = region.channels
        # in place: `randn(...) * 0.01` held two copies at once (822 MB for vgg16's fc6)
        weight = torch.randn(c1 - c0, layer.in_shapes[0][-1]).mul_(0.01)
        bias = torch.randn(c1 - c0)
        return lambda: F.linear(x, weight, bias)
    if op is OpKind.BN:
        c = x.shape[1]
        mean, var, w, b = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c), torch.randn(c)
        return lambda: F.batch_norm(x, mean, var, w, b, False, 0.0, 1e-5)
    if op is OpKind.ACT:
        act = _activation(gm, layer)
        return lambda: act(x)
    if op is OpKind.ADD:
        return lambda: inputs[0] + inputs[1] if len(inputs) > 1 else inputs[0] + 1.0
    if op is OpKind.MUL:
        return lambda: inputs[0] * inputs[1] if len(inputs) > 1 else inputs[0] * 2.0
    if op is OpKind.CONCAT:
        return lambda: torch.cat(inputs, 1)
    if op is OpKind.UPSAMPLE:
        f = layer.spec.factor
        return lambda: F.interpolate(x, scale_factor=f, mode="nearest")
    if op is OpKind.SPACE_TO_DEPTH:
        f = layer.spec.factor
        return lambda: F.pixel_unshuffle(x, f)
    if op is OpKind.LRN:
        return lambda: F.local_response_norm(x, 5)
    if op is OpKind.FLATTEN:
        return lambda: torch.flatten(x, 1)
    if op is OpKind.GAP:
        return lambda: F.adaptive_avg_pool2d(x, 1)
    if op is OpKind.ADAPTIVE_POOL:
        size = (layer.out_shape[1], layer.out_shape[2]) if len(layer.out_shape) == 3 else (1, 1)
        return lambda: F.adaptive_avg_pool2d(x, size)
    if op is OpKind.SOFTMAX:
        return lambda: F.softmax(x, dim=1)
    raise ValueError(f"no micro-benchmark for op {op.value!r} (layer {layer.name!r})")


def tile_heights(rows: int, count: int = 5) -> list[int]:
    """Up to `count` tile heights from {1, 2, 4, ..., rows}, log-spaced, always including 1 and rows."""
    powers = sorted({*(2**i for i in range(int(math.log2(rows)) + 1)), rows})
    if len(powers) <= count:
        return powers
    picks = {powers[0], powers[-1]}
    for i in range(1, count - 1):
        picks.add(powers[round(i * (len(powers) - 1) / (count - 1))])
    return sorted(picks)


def channel_counts(channels: int, step: int = 1) -> list[int]:
    """Channel subsets c in {C/8, C/4, C/2, C} (multiples of `step`, at least one block)."""
    result = set()
    for div in (8, 4, 2, 1):
        c = max(step, (channels // div) // step * step)
        result.add(min(c, channels))
    return sorted(result)


def layer_tiles(layer: Layer, heights: int = 5) -> list[Region]:
    """Tiles to time for one layer: row strips of several heights, and channel slices for conv/fc."""
    full = Region.full(layer.out_shape)
    tiles: list[Region] = []
    if layer.spec.spatial is not Spatial.GLOBAL and len(layer.out_shape) == 3:
        rows = layer.out_shape[1]
        # log-spaced heights for the family fit, plus the fractions plans use (1/8 .. 1/2)
        wanted = set(tile_heights(rows, heights)) | {max(1, rows * k // 8) for k in (1, 2, 4)}
        for h in sorted(wanted):
            start = (rows - h) // 2  # a middle strip: halo on both sides, like most tiles
            tiles.append(full.replace(1, (start, start + h)))
    else:
        tiles.append(full)
    if layer.op in (OpKind.CONV, OpKind.FC):
        channels = layer.out_shape[0]
        groups = layer.spec.groups if layer.op is OpKind.CONV else 1
        step = 1 if groups in (1, layer.in_shapes[0][0]) else channels // groups
        for c in channel_counts(channels, step):
            if c != channels:
                tiles.append(full.replace(0, (0, c)))
    return tiles


def unique_layers(layers: Sequence[Layer]) -> list[Layer]:
    seen: set[str] = set()
    result = []
    for layer in layers:
        key = layer_signature(layer)
        if key not in seen:
            seen.add(key)
            result.append(layer)
    return result
