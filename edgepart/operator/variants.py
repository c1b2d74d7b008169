"""Reconciling a DNNDeployment with `spec.variants` (accuracy-aware data partitioning): pure, like reconcile.py.

The devices are the usable selected nodes (the same selection, exclusion and
profiles as a split model). The operator explores the design space with the
nodes' profiles (`edgepart.policy.variants_plan.explore`) and deploys:

- one worker pod per usable node (`serve-worker`), each with a Service;
- the dispatcher (`serve-dispatcher`) as the gateway Deployment on the master
  node, behind the gateway Service: clients POST images to it;
- a ConfigMap with the dispatcher's and every worker's config (the
  operator's θ predictions included), the ServiceAccount, NetworkPolicies and
  the deployment's Secret, as for a split model.

The dispatcher's resource manager then chooses variants and shares at run
time. A node going out re-renders without it (phase Degraded, condition
Degraded naming it); the dispatcher also stops sending to a worker it cannot
reach on its own.

Trust: the family's models are imported by the operator (traced on the meta
device, as it traces zoo models) and by the pods. The shipped `digits` family
and zoo models are edgepart's own code; any other model must be listed in the
operator's `trustedModels`, else the deployment is refused (Failed, naming the
variant). A family given as a file path is refused: the operator reads no files.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgepart.errors import EdgepartError
from edgepart.graph.loader import is_zoo_name
from edgepart.operator import names, render
from edgepart.operator.configs import ConfigRenderer, VariantConfigRequest
from edgepart.operator.nodes import NodeInfo, format_cpu, format_memory
from edgepart.operator.planning import PlanRequest
from edgepart.operator.settings import OperatorSettings
from edgepart.operator.status import DEGRADED, PLANNED, READY, Phase
from edgepart.policy.variants_plan import Exploration, explore, resolve_family
from edgepart.spec import WEIGHTS_DIR, DeploymentSpec, ModelSpec, VariantFamilySpec, parse_duration
from edgepart.variants.digits import model_ref_name
from edgepart.variants.family import DIGITS_FAMILY

__all__ = ["VariantsOutcome", "family_in_pods", "reconcile_variants", "trusted_family", "worker_id"]

SHIPPED_PREFIX = model_ref_name("digits-xs").rsplit(":", 1)[0] + ":"  # edgepart.variants.digits:


class VariantsRefused(EdgepartError, ValueError):  # noqa: N818 - a refusal the status reports
    """A variants deployment the operator will not run; the message names the field."""


def worker_id(node: str) -> str:
    return f"worker-{node}"


def trusted_family(spec: DeploymentSpec, settings: OperatorSettings) -> VariantFamilySpec:
    """The family, if the operator may import every one of its models (module docstring)."""
    variants = spec.variants
    assert variants is not None
    if variants.custom is None and variants.family != DIGITS_FAMILY:
        raise VariantsRefused(f"spec.variants.family: {variants.family!r}: on Kubernetes give {DIGITS_FAMILY!r} (the "
                              "shipped family) or the family inline as spec.variants.custom; the operator reads no "
                              "files")
    if variants.custom is not None:
        trusted = set(settings.trusted_models)
        for i, v in enumerate(variants.custom.variants):
            name = v.model.name
            if not (is_zoo_name(name) or name.startswith(SHIPPED_PREFIX) or name in trusted):
                raise VariantsRefused(
                    f"spec.variants.custom.variants[{i}].model.name: {name[:200]!r} ({v.name}) is neither a zoo "
                    "model nor in the operator's trustedModels: the operator and its pods would import its code "
                    "(a cluster admin lists trusted models in the chart's operator.trustedModels)")
        return variants.custom
    return resolve_family(variants)


def family_in_pods(family: VariantFamilySpec) -> tuple[VariantFamilySpec, dict[str, Any] | None]:
    """The family as worker pods see it, and the volume source they mount read-only at WEIGHTS_DIR (None: none).

    A worker may load any variant, so every variant given a `model.volume` must give the same one (a pod has
    one WEIGHTS_DIR); the relative weights and path/to/file.py of those variants resolve under it."""
    volumes = {i: v.model.volume for i, v in enumerate(family.variants) if v.model.volume is not None}
    sources = {json.dumps(v.source(), sort_keys=True) for v in volumes.values()}
    if len(sources) > 1:
        raise VariantsRefused(f"spec.variants.custom.variants[{max(volumes)}].model.volume: the variants give "
                              f"{len(sources)} different volumes; workers mount one at {WEIGHTS_DIR}, so give "
                              "every variant the same one")
    variants = [v.model_copy(update={"model": _under_volume(v.model)}) if i in volumes else v
                for i, v in enumerate(family.variants)]
    volume = next(iter(volumes.values()), None)
    return family.model_copy(update={"variants": variants}), volume.source() if volume else None


def _under_volume(model: ModelSpec) -> ModelSpec:
    """Relative weights and path/to/file.py under WEIGHTS_DIR (absolute ones are files in the image or there)."""
    def resolve(path: str) -> str:
        return path if posixpath.isabs(path) else posixpath.join(WEIGHTS_DIR, posixpath.normpath(path))

    location, _, factory = model.name.rpartition(":")
    name = f"{resolve(location)}:{factory}" if location.endswith(".py") or "/" in location else model.name
    weights = None if model.weights is None else resolve(model.weights)
    return model.model_copy(update={"name": name, "weights": weights})


@dataclass(frozen=True)
class VariantsOutcome:
    phase: Phase
    message: str
    objects: tuple[Mapping[str, Any], ...]
    exploration: Exploration
    ready: int
    workers: int
    conditions: tuple[tuple[str, bool, str, str], ...]  # (type, status, reason, message) to set


def reconcile_variants(owner: render.Owner, spec: DeploymentSpec, request: PlanRequest, usable: Sequence[NodeInfo],
                       master: str, *, settings: OperatorSettings, configs: ConfigRenderer,
                       ready_pods: set[str], gateway_ready: Callable[[Mapping[str, Any]], bool],
                       degraded_reasons: Sequence[str], left_out: Sequence[str]) -> VariantsOutcome:
    """Objects and phase of a variants deployment over `usable` nodes (module docstring). Raises
    VariantsRefused or EdgepartError (the caller reports Failed)."""
    assert spec.variants is not None
    family = trusted_family(spec, settings)
    in_pods, weights_volume = family_in_pods(family)  # explored as the operator sees it, run as pods see it
    exploration = explore(spec, family=family, cluster_spec=request.cluster, profiles=request.profiles)
    theta = {n.name: {v.name: t for v, t in zip(exploration.problem.variants, n.throughput, strict=True)
                      if t is not None} for n in exploration.problem.nodes}
    internal = settings.internal_port
    workers = {n.name: worker_id(n.name) for n in usable}
    urls = {node: f"http://{names.partition_service_name(owner.name, wid)}.{owner.namespace}.svc:{internal}"
            for node, wid in workers.items()}
    inline = spec.model_copy(update={"devices": list(request.cluster.devices), "master": master,
                                     "node_selector": {}, "network": request.cluster.network})
    by_name = {n.name: n for n in usable}
    rendered = configs(VariantConfigRequest(
        deployment=owner.name, spec=json.loads(inline.model_dump_json(by_alias=True, exclude_none=True)),
        family=json.loads(in_pods.model_dump_json(by_alias=True, exclude_none=True)),
        input_shape=exploration.input_shape, workers=workers, worker_urls=urls, theta=theta,
        request_timeout_s=parse_duration(spec.request_timeout), client_port=settings.port, worker_port=internal,
        secret_file=render.SECRET_FILE, batch=spec.variants.batch,
        threads={n: max(1, int(by_name[n].cpu * settings.cpu_share)) for n in workers}))
    data = {render.GATEWAY_KEY: rendered.gateway}
    data.update({render.partition_key(wid): text for wid, text in rendered.partitions.items()})
    digest = names.digest(data, 10)
    objects: list[dict[str, Any]] = [render.service_account(owner), render.plan_config_map(owner, data, digest),
                                     *render.network_policies(owner, settings)]
    pod_names: dict[str, str] = {}
    for node, wid in workers.items():
        info = by_name[node]
        memory = 512 * 1024 * 1024
        pod = render.partition_pod(owner, render.PartitionPod(
            partition_id=wid, node=node, cpu=format_cpu(info.cpu * settings.cpu_share),
            memory_request=format_memory(memory), memory_limit=format_memory(2 * memory),
            weights_volume=weights_volume), digest, settings,
            args=("serve-worker",))
        pod_names[wid] = pod["metadata"]["name"]
        objects.append(pod)
        objects.append(render.partition_service(owner, wid, digest, settings))
    gateway = render.gateway_deployment(owner, master, digest, settings, args=("serve-dispatcher",))
    objects += [gateway, render.gateway_service(owner, settings)]

    ready = sum(1 for name in pod_names.values() if name in ready_pods)
    all_ready = ready == len(pod_names) and gateway_ready(gateway)
    selection = exploration.selection
    chosen = ", ".join(f"{n}: {v or 'off'}" for n, v in zip(exploration.cluster.names, selection.variants,
                                                            strict=True))
    conditions = [(PLANNED, True, "ConfigurationChosen",
                   f"{family.name}: {chosen}; predicted {selection.throughput:.0f} images/s at accuracy "
                   f"{selection.accuracy:.4f}" + ("" if selection.feasible else f" ({selection.note})"))]
    if all_ready:
        conditions.append((READY, True, "AllReady", f"{ready} workers and the dispatcher are ready"))
    else:
        waiting = sorted(w for w, name in pod_names.items() if name not in ready_pods)
        conditions.append((READY, False, "PodsNotReady", f"workers not ready: {waiting}" if waiting
                           else "dispatcher not ready"))
    if degraded_reasons:
        conditions.append((DEGRADED, True, "DevicesLeftOut", "; ".join(degraded_reasons)))
    else:
        conditions.append((DEGRADED, False, "AllDevicesUsed", "every selected node is usable"))
    endpoint = f"http://{names.gateway_name(owner.name)}.{owner.namespace}.svc:{settings.port}"
    phase: Phase = ("Degraded" if degraded_reasons else "Ready") if all_ready else "Deploying"
    message = {"Ready": f"dispatching at {endpoint}: {chosen}",
               "Degraded": f"dispatching at {endpoint} without {sorted(left_out)}: {chosen}",
               "Deploying": f"waiting for {len(pod_names) - ready} of {len(pod_names)} workers"
                            + ("" if gateway_ready(gateway) else " and the dispatcher")}[phase]
    return VariantsOutcome(phase, message, tuple(render.sorted_objects(objects)), exploration, ready,
                           len(pod_names), tuple(conditions))
