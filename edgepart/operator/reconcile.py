"""Pure reconciliation: `reconcile(spec, nodes, profiles) -> DesiredState`.

Given the DNNDeployment's spec, the cluster's nodes, the device profiles and
what the operator observed of its own pods and jobs, compute everything the
cluster should hold for it and the status to report. No I/O: the planner and
the partition-config renderer are injected, `now` is a parameter, so equal
inputs give equal outputs and tests compare results by value.

The phase follows from the first thing missing:

    spec invalid, model unknown, plan impossible     -> Failed
    no usable node matches                           -> Pending
    a model outside the zoo has no traced graph yet  -> Tracing    (and the Job to trace it: the operator
                                                                    never imports a model's code)
    a device class has no profile yet                -> Profiling  (and the Job to make one)
    pods or gateway of the current plan not ready    -> Deploying
    all ready, every selected node in the plan       -> Ready
    all ready, some selected node left out           -> Degraded

A new plan rolls out make before break (`operator/rollout.py`): the serving plan's objects are kept
(`DesiredState.keep`) and the gateway routes to it until every partition of the new plan is ready.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from edgepart.errors import EdgepartError, explain_validation
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelLoadError, ModelRef, input_shape_of, is_zoo_name
from edgepart.graph.zoo import ZOO, UnknownModelError
from edgepart.operator import exclusions, names, render, rollout
from edgepart.operator.configs import ConfigRenderer, ConfigRequest
from edgepart.operator.graphs import TraceJob, check_graph, graph_key
from edgepart.operator.nodes import NodeInfo, format_cpu, format_memory, select_nodes
from edgepart.operator.planning import (
    PlanFn,
    PlanRequest,
    graph_of,
    graphs_of,
    partition_resources,
    plan_digest,
)
from edgepart.operator.profiles import JobState
from edgepart.operator.render import Owner
from edgepart.operator.scheduling import with_scheduling
from edgepart.operator.settings import OperatorSettings
from edgepart.operator.status import (
    DEGRADED,
    DEVICES_AVAILABLE,
    PLANNED,
    PROFILED,
    PROGRESSING,
    READY,
    SPEC_VALID,
    TRACED,
    Condition,
    DeploymentFailure,
    DeploymentStatus,
    ExcludedNode,
    Gateway,
    Phase,
    PlanSummary,
    Predicted,
    StageSummary,
    format_rate,
    format_seconds,
    make_condition,
)
from edgepart.plan import Plan, StageView
from edgepart.planner.costmodel import DeviceProfile
from edgepart.planner.device_loss import choose_master, links_among
from edgepart.spec import (
    WEIGHTS_DIR,
    ClusterSpec,
    DeploymentSpec,
    DeviceSpec,
    ModelSpec,
    parse_duration,
)

# A ConfigMap holds at most 1 MiB; leave room for metadata.
CONFIG_MAP_LIMIT = 1_000_000


@dataclass(frozen=True)
class PodState:
    """One pod of this deployment as the operator observed it."""

    name: str
    node: str
    component: str  # partition or gateway
    partition: str
    plan: str
    phase: str
    ready: bool
    restarts: int = 0
    waiting_reason: str = ""
    deleting: bool = False

    @staticmethod
    def from_object(obj: Mapping[str, Any]) -> PodState:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()
                      if isinstance(c, Mapping)}
        containers = [c for c in status.get("containerStatuses") or () if isinstance(c, Mapping)]
        waiting = [str((c.get("state") or {}).get("waiting", {}).get("reason", "")) for c in containers]
        return PodState(
            name=str(meta.get("name", "")),
            node=names.pinned_node(spec),
            component=str(labels.get(names.LABEL_COMPONENT, "")),
            partition=str(labels.get(names.LABEL_PARTITION, "")),
            plan=str(labels.get(names.LABEL_PLAN, "")),
            phase=str(status.get("phase") or "Pending"),
            ready=conditions.get("Ready") == "True",
            restarts=sum(int(c.get("restartCount") or 0) for c in containers),
            waiting_reason=next((w for w in waiting if w), ""),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def failure(self, max_restarts: int) -> str:
        """Why this pod counts as failed ('' if it does not); see `exclusions.pod_failure`."""
        failure = exclusions.pod_failure(self, max_restarts)
        return failure.message if failure is not None else ""
        if self.phase == "Failed":
            return f"pod {self.name} failed"
        if self.waiting_reason in ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff",
                                   "CreateContainerConfigError", "RunContainerError"):
            return f"pod {self.name}: {self.waiting_reason}"
        if self.restarts >= max_restarts:
            return f"pod {self.name} restarted {self.restarts} times"
        return ""


@dataclass(frozen=True)
class GatewayState:
    ready: bool = False
    spec_hash: str = ""

    @staticmethod
    def from_object(obj: Mapping[str, Any] | None) -> GatewayState:
        if not obj:
            return GatewayState()
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 1)
        return GatewayState(ready=current and int(status.get("readyReplicas") or 0) >= 1,
                            spec_hash=str((meta.get("annotations") or {}).get(names.ANNOTATION_HASH, "")))


@dataclass(frozen=True)
class Observed:
    """What the operator saw of its own children, and the status it wrote last."""

    pods: tuple[PodState, ...] = ()
    gateway: GatewayState = GatewayState()
    jobs: tuple[JobState, ...] = ()
    profile_errors: Mapping[str, str] = field(default_factory=dict)
    trace_jobs: tuple[TraceJob, ...] = ()
    graph_errors: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredState:
    """Everything one DNNDeployment needs, and its status."""

    phase: Phase
    status: Mapping[str, Any]
    objects: tuple[Mapping[str, Any], ...] = ()  # owned children; with prune, owned objects not here go
    prune: bool = False
    keep: frozenset[str] = frozenset()  # plans (edgepart.io/plan) whose objects survive pruning: the serving one
    secrets: tuple[Mapping[str, Any], ...] = ()  # created once when missing (their value is filled in then)
    jobs: tuple[Mapping[str, Any], ...] = ()  # profiling Jobs to create when missing
    plan: Plan | None = None
    plan_inputs: str = ""

    def object(self, kind: str, name: str) -> Mapping[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name}")

    def of_kind(self, kind: str) -> list[Mapping[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]


class _Halt(Exception):  # noqa: N818 - control flow, not an error
    """Reconciliation ends early in `phase` with a condition explaining why."""

    def __init__(self, phase: Phase, condition: str, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.phase = phase
        self.condition = condition
        self.reason = reason
        self.message = message
        self.extra = extra


@dataclass
class _Context:
    owner: Owner
    settings: OperatorSettings
    now: str
    previous: Sequence[Mapping[str, Any]]
    conditions: dict[str, Condition] = field(default_factory=dict)
    retried: list[ExcludedNode] = field(default_factory=list)  # carried into every status written
    failure: DeploymentFailure | None = None

    def set(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        self.conditions[type_] = make_condition(type_, status, reason, message, generation=self.owner.generation,
                                                now=self.now, previous=self.previous)


def reconcile(owner: Owner, spec: Mapping[str, Any], nodes: Sequence[NodeInfo],
              profiles: Mapping[str, DeviceProfile], *, observed: Observed = Observed(),
              settings: OperatorSettings, planner: PlanFn, configs: ConfigRenderer, now: str,
              graphs: Mapping[str, LayerGraph] | None = None) -> DesiredState:
    """The desired state of one DNNDeployment. Never raises for a bad spec: that is a Failed status.

    `graphs`: traced layer graphs of models outside the zoo, by `graphs.graph_key`.
    """
    previous = [c for c in observed.status.get("conditions") or () if isinstance(c, Mapping)]
    ctx = _Context(owner, settings, now, previous)
    excluded: list[ExcludedNode] = []
    try:
        desired = _reconcile(ctx, spec, nodes, profiles, graphs or {}, observed, excluded, planner, configs)
    except _Halt as stop:
        ctx.set(stop.condition, False, stop.reason, stop.message)
        status = DeploymentStatus(
            phase=stop.phase, message=stop.message, observed_generation=owner.generation,
            conditions=_ordered(ctx.conditions), excluded_nodes=excluded, **stop.extra.get("status", {}),
        )
        desired = DesiredState(phase=stop.phase, status=status.to_dict(), jobs=tuple(stop.extra.get("jobs", ())))
    return _finished(desired, ctx, spec)


def _finished(desired: DesiredState, ctx: _Context, raw_spec: Mapping[str, Any]) -> DesiredState:
    """Every status carries the retried nodes and the deployment's own failure; every pod and Job the
    deployment's image pull secrets, tolerations and node affinity."""
    status = dict(desired.status)
    if ctx.retried:
        status["retriedNodes"] = [e.model_dump(by_alias=True, mode="json", exclude_none=True) for e in ctx.retried]
    if ctx.failure is not None:
        status["failure"] = ctx.failure.model_dump(by_alias=True, mode="json", exclude_none=True)
    try:
        spec = DeploymentSpec.model_validate(dict(raw_spec))
    except ValidationError:
        return replace(desired, status=status)  # a Failed status: nothing is rendered
    return replace(desired, status=status,
                   objects=tuple(with_scheduling(o, spec) for o in desired.objects),
                   jobs=tuple(with_scheduling(j, spec) for j in desired.jobs))


_CONDITION_ORDER = (SPEC_VALID, DEVICES_AVAILABLE, TRACED, PROFILED, PLANNED, READY, DEGRADED, PROGRESSING)


def _ordered(conditions: Mapping[str, Condition]) -> list[Condition]:
    return [conditions[t] for t in _CONDITION_ORDER if t in conditions]


def parse_spec(spec: Mapping[str, Any]) -> DeploymentSpec:
    """The spec as the CLI reads it; errors name the field ('spec.network.bandwidth: ...')."""
    try:
        parsed = DeploymentSpec.model_validate(dict(spec))
    except ValidationError as err:
        raise _Halt("Failed", SPEC_VALID, "InvalidSpec", "spec." + explain_validation(err)) from None
    for i, device in enumerate(parsed.devices):
        if device.profile is not None:
            raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                        f"spec.devices[{i}].profile: the operator cannot read files; put the profile in a "
                        f"ConfigMap labelled {names.LABEL_PROFILE}=true and {names.LABEL_DEVICE_CLASS}=<class>")
    if not parsed.devices and not parsed.node_selector:
        raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                    "spec.devices or spec.nodeSelector is required: name the nodes, or select them by label")
    return parsed


def _reconcile(ctx: _Context, raw_spec: Mapping[str, Any], nodes: Sequence[NodeInfo],
               profiles: Mapping[str, DeviceProfile], graphs: Mapping[str, LayerGraph], observed: Observed,
               excluded: list[ExcludedNode], planner: PlanFn, configs: ConfigRenderer) -> DesiredState:
    owner, settings = ctx.owner, ctx.settings
    spec = parse_spec(raw_spec)
    ctx.set(SPEC_VALID, True, "SpecValid", "the spec is valid")

    # ---- devices: selected nodes, minus those that are not ready or whose partition failed
    named = [d.name for d in spec.devices]
    selected = select_nodes(nodes, spec.node_selector, named)
    missing = sorted(set(named) - {n.name for n in selected})
    if not selected:
        what = (f"no node matches spec.nodeSelector {dict(spec.node_selector)}" if spec.node_selector
                else "none of the nodes named in spec.devices exists")
        raise _Halt("Pending", DEVICES_AVAILABLE, "NoMatchingNodes", what)
    same_generation = int(observed.status.get("observedGeneration") or 0) == owner.generation
    decided = exclusions.decide(selected, spec, observed.pods, observed.status, same_generation,
                                exclusions.ExclusionSettings(settings.max_restarts, settings.exclusion_seconds,
                                                             settings.max_exclusion_seconds), ctx.now)
    excluded.extend(decided.excluded)
    ctx.retried, ctx.failure = decided.retried, decided.failure
    if decided.failure is not None:  # the pods fail wherever they go: report it, leave no more nodes out
        raise _Halt("Failed", READY, "DeploymentFailure", decided.failure.message)
    left_out = {e.name for e in excluded}
    usable = [n for n in selected if n.name not in left_out]
    if not usable:
        raise _Halt("Pending", DEVICES_AVAILABLE, "NoUsableNodes",
                    f"none of the selected nodes {[n.name for n in selected]} is usable: "
                    + "; ".join(e.message for e in excluded))
    devices_message = f"{len(usable)} of {len(selected)} selected nodes usable"
    if missing:
        devices_message += f"; spec.devices names nodes that do not exist: {missing}"
    ctx.set(DEVICES_AVAILABLE, True, "NodesSelected", devices_message)

    # ---- master: the node that holds the input, where the gateway runs
    degraded_reasons = [f"{e.name}: {e.message}" for e in excluded]
    if spec.master is not None and spec.master not in {n.name for n in selected}:
        raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                    f"spec.master: node {spec.master!r} is not one of the selected nodes "
                    f"{[n.name for n in selected]}")
    wanted = _wanted_master(spec)
    master = _master_of(spec, usable)
    if wanted is not None and wanted != master:
        degraded_reasons.append(f"master {wanted} is unusable; the gateway moved to {master}")

    # ---- profiles: every device class needs a cost model (or a speed given in the spec)
    overrides = {d.name: d for d in spec.devices}
    needed: dict[str, NodeInfo] = {}
    for node in usable:
        override = overrides.get(node.name)
        if (override is None or override.speed is None) and node.device_class not in profiles:
            needed.setdefault(node.device_class, node)
    bad = {c: observed.profile_errors[c] for c in needed if c in observed.profile_errors}
    if bad:
        raise _Halt("Failed", PROFILED, "InvalidProfile", "; ".join(f"device class {c}: {m}"
                                                                      for c, m in sorted(bad.items())))
    profile_jobs: list[dict[str, Any]] = []
    if needed:
        jobs_by_class = {j.device_class: j for j in observed.jobs}
        failed_jobs = [j for c, j in sorted(jobs_by_class.items()) if c in needed and j.failed]
        if failed_jobs:
            raise _Halt("Failed", PROFILED, "ProfilingFailed", "; ".join(
                f"profiling job {j.name} for device class {j.device_class} failed"
                + (f": {j.message}" if j.message else "") for j in failed_jobs))
        profile_jobs = [render.profile_job(c, node.name, format_cpu(node.cpu * settings.cpu_share),
                                           owner.namespace, settings) for c, node in sorted(needed.items())]
    profiling = (f"profiling device classes {sorted(needed)} on nodes {[needed[c].name for c in sorted(needed)]}"
                 if needed else "")

    if spec.variants is not None:  # accuracy-aware data partitioning: a dispatcher and variant workers
        return _reconcile_variants(ctx, spec, usable, profiles, master, observed, excluded, degraded_reasons,
                                   sorted(left_out), configs)

    # ---- the model's layer graph: traced here only for code the operator trusts, else by a Job
    request = plan_request(spec, usable, profiles, master)
    known: dict[str, LayerGraph] = {}
    keys: list[str] = []
    trace_jobs: list[dict[str, Any]] = []
    volumes = {model_id: given.volume.source() for model_id, given in spec.model_specs() if given.volume}
    for model_id, model in request.models:
        graph, key, trace_job = model_graph(model, graphs, observed, settings, owner.namespace,
                                            volumes.get(model_id))
        keys.append(key)
        if trace_job is not None:
            trace_jobs.append(trace_job)
        else:
            assert graph is not None  # traced by a Job, or here (a zoo or trusted model)
            known[model_id] = graph
    if trace_jobs:
        if needed:
            ctx.set(PROFILED, False, "ProfilingJobsRunning", profiling)
        tracing = ", ".join(f"{j['metadata']['annotations'].get(names.ANNOTATION_MODEL, '')[:200] or '?'} in job "
                            f"{j['metadata']['name']}" for j in trace_jobs)
        raise _Halt("Tracing", TRACED, "TracingJobRunning",
                    f"tracing {tracing} (the operator does not import models outside the zoo)"
                    + (f"; {profiling}" if needed else ""), jobs=[*trace_jobs, *profile_jobs])
    ctx.set(TRACED, True, "GraphKnown", "every model's layer graph is known"
            + (" (traced by a job)" if any(keys) else ""))
    if needed:
        raise _Halt("Profiling", PROFILED, "ProfilingJobsRunning", profiling, jobs=profile_jobs)
    ctx.set(PROFILED, True, "ProfilesFound", "every device class has a profile")
    if spec.sources:  # several data sources: ring workers instead of a plan (operator/ring.py)
        from edgepart.operator.ring import reconcile_ring

        return reconcile_ring(ctx, spec, usable, request, known, observed, excluded, degraded_reasons,  # type: ignore[no-any-return]
                              configs)

    # ---- plan (a node usable again is planned in only for a gain: a re-plan costs a rollout)
    request = replace(request, graphs=known, graph_keys=tuple(keys))
    plan, model_graphs = _planned(planner, request)
    rollout_settings = rollout.RolloutSettings(spec.progress_deadline_seconds, spec.replan_gain)
    held = _hold_serving_nodes(spec, usable, observed.status, same_generation, plan, rollout_settings)
    if held is not None:
        usable, master = held.nodes, _master_of(spec, held.nodes)
        request = replace(plan_request(spec, usable, profiles, master), graphs=known, graph_keys=tuple(keys))
        plan, model_graphs = _planned(planner, request)
    plan_hash = plan_digest(plan)
    ctx.set(PLANNED, True, "PlanComputed", f"{plan.solver}: {len(plan.models)} model(s), "
                                           f"{len(plan.tasks)} partitions on {len(plan.devices)} nodes")

    # ---- objects
    by_name = {n.name: n for n in usable}
    internal = settings.internal_port  # every hop inside the deployment; only the client port is public
    # every plan has its own ConfigMap and Services, so the serving plan runs on while this one starts
    addresses = {t.id: f"http://{names.plan_service_name(owner.name, t.id, plan_hash)}.{owner.namespace}.svc:"
                       f"{internal}" for t in plan.tasks}
    gateway_service = names.gateway_name(owner.name)
    gateway_url = f"http://{gateway_service}.{owner.namespace}.svc:{settings.port}"
    gateway_internal_url = (f"http://{names.gateway_plan_service_name(owner.name, plan_hash)}.{owner.namespace}"
                            f".svc:{internal}")
    on_node: dict[str, int] = {}
    for task in plan.tasks:
        on_node[task.device] = on_node.get(task.device, 0) + 1
    threads = {node: max(1, int(by_name[node].cpu * settings.cpu_share / count))
               for node, count in on_node.items()}
    try:
        rendered = configs(ConfigRequest(
            plan=plan, deployment=owner.name, addresses=addresses, gateway_url=gateway_internal_url,
            gateway_device=master, request_timeout_s=parse_duration(spec.request_timeout),
            admission=spec.admission, peer_timeout_s=parse_duration(spec.peer_timeout),
            client_port=settings.port, secret_file=render.SECRET_FILE, threads=threads,
            exact_kernels=spec.exact_kernels))
    except ValueError as err:  # EdgepartErrors and the data plane's ConfigError
        raise _Halt("Failed", PLANNED, "ConfigFailed", str(err)) from None
    data = {render.PLAN_KEY: plan.to_json(), render.GATEWAY_KEY: rendered.gateway}
    data.update({render.partition_key(pid): text for pid, text in rendered.partitions.items()})
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > CONFIG_MAP_LIMIT:
        raise _Halt("Failed", PLANNED, "PlanTooLarge",
                    f"the plan and its configs take {size} bytes; a ConfigMap holds at most 1 MiB")

    config_map = names.plan_config_map_name(owner.name, plan_hash)
    objects: list[dict[str, Any]] = [
        render.service_account(owner),
        render.plan_config_map(owner, data, plan_hash, name=config_map),
        render.gateway_plan_service(owner, plan_hash, settings),
        *render.network_policies(owner, settings),
    ]
    pod_names: dict[str, str] = {}
    for task in plan.tasks:
        resources = partition_resources(model_graphs[task.model], task, by_name[task.device], on_node[task.device],
                                        settings.cpu_share)
        pod_object = render.partition_pod(owner, render.PartitionPod(
            partition_id=task.id, node=task.device, cpu=format_cpu(resources.cpu),
            memory_request=format_memory(resources.memory_request),
            memory_limit=format_memory(resources.memory_limit), weights_volume=volumes.get(task.model)),
            plan_hash, settings, config_map=config_map)
        pod_names[task.id] = pod_object["metadata"]["name"]
        objects.append(pod_object)
        objects.append(render.partition_service(owner, task.id, plan_hash, settings,
                                                name=names.plan_service_name(owner.name, task.id, plan_hash)))

    # ---- make before break: the gateway moves to this plan once its partitions are ready
    ready_pods = {p.name for p in observed.pods if p.ready and not p.deleting}
    ready_count = sum(1 for name in pod_names.values() if name in ready_pods)
    new_gateway = _plan_gateway(owner, master, plan_hash, settings)
    state = replace(rollout.RolloutState.from_status(observed.status, plan_hash),
                    new_ready=ready_count == len(pod_names),
                    gateway_on_new=observed.gateway.spec_hash == _scheduled_hash(new_gateway, spec),
                    gateway_ready=observed.gateway.ready)
    step = rollout.decide(state, rollout_settings, ctx.now)
    gateway = new_gateway if step.route == plan_hash else _plan_gateway(owner, master, step.route, settings)
    objects.append(gateway)
    objects.append(render.gateway_service(owner, settings))
    _set_progressing(ctx, step, held)

    # ---- status
    gateway_ready = observed.gateway.ready and observed.gateway.spec_hash == _scheduled_hash(gateway, spec)
    all_ready = ready_count == len(pod_names) and gateway_ready
    waiting = sorted(pid for pid, name in pod_names.items() if name not in ready_pods)
    if all_ready:
        ctx.set(READY, True, "AllReady", f"{ready_count} partitions and the gateway are ready")
    else:
        ctx.set(READY, False, "PodsNotReady",
                (f"partitions not ready: {waiting}" if waiting else "") +
                ("" if gateway_ready else ("; " if waiting else "") + "gateway not ready"))
    if degraded_reasons:
        ctx.set(DEGRADED, True, "DevicesLeftOut", "; ".join(degraded_reasons))
    else:
        ctx.set(DEGRADED, False, "AllDevicesUsed", "every selected node is usable")
    phase: Phase = ("Degraded" if degraded_reasons else "Ready") if all_ready else "Deploying"
    message = {
        "Ready": f"serving at {gateway_url}",
        "Degraded": f"serving at {gateway_url} without {sorted(left_out)}"
                    + ("" if not left_out else "; re-planned over the remaining nodes"),
        "Deploying": f"waiting for {len(pod_names) - ready_count} of {len(pod_names)} partitions"
                     + ("" if gateway_ready else " and the gateway")
                     + (f"; plan {step.serving} keeps serving" if step.pending else ""),
    }[phase]
    if phase == "Degraded" and not left_out:
        message = f"serving at {gateway_url}; " + "; ".join(degraded_reasons)
    status = DeploymentStatus(
        phase=phase, message=message, observed_generation=owner.generation, conditions=_ordered(ctx.conditions),
        partitions=len(pod_names), ready_partitions=ready_count, ready=f"{ready_count}/{len(pod_names)}",
        devices=[n.name for n in usable], excluded_nodes=excluded,
        plan=plan_summary(plan, plan_hash, config_map),
        predicted=predicted_summary(plan),
        gateway=Gateway(service=gateway_service, endpoint=gateway_url),
        plan_inputs=request.key,
        serving_plan=step.serving, pending_plan=step.pending or None, pending_since=step.pending_since or None,
    )
    return DesiredState(phase=phase, status=status.to_dict(), objects=tuple(render.sorted_objects(objects)),
                        prune=True, keep=step.keep, secrets=(render.deployment_secret(owner),), plan=plan,
                        plan_inputs=request.key)


def _wanted_master(spec: DeploymentSpec) -> str | None:
    """spec.master, else the device of role end (it holds the input)."""
    return spec.master or next((d.name for d in spec.devices if d.role == "end"), None)


def _master_of(spec: DeploymentSpec, usable: Sequence[NodeInfo]) -> str:
    return choose_master(_wanted_master(spec), [n.name for n in usable])


def _planned(planner: PlanFn, request: PlanRequest) -> tuple[Plan, dict[str, LayerGraph]]:
    try:
        return planner(request), graphs_of(request)
    except EdgepartError as err:
        raise _Halt("Failed", PLANNED, "PlanningFailed", _name_field(err)) from None


@dataclass(frozen=True)
class _Held:
    """The serving plan's nodes, kept although more are usable: planning them in gains too little."""

    nodes: list[NodeInfo]
    message: str


def _hold_serving_nodes(spec: DeploymentSpec, usable: Sequence[NodeInfo], status: Mapping[str, Any],
                        same_generation: bool, candidate: Plan,
                        settings: rollout.RolloutSettings) -> _Held | None:
    returning = rollout.returning_nodes(status, [n.name for n in usable], same_generation)
    if not returning:
        return None
    serving = rollout.Prediction.from_status(status)
    predicted = candidate.predicted
    offered = None if predicted is None else rollout.Prediction(predicted.latency_s, predicted.throughput_per_s)
    if serving is None or offered is None or rollout.worth_replanning(spec.objective, serving, offered, settings):
        return None
    gained = rollout.gain(spec.objective, serving, offered)
    return _Held([n for n in usable if n.name not in returning],
                 f"nodes {list(returning)} are usable again; a plan with them predicts a {spec.objective} gain of "
                 f"{gained:.1%}, not above spec.replanGain {settings.replan_gain:.1%}: plan "
                 f"{status.get('servingPlan')} keeps serving")


def _plan_gateway(owner: Owner, master: str, plan_hash: str, settings: OperatorSettings) -> dict[str, Any]:
    """The gateway that routes to one plan: its config comes from that plan's ConfigMap."""
    return render.gateway_deployment(owner, master, plan_hash, settings,
                                     config_map=names.plan_config_map_name(owner.name, plan_hash))


def _scheduled_hash(obj: Mapping[str, Any], spec: DeploymentSpec) -> str:
    """The content digest the object has in the cluster (pull secrets, tolerations and affinity added)."""
    return str(with_scheduling(obj, spec)["metadata"]["annotations"][names.ANNOTATION_HASH])


def _set_progressing(ctx: _Context, step: rollout.Rollout, held: _Held | None) -> None:
    if held is not None and not step.pending:
        ctx.set(PROGRESSING, True, rollout.REPLAN_SKIPPED, held.message)
    else:
        ctx.set(PROGRESSING, step.progressing, step.reason, step.message)


def _reconcile_variants(ctx: _Context, spec: DeploymentSpec, usable: Sequence[NodeInfo],
                        profiles: Mapping[str, DeviceProfile], master: str, observed: Observed,
                        excluded: list[ExcludedNode], degraded_reasons: Sequence[str], left_out: Sequence[str],
                        configs: ConfigRenderer) -> DesiredState:
    """`operator/variants.py` computes the objects; here they become the desired state and its status."""
    from edgepart.operator.variants import reconcile_variants

    owner, settings = ctx.owner, ctx.settings
    ready_pods = {p.name for p in observed.pods if p.ready and not p.deleting}

    def gateway_ready(gateway: Mapping[str, Any]) -> bool:
        return observed.gateway.ready and observed.gateway.spec_hash == gateway["metadata"]["annotations"][
            names.ANNOTATION_HASH]

    try:
        outcome = reconcile_variants(owner, spec, plan_request(spec, usable, profiles, master), usable, master,
                                     settings=settings, configs=configs, ready_pods=ready_pods,
                                     gateway_ready=gateway_ready, degraded_reasons=degraded_reasons,
                                     left_out=left_out)
    except (EdgepartError, ValueError) as err:
        raise _Halt("Failed", PLANNED, "ConfigurationFailed", str(err)[:2000]) from None
    ctx.set(TRACED, True, "GraphKnown", "every variant's layer graph is known")
    ctx.set(PROFILED, True, "ProfilesFound", "every device class has a profile")
    for type_, ok, reason, message in outcome.conditions:
        ctx.set(type_, ok, reason, message)
    selection = outcome.exploration.selection
    status = DeploymentStatus(
        phase=outcome.phase, message=outcome.message, observed_generation=owner.generation,
        conditions=_ordered(ctx.conditions), partitions=outcome.workers, ready_partitions=outcome.ready,
        ready=f"{outcome.ready}/{outcome.workers}", devices=[n.name for n in usable], excluded_nodes=excluded,
        predicted=Predicted(latency="-", latency_seconds=0.0, throughput=format_rate(selection.throughput),
                            throughput_per_second=selection.throughput),
        gateway=Gateway(service=names.gateway_name(owner.name),
                        endpoint=f"http://{names.gateway_name(owner.name)}.{owner.namespace}.svc:{settings.port}"),
    )
    return DesiredState(phase=outcome.phase, status=status.to_dict(), objects=outcome.objects, prune=True,
                        secrets=(render.deployment_secret(owner),))


def _name_field(err: EdgepartError) -> str:
    text = str(err)
    if isinstance(err, UnknownModelError | ModelLoadError) and not text.startswith("spec."):
        return f"spec.model.name: {text}"
    return text


def plan_request(spec: DeploymentSpec, usable: Sequence[NodeInfo], profiles: Mapping[str, DeviceProfile],
                 master: str) -> PlanRequest:
    """The planner's view of the usable nodes: one device per node, master first."""
    overrides = {d.name: d for d in spec.devices}
    devices = []
    for node in sorted(usable, key=lambda n: (n.name != master, n.name)):
        override = overrides.get(node.name)
        devices.append(DeviceSpec(
            name=node.name,
            memory=format_memory(node.memory),
            cpus=min(256.0, max(node.cpu, 0.001)),
            arch=node.arch,
            speed=override.speed if override is not None else None,
            role=override.role if override is not None and (override.role != "end" or node.name == master) else None,
            labels={names.LABEL_DEVICE_CLASS: node.device_class},
        ))
    network = links_among(spec.network, [n.name for n in usable])
    cluster = ClusterSpec(devices=devices, network=network, master=master)
    node_profiles = {node.name: profiles[node.device_class] for node in usable
                     if node.device_class in profiles}
    several = spec.model is None
    models = []
    for k, (model_id, given) in enumerate(spec.model_specs()):
        field = f"spec.models[{k}]" if several else "spec.model"
        name, weights = _in_pods(given, field)
        model = ModelRef(name, tuple(given.input_shape) if given.input_shape else None, weights, given.seed)
        if not is_zoo_name(model.name) and ":" not in model.name:
            raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                        f"{field}.name: unknown model {model.name!r}: not in the zoo ({', '.join(sorted(ZOO))}) and "
                        "not of the form package.module:factory or path/to/file.py:factory")
        if model.input_shape is None:
            if not is_zoo_name(model.name):
                raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                            f"{field}.inputShape: required for models outside the zoo")
            # the plan records the input shape, so configs built from it are self-describing
            model = replace(model, input_shape=input_shape_of(model))
        models.append((model_id, model))
    return PlanRequest(models=tuple(models), objective=spec.objective, solver=spec.solver, cluster=cluster,
                       profiles=node_profiles, options=dict(spec.solver_options))


def _in_pods(given: ModelSpec, field: str) -> tuple[str, str | None]:
    """The model name and weights path as pods see them (relative paths resolve under the model's volume)."""
    weights = None if given.weights is None else _pod_path(given, f"{field}.weights", given.weights)
    location, _, factory = given.name.rpartition(":")
    if location.endswith(".py") or "/" in location:
        return f"{_pod_path(given, f'{field}.name', location)}:{factory}", weights
    return given.name, weights


def _pod_path(given: ModelSpec, where: str, path: str) -> str:
    """Pods mount only their config: a relative path needs the model's volume (at WEIGHTS_DIR); an absolute one
    is taken as a file in the image (or under WEIGHTS_DIR)."""
    if posixpath.isabs(path):
        return path
    if given.volume is None:
        field = where.rpartition(".")[0]
        raise _Halt("Failed", SPEC_VALID, "InvalidSpec",
                    f"{field}.volume: {where} {path!r} is a relative path, but pods mount only their config; give "
                    f"the model a volume (persistentVolumeClaim, hostPath or image), mounted at {WEIGHTS_DIR}, or an "
                    "absolute path inside the image")
    return posixpath.join(WEIGHTS_DIR, posixpath.normpath(path))


def model_graph(model: ModelRef, graphs: Mapping[str, LayerGraph], observed: Observed, settings: OperatorSettings,
                namespace: str, volume: Mapping[str, Any] | None = None
                ) -> tuple[LayerGraph | None, str, dict[str, Any] | None]:
    """(the graph, its key ('' when traced here), a tracing Job to create when it is not known yet: no graph).

    Zoo models and the admin's trusted references are traced here; any other reference is never imported
    by the operator: its graph comes from a tracing Job, as data.
    """
    if is_zoo_name(model.name) or model.name in settings.trusted_models:
        try:
            return graph_of(model, frozenset(settings.trusted_models)), "", None
        except EdgepartError as err:
            raise _Halt("Failed", TRACED, "TracingFailed", _name_field(err)) from None
    key = graph_key(model, settings.image)
    graph = graphs.get(key)
    if graph is not None:
        try:
            return check_graph(graph, model, f"graph {names.graph_config_map_name(key)}"), key, None
        except EdgepartError as err:
            raise _Halt("Failed", TRACED, "InvalidGraph", str(err)) from None
    if key in observed.graph_errors:
        raise _Halt("Failed", TRACED, "InvalidGraph", observed.graph_errors[key])
    job = next((j for j in observed.trace_jobs if j.key == key), None)
    if job is not None and job.failed:
        raise _Halt("Failed", TRACED, "TracingFailed",
                    f"spec.model.name: tracing {model.name[:200]!r} failed in job {job.name}"
                    + (f": {job.message}" if job.message else "") + " (see its pod's log)")
    assert model.input_shape is not None  # plan_request requires it outside the zoo
    return None, key, render.trace_job(key, model.name, model.input_shape, namespace, settings, volume)


def plan_summary(plan: Plan, plan_hash: str, config_map: str) -> PlanSummary:
    return PlanSummary(
        solver=plan.solver, objective=plan.objective, hash=plan_hash, devices=list(plan.devices),
        stages=[StageSummary(index=v.index, kind=v.kind, split=_split_of(v), layers=f"[{v.start}, {v.stop})",
                             devices=list(v.devices), partitions=len(v.tasks), model=v.model)
                for v in plan.stage_view()],
        config_map=config_map,
    )


def predicted_summary(plan: Plan) -> Predicted | None:
    if plan.predicted is None:
        return None
    p = plan.predicted
    return Predicted(latency=format_seconds(p.latency_s), latency_seconds=p.latency_s,
                     throughput=format_rate(p.throughput_per_s), throughput_per_second=p.throughput_per_s)


def _split_of(view: StageView) -> str:
    """How a stage's tasks divide its output: none, channels, rows or grid."""
    if len(view.tasks) == 1:
        return "none"
    regions = [t.output for t in view.tasks]
    if len({r.channels for r in regions}) > 1:
        return "channels"
    if len(regions[0].dims) == 3 and len({r.cols for r in regions}) > 1:
        return "grid"
    return "rows"
