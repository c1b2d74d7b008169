"""The Helm chart, rendered and linted by Helm's own Go code (helm-python-sdk): valid, consistent, documented."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from k8s_fakes import ROOT, validate_strict

from edgepart.operator.settings import OperatorSettings

CHART = ROOT / "charts" / "edgepart"
FULL = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "grafanaDashboard": {"enabled": True}, "scrapeNamespace": "monitoring"},
        "watchNamespaces": ["edge-a", "edge-b"], "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"trustedModels": ["acme.models:build"]}}


def render(values: dict[str, Any] | None = None, namespace: str = "edgepart-system") -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="edgepart", namespace=namespace, is_install=True)
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [{}, FULL], ids=["defaults", "everything"])
@pytest.mark.parametrize("kube_version", ["v1.30.0", None])
def test_lints_clean(values: dict[str, Any], kube_version: str | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=kube_version)
    assert report["errors"] == []
    # severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [{}, FULL], ids=["defaults", "everything"])
def test_rendered_objects_validate_strictly(values: dict[str, Any]) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a Prometheus Operator CRD: no schema ships with kubernetes-validate; checked below
        validate_strict(doc)


def test_service_monitor_scrapes_the_operators_services() -> None:
    (monitor,) = by_kind(render(FULL), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "edgepart",
                                                "app.kubernetes.io/managed-by": "edgepart-operator"}}
    assert spec["namespaceSelector"] == {"matchNames": ["edge-a", "edge-b"]}
    assert spec["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"},
                                 {"port": "internal", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert by_kind(render(), "ServiceMonitor") == []


def test_the_grafana_dashboard_queries_metrics_the_data_plane_exports() -> None:
    (config_map,) = [d for d in by_kind(render(FULL), "ConfigMap") if d["metadata"]["name"].endswith("dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["edgepart.json"])
    exported = set(re.findall(r'"(edgepart_[a-z_]+)"',
                              (ROOT / "edgepart" / "partition_service" / "metrics.py").read_text()))
    queried = {re.sub(r"_(bucket|count|sum|total)$", "", m) for panel in dashboard["panels"]
               for target in panel["targets"] for m in re.findall(r"edgepart_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported


def test_the_charts_crd_is_the_manifest() -> None:
    assert (CHART / "crds" / "edgepart.io_dnndeployments.yaml").read_bytes() == \
        (ROOT / "manifests" / "crds" / "edgepart.io_dnndeployments.yaml").read_bytes()
    with helm.Chart.load(str(CHART)) as chart:
        assert [c["name"] for c in chart.crds] == ["crds/edgepart.io_dnndeployments.yaml"]


def test_a_role_per_watched_namespace_with_the_manifests_rules() -> None:
    docs = render(FULL)
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["edge-a", "edge-b"]
    (manifest_role,) = yaml.safe_load_all((ROOT / "manifests" / "rbac" / "role.yaml").read_text())
    for role in roles:
        assert role["rules"] == manifest_role["rules"]
    (manifest_cluster_role,) = yaml.safe_load_all((ROOT / "manifests" / "rbac" / "clusterrole.yaml").read_text())
    assert [r["rules"] for r in by_kind(docs, "ClusterRole")] == [manifest_cluster_role["rules"]]
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edgepart",
                                        "namespace": "edgepart-system"}]
    assert [r["metadata"]["namespace"] for r in by_kind(render(), "Role")] == ["edgepart-system"]


def test_the_operator_gets_its_settings_and_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    (deployment,) = by_kind(render(FULL), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/edgepart/edgepart:0.1.0"
    assert container["args"] == ["operator", "--liveness", "http://0.0.0.0:8080/healthz",
                                 "--namespace", "edge-a", "--namespace", "edge-b"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    prefix = OperatorSettings.model_config["env_prefix"]
    settings_env = {k: v for k, v in env.items() if k.startswith(prefix)}
    fields = {f"{prefix}{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(settings_env) == fields, "every operator setting comes from values.yaml, and nothing else"
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()  # as the operator reads them
    assert settings.image == container["image"] and settings.namespaces == ["edge-a", "edge-b"]
    assert settings.metrics_namespace == "monitoring" and settings.run_as_user == 65532
    assert settings.trusted_models == ["acme.models:build"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


FREE_FORM = {"resources", "labels", "annotations", "podAnnotations", "nodeSelector", "affinity"}


def test_every_value_is_commented() -> None:
    """Every key has a comment line above it, except inside free-form maps (resources, labels...)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        if not any(k in FREE_FORM for _, k in parents):
            assert lines[number - 1].strip().startswith("#"), f"values.yaml:{number + 1}: {key} has no comment"
        parents.append((indent, key))


def test_notes_name_the_watched_namespaces() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        notes = chart.render(FULL, name="edgepart", namespace="edgepart-system")["edgepart/templates/NOTES.txt"]
    assert "edge-a, edge-b" in notes and "kubectl get dnndeployments -n edge-a" in notes
