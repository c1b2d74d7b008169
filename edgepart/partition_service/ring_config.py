"""Ring-worker configs: several data sources sharing a ring of workers (seed 001, SOLVERS.md §7).

A deployment that names `sources` runs one ring worker per device instead of a plan's partitions. Each
worker's config says who is on the ring (name, URL, emulated hop latency), which of them are sources, the
scheduler (`ms-mdi`, `ar-mdi`, `local`), and every worker's per-parameter delay γ. From γ each worker
computes every source's AR-MDI allocation itself, with the policy package's one implementation
(`ar_mdi_allocation`): the same γ gives the same layer ranges everywhere, so a worker knows which layers of
which source's images it runs, and where the activation goes next, without asking anyone.

`render_ring_configs` is pure: γ comes from each worker's predicted whole-model time (the cost model's, which
the caller reads) over the model's parameters, the prior the simulator starts from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgepart.errors import explain_validation
from edgepart.graph.layer_graph import LayerGraph
from edgepart.partition_service.config import (
    ConfigError,
    ConnectionLimits,
    ModelSource,
    PartId,
    Url,
)
from edgepart.partition_service.wire import Limits
from edgepart.policy.allocation import RingAllocation, UnitTable, ar_mdi_allocation
from edgepart.policy.scheduling import SCHEDULERS, SchedulerName

__all__ = ["RingPeer", "RingWorkerConfig", "gamma_of", "load_ring_config", "render_ring_configs"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RingPeer(_Base):
    """One worker on the ring, as the others reach it."""

    name: PartId = Field(description="Device name of the worker.")
    url: Url
    delay_s: float = Field(default=0.0, ge=0, le=60, description="Emulated latency of a hop to this worker: the "
                                                                "sender sleeps this long before sending.")


class RingWorkerConfig(_Base):
    """Everything one ring-worker process needs (a pod's mounted JSON, or a local process's file)."""

    kind: Literal["ring-worker"] = "ring-worker"
    deployment: str = Field(min_length=1, description="Deployment name (metrics label).")
    worker: PartId = Field(description="This worker's name: one of `ring`.")
    model: ModelSource
    ring: tuple[RingPeer, ...] = Field(min_length=1, description="The workers in ring order; activations go "
                                                                  "from each to the next.")
    sources: tuple[PartId, ...] = Field(min_length=1, description="Workers that produce images, in order.")
    scheduler: SchedulerName = Field(default="ms-mdi", description="ms-mdi, ar-mdi or local.")
    gamma: dict[str, float] = Field(description="Per-parameter compute delay of every worker (seconds per "
                                                "parameter): the AR-MDI allocation's input.")
    strict: bool = Field(default=False, description="Strict backpressure: serve only positive weights.")
    max_report_age_s: float | None = Field(default=None, gt=0, description="Queue reports older than this are "
                                                                            "not trusted (None: all are).")
    queue_bound: int = Field(default=16, ge=1, le=1 << 16, description="Images per queue; an arrival or an "
                                                                       "activation beyond gets 503.")
    heartbeat_s: float = Field(default=0.5, gt=0, le=60, description="Period of queue-length reports to "
                                                                      "every other worker.")
    retry_s: float = Field(default=0.02, gt=0, le=10, description="Wait before resending an activation the "
                                                                  "next worker refused (its queue was full).")
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(ge=0, le=65535, description="Listen port (every path but probes and /metrics needs the "
                                                  "deployment's secret).")
    client_port: int | None = Field(default=None, ge=1, le=65535, description="Port of an inherited socket "
                                    "where the same app also serves (an emulated device's clients on the host).")
    secret_file: str = Field(min_length=1, description="File holding the deployment's secret.")
    connection: ConnectionLimits = Field(default_factory=ConnectionLimits)
    threads: int = Field(default=1, ge=1, le=256, description="torch intra-op threads.")
    exact_kernels: bool = Field(default=False, description="Native kernels (bit-identical to the whole model) "
                                                           "instead of the fastest (oneDNN).")
    request_timeout_s: float = Field(default=120.0, gt=0, description="How long a source holds a client's "
                                                                      "image before answering 504.")
    max_header_bytes: int = Field(default=Limits.max_header_bytes, ge=256)
    max_tensor_bytes: int = Field(default=Limits.max_tensor_bytes, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> RingWorkerConfig:
        names = [p.name for p in self.ring]
        if len(set(names)) != len(names):
            raise ValueError(f"ring: workers must be distinct, got {names}")
        if self.worker not in names:
            raise ValueError(f"worker: {self.worker!r} is not on the ring {names}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources: each worker may be one source, got {list(self.sources)}")
        for s in self.sources:
            if s not in names:
                raise ValueError(f"sources: {s!r} is not on the ring {names}")
        missing = [n for n in names if n not in self.gamma]
        if missing:
            raise ValueError(f"gamma: no per-parameter delay for workers {missing}")
        for n, g in self.gamma.items():
            if not g > 0:
                raise ValueError(f"gamma.{n}: must be > 0, got {g}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.ring)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_header_bytes, self.max_tensor_bytes)

    @property
    def is_source(self) -> bool:
        return self.worker in self.sources

    def peer(self, name: str) -> RingPeer:
        for p in self.ring:
            if p.name == name:
                return p
        raise ConfigError(f"ring: no worker {name!r}")

    def allocations(self, graph: LayerGraph) -> dict[str, RingAllocation]:
        """Every source's AR-MDI allocation, the same at every worker of the ring."""
        table = UnitTable.of(graph)
        return {s: ar_mdi_allocation(table, self.gamma, self.names, s) for s in self.sources}


def gamma_of(graph: LayerGraph, whole_s: Mapping[str, float], ring: Sequence[str]) -> dict[str, float]:
    """γ_n = predicted whole-model seconds on n (`whole_s`, from the cost model) over the model's parameters:
    the simulator's prior."""
    total = max(UnitTable.of(graph).total, 1)
    return {w: whole_s[w] / total for w in ring}


def render_ring_configs(graph: LayerGraph, whole_s: Mapping[str, float], deployment: str, model: ModelSource,
                        ring: Sequence[str], sources: Sequence[str], addresses: Mapping[str, str], *,
                        scheduler: str, secret_file: str, queue_bound: int = 16, heartbeat_s: float = 0.5,
                        hosts: Mapping[str, str] | None = None, bind_host: str = "127.0.0.1",
                        ports: Mapping[str, int] | None = None, delays: Mapping[str, float] | None = None,
                        threads: Mapping[str, int] | None = None, strict: bool = False,
                        client_ports: Mapping[str, int] | None = None,
                        connection: ConnectionLimits | None = None,
                        request_timeout_s: float = 120.0, exact_kernels: bool = False
                        ) -> tuple[RingWorkerConfig, ...]:
    """One config per ring worker (pure): `addresses[w]` is how the others reach w, `ports[w]` (default: the
    address's port) where it listens, `delays[w]` the emulated latency of a hop to w."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler: expected one of {list(SCHEDULERS)}, got {scheduler!r}")
    gamma = gamma_of(graph, whole_s, ring)
    peers = tuple(RingPeer(name=w, url=addresses[w], delay_s=(delays or {}).get(w, 0.0)) for w in ring)
    configs = []
    for w in ring:
        port = (ports or {}).get(w) or int(addresses[w].rsplit(":", 1)[1].split("/")[0])
        try:
            configs.append(RingWorkerConfig(
                deployment=deployment, worker=w, model=model, ring=peers, sources=tuple(sources),
                scheduler=scheduler,
                gamma=gamma, strict=strict, queue_bound=queue_bound, heartbeat_s=heartbeat_s,
                host=(hosts or {}).get(w, bind_host), port=port, secret_file=secret_file,
                client_port=(client_ports or {}).get(w),
                connection=connection or ConnectionLimits(), threads=(threads or {}).get(w, 1),
                request_timeout_s=request_timeout_s, exact_kernels=exact_kernels))
        except ValidationError as err:
            raise ConfigError(f"ring worker {w}: {explain_validation(err)}") from None
    return tuple(configs)


def load_ring_config(text: str) -> RingWorkerConfig:
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict) or data.get("kind") != "ring-worker":
        raise ConfigError(f"kind: expected 'ring-worker', got {data.get('kind') if isinstance(data, dict) else None!r}")
    try:
        return RingWorkerConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation(err)) from None
