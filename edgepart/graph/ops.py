"""Classification of torch.fx nodes into the op kinds the planner and geometry know.

Every node of a traced model maps to one `OpKind` plus the few attributes the
geometry needs (kernel, stride, padding, dilation, ...). The mapping is the
only place that knows about concrete torch modules and functions; everything
downstream works on `LayerSpec` values.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgepart.errors import EdgepartError


class OpKind(StrEnum):
    CONV = "conv"
    POOL_MAX = "pool_max"
    POOL_AVG = "pool_avg"
    PAD = "pad"
    FC = "fc"
    ACT = "act"
    BN = "bn"
    ADD = "add"
    MUL = "mul"
    CONCAT = "concat"
    UPSAMPLE = "upsample"
    SPACE_TO_DEPTH = "space_to_depth"
    LRN = "lrn"
    FLATTEN = "flatten"
    GAP = "gap"
    ADAPTIVE_POOL = "adaptive_pool"
    SOFTMAX = "softmax"


class Spatial(StrEnum):
    """How an op maps output rows/cols to the input rows/cols it needs."""

    WINDOW = "window"  # conv, pooling, padding: B.1 of SOLVERS.md
    POINTWISE = "pointwise"  # same rows and cols (activations, bn, add, concat, lrn)
    UPSAMPLE = "upsample"  # nearest upsampling by an integer factor
    SPACE_TO_DEPTH = "space_to_depth"  # pixel-unshuffle by an integer factor
    GLOBAL = "global"  # needs the whole input: ends a fusable range


SPATIAL_OF: dict[OpKind, Spatial] = {
    OpKind.CONV: Spatial.WINDOW,
    OpKind.POOL_MAX: Spatial.WINDOW,
    OpKind.POOL_AVG: Spatial.WINDOW,
    OpKind.PAD: Spatial.WINDOW,
    OpKind.ACT: Spatial.POINTWISE,
    OpKind.BN: Spatial.POINTWISE,
    OpKind.ADD: Spatial.POINTWISE,
    OpKind.MUL: Spatial.POINTWISE,
    OpKind.CONCAT: Spatial.POINTWISE,
    OpKind.LRN: Spatial.POINTWISE,
    OpKind.UPSAMPLE: Spatial.UPSAMPLE,
    OpKind.SPACE_TO_DEPTH: Spatial.SPACE_TO_DEPTH,
    OpKind.FC: Spatial.GLOBAL,
    OpKind.FLATTEN: Spatial.GLOBAL,
    OpKind.GAP: Spatial.GLOBAL,
    OpKind.ADAPTIVE_POOL: Spatial.GLOBAL,
    OpKind.SOFTMAX: Spatial.GLOBAL,
}

# Ops that act on each channel independently: a channel split flows through them.
CHANNELWISE = frozenset({OpKind.ACT, OpKind.BN})


class UnsupportedLayerError(EdgepartError, ValueError):
    """A node of the traced model has no known partitioning semantics."""


@dataclass(frozen=True)
class Window:
    """Sliding-window parameters on the (H, W) axes; padding is (top, bottom, left, right)."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    pad_value: float = 0.0


@dataclass(frozen=True)
class LayerSpec:
    """What the geometry and cost model need to know about one node."""

    kind: OpKind
    window: Window | None = None
    groups: int = 1
    factor: int = 1  # upsample / space-to-depth factor
    count_include_pad: bool = True  # avg pool
    divisor_override: int | None = None  # avg pool

    @property
    def spatial(self) -> Spatial:
        return SPATIAL_OF[self.kind]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    if conv.padding_mode != "zeros":
        raise UnsupportedLayerError(f"padding_mode={conv.padding_mode!r} (only 'zeros' is supported)")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        # 'same' (stride 1): total = d*(k-1), the extra pixel goes bottom/right as in PyTorch
        kh, kw = _pair(conv.kernel_size)
        dh, dw = _pair(conv.dilation)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(conv.padding)
    return (ph, ph, pw, pw)


def _pool_window(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool, pad_value: float) -> Window:
    k = _pair(kernel)
    s = _pair(stride if stride is not None and stride != [] else kernel)
    ph, pw = _pair(padding)
    return Window(k, s, (ph, ph, pw, pw), _pair(dilation), bool(ceil_mode), pad_value)


def _pad_window(pad: tuple[int, ...], value: float) -> Window:
    # F.pad order for 4-D input: (left, right, top, bottom)
    if len(pad) != 4 or any(p < 0 for p in pad):
        raise UnsupportedLayerError(f"padding {pad} (need 4 non-negative values for (left, right, top, bottom))")
    left, right, top, bottom = (int(p) for p in pad)
    return Window(padding=(top, bottom, left, right), pad_value=value)


_ACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid,
    nn.Tanh, nn.GELU, nn.ELU, nn.Mish, nn.PReLU, nn.Dropout, nn.Dropout2d, nn.Identity,
)
_ACT_FUNCTIONS: set[Callable[..., Any]] = {
    F.relu, F.relu6, F.leaky_relu, F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.tanh,
    F.gelu, F.elu, F.mish, F.dropout, torch.relu, torch.sigmoid, torch.tanh,
}
_ACT_METHODS = {"relu", "sigmoid", "tanh", "relu_", "contiguous", "clone"}


def classify_module(module: nn.Module) -> LayerSpec:
    """Map a leaf module to its LayerSpec; raises UnsupportedLayerError otherwise."""
    if isinstance(module, nn.Conv2d):
        return LayerSpec(
            OpKind.CONV,
            Window(_pair(module.kernel_size), _pair(module.stride), _conv_padding(module), _pair(module.dilation)),
            groups=module.groups,
        )
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            raise UnsupportedLayerError("MaxPool2d(return_indices=True)")
        w = _pool_window(module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, -math.inf)
        return LayerSpec(OpKind.POOL_MAX, w)
    if isinstance(module, nn.AvgPool2d):
        w = _pool_window(module.kernel_size, module.stride, module.padding, 1, module.ceil_mode, 0.0)
        return LayerSpec(OpKind.POOL_AVG, w, count_include_pad=module.count_include_pad,
                         divisor_override=module.divisor_override)
    if isinstance(module, nn.ZeroPad2d | nn.ConstantPad2d):
        return LayerSpec(OpKind.PAD, _pad_window(tuple(module.padding), float(getattr(module, "value", 0.0))))
    if isinstance(module, nn.Linear):
        return LayerSpec(OpKind.FC)
    if isinstance(module, nn.BatchNorm2d):
        return LayerSpec(OpKind.BN)
    if isinstance(module, _ACT_MODULES):
        return LayerSpec(OpKind.ACT)
    if isinstance(module, nn.LocalResponseNorm):
        return LayerSpec(OpKind.LRN)
    if isinstance(module, nn.Flatten):
        return LayerSpec(OpKind.FLATTEN)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = module.output_size
        if isinstance(module, nn.AdaptiveAvgPool2d) and size in (1, (1, 1)):
            return LayerSpec(OpKind.GAP)
        return LayerSpec(OpKind.ADAPTIVE_POOL)
    if isinstance(module, nn.Softmax | nn.LogSoftmax):
        return LayerSpec(OpKind.SOFTMAX)
    if isinstance(module, nn.Upsample):
        return _upsample_spec(module.mode, module.scale_factor, module.size)
    if isinstance(module, nn.PixelUnshuffle):
        return LayerSpec(OpKind.SPACE_TO_DEPTH, factor=module.downscale_factor)
    raise UnsupportedLayerError(f"module type {type(module).__name__}")


def _upsample_spec(mode: str, scale: Any, size: Any) -> LayerSpec:
    if mode != "nearest" or size is not None or scale is None:
        raise UnsupportedLayerError(f"upsampling mode={mode!r} size={size} (only nearest with an integer scale_factor)")
    factors = {float(s) for s in (scale if isinstance(scale, tuple | list) else (scale,))}
    if len(factors) != 1 or not next(iter(factors)).is_integer():
        raise UnsupportedLayerError(f"upsampling scale_factor={scale} (need one integer factor)")
    return LayerSpec(OpKind.UPSAMPLE, factor=int(next(iter(factors))))


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def classify_function(node: fx.Node) -> LayerSpec:
    """Map a call_function / call_method node to its LayerSpec."""
    target = node.target
    if node.op == "call_method":
        if target in _ACT_METHODS:
            return LayerSpec(OpKind.ACT)
        if target in {"flatten", "view", "reshape"}:
            return LayerSpec(OpKind.FLATTEN)
        if target in {"add", "add_"}:
            return LayerSpec(OpKind.ADD)
        if target in {"mul", "mul_"}:
            return LayerSpec(OpKind.MUL)
        if target == "mean" and _arg(node, 1, "dim", None) in ([2, 3], (2, 3), [-2, -1], (-2, -1)):
            return LayerSpec(OpKind.GAP)
        raise UnsupportedLayerError(f"method .{target}()")
    if target in _ACT_FUNCTIONS:
        return LayerSpec(OpKind.ACT)
    if target in (operator.add, operator.iadd, torch.add):
        return LayerSpec(OpKind.ADD)
    if target in (operator.mul, operator.imul, torch.mul):
        return LayerSpec(OpKind.MUL)
    if target is torch.cat:
        dim = _arg(node, 1, "dim", 0)
        if dim not in (1, -3):
            raise UnsupportedLayerError(f"torch.cat along dim={dim} (only channel concat, dim=1)")
        return LayerSpec(OpKind.CONCAT)
    if target in (torch.flatten, torch.reshape):
        return LayerSpec(OpKind.FLATTEN)
    if target is F.max_pool2d:
        w = _pool_window(_arg(node, 1, "kernel_size", None), _arg(node, 2, "stride", None),
                         _arg(node, 3, "padding", 0), _arg(node, 4, "dilation", 1),
                         _arg(node, 5, "ceil_mode", False), -math.inf)
        return LayerSpec(OpKind.POOL_MAX, w)
    if target is F.avg_pool2d:
        w = _pool_window(_arg(node, 1, "kernel_size", None), _arg(node, 2, "stride", None),
                         _arg(node, 3, "padding", 0), 1, _arg(node, 4, "ceil_mode", False), 0.0)
        return LayerSpec(OpKind.POOL_AVG, w, count_include_pad=_arg(node, 5, "count_include_pad", True),
                         divisor_override=_arg(node, 6, "divisor_override", None))
    if target is F.pad:
        mode = _arg(node, 2, "mode", "constant")
        if mode != "constant":
            raise UnsupportedLayerError(f"F.pad mode={mode!r} (only constant)")
        value = _arg(node, 3, "value", None)
        return LayerSpec(OpKind.PAD, _pad_window(tuple(_arg(node, 1, "pad", ())), float(value or 0.0)))
    if target is F.adaptive_avg_pool2d:
        size = _arg(node, 1, "output_size", None)
        return LayerSpec(OpKind.GAP if size in (1, (1, 1), [1, 1]) else OpKind.ADAPTIVE_POOL)
    if target in (F.softmax, torch.softmax, F.log_softmax):
        return LayerSpec(OpKind.SOFTMAX)
    if target is F.interpolate:
        return _upsample_spec(_arg(node, 3, "mode", "nearest"), _arg(node, 2, "scale_factor", None),
                              _arg(node, 1, "size", None))
    if target is F.pixel_unshuffle:
        return LayerSpec(OpKind.SPACE_TO_DEPTH, factor=int(_arg(node, 1, "downscale_factor", 1)))
    if target is F.linear:
        return LayerSpec(OpKind.FC)
    name = getattr(target, "__name__", str(target))
    raise UnsupportedLayerError(f"function {name}")
