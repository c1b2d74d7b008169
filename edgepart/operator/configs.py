"""The seam between the operator and the data plane's partition configs.

Partition and gateway configs are the data plane's contract
(`edgepart.partition_service.config.render_configs`); the operator mounts them
from a ConfigMap. The operator package must not import the data plane (it
never executes a model), so the renderer is injected by the composition root
(`edgepart.cli`, or a test) as a `ConfigRenderer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.plan import Plan


@dataclass(frozen=True)
class ConfigRequest:
    plan: Plan
    deployment: str
    addresses: Mapping[str, str]  # partition id -> base URL (http://service.namespace.svc:port)
    gateway_url: str
    gateway_device: str  # node of the gateway (the master)
    request_timeout_s: float
    client_port: int  # the gateway's port for its clients (gateway_url is its internal one)
    secret_file: str  # where pods find the deployment's secret (a mounted Secret)
    threads: Mapping[str, int] = field(default_factory=dict)  # node -> torch threads
    exact_kernels: bool = False  # spec.exactKernels: native kernels instead of the fastest
    admission: Literal["auto", "off"] = "auto"  # the gateway's admission (spec.admission)
    peer_timeout_s: float = 2.0  # the gateway's watch declares a silent partition unreachable (spec.peerTimeout)


@dataclass(frozen=True)
class RenderedConfigs:
    gateway: str  # gateway config JSON
    partitions: Mapping[str, str]  # partition id -> partition config JSON


@dataclass(frozen=True)
class VariantConfigRequest:
    """Accuracy-aware data partitioning: the dispatcher's config (as `gateway`) and one worker's per node (as
    `partitions`, by worker id)."""

    deployment: str
    spec: Mapping[str, Any]  # the deployment's spec (camelCase) with the usable nodes as inline devices
    family: Mapping[str, Any]  # the variant family (camelCase), weights paths as the pods see them
    input_shape: tuple[int, ...]  # one image
    workers: Mapping[str, str]  # node -> worker id
    worker_urls: Mapping[str, str]  # node -> base URL of its worker
    theta: Mapping[str, Mapping[str, float]]  # node -> variant -> images/s the operator predicted
    request_timeout_s: float
    client_port: int
    worker_port: int
    secret_file: str
    batch: int
    threads: Mapping[str, int] = field(default_factory=dict)  # node -> torch threads


@dataclass(frozen=True)
class RingRequest:
    """A deployment with sources: one ring-worker config per node (`RenderedConfigs.partitions`, by worker)."""

    deployment: str
    model: ModelRef  # input shape filled in
    graph: LayerGraph
    whole_s: Mapping[str, float]  # node -> predicted whole-model seconds (γ's prior)
    ring: tuple[str, ...]
    sources: tuple[str, ...]
    scheduler: str
    addresses: Mapping[str, str]  # node -> base URL of its ring worker's Service
    port: int  # where every worker listens
    secret_file: str
    queue_bound: int
    heartbeat_s: float
    request_timeout_s: float
    threads: Mapping[str, int] = field(default_factory=dict)
    exact_kernels: bool = False  # spec.exactKernels


ConfigRenderer = Callable[[ConfigRequest | RingRequest | VariantConfigRequest], RenderedConfigs]
