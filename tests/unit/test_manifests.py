"""Plain manifests: valid for Kubernetes 1.30 and newest, least-privilege RBAC, samples that deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_fakes import NOW, ROOT, profile, validate_strict

from edgepart.cli import data_plane_configs
from edgepart.operator.commands import load_resource
from edgepart.operator.nodes import node_from_short_form
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import reconcile
from edgepart.operator.render import Owner
from edgepart.operator.settings import OperatorSettings
from edgepart.spec import deployment_from_dict

MANIFESTS = ROOT / "manifests"
FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_kustomization_lists_every_operator_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = {MANIFESTS / r for r in kustomization["resources"]}
    assert listed == {p for p in FILES if "samples" not in p.parts}


@pytest.mark.parametrize("path", [p for p in FILES if "samples" not in p.parts], ids=lambda p: p.name)
def test_validates_strictly(path: Path) -> None:
    for doc in documents(path):
        validate_strict(doc)


def rules_with_comments(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each RBAC rule with the comment line just above it."""
    lines = path.read_text().splitlines()
    comments = [lines[i - 1].strip() for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    rules = [rule for doc in documents(path) for rule in doc.get("rules", [])]
    assert len(comments) == len(rules)
    return list(zip(comments, rules, strict=True))


@pytest.mark.parametrize("name", ["role.yaml", "clusterrole.yaml"])
def test_rbac_is_least_privilege_and_every_rule_is_commented(name: str) -> None:
    for comment, rule in rules_with_comments(MANIFESTS / "rbac" / name):
        assert comment.startswith("#") and len(comment) > 10, rule
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert not {"roles", "rolebindings", "clusterroles"} & set(rule["resources"])
        if "secrets" in rule["resources"]:  # the operator makes each deployment's secret and can read none
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"], rule


def test_only_nodes_are_read_cluster_wide() -> None:
    (role,) = documents(MANIFESTS / "rbac" / "clusterrole.yaml")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    (namespaced,) = documents(MANIFESTS / "rbac" / "role.yaml")
    assert namespaced["kind"] == "Role"
    granted = {(group, resource) for rule in namespaced["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}
    # everything the operator applies, watches or reads in a namespace, and nothing else
    assert granted == {("edgepart.io", "dnndeployments"), ("edgepart.io", "dnndeployments/status"), ("", "pods"),
                       ("", "pods/log"), ("", "configmaps"), ("", "services"), ("", "serviceaccounts"),
                       ("", "events"), ("", "secrets"), ("apps", "deployments"), ("batch", "jobs"),
                       ("networking.k8s.io", "networkpolicies")}


def test_the_operator_deployment_is_locked_down() -> None:
    (deployment,) = documents(MANIFESTS / "operator" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "edgepart-operator" and pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["args"][0] == "operator"


KIND_NODES = [node_from_short_form({"name": name, "cpu": "4", "memory": "8Gi",
                                    "labels": {"edgepart.io/pool": "edge"}, "deviceClass": "kind-large"}, i)
              for i, name in enumerate(["kind-worker", "kind-worker2", "kind-worker3"])]
EDGE_NODES = [node_from_short_form({"name": f"edge-{i}", "cpu": "4", "memory": "4Gi", "deviceClass": "rpi4"}, i)
              for i in range(1, 5)]


@pytest.mark.parametrize(("sample", "cluster", "objective"), [
    ("vgg16-latency.yaml", EDGE_NODES, "latency"),
    ("yolov2-throughput.yaml", KIND_NODES, "throughput"),
], ids=["vgg16", "yolov2"])
def test_samples_are_valid_and_plan_on_their_cluster(sample: str, cluster: Any, objective: str) -> None:
    resource = load_resource(MANIFESTS / "samples" / sample)
    parsed = deployment_from_dict(resource)
    assert parsed.spec.objective == objective
    device_class = cluster[0].device_class
    desired = reconcile(Owner(parsed.metadata.name, parsed.metadata.namespace, "uid"), resource["spec"], cluster,
                        {device_class: profile(device_class)}, settings=OperatorSettings(), planner=compute_plan,
                        configs=data_plane_configs, now=NOW)
    assert desired.phase == "Deploying", desired.status["message"]
    assert desired.plan is not None and set(desired.plan.devices) <= {n.name for n in cluster}
    if sample.startswith("vgg16"):
        assert len(desired.status["devices"]) == 4


def test_kind_config_has_a_control_plane_and_three_labelled_workers() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker", "worker"]
    selector = load_resource(MANIFESTS / "samples" / "yolov2-throughput.yaml")["spec"]["nodeSelector"]
    for worker in config["nodes"][1:]:
        assert selector.items() <= worker["labels"].items()
        assert worker["labels"]["edgepart.io/device-class"]


def test_the_ci_workflow_builds_installs_applies_and_infers() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "kind-e2e.yml").read_text())
    text = (ROOT / ".github" / "workflows" / "kind-e2e.yml").read_text()
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    uses = {s.get("uses", "").split("@")[0] for s in steps}
    assert {"docker/setup-buildx-action", "docker/build-push-action", "helm/kind-action"} <= uses
    for needle in ("images/Dockerfile", "kind-config.yaml", "helm install", "charts/edgepart",
                   "manifests/samples/yolov2-throughput.yaml", "EDGEPART_E2E", "linux/amd64,linux/arm64"):
        assert needle in text, needle
    assert "--platform" not in (ROOT / "images" / "Dockerfile").read_text().split("FROM", 1)[1]
