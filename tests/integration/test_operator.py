"""The real kopf operator (edgepart.operator.handlers) against kmock's Kubernetes emulator.

Nothing runs pods here: tests play the kubelet and the controllers by patching
pod, deployment, node and job status, and check what the operator does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kmock_emulator import (
    NAMESPACE,
    EdgepartEmulator,
    eventually,
    get,
    objects,
    profile_config_map,
    profile_json,
)

from edgepart.geometry import hull_all
from edgepart.operator.names import (
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_PARTITION,
    LABEL_PLAN,
    pinned_node,
)
from edgepart.operator.render import PROFILE_BEGIN, PROFILE_END
from edgepart.operator.settings import OperatorSettings
from edgepart.partition_service.config import load_gateway_config, load_partition_config
from edgepart.plan import Plan, plan_from_json

Create = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Patch = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

NAME = "alex"
CR = f"/apis/edgepart.io/v1alpha1/namespaces/{NAMESPACE}/dnndeployments/{NAME}"


def deployment(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "alexnet"}, "nodeSelector": {"pool": "edge"}, "master": "edge-0",
                            "solver": "ftp-grid", "solverOptions": {"grid": [2, 2]}}
    body.update(spec)
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE}, "spec": body}


def resource(k8s: EdgepartEmulator) -> dict[str, Any]:
    return get(k8s, "dnndeployments", NAME) or {}


def status(k8s: EdgepartEmulator) -> dict[str, Any]:
    result: dict[str, Any] = resource(k8s).get("status") or {}
    return result


def phase_history(k8s: EdgepartEmulator) -> list[str]:
    """Every phase the resource went through, in order (the emulator keeps each version)."""
    history = next(obj.history for (resource, _, name), obj in k8s.objects.items()
                   if resource.plural == "dnndeployments" and name == NAME)
    phases = [str((v.raw.get("status") or {}).get("phase")) for v in history if v is not None]
    return [p for i, p in enumerate(phases) if p != "None" and (i == 0 or p != phases[i - 1])]


def condition(k8s: EdgepartEmulator, type_: str) -> dict[str, Any]:
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == type_), {})


def partition_pods(k8s: EdgepartEmulator) -> list[dict[str, Any]]:
    return [p for p in objects(k8s, "pods")
            if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == "partition"
            and p["metadata"]["labels"].get(LABEL_DEPLOYMENT) == NAME]


def plan_config_map(k8s: EdgepartEmulator) -> dict[str, Any]:
    """The ConfigMap of the newest plan (one per plan, named in status.plan.configMap)."""
    config_map = get(k8s, "configmaps", status(k8s)["plan"]["configMap"])
    assert config_map is not None
    return config_map


def current_plan(k8s: EdgepartEmulator) -> Plan:
    return plan_from_json(plan_config_map(k8s)["data"]["plan.json"])


def scoped(name: str, plan_hash: str) -> str:
    """The name of a plan's own Service: two plans coexist while the gateway switches between them."""
    return f"{NAME}-{name}-{plan_hash[:8]}"


def pods_of_plan(k8s: EdgepartEmulator, plan_hash: str) -> list[dict[str, Any]]:
    return [p for p in partition_pods(k8s) if p["metadata"]["labels"][LABEL_PLAN] == plan_hash]


def node_of(pod: dict[str, Any]) -> str:
    return pinned_node(pod["spec"])


async def phase_is(k8s: EdgepartEmulator, *phases: str, timeout: float = 90) -> dict[str, Any]:
    result: dict[str, Any] = await eventually(
        lambda: status(k8s) if status(k8s).get("phase") in phases else None,
        timeout=timeout, what=f"phase in {phases}")
    return result


async def deployed(k8s: EdgepartEmulator) -> tuple[dict[str, Any], Plan]:
    """Wait until the status and the pods describe one and the same plan."""
    def settled() -> tuple[dict[str, Any], Plan] | None:
        st = status(k8s)
        if st.get("phase") not in ("Deploying", "Ready", "Degraded") or "plan" not in st:
            return None
        plan = current_plan(k8s)
        if len(pods_of_plan(k8s, st["plan"]["hash"])) != len(plan.tasks):
            return None
        return st, plan  # an earlier plan's pods may still serve: they go once this plan's are ready
    result: tuple[dict[str, Any], Plan] = await eventually(settled, what="a deployed plan")
    return result


def gateway_plan(k8s: EdgepartEmulator) -> str:
    """The plan the gateway routes to (its pods' plan label; its config is that plan's ConfigMap)."""
    gateway = get(k8s, "deployments", f"{NAME}-gateway") or {}
    template = (gateway.get("spec") or {}).get("template") or {}
    return str(((template.get("metadata") or {}).get("labels") or {}).get(LABEL_PLAN, ""))


async def make_pods_ready(k8s: EdgepartEmulator, merge_patch: Patch, plan_hash: str) -> None:
    """Play the kubelet: every partition pod of the plan is ready."""
    for pod in pods_of_plan(k8s, plan_hash):
        await merge_patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/status",
                    {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                                "containerStatuses": [{"name": "partition", "ready": True, "restartCount": 0}]}})


async def make_ready(k8s: EdgepartEmulator, merge_patch: Patch, plan_hash: str) -> None:
    """Play the kubelet and the deployment controller: every pod of the plan is ready, and the gateway once
    the operator has switched it to the plan (make before break: after the plan's pods are ready)."""
    await make_pods_ready(k8s, merge_patch, plan_hash)
    await eventually(lambda: gateway_plan(k8s) == plan_hash, what=f"the gateway on plan {plan_hash}")
    await make_gateway_ready(k8s, merge_patch)


async def make_gateway_ready(k8s: EdgepartEmulator, merge_patch: Patch) -> None:
    gateway = get(k8s, "deployments", f"{NAME}-gateway")
    assert gateway is not None
    await merge_patch(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}-gateway/status",
                {"status": {"readyReplicas": 1, "replicas": 1,
                            "observedGeneration": gateway["metadata"]["generation"]}})


async def test_deploys_one_pod_and_service_per_partition(k8s: EdgepartEmulator, kopf_operator: Any,
                                                         create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    cr = await create_object(deployment())
    uid = cr["metadata"]["uid"]
    st, plan = await deployed(k8s)

    assert st["phase"] == "Deploying"
    assert st["observedGeneration"] == 1
    assert st["partitions"] == len(plan.tasks) == 5  # a 2x2 grid over the fused layers, then the head
    assert st["ready"] == f"0/{len(plan.tasks)}"
    assert st["gateway"]["endpoint"] == f"http://{NAME}-gateway.{NAMESPACE}.svc:8080"
    assert st["devices"] == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert st["plan"]["hash"] and st["plan"]["solver"] == "ftp-grid"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "SpecValid": "True", "DevicesAvailable": "True", "Traced": "True", "Profiled": "True", "Planned": "True",
        "Ready": "False", "Degraded": "False", "Progressing": "True"}
    plan_hash = st["plan"]["hash"]
    assert st["servingPlan"] == plan_hash and "pendingPlan" not in st

    # exactly one pod and one service per partition, each pod pinned to its planned node
    pods = {p["metadata"]["labels"][LABEL_PARTITION]: p for p in partition_pods(k8s)}
    assert sorted(pods) == sorted(p.id for p in plan.tasks)
    services = {s["metadata"]["name"]: s for s in objects(k8s, "services")}
    assert set(services) == {scoped(p.id, plan_hash) for p in plan.tasks} | {f"{NAME}-gateway",
                                                                             scoped("gateway", plan_hash)}
    config_map = plan_config_map(k8s)
    for part in plan.tasks:
        pod = pods[part.id]
        assert node_of(pod) == part.device
        assert services[scoped(part.id, plan_hash)]["spec"]["selector"] == {
            LABEL_DEPLOYMENT: NAME, LABEL_PARTITION: part.id, LABEL_PLAN: st["plan"]["hash"]}
        container = pod["spec"]["containers"][0]
        assert container["image"] == "registry.example/edgepart:test"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["EDGEPART_CONFIG"] == f"/etc/edgepart/partition-{part.id}.json"
        config = load_partition_config(config_map["data"][f"partition-{part.id}.json"])
        assert (config.partition, config.device) == (part.id, part.device)
        assert config.port == 8081 and config.host == "0.0.0.0"  # the internal port
        assert config.secret_file == "/var/run/secrets/edgepart/token"
        assert config.output_region == part.output
        assert config.input_region == hull_all([i.region for i in part.inputs])
        for route in config.outputs:
            assert route.url in (f"http://{scoped(route.target, plan_hash)}.{NAMESPACE}.svc:8081",
                                 f"http://{scoped('gateway', plan_hash)}.{NAMESPACE}.svc:8081")
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    gateway_config = load_gateway_config(config_map["data"]["gateway.json"])
    assert sorted(r.target for r in gateway_config.routes) == sorted(t.id for t in plan.tasks if t.reads_input)
    assert (gateway_config.port, gateway_config.internal_port) == (8080, 8081)
    # the deployment's secret: created once with a random value, owned, mounted by every pod
    secret = await eventually(lambda: get(k8s, "secrets", f"{NAME}-secret"), what="the deployment's secret")
    token = secret["stringData"]["token"] if "stringData" in secret else secret["data"]["token"]
    assert len(token) >= 32 and secret["metadata"]["ownerReferences"][0]["uid"] == uid
    gateway = get(k8s, "deployments", f"{NAME}-gateway")
    assert gateway is not None
    assert pinned_node(gateway["spec"]["template"]["spec"]) == "edge-0"

    # everything the operator made is owned by the DNNDeployment
    owned = [*partition_pods(k8s), *objects(k8s, "services"), *objects(k8s, "deployments"),
             *objects(k8s, "networkpolicies"), *objects(k8s, "serviceaccounts"), config_map]
    assert len(owned) == 2 * len(plan.tasks) + 7  # + gateway Deployment, its 2 Services, 2 policies, SA, CM
    for obj in owned:
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "name": NAME,
                         "uid": uid, "controller": True, "blockOwnerDeletion": True}], obj["metadata"]["name"]

    await make_ready(k8s, merge_patch, st["plan"]["hash"])
    st = await phase_is(k8s, "Ready")
    assert phase_history(k8s) == ["Planning", "Deploying", "Ready"]
    again = get(k8s, "secrets", f"{NAME}-secret") or {}
    assert (again.get("stringData") or again.get("data") or {}).get("token") == token  # never replaced
    assert st["ready"] == f"{len(plan.tasks)}/{len(plan.tasks)}"
    assert condition(k8s, "Ready")["reason"] == "AllReady"
    assert st["message"] == f"serving at http://{NAME}-gateway.{NAMESPACE}.svc:8080"


async def test_spec_update_rolls_out_the_new_plan_before_the_old_one_goes(
        k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment())
    first, old_plan = await deployed(k8s)
    old_hash = first["plan"]["hash"]
    old_pods = {p["metadata"]["name"] for p in partition_pods(k8s)}
    old_objects = {s["metadata"]["name"] for s in objects(k8s, "services")} | {first["plan"]["configMap"]}
    await make_ready(k8s, merge_patch, old_hash)
    await phase_is(k8s, "Ready")

    await merge_patch(CR, {"spec": {"solverOptions": {"grid": [1, 2]}, "objective": "throughput"}})
    await eventually(lambda: status(k8s).get("observedGeneration") == 2, what="generation 2 observed")
    second, new_plan = await deployed(k8s)
    new_hash = second["plan"]["hash"]
    assert new_hash != old_hash
    assert new_plan.objective == "throughput"
    assert len(new_plan.tasks) == 3  # a 1x2 grid, then the head
    assert second["phase"] == "Deploying"  # the new pods are not ready yet
    assert (second["servingPlan"], second["pendingPlan"]) == (old_hash, new_hash)
    assert condition(k8s, "Progressing")["reason"] == "RollingOut"
    assert all(c["observedGeneration"] == 2 for c in second["conditions"])
    # make before break: the old plan's pods, Services and ConfigMap stay, the gateway routes to it
    names = {p["metadata"]["name"] for p in partition_pods(k8s)}
    assert old_pods <= names and len(names) == len(old_plan.tasks) + len(new_plan.tasks)
    current = {s["metadata"]["name"] for s in objects(k8s, "services")} | {
        c["metadata"]["name"] for c in objects(k8s, "configmaps")}
    assert old_objects <= current
    assert gateway_plan(k8s) == old_hash

    # the new partitions are ready: the gateway rolls over to the new plan; the old plan waits for it
    await make_pods_ready(k8s, merge_patch, new_hash)
    await eventually(lambda: gateway_plan(k8s) == new_hash, what="the gateway switched to the new plan")
    await eventually(lambda: condition(k8s, "Progressing").get("reason") == "Switching", what="Switching reported")
    assert old_pods <= {p["metadata"]["name"] for p in partition_pods(k8s)}

    # the new gateway is ready: the old plan is pruned
    await make_gateway_ready(k8s, merge_patch)
    st = await phase_is(k8s, "Ready")
    assert st["servingPlan"] == new_hash and "pendingPlan" not in st
    assert condition(k8s, "Progressing")["reason"] == "Switched"
    await eventually(lambda: not pods_of_plan(k8s, old_hash), what="the old plan's pods pruned")
    assert {s["metadata"]["name"] for s in objects(k8s, "services")} == {
        scoped(p.id, new_hash) for p in new_plan.tasks} | {f"{NAME}-gateway", scoped("gateway", new_hash)}
    assert get(k8s, "configmaps", first["plan"]["configMap"]) is None


async def test_node_not_ready_replans_without_it(k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create,
                                                 merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment())
    _, plan = await deployed(k8s)
    assert "edge-2" in plan.devices

    await merge_patch("/api/v1/nodes/edge-2/status", {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}})
    await eventually(lambda: "edge-2" not in status(k8s).get("devices", ["edge-2"]), what="edge-2 left out")
    second, new_plan = await deployed(k8s)
    assert "edge-2" not in new_plan.devices
    assert all(node_of(p) != "edge-2" for p in pods_of_plan(k8s, second["plan"]["hash"]))
    assert second["excludedNodes"] == [{"name": "edge-2", "reason": "NodeNotReady",
                                        "message": "node edge-2 is NotReady"}]
    assert condition(k8s, "Degraded")["status"] == "True"

    await make_ready(k8s, merge_patch, second["plan"]["hash"])
    st = await phase_is(k8s, "Degraded")
    assert "edge-2" in st["message"]

    # the node comes back: a 2x2 grid over four nodes predicts no gain over three, so no re-plan
    await merge_patch("/api/v1/nodes/edge-2/status", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await eventually(lambda: condition(k8s, "Progressing").get("reason") == "ReplanBelowGain",
                     what="the re-plan for edge-2 skipped")
    third = status(k8s)
    assert third["excludedNodes"] == [] and "edge-2" not in third["devices"]
    assert third["plan"]["hash"] == third["servingPlan"] == second["plan"]["hash"] and "pendingPlan" not in third
    assert "edge-2" in condition(k8s, "Progressing")["message"]


async def test_failed_partition_pod_replans_over_the_other_nodes(k8s: EdgepartEmulator, kopf_operator: Any,
                                                                create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment())
    await deployed(k8s)
    victim = next(p for p in partition_pods(k8s) if node_of(p) == "edge-3")
    await merge_patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{victim['metadata']['name']}/status",
                {"status": {"phase": "Running", "containerStatuses": [{
                    "name": "partition", "ready": False, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    await eventually(lambda: "edge-3" not in status(k8s).get("devices", ["edge-3"]), what="edge-3 left out")
    second, plan = await deployed(k8s)
    assert "edge-3" not in plan.devices
    excluded = second["excludedNodes"]
    assert [(e["name"], e["reason"]) for e in excluded] == [("edge-3", "PartitionFailed")]
    assert victim["metadata"]["name"] in excluded[0]["message"]
    # the exclusion is remembered after the failed pod is gone with its plan (until the spec changes)
    await make_ready(k8s, merge_patch, second["plan"]["hash"])
    await phase_is(k8s, "Degraded")
    await eventually(lambda: victim["metadata"]["name"] not in {p["metadata"]["name"] for p in partition_pods(k8s)},
                     what="the failed pod pruned with its plan")
    assert status(k8s)["excludedNodes"] == excluded


async def test_pods_carry_the_deployments_pull_secrets_and_tolerations(
        k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(imagePullSecrets=[{"name": "regcred"}], tolerations=[{"operator": "Exists"}]))
    await deployed(k8s)
    pods = partition_pods(k8s)
    assert all(p["spec"]["imagePullSecrets"] == [{"name": "regcred"}] for p in pods)
    assert all(p["spec"]["tolerations"] == [{"operator": "Exists"}] for p in pods)
    gateway = get(k8s, "deployments", f"{NAME}-gateway")
    assert gateway is not None and gateway["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize(("spec", "field"), [
    ({"network": {"bandwidth": "fast"}}, "spec.network.bandwidth"),
    ({"model": {"name": "no-such-model"}}, "spec.model.name"),
    ({"objective": "speed"}, "spec.objective"),
    ({"master": "edge-9"}, "spec.master"),
])
async def test_invalid_spec_fails_naming_the_field(k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create,
                                                   spec: dict[str, Any], field: str) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(**spec))
    st = await phase_is(k8s, "Failed")
    assert st["message"].startswith(field + ":") or f"{field}:" in st["message"], st["message"]
    failed = [c for c in st["conditions"] if c["status"] == "False"]
    assert len(failed) == 1 and failed[0]["reason"] in ("InvalidSpec", "PlanningFailed")
    assert field in failed[0]["message"]
    assert partition_pods(k8s) == []


async def test_no_matching_node_is_pending(k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create) -> None:
    await create_object(deployment(nodeSelector={"pool": "nowhere"}))
    st = await phase_is(k8s, "Pending")
    assert condition(k8s, "DevicesAvailable")["reason"] == "NoMatchingNodes"
    assert "pool" in st["message"]


async def test_deletion_removes_the_finalizer(k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create) -> None:
    await create_object(profile_config_map("edge-small"))
    cr = await create_object(deployment())
    await deployed(k8s)
    assert resource(k8s)["metadata"]["finalizers"] == ["edgepart.io/finalizer"]
    async with k8s.delete(CR) as response:
        assert response.status == 200
    await eventually(lambda: get(k8s, "dnndeployments", NAME) is None, what="the resource gone")
    # kmock has no garbage collector: check that it would have something to collect
    for pod in partition_pods(k8s):
        assert pod["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]


async def test_missing_profile_runs_a_profiling_job(k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create,
                                                    operator_settings: OperatorSettings) -> None:
    await create_object(deployment())
    st = await phase_is(k8s, "Profiling")
    assert condition(k8s, "Profiled")["reason"] == "ProfilingJobsRunning"
    assert "edge-small" in st["message"]
    job = await eventually(lambda: get(k8s, "jobs", "edgepart-profile-edge-small"), what="the profiling job")
    pod_spec = job["spec"]["template"]["spec"]
    assert pinned_node(pod_spec).startswith("edge-")
    assert pod_spec["containers"][0]["image"] == operator_settings.image
    assert "edgepart profile" in pod_spec["containers"][0]["args"][0]
    assert partition_pods(k8s) == []

    # play the job controller and the kubelet: the job's pod printed a profile and finished
    pod_name = "edgepart-profile-edge-small-x7k2p"
    k8s[f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod_name}/log"] << (
        f"profiling conv...\n{PROFILE_BEGIN}\n{profile_json('edge-small')}\n{PROFILE_END}\n").encode()
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": NAMESPACE,
                     "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": job["metadata"]["name"]}},
        "spec": pod_spec, "status": {"phase": "Succeeded"}}) as response:
        assert response.status == 201
    async with k8s.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job['metadata']['name']}/status",
                             json={"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
                             headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status == 200

    profile = await eventually(lambda: get(k8s, "configmaps", "edgepart-profile-edge-small"),
                               what="the profile ConfigMap")
    assert profile["metadata"]["labels"]["edgepart.io/device-class"] == "edge-small"
    st, plan = await deployed(k8s)
    assert condition(k8s, "Profiled")["status"] == "True"
    assert len(partition_pods(k8s)) == len(plan.tasks)


async def test_a_model_outside_the_zoo_is_traced_by_a_job_never_in_the_operator(
        k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create, merge_patch: Patch) -> None:
    """`os:abort`, imported and called, killed the operator for every namespace; now a Job traces it."""
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(model={"name": "os:abort", "inputShape": [1, 3, 64, 64]}))
    st = await phase_is(k8s, "Tracing")
    assert "os:abort" in st["message"] and condition(k8s, "Traced")["reason"] == "TracingJobRunning"
    job = await eventually(lambda: next((j for j in objects(k8s, "jobs")
                                         if j["metadata"]["name"].startswith("edgepart-trace-")), None),
                           what="the tracing job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--", "os:abort"] and "command" not in container
    assert partition_pods(k8s) == []
    # the job's pod aborts (it runs the code); the operator, alive, reports it
    await merge_patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job['metadata']['name']}/status",
                      {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                               "reason": "BackoffLimitExceeded"}]}})
    st = await phase_is(k8s, "Failed")
    assert st["message"].startswith("spec.model.name: tracing 'os:abort' failed in job "), st["message"]
    assert condition(k8s, "Traced")["reason"] == "TracingFailed"
    assert kopf_operator.error is None


async def test_a_traced_graph_from_the_jobs_log_is_planned_from(k8s: EdgepartEmulator, kopf_operator: Any,
                                                                create_object: Create, merge_patch: Patch) -> None:
    from edgepart.graph.loader import ModelRef, load_graph
    from edgepart.graph.serial import GRAPH_BEGIN, GRAPH_END, graph_to_dict

    name = "acme.models:alexnet"  # no such module anywhere: planning it proves nothing was imported
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(model={"name": name, "inputShape": [1, 3, 224, 224]}))
    await phase_is(k8s, "Tracing")
    job = await eventually(lambda: next((j for j in objects(k8s, "jobs")
                                         if j["metadata"]["name"].startswith("edgepart-trace-")), None),
                           what="the tracing job")
    graph = {**graph_to_dict(load_graph(ModelRef("alexnet"))), "model": name}
    pod_name = f"{job['metadata']['name']}-q8v4x"
    k8s[f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod_name}/log"] << (
        f"user output\n{GRAPH_BEGIN}\n{json.dumps(graph)}\n{GRAPH_END}\n").encode()
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json={
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": NAMESPACE,
                     "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": job["metadata"]["name"]}},
        "spec": job["spec"]["template"]["spec"], "status": {"phase": "Succeeded"}}) as response:
        assert response.status == 201
    await merge_patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job['metadata']['name']}/status",
                      {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
    stored = await eventually(lambda: next((c for c in objects(k8s, "configmaps")
                                            if c["metadata"]["name"].startswith("edgepart-graph-")), None),
                              what="the graph ConfigMap")
    assert stored["metadata"]["annotations"]["edgepart.io/model"] == name
    _, plan = await deployed(k8s)
    assert plan.model.name == name and len(plan.tasks) == 5  # a 2x2 grid and the tail
    assert condition(k8s, "Traced")["status"] == "True"


# ---------------------------------------------------------------- accuracy-aware data partitioning


def variants_deployment(**variants: Any) -> dict[str, Any]:
    body = deployment(variants={"family": "digits", "target": {"throughput": 2000}, **variants})
    for key in ("model", "solver", "solverOptions"):
        body["spec"].pop(key)
    return body


def worker_pods(k8s: EdgepartEmulator) -> list[dict[str, Any]]:
    return [p for p in partition_pods(k8s) if p["metadata"]["labels"][LABEL_PARTITION].startswith("worker-")]


async def test_a_variants_deployment_runs_a_dispatcher_and_a_worker_per_node_and_degrades_without_one(
        k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create, merge_patch: Patch) -> None:
    from edgepart.partition_service.dispatcher import DispatcherConfig
    from edgepart.partition_service.variant_worker import WorkerConfig

    await create_object(profile_config_map("edge-small"))
    await create_object(variants_deployment())
    st = await phase_is(k8s, "Deploying")
    await eventually(lambda: len(worker_pods(k8s)) == 4 or None, what="four worker pods")
    assert sorted(node_of(p) for p in worker_pods(k8s)) == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert all(p["spec"]["containers"][0]["args"] == ["serve-worker"] for p in worker_pods(k8s))
    gateway = get(k8s, "deployments", f"{NAME}-gateway")
    assert gateway is not None
    assert gateway["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve-dispatcher"]
    assert pinned_node(gateway["spec"]["template"]["spec"]) == "edge-0"
    config_map = get(k8s, "configmaps", f"{NAME}-plan")
    assert config_map is not None
    dispatcher = DispatcherConfig.model_validate_json(config_map["data"]["gateway.json"])
    assert sorted(dispatcher.workers) == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert set(dispatcher.theta["edge-1"]) == {"digits-xs", "digits-s", "digits-m", "digits-l", "digits-xl"}
    worker = WorkerConfig.model_validate_json(config_map["data"]["partition-worker-edge-1.json"])
    assert worker.device == "edge-1" and worker.family.name == "digits" and worker.input_shape == (1, 8, 8)
    assert "digits" in condition(k8s, "Planned")["message"]
    assert st["predicted"]["throughputPerSecond"] > 0

    async def ready_all() -> None:
        for pod in worker_pods(k8s):
            await merge_patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/status",
                              {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                                          "containerStatuses": [{"name": "partition", "ready": True,
                                                                 "restartCount": 0}]}})
        gw = get(k8s, "deployments", f"{NAME}-gateway")
        assert gw is not None
        await merge_patch(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}-gateway/status",
                          {"status": {"readyReplicas": 1, "replicas": 1,
                                      "observedGeneration": gw["metadata"]["generation"]}})

    await ready_all()
    st = await phase_is(k8s, "Ready")
    assert st["message"].startswith("dispatching at") and st["ready"] == "4/4"

    # a device goes out: its worker goes, the dispatcher's config drops it, Degraded names it
    await merge_patch("/api/v1/nodes/edge-2/status", {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}})
    await eventually(lambda: "edge-2" not in status(k8s).get("devices", ["edge-2"]) or None, what="edge-2 out")
    await eventually(lambda: len(worker_pods(k8s)) == 3 or None, what="three worker pods")
    assert all(node_of(p) != "edge-2" for p in worker_pods(k8s))
    config_map = get(k8s, "configmaps", f"{NAME}-plan")
    assert config_map is not None
    assert "edge-2" not in DispatcherConfig.model_validate_json(config_map["data"]["gateway.json"]).workers
    assert condition(k8s, "Degraded")["status"] == "True"
    await ready_all()
    st = await phase_is(k8s, "Degraded")
    assert "edge-2" in st["message"]


async def test_custom_variants_outside_the_trusted_models_are_refused(k8s: EdgepartEmulator, kopf_operator: Any,
                                                                     create_object: Create) -> None:
    custom = {"name": "mine", "task": "t", "variants": [
        {"name": "a", "model": {"name": "alexnet"}, "accuracy": {"value": 0.5, "kind": "declared", "source": "s"}},
        {"name": "b", "model": {"name": "mypkg.nets:build", "inputShape": [1, 3, 224, 224]},
         "accuracy": {"value": 0.7, "kind": "declared", "source": "s"}}]}
    await create_object(profile_config_map("edge-small"))
    body = variants_deployment(custom=custom)
    body["spec"]["variants"].pop("family")
    await create_object(body)
    st = await phase_is(k8s, "Failed")
    assert "spec.variants.custom.variants[1].model.name: 'mypkg.nets:build' (b)" in st["message"]
    assert "trustedModels" in st["message"]
    assert worker_pods(k8s) == []


async def test_a_joint_solver_deploys_several_models_in_one_plan(k8s: EdgepartEmulator, kopf_operator: Any,
                                                                 create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(model=None, models=[{"id": "alexnet", "name": "alexnet"},
                                                       {"id": "squeezenet", "name": "squeezenet1_1"}],
                                   solver="mgp-memetic", solverOptions={"K": 3, "iterations": 10, "seed": 1}))
    st, plan = await deployed(k8s)
    assert st["plan"]["solver"] == "mgp-memetic" and plan.meta["method"] == "MO"
    assert plan.model_ids == ("alexnet", "squeezenet")
    assert {t.model for t in plan.tasks} == {"alexnet", "squeezenet"}
    pods = {p["metadata"]["labels"][LABEL_PARTITION]: p for p in partition_pods(k8s)}
    assert sorted(pods) == sorted(t.id for t in plan.tasks)
    for task in plan.tasks:  # each block's tasks on the node the search chose
        assert node_of(pods[task.id]) == task.device
    gateway = load_gateway_config(plan_config_map(k8s)["data"]["gateway.json"])
    for mid in plan.model_ids:  # the gateway sends each model's input to that model's first tasks
        assert sorted(r.target for r in gateway.served(mid).routes) == \
            sorted(t.id for t in plan.tasks_of(mid) if t.reads_input)
    await make_ready(k8s, merge_patch, st["plan"]["hash"])
    await phase_is(k8s, "Ready")


async def test_sources_deploy_one_ring_worker_per_node(k8s: EdgepartEmulator, kopf_operator: Any,
                                                       create_object: Create, merge_patch: Patch) -> None:
    from edgepart.partition_service.ring_config import load_ring_config

    await create_object(profile_config_map("edge-small"))
    cr = await create_object(deployment(sources=[{"device": "edge-0", "rate": 5}, {"device": "edge-1", "rate": 10}],
                                        scheduler="ms-mdi", queueBound=8))

    def workers() -> list[dict[str, Any]]:
        return [p for p in objects(k8s, "pods") if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == "ring-worker"]

    pods = await eventually(lambda: workers() if len(workers()) == 4 else None, what="four ring-worker pods")
    st = await phase_is(k8s, "Deploying")
    assert st["ready"] == "0/4" and st["devices"] == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert condition(k8s, "Planned")["reason"] == "RingConfigured"
    assert partition_pods(k8s) == [] and get(k8s, "deployments", f"{NAME}-gateway") is None
    config_map = get(k8s, "configmaps", f"{NAME}-plan")
    assert config_map is not None
    for pod in pods:
        worker = pod["metadata"]["labels"][LABEL_PARTITION]
        assert node_of(pod) == worker
        assert pod["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
        config = load_ring_config(config_map["data"][f"ring-{worker}.json"])
        assert config.sources == ("edge-0", "edge-1") and config.queue_bound == 8
        assert config.secret_file == "/var/run/secrets/edgepart/token"
    services = {s["metadata"]["name"] for s in objects(k8s, "services")}
    assert services == {f"{NAME}-ring-edge-{i}" for i in range(4)}
    assert len(objects(k8s, "networkpolicies")) == 3  # the ring, and one per source for its clients

    for pod in pods:  # play the kubelet
        await merge_patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/status",
                          {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                                      "containerStatuses": [{"name": "ring-worker", "ready": True,
                                                             "restartCount": 0}]}})
    st = await phase_is(k8s, "Ready")
    assert st["ready"] == "4/4" and st["message"].startswith("sources answer at http://")


async def test_an_mw_deployment_offloads_from_the_end_device_to_the_edge_server(
        k8s: EdgepartEmulator, kopf_operator: Any, create_object: Create, merge_patch: Patch) -> None:
    await create_object(profile_config_map("edge-small"))
    await create_object(deployment(solver="mw", solverOptions={}, master=None, devices=[
        {"name": "edge-2", "speed": 0.2, "role": "end"}, {"name": "edge-1", "speed": 4.0, "role": "edge-server"}]))
    st, plan = await deployed(k8s)
    assert st["plan"]["solver"] == "mw" and plan.master == "edge-2"  # role end holds the input: the gateway's node
    assert {t.device for t in plan.tasks} <= {"edge-2", "edge-1"} and plan.meta["server"] == "edge-1"
    gateway = get(k8s, "deployments", f"{NAME}-gateway")
    assert gateway is not None
    assert pinned_node(gateway["spec"]["template"]["spec"]) == "edge-2"
    config_map = plan_config_map(k8s)
    configs = {t.id: load_partition_config(config_map["data"][f"partition-{t.id}.json"]) for t in plan.tasks}
    for device in ("edge-2", "edge-1"):  # each device's partitions take turns in the order S
        chain = sorted((t for t in plan.compute_tasks if t.device == device), key=lambda t: t.priority)
        for before, after in itertools.pairwise(chain):
            turn = configs[before.id].turn
            assert turn is not None and turn.next == after.id
            assert turn.next_url == f"http://{scoped(after.id, st['plan']['hash'])}.{NAMESPACE}.svc:8081"
            assert configs[after.id].turn is not None and configs[after.id].turn.after == before.id  # type: ignore[union-attr]
    await make_ready(k8s, merge_patch, st["plan"]["hash"])
    await phase_is(k8s, "Ready")
