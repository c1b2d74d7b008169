"""LayerGraph: a traced CNN as a DAG of layers with shapes, costs and cut points.

Layers are the fx nodes that compute tensors, in the topological order fx
gives them, and are identified by their fx node name (a module can be called
twice; its node names differ). A *cut point* p in [0, L] is a position in that
order where exactly one tensor crosses from layers [0, p) to layers [p, L):
the only places a pipeline can be cut and a single tensor shipped. A *unit* is
what a user calls a layer: the span between cut points, with trailing
activation/batch-norm spans merged into it (conv+bn+relu is one unit; a
residual or inception block is one unit).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from edgepart.errors import EdgepartError
from edgepart.graph.ops import (
    CHANNELWISE,
    LayerSpec,
    OpKind,
    Spatial,
    UnsupportedLayerError,
    classify_function,
    classify_module,
)

INPUT = -1  # producer index of the model input


class GraphError(EdgepartError, ValueError):
    """The model cannot be turned into a LayerGraph."""


@dataclass(frozen=True)
class Layer:
    index: int
    name: str  # fx node name: unique even when a module is reused
    target: str  # module path or function name, for display
    spec: LayerSpec
    preds: tuple[int, ...]  # producer layer indices (INPUT for the model input), in argument order
    in_shapes: tuple[tuple[int, ...], ...]  # per tensor argument, without the batch dimension
    out_shape: tuple[int, ...]  # without the batch dimension: (C, H, W) or (F,)
    flops: int
    params: int  # parameter and buffer elements
    weight_bytes: int
    dtype_bytes: int
    param_names: tuple[str, ...] = ()  # state-dict keys this layer reads

    @property
    def op(self) -> OpKind:
        return self.spec.kind

    @property
    def out_elems(self) -> int:
        return math.prod(self.out_shape)

    @property
    def out_bytes(self) -> int:
        return self.out_elems * self.dtype_bytes

    @property
    def in_elems(self) -> int:
        return sum(math.prod(s) for s in self.in_shapes)


@dataclass(frozen=True)
class Unit:
    """A user-visible layer: layers [start, stop), both ends cut points."""

    start: int
    stop: int
    name: str
    fusable: bool  # no layer needs its whole input


@dataclass(frozen=True)
class LayerGraph:
    model_name: str
    input_shape: tuple[int, ...]  # with the batch dimension
    layers: tuple[Layer, ...]
    consumers: tuple[tuple[int, ...], ...] = field(repr=False)  # per layer; last layer feeds the output
    input_consumers: tuple[int, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def by_name(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @cached_property
    def crossing(self) -> tuple[frozenset[int], ...]:
        """For each position p in [0, L], the producers whose tensors cross it."""
        n = len(self.layers)
        last_use: dict[int, int] = {INPUT: max(self.input_consumers, default=0)}
        for layer in self.layers:
            uses = self.consumers[layer.index]
            last_use[layer.index] = max(uses) if uses else n  # the last layer is used by the output
        result = []
        for p in range(n + 1):
            if p == 0:
                result.append(frozenset({INPUT}))
                continue
            live = {u for u, last in last_use.items() if u < p <= last}
            result.append(frozenset(live))
        return tuple(result)

    @cached_property
    def cut_points(self) -> tuple[int, ...]:
        return tuple(p for p, live in enumerate(self.crossing) if len(live) == 1)

    def is_cut(self, position: int) -> bool:
        return position in self._cut_set

    @cached_property
    def _cut_set(self) -> frozenset[int]:
        return frozenset(self.cut_points)

    def producer_at(self, position: int) -> int:
        """The layer whose output crosses cut point `position` (INPUT at 0)."""
        live = self.crossing[position]
        if len(live) != 1:
            raise GraphError(f"position {position} is not a cut point ({len(live)} tensors cross it)")
        return next(iter(live))

    def shape_at(self, position: int) -> tuple[int, ...]:
        """Shape (without batch) of the tensor crossing cut point `position`."""
        producer = self.producer_at(position)
        return self.input_shape[1:] if producer == INPUT else self.layers[producer].out_shape

    def bytes_at(self, position: int) -> int:
        producer = self.producer_at(position)
        dtype = 4 if producer == INPUT else self.layers[producer].dtype_bytes
        return self.batch * math.prod(self.shape_at(position)) * dtype

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape

    def fusable(self, start: int, stop: int) -> bool:
        """True when layers [start, stop) can be computed on spatial tiles."""
        return all(layer.spec.spatial is not Spatial.GLOBAL for layer in self.layers[start:stop])

    @cached_property
    def units(self) -> tuple[Unit, ...]:
        cuts = self.cut_points
        spans = list(itertools.pairwise(cuts))
        units: list[tuple[int, int]] = []
        for start, stop in spans:
            trailing = all(layer.op in CHANNELWISE for layer in self.layers[start:stop])
            if units and trailing:
                units[-1] = (units[-1][0], stop)
            else:
                units.append((start, stop))
        return tuple(
            Unit(start, stop, self.layers[start].name, self.fusable(start, stop)) for start, stop in units
        )

    def unit_boundaries(self) -> tuple[int, ...]:
        return (0, *(u.stop for u in self.units))

    def longest_fusable_prefix(self) -> int:
        """Number of leading units that can be fused (spatially tiled) together."""
        count = 0
        for unit in self.units:
            if not unit.fusable:
                break
            count += 1
        return count

    def flops(self, start: int = 0, stop: int | None = None) -> int:
        return sum(layer.flops for layer in self.layers[start:stop])

    def weight_bytes(self, start: int = 0, stop: int | None = None) -> int:
        return sum(layer.weight_bytes for layer in self.layers[start:stop])

    def param_names(self, start: int, stop: int) -> tuple[str, ...]:
        return tuple(name for layer in self.layers[start:stop] for name in layer.param_names)


def _target_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _flops(spec: LayerSpec, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...],
           module: nn.Module | None, batch: int) -> int:
    out = math.prod(out_shape) * batch
    if spec.kind is OpKind.CONV and spec.window is not None:
        kh, kw = spec.window.kernel
        cin = in_shapes[0][0]
        return 2 * out * (cin // spec.groups) * kh * kw
    if spec.kind is OpKind.FC:
        return 2 * out * in_shapes[0][-1]
    if spec.kind in (OpKind.POOL_MAX, OpKind.POOL_AVG) and spec.window is not None:
        kh, kw = spec.window.kernel
        return out * kh * kw
    if spec.kind in (OpKind.GAP, OpKind.ADAPTIVE_POOL):
        return math.prod(in_shapes[0]) * batch
    return out


def _spec_of(gm: fx.GraphModule, node: fx.Node) -> tuple[LayerSpec, nn.Module | None]:
    try:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            return classify_module(module), module
        return classify_function(node), None
    except UnsupportedLayerError as err:
        raise GraphError(f"layer {node.name!r} ({_target_name(gm, node)}): unsupported {err}") from None


def _shape_of(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


def _dtype_bytes(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    dtype = getattr(meta, "dtype", torch.float32)
    return int(torch.empty((), dtype=dtype).element_size())


def propagate_shapes(gm: fx.GraphModule, input_shape: Sequence[int]) -> None:
    """Annotate every node with its output shape, without running real arithmetic."""
    on_meta = any(p.is_meta for p in gm.parameters())
    if on_meta:
        ShapeProp(gm).propagate(torch.zeros(*input_shape, device="meta"))
        return
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    ShapeProp(gm, fake_mode=mode).propagate(mode.from_tensor(torch.zeros(*input_shape)))


def trace(model: nn.Module, input_shape: Sequence[int], name: str = "model") -> tuple[fx.GraphModule, LayerGraph]:
    """Trace `model` with torch.fx and build its LayerGraph."""
    if len(input_shape) != 4:
        raise GraphError(f"input shape {tuple(input_shape)}: need 4 dimensions (N, C, H, W)")
    try:
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types; the user needs the message
        raise GraphError(f"{name}: torch.fx cannot trace the model: {err}") from err
    gm.graph.eliminate_dead_code()
    gm.recompile()
    try:
        propagate_shapes(gm, input_shape)
    except Exception as err:
        raise GraphError(f"{name}: shape propagation with input shape {tuple(input_shape)} failed: {err}") from err
    return gm, build_layer_graph(gm, input_shape, name)


def build_layer_graph(gm: fx.GraphModule, input_shape: Sequence[int], name: str) -> LayerGraph:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(f"{name}: the model must take exactly one input tensor, it takes {len(placeholders)}")
    index_of: dict[fx.Node, int] = {placeholders[0]: INPUT}
    layers: list[Layer] = []
    consumers: list[list[int]] = []
    input_consumers: list[int] = []
    output_node: fx.Node | None = None
    batch = int(input_shape[0])
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            output_node = node
            continue
        shape = _shape_of(node)
        if shape is None:
            raise GraphError(f"layer {node.name!r} ({_target_name(gm, node)}) does not produce a tensor; "
                             "use torch.flatten(x, 1) instead of x.view(x.size(0), -1)")
        spec, module = _spec_of(gm, node)
        index = len(layers)
        tensor_args = [a for a in node.all_input_nodes if a.op != "get_attr"]
        preds = tuple(index_of[a] for a in tensor_args)
        in_shapes = tuple(_without_batch(_shape_of(a) or ()) for a in tensor_args)
        param_names: list[str] = []
        numel = 0
        nbytes = 0
        if module is not None:
            for pname, tensor in [*module.named_parameters(), *module.named_buffers()]:
                param_names.append(f"{node.target}.{pname}")
                numel += tensor.numel()
                nbytes += tensor.numel() * tensor.element_size()
        for attr in (a for a in node.all_input_nodes if a.op == "get_attr"):
            if _is_param(gm, str(attr.target)):
                constant = gm.get_parameter(str(attr.target))
                param_names.append(str(attr.target))
                numel += constant.numel()
                nbytes += constant.numel() * constant.element_size()
        out_shape = _without_batch(shape)
        layers.append(Layer(
            index=index, name=node.name, target=_target_name(gm, node), spec=spec, preds=preds,
            in_shapes=in_shapes, out_shape=out_shape,
            flops=_flops(spec, in_shapes, out_shape, module, batch), params=numel, weight_bytes=nbytes,
            dtype_bytes=_dtype_bytes(node), param_names=tuple(param_names),
        ))
        consumers.append([])
        for p in preds:
            (input_consumers if p == INPUT else consumers[p]).append(index)
        index_of[node] = index
    if not layers:
        raise GraphError(f"{name}: the model has no layers")
    assert output_node is not None
    outputs = output_node.all_input_nodes
    if len(outputs) != 1 or index_of.get(outputs[0]) != len(layers) - 1:
        raise GraphError(f"{name}: the model must return one tensor computed by its last layer")
    check_spatial_args(layers)
    return LayerGraph(
        model_name=name, input_shape=tuple(int(d) for d in input_shape), layers=tuple(layers),
        consumers=tuple(tuple(c) for c in consumers), input_consumers=tuple(input_consumers),
    )


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def _without_batch(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:])


def check_spatial_args(layers: Sequence[Layer]) -> None:
    """Spatial ops must see (C, H, W) tensors; a spatial op after a flatten is not tileable."""
    for layer in layers:
        spatial = layer.spec.spatial
        if spatial is Spatial.GLOBAL:
            continue
        if any(len(s) != 3 for s in layer.in_shapes) or len(layer.out_shape) != 3:
            if spatial is Spatial.POINTWISE:
                continue  # e.g. a ReLU after a Linear: pointwise on a flat tensor
            raise GraphError(f"layer {layer.name!r} ({layer.target}): expected (N, C, H, W) tensors, "
                             f"got input shapes {layer.in_shapes}")
