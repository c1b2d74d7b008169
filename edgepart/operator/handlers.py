"""kopf handlers: thin. Each gathers what the cluster holds, calls `reconcile`, hands the answer to `apply`.

One daemon per DNNDeployment runs the reconcile loop: it reconciles, then
sleeps until something it depends on changes (its spec, a node, one of its
pods, its gateway, a profile ConfigMap or profiling Job) or `resync_seconds`
pass. Event handlers on those resources only wake the loops; all decisions
are `reconcile`'s. Deleting a DNNDeployment stops its loop; Kubernetes'
garbage collector removes its children through their owner references.

Run with `edgepart operator` (which injects the data plane's partition-config
renderer) or `kopf.operator(memo=kopf.Memo(config_renderer=...))`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client import ApiException

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import GraphError
from edgepart.operator import apply, names, render
from edgepart.operator.apply import Api
from edgepart.operator.configs import ConfigRenderer
from edgepart.operator.graphs import GraphSet, TraceJob, graph_from_log, graphs_from_config_maps
from edgepart.operator.nodes import NodeError, NodeInfo, node_from_object
from edgepart.operator.planning import PlanFn, PlanRequest, compute_plan
from edgepart.operator.profiles import (
    JobState,
    ProfileSet,
    profile_from_log,
    profiles_from_config_maps,
)
from edgepart.operator.reconcile import (
    CONFIG_MAP_LIMIT,
    DesiredState,
    GatewayState,
    Observed,
    PodState,
    reconcile,
)
from edgepart.operator.render import Owner
from edgepart.operator.settings import OperatorSettings
from edgepart.operator.status import same_status
from edgepart.planner.costmodel import ProfileError
from edgepart.spec import API_GROUP, API_VERSION, PLURAL

Logger = logging.Logger | logging.LoggerAdapter[Any]
RETRY_SECONDS = 5.0
PLAN_CACHE_SIZE = 32


class Wakeups:
    """One asyncio.Event per DNNDeployment loop; event handlers set them."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._specs: dict[tuple[str, str], str] = {}

    def register(self, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((namespace, name), asyncio.Event())

    def unregister(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)
        self._specs.pop((namespace, name), None)

    def wake(self, namespace: str | None, name: str | None = None) -> None:
        for (ns, n), event in self._events.items():
            if (namespace is None or ns == namespace) and (name is None or names.sanitize_label_value(n) == name
                                                           or n == name):
                event.set()

    def spec_changed(self, namespace: str, name: str, spec: Mapping[str, Any]) -> bool:
        digest = names.digest(dict(spec))
        changed = self._specs.get((namespace, name)) != digest
        self._specs[(namespace, name)] = digest
        return changed


class PlanCache:
    """Plans by request digest (planning VGG-16 takes seconds); thread-safe, small LRU."""

    def __init__(self, compute: PlanFn, size: int = PLAN_CACHE_SIZE) -> None:
        self._compute = compute
        self._size = size
        self._plans: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._plans

    def get(self, request: PlanRequest) -> Any:
        key = request.key
        with self._lock:
            if key in self._plans:
                self._plans[key] = self._plans.pop(key)
                return self._plans[key]
        plan = self._compute(request)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self._size:
                self._plans.pop(next(iter(self._plans)))
        return plan


@dataclass
class Runtime:
    """Everything the handlers share, kept in kopf's memo (no module globals)."""

    settings: OperatorSettings
    api: Api
    configs: ConfigRenderer
    plans: PlanCache
    wakeups: Wakeups = field(default_factory=Wakeups)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else $KUBECONFIG (read now, not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    settings.persistence.finalizer = f"{names.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration")
    # The CRD must exist before the operator starts (Helm installs crds/ first); no cluster-wide
    # listing of CRDs or namespaces, which least-privilege RBAC does not grant.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    renderer = memo.get("config_renderer")
    if renderer is None:
        raise kopf.PermanentError("no partition-config renderer: start the operator with `edgepart operator`")
    operator_settings = memo.get("operator_settings") or OperatorSettings()
    api = Api(await asyncio.to_thread(apply.connect, memo.get("kubeconfig")))
    memo.runtime = Runtime(settings=operator_settings, api=api, configs=renderer,
                           plans=PlanCache(memo.get("planner") or compute_plan))
    logger.info("edgepart operator ready; pods use image %s", operator_settings.image)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    runtime = memo.get("runtime")
    if runtime is not None:
        await asyncio.to_thread(runtime.api.client.close)


# ---------------------------------------------------------------- the reconcile loop


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=10)
async def reconcile_loop(name: str, namespace: str | None, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped,
                         logger: Logger, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    namespace = namespace or "default"
    wakeup = runtime.wakeups.register(namespace, name)
    runtime.wakeups.spec_changed(namespace, name, body.get("spec") or {})

    async def until_stopped() -> None:
        await stopped.wait()

    stopping = asyncio.create_task(until_stopped())
    try:
        while not stopped:
            wakeup.clear()
            delay = runtime.settings.resync_seconds
            try:
                await asyncio.to_thread(reconcile_once, runtime, body, logger)
            except (ApiException, OSError) as err:
                logger.warning("reconcile of %s/%s failed, retrying: %s", namespace, name, err)
                delay = RETRY_SECONDS
            woken = asyncio.create_task(wakeup.wait())
            await asyncio.wait({woken, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
    finally:
        stopping.cancel()
        runtime.wakeups.unregister(namespace, name)


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body.get("metadata") or {}
    return Owner(name=str(meta["name"]), namespace=str(meta["namespace"]), uid=str(meta["uid"]),
                 generation=int(meta.get("generation") or 1))


def reconcile_once(runtime: Runtime, body: Mapping[str, Any], logger: Logger) -> DesiredState:
    """Observe, reconcile, apply, write status. Runs in a worker thread."""
    owner = owner_of(body)
    api, settings = runtime.api, runtime.settings
    nodes = read_nodes(api, logger)
    profile_set = read_profiles(api, owner.namespace)
    jobs, harvested = harvest_profiles(api, owner.namespace, profile_set, logger)
    if harvested:
        profile_set = read_profiles(api, owner.namespace)
    graph_set = read_graphs(api, owner.namespace)
    trace_jobs, traced = harvest_graphs(api, owner.namespace, graph_set, logger)
    if traced:
        graph_set = read_graphs(api, owner.namespace)
    status = dict(body.get("status") or {})
    observed = Observed(
        pods=tuple(PodState.from_object(p) for p in api.list_objects("Pod", owner.namespace,
                                                             names.selector_labels(owner.name))
                   if apply.owned_by(p, owner.uid)),
        gateway=GatewayState.from_object(api.read("Deployment", owner.namespace, names.gateway_name(owner.name))),
        jobs=tuple(j for j in jobs if not j.succeeded),
        profile_errors=profile_set.errors,
        trace_jobs=tuple(j for j in trace_jobs if not j.succeeded),
        graph_errors=graph_set.errors,
        status=status,
    )

    def planner(request: PlanRequest) -> Any:
        if request.key not in runtime.plans and status.get("planInputs") != request.key:
            planning = {"phase": "Planning", "message": f"planning with solver {request.solver!r}"}
            api.patch_status(owner.namespace, owner.name, planning)
            status.update(planning)
        return runtime.plans.get(request)

    desired = reconcile(owner, body.get("spec") or {}, nodes, profile_set.profiles, observed=observed,
                        settings=settings, planner=planner, configs=runtime.configs, now=_now(),
                        graphs=graph_set.graphs)
    for job in desired.jobs:
        if api.create(job):
            logger.info("started job %s", job["metadata"]["name"])
    for secret in desired.secrets:  # before the pods that mount it
        if apply.create_secret(api, secret):
            logger.info("created secret %s", secret["metadata"]["name"])
    result = apply.sync(api, owner, desired.objects, desired.prune, desired.keep)
    if result.applied or result.deleted:
        logger.info("applied %s; deleted %s", list(result.applied), list(result.deleted))
    if not same_status(status, desired.status):
        api.patch_status(owner.namespace, owner.name, _with_removals(status, desired.status))
        if desired.phase != status.get("phase"):
            logger.info("phase %s -> %s: %s", status.get("phase"), desired.phase, desired.status.get("message"))
    return desired


def _with_removals(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from `old` to `new`: keys that disappeared are set to null."""
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch


def read_nodes(api: Api, logger: Logger) -> list[NodeInfo]:
    nodes = []
    for obj in api.list_nodes():
        try:
            nodes.append(node_from_object(obj))
        except NodeError as err:
            logger.warning("ignoring node: %s", err)
    return nodes


def read_profiles(api: Api, namespace: str) -> ProfileSet:
    return profiles_from_config_maps(api.list_objects("ConfigMap", namespace, {names.LABEL_PROFILE: "true"}))


def read_jobs(api: Api, namespace: str) -> list[JobState]:
    return [JobState.from_object(j) for j in api.list_objects("Job", namespace, {names.LABEL_PROFILE: "true"})]


def harvest_profiles(api: Api, namespace: str, profile_set: ProfileSet,
                     logger: Logger) -> tuple[list[JobState], bool]:
    """Copy the profile of every finished profiling Job into its ConfigMap; a broken log fails the Job.

    Returns the jobs (those whose log could not be used marked failed) and whether a profile was stored.
    """
    jobs = []
    harvested = False
    for job in read_jobs(api, namespace):
        if job.succeeded and job.device_class not in profile_set.profiles:
            pods = [p for p in api.list_objects("Pod", namespace, {names.LABEL_PROFILE: "true"})
                    if (p.get("metadata") or {}).get("labels", {}).get("job-name") == job.name
                    or (p.get("metadata") or {}).get("labels", {}).get("batch.kubernetes.io/job-name") == job.name]
            done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
            try:
                if not done:
                    raise ProfileError(f"job {job.name} succeeded but none of its pods is left to read")
                pod_name = str(done[-1]["metadata"]["name"])
                profile = profile_from_log(api.pod_log(namespace, pod_name), f"log of pod {pod_name}")
            except (EdgepartError, ApiException) as err:
                jobs.append(JobState(job.name, job.device_class, active=False, succeeded=False, failed=True,
                                     message=str(err)))
                continue
            config_map = render.profile_config_map(job.device_class, profile.to_json(), namespace,
                                                   {f"{names.GROUP}/profiled-by": job.name})
            api.apply(config_map)
            harvested = True
            logger.info("stored the profile of device class %s from job %s", job.device_class, job.name)
        jobs.append(job)
    return jobs, harvested


def read_graphs(api: Api, namespace: str) -> GraphSet:
    return graphs_from_config_maps(api.list_objects("ConfigMap", namespace, {names.LABEL_GRAPH: "true"}))


def harvest_graphs(api: Api, namespace: str, graph_set: GraphSet, logger: Logger) -> tuple[list[TraceJob], bool]:
    """Copy the graph of every finished tracing Job into its ConfigMap, after validating it as data; a log
    without a valid graph fails the Job. Returns the jobs and whether a graph was stored."""
    jobs = []
    stored = False
    for obj in api.list_objects("Job", namespace, {names.LABEL_GRAPH: "true"}):
        job = TraceJob.from_object(obj)
        model = str(((obj.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_MODEL, ""))
        if job.succeeded and job.key and job.key not in graph_set.graphs:
            try:
                pod_name = _finished_pod(api, namespace, names.LABEL_GRAPH, job.name)
                graph, text = graph_from_log(api.pod_log(namespace, pod_name), f"log of pod {pod_name}")
                if graph.model_name != model:
                    raise GraphError(f"log of pod {pod_name}: a graph of {graph.model_name[:200]!r}, "
                                     f"the job traced {model[:200]!r}")
                config_map = render.graph_config_map(job.key, model, text, namespace,
                                                     {f"{names.GROUP}/traced-by": job.name})
                if len(text) > CONFIG_MAP_LIMIT:
                    raise GraphError(f"the graph of {model[:200]!r} takes {len(text)} bytes; a ConfigMap holds "
                                     "at most 1 MiB")
            except (EdgepartError, ApiException) as err:
                jobs.append(TraceJob(job.name, job.key, succeeded=False, failed=True, message=str(err)[:2000]))
                continue
            api.apply(config_map)
            stored = True
            logger.info("stored the layer graph of %s from job %s", model[:200], job.name)
        jobs.append(job)
    return jobs, stored


def _finished_pod(api: Api, namespace: str, label: str, job_name: str) -> str:
    """The name of a succeeded pod of a Job (its log holds the result)."""
    pods = [p for p in api.list_objects("Pod", namespace, {label: "true"})
            if (p.get("metadata") or {}).get("labels", {}).get("job-name") == job_name
            or (p.get("metadata") or {}).get("labels", {}).get("batch.kubernetes.io/job-name") == job_name]
    done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
    if not done:
        raise EdgepartError(f"job {job_name} succeeded but none of its pods is left to read")
    return str(done[-1]["metadata"]["name"])


# ---------------------------------------------------------------- wake-ups
# Async on purpose: they run in the operator's event loop, where the loops' asyncio.Events live.


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def deployment_changed(name: str, namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None and namespace and runtime.wakeups.spec_changed(namespace, name, spec):
        runtime.wakeups.wake(namespace, name)


@kopf.on.event("", "v1", "nodes")
async def node_changed(memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wakeups.wake(None)


@kopf.on.event("", "v1", "pods", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY})
@kopf.on.event("apps", "v1", "deployments", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY})
async def child_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wakeups.wake(namespace, labels.get(names.LABEL_DEPLOYMENT))


@kopf.on.event("", "v1", "configmaps", labels={names.LABEL_PROFILE: "true"})
@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_PROFILE: "true"})
@kopf.on.event("", "v1", "configmaps", labels={names.LABEL_GRAPH: "true"})
@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_GRAPH: "true"})
async def profile_changed(namespace: str | None, memo: Any, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.wakeups.wake(namespace)
