"""Plan: the one contract between planner, executor, runtime and operator.

A plan (``schemaVersion: 2``) is a *task graph* over one or more models. Each
task runs layers [start, stop) of one model on one device (both ends cut
points), computes an `output` region of the tensor crossing cut `stop`, and
reads regions of the tensor crossing cut `start` from named producer tasks
(whose `stop` is that cut) or from the model's `input`. Output regions of
different tasks may overlap: a tile that recomputes its own halo overlaps its
neighbours. A task with ``start == stop`` is a *relay*: it computes nothing,
assembles what it reads and forwards it (a chain plan gathers at a holder
device between split stages). For every model, `outputs` names the tasks whose
outputs together cover the model's output; they send it to the model's source
device (the plan's `master` unless the model names its own).

Stages are a derived view (`Plan.stage_view`) for tables and charts. Version 1
plans (ordered stages of one model) still load, converted losslessly by
`plan_from_stages`; the chain solvers build `StagedPlan` (version 1's shape)
and convert it the same way.

JSON is validated on load; errors name the task and field at fault.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
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
from edgepart.naming import default_model_id

SCHEMA_VERSION: Literal[2] = 2
INPUT = "input"  # the `from` of a task input that reads the model input

StageKind = Literal["single", "layerwise", "fused"]
SplitKind = Literal["none", "rows", "channels", "grid"]
Objective = Literal["latency", "throughput"]
# how a transfer's bytes travel: a lossless codec (none | lz4 | zstd) and, lossy, float32 sent as float16
WireCodec = Literal["none", "lz4", "zstd"]
WireDtype = Literal["float32", "float16"]

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
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


# ================================================================== version 2: the task graph


@dataclass(frozen=True, config=_CONFIG)
class ModelEntry:
    """One model of the plan and how to rebuild it identically in any process."""

    id: Annotated[Ident, Field(description="Unique within the plan; tasks name their model by it.")]
    name: Annotated[str, Field(min_length=1, description="Zoo name, package.module:factory or file.py:factory.")]
    input_shape: Annotated[tuple[int, ...] | None, Field(description="N, C, H, W of the input.")] = None
    weights: Annotated[str | None, Field(description="safetensors file (default: seeded weights).")] = None
    seed: Annotated[int, Field(ge=0)] = 0
    source: Annotated[str | None, Field(description="Device that holds this model's input and receives its "
                                                    "output (default: the plan's master).")] = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.input_shape, self.weights, self.seed)

    @staticmethod
    def of(model_id: str, ref: ModelRef, source: str | None = None) -> ModelEntry:
        shape = tuple(ref.input_shape) if ref.input_shape is not None else None
        return ModelEntry(id=model_id, name=ref.name, input_shape=shape, weights=ref.weights, seed=ref.seed,
                          source=source)


@dataclass(frozen=True, config=_CONFIG)
class TaskInput:
    """A region of the tensor crossing the task's `start` cut, read from a producer task or the input."""

    source: Annotated[str, Field(alias="from", min_length=1, description="Producer task id, or 'input'.")]
    region: Annotated[InputRegionField, Field(description="Global coordinates; empty: only a trigger (a tile "
                                                          "that lies wholly in padding).")]
    codec: Annotated[WireCodec, Field(description="Lossless compression of the region on the wire (the planner "
                                                  "chooses it per link).")] = "none"
    wire_dtype: Annotated[WireDtype, Field(alias="wireDtype", description="float16: a float32 region travels as "
                                                                          "float16 (lossy, half the bytes).")
                          ] = "float32"


@dataclass(frozen=True, config=_CONFIG)
class Task:
    id: Ident
    model: Annotated[str, Field(min_length=1, description="Model id.")]
    device: Annotated[str, Field(min_length=1, description="Device (node) that runs the task.")]
    start: Annotated[int, Field(ge=0, description="First layer (topological index), a cut point.")]
    stop: Annotated[int, Field(ge=0, description="One past the last layer, a cut point (= start: a relay).")]
    output: Annotated[RegionField, Field(description="Region of the tensor crossing cut `stop` it computes.")]
    inputs: Annotated[tuple[TaskInput, ...], Field(min_length=1)]
    first_layer: Annotated[str | None, Field(description="fx node name of layer `start`, checked on load.")] = None
    last_layer: Annotated[str | None, Field(description="fx node name of layer `stop - 1`, checked on load.")] = None
    priority: Annotated[int, Field(ge=0, description="Lower runs first among a device's ready tasks.")] = 0
    stage: Annotated[int | None, Field(ge=0, description="Display hint: the stage this task belongs to.")] = None

    @property
    def relay(self) -> bool:
        return self.start == self.stop

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.source for i in self.inputs if i.source != INPUT))

    @property
    def reads_input(self) -> bool:
        return any(i.source == INPUT for i in self.inputs)


@dataclass(frozen=True, config=_CONFIG)
class StageCost:
    index: int
    scatter_s: Annotated[float, Field(ge=0)]
    compute_s: Annotated[float, Field(ge=0)]
    gather_s: Annotated[float, Field(ge=0)]
    time_s: Annotated[float, Field(ge=0)]


@dataclass(frozen=True, config=_CONFIG)
class TaskTiming:
    """When one task computed in the evaluator's schedule of one request of every model."""

    id: str
    ready_s: Annotated[float, Field(ge=0, description="Last input arrived.")]
    start_s: Annotated[float, Field(ge=0)]
    end_s: Annotated[float, Field(ge=0)]


@dataclass(frozen=True, config=_CONFIG)
class Predicted:
    latency_s: Annotated[float, Field(ge=0, description="Makespan of one request of every model in an idle "
                                                        "system (one model: its latency).")]
    throughput_per_s: Annotated[float, Field(ge=0, description="Pipelined rate of requests of every model.")]
    models: dict[str, float] = Field(default_factory=dict, description="Latency of each model's request.")
    stages: tuple[StageCost, ...] = ()
    tasks: tuple[TaskTiming, ...] = ()


@dataclass(frozen=True)
class StageView:
    """Tasks of one model grouped for display: a stage of a chain plan, or tasks sharing a layer range."""

    index: int
    model: str
    start: int
    stop: int
    tasks: tuple[Task, ...]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.device for t in self.tasks))

    @property
    def kind(self) -> str:
        if len(self.tasks) == 1:
            return "single"
        ranges = {(t.start, t.stop) for t in self.tasks}
        return "tiles" if len(ranges) == 1 else "paths"


@dataclass(frozen=True, config=_CONFIG)
class Plan:
    schema_version: Annotated[Literal[2], Field(alias="schemaVersion")]
    solver: str
    objective: Objective
    devices: Annotated[tuple[str, ...], Field(min_length=1)]
    master: Annotated[str, Field(min_length=1, description="Holds the input and receives the output of every "
                                                           "model that names no source of its own.")]
    models: Annotated[tuple[ModelEntry, ...], Field(min_length=1)]
    tasks: Annotated[tuple[Task, ...], Field(min_length=1)]
    outputs: dict[str, tuple[str, ...]]
    predicted: Predicted | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    # ------------------------------------------------------------ lookups

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def model_entry(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(model_id)

    @property
    def model(self) -> ModelRef:
        """The model of a one-model plan."""
        if len(self.models) != 1:
            raise PlanError(f"the plan has {len(self.models)} models ({', '.join(self.model_ids)}); name one")
        return self.models[0].ref

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def source_of(self, model_id: str) -> str:
        return self.model_entry(model_id).source or self.master

    def tasks_of(self, model_id: str) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if t.model == model_id)

    def consumers(self, task_id: str) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if task_id in t.producers)

    @property
    def compute_tasks(self) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if not t.relay)

    def stage_view(self, model_id: str | None = None) -> tuple[StageView, ...]:
        """Tasks grouped into stages: by their `stage` hint when every task has one, else by layer range."""
        ids = [model_id] if model_id is not None else list(self.model_ids)
        views: list[StageView] = []
        for mid in ids:
            tasks = [t for t in self.tasks_of(mid) if not t.relay]
            if all(t.stage is not None for t in tasks):
                keys = sorted({t.stage for t in tasks if t.stage is not None})
                groups = [[t for t in tasks if t.stage == k] for k in keys]
            else:
                keys_r = sorted({(t.start, t.stop) for t in tasks})
                groups = [[t for t in tasks if (t.start, t.stop) == k] for k in keys_r]
            for group in groups:
                views.append(StageView(len(views), mid, min(t.start for t in group), max(t.stop for t in group),
                                       tuple(group)))
        return tuple(views)

    # ------------------------------------------------------------ serialisation

    def to_json(self, indent: int | None = 2) -> str:
        return _ADAPTER.dump_json(self, by_alias=True, indent=indent).decode()

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _ADAPTER.dump_python(self, by_alias=True, mode="json")
        return result

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def with_predicted(self, predicted: Predicted | None) -> Plan:
        return self.replace(predicted=predicted)


_ADAPTER: TypeAdapter[Plan] = TypeAdapter(Plan)


def make_task_plan(solver: str, objective: Objective, devices: Sequence[str], master: str,
                   models: Sequence[ModelEntry], tasks: Sequence[Task], outputs: Mapping[str, Sequence[str]],
                   predicted: Predicted | None = None, meta: Mapping[str, Any] | None = None) -> Plan:
    return Plan(schema_version=SCHEMA_VERSION, solver=solver, objective=objective, devices=tuple(devices),
                master=master, models=tuple(models), tasks=tuple(tasks),
                outputs={k: tuple(v) for k, v in outputs.items()}, predicted=predicted, meta=dict(meta or {}))


TURNS_PRIORITY = "priority"  # the value of a plan's meta.turns that asks for turns


def device_turns(plan: Plan) -> dict[str, tuple[str | None, str | None]]:
    """task id -> (the task before it, the task after it) on its device, for every compute task of a plan that
    asks for turns (`meta.turns == "priority"`: a device computes its tasks one at a time, each after the one
    before it has told it so); {} for any other plan. Order: priority, then plan order. The runtime takes the
    turns (`partition_service.turnstile`) and the evaluator charges each as a local message."""
    if plan.meta.get("turns") != TURNS_PRIORITY:
        return {}
    chains: dict[str, list[tuple[int, int, str]]] = {}
    for index, task in enumerate(plan.tasks):
        if not task.relay:
            chains.setdefault(task.device, []).append((task.priority, index, task.id))
    result: dict[str, tuple[str | None, str | None]] = {}
    for chain in chains.values():
        ids = [tid for _, _, tid in sorted(chain)]
        if len(ids) < 2:
            continue
        for k, tid in enumerate(ids):
            result[tid] = (ids[k - 1] if k > 0 else None, ids[k + 1] if k + 1 < len(ids) else None)
    return result


# ================================================================== version 1: ordered stages


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
class StagedPredicted:
    latency_s: Annotated[float, Field(ge=0)]
    throughput_per_s: Annotated[float, Field(ge=0)]
    stages: tuple[StageCost, ...] = ()


@dataclass(frozen=True, config=_CONFIG)
class StagedPlan:
    """Version 1 of the plan (ordered stages of one model): what the chain solvers build."""

    schema_version: Annotated[Literal[1], Field(alias="schemaVersion")]
    model: ModelRef
    solver: str
    objective: Objective
    devices: Annotated[tuple[str, ...], Field(min_length=1)]
    stages: Annotated[tuple[Stage, ...], Field(min_length=1)]
    predicted: StagedPredicted | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return tuple(p for s in self.stages for p in s.partitions)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _STAGED_ADAPTER.dump_python(self, by_alias=True, mode="json")
        return result

    def to_plan(self, master: str | None = None, priorities: Mapping[str, int] | None = None,
                model_id: str | None = None) -> Plan:
        return plan_from_stages(self, master, priorities, model_id)


_STAGED_ADAPTER: TypeAdapter[StagedPlan] = TypeAdapter(StagedPlan)


def make_plan(model: ModelRef, solver: str, objective: Objective, devices: tuple[str, ...],
              stages: tuple[Stage, ...], predicted: StagedPredicted | None = None,
              meta: dict[str, Any] | None = None) -> StagedPlan:
    """A staged (version 1) plan; `.to_plan()` gives the task graph."""
    return StagedPlan(schema_version=1, model=model, solver=solver, objective=objective,
                      devices=devices, stages=stages, predicted=predicted, meta=meta or {})


def relay_id(stage: int, prefix: str = "") -> str:
    return f"{prefix}s{stage}r"


def plan_from_stages(staged: StagedPlan, master: str | None = None, priorities: Mapping[str, int] | None = None,
                     model_id: str | None = None, id_prefix: str = "") -> Plan:
    """The task graph of a staged plan, with the routing the stage evaluator charges.

    Stage 0 reads the input (held by the master). A stage with one partition reads every partition of the
    stage before it directly (their whole outputs). A split stage after the first reads its input regions
    from a relay on the master that gathers the previous stage's outputs (version 1's holder). The last
    stage's partitions are the model's outputs. `priorities` (by partition id) order each device's ready
    tasks; by default partitions run in plan order.
    """
    master = master or str(staged.meta.get("master") or staged.devices[0])
    mid = model_id or model_id_of(staged.model)
    tasks: list[Task] = []
    order = itertools.count()
    previous: list[Task] = []
    for stage in staged.stages:
        split = len(stage.partitions) > 1
        relay: Task | None = None
        if previous and split:
            relay = Task(id=relay_id(stage.index, id_prefix), model=mid, device=master, start=stage.start,
                         stop=stage.start, output=_hull_of(p.output for p in previous),
                         inputs=tuple(TaskInput(source=p.id, region=p.output) for p in previous),
                         priority=next(order), stage=None)
            tasks.append(relay)
        current = []
        for part in stage.partitions:
            if not previous:
                inputs: tuple[TaskInput, ...] = (TaskInput(source=INPUT, region=part.input_region),)
            elif relay is not None:
                inputs = (TaskInput(source=relay.id, region=part.input_region),)
            else:
                inputs = tuple(TaskInput(source=p.id, region=p.output) for p in previous)
            priority = priorities[part.id] if priorities is not None else next(order)
            task = Task(id=id_prefix + part.id, model=mid, device=part.device, start=stage.start, stop=stage.stop,
                        output=part.output_region, inputs=inputs, first_layer=stage.first_layer,
                        last_layer=stage.last_layer, priority=priority, stage=stage.index)
            current.append(task)
        tasks.extend(current)
        previous = current
    entry = ModelEntry.of(mid, staged.model)
    predicted = None
    if staged.predicted is not None:
        p = staged.predicted
        predicted = Predicted(latency_s=p.latency_s, throughput_per_s=p.throughput_per_s,
                              models={mid: p.latency_s}, stages=p.stages)
    devices = tuple(dict.fromkeys((*staged.devices, master)))
    return make_task_plan(staged.solver, staged.objective, devices, master, (entry,), tasks,
                          {mid: [t.id for t in previous]}, predicted, {**staged.meta, "master": master})


def model_id_of(ref: ModelRef) -> str:
    return default_model_id(ref.name)


def _hull_of(regions: Iterable[Region]) -> Region:
    items = list(regions)
    result = items[0]
    for region in items[1:]:
        result = result.hull(region)
    return result


# ================================================================== loading and saving


def plan_from_dict(data: Any) -> Plan:
    """A plan from its JSON object; version 1 is converted to the task graph."""
    if not isinstance(data, dict):
        raise PlanError(f"plan: expected a JSON object, got {type(data).__name__}")
    version = data.get("schemaVersion")
    if version == 1:
        return staged_from_dict(data).to_plan()
    if version != SCHEMA_VERSION:
        raise PlanError(f"schemaVersion: expected {SCHEMA_VERSION} (or 1), got {version!r}")
    try:
        plan = _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise PlanError(explain_validation(err)) from None
    check_structure(plan)
    return plan


def staged_from_dict(data: Any) -> StagedPlan:
    try:
        return _STAGED_ADAPTER.validate_python(data)
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


# ================================================================== checks


def task_graph(plan: Plan) -> nx.DiGraph:
    """Producer -> consumer edges between task ids (the input is not a node)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(t.id for t in plan.tasks)
    for task in plan.tasks:
        for producer in task.producers:
            graph.add_edge(producer, task.id)
    return graph


def topological_tasks(plan: Plan) -> tuple[Task, ...]:
    """Tasks in an order where every producer comes before its consumers (ties: plan order)."""
    index = {t.id: i for i, t in enumerate(plan.tasks)}
    order = nx.lexicographical_topological_sort(task_graph(plan), key=lambda tid: index[tid])
    return tuple(plan.tasks[index[tid]] for tid in order)


def check_structure(plan: Plan) -> None:
    """Checks that need no model: ids, devices, producers, acyclicity, regions inside producers, outputs."""
    devices = set(plan.devices)
    if plan.master not in devices:
        raise PlanError(f"master: {plan.master!r} is not in devices {sorted(devices)}")
    model_ids: set[str] = set()
    for i, entry in enumerate(plan.models):
        if entry.id in model_ids:
            raise PlanError(f"models[{i}].id: duplicate model id {entry.id!r}")
        model_ids.add(entry.id)
        if entry.source is not None and entry.source not in devices:
            raise PlanError(f"models[{i}].source: {entry.source!r} is not in devices {sorted(devices)}")
    by_id: dict[str, Task] = {}
    for task in plan.tasks:
        where = f"task {task.id!r}"
        if task.id in by_id:
            raise PlanError(f"{where}: duplicate task id")
        by_id[task.id] = task
        if task.model not in model_ids:
            raise PlanError(f"{where}.model: {task.model!r} is not one of the models {sorted(model_ids)}")
        if task.device not in devices:
            raise PlanError(f"{where}.device: {task.device!r} is not in devices {sorted(devices)}")
        if task.stop < task.start:
            raise PlanError(f"{where}.stop: {task.stop} is before start {task.start}")
        if task.output.empty:
            raise PlanError(f"{where}.output: {task.output} is empty")
    for task in plan.tasks:
        where = f"task {task.id!r}"
        for k, item in enumerate(task.inputs):
            iwhere = f"{where}.inputs[{k}]"
            if item.source == INPUT:
                if task.start != 0:
                    raise PlanError(f"{iwhere}.from: only a task that starts at layer 0 reads the input "
                                    f"(this one starts at {task.start})")
                continue
            producer = by_id.get(item.source)
            if producer is None:
                raise PlanError(f"{iwhere}.from: unknown producer task {item.source!r}")
            if producer.model != task.model:
                raise PlanError(f"{iwhere}.from: task {producer.id!r} computes model {producer.model!r}, "
                                f"not {task.model!r}")
            if producer.stop != task.start:
                raise PlanError(f"{iwhere}.from: task {producer.id!r} stops at cut {producer.stop}, this task "
                                f"starts at cut {task.start}")
            if not item.region.empty and (item.region.ndim != producer.output.ndim
                                          or not producer.output.contains(item.region)):
                raise PlanError(f"{iwhere}.region: {item.region} is not inside what task {producer.id!r} "
                                f"computes ({producer.output})")
    graph = task_graph(plan)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = [u for u, _ in nx.find_cycle(graph)]
        raise PlanError(f"task {cycle[0]!r}: the task graph has a cycle: {' -> '.join([*cycle, cycle[0]])}")
    unknown = sorted(set(plan.outputs) - model_ids)
    if unknown:
        raise PlanError(f"outputs: {unknown} are not models of the plan")
    read = {p for t in plan.tasks for p in t.producers}
    for mid in sorted(model_ids):
        ids = plan.outputs.get(mid)
        if not ids:
            raise PlanError(f"outputs.{mid}: no task delivers the output of model {mid!r}")
        for tid in ids:
            delivering = by_id.get(tid)
            if delivering is None:
                raise PlanError(f"outputs.{mid}: unknown task {tid!r}")
            if delivering.model != mid:
                raise PlanError(f"outputs.{mid}: task {tid!r} computes model {delivering.model!r}")
    delivered = {tid for ids in plan.outputs.values() for tid in ids}
    for task in plan.tasks:
        if task.id not in read and task.id not in delivered:
            raise PlanError(f"task {task.id!r}: no task reads its output and it is no model's output")


def covers(regions: Sequence[Region], target: Region) -> bool:
    """Whether the union of `regions` contains the box `target` (exact, by coordinate compression)."""
    if target.empty:
        return True
    clipped = [r.intersect(target) for r in regions if r.ndim == target.ndim]
    clipped = [r for r in clipped if not r.empty]
    if any(r == target for r in clipped):
        return True
    if not clipped:
        return False
    cuts = []
    for axis, (lo, hi) in enumerate(target.dims):
        points = {lo, hi}
        for r in clipped:
            points.update(r.dims[axis])
        cuts.append(sorted(points))
    cells = itertools.product(*(itertools.pairwise(c) for c in cuts))
    return all(any(all(a <= lo and hi <= b for (lo, hi), (a, b) in zip(cell, r.dims, strict=True))
                   for r in clipped) for cell in cells)


def needed_input(graph: LayerGraph, task: Task) -> Region:
    """The region of the tensor crossing `task.start` the task needs (halo included)."""
    if task.relay:
        return task.output
    return backprop(graph, task.start, task.stop, task.output).input_region


def _graph_for(graphs: LayerGraph | Mapping[str, LayerGraph], plan: Plan) -> dict[str, LayerGraph]:
    if isinstance(graphs, LayerGraph):
        if len(plan.models) != 1:
            raise PlanError(f"the plan has {len(plan.models)} models; give a graph for each")
        return {plan.models[0].id: graphs}
    missing = [m for m in plan.model_ids if m not in graphs]
    if missing:
        raise PlanError(f"no model graph for {missing}")
    return dict(graphs)


def check_plan(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph]) -> None:
    """Check that `plan` fits its models: cut points, layer names, regions inside their tensors, every task's
    needed input (halo included) covered by what it reads, and every model's output covered."""
    check_structure(plan)
    by_model = _graph_for(graphs, plan)
    for entry in plan.models:
        graph = by_model[entry.id]
        if entry.input_shape is not None and tuple(entry.input_shape) != graph.input_shape:
            raise PlanError(f"models[{entry.id}].input_shape: plan has {list(entry.input_shape)}, the model has "
                            f"{list(graph.input_shape)}")
    for task in plan.tasks:
        _check_task(task, by_model[task.model])
    for mid, ids in plan.outputs.items():
        graph = by_model[mid]
        full = Region.full(graph.shape_at(len(graph)))
        for tid in ids:
            if plan.task(tid).stop != len(graph):
                raise PlanError(f"outputs.{mid}: task {tid!r} stops at cut {plan.task(tid).stop}, the model's "
                                f"output is cut {len(graph)}")
        if not covers([plan.task(t).output for t in ids], full):
            raise PlanError(f"outputs.{mid}: the output regions of {list(ids)} do not cover the output {full}")


def _check_task(task: Task, graph: LayerGraph) -> None:
    where = f"task {task.id!r}"
    layers = len(graph)
    if task.stop > layers:
        raise PlanError(f"{where}.stop: {task.stop} is past the last layer of {graph.model_name} ({layers})")
    for field, position in (("start", task.start), ("stop", task.stop)):
        if not graph.is_cut(position):
            raise PlanError(f"{where}.{field}: position {position} is not a cut point of {graph.model_name}")
    if task.relay:
        for field in ("first_layer", "last_layer"):
            if getattr(task, field) is not None:
                raise PlanError(f"{where}.{field}: a relay (start = stop) computes no layer")
    else:
        for field, index in (("first_layer", task.start), ("last_layer", task.stop - 1)):
            actual = graph.layers[index].name
            given = getattr(task, field)
            if given is not None and given != actual:
                raise PlanError(f"{where}.{field}: plan says {given!r}, layer {index} of {graph.model_name} is "
                                f"{actual!r}")
    full_out = Region.full(graph.shape_at(task.stop))
    if task.output.ndim != full_out.ndim or not full_out.contains(task.output):
        raise PlanError(f"{where}.output: {task.output} is not inside the tensor {full_out} at cut {task.stop}")
    full_in = Region.full(graph.shape_at(task.start))
    for k, item in enumerate(task.inputs):
        if not item.region.empty and (item.region.ndim != full_in.ndim or not full_in.contains(item.region)):
            raise PlanError(f"{where}.inputs[{k}].region: {item.region} is not inside the tensor {full_in} at "
                            f"cut {task.start}")
    try:
        need = needed_input(graph, task)
    except GeometryError as err:
        raise PlanError(f"{where}.output: {err}") from None
    if not covers([i.region for i in task.inputs], need):
        listed = ", ".join(f"{i.source}:{i.region}" for i in task.inputs)
        raise PlanError(f"{where}.inputs: they do not cover the region {need} the layers need (listed: {listed})")


def check_stages(plan: StagedPlan, graph: LayerGraph) -> None:
    """Check a staged plan against `graph`: stages cover every layer once, in order, at cut points;
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


# ================================================================== several models


def rename_model(plan: Plan, model_id: str, prefix: str = "") -> Plan:
    """A one-model plan with its model called `model_id` and its task ids prefixed."""
    if len(plan.models) != 1:
        raise PlanError(f"rename_model: the plan has {len(plan.models)} models")
    old = plan.models[0].id

    def tid(name: str) -> str:
        return name if name == INPUT else prefix + name

    tasks = tuple(dataclasses.replace(t, id=tid(t.id), model=model_id,
                                      inputs=tuple(TaskInput(source=tid(i.source), region=i.region)
                                                   for i in t.inputs)) for t in plan.tasks)
    predicted = plan.predicted
    if predicted is not None:
        predicted = dataclasses.replace(predicted, models={model_id: predicted.models.get(old, predicted.latency_s)},
                                        tasks=tuple(dataclasses.replace(x, id=tid(x.id)) for x in predicted.tasks))
    return plan.replace(models=(dataclasses.replace(plan.models[0], id=model_id),), tasks=tasks,
                        outputs={model_id: tuple(tid(t) for t in plan.outputs[old])}, predicted=predicted)


def merge_plans(plans: Sequence[Plan], solver: str, objective: Objective, master: str,
                meta: Mapping[str, Any] | None = None) -> Plan:
    """One plan of several one-model plans on shared devices (task ids prefixed with the model id);
    `predicted` is left for the evaluator, which charges their contention."""
    models: list[ModelEntry] = []
    tasks: list[Task] = []
    outputs: dict[str, tuple[str, ...]] = {}
    devices: dict[str, None] = {master: None}
    for plan in plans:
        mid = plan.models[0].id
        renamed = rename_model(plan, mid, f"{mid}.")
        models.extend(renamed.models)
        tasks.extend(renamed.tasks)
        outputs.update(renamed.outputs)
        devices.update(dict.fromkeys(plan.devices))
    return make_task_plan(solver, objective, tuple(devices), master, models, tasks, outputs, None,
                          {**(meta or {}), "master": master})
