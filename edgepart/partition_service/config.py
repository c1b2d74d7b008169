"""Partition and gateway configs: the standalone contract between a plan and the processes (or pods) that run it.

`render_configs` is pure: from a Plan and the base URL of every partition it
precomputes, for each partition, the pieces it will receive (sender, stage and
region of its input tile) and, for each sender, the region of its output that
each downstream partition needs (the intersection of the sender's output
region with the receiver's input region, halos included). The last stage
sends to the gateway; the gateway cuts the first stage's input regions. The
local runtime writes these configs to files; the operator mounts the same JSON
into pods. A process reads its config through `ServiceSettings`
(`EDGEPART_CONFIG` = a path to the JSON file, or the JSON itself).

Ports: a partition serves one port, internal to the deployment (pieces, the gateway's reads). The gateway
serves two: `port` for its clients and `internal_port` for the last stage's pieces and the partitions'
failure reports. Every internal request carries the deployment's secret (`secret_file`, see `auth`).
`ConnectionLimits` bounds what any connection may take: time for a request head and body, connections,
payload memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgepart.errors import EdgepartError, explain_validation
from edgepart.geometry import Region, hull_all, tiles_partition
from edgepart.graph.loader import ModelLoadError, ModelRef, input_shape_of
from edgepart.partition_service.wire import Limits
from edgepart.plan import InputRegionField, Plan, RegionField

__all__ = [
    "GATEWAY", "ConfigError", "ConnectionLimits", "DeploymentConfigs", "Endpoint", "GatewayConfig", "ModelSource",
    "PartitionConfig", "Piece", "Route", "ServiceSettings", "load_gateway_config", "load_partition_config",
    "render_configs",
]

GATEWAY = "gateway"  # sender / target name of the gateway
CONFIG_VERSION = 1


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

    sender: str = Field(min_length=1, description="Partition id of the sender, or 'gateway'.")
    stage: int = Field(ge=-1, description="Stage of the sender (-1 for the gateway's input).")
    region: InputRegionField = Field(description="Region in global coordinates of the tensor crossing the stage "
                                                 "boundary (empty: a trigger for a tile that lies in padding).")


class Route(_Base):
    """One piece a sender sends: to whom, where, and which region of its output."""

    target: str = Field(min_length=1, description="Partition id of the receiver, or 'gateway'.")
    url: Url
    region: InputRegionField = Field(description="Region of the sender's output (global coordinates) the target "
                                                 "needs (empty: only a trigger).")
    delay_s: float = Field(default=0.0, ge=0, le=60,
                           description="Emulated link latency: the sender sleeps this long before sending.")


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


class PartitionConfig(_Base):
    """Everything one partition process needs (a pod's mounted JSON, or a local process's file)."""

    kind: Literal["partition"] = "partition"
    version: Literal[1] = 1
    deployment: str = Field(min_length=1, description="Deployment name (metrics label).")
    partition: PartId = Field(description="Partition id from the plan, e.g. s0p1.")
    stage: int = Field(ge=0)
    device: str = Field(min_length=1)
    model: ModelSource
    start: int = Field(ge=0, description="First layer (a cut point).")
    stop: int = Field(gt=0, description="One past the last layer (a cut point).")
    first_layer: str = Field(description="fx node name of layer `start`; checked when the slice loads.")
    last_layer: str = Field(description="fx node name of layer `stop - 1`; checked when the slice loads.")
    input_region: InputRegionField = Field(description="Region of the stage input it needs, halo included "
                                                       "(empty when its tile lies wholly in padding).")
    output_region: RegionField
    inputs: tuple[Piece, ...] = Field(min_length=1, description="Pieces that make up the input tile.")
    outputs: tuple[Route, ...] = Field(min_length=1, description="Pieces of the output and where they go.")
    gateway_url: Url = Field(description="The gateway's internal URL: where failures (and, for the last stage, "
                                         "results) are reported.")
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(ge=0, le=65535, description="Listen port (internal to the deployment).")
    secret_file: str = Field(min_length=1, description="File holding the deployment's secret, which every "
                                                       "internal request carries.")
    connection: ConnectionLimits = Field(default_factory=ConnectionLimits)
    threads: int = Field(default=1, ge=1, le=256, description="torch intra-op threads.")
    exact_kernels: bool = Field(default=True, description="Native kernels: every tile is bit-identical to the "
                                                          "whole model (oneDNN is faster but rounds by tile size).")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    max_inflight: int = Field(default=32, ge=1, description="Requests admitted at once (backpressure beyond).")
    max_header_bytes: int = Field(default=Limits.max_header_bytes, ge=256)
    max_tensor_bytes: int = Field(default=Limits.max_tensor_bytes, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> PartitionConfig:
        if self.stop <= self.start:
            raise ValueError(f"stop: {self.stop} must be greater than start {self.start}")
        _check_tiling("inputs", [p.region for p in self.inputs], self.input_region)
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


class GatewayConfig(_Base):
    """Everything the gateway needs: where the first stage's pieces go and which pieces make the output."""

    kind: Literal["gateway"] = "gateway"
    version: Literal[1] = 1
    deployment: str = Field(min_length=1)
    model: ModelSource
    output_shape: tuple[int, ...] = Field(min_length=2, description="Full output shape, batch first.")
    routes: tuple[Route, ...] = Field(min_length=1, description="Input regions sent to the first stage.")
    inputs: tuple[Piece, ...] = Field(min_length=1, description="Pieces of the last stage that make the output.")
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
        _check_tiling("inputs", [p.region for p in self.inputs], Region.full(self.output_shape[1:]))
        full_in = Region.full(self.model.input_shape[1:])
        for i, route in enumerate(self.routes):
            if route.region.empty:
                continue
            if route.region.ndim != full_in.ndim or not full_in.contains(route.region):
                raise ValueError(f"routes[{i}].region: {route.region} is outside the input {full_in}")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.max_header_bytes, self.max_tensor_bytes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape)

    def endpoint(self, partition: str) -> Endpoint | None:
        return next((e for e in self.partitions if e.id == partition), None)


def _check_tiling(field: str, regions: list[Region], whole: Region) -> None:
    if whole.empty:
        if len(regions) != 1 or regions[0] != whole:
            raise ValueError(f"{field}: an empty region {whole} takes exactly one trigger piece of that region")
        return
    if any(r.ndim != whole.ndim or not whole.contains(r) for r in regions):
        bad = next(r for r in regions if r.ndim != whole.ndim or not whole.contains(r))
        raise ValueError(f"{field}: region {bad} is outside {whole}")
    problem = tiles_partition([r.relative_to(whole) for r in regions], whole.shape)
    if problem:
        raise ValueError(f"{field}: the pieces must tile {whole} exactly: {problem}")


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
    limits: Limits | None = None,
    gateway_device: str | None = None,
    link_delay: Callable[[str, str], float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    output_shape: tuple[int, ...] | None = None,
) -> DeploymentConfigs:
    """One config per partition plus the gateway's, for `plan` with partitions at `addresses`.

    addresses: partition id -> base URL (http://host:port); the partition listens on that
    port, on `hosts[id]` if given, else `bind_host`. gateway_url: the gateway's internal URL (the
    partitions post to it; the gateway listens on its port, on `gateway_internal_host`); clients reach
    the gateway on `client_port` (on `gateway_host`). secret_file: where every process reads the
    deployment's secret. threads: per device name, or one value.
    link_delay(from_device, to_device) -> seconds of emulated latency (0 when omitted); the
    gateway sits on `gateway_device` (default: the plan's first device, the master).
    input_shape / output_shape (batch first) default to the plan's model shape (the zoo's
    default for zoo models) and its last stage's output regions.
    """
    limits = limits or Limits()
    parts = plan.partitions
    missing = [p.id for p in parts if p.id not in addresses]
    if missing:
        raise ConfigError(f"addresses: no base URL for partitions {missing}")
    try:
        model_shape = input_shape or input_shape_of(plan.model)
    except ModelLoadError:
        raise ConfigError("model.input_shape: the plan does not record the input shape; pass input_shape"
                          ) from None
    model = ModelSource.of(plan.model, tuple(model_shape))
    batch = model.input_shape[0]
    master = gateway_device or plan.devices[0]
    delay = link_delay or (lambda a, b: 0.0)
    last = plan.stages[-1]
    out_whole = Region.full(output_shape[1:]) if output_shape else hull_all(p.output_region for p in last.partitions)
    out_shape = (batch, *out_whole.shape)

    def url(part_id: str) -> str:
        return addresses[part_id].rstrip("/")

    def routes_to(stage_index: int, source_id: str, source_region: Region, source_device: str
                  ) -> tuple[Route, ...]:
        if stage_index == len(plan.stages):
            return (Route(target=GATEWAY, url=gateway_url.rstrip("/"), region=source_region,
                          delay_s=delay(source_device, master) if source_device != master else 0.0),)
        result = []
        for target in plan.stages[stage_index].partitions:
            d = delay(source_device, target.device) if source_device != target.device else 0.0
            if target.input_region.empty:  # its tile lies in padding: the previous stage's first partition
                if source_id == plan.stages[stage_index - 1].partitions[0].id:  # triggers it
                    result.append(Route(target=target.id, url=url(target.id), region=target.input_region,
                                        delay_s=d))
                continue
            overlap = source_region.intersect(target.input_region)
            if not overlap.empty:
                result.append(Route(target=target.id, url=url(target.id), region=overlap, delay_s=d))
        return tuple(result)

    def pieces_for(stage_index: int, region: Region) -> tuple[Piece, ...]:
        if stage_index == 0:
            return (Piece(sender=GATEWAY, stage=-1, region=region),)
        if region.empty:
            trigger = plan.stages[stage_index - 1].partitions[0]
            return (Piece(sender=trigger.id, stage=stage_index - 1, region=region),)
        result = []
        for source in plan.stages[stage_index - 1].partitions:
            overlap = source.output_region.intersect(region)
            if not overlap.empty:
                result.append(Piece(sender=source.id, stage=stage_index - 1, region=overlap))
        return tuple(result)

    def threads_of(device: str) -> int:
        return threads if isinstance(threads, int) else max(1, int(threads.get(device, 1)))

    configs = []
    for stage in plan.stages:
        for part in stage.partitions:
            host = (hosts or {}).get(part.id, bind_host)
            try:
                configs.append(PartitionConfig(
                    deployment=deployment, partition=part.id, stage=stage.index, device=part.device, model=model,
                    start=stage.start, stop=stage.stop, first_layer=stage.first_layer, last_layer=stage.last_layer,
                    input_region=part.input_region, output_region=part.output_region,
                    inputs=pieces_for(stage.index, part.input_region),
                    outputs=routes_to(stage.index + 1, part.id, part.output_region, part.device),
                    gateway_url=gateway_url.rstrip("/"), host=host,
                    port=_port(addresses[part.id], f"addresses[{part.id}]"),
                    threads=threads_of(part.device), request_timeout_s=request_timeout_s,
                    max_inflight=2 * max_inflight, max_header_bytes=limits.max_header_bytes,
                    max_tensor_bytes=limits.max_tensor_bytes, secret_file=secret_file,
                    connection=connection or ConnectionLimits(),
                ))
            except ValidationError as err:
                raise ConfigError(f"partition {part.id}: {explain_validation(err)}") from None
    first = plan.stages[0]
    gateway_routes = tuple(
        Route(target=p.id, url=url(p.id), region=p.input_region,
              delay_s=delay(master, p.device) if p.device != master else 0.0)
        for p in first.partitions
    )
    endpoints = tuple(Endpoint(id=p.id, device=p.device, stage=s.index, url=url(p.id))
                      for s in plan.stages for p in s.partitions)
    predicted = plan.predicted
    try:
        gateway = GatewayConfig(
            deployment=deployment, model=model, output_shape=out_shape, routes=gateway_routes,
            inputs=pieces_for(len(plan.stages), out_whole), partitions=endpoints, stages=len(plan.stages),
            host=gateway_host, port=client_port, internal_host=gateway_internal_host,
            internal_port=_port(gateway_url, "gateway_url"), secret_file=secret_file,
            connection=connection or ConnectionLimits(), request_timeout_s=request_timeout_s,
            max_inflight=max_inflight, max_queue=max_queue, max_header_bytes=limits.max_header_bytes,
            max_tensor_bytes=limits.max_tensor_bytes,
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
