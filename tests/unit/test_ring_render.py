"""The operator's rendering of a DNNDeployment with sources: ring-worker pods, services, configs, policies."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_fakes import NOW, OWNER, nodes, profile, spec, validate_strict

from edgepart.cli import data_plane_configs
from edgepart.operator import names
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import DesiredState, Observed, PodState, reconcile
from edgepart.operator.ring import RING_COMPONENT, ring_config_key
from edgepart.operator.settings import OperatorSettings
from edgepart.partition_service.ring_config import load_ring_config
from edgepart.spec import WEIGHTS_DIR

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0", metrics_namespace="monitoring")
SOURCES = [{"device": "edge-0", "rate": 5}, {"device": "edge-2", "rate": 10}]


def desired(observed: Observed | None = None, model: dict[str, Any] | None = None, **fields: Any) -> DesiredState:
    body = spec(model=model or {"name": "squeezenet1_1"}, sources=SOURCES, **fields)
    return reconcile(OWNER, body, nodes(), {"rpi4": profile()}, settings=SETTINGS, planner=compute_plan,
                     configs=data_plane_configs, now=NOW, observed=observed or Observed())


def test_one_ring_worker_pod_and_service_per_node_with_its_config() -> None:
    state = desired(scheduler="ar-mdi")
    assert state.phase == "Deploying" and state.status["ready"] == "0/4"
    pods = state.of_kind("Pod")
    assert sorted(names.pinned_node(p["spec"]) for p in pods) == [f"edge-{i}" for i in range(4)]
    assert {p["metadata"]["labels"][names.LABEL_COMPONENT] for p in pods} == {RING_COMPONENT}
    assert all(p["spec"]["containers"][0]["args"] == ["serve-ring-worker"] for p in pods)
    assert len(state.of_kind("Service")) == 4 and not state.of_kind("Deployment")  # no gateway
    data = state.of_kind("ConfigMap")[0]["data"]
    for i in range(4):
        config = load_ring_config(data[ring_config_key(f"edge-{i}")])
        assert config.worker == f"edge-{i}" and config.scheduler == "ar-mdi"
        assert config.sources == ("edge-0", "edge-2") and [p.name for p in config.ring] == [f"edge-{j}" for j in range(4)]
        assert config.ring[1].url == f"http://{names.dns_label('alex', 'ring', 'edge-1')}.edge.svc:{SETTINGS.internal_port}"
        assert config.port == SETTINGS.internal_port and config.host == "0.0.0.0"
    for obj in state.objects:
        validate_strict(obj)


def test_only_sources_admit_clients_and_every_worker_its_peers() -> None:
    policies = {p["metadata"]["name"]: p for p in desired().of_kind("NetworkPolicy")}
    ring = policies[names.network_policy_name("alex", "ring")]
    assert ring["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": names.selector_labels("alex")}}]
    for source in ("edge-0", "edge-2"):
        policy = policies[names.network_policy_name("alex", f"source-{source}")]
        assert policy["spec"]["podSelector"]["matchLabels"][names.LABEL_PARTITION] == source
        assert "from" not in policy["spec"]["ingress"][0]
    assert len(policies) == 3


def test_ready_when_every_worker_pod_is_ready_and_pods_change_with_the_scheduler() -> None:
    first = desired()
    observed = Observed(pods=tuple(
        PodState(name=p["metadata"]["name"], node=names.pinned_node(p["spec"]),
                 component=RING_COMPONENT, partition="", plan="", phase="Running", ready=True)
        for p in first.of_kind("Pod")))
    ready = desired(observed)
    assert ready.phase == "Ready" and ready.status["ready"] == "4/4"
    assert "sources answer at" in ready.status["message"]
    other = desired(scheduler="local")
    assert {p["metadata"]["name"] for p in other.of_kind("Pod")}.isdisjoint(
        p["metadata"]["name"] for p in first.of_kind("Pod"))


def test_a_ring_naming_an_unusable_node_fails_naming_the_field() -> None:
    state = desired(ring=["edge-0", "edge-2", "edge-9"])
    assert state.phase == "Failed" and "spec.ring" in state.status["message"]


def test_sources_off_the_ring_fail_naming_the_field() -> None:
    state = desired(ring=["edge-0", "edge-1"])
    assert state.phase == "Failed" and "sources[1].device: 'edge-2' is not on the ring" in state.status["message"]


@pytest.mark.parametrize(("fields", "exact"), [({}, False), ({"exactKernels": True}, True)])
def test_ring_workers_run_the_deployments_kernels(fields: dict[str, Any], exact: bool) -> None:
    data = desired(**fields).of_kind("ConfigMap")[0]["data"]
    assert {load_ring_config(data[ring_config_key(f"edge-{i}")]).exact_kernels for i in range(4)} == {exact}


def test_ring_workers_mount_the_models_volume_and_load_the_weights_from_it() -> None:
    model = {"name": "squeezenet1_1", "weights": "squeezenet.safetensors",
             "volume": {"persistentVolumeClaim": {"claimName": "models"}}}
    state = desired(model=model)
    data = state.of_kind("ConfigMap")[0]["data"]
    for pod in state.of_kind("Pod"):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["weights"] == {"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}
        worker = pod["metadata"]["labels"][names.LABEL_PARTITION]
        assert load_ring_config(data[ring_config_key(worker)]).model.weights == f"{WEIGHTS_DIR}/squeezenet.safetensors"
        validate_strict(pod)
    assert all("weights" not in {v["name"] for v in p["spec"]["volumes"]} for p in desired().of_kind("Pod"))
