"""Partition and gateway configs: the standalone contract between a plan and the processes (or pods) that run it.

`render_configs` is pure: from a Plan (a task graph) and the base URL of every
task it precomputes, for each task (one partition process each), the pieces it
will receive (sender, stage and region of its input buffer: the regions its plan
inputs read, made disjoint where producers overlap) and, for each producer, the
region of its output each consumer reads. The tasks that deliver a model's
output send it to the gateway; the gateway cuts the input regions of every task
that reads a model's input. The local runtime writes these configs to files;
the operator mounts the same JSON into pods. A process reads its config through `ServiceSettings`
(`EDGEPART_CONFIG` = a path to the JSON file, or the JSON itself).

Ports: a partition serves one port, internal to the deployment (pieces, the gateway's reads). The gateway
serves two: `port` for its clients and `internal_port` for the last stage's pieces and the partitions'
failure reports. Every internal request carries the deployment's secret (`secret_file`, see `auth`).
`ConnectionLimits` bounds what any connection may take: time for a request head and body, connections,
payload memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgepart.codec import WireFormat
from edgepart.errors import EdgepartError, explain_validation
from edgepart.geometry import Region, disjoint_cover, hull_all
from edgepart.graph.loader import ModelLoadError, ModelRef, input_shape_of
from edgepart.partition_service.admission import AdmissionMode
from edgepart.partition_service.turnstile import TurnConfig, turn_configs
from edgepart.partition_service.wire import Limits
from edgepart.plan import (
    INPUT,
    InputRegionField,
    Plan,
    RegionField,
    Task,
    WireCodec,
    WireDtype,
    topological_tasks,
)

__all__ = [
    "GATEWAY", "ConfigError", "ConnectionLimits", "DeploymentConfigs", "Endpoint", "GatewayConfig", "GatewayModel",
    "ModelSource", "PartitionConfig", "Piece", "Route", "ServiceSettings", "load_gateway_config",
    "load_partition_config", "render_configs",
]

GATEWAY = "gateway"  # sender / target name of the gateway
CONFIG_VERSION = 2


class ConfigError(EdgepartError, ValueError):
    """A partition or gateway config that cannot be used; the message names the field."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PartId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", description="Base URL, e.g. http://10.0.0.5:8000")]


class ModelSource(_Base):
    """How to rebuild the model identically in any process (see `ModelRef`)."""

    name: str = Field(min_length=1, description="Zoo name, package.module:factory or path/to/file.py:factory.")
    input_shape: tuple[int, int, int, int] = Field(description="N, C, H, W of the model input.")
    weights: str | None = Field(default=None, description="safetensors file; only this slice's tensors are read.")
    seed: int = Field(default=0, ge=0, description="Seed of the deterministic weights when no file is given.")

    @staticmethod
    def of(ref: ModelRef, input_shape: tuple[int, ...]) -> ModelSource:
        if len(input_shape) != 4:
            raise ConfigError(f"model.input_shape: expected N,C,H,W, got {list(input_shape)}")
        n, c, h, w = input_shape
        return ModelSource(name=ref.name, input_shape=(n, c, h, w), weights=ref.weights, seed=ref.seed)

    def ref(self) -> ModelRef:
        return ModelRef(self.name, tuple(self.input_shape), self.weights, self.seed)


class Piece(_Base):
    """One piece a receiver waits for: who sends it and which region of the receiver's tensor it covers."""

    sender: str = Field(min_length=1, description="Task id of the sender, or 'gateway'.")
    stage: int = Field(ge=-1, description="Stage of the sender (-1 for the gateway's input).")
    region: InputRegionField = Field(description="Region in global coordinates of the tensor crossing the "
                                                 "receiver's first cut (empty: a trigger for a tile that lies in "
                                                 "padding).")


class Route(_Base):
    """One piece a sender sends: to whom, where, and which region of its output."""

    target: str = Field(min_length=1, description="Task id of the receiver, or 'gateway'.")
    url: Url
    region: InputRegionField = Field(description="Region of the sender's output (global coordinates) the target "
                                                 "needs (empty: only a trigger).")
    delay_s: float = Field(default=0.0, ge=0, le=60,
                           description="Emulated link latency: the sender sleeps this long before sending.")
    codec: WireCodec = Field(default="none", description="Lossless codec of the piece on the wire (the plan's).")
    wire_dtype: WireDtype = Field(default="float32", description="float16: a float32 piece travels as float16.")

    @property
    def wire(self) -> WireFormat:
        return WireFormat(self.codec, self.wire_dtype)


class ConnectionLimits(_Base):
    """What one connection may take from a process (every port, the client's and the internal one)."""

    head_timeout_s: float = Field(default=10.0, gt=0, le=3600, description="A request head must be complete "
                                  "this long after its first byte (else 408 and the connection closes).")
    keep_alive_s: float = Field(default=120.0, gt=0, le=86400, description="An idle connection closes after this "
                                "long, a partial head included.")
    body_timeout_s: float = Field(default=30.0, gt=0, le=86400, description="Time a request body gets besides "
                                  "what its bytes earn at min_body_rate (else 408 and the connection closes).")
    min_body_rate: int = Field(default=64 * 1024, ge=1, description="Slowest body accepted, bytes per second: "
                               "every min_body_rate bytes that arrive buy a body one more second, so a sender "
                               "slower than this holds no buffer or assembly slot for long.")
    max_connections: int = Field(default=1024, ge=1, le=1 << 20, description="Open connections per listening "
                                 "port; a connection beyond gets 503 and is closed at once.")
    max_payload_bytes: int = Field(default=1 << 30, ge=1, description="Payload memory in flight per process "
                                   "(received, not yet handed on); beyond, 503 before anything is allocated.")

    def body_allowance_s(self, received: int) -> float:
        """Seconds a body may have taken once `received` of its bytes are in."""
        return self.body_timeout_s + received / self.min_body_rate


class Endpoint(_Base):
    id: PartId
    device: str
    stage: int = Field(ge=0)
    url: Url
    model: str = Field(default="", description="Model id of the task.")


class PartitionConfig(_Base):
    """Everything one partition process needs (a pod's mounted JSON, or a local process's file)."""

    kind: Literal["partition"] = "partition"
    version: Literal[2] = 2
    deployment: str = Field(min_length=1, description="Deployment name (metrics label).")
    partition: PartId = Field(description="Task id from the plan, e.g. s0p1.")
    stage: int = Field(ge=0, description="The task's stage (its plan hint, else its depth in the task graph).")
    device: str = Field(min_length=1)
    model_id: str = Field(default="", description="Model id in the plan.")
    model: ModelSource
    start: int = Field(ge=0, description="First layer (a cut point).")
    stop: int = Field(ge=0, description="One past the last layer (a cut point); = start: a relay.")
    first_layer: str | None = Field(default=None, description="fx node name of layer `start`; checked when the "
                                                              "slice loads.")
    last_layer: str | None = Field(default=None, description="fx node name of layer `stop - 1`; checked when "
                                                             "the slice loads.")
    input_region: InputRegionField = Field(description="Region of the input buffer: the hull of what it reads, "
                                                       "the layers' need (halo included) inside it (empty when "
                                                       "its tile lies wholly in padding).")
    output_region: RegionField
    inputs: tuple[Piece, ...] = Field(min_length=1, description="Disjoint pieces that fill the input buffer.")
    outputs: tuple[Route, ...] = Field(min_length=1, description="Pieces of the output and where they go.")
    gateway_url: Url = Field(description="The gateway's internal URL: where failures (and, for the last stage, "
                                         "results) are reported.")
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(ge=0, le=65535, description="Listen port (internal to the deployment).")
    secret_file: str = Field(min_length=1, description="File holding the deployment's secret, which every "
                                                       "internal request carries.")
    connection: ConnectionLimits = Field(default_factory=ConnectionLimits)
    threads: int = Field(default=1, ge=1, le=256, description="torch intra-op threads.")
    exact_kernels: bool = Field(default=False, description="Native kernels: every tile is bit-identical to the "
                                                           "whole model (the default, oneDNN, is faster but rounds "
                                                           "by tile size).")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    max_inflight: int = Field(default=32, ge=1, description="Requests admitted at once (backpressure beyond).")
    max_header_bytes: int = Field(default=Limits.max_header_bytes, ge=256)
    max_tensor_bytes: int = Field(default=Limits.max_tensor_bytes, ge=1)
    turn: TurnConfig | None = Field(default=None, description="Its place among the partitions of its device that "
                                                              "take turns (plans with meta.turns; see turnstile).")

    @model_validator(mode="after")
    def _consistent(self) -> PartitionConfig:
        if self.stop < self.start:
            raise ValueError(f"stop: {self.stop} must not be before start {self.start}")
        _check_pieces("inputs", self.inputs, self.input_region)
        for i, route in enumerate(self.outputs):
            if route.region.empty:
                continue
            if route.region.ndim != self.output_region.ndim or not self.output_region.contains(route.region):
                raise ValueError(f"outputs[{i}].region: {route.region} is not inside the output region "
                                 f"{self.output_region}")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.max_header_bytes, self.max_tensor_bytes)

    @property
    def batch(self) -> int:
        return self.model.input_shape[0]


class GatewayModel(_Base):
    """One model the gateway serves: where its input goes and which pieces make its output."""

    id: str = Field(min_length=1, description="Model id in the plan (POST /v1/models/{id}/infer).")
    model: ModelSource
    output_shape: tuple[int, ...] = Field(min_length=2, description="Full output shape, batch first.")
    routes: tuple[Route, ...] = Field(min_length=1, description="Input regions sent to the tasks that read the input.")
    inputs: tuple[Piece, ...] = Field(min_length=1, description="Pieces of the output tasks that make the output.")
    predicted_latency_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> GatewayModel:
        _check_pieces("inputs", self.inputs, Region.full(self.output_shape[1:]), exact=True)
        full_in = Region.full(self.model.input_shape[1:])
        for i, route in enumerate(self.routes):
            if route.region.empty:
                continue
            if route.region.ndim != full_in.ndim or not full_in.contains(route.region):
                raise ValueError(f"routes[{i}].region: {route.region} is outside the input {full_in}")
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape)


class GatewayConfig(_Base):
    """Everything the gateway needs: where each model's input goes and which pieces make its output."""

    kind: Literal["gateway"] = "gateway"
    version: Literal[2] = 2
    deployment: str = Field(min_length=1)
    models: tuple[GatewayModel, ...] = Field(min_length=1)
    partitions: tuple[Endpoint, ...] = Field(min_length=1)
    stages: int = Field(ge=1)
    host: str = Field(default="0.0.0.0", description="Listen address for clients.")
    port: int = Field(ge=0, le=65535, description="Listen port for clients.")
    internal_host: str = Field(default="0.0.0.0", description="Listen address for the partitions.")
    internal_port: int = Field(ge=0, le=65535, description="Listen port for the partitions (pieces of the output, "
                                                           "failure reports), internal to the deployment.")
    secret_file: str = Field(min_length=1, description="File holding the deployment's secret, which every "
                                                       "internal request carries.")
    connection: ConnectionLimits = Field(default_factory=ConnectionLimits)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_inflight: int = Field(default=16, ge=1, description="Requests in the pipeline at once; more wait.")
    max_queue: int = Field(default=256, ge=0, description="Requests waiting for room; beyond, 503 at once.")
    admission: AdmissionMode = Field(default="auto", description="auto: admit only what the deployment can answer "
                                     "within the request timeout (measured), 503 with Retry-After beyond; off: "
                                     "max_inflight + max_queue only.")
    peer_timeout_s: float = Field(default=2.0, ge=0, description="A partition that answers no ping of the gateway's "
                                  "watch for this long is unreachable (0: no pings).")
    max_header_bytes: int = Field(default=Limits.max_header_bytes, ge=256)
    max_tensor_bytes: int = Field(default=Limits.max_tensor_bytes, ge=1)
    max_json_bytes: int = Field(default=16 * 1024 * 1024, ge=1, description="Largest JSON request body.")
    predicted_latency_s: float | None = Field(default=None, ge=0)
    predicted_throughput_per_s: float | None = Field(default=None, ge=0)
    plan: dict[str, Any] | None = Field(default=None, description="The plan JSON (served at /v1/plan).")

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.port == self.internal_port and self.port != 0 and self.host == self.internal_host:
            raise ValueError(f"internal_port: {self.internal_port} must differ from the client port")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"models: duplicate model ids {ids}")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.max_header_bytes, self.max_tensor_bytes)

    def served(self, model_id: str | None = None) -> GatewayModel:
        """The model `model_id`, or the only one; ConfigError naming the choices otherwise."""
        if model_id is None:
            if len(self.models) != 1:
                raise ConfigError(f"this deployment serves {len(self.models)} models "
                                  f"({', '.join(m.id for m in self.models)}): name one")
            return self.models[0]
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise ConfigError(f"unknown model {model_id!r}; this deployment serves {', '.join(m.id for m in self.models)}")

    @property
    def model(self) -> ModelSource:
        return self.served().model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.served().input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.served().output_shape

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.served().routes

    @property
    def inputs(self) -> tuple[Piece, ...]:
        return self.served().inputs

    def endpoint(self, partition: str) -> Endpoint | None:
        return next((e for e in self.partitions if e.id == partition), None)


def _check_pieces(field: str, pieces: Sequence[Piece], whole: Region, exact: bool = False) -> None:
    """Pieces lie inside `whole` and are disjoint (one per sender and region); `exact`: they tile it."""
    regions = [p.region for p in pieces]
    if whole.empty:
        if any(r != whole for r in regions):
            raise ValueError(f"{field}: an empty region {whole} takes only trigger pieces of that region")
        return
    keys = [(p.sender, p.region) for p in pieces]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{field}: two pieces from the same sender cover the same region")
    filled = [r for r in regions if not r.empty]
    for r in filled:
        if r.ndim != whole.ndim or not whole.contains(r):
            raise ValueError(f"{field}: region {r} is outside {whole}")
    for i, a in enumerate(filled):
        for b in filled[:i]:
            if not a.intersect(b).empty:
                raise ValueError(f"{field}: pieces overlap ({b} and {a})")
    if exact and sum(r.size for r in filled) != whole.size:
        raise ValueError(f"{field}: the pieces cover {sum(r.size for r in filled)} of the {whole.size} elements "
                         f"of {whole}")


class DeploymentConfigs(_Base):
    gateway: GatewayConfig
    partitions: tuple[PartitionConfig, ...]

    def partition(self, partition_id: str) -> PartitionConfig:
        for config in self.partitions:
            if config.partition == partition_id:
                return config
        raise KeyError(partition_id)


def _port(url: str, field: str) -> int:
    try:
        port = urlsplit(url).port
    except ValueError as err:
        raise ConfigError(f"{field}: {url!r}: {err}") from None
    if port is None:
        raise ConfigError(f"{field}: {url!r} must name a port, e.g. http://host:8000")
    return port


def task_stages(plan: Plan) -> dict[str, int]:
    """Each task's stage: its plan hint, else its depth in the task graph counting compute tasks only
    (readers of the input: 0); a relay belongs to the stage it gathers."""
    depth: dict[str, int] = {}
    for task in topological_tasks(plan):
        before = max((depth[p] for p in task.producers), default=-1)
        depth[task.id] = before if task.relay else before + 1
    result: dict[str, int] = {}
    for task in topological_tasks(plan):
        if task.relay:
            result[task.id] = max((result[p] for p in task.producers), default=0)
        else:
            result[task.id] = task.stage if task.stage is not None else max(depth[task.id], 0)
    return result


def input_pieces(task: Task, stages: Mapping[str, int]) -> tuple[Region, tuple[Piece, ...]]:
    """The task's input buffer (the hull of what it reads) and the disjoint pieces that fill it."""
    regions = [i.region for i in task.inputs]
    filled = [r for r in regions if not r.empty]
    buffer = hull_all(filled) if filled else regions[0]
    pieces: list[Piece] = []
    for item, parts in zip(task.inputs, disjoint_cover(regions), strict=True):
        if item.region.empty and filled:
            continue  # a trigger is needed only when the task reads no data at all
        sender = GATEWAY if item.source == INPUT else item.source
        stage = -1 if item.source == INPUT else stages[item.source]
        pieces.extend(Piece(sender=sender, stage=stage, region=part) for part in parts)
    return buffer, tuple(dict.fromkeys(pieces))


class _WireFields(TypedDict):
    codec: WireCodec
    wire_dtype: WireDtype


def _wire_fields(task: Task, source: str) -> _WireFields:
    """The codec and wire dtype the plan gives what `task` reads from `source` (its first such input)."""
    item = next(i for i in task.inputs if i.source == source)
    return {"codec": item.codec, "wire_dtype": item.wire_dtype}


def render_configs(
    plan: Plan,
    deployment: str,
    addresses: Mapping[str, str],
    gateway_url: str,
    *,
    client_port: int,
    secret_file: str,
    hosts: Mapping[str, str] | None = None,
    bind_host: str = "0.0.0.0",
    gateway_host: str = "0.0.0.0",
    gateway_internal_host: str = "0.0.0.0",
    connection: ConnectionLimits | None = None,
    threads: Mapping[str, int] | int = 1,
    request_timeout_s: float = 30.0,
    max_inflight: int = 16,
    max_queue: int = 256,
    admission: AdmissionMode = "auto",
    peer_timeout_s: float = 2.0,
    limits: Limits | None = None,
    gateway_device: str | None = None,
    link_delay: Callable[[str, str], float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    output_shape: tuple[int, ...] | None = None,
    exact_kernels: bool = False,
) -> DeploymentConfigs:
    """One config per task plus the gateway's, for `plan` with tasks at `addresses`.

    addresses: task id -> base URL (http://host:port); the task listens on that port, on
    `hosts[id]` if given, else `bind_host`. gateway_url: the gateway's internal URL (the tasks post
    to it; the gateway listens on its port, on `gateway_internal_host`); clients reach the gateway on
    `client_port` (on `gateway_host`). secret_file: where every process reads the deployment's
    secret. threads: per device name, or one value.
    link_delay(from_device, to_device) -> seconds of emulated latency (0 when omitted); the
    gateway sits on `gateway_device` (default: the plan's master). input_shape / output_shape
    (batch first) of a one-model plan default to the model's shape (the zoo's default for zoo
    models) and the hull of its output tasks' regions. exact_kernels: the partitions run native kernels
    (bit-exact tiles) instead of the fastest ones.
    """
    limits = limits or Limits()
    missing = [t.id for t in plan.tasks if t.id not in addresses]
    if missing:
        raise ConfigError(f"addresses: no base URL for tasks {missing}")
    if len(plan.models) > 1 and (input_shape is not None or output_shape is not None):
        raise ConfigError("input_shape / output_shape: only for a one-model plan (each model records its own)")
    sources: dict[str, ModelSource] = {}
    for entry in plan.models:
        try:
            shape = input_shape or input_shape_of(entry.ref)
        except ModelLoadError:
            raise ConfigError(f"models[{entry.id}].input_shape: the plan does not record the input shape; pass "
                              "input_shape") from None
        sources[entry.id] = ModelSource.of(entry.ref, tuple(shape))
    master = gateway_device or plan.master
    delay = link_delay or (lambda a, b: 0.0)
    stages = task_stages(plan)
    by_id = {t.id: t for t in plan.tasks}

    def url(task_id: str) -> str:
        return addresses[task_id].rstrip("/")

    def hop_delay(source: str, target: str) -> float:
        return delay(source, target) if source != target else 0.0

    def threads_of(device: str) -> int:
        return threads if isinstance(threads, int) else max(1, int(threads.get(device, 1)))

    buffers = {t.id: input_pieces(t, stages) for t in plan.tasks}
    gateway_pieces: dict[str, tuple[Piece, ...]] = {}
    for mid, ids in plan.outputs.items():
        regions = [by_id[t].output for t in ids]
        gateway_pieces[mid] = tuple(Piece(sender=tid, stage=stages[tid], region=part)
                                    for tid, parts in zip(ids, disjoint_cover(regions), strict=True)
                                    for part in parts)
    routes: dict[str, list[Route]] = {t.id: [] for t in plan.tasks}
    gateway_routes: dict[str, list[Route]] = {m.id: [] for m in plan.models}
    for task in plan.tasks:
        for piece in buffers[task.id][1]:
            if piece.sender == GATEWAY:
                gateway_routes[task.model].append(Route(target=task.id, url=url(task.id), region=piece.region,
                                                        delay_s=hop_delay(master, task.device),
                                                        **_wire_fields(task, INPUT)))
            else:
                sender = by_id[piece.sender]
                routes[sender.id].append(Route(target=task.id, url=url(task.id), region=piece.region,
                                               delay_s=hop_delay(sender.device, task.device),
                                               **_wire_fields(task, sender.id)))
    for pieces in gateway_pieces.values():
        for piece in pieces:
            sender = by_id[piece.sender]
            routes[sender.id].append(Route(target=GATEWAY, url=gateway_url.rstrip("/"), region=piece.region,
                                           delay_s=hop_delay(sender.device, master)))

    turns = turn_configs(plan, {t.id: url(t.id) for t in plan.tasks}, request_timeout_s)
    configs = []
    for task in plan.tasks:
        host = (hosts or {}).get(task.id, bind_host)
        buffer, pieces = buffers[task.id]
        try:
            configs.append(PartitionConfig(
                deployment=deployment, partition=task.id, stage=stages[task.id], device=task.device,
                model_id=task.model, model=sources[task.model], start=task.start, stop=task.stop,
                first_layer=task.first_layer, last_layer=task.last_layer, input_region=buffer,
                output_region=task.output, inputs=pieces, outputs=tuple(routes[task.id]),
                gateway_url=gateway_url.rstrip("/"), host=host, port=_port(addresses[task.id], f"addresses[{task.id}]"),
                threads=threads_of(task.device), request_timeout_s=request_timeout_s,
                max_inflight=2 * max_inflight, max_header_bytes=limits.max_header_bytes,
                max_tensor_bytes=limits.max_tensor_bytes, secret_file=secret_file,
                connection=connection or ConnectionLimits(), turn=turns.get(task.id), exact_kernels=exact_kernels,
            ))
        except ValidationError as err:
            raise ConfigError(f"partition {task.id}: {explain_validation(err)}") from None
    endpoints = tuple(Endpoint(id=t.id, device=t.device, stage=stages[t.id], url=url(t.id), model=t.model)
                      for t in plan.tasks)
    predicted = plan.predicted
    models = []
    for entry in plan.models:
        source = sources[entry.id]
        outputs = [by_id[t].output for t in plan.outputs[entry.id]]
        whole = Region.full(output_shape[1:]) if output_shape else hull_all(outputs)
        try:
            models.append(GatewayModel(
                id=entry.id, model=source, output_shape=(source.input_shape[0], *whole.shape),
                routes=tuple(gateway_routes[entry.id]), inputs=gateway_pieces[entry.id],
                predicted_latency_s=predicted.models.get(entry.id) if predicted else None))
        except ValidationError as err:
            raise ConfigError(f"gateway: model {entry.id}: {explain_validation(err)}") from None
    try:
        gateway = GatewayConfig(
            deployment=deployment, models=tuple(models), partitions=endpoints,
            stages=len({stages[t.id] for t in plan.compute_tasks}),
            host=gateway_host, port=client_port, internal_host=gateway_internal_host,
            internal_port=_port(gateway_url, "gateway_url"), secret_file=secret_file,
            connection=connection or ConnectionLimits(), request_timeout_s=request_timeout_s,
            max_inflight=max_inflight, max_queue=max_queue, admission=admission,
            peer_timeout_s=peer_timeout_s, max_header_bytes=limits.max_header_bytes, max_tensor_bytes=limits.max_tensor_bytes,
            predicted_latency_s=predicted.latency_s if predicted else None,
            predicted_throughput_per_s=predicted.throughput_per_s if predicted else None,
            plan=plan.to_dict(),
        )
    except ValidationError as err:
        raise ConfigError(f"gateway: {explain_validation(err)}") from None
    return DeploymentConfigs(gateway=gateway, partitions=tuple(configs))


# ---------------------------------------------------------------- settings


class ServiceSettings(BaseSettings):
    """Process settings, from the environment (prefix EDGEPART_)."""

    model_config = SettingsConfigDict(env_prefix="EDGEPART_", extra="ignore")

    config: str = Field(description="Path to the partition or gateway config JSON, or the JSON itself.")
    listen_fds: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(), description="Inherited listening sockets (comma-separated fds). Each serves the port of the "
                                "config it is bound to (the gateway's client or internal port); a port no "
                                "inherited socket serves is bound from the config.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="warning")

    @field_validator("listen_fds", mode="before")
    @classmethod
    def _split_fds(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        return value

    def config_text(self) -> str:
        text = self.config.strip()
        if text.startswith("{"):
            return text
        try:
            return Path(text).read_text()
        except OSError as err:
            raise ConfigError(f"EDGEPART_CONFIG: cannot read {text}: {err.strerror}") from None


def _load(model: type[PartitionConfig] | type[GatewayConfig], text: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    kind = data.get("kind")
    expected = model.model_fields["kind"].default
    if kind != expected:
        raise ConfigError(f"kind: expected {expected!r}, got {kind!r}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation(err)) from None


def load_partition_config(text: str) -> PartitionConfig:
    result: PartitionConfig = _load(PartitionConfig, text)
    return result


def load_gateway_config(text: str) -> GatewayConfig:
    result: GatewayConfig = _load(GatewayConfig, text)
    return result
