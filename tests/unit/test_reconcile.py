"""reconcile(spec, nodes, profiles) -> DesiredState: pure, compared by value."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from k8s_fakes import LATER, NOW, OWNER, nodes, profile, spec
from kubernetes.utils.quantity import parse_quantity

from edgepart.cli import data_plane_configs
from edgepart.operator.names import (
    ANNOTATION_HASH,
    HOSTNAME_LABEL,
    LABEL_PARTITION,
    LABEL_PLAN,
    pinned_node,
)
from edgepart.operator.planning import PlanRequest, compute_plan, graph_of
from edgepart.operator.profiles import JobState
from edgepart.operator.reconcile import DesiredState, GatewayState, Observed, PodState, reconcile
from edgepart.operator.settings import OperatorSettings
from edgepart.partition_service.config import load_gateway_config, load_partition_config
from edgepart.plan import Plan, plan_from_json

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0")
PROFILES = {"rpi4": profile("rpi4")}


def run(body: dict[str, Any] | None = None, node_list: Any = None, profiles: Any = None,
        observed: Observed | None = None, now: str = NOW, owner: Any = OWNER, **kwargs: Any) -> DesiredState:
    return reconcile(owner, body if body is not None else spec(), nodes() if node_list is None else node_list,
                     PROFILES if profiles is None else profiles, observed=observed or Observed(), settings=SETTINGS,
                     planner=kwargs.pop("planner", compute_plan), configs=data_plane_configs, now=now, **kwargs)


def plan_map(desired: DesiredState) -> Mapping[str, Any]:
    """The plan's own ConfigMap (one per plan, so two plans coexist during a rollout)."""
    return desired.object("ConfigMap", desired.status["plan"]["configMap"])


def plan_of(desired: DesiredState) -> Plan:
    return plan_from_json(plan_map(desired)["data"]["plan.json"])


def pods(desired: DesiredState) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["labels"][LABEL_PARTITION]: dict(p) for p in desired.of_kind("Pod")}


def ready_pod_states(desired: DesiredState) -> tuple[PodState, ...]:
    return tuple(PodState.from_object({**p, "status": {"phase": "Running",
                                                      "conditions": [{"type": "Ready", "status": "True"}]}})
                 for p in desired.of_kind("Pod"))


def gateway_ready(desired: DesiredState) -> GatewayState:
    gateway = desired.object("Deployment", "alex-gateway")
    return GatewayState(ready=True, spec_hash=gateway["metadata"]["annotations"][ANNOTATION_HASH])


def test_equal_inputs_give_equal_outputs() -> None:
    first, second = run(), run()
    assert first == second
    assert json.dumps(first.status, sort_keys=True) == json.dumps(second.status, sort_keys=True)


def test_one_pod_and_one_service_per_partition_pinned_to_the_planned_node() -> None:
    desired = run()
    plan = plan_of(desired)
    assert desired.phase == "Deploying" and desired.prune
    assert desired.plan == plan
    by_partition = pods(desired)
    assert sorted(by_partition) == sorted(t.id for t in plan.tasks)
    services = {s["metadata"]["name"] for s in desired.of_kind("Service")}
    plan_hash = desired.status["plan"]["hash"]
    assert services == {f"alex-{t.id}-{plan_hash[:8]}" for t in plan.tasks} | {"alex-gateway",
                                                                             f"alex-gateway-{plan_hash[:8]}"}
    for part in plan.tasks:
        pod = by_partition[part.id]
        assert pinned_node(pod["spec"]) == part.device and HOSTNAME_LABEL not in pod["spec"].get("nodeSelector", {})
        assert pod["metadata"]["labels"][LABEL_PLAN] == desired.status["plan"]["hash"]
        config = load_partition_config(plan_map(desired)["data"][f"partition-{part.id}.json"])
        assert config.partition == part.id and config.device == part.device
        assert config.request_timeout_s == 30.0
    assert [d["metadata"]["name"] for d in desired.of_kind("Deployment")] == ["alex-gateway"]
    assert len(desired.of_kind("NetworkPolicy")) == 2 and len(desired.of_kind("ServiceAccount")) == 1
    for obj in desired.objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert obj["metadata"]["namespace"] == "edge"


def test_resource_requests_come_from_the_plan() -> None:
    desired = run()
    plan = plan_of(desired)
    graph = graph_of(plan.model)
    for part in plan.tasks:
        resources = pods(desired)[part.id]["spec"]["containers"][0]["resources"]
        memory = parse_quantity(resources["requests"]["memory"])
        assert memory >= graph.weight_bytes(part.start, part.stop), part.id
        assert parse_quantity(resources["limits"]["memory"]) > memory
        on_node = sum(1 for p in plan.tasks if p.device == part.device)
        assert float(parse_quantity(resources["requests"]["cpu"])) == pytest.approx(4 * 0.8 / on_node, abs=1e-3)
    # the head stage holds the classifier's weights: its pod asks for more memory than a tile of the features
    stages = plan.stage_view()
    head = stages[-1].tasks[0].id
    tile = stages[0].tasks[1].id
    requests = {pid: parse_quantity(p["spec"]["containers"][0]["resources"]["requests"]["memory"])
                for pid, p in pods(desired).items()}
    assert requests[head] > requests[tile]


def test_the_status_summarises_the_plan() -> None:
    desired = run(spec(solver="auto", solverOptions={}))
    status = desired.status
    plan = plan_of(desired)
    assert status["phase"] == "Deploying" and status["observedGeneration"] == 1
    assert status["partitions"] == len(plan.tasks) and status["ready"] == f"0/{len(plan.tasks)}"
    assert status["plan"]["solver"] == plan.solver and len(status["plan"]["stages"]) == len(plan.stage_view())
    assert plan.predicted is not None
    assert status["predicted"]["latencySeconds"] == pytest.approx(plan.predicted.latency_s)
    assert status["predicted"]["latency"].endswith(("ms", "s"))
    assert status["gateway"] == {"service": "alex-gateway", "endpoint": "http://alex-gateway.edge.svc:8080"}
    assert [c["type"] for c in status["conditions"]] == [
        "SpecValid", "DevicesAvailable", "Traced", "Profiled", "Planned", "Ready", "Degraded", "Progressing"]
    assert status["planInputs"] == desired.plan_inputs and len(desired.plan_inputs) == 16


def test_ready_once_every_pod_and_the_gateway_of_this_plan_are_ready() -> None:
    desired = run()
    pods_ready = ready_pod_states(desired)
    stale_gateway = GatewayState(ready=True, spec_hash="something-older")
    assert run(observed=Observed(pods=pods_ready, gateway=stale_gateway)).phase == "Deploying"
    assert run(observed=Observed(pods=pods_ready[1:], gateway=gateway_ready(desired))).phase == "Deploying"
    ready = run(observed=Observed(pods=pods_ready, gateway=gateway_ready(desired)))
    assert ready.phase == "Ready"
    assert ready.status["ready"] == f"{len(pods_ready)}/{len(pods_ready)}"
    assert ready.objects == desired.objects  # readiness changes the status, never the objects


def test_condition_times_move_only_when_their_status_changes() -> None:
    first = run()
    again = run(observed=Observed(status=first.status), now=LATER)
    assert again.status == first.status
    ready = run(observed=Observed(status=first.status, pods=ready_pod_states(first), gateway=gateway_ready(first)),
                now=LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in ready.status["conditions"]}
    assert times["Ready"] == LATER
    assert times["Planned"] == NOW


@pytest.mark.parametrize(("body", "field"), [
    (spec(network={"bandwidth": "fast"}), "spec.network.bandwidth"),
    (spec(network={"latency": "2 parsecs"}), "spec.network.latency"),
    (spec(objective="speed"), "spec.objective"),
    (spec(model={"name": "no-such-model"}), "spec.model.name"),
    (spec(model={"name": "mypkg.models:build"}), "spec.model.inputShape"),
    (spec(model={"name": "alexnet", "inputShape": [1, 3, 224]}), "spec.model.inputShape"),
    (spec(nodeSelector={}), "spec.devices or spec.nodeSelector"),
    (spec(master="edge-9"), "spec.master"),
    (spec(devices=[{"name": "edge-1", "profile": "/p.json"}]), "spec.devices[0].profile"),
    (spec(devices=[{"name": "edge-1", "memory": "lots"}]), "spec.devices[0].memory"),
    (spec(solver="no-such-solver"), "spec.solver"),
    (spec(solverOptions={"gird": [2, 2]}), "spec.solverOptions"),
    (spec(unknownField=1), "spec.unknownField"),
    (spec(model={"name": "alexnet", "weights": "alexnet.safetensors"}), "spec.model.volume"),
    (spec(model={"name": "models/tiny.py:tiny", "inputShape": [1, 3, 32, 32]}), "spec.model.volume"),
    (spec(model={"name": "alexnet", "volume": {"hostPath": {"path": "/w"}, "image": {"reference": "w:1"}}}),
     "spec.model.volume"),
])
def test_an_invalid_spec_fails_naming_the_field(body: dict[str, Any], field: str) -> None:
    desired = run(body)
    assert desired.phase == "Failed"
    assert desired.status["message"].startswith(field), desired.status["message"]
    assert desired.objects == () and desired.jobs == () and not desired.prune  # what runs is left alone
    failed = [c for c in desired.status["conditions"] if c["status"] == "False"]
    assert len(failed) == 1 and failed[0]["message"] == desired.status["message"]
    assert failed[0]["reason"] in ("InvalidSpec", "PlanningFailed")


def test_no_matching_node_is_pending() -> None:
    desired = run(spec(nodeSelector={"pool": "elsewhere"}))
    assert desired.phase == "Pending"
    assert desired.status["conditions"][-1]["reason"] == "NoMatchingNodes"


def test_named_devices_select_nodes_and_override_their_speed() -> None:
    body = spec(nodeSelector={}, devices=[{"name": "edge-1", "speed": 2.0}, {"name": "edge-3", "speed": 1.0}],
                master="edge-1")
    desired = run(body, profiles={})  # speeds given: no profiling needed
    assert desired.phase == "Deploying"
    assert set(plan_of(desired).devices) <= {"edge-1", "edge-3"}
    assert desired.status["devices"] == ["edge-1", "edge-3"]


def test_a_not_ready_node_is_left_out_of_the_plan() -> None:
    node_list = nodes()
    node_list[2] = replace(node_list[2], ready=False)
    desired = run(node_list=node_list)
    assert "edge-2" not in plan_of(desired).devices
    assert all(pinned_node(p["spec"]) != "edge-2" for p in desired.of_kind("Pod"))
    assert desired.status["excludedNodes"] == [{"name": "edge-2", "reason": "NodeNotReady",
                                                "message": "node edge-2 is NotReady"}]
    degraded = run(node_list=node_list, observed=Observed(pods=ready_pod_states(desired),
                                                          gateway=gateway_ready(desired)))
    assert degraded.phase == "Degraded"
    node_list = [replace(n, ready=False) for n in node_list]
    assert run(node_list=node_list).phase == "Pending"


def test_an_unusable_master_moves_the_gateway_and_degrades() -> None:
    node_list = nodes()
    node_list[0] = replace(node_list[0], schedulable=False)
    desired = run(node_list=node_list)
    gateway = desired.object("Deployment", "alex-gateway")
    assert pinned_node(gateway["spec"]["template"]["spec"]) == "edge-1"
    degraded = next(c for c in desired.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "master edge-0" in degraded["message"]


def test_a_failed_partition_pod_excludes_its_node_until_the_spec_changes() -> None:
    desired = run()
    victim = next(p for p in desired.of_kind("Pod") if pinned_node(p["spec"]) == "edge-3")
    crashed = PodState.from_object({**victim, "status": {"phase": "Running", "containerStatuses": [
        {"name": "partition", "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    assert crashed.failure(3) == f"pod {victim['metadata']['name']} restarted 5 times (CrashLoopBackOff)"
    replanned = run(observed=Observed(pods=(crashed,), status=desired.status))
    assert "edge-3" not in plan_of(replanned).devices
    excluded = replanned.status["excludedNodes"]
    assert [(e["name"], e["reason"], e["failure"], e["count"]) for e in excluded] == [
        ("edge-3", "PartitionFailed", "CrashLoop", 1)]
    # the failed pod is gone: the exclusion stays, as long as the generation does (and its time lasts)
    remembered = run(observed=Observed(status=replanned.status))
    assert remembered.status["excludedNodes"] == excluded
    assert "edge-3" not in plan_of(remembered).devices
    fresh = run(observed=Observed(status=replanned.status), owner=replace(OWNER, generation=2))
    assert fresh.status["excludedNodes"] == [] and "edge-3" in plan_of(fresh).devices


def test_a_missing_profile_starts_one_profiling_job_per_class() -> None:
    node_list = nodes(2, "rpi4") + [replace(n, name=f"big-{i}", device_class="jetson", labels={"pool": "edge"})
                                    for i, n in enumerate(nodes(2, "jetson"))]
    desired = run(node_list=node_list, profiles={"rpi4": profile("rpi4")})
    assert desired.phase == "Profiling" and desired.objects == () and not desired.prune
    assert [j["metadata"]["name"] for j in desired.jobs] == ["edgepart-profile-jetson"]
    job = desired.jobs[0]
    assert pinned_node(job["spec"]["template"]["spec"]) == "big-0"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == SETTINGS.image
    assert "ownerReferences" not in job["metadata"]  # shared by every deployment that needs the class
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "edgepart profile --name jetson -o" in script and "--quick" not in script
    assert desired.status["conditions"][-1]["reason"] == "ProfilingJobsRunning"

    failed_job = JobState("edgepart-profile-jetson", "jetson", active=False, succeeded=False, failed=True,
                          message="BackoffLimitExceeded")
    failed = run(node_list=node_list, profiles={"rpi4": profile("rpi4")}, observed=Observed(jobs=(failed_job,)))
    assert failed.phase == "Failed" and "BackoffLimitExceeded" in failed.status["message"]
    bad = run(node_list=node_list, profiles={"rpi4": profile("rpi4")},
              observed=Observed(profile_errors={"jetson": "ConfigMap edgepart-profile-jetson: ops: bad"}))
    assert bad.phase == "Failed" and bad.status["conditions"][-1]["reason"] == "InvalidProfile"


def test_heterogeneous_profiles_reach_the_planner() -> None:
    seen: list[PlanRequest] = []

    def planner(request: PlanRequest) -> Plan:
        seen.append(request)
        return compute_plan(request)

    node_list = nodes(2, "slow") + [replace(n, name=f"fast-{i}", device_class="fast", labels={"pool": "edge"})
                                    for i, n in enumerate(nodes(2, "fast"))]
    profiles = {"slow": profile("slow", 1.0), "fast": profile("fast", 4.0)}
    desired = run(spec(master="fast-0"), node_list=node_list, profiles=profiles, planner=planner)
    assert desired.phase == "Deploying"
    request = seen[0]
    assert request.cluster.master == "fast-0" and request.cluster.devices[0].name == "fast-0"
    assert request.profiles["fast-1"] is profiles["fast"] and request.profiles["edge-0"] is profiles["slow"]
    assert {d.name: d.memory for d in request.cluster.devices}["edge-0"] == "8192Mi"
    assert request.key == PlanRequest(request.models, request.objective, request.solver, request.cluster,
                                      dict(request.profiles), dict(request.options),
                                      graph_keys=request.graph_keys).key


def test_two_models_deploy_as_one_task_graph() -> None:
    """spec.models: both models planned into one plan; one pod per task of either model; the gateway serves
    both; the status names each stage's model."""
    body = {k: v for k, v in spec().items() if k != "model"}
    body["models"] = [{"id": "alex", "name": "alexnet"}, {"id": "squeeze", "name": "squeezenet1_1"}]
    desired = run(body)
    assert desired.phase == "Deploying", desired.status
    plan = plan_of(desired)
    assert plan.model_ids == ("alex", "squeeze")
    assert sorted(pods(desired)) == sorted(t.id for t in plan.tasks)
    assert {t.model for t in plan.tasks} == {"alex", "squeeze"}
    gateway = load_gateway_config(plan_map(desired)["data"]["gateway.json"])
    assert [m.id for m in gateway.models] == ["alex", "squeeze"]
    assert {s["model"] for s in desired.status["plan"]["stages"]} == {"alex", "squeeze"}
    assert plan.predicted is not None and set(plan.predicted.models) == {"alex", "squeeze"}


def test_a_bad_second_model_names_its_index() -> None:
    body = {k: v for k, v in spec().items() if k != "model"}
    body["models"] = [{"name": "alexnet"}, {"name": "not-a-model"}]
    desired = run(body)
    assert desired.phase == "Failed"
    assert "spec.models[1].name: unknown model 'not-a-model'" in desired.status["message"]


@pytest.mark.parametrize(("fields", "exact"), [({}, False), ({"exactKernels": True}, True)])
def test_partitions_run_the_fastest_kernels_unless_the_deployment_asks_for_exact_ones(
        fields: dict[str, Any], exact: bool) -> None:
    desired = run(spec(**fields))
    data = plan_map(desired)["data"]
    configs = [load_partition_config(text) for key, text in data.items() if key.startswith("partition-")]
    assert configs and {c.exact_kernels for c in configs} == {exact}


def test_weights_on_a_volume_are_mounted_read_only_and_resolved_under_it() -> None:
    desired = run(spec(model={"name": "alexnet", "weights": "nets/alexnet.safetensors",
                              "volume": {"persistentVolumeClaim": {"claimName": "models"}}}))
    config_map = plan_map(desired)["data"]
    for task_id, pod in pods(desired).items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["weights"] == {"name": "weights", "mountPath": "/weights", "readOnly": True}
        config = load_partition_config(config_map[f"partition-{task_id}.json"])
        assert config.model.weights == "/weights/nets/alexnet.safetensors"


def test_a_file_model_on_an_image_volume_is_traced_with_the_volume_mounted() -> None:
    desired = run(spec(model={"name": "models/tiny.py:tiny", "inputShape": [1, 3, 32, 32],
                              "volume": {"image": {"reference": "registry.example/models:1"}}}))
    (job,) = [j for j in desired.jobs if "--" in j["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][-1] == "/weights/models/tiny.py:tiny"
    assert {"name": "weights", "image": {"reference": "registry.example/models:1", "pullPolicy": "IfNotPresent"}} \
        in pod["volumes"]
    assert {"name": "weights", "mountPath": "/weights", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_pods_without_a_volume_mount_none() -> None:
    for pod in pods(run()).values():
        assert "weights" not in {v["name"] for v in pod["spec"]["volumes"]}
