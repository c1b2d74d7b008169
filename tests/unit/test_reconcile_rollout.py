"""Make before break: a new plan rolls out next to the serving one, the gateway switches once the new plan's
partitions are ready, and only then is the old plan pruned; a returning node is planned in only for a gain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from k8s_fakes import NOW, OWNER, nodes, profile, spec

from edgepart.cli import data_plane_configs
from edgepart.operator import rollout
from edgepart.operator.names import ANNOTATION_HASH, LABEL_PLAN
from edgepart.operator.nodes import NodeInfo
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import DesiredState, GatewayState, Observed, PodState, reconcile
from edgepart.operator.render import Owner
from edgepart.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0")
PROFILES = {"rpi4": profile("rpi4"), "fast": profile("fast", 8.0)}
LATE = "2026-01-01T00:10:01Z"  # 601 s after NOW: past the default progressDeadlineSeconds


def run(body: Mapping[str, Any], observed: Observed | None = None, node_list: Sequence[NodeInfo] | None = None,
        now: str = NOW, owner: Owner = OWNER) -> DesiredState:
    return reconcile(owner, body, nodes() if node_list is None else node_list, PROFILES,
                     observed=observed or Observed(), settings=SETTINGS, planner=compute_plan, configs=data_plane_configs, now=now)


def ready_pods(*states: DesiredState) -> tuple[PodState, ...]:
    return tuple(PodState.from_object({**p, "status": {"phase": "Running",
                                                      "conditions": [{"type": "Ready", "status": "True"}]}})
                 for desired in states for p in desired.of_kind("Pod"))


def gateway(desired: DesiredState) -> Mapping[str, Any]:
    return desired.object("Deployment", "alex-gateway")


def gateway_up(desired: DesiredState) -> GatewayState:
    return GatewayState(ready=True, spec_hash=gateway(desired)["metadata"]["annotations"][ANNOTATION_HASH])


def routes_to(desired: DesiredState) -> str:
    """The plan whose ConfigMap the gateway reads."""
    template = gateway(desired)["spec"]["template"]
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == f"alex-plan-{template['metadata']['labels'][LABEL_PLAN][:8]}"
    return str(template["metadata"]["labels"][LABEL_PLAN])


def progressing(desired: DesiredState) -> dict[str, Any]:
    return next(c for c in desired.status["conditions"] if c["type"] == "Progressing")


def serving(body: Mapping[str, Any], node_list: Sequence[NodeInfo] | None = None) -> DesiredState:
    """A deployment whose plan is up: every pod and the gateway ready."""
    first = run(body, node_list=node_list)
    settled = run(body, Observed(pods=ready_pods(first), gateway=gateway_up(first), status=first.status),
                  node_list=node_list)
    assert settled.phase in ("Ready", "Degraded") and settled.status["servingPlan"] == first.status["plan"]["hash"]
    return settled


SECOND = replace(OWNER, generation=2)
CHANGED = spec(solverOptions={"grid": [1, 2]}, objective="throughput")


def test_the_old_plan_keeps_serving_until_the_new_plan_is_ready_then_the_gateway_switches_and_it_is_pruned() -> None:
    old = serving(spec())
    old_hash = old.status["plan"]["hash"]

    # the spec changes: the new plan's objects start next to the old plan's, which are kept
    rolling = run(CHANGED, Observed(pods=ready_pods(old), gateway=gateway_up(old), status=old.status), owner=SECOND)
    new_hash = rolling.status["plan"]["hash"]
    assert new_hash != old_hash
    assert rolling.keep == {old_hash} and rolling.prune
    assert routes_to(rolling) == old_hash
    assert {p["metadata"]["labels"][LABEL_PLAN] for p in rolling.of_kind("Pod")} == {new_hash}
    assert rolling.status["servingPlan"] == old_hash and rolling.status["pendingPlan"] == new_hash
    assert rolling.status["pendingSince"] == NOW
    assert progressing(rolling)["reason"] == "RollingOut" and progressing(rolling)["status"] == "True"
    assert rolling.phase == "Deploying" and f"plan {old_hash} keeps serving" in rolling.status["message"]
    assert old.status["plan"]["configMap"] != rolling.status["plan"]["configMap"]  # one ConfigMap per plan

    # every new partition is ready: the gateway moves to the new plan; the old one stays until it has
    observed = Observed(pods=ready_pods(old, rolling), gateway=gateway_up(old), status=rolling.status)
    switching = run(CHANGED, observed, owner=SECOND)
    assert routes_to(switching) == new_hash and switching.keep == {old_hash}
    assert progressing(switching)["reason"] == "Switching"
    assert switching.status["servingPlan"] == old_hash

    # the new gateway is ready: the old plan is pruned
    observed = Observed(pods=ready_pods(old, rolling), gateway=gateway_up(switching), status=switching.status)
    switched = run(CHANGED, observed, owner=SECOND)
    assert switched.keep == frozenset() and switched.prune
    assert routes_to(switched) == new_hash
    assert switched.status["servingPlan"] == new_hash and "pendingPlan" not in switched.status
    assert progressing(switched)["reason"] == "Switched" and switched.phase == "Ready"


def test_a_new_plan_past_its_deadline_is_reported_and_the_old_plan_keeps_serving() -> None:
    old = serving(spec())
    rolling = run(CHANGED, Observed(pods=ready_pods(old), gateway=gateway_up(old), status=old.status), owner=SECOND)
    observed = Observed(pods=ready_pods(old), gateway=gateway_up(old), status=rolling.status)
    assert progressing(run(CHANGED, observed, owner=SECOND, now="2026-01-01T00:09:59Z"))["reason"] == "RollingOut"
    stuck = run(CHANGED, observed, owner=SECOND, now=LATE)
    condition = progressing(stuck)
    assert (condition["status"], condition["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert "progressDeadlineSeconds" in condition["message"]
    assert routes_to(stuck) == old.status["plan"]["hash"] and stuck.keep == {old.status["plan"]["hash"]}
    assert stuck.status["pendingSince"] == NOW  # the deadline counts from the rollout's start
    later = run({**CHANGED, "progressDeadlineSeconds": 3600}, observed, owner=SECOND, now=LATE)
    assert progressing(later)["reason"] == "RollingOut"


def test_the_first_plan_routes_at_once_and_keeps_nothing() -> None:
    first = run(spec())
    assert first.keep == frozenset() and routes_to(first) == first.status["plan"]["hash"]
    assert first.status["servingPlan"] == first.status["plan"]["hash"] and "pendingPlan" not in first.status


def fast_edge_2(ready: bool = True) -> list[NodeInfo]:
    node_list = nodes()
    node_list[2] = replace(node_list[2], device_class="fast", ready=ready)
    return node_list


def test_a_returning_node_is_planned_in_only_when_the_predicted_gain_passes_the_threshold() -> None:
    body = spec(solver="auto", solverOptions={})
    without = serving(body, fast_edge_2(ready=False))
    assert "edge-2" not in without.status["devices"]
    observed = Observed(pods=ready_pods(without), gateway=gateway_up(without), status=without.status)

    # with the fast node the plan predicts about 14% less latency: above the default 10%, re-planned
    replanned = run(body, observed, fast_edge_2())
    assert "edge-2" in replanned.status["devices"]
    assert replanned.status["pendingPlan"] == replanned.status["plan"]["hash"] != without.status["plan"]["hash"]
    assert routes_to(replanned) == without.status["plan"]["hash"]  # and rolled out make before break

    # above a 20% threshold: no re-plan, the serving plan stays and says why
    strict = {**body, "replanGain": 0.2}
    without = serving(strict, fast_edge_2(ready=False))
    observed = Observed(pods=ready_pods(without), gateway=gateway_up(without), status=without.status)
    kept = run(strict, observed, fast_edge_2())
    assert kept.status["plan"]["hash"] == without.status["plan"]["hash"] and kept.keep == frozenset()
    assert kept.status["devices"] == without.status["devices"] and kept.phase == "Ready"
    assert kept.of_kind("Pod") == without.of_kind("Pod")
    condition = progressing(kept)
    assert condition["reason"] == "ReplanBelowGain" and "edge-2" in condition["message"]


def test_rollout_decisions() -> None:
    settings = rollout.RolloutSettings(deadline_seconds=600, replan_gain=0.1)
    state = rollout.RolloutState(new="b", serving="a")
    assert rollout.decide(state, settings, NOW).reason == "RollingOut"
    assert rollout.decide(replace(state, new_ready=True), settings, NOW).route == "b"
    done = rollout.decide(replace(state, gateway_on_new=True, gateway_ready=True), settings, NOW)
    assert (done.serving, done.pending, done.keep) == ("b", "", frozenset())
    # switched once, a new pod's hiccup does not move the gateway back
    assert rollout.decide(replace(state, gateway_on_new=True), settings, NOW).route == "b"
    # a newer plan during a rollout restarts the clock and leaves the serving plan in place
    newer = rollout.decide(replace(state, new="c", pending="b", pending_since="2025-12-31T00:00:00Z"), settings,
                           NOW)
    assert (newer.route, newer.pending, newer.pending_since, newer.keep) == ("a", "c", NOW, {"a"})
    serving_, faster = rollout.Prediction(0.100, 10.0), rollout.Prediction(0.085, 12.0)
    assert rollout.worth_replanning("latency", serving_, faster, settings)  # 15% > 10%
    assert not rollout.worth_replanning("latency", serving_, rollout.Prediction(0.095, 10.5), settings)
    assert rollout.worth_replanning("throughput", serving_, faster, settings)  # 20% more throughput
    assert rollout.returning_nodes({"servingPlan": "a", "devices": ["x"]}, ["x", "y"], True) == ("y",)
    assert rollout.returning_nodes({"servingPlan": "a", "devices": ["x"]}, ["x", "y"], False) == ()
    assert rollout.returning_nodes({"servingPlan": "a", "devices": ["x", "z"]}, ["x", "y"], True) == ()
