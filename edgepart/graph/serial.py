"""A LayerGraph as data: versioned JSON, validated on load.

Tracing a model runs its code (its module's import, its factory, its forward under torch.fx). The operator
must never do that for code a DNNDeployment names, so a model outside the zoo is traced elsewhere (a Job
running the image, or `edgepart trace` on a workstation) and the operator plans from the graph as data.
That JSON is untrusted input: everything is checked (types, bounds, that every producer comes before its
consumer, that the last layer is the output) and the derived fields (consumers) are rebuilt here, not read.

Layout (schemaVersion 1)::

    {"schemaVersion": 1, "model": "pkg.mod:build", "inputShape": [1, 3, 224, 224],
     "layers": [{"name": "conv1", "target": "conv1", "spec": {"kind": "conv", "window": {...}, ...},
                 "preds": [-1], "inShapes": [[3, 224, 224]], "outShape": [64, 112, 112], "flops": ...,
                 "params": ..., "weightBytes": ..., "dtypeBytes": 4, "paramNames": ["conv1.weight"]}, ...]}
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from edgepart.errors import explain_validation
from edgepart.graph.layer_graph import INPUT, GraphError, Layer, LayerGraph, check_spatial_args
from edgepart.graph.ops import LayerSpec, OpKind, Window

__all__ = ["GRAPH_BEGIN", "GRAPH_END", "GRAPH_SCHEMA_VERSION", "MAX_LAYERS", "graph_from_json", "graph_to_dict",
           "graph_to_json"]

GRAPH_SCHEMA_VERSION = 1
# `edgepart trace --markers` prints the graph (one line of JSON) between these, as a tracing Job's log does
GRAPH_BEGIN = "----- BEGIN EDGEPART GRAPH -----"
GRAPH_END = "----- END EDGEPART GRAPH -----"
MAX_LAYERS = 20_000  # ResNet-152 has ~500; a bound keeps a hostile graph from stalling the planner
_DIM = Annotated[int, Field(ge=0, le=1 << 31)]
_SMALL = Annotated[int, Field(ge=0, le=1 << 16)]
_COUNT = Annotated[int, Field(ge=0, le=1 << 62)]
_NAME = Annotated[str, Field(min_length=1, max_length=512)]


class _Data(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              ser_json_inf_nan="strings")


class _Window(_Data):
    kernel: tuple[_SMALL, _SMALL]
    stride: tuple[Annotated[int, Field(ge=1, le=1 << 16)], Annotated[int, Field(ge=1, le=1 << 16)]]
    padding: tuple[_SMALL, _SMALL, _SMALL, _SMALL]
    dilation: tuple[Annotated[int, Field(ge=1, le=1 << 16)], Annotated[int, Field(ge=1, le=1 << 16)]]
    ceil_mode: bool
    pad_value: float  # -inf for max pooling ("-Infinity" in the JSON)


class _Spec(_Data):
    kind: OpKind
    window: _Window | None = None
    groups: Annotated[int, Field(ge=1, le=1 << 20)] = 1
    factor: Annotated[int, Field(ge=1, le=1 << 10)] = 1
    count_include_pad: bool = True
    divisor_override: Annotated[int, Field(ge=1, le=1 << 20)] | None = None


class _Layer(_Data):
    name: _NAME
    target: Annotated[str, Field(max_length=1024)]
    spec: _Spec
    preds: tuple[Annotated[int, Field(ge=INPUT)], ...] = Field(min_length=1, max_length=1024)
    in_shapes: tuple[tuple[_DIM, ...], ...] = Field(max_length=1024)
    out_shape: tuple[_DIM, ...] = Field(min_length=1, max_length=3)
    flops: _COUNT
    params: _COUNT
    weight_bytes: _COUNT
    dtype_bytes: Literal[1, 2, 4, 8]
    param_names: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(default=(), max_length=4096)


class _Graph(_Data):
    schema_version: Literal[1]
    model: _NAME
    input_shape: tuple[Annotated[int, Field(ge=1, le=1 << 20)], ...] = Field(min_length=4, max_length=4)
    layers: tuple[_Layer, ...] = Field(min_length=1, max_length=MAX_LAYERS)


def _window(window: Window | None) -> _Window | None:
    if window is None:
        return None
    return _Window(kernel=window.kernel, stride=window.stride, padding=window.padding, dilation=window.dilation,
                   ceil_mode=window.ceil_mode, pad_value=window.pad_value)


def graph_to_dict(graph: LayerGraph) -> dict[str, Any]:
    """The graph as JSON-ready data (-inf pad values as the string "-Infinity")."""
    data = _Graph(
        schema_version=GRAPH_SCHEMA_VERSION, model=graph.model_name, input_shape=graph.input_shape,
        layers=tuple(_Layer(
            name=layer.name, target=layer.target,
            spec=_Spec(kind=layer.spec.kind, window=_window(layer.spec.window), groups=layer.spec.groups,
                       factor=layer.spec.factor, count_include_pad=layer.spec.count_include_pad,
                       divisor_override=layer.spec.divisor_override),
            preds=layer.preds, in_shapes=layer.in_shapes, out_shape=layer.out_shape, flops=layer.flops,
            params=layer.params, weight_bytes=layer.weight_bytes, dtype_bytes=layer.dtype_bytes,
            param_names=layer.param_names,
        ) for layer in graph.layers),
    )
    result: dict[str, Any] = json.loads(data.model_dump_json(by_alias=True, exclude_defaults=True))
    return result


def graph_to_json(graph: LayerGraph, indent: int | None = None) -> str:
    return json.dumps(graph_to_dict(graph), indent=indent, allow_nan=False)


def graph_from_json(text: str | bytes, source: str = "graph") -> LayerGraph:
    """Parse and validate a graph written by `graph_to_json`; GraphError naming the field otherwise."""
    try:
        data: Any = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GraphError(f"{source}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise GraphError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("schemaVersion") != GRAPH_SCHEMA_VERSION:
        raise GraphError(f"{source}: schemaVersion: expected {GRAPH_SCHEMA_VERSION}, got "
                         f"{str(data.get('schemaVersion'))[:40]!r}")
    try:
        parsed = _Graph.model_validate(data)
    except ValidationError as err:
        raise GraphError(f"{source}: {explain_validation(err)}") from None
    return _build(parsed, source)


def _build(parsed: _Graph, source: str) -> LayerGraph:
    layers: list[Layer] = []
    consumers: list[list[int]] = []
    input_consumers: list[int] = []
    names: set[str] = set()
    for index, item in enumerate(parsed.layers):
        where = f"{source}: layers[{index}]"
        if item.name in names:
            raise GraphError(f"{where}.name: {item.name!r} is not unique")
        names.add(item.name)
        if any(p >= index for p in item.preds):
            raise GraphError(f"{where}.preds: {list(item.preds)} must name earlier layers (or {INPUT}, the input)")
        if len(item.in_shapes) != len(item.preds):
            raise GraphError(f"{where}.inShapes: {len(item.in_shapes)} shapes for {len(item.preds)} inputs")
        for pred, shape in zip(item.preds, item.in_shapes, strict=True):
            produced = parsed.input_shape[1:] if pred == INPUT else parsed.layers[pred].out_shape
            if tuple(shape) != tuple(produced):
                raise GraphError(f"{where}.inShapes: {list(shape)} is not the shape {list(produced)} its "
                                 f"producer {pred} makes")
        spec = item.spec
        window = spec.window
        layers.append(Layer(
            index=index, name=item.name, target=item.target,
            spec=LayerSpec(kind=spec.kind, window=None if window is None else Window(
                kernel=window.kernel, stride=window.stride, padding=window.padding, dilation=window.dilation,
                ceil_mode=window.ceil_mode, pad_value=window.pad_value), groups=spec.groups, factor=spec.factor,
                count_include_pad=spec.count_include_pad, divisor_override=spec.divisor_override),
            preds=item.preds, in_shapes=item.in_shapes, out_shape=item.out_shape, flops=item.flops,
            params=item.params, weight_bytes=item.weight_bytes, dtype_bytes=item.dtype_bytes,
            param_names=item.param_names,
        ))
        consumers.append([])
        for pred in item.preds:
            (input_consumers if pred == INPUT else consumers[pred]).append(index)
    unused = [i for i, used in enumerate(consumers[:-1]) if not used]
    if unused:
        raise GraphError(f"{source}: layers {unused[:5]} feed no other layer; only the last layer is the output")
    if not input_consumers:
        raise GraphError(f"{source}: no layer reads the input")
    check_spatial_args(layers)
    return LayerGraph(model_name=parsed.model, input_shape=parsed.input_shape, layers=tuple(layers),
                      consumers=tuple(tuple(c) for c in consumers), input_consumers=tuple(input_consumers))
