"""Plan: the one contract between planner, executor, runtime and operator.

A plan is ordered stages; a stage runs layers [start, stop) (both cut points)
and lists its partitions, each a device with the output region it owns and the
input region (halo included) it must receive. Stages follow each other; the
partitions of one stage run in parallel. JSON carries a `schemaVersion` and is
validated on load; errors name the field at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from edgepart.errors import EdgepartError, explain_validation
from edgepart.geometry import GeometryError, Region, backprop, tiles_partition
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef

SCHEMA_VERSION: Literal[1] = 1

StageKind = Literal["single", "layerwise", "fused"]
SplitKind = Literal["none", "rows", "channels", "grid"]
Objective = Literal["latency", "throughput"]

_AXES = ("c", "h", "w")


class PlanError(EdgepartError, ValueError):
    """A plan file or object that is malformed or does not fit its model."""


def _parse_interval(value: Any, axis: str, allow_empty: bool = False) -> tuple[int, int]:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{axis}: expected [start, stop] (two integers), got {value!r}")
    start, stop = value
    if not (0 <= start <= stop if allow_empty else 0 <= start < stop):
        raise ValueError(f"{axis}: need 0 <= start < stop, got [{start}, {stop}]")
    return (start, stop)


def _parse_region(value: Any, allow_empty: bool = False) -> Region:
    if isinstance(value, Region):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected an object like {{'c': [0, 64], 'h': [0, 56], 'w': [0, 56]}}, got {value!r}")
    unknown = set(value) - set(_AXES)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)} (allowed: c, h, w)")
    if set(value) not in ({"c"}, {"c", "h", "w"}):
        raise ValueError(f"need axes c (flat tensors) or c, h, w; got {sorted(value)}")
    return Region(tuple(_parse_interval(value[a], a, allow_empty) for a in _AXES if a in value))


def _parse_input_region(value: Any) -> Region:
    # empty when the partition's tile lies wholly in padding (a conv padded wider than its kernel)
    return _parse_region(value, allow_empty=True)


def _dump_region(region: Region) -> dict[str, list[int]]:
    return {axis: list(interval) for axis, interval in zip(_AXES, region.dims, strict=False)}


RegionField = Annotated[Region, PlainValidator(_parse_region), PlainSerializer(_dump_region)]
InputRegionField = Annotated[Region, PlainValidator(_parse_input_region), PlainSerializer(_dump_region)]

_CONFIG = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass(frozen=True, config=_CONFIG)
class Partition:
    id: Annotated[str, Field(min_length=1, description="Unique within the plan, e.g. 's0p1'.")]
    device: Annotated[str, Field(min_length=1, description="Device (node) that runs this partition.")]
    output_region: Annotated[RegionField, Field(description="Region of the stage output this partition owns.")]
    input_region: Annotated[InputRegionField, Field(description="Region of the stage input it needs, halo included.")]


@dataclass(frozen=True, config=_CONFIG)
class Stage:
    index: Annotated[int, Field(ge=0)]
    kind: StageKind
    split: SplitKind
    start: Annotated[int, Field(ge=0, description="First layer (topological index), a cut point.")]
    stop: Annotated[int, Field(gt=0, description="One past the last layer, a cut point.")]
    first_layer: Annotated[str, Field(description="fx node name of layer `start`, checked on load.")]
    last_layer: Annotated[str, Field(description="fx node name of layer `stop - 1`, checked on load.")]
    partitions: Annotated[tuple[Partition, ...], Field(min_length=1)]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.device for p in self.partitions))


@dataclass(frozen=True, config=_CONFIG)
class StageCost:
    index: int
    scatter_s: Annotated[float, Field(ge=0)]
    compute_s: Annotated[float, Field(ge=0)]
    gather_s: Annotated[float, Field(ge=0)]
    time_s: Annotated[float, Field(ge=0)]


@dataclass(frozen=True, config=_CONFIG)
class Predicted:
    latency_s: Annotated[float, Field(ge=0, description="Single-request latency in an idle system.")]
    throughput_per_s: Annotated[float, Field(ge=0, description="Pipelined throughput (requests per second).")]
    stages: tuple[StageCost, ...] = ()


@dataclass(frozen=True, config=_CONFIG)
class Plan:
    schema_version: Annotated[Literal[1], Field(alias="schemaVersion")]
    model: ModelRef
    solver: str
    objective: Objective
    devices: Annotated[tuple[str, ...], Field(min_length=1)]
    stages: Annotated[tuple[Stage, ...], Field(min_length=1)]
    predicted: Predicted | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return tuple(p for s in self.stages for p in s.partitions)

    def to_json(self, indent: int | None = 2) -> str:
        return _ADAPTER.dump_json(self, by_alias=True, indent=indent).decode()

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _ADAPTER.dump_python(self, by_alias=True, mode="json")
        return result

    def with_predicted(self, predicted: Predicted) -> Plan:
        return make_plan(self.model, self.solver, self.objective, self.devices, self.stages, predicted, self.meta)


_ADAPTER: TypeAdapter[Plan] = TypeAdapter(Plan)


def make_plan(model: ModelRef, solver: str, objective: Objective, devices: tuple[str, ...],
              stages: tuple[Stage, ...], predicted: Predicted | None = None,
              meta: dict[str, Any] | None = None) -> Plan:
    return Plan(schema_version=SCHEMA_VERSION, model=model, solver=solver, objective=objective,
                devices=devices, stages=stages, predicted=predicted, meta=meta or {})


def plan_from_dict(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"plan: expected a JSON object, got {type(data).__name__}")
    version = data.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise PlanError(f"schemaVersion: expected {SCHEMA_VERSION}, got {version!r}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise PlanError(explain_validation(err)) from None


def plan_from_json(text: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"plan is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    return plan_from_dict(data)


def load_plan(path: str | Path) -> Plan:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PlanError(f"cannot read plan {path}: {err.strerror}") from None
    return plan_from_json(text)


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(plan.to_json() + "\n")


def check_plan(plan: Plan, graph: LayerGraph) -> None:
    """Check that `plan` fits `graph`: stages cover every layer once, in order, at cut points;
    partition outputs tile each stage output exactly; input regions are what the geometry needs."""
    if plan.model.input_shape is not None and tuple(plan.model.input_shape) != graph.input_shape:
        raise PlanError(f"model.input_shape: plan has {plan.model.input_shape}, model has {graph.input_shape}")
    expected_start = 0
    ids: set[str] = set()
    devices = set(plan.devices)
    for s, stage in enumerate(plan.stages):
        where = f"stages[{s}]"
        if stage.index != s:
            raise PlanError(f"{where}.index: expected {s}, got {stage.index}")
        if stage.start != expected_start:
            raise PlanError(f"{where}.start: expected {expected_start} (where the previous stage stops), "
                            f"got {stage.start}")
        if stage.stop <= stage.start or stage.stop > len(graph):
            raise PlanError(f"{where}.stop: {stage.stop} must be in ({stage.start}, {len(graph)}]")
        for field, position in (("start", stage.start), ("stop", stage.stop)):
            if not graph.is_cut(position):
                raise PlanError(f"{where}.{field}: position {position} is not a cut point of {graph.model_name}")
        for field, index in (("first_layer", stage.start), ("last_layer", stage.stop - 1)):
            actual = graph.layers[index].name
            if getattr(stage, field) != actual:
                raise PlanError(f"{where}.{field}: plan says {getattr(stage, field)!r}, layer {index} of "
                                f"{graph.model_name} is {actual!r}")
        out_shape = graph.shape_at(stage.stop)
        problem = tiles_partition([p.output_region for p in stage.partitions], out_shape)
        if problem:
            raise PlanError(f"{where}.partitions: output regions must tile the stage output {out_shape}: {problem}")
        for i, part in enumerate(stage.partitions):
            pwhere = f"{where}.partitions[{i}]"
            if part.id in ids:
                raise PlanError(f"{pwhere}.id: duplicate id {part.id!r}")
            ids.add(part.id)
            if part.device not in devices:
                raise PlanError(f"{pwhere}.device: {part.device!r} is not in devices {sorted(devices)}")
            try:
                geometry = backprop(graph, stage.start, stage.stop, part.output_region)
            except GeometryError as err:
                raise PlanError(f"{pwhere}.output_region: {err}") from None
            if geometry.input_region != part.input_region:
                raise PlanError(f"{pwhere}.input_region: plan has {part.input_region}, the layers need "
                                f"{geometry.input_region}")
        expected_start = stage.stop
    if expected_start != len(graph):
        raise PlanError(f"stages: cover layers [0, {expected_start}) but the model has {len(graph)} layers")
