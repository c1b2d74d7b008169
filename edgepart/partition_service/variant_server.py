"""Process entries of accuracy-aware data partitioning: `dispatcher` and `worker` (config in EDGEPART_CONFIG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI

from edgepart.partition_service.auth import load_secret
from edgepart.partition_service.dispatcher import (
    DispatcherConfig,
    HttpWorkers,
    VariantDispatcher,
    dispatcher_app,
)
from edgepart.partition_service.variant_worker import WorkerConfig, WorkerService, worker_app
from edgepart.policy.manager import initial_state
from edgepart.policy.throughput import ThroughputEstimates
from edgepart.policy.variants_plan import explore
from edgepart.spec import DeploymentSpec, VariantFamilySpec, parse_duration

__all__ = ["VariantRole", "build_dispatcher", "variant_app", "variant_configs"]

VariantRole = Literal["dispatcher", "worker"]


def build_dispatcher(config: DispatcherConfig) -> tuple[VariantDispatcher, FastAPI]:
    """Explore the deployment's design space (the cost model's θ) and serve its dispatcher."""
    spec = DeploymentSpec.model_validate(config.spec)
    given = None
    if config.theta:
        given = ThroughputEstimates({(n, v): t for n, row in config.theta.items() for v, t in row.items()})
    exploration = explore(spec, Path(config.base), window=config.window, estimates=given)
    unknown = sorted(set(exploration.cluster.names) - set(config.workers))
    if unknown:
        raise ValueError(f"workers: no worker URL for devices {unknown}")
    workers = HttpWorkers({n: config.workers[n] for n in exploration.cluster.names}, load_secret(config.secret_file),
                          timeout_s=config.request_timeout_s)
    timeout = config.request_timeout_s or parse_duration(spec.request_timeout)
    state = initial_state(exploration.cluster.names, exploration.estimates)
    dispatcher = VariantDispatcher(exploration.settings, state, workers, deployment=config.deployment,
                                   damping=config.damping, patience=config.patience, heartbeat_s=config.heartbeat_s,
                                   request_timeout_s=timeout)
    family = exploration.family
    model = {"mode": "variants", "family": family.name, "task": family.task,
             "variants": [{"name": v.name, "accuracy": v.accuracy.value, "kind": v.accuracy.kind}
                          for v in family.variants],
             "inputShape": list(exploration.input_shape), "outputShape": list(exploration.output_shape),
             "devices": list(exploration.cluster.names)}
    app = dispatcher_app(dispatcher, input_shape=exploration.input_shape, max_images=config.max_images, model=model,
                         on_close=workers.aclose)
    return dispatcher, app


def variant_app(role: VariantRole, text: str) -> tuple[FastAPI, str, int]:
    """The app of a dispatcher or worker config, with the host and port it serves."""
    if role == "dispatcher":
        dconfig = DispatcherConfig.model_validate_json(text)
        return build_dispatcher(dconfig)[1], dconfig.host, dconfig.port
    wconfig = WorkerConfig.model_validate_json(text)
    return worker_app(WorkerService(wconfig)), wconfig.host, wconfig.port


def variant_configs(request: Any) -> tuple[str, dict[str, str]]:
    """The dispatcher's config and every worker's (by worker id) for the operator (a `VariantConfigRequest`:
    the operator package's seam, typed there; this package never imports the operator)."""
    family = VariantFamilySpec.model_validate(dict(request.family))
    workers = {}
    for node, wid in request.workers.items():
        config = WorkerConfig(deployment=request.deployment, device=node, host="0.0.0.0", port=request.worker_port,
                              family=family, input_shape=tuple(request.input_shape), batch=request.batch,
                              secret_file=request.secret_file, threads=request.threads.get(node, 1))
        workers[wid] = config.model_dump_json(indent=2)
    dispatcher = DispatcherConfig(deployment=request.deployment, host="0.0.0.0", port=request.client_port,
                                  spec=dict(request.spec), base="/tmp", workers=dict(request.worker_urls),
                                  theta={n: dict(row) for n, row in request.theta.items()},
                                  secret_file=request.secret_file, request_timeout_s=request.request_timeout_s)
    return dispatcher.model_dump_json(indent=2), workers
