"""Run any Plan in one process with sliced torch modules: the oracle for every split.

`SliceRunner` computes one partition: layers [start, stop) of the traced
model, restricted to an output region (rows x cols tiles, or a channel range),
from exactly the input region the geometry says it needs. The same runner is
what a partition process executes, so a plan verified here is the plan that
runs on devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from edgepart.errors import EdgepartError
from edgepart.geometry import (
    Region,
    TileGeometry,
    backprop,
    conv_input_channels,
    required_input,
    window_slices,
)
from edgepart.graph.layer_graph import Layer, LayerGraph
from edgepart.graph.ops import OpKind, Spatial, Window
from edgepart.plan import INPUT, Plan, TaskInput, topological_tasks

EXACT_MKL_CBWR = "AVX2,STRICT"


def use_exact_kernels(exact: bool = True) -> None:
    """Choose bit-exact tiles (native kernels) or oneDNN's faster convolutions for this process.

    oneDNN picks its convolution algorithm by tensor size, so a tile can round
    differently from the whole feature map, and deep random-weight networks
    amplify those last-bit differences past allclose(atol=1e-5). The native
    kernels compute every output element the same way whatever the tile size,
    so a split model gives bit-for-bit the whole model's answer (measured: 1.5-2x
    slower convolutions on x86).

    [R] The native kernels' GEMMs are MKL's, and MKL on AVX-512 picks its kernel by matrix size: a 1x1
    convolution of 1024 channels rounded outputs differently at 1, 2-31, 32-128, 129-256 and 257+ positions,
    so a 10x10 tile of YOLOv2's last layer differed from the 19x19 map by 6e-5. Conditional numerical
    reproducibility (MKL_CBWR=AVX2,STRICT) gives one code path for every size; MKL reads it at its first
    call, so exact kernels are chosen before the process's first GEMM (partitions do it at start). A user's
    own MKL_CBWR is kept.
    """
    if exact:
        os.environ.setdefault("MKL_CBWR", EXACT_MKL_CBWR)
    torch.backends.mkldnn.set_flags(not exact)  # type: ignore[no-untyped-call]


def kernels_in_use() -> str:
    """'exact' or 'fast': the kernels this process computes with now (what use_exact_kernels chose)."""
    return "fast" if torch.backends.mkldnn.enabled else "exact"


# [R] bytes of unfolded input one native convolution call may build: larger convolutions run in row chunks
CONV_SCRATCH_BYTES = 8 << 20
MIN_CHUNK_OUTPUTS = 1024
# [R] with the fast kernels, dense convolutions with fewer output positions than this run natively: oneDNN
# reorders the weights into its blocked layout on every eager call, which on a small feature map costs more
# than its faster GEMM saves (YOLOv2's 7x7 layers with 1024 channels: 2.5x slower with oneDNN at one thread).
# Grouped and depthwise convolutions always take oneDNN: the native grouped kernel is far slower (MobileNetV2
# as a partition: 57 ms with them native, 31 ms with oneDNN).
ONEDNN_MIN_OUTPUTS = 400


def conv2d_rows(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                dilation: tuple[int, int], groups: int = 1, scratch_bytes: int = CONV_SCRATCH_BYTES) -> Tensor:
    """`F.conv2d` of an already padded input, computed in chunks of output rows when the native kernel's
    unfolded input would exceed `scratch_bytes`.

    [R] With oneDNN off (exact kernels), a convolution first unfolds its input into a scratch matrix of
    in_channels·k²·out_rows·out_cols elements: 115 MB for VGG-16's second layer. A buffer that large is
    page-faulted in afresh on most calls and streams through the last-level cache, which other devices'
    processes share: the layer ran 2.2x slower than in chunks (140 vs 63 ms), and tiles computed side by side
    on one host slowed each other down by up to 2x. Row chunks keep the scratch small and warm. Each chunk is
    the GEMM one call would do, on fewer columns: for the zoo's convolutions (output channels a multiple of
    16, chunks of at least MIN_CHUNK_OUTPUTS positions) the result is bit-identical to one call, as the split
    tiles are (tests/unit/test_conv_rows.py; `edgepart verify` still gives 0 for VGG-16 and YOLOv2 tiles);
    with other shapes the BLAS may round the last bit differently, well inside `compare`'s tolerance. With
    oneDNN on (fast kernels), a grouped convolution or one of at least ONEDNN_MIN_OUTPUTS output positions
    gets one oneDNN call; a smaller dense one runs natively, which is faster there.
    """
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    rows_out = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    cols_out = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if not torch.backends.mkldnn.enabled:
        return _native_conv2d_rows(x, weight, bias, stride, dilation, groups, scratch_bytes, rows_out, cols_out)
    if groups != 1 or rows_out * cols_out >= ONEDNN_MIN_OUTPUTS:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    torch._C._set_mkldnn_enabled(False)
    try:
        return _native_conv2d_rows(x, weight, bias, stride, dilation, groups, scratch_bytes, rows_out, cols_out)
    finally:
        torch._C._set_mkldnn_enabled(True)


def _native_conv2d_rows(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                        dilation: tuple[int, int], groups: int, scratch_bytes: int, rows_out: int, cols_out: int
                        ) -> Tensor:
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    per_row = x.shape[0] * x.shape[1] // groups * kh * kw * max(cols_out, 0) * x.element_size()
    pointwise = kh == kw == 1 and stride == (1, 1)  # no unfold: the input is the GEMM operand
    if groups != 1 or pointwise or rows_out <= 1 or per_row * rows_out <= scratch_bytes:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    # at least MIN_CHUNK_OUTPUTS output positions a call: the BLAS rounds very short GEMMs differently
    chunk = max(scratch_bytes // max(per_row, 1), -(-MIN_CHUNK_OUTPUTS // max(cols_out, 1)), 1)
    if chunk >= rows_out:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    out = x.new_empty((x.shape[0], weight.shape[0], rows_out, cols_out))
    for r0 in range(0, rows_out, chunk):
        r1 = min(rows_out, r0 + chunk)
        first, last = r0 * stride[0], (r1 - 1) * stride[0] + dilation[0] * (kh - 1) + 1
        out[:, :, r0:r1] = F.conv2d(x[:, :, first:last], weight, bias, stride, 0, dilation, groups)
    return out


class ExecutionError(EdgepartError, RuntimeError):
    """A tile could not be computed (wrong input shape, unsupported slicing)."""


def crop(tensor: Tensor, have: Region, want: Region) -> Tensor:
    if have == want:
        return tensor
    # contiguous: some kernels (batch-norm, pooling) take a different vector path on strided
    # views and round differently from the whole model
    return tensor[want.relative_to(have).slices()].contiguous()


def _avg_pool_divisors(window: Window, out: Region, in_shape: Sequence[int], count_include_pad: bool) -> Tensor:
    """PyTorch's avg-pool divisor for each output row and column, from global coordinates."""
    def axis(interval: tuple[int, int], k: int, s: int, pad: int, pad_after: int, size: int) -> Tensor:
        values = []
        for i in range(*interval):
            start = i * s - pad
            end = min(start + k, size + pad_after)
            pool = end - start
            if not count_include_pad:
                pool = min(end, size) - max(start, 0)
            values.append(float(pool))
        return torch.tensor(values)

    rows = axis(out.rows, window.kernel[0], window.stride[0], window.padding[0], window.padding[1], in_shape[1])
    cols = axis(out.cols, window.kernel[1], window.stride[1], window.padding[2], window.padding[3], in_shape[2])
    return rows[:, None] * cols[None, :]


@dataclass
class _Step:
    layer: Layer
    node: fx.Node
    region: Region
    arg_regions: tuple[Region, ...]  # per distinct tensor input, in all_input_nodes order


class SliceRunner:
    """Computes region `output_region` of layer stop-1 from the tensor crossing cut point `start`."""

    def __init__(self, gm: fx.GraphModule, graph: LayerGraph, start: int, stop: int, output_region: Region):
        self.gm = gm
        self.graph = graph
        self.geometry: TileGeometry = backprop(graph, start, stop, output_region)
        nodes = {n.name: n for n in gm.graph.nodes}
        self.entry = graph.producer_at(start)
        self.steps: list[_Step] = []
        for index in range(start, stop):
            region = self.geometry.regions.get(index)
            if region is None:
                continue
            layer = graph.layers[index]
            arg_regions = tuple(required_input(layer, region, arg) for arg in range(len(layer.preds)))
            self.steps.append(_Step(layer, nodes[layer.name], region, arg_regions))

    @property
    def input_region(self) -> Region:
        return self.geometry.input_region

    @property
    def output_region(self) -> Region:
        return self.geometry.output_region

    @torch.no_grad()
    def __call__(self, tile: Tensor) -> Tensor:
        expected = self.input_region.shape
        if tuple(tile.shape[1:]) != expected:
            raise ExecutionError(f"input tile has shape {tuple(tile.shape[1:])}, expected {expected} "
                                 f"(region {self.input_region})")
        env: dict[int, tuple[Tensor, Region]] = {self.entry: (tile, self.input_region)}
        for step in self.steps:
            if step.region.empty:
                # a tile that lies wholly in a later layer's padding: nothing to compute here
                env[step.layer.index] = (tile.new_zeros((tile.shape[0], *step.region.shape)), step.region)
                continue
            inputs = []
            for pred, want in zip(step.layer.preds, step.arg_regions, strict=True):
                tensor, have = env[pred]
                inputs.append(crop(tensor, have, want))
            out, natural = self._compute(step, inputs)
            env[step.layer.index] = (crop(out, natural, step.region), step.region)
        return env[self.geometry.stop - 1][0]

    def _compute(self, step: _Step, inputs: list[Tensor]) -> tuple[Tensor, Region]:
        layer, region = step.layer, step.region
        spatial = layer.spec.spatial
        if spatial is Spatial.WINDOW and len(layer.out_shape) == 3:
            return self._window(step, inputs[0])
        if layer.op is OpKind.FC and region.channels != (0, layer.out_shape[0]):
            module = self.gm.get_submodule(str(step.node.target))
            assert isinstance(module, nn.Linear)
            c0, c1 = region.channels
            bias = module.bias[c0:c1] if module.bias is not None else None
            return F.linear(inputs[0], module.weight[c0:c1], bias), region
        if layer.op is OpKind.BN and region.channels != (0, layer.out_shape[0]):
            return self._sliced_batch_norm(step, inputs[0]), region
        out = self._call_original(step, inputs)
        if spatial is Spatial.GLOBAL or len(layer.out_shape) != 3:
            return out, Region.full(layer.out_shape) if spatial is Spatial.GLOBAL else region
        if layer.op in (OpKind.CONCAT, OpKind.LRN, OpKind.SPACE_TO_DEPTH):
            channels = (0, layer.out_shape[0])
        else:
            channels = step.arg_regions[0].channels
        if spatial is Spatial.UPSAMPLE:
            f = layer.spec.factor
            src = step.arg_regions[0]
            natural = Region.of(channels, (src.rows[0] * f, src.rows[1] * f), (src.cols[0] * f, src.cols[1] * f))
        else:
            natural = Region.of(channels, region.rows, region.cols)
        return out, natural

    def _call_original(self, step: _Step, inputs: list[Tensor]) -> Tensor:
        node = step.node
        tensor_nodes = [a for a in node.all_input_nodes if a.op != "get_attr"]
        by_node = dict(zip(tensor_nodes, inputs, strict=True))

        def substitute(arg: fx.Node) -> Any:
            if arg in by_node:
                return by_node[arg]
            return self.gm.get_parameter(str(arg.target)) if arg.op == "get_attr" else arg

        args = fx.node.map_arg(node.args, substitute)
        kwargs = fx.node.map_arg(node.kwargs, substitute)
        if node.op == "call_module":
            result = self.gm.get_submodule(str(node.target))(*args, **kwargs)
        elif node.op == "call_method":
            self_arg, *rest = args
            result = getattr(self_arg, str(node.target))(*rest, **kwargs)
        else:
            assert callable(node.target)
            result = node.target(*args, **kwargs)
        if not isinstance(result, Tensor):
            raise ExecutionError(f"layer {node.name!r} returned {type(result).__name__}, not a tensor")
        return result

    def _sliced_batch_norm(self, step: _Step, x: Tensor) -> Tensor:
        module = self.gm.get_submodule(str(step.node.target))
        assert isinstance(module, nn.BatchNorm2d)
        c0, c1 = step.region.channels

        def part(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[c0:c1]

        return F.batch_norm(x, part(module.running_mean), part(module.running_var), part(module.weight),
                            part(module.bias), False, 0.0, module.eps)

    def _window(self, step: _Step, x: Tensor) -> tuple[Tensor, Region]:
        layer, region = step.layer, step.region
        window = layer.spec.window
        assert window is not None
        rows, cols = window_slices(window, region, layer.in_shapes[0])
        pads = (cols.pad_before, cols.pad_after, rows.pad_before, rows.pad_after)
        if any(pads):
            x = F.pad(x, pads, value=window.pad_value)
        in_channels = step.arg_regions[0].channels
        natural = Region.of(in_channels, region.rows, region.cols)
        op = layer.op
        if op is OpKind.PAD:
            return x, natural
        if op is OpKind.POOL_MAX:
            return F.max_pool2d(x, window.kernel, window.stride, 0, window.dilation, False), natural
        if op is OpKind.POOL_AVG:
            if layer.spec.divisor_override:
                out = F.avg_pool2d(x, window.kernel, window.stride, 0, False, True, layer.spec.divisor_override)
            else:
                total = F.avg_pool2d(x, window.kernel, window.stride, 0, False, True, 1)
                out = total / _avg_pool_divisors(window, region, layer.in_shapes[0], layer.spec.count_include_pad)
            return out, natural
        return self._conv(step, x, window)

    def _conv(self, step: _Step, x: Tensor, window: Window) -> tuple[Tensor, Region]:
        layer, region = step.layer, step.region
        module = self.gm.get_submodule(str(step.node.target))
        assert isinstance(module, nn.Conv2d)
        cout, groups = layer.out_shape[0], layer.spec.groups
        if region.channels == (0, cout):
            c0, c1, g = 0, cout, groups
        elif groups == 1:
            (c0, c1), g = region.channels, 1
        else:
            per_group = cout // groups
            g0, g1 = region.channels[0] // per_group, -(-region.channels[1] // per_group)
            c0, c1, g = g0 * per_group, g1 * per_group, g1 - g0
            expected = conv_input_channels(layer, region.channels)
            assert expected == step.arg_regions[0].channels
        weight = module.weight if (c0, c1) == (0, cout) else module.weight[c0:c1]
        bias = module.bias
        if bias is not None and (c0, c1) != (0, cout):
            bias = bias[c0:c1]
        out = conv2d_rows(x, weight, bias, window.stride, window.dilation, g)
        return out, Region.of((c0, c1), region.rows, region.cols)


class Executor:
    """Runs whole models, ranges and Plans for one traced model."""

    def __init__(self, gm: fx.GraphModule, graph: LayerGraph):
        self.gm = gm
        self.graph = graph
        self._runners: dict[tuple[int, int, Region], SliceRunner] = {}

    def runner(self, start: int, stop: int, output_region: Region) -> SliceRunner:
        key = (start, stop, output_region)
        if key not in self._runners:
            self._runners[key] = SliceRunner(self.gm, self.graph, start, stop, output_region)
        return self._runners[key]

    @torch.no_grad()
    def run_whole(self, x: Tensor) -> Tensor:
        out = self.gm(x)
        assert isinstance(out, Tensor)
        return out

    @torch.no_grad()
    def run_plan(self, plan: Plan, x: Tensor, model_id: str | None = None) -> Tensor:
        """Run the tasks of one model of `plan` (default: its only model) in dependency order."""
        if tuple(x.shape) != self.graph.input_shape:
            raise ExecutionError(f"input has shape {tuple(x.shape)}, the plan expects {self.graph.input_shape}")
        mid = model_id if model_id is not None else plan.models[0].id
        if model_id is None and len(plan.models) != 1:
            raise ExecutionError(f"the plan has {len(plan.models)} models; name the one to run")
        full_in = Region.full(self.graph.input_shape[1:])
        results: dict[str, tuple[Tensor, Region]] = {}
        for task in topological_tasks(plan):
            if task.model != mid:
                continue
            pieces = [(_on_the_wire(results[i.source] if i.source != INPUT else (x, full_in), i), i.region)
                      for i in task.inputs]
            if task.relay:
                have = assemble(pieces, task.output, x)
                results[task.id] = (have, task.output)
                continue
            runner = self.runner(task.start, task.stop, task.output)
            tile = assemble(pieces, runner.input_region, x)
            results[task.id] = (runner(tile), task.output)
        out = x.new_zeros((x.shape[0], *self.graph.output_shape))
        for tid in plan.outputs[mid]:
            tensor, region = results[tid]
            out[region.slices()] = tensor
        return out


def _on_the_wire(piece: tuple[Tensor, Region], item: TaskInput) -> tuple[Tensor, Region]:
    """A producer's output as the consumer receives it: a float16 wire rounds float32 values (lossy); the
    lossless codecs change nothing, so verification of such plans stays bit-exact."""
    tensor, region = piece
    if item.wire_dtype == "float16" and tensor.dtype == torch.float32:
        return tensor.to(torch.float16).to(torch.float32), region
    return piece


def assemble(pieces: Sequence[tuple[tuple[Tensor, Region], Region]], want: Region, like: Tensor) -> Tensor:
    """The region `want` of a tensor, written from pieces ((producer output, its region), region read)."""
    tile = like.new_zeros((like.shape[0], *want.shape))
    if want.empty:
        return tile
    for (tensor, have), region in pieces:
        part = region.intersect(want)
        if part.empty:
            continue
        tile[part.relative_to(want).slices()] = tensor[part.relative_to(have).slices()]
    return tile


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    max_rel_diff: float
    allclose: bool
    output_shape: tuple[int, ...]


def compare(expected: Tensor, actual: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> Comparison:
    if expected.shape != actual.shape:
        return Comparison(math.inf, math.inf, False, tuple(actual.shape))
    diff = (expected - actual).abs()
    rel = diff / expected.abs().clamp_min(1e-12)
    return Comparison(float(diff.max()), float(rel.max()), bool(torch.allclose(actual, expected, atol=atol, rtol=rtol)),
                      tuple(actual.shape))



# The tolerance of a deployment that runs the fastest kernels: oneDNN picks its algorithm by tensor size, so a
# tile may round differently from the whole feature map; measured on the zoo well below this.
DEPLOYED_RTOL = 1e-4


@dataclass(frozen=True)
class DeployedCheck:
    """A deployment's answer against the whole model run with the same kernels.

    Exact kernels must give the whole model's answer bit for bit; the fastest kernels pass when
    max|diff| <= rtol * max|reference| (a relative error of the whole output, not element by element: an
    element near zero may round to a large relative difference that means nothing).
    """

    exact_kernels: bool
    max_abs_diff: float
    max_abs_reference: float
    rtol: float  # 0 with exact kernels
    output_shape: tuple[int, ...]
    same_shape: bool

    @property
    def relative_error(self) -> float:
        """max|diff| / max|reference|."""
        if self.max_abs_reference == 0:
            return 0.0 if self.max_abs_diff == 0 else math.inf
        return self.max_abs_diff / self.max_abs_reference

    @property
    def passed(self) -> bool:
        if not self.same_shape or math.isnan(self.max_abs_diff):
            return False
        if self.exact_kernels:
            return self.max_abs_diff == 0
        return self.max_abs_diff <= self.rtol * self.max_abs_reference

    def describe(self) -> str:
        if not self.same_shape:
            return f"output shape {list(self.output_shape)} differs from the whole model's"
        rule = ("exact kernels: must be 0" if self.exact_kernels
                else f"fast kernels: passes when max|diff| <= rtol {self.rtol:g} * max|reference|")
        return (f"max abs diff {self.max_abs_diff:.3g}, relative error {self.relative_error:.3g} "
                f"(max|diff| / max|reference|; {rule})")


def check_deployed(expected: Tensor, actual: Tensor, *, exact_kernels: bool, rtol: float = DEPLOYED_RTOL
                   ) -> DeployedCheck:
    """Compare a deployment's `actual` answer with `expected`, the whole model run with the same kernels."""
    if not rtol >= 0:
        raise ValueError(f"rtol: must be >= 0, got {rtol}")
    reference = float(expected.abs().max()) if expected.numel() else 0.0
    if expected.shape != actual.shape:
        return DeployedCheck(exact_kernels, math.inf, reference, 0.0 if exact_kernels else rtol,
                             tuple(actual.shape), False)
    diff = float((expected - actual).abs().max()) if expected.numel() else 0.0
    return DeployedCheck(exact_kernels, diff, reference, 0.0 if exact_kernels else rtol, tuple(actual.shape), True)
