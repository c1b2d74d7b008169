"""Which nodes a deployment leaves out, for how long, and whose failure it is; where its pods may go.

Pure reconcile calls with observed pods in the states kubelet reports: a crash loop below maxRestarts
leaves no node out; a failed partition leaves its node out for a time that doubles on each new failure;
the same failure on two nodes is the deployment's (reported, no node left out); taints and node affinity
leave nodes out before any pod is made, and every pod and Job carries the pull secrets, tolerations and
the affinity combined with its pin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from k8s_fakes import NOW, OWNER, nodes, profile, spec, validate_strict

from edgepart.cli import data_plane_configs
from edgepart.operator.names import pinned_node
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import DesiredState, Observed, PodState, reconcile
from edgepart.operator.settings import OperatorSettings
from edgepart.plan import Plan, plan_from_json

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0", exclusion_seconds=300,
                            max_exclusion_seconds=1000)
PROFILES = {"rpi4": profile("rpi4")}
LATE = "2026-01-01T00:05:01Z"  # just past NOW + 300 s


def run(body: dict[str, Any] | None = None, node_list: Any = None, observed: Observed | None = None,
        now: str = NOW, owner: Any = OWNER, profiles: Any = None) -> DesiredState:
    return reconcile(owner, body if body is not None else spec(), nodes() if node_list is None else node_list,
                     PROFILES if profiles is None else profiles, observed=observed or Observed(),
                     settings=SETTINGS, planner=compute_plan, configs=data_plane_configs, now=now)


def plan_map(desired: DesiredState) -> Mapping[str, Any]:
    """The plan's own ConfigMap (one per plan, so two plans coexist during a rollout)."""
    return desired.object("ConfigMap", desired.status["plan"]["configMap"])


def plan_of(desired: DesiredState) -> Plan:
    return plan_from_json(plan_map(desired)["data"]["plan.json"])


def pod_on(desired: DesiredState, node: str, reason: str, restarts: int = 0) -> PodState:
    pod = next(p for p in desired.of_kind("Pod") if pinned_node(p["spec"]) == node)
    return PodState.from_object({**pod, "status": {"phase": "Pending" if "Image" in reason else "Running",
                                                   "containerStatuses": [
        {"name": "partition", "restartCount": restarts, "state": {"waiting": {"reason": reason}}}]}})


def excluded(desired: DesiredState) -> list[tuple[str, str]]:
    return [(e["name"], e["reason"]) for e in desired.status.get("excludedNodes", [])]


def test_a_crash_loop_below_max_restarts_leaves_no_node_out() -> None:
    desired = run()
    looping = pod_on(desired, "edge-3", "CrashLoopBackOff", restarts=2)
    assert looping.failure(3) == ""
    again = run(observed=Observed(pods=(looping,), status=desired.status))
    assert excluded(again) == [] and "edge-3" in plan_of(again).devices
    assert pod_on(desired, "edge-3", "CrashLoopBackOff", restarts=3).failure(3) != ""


def test_an_exclusion_expires_and_a_new_failure_doubles_it() -> None:
    desired = run()
    first = run(observed=Observed(pods=(pod_on(desired, "edge-3", "CrashLoopBackOff", 4),), status=desired.status))
    entry = first.status["excludedNodes"][0]
    assert (entry["count"], entry["until"]) == (1, "2026-01-01T00:05:00Z")
    still = run(observed=Observed(status=first.status), now="2026-01-01T00:04:59Z")
    assert excluded(still) == [("edge-3", "PartitionFailed")]
    back = run(observed=Observed(status=first.status), now=LATE)
    assert excluded(back) == [] and "edge-3" in plan_of(back).devices
    assert [(e["name"], e["reason"], e["count"]) for e in back.status["retriedNodes"]] == [("edge-3", "Retrying", 1)]
    # it fails again: out for twice as long, and the count goes on
    failing = pod_on(back, "edge-3", "CrashLoopBackOff", 4)
    second = run(observed=Observed(pods=(failing,), status=back.status), now=LATE)
    entry = second.status["excludedNodes"][0]
    assert (entry["count"], entry["until"]) == (2, "2026-01-01T00:15:01Z")
    third = run(observed=Observed(pods=(failing,), status={**second.status, "excludedNodes": [
        {**entry, "until": LATE, "count": 5}]}), now=LATE)
    assert third.status["excludedNodes"][0]["until"] == "2026-01-01T00:21:41Z"  # capped at 1000 s


def test_the_same_failure_on_two_nodes_is_the_deployments_and_leaves_no_node_out() -> None:
    desired = run()
    one = run(observed=Observed(pods=(pod_on(desired, "edge-3", "ImagePullBackOff"),), status=desired.status))
    assert excluded(one) == [("edge-3", "PartitionFailed")]  # one node: perhaps the node's (arch, registry)
    # the re-planned pods fail the same way on another node: the failure follows the pods
    followed = run(observed=Observed(pods=(pod_on(one, "edge-1", "ErrImagePull"),), status=one.status))
    assert followed.phase == "Failed"
    assert followed.status["failure"]["reason"] == "ImagePull"
    assert followed.status["failure"]["nodes"] == ["edge-1", "edge-3"]
    assert "deployment's" in followed.status["message"]
    assert excluded(followed) == []  # edge-3 is not blamed any more, edge-1 never was
    assert followed.objects == () and not followed.prune  # the running objects are left as they are
    # every pod pulls again (the registry is back): the deployment recovers over every node
    healed = run(observed=Observed(status=followed.status))
    assert healed.phase != "Failed" and "failure" not in healed.status
    assert sorted(plan_of(healed).devices) == [f"edge-{i}" for i in range(4)]


def test_failures_of_pods_from_an_older_spec_are_not_counted() -> None:
    desired = run()
    broken = (pod_on(desired, "edge-1", "ImagePullBackOff"), pod_on(desired, "edge-3", "ImagePullBackOff"))
    fixed = run(body=spec(imagePullSecrets=[{"name": "regcred"}]), owner=replace(OWNER, generation=2),
                observed=Observed(pods=broken, status=desired.status))
    assert fixed.phase != "Failed" and excluded(fixed) == []
    assert all(p["spec"]["imagePullSecrets"] == [{"name": "regcred"}] for p in fixed.of_kind("Pod"))


def test_an_untolerated_taint_leaves_a_node_out_and_a_toleration_lets_it_in() -> None:
    node_list = nodes()
    node_list[1] = replace(node_list[1], taints=(*node_list[1].taints, *_taint("dedicated", "gpu", "NoSchedule")))
    node_list[2] = replace(node_list[2], taints=_taint("busy", "", "PreferNoSchedule"))  # only discourages
    desired = run(node_list=node_list)
    assert excluded(desired) == [("edge-1", "NodeTainted")]
    assert "dedicated=gpu:NoSchedule" in desired.status["excludedNodes"][0]["message"]
    assert "edge-1" not in plan_of(desired).devices and "edge-2" in plan_of(desired).devices
    toleration = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    tolerated = run(body=spec(tolerations=[toleration]), node_list=node_list)
    assert excluded(tolerated) == [] and "edge-1" in plan_of(tolerated).devices
    for obj in [*tolerated.of_kind("Pod"), *tolerated.of_kind("Deployment")]:
        pod_spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        assert pod_spec["tolerations"] == [toleration]
        validate_strict(obj)
    assert run(body=spec(tolerations=[{"operator": "Exists"}]), node_list=node_list).status["excludedNodes"] == []


def test_node_affinity_narrows_the_devices_and_is_anded_with_each_pods_pin() -> None:
    node_list = nodes()
    for i in (0, 1, 3):
        node_list[i] = replace(node_list[i], labels={**node_list[i].labels, "zone": "a"})
    term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    preferred = [{"weight": 10, "preference": {"matchExpressions": [{"key": "fast", "operator": "Exists"}]}}]
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]},
                "preferredDuringSchedulingIgnoredDuringExecution": preferred}
    desired = run(body=spec(nodeAffinity=affinity), node_list=node_list)
    assert excluded(desired) == [("edge-2", "NodeAffinity")]
    assert sorted(plan_of(desired).devices) == ["edge-0", "edge-1", "edge-3"]
    for pod in desired.of_kind("Pod"):
        node = pinned_node(pod["spec"])
        node_affinity = pod["spec"]["affinity"]["nodeAffinity"]
        terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": term["matchExpressions"],
                          "matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
        assert node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
        validate_strict(pod)
    # the digest follows the pod's content, so a change of affinity replaces the pods
    plain = run(node_list=node_list)
    assert {p["metadata"]["annotations"]["edgepart.io/spec-hash"] for p in plain.of_kind("Pod")}.isdisjoint(
        p["metadata"]["annotations"]["edgepart.io/spec-hash"] for p in desired.of_kind("Pod"))


def test_profiling_jobs_carry_the_pull_secrets_and_tolerations() -> None:
    body = spec(imagePullSecrets=[{"name": "regcred"}], tolerations=[{"operator": "Exists"}])
    desired = run(body=body, profiles={})
    assert desired.phase == "Profiling" and desired.jobs
    for job in desired.jobs:
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod_spec["tolerations"] == [{"operator": "Exists"}]
        validate_strict(job)


def test_bad_scheduling_fields_are_refused_naming_the_field() -> None:
    bad = run(body=spec(tolerations=[{"operator": "Exists", "value": "x"}]))
    assert bad.phase == "Failed" and "spec.tolerations[0]" in bad.status["message"]
    bad = run(body=spec(nodeAffinity={"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In"}]}]}}))
    assert bad.phase == "Failed" and "spec.nodeAffinity" in bad.status["message"]
    assert "values" in bad.status["message"]


def _taint(key: str, value: str, effect: str) -> tuple[Any, ...]:
    from edgepart.operator.nodes import Taint

    return (Taint(key=key, value=value, effect=effect),)
