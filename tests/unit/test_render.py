"""Rendered objects: valid for Kubernetes 1.30 and the newest schema, secure, labelled, stable names."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from k8s_fakes import NOW, OWNER, nodes, profile, spec, validate_strict

from edgepart.cli import data_plane_configs
from edgepart.operator import names, render
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import DesiredState, reconcile
from edgepart.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0", metrics_namespace="monitoring")


def desired(**fields: Any) -> DesiredState:
    return reconcile(OWNER, spec(**fields), nodes(), {"rpi4": profile()}, settings=SETTINGS, planner=compute_plan,
                     configs=data_plane_configs, now=NOW)


def every_object() -> list[dict[str, Any]]:
    deployed = desired()
    profiling = reconcile(OWNER, spec(), nodes(), {}, settings=SETTINGS, planner=compute_plan,
                          configs=data_plane_configs, now=NOW)
    profile_map = render.profile_config_map("rpi4", profile().to_json(), "edge", {"edgepart.io/profiled-by": "job"})
    tracing = reconcile(OWNER, spec(model={"name": "acme.models:build", "inputShape": [1, 3, 64, 64]}), nodes(),
                        {"rpi4": profile()}, settings=SETTINGS, planner=compute_plan, configs=data_plane_configs,
                        now=NOW)
    assert tracing.phase == "Tracing"
    graph_map = render.graph_config_map("k" * 16, "acme.models:build", "{}", "edge", {"edgepart.io/traced-by": "job"})
    return [*map(dict, deployed.objects), *map(dict, deployed.secrets), *map(dict, profiling.jobs), profile_map,
            *map(dict, tracing.jobs), graph_map]


OBJECTS = every_object()


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in ("Deployment", "Job"):
        return [obj["spec"]["template"]["spec"]]
    return []


def test_every_kind_is_rendered() -> None:
    kinds = sorted({o["kind"] for o in OBJECTS})
    assert kinds == ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "Pod", "Secret", "Service", "ServiceAccount"]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_validates_strictly(obj: dict[str, Any]) -> None:
    validate_strict(obj)


@pytest.mark.parametrize("obj", [o for o in OBJECTS if pod_specs(o)], ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_pods_are_locked_down(obj: dict[str, Any]) -> None:
    for pod in pod_specs(obj):
        assert pod["automountServiceAccountToken"] is False
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
        for container in pod["containers"]:
            c = container["securityContext"]
            assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False
            assert c["capabilities"] == {"drop": ["ALL"]} and c["runAsNonRoot"] is True
            assert {"name": "TMPDIR", "value": "/tmp"} in container["env"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["image"] == SETTINGS.image
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]


@pytest.mark.parametrize("obj", [o for o in OBJECTS if o["kind"] in ("Pod", "Deployment")],
                         ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_serving_pods_have_probes_and_scrape_annotations(obj: dict[str, Any]) -> None:
    template = obj if obj["kind"] == "Pod" else obj["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    partition = obj["kind"] == "Pod"
    # a partition serves only its deployment (the internal port); the gateway its clients and its partitions
    served = "internal" if partition else "http"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == ("8081" if partition else "8080")
    assert annotations["prometheus.io/path"] == "/metrics"
    container = pod_specs(obj)[0]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": served}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": served}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    internal = {"name": "internal", "containerPort": 8081, "protocol": "TCP"}
    assert container["ports"] == ([internal] if partition else
                                  [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, internal])
    assert container["args"] == (["serve-partition"] if partition else ["serve-gateway"])
    assert "limits" in container["resources"] and "cpu" not in container["resources"]["limits"]
    # the deployment's secret, mounted read-only where the configs say it is
    volumes = {v["name"]: v for v in pod_specs(obj)[0]["volumes"]}
    assert volumes["secret"]["secret"] == {"secretName": "alex-secret", "defaultMode": 0o440}
    assert {"name": "secret", "mountPath": render.SECRET_DIR, "readOnly": True} in container["volumeMounts"]


def test_network_policies_admit_only_the_deployments_pods_and_the_gateways_clients() -> None:
    policies = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "NetworkPolicy"}
    partitions = policies["alex-partitions"]["spec"]
    assert partitions["podSelector"] == {"matchLabels": {names.LABEL_DEPLOYMENT: "alex",
                                                         names.LABEL_COMPONENT: "partition"}}
    assert partitions["policyTypes"] == ["Ingress"]
    peers, metrics = partitions["ingress"]
    assert peers["from"] == [{"podSelector": {"matchLabels": {names.LABEL_DEPLOYMENT: "alex"}}}]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    gateway = policies["alex-gateway"]["spec"]
    assert gateway["podSelector"] == {"matchLabels": {names.LABEL_DEPLOYMENT: "alex",
                                                      names.LABEL_COMPONENT: "gateway"}}
    assert gateway["ingress"] == [  # clients from anywhere on http; internal only from the deployment's own pods
        {"ports": [{"port": "http", "protocol": "TCP"}]},
        {"from": [{"podSelector": {"matchLabels": {names.LABEL_DEPLOYMENT: "alex"}}}],
         "ports": [{"port": "internal", "protocol": "TCP"}]}]
    assert peers["ports"] == metrics["ports"] == [{"port": "internal", "protocol": "TCP"}]
    # every pod the policies are about carries the labels they select on
    for obj in OBJECTS:
        if obj["kind"] == "Pod":
            assert obj["metadata"]["labels"][names.LABEL_COMPONENT] == "partition"
        if obj["kind"] == "Deployment":
            assert obj["spec"]["template"]["metadata"]["labels"][names.LABEL_COMPONENT] == "gateway"


def test_without_a_metrics_namespace_partitions_admit_only_their_peers() -> None:
    policy = render.network_policies(OWNER, OperatorSettings())[0]
    assert len(policy["spec"]["ingress"]) == 1


def test_services_select_the_pods_of_the_current_plan() -> None:
    state = desired()
    plan_hash = state.status["plan"]["hash"]
    for service in state.of_kind("Service"):
        selector = service["spec"]["selector"]
        matching = [p for p in state.objects if p["kind"] in ("Pod", "Deployment")
                    and names.matches(p["metadata"]["labels"] if p["kind"] == "Pod"
                                      else p["spec"]["template"]["metadata"]["labels"], selector)]
        assert len(matching) == 1, service["metadata"]["name"]
        if service["metadata"]["name"] != "alex-gateway":
            assert selector[names.LABEL_PLAN] == plan_hash


def test_pod_names_change_with_their_content_and_hashes_are_stable() -> None:
    first, again, other = desired(), desired(), desired(objective="throughput")
    assert [o["metadata"]["name"] for o in first.of_kind("Pod")] == [o["metadata"]["name"] for o in again.of_kind("Pod")]
    assert not {o["metadata"]["name"] for o in first.of_kind("Pod")} & {o["metadata"]["name"] for o in other.of_kind("Pod")}
    pod = dict(first.of_kind("Pod")[0])
    moved = render.partition_pod(OWNER, render.PartitionPod("s0p0", "edge-9", "1", "1Gi", "2Gi"), "h", SETTINGS)
    same = render.partition_pod(OWNER, render.PartitionPod("s0p0", "edge-9", "1", "1Gi", "2Gi"), "h", SETTINGS)
    assert moved == same and moved["metadata"]["name"] != pod["metadata"]["name"]
    assert moved["metadata"]["annotations"][names.ANNOTATION_HASH] == same["metadata"]["annotations"][names.ANNOTATION_HASH]


def test_every_name_is_a_dns_label() -> None:
    long_owner = render.Owner("a" * 63, "edge", "uid")
    objects = [render.partition_pod(long_owner, render.PartitionPod("s12p34", "n", "1", "1Gi", "1Gi"), "h", SETTINGS),
               render.partition_service(long_owner, "s12p34", "h", SETTINGS),
               render.gateway_service(long_owner, SETTINGS), *render.network_policies(long_owner, SETTINGS)]
    for obj in [*objects, *OBJECTS]:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and name[0].isalpha() and names.dns_label(name) == name, name
    assert names.dns_label("a" * 70, "x") != names.dns_label("a" * 70, "y")


def test_templates_refuse_missing_values() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.render_template("partition-service.yaml.j2", metadata={}, settings=SETTINGS)


def test_no_owner_reference_without_a_uid() -> None:
    obj = render.service_account(render.Owner("alex", "edge", ""))
    assert "ownerReferences" not in obj["metadata"]


def test_the_render_command_writes_what_the_operator_would_create(tmp_path: Any) -> None:
    import yaml
    from typer.testing import CliRunner

    from edgepart.cli import app

    deployment = tmp_path / "dnn.yaml"
    deployment.write_text(yaml.safe_dump({"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
                                          "metadata": {"name": "alex", "namespace": "edge"}, "spec": spec()}))
    node_file = tmp_path / "nodes.yaml"
    node_file.write_text(yaml.safe_dump([{"name": f"edge-{i}", "cpu": "4", "memory": "8Gi", "deviceClass": "rpi4",
                                          "labels": {"pool": "edge"}} for i in range(4)]))
    profile_file = tmp_path / "rpi4.json"
    profile_file.write_text(profile().to_json())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(deployment), "--nodes", str(node_file), "-o", str(out),
                                      "--profile", f"rpi4={profile_file}", "--image", "registry.example/e:1"])
    assert result.exit_code == 0, result.output
    assert "phase Deploying" in result.output
    written = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml")) if p.name != "status.yaml"]
    expected = reconcile(render.Owner("alex", "edge", ""), spec(), nodes(), {"rpi4": profile()},
                         settings=OperatorSettings(image="registry.example/e:1"), planner=compute_plan,
                         configs=data_plane_configs, now=NOW)
    assert len(written) == len(expected.objects) + 1
    (secret_file,) = out.glob("*-secret-alex-secret.yaml")
    assert secret_file.stat().st_mode & 0o777 == 0o600  # the Secret's value, readable by its owner only
    secret = yaml.safe_load(secret_file.read_text())
    assert len(secret["stringData"][render.SECRET_KEY]) >= 32 and secret["type"] == "Opaque"
    for obj in written:
        assert "ownerReferences" not in obj["metadata"]  # no uid to point at without a cluster
        validate_strict(obj)
    assert {o["metadata"]["name"] for o in written} == {o["metadata"]["name"] for o in expected.objects} | {
        "alex-secret"}
    status = yaml.safe_load((out / "status.yaml").read_text())["status"]
    assert status["plan"]["hash"] == expected.status["plan"]["hash"]

    # no profile for the class: the profiling Job is what gets written
    profiling = CliRunner().invoke(app, ["render", str(deployment), "--nodes", str(node_file), "-o",
                                         str(tmp_path / "profiling")])
    assert profiling.exit_code == 0 and "phase Profiling" in profiling.output
    assert [p.name for p in sorted((tmp_path / "profiling").glob("*.yaml"))] == [
        "00-job-edgepart-profile-rpi4.yaml", "status.yaml"]
    # an invalid spec: exit 1 and the field named
    deployment.write_text(deployment.read_text().replace("ftp-grid", "no-such-solver"))
    failed = CliRunner().invoke(app, ["render", str(deployment), "--nodes", str(node_file), "-o", str(out),
                                      "--profile", f"rpi4={profile_file}"])
    assert failed.exit_code == 1 and "spec.solver" in failed.output
