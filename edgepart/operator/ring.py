"""A DNNDeployment with `sources` on Kubernetes: one ring-worker pod per node instead of a plan's partitions.

`reconcile_ring` is the ring's part of the pure reconciliation (`reconcile.py` hands over to it once the
spec is valid, the nodes are chosen, the graph is known and every device class has a profile): the ring is
`spec.ring` (default: the usable nodes in order), every node's γ prior is its profile's predicted
whole-model time, and the data plane's renderer (injected, as for partition configs) writes each
worker's config. Objects: a ServiceAccount, a ConfigMap with the configs, per worker a Pod pinned to its
node and a Service, and NetworkPolicies (ring workers accept their deployment's pods; sources also their
clients, with the secret).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.operator import names, render
from edgepart.operator.configs import ConfigRenderer, RingRequest
from edgepart.operator.nodes import NodeInfo, format_cpu, format_memory
from edgepart.operator.planning import PlanRequest, planner_cluster
from edgepart.operator.render import Owner, metadata, render_template, with_hash
from edgepart.operator.settings import OperatorSettings
from edgepart.spec import WEIGHTS_DIR, DeploymentSpec, parse_duration

__all__ = ["RING_COMPONENT", "RingObjects", "ring_config_key", "ring_network_policies", "ring_objects",
           "ring_request", "ring_worker_pod", "ring_worker_service"]

RING_COMPONENT = "ring-worker"


class RingError(EdgepartError, ValueError):
    """A ring that cannot be built from the usable nodes; the message names the field."""


def ring_config_key(worker: str) -> str:
    return f"ring-{worker}.json"


def ring_service_name(deployment: str, worker: str) -> str:
    return names.dns_label(deployment, "ring", worker)


def worker_labels(owner: Owner, worker: str) -> dict[str, str]:
    return names.base_labels(owner.name, RING_COMPONENT) | {names.LABEL_PARTITION: worker}


def ring_request(owner: Owner, spec: DeploymentSpec, usable: Sequence[NodeInfo], request: PlanRequest,
                 graph: LayerGraph, model: ModelRef, settings: OperatorSettings) -> RingRequest:
    """What the data plane's renderer needs for this ring (pure)."""
    available = [n.name for n in usable]
    ring = tuple(spec.ring) or tuple(sorted(available))
    gone = [w for w in ring if w not in available]
    if gone:
        raise RingError(f"spec.ring: nodes {gone} are not usable (usable: {available})")
    sources = tuple(s.device for s in spec.sources)
    for i, s in enumerate(sources):
        if s not in ring:
            raise RingError(f"spec.sources[{i}].device: {s!r} is not on the ring {list(ring)}")
    cluster = planner_cluster(request)
    whole_s = {w: sum(cluster.device(w).layer_time(layer) for layer in graph) for w in ring}
    port = settings.internal_port
    by_name = {n.name: n for n in usable}
    return RingRequest(
        deployment=owner.name, model=model, graph=graph, whole_s=whole_s, ring=ring, sources=sources,
        scheduler=spec.scheduler,
        addresses={w: f"http://{ring_service_name(owner.name, w)}.{owner.namespace}.svc:{port}" for w in ring},
        port=port, secret_file=render.SECRET_FILE, queue_bound=spec.queue_bound,
        heartbeat_s=parse_duration(spec.heartbeat), request_timeout_s=parse_duration(spec.request_timeout),
        threads={w: max(1, int(by_name[w].cpu * settings.cpu_share)) for w in ring},
        exact_kernels=spec.exact_kernels)


def ring_worker_pod(owner: Owner, worker: str, node: NodeInfo, config_hash: str, settings: OperatorSettings,
                    weights_volume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ring worker's pod; its name carries a digest of its content (pods are immutable). `weights_volume`:
    the model's volume source, mounted read-only at WEIGHTS_DIR (every worker loads the whole model)."""
    cpu = node.cpu * settings.cpu_share
    obj = render_template(
        "ring-worker-pod.yaml.j2",
        metadata=metadata("", owner, owner.namespace, worker_labels(owner, worker) | {names.LABEL_PLAN: config_hash},
                          render.scrape_annotations(settings.internal_port)
                          | {names.ANNOTATION_PLAN_HASH: config_hash}),
        service_account=names.service_account_name(owner.name), node=node.name, worker=worker,
        config_path=f"{render.CONFIG_DIR}/{ring_config_key(worker)}", config_map=names.config_map_name(owner.name),
        secret=names.secret_name(owner.name), secret_dir=render.SECRET_DIR, cpu=format_cpu(cpu),
        memory_request=format_memory(min(node.memory // 2, 1 << 30)), memory_limit=format_memory(node.memory),
        weights_volume=weights_volume, weights_dir=WEIGHTS_DIR, settings=settings)
    obj["metadata"]["name"] = names.dns_label(owner.name, "ring", worker, names.digest(obj, 10))
    return with_hash(obj)


def ring_worker_service(owner: Owner, worker: str, settings: OperatorSettings) -> dict[str, Any]:
    return with_hash(render_template(
        "ring-worker-service.yaml.j2",
        metadata=metadata(ring_service_name(owner.name, worker), owner, owner.namespace, worker_labels(owner, worker)),
        selector={names.LABEL_DEPLOYMENT: names.sanitize_label_value(owner.name),
                  names.LABEL_COMPONENT: RING_COMPONENT, names.LABEL_PARTITION: worker},
        settings=settings))


def ring_network_policies(owner: Owner, sources: Sequence[str], settings: OperatorSettings) -> list[dict[str, Any]]:
    deployment = names.sanitize_label_value(owner.name)
    selector = {names.LABEL_DEPLOYMENT: deployment, names.LABEL_COMPONENT: RING_COMPONENT}
    policies = [with_hash(render_template(
        "networkpolicy-ring.yaml.j2",
        metadata=metadata(names.network_policy_name(owner.name, "ring"), owner, owner.namespace,
                          names.base_labels(owner.name, RING_COMPONENT)),
        worker_selector=selector, deployment_selector=names.selector_labels(owner.name), from_anywhere=False,
        settings=settings))]
    for source in sources:
        policies.append(with_hash(render_template(
            "networkpolicy-ring.yaml.j2",
            metadata=metadata(names.network_policy_name(owner.name, f"source-{source}"), owner, owner.namespace,
                              names.base_labels(owner.name, RING_COMPONENT)),
            worker_selector=selector | {names.LABEL_PARTITION: source},
            deployment_selector=names.selector_labels(owner.name), from_anywhere=True, settings=settings)))
    return policies


class RingObjects:
    """Every object of one ring, and its pods' names by worker."""

    def __init__(self, objects: list[dict[str, Any]], pods: dict[str, str], config_hash: str):
        self.objects = objects
        self.pods = pods
        self.config_hash = config_hash


def ring_objects(owner: Owner, request: RingRequest, usable: Sequence[NodeInfo], configs: ConfigRenderer,
                 settings: OperatorSettings, weights_volume: Mapping[str, Any] | None = None) -> RingObjects:
    """The ring's objects from the rendered worker configs (raises the renderer's errors)."""
    rendered = configs(request)
    data = {ring_config_key(w): text for w, text in sorted(rendered.partitions.items())}
    config_hash = names.digest(data, 12)
    by_name = {n.name: n for n in usable}
    objects: list[dict[str, Any]] = [render.service_account(owner), render.plan_config_map(owner, data, config_hash),
                                     *ring_network_policies(owner, request.sources, settings)]
    pods: dict[str, str] = {}
    for worker in request.ring:
        pod = ring_worker_pod(owner, worker, by_name[worker], config_hash, settings, weights_volume)
        pods[worker] = pod["metadata"]["name"]
        objects += [pod, ring_worker_service(owner, worker, settings)]
    return RingObjects(render.sorted_objects(objects), pods, config_hash)


def reconcile_ring(ctx: Any, spec: DeploymentSpec, usable: Sequence[NodeInfo], request: PlanRequest,
                   graphs: Mapping[str, LayerGraph], observed: Any, excluded: Sequence[Any],
                   degraded_reasons: Sequence[str], configs: ConfigRenderer) -> Any:
    """The desired state of a DNNDeployment with sources (called by `reconcile._reconcile`)."""
    from edgepart.operator.reconcile import CONFIG_MAP_LIMIT, DesiredState, _Halt, _ordered
    from edgepart.operator.status import DEGRADED, PLANNED, READY, DeploymentStatus, Phase

    owner, settings = ctx.owner, ctx.settings
    (model_id, model), = request.models
    try:
        ring = ring_request(owner, spec, usable, request, graphs[model_id], model, settings)
        volume = spec.first_model.volume
        built = ring_objects(owner, ring, usable, configs, settings, volume.source() if volume else None)
    except ValueError as err:  # RingError, EdgepartErrors and the data plane's ConfigError
        raise _Halt("Failed", PLANNED, "ConfigFailed", str(err)) from None
    size = sum(len(str(o)) for o in built.objects if o["kind"] == "ConfigMap")
    if size > CONFIG_MAP_LIMIT:
        raise _Halt("Failed", PLANNED, "PlanTooLarge", f"the ring's configs take {size} bytes; a ConfigMap holds "
                                                        "at most 1 MiB")
    ctx.set(PLANNED, True, "RingConfigured", f"{spec.scheduler}: {len(ring.sources)} sources on a ring of "
                                             f"{len(ring.ring)} workers {list(ring.ring)}")
    ready_pods = {p.name for p in observed.pods if p.ready and not p.deleting}
    ready = [w for w, name in built.pods.items() if name in ready_pods]
    waiting = [w for w in ring.ring if w not in ready]
    all_ready = not waiting
    if all_ready:
        ctx.set(READY, True, "AllReady", f"{len(ready)} ring workers are ready")
    else:
        ctx.set(READY, False, "PodsNotReady", f"ring workers not ready: {waiting}")
    if degraded_reasons:
        ctx.set(DEGRADED, True, "DevicesLeftOut", "; ".join(degraded_reasons))
    else:
        ctx.set(DEGRADED, False, "AllDevicesUsed", "every selected node is usable")
    phase: Phase = ("Degraded" if degraded_reasons else "Ready") if all_ready else "Deploying"
    endpoints = ", ".join(ring.addresses[s] for s in ring.sources)
    message = (f"sources answer at {endpoints}" if all_ready
               else f"waiting for {len(waiting)} of {len(ring.ring)} ring workers")
    status = DeploymentStatus(
        phase=phase, message=message, observed_generation=owner.generation, conditions=_ordered(ctx.conditions),
        partitions=len(ring.ring), ready_partitions=len(ready), ready=f"{len(ready)}/{len(ring.ring)}",
        devices=list(ring.ring), excluded_nodes=list(excluded), plan_inputs=built.config_hash)
    return DesiredState(phase=phase, status=status.to_dict(), objects=tuple(built.objects), prune=True,
                        secrets=(render.deployment_secret(owner),), plan_inputs=built.config_hash)
