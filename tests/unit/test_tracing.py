"""The operator never imports a model outside the zoo: a Job traces it, and the graph comes back as data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from k8s_fakes import NOW, OWNER, nodes, profile, spec, validate_strict

from edgepart.cli import data_plane_configs
from edgepart.graph.layer_graph import GraphError
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.graph.serial import (
    GRAPH_BEGIN,
    GRAPH_END,
    graph_from_json,
    graph_to_dict,
    graph_to_json,
)
from edgepart.operator import names
from edgepart.operator.graphs import TraceJob, graph_from_log, graph_key, graphs_from_config_maps
from edgepart.operator.planning import PlanRequest, UntrustedModelError, compute_plan, graph_of
from edgepart.operator.reconcile import DesiredState, Observed, reconcile
from edgepart.operator.render import graph_config_map
from edgepart.operator.settings import OperatorSettings
from edgepart.planner.registry import solve
from edgepart.spec import ClusterSpec, DeviceSpec

SETTINGS = OperatorSettings(image="registry.example/edgepart:1.0")
SHAPE = [1, 3, 32, 32]
MODEL = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.g = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(self.g(x), 1))

def build():
    return Tiny()
'''


@pytest.fixture
def user_model(tmp_path: Path) -> tuple[str, Path]:
    """A model file whose import leaves a marker: proof of who ran its code."""
    marker = tmp_path / "imported"
    path = tmp_path / "user_model.py"
    path.write_text(MODEL.format(marker=str(marker)))
    return f"{path}:build", marker


NOTHING_OBSERVED = Observed()


def run(model: dict[str, Any], *, graphs: dict[str, Any] | None = None, observed: Observed = NOTHING_OBSERVED,
        settings: OperatorSettings = SETTINGS) -> DesiredState:
    return reconcile(OWNER, spec(model=model, solverOptions={"grid": [2, 1]}), nodes(), {"rpi4": profile()},
                     settings=settings, planner=compute_plan, configs=data_plane_configs, now=NOW, graphs=graphs,
                     observed=observed)


# ---------------------------------------------------------------- the graph as data


@pytest.mark.parametrize("name", ["alexnet", "resnet50", "googlenet", "mobilenet_v2"])
def test_a_graph_survives_json_and_plans_the_same(name: str) -> None:
    graph = load_graph(ModelRef(name))
    again = graph_from_json(graph_to_json(graph))
    assert again == graph and again.units == graph.units and again.cut_points == graph.cut_points
    cluster = ClusterSpec(devices=[DeviceSpec(name=f"d{i}") for i in range(3)])
    from edgepart.planner.cluster import cluster_from_spec

    ref = ModelRef(name, graph.input_shape)
    assert solve(again, ref, cluster_from_spec(cluster), "latency", "auto") == \
        solve(graph, ref, cluster_from_spec(cluster), "latency", "auto")


def test_max_pooling_pads_with_minus_infinity_in_strict_json() -> None:
    text = graph_to_json(load_graph(ModelRef("vgg16")))
    assert '"-Infinity"' in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def _broken(change: Any) -> str:
    data = graph_to_dict(load_graph(ModelRef("alexnet")))
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.update(schemaVersion=2), "schemaVersion: expected 1"),
    (lambda d: d["layers"][3].update(preds=[5]), r"layers\[3\]\.preds: \[5\] must name earlier layers"),
    (lambda d: d["layers"][2].update(inShapes=[[1, 2, 3]]), r"layers\[2\]\.inShapes: \[1, 2, 3\] is not the shape"),
    (lambda d: d["layers"][1]["spec"].update(kind="teleport"), r"layers\[1\]\.spec\.kind"),
    (lambda d: d["layers"][0]["spec"]["window"].update(stride=[0, 1]), r"layers\[0\]\.spec\.window\.stride"),
    (lambda d: d["layers"][0].update(outShape=[-1, 3, 3]), r"layers\[0\]\.outShape"),
    (lambda d: d["layers"][4].update(name=d["layers"][3]["name"]), r"layers\[4\]\.name: .* is not unique"),
    (lambda d: d.update(inputShape=[1, 3, 224]), "inputShape"),
    (lambda d: d["layers"][0].update(__import__="os"), "layers"),
    (lambda d: d.update(layers=d["layers"] * 1000), "layers"),
])
def test_a_broken_graph_is_refused_naming_the_field(change: Any, words: str) -> None:
    with pytest.raises(GraphError, match=words):
        graph_from_json(_broken(change), "graph")


def test_the_trace_command_writes_the_graph_it_traced(user_model: tuple[str, Path], tmp_path: Path) -> None:
    name, marker = user_model
    out = tmp_path / "graph.json"
    done = subprocess.run([sys.executable, "-m", "edgepart.cli", "trace", name, "--input-shape", "1,3,32,32", "-o",
                           str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # tracing runs the model's code: that is why the operator leaves it to a Job
    assert graph_from_json(out.read_text()) == load_graph(ModelRef(name, tuple(SHAPE)))
    logged = subprocess.run([sys.executable, "-m", "edgepart.cli", "trace", "--input-shape", "1,3,32,32",
                             "--markers", "--", name], capture_output=True, text=True, timeout=120, check=False)
    assert logged.returncode == 0 and logged.stdout.count("\n") == 3 and GRAPH_BEGIN in logged.stdout
    graph, text = graph_from_log("user output\n" + logged.stdout)
    assert graph == load_graph(ModelRef(name, tuple(SHAPE))) and text == graph_to_json(graph)
    assert GRAPH_END in logged.stdout


# ---------------------------------------------------------------- the operator's rule


def test_the_operator_refuses_to_trace_anything_but_the_zoo_itself(user_model: tuple[str, Path]) -> None:
    name, marker = user_model
    for model in (ModelRef("os:abort", (1, 3, 8, 8)), ModelRef(name, tuple(SHAPE))):
        with pytest.raises(UntrustedModelError, match="does not import it"):
            graph_of(model)
        with pytest.raises(UntrustedModelError):
            compute_plan(PlanRequest(models=(("m", model),), objective="latency", solver="single",
                                     cluster=ClusterSpec(devices=[DeviceSpec(name="a")])))
    assert not marker.exists()


@pytest.mark.parametrize("model", ["os:abort", "user"])
def test_a_model_outside_the_zoo_is_traced_by_a_job_not_imported(model: str, user_model: tuple[str, Path]) -> None:
    name, marker = user_model
    name = name if model == "user" else model
    modules = set(sys.modules)
    desired = run({"name": name, "inputShape": SHAPE})
    assert desired.phase == "Tracing" and desired.objects == () and desired.plan is None
    assert not marker.exists() and set(sys.modules) == modules  # nothing imported, nothing run
    (job,) = desired.jobs
    key = graph_key(ModelRef(name, tuple(SHAPE)), SETTINGS.image)
    assert job["metadata"]["name"] == names.trace_job_name(key)
    assert job["metadata"]["labels"][names.LABEL_GRAPH_KEY] == key
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["trace", "--input-shape", "1,3,32,32", "--markers", "--", name]  # no shell
    assert "command" not in container and container["image"] == SETTINGS.image
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    validate_strict(job)
    traced = next(c for c in desired.status["conditions"] if c["type"] == "Traced")
    assert traced["status"] == "False" and traced["reason"] == "TracingJobRunning"


def test_a_failed_tracing_job_fails_the_deployment_naming_it() -> None:
    key = graph_key(ModelRef("os:abort", (1, 3, 8, 8)), SETTINGS.image)
    observed = Observed(trace_jobs=(TraceJob(names.trace_job_name(key), key, succeeded=False, failed=True,
                                             message="BackoffLimitExceeded"),))
    desired = run({"name": "os:abort", "inputShape": [1, 3, 8, 8]}, observed=observed)
    assert desired.phase == "Failed" and desired.jobs == ()
    assert desired.status["message"] == (f"spec.model.name: tracing 'os:abort' failed in job "
                                         f"{names.trace_job_name(key)}: BackoffLimitExceeded (see its pod's log)")


def test_the_traced_graph_is_planned_from_as_data(user_model: tuple[str, Path]) -> None:
    name, marker = user_model
    graph = load_graph(ModelRef(name, tuple(SHAPE)))  # what the Job printed (the test runs the code)
    marker.unlink()
    key = graph_key(ModelRef(name, tuple(SHAPE)), SETTINGS.image)
    stored = graphs_from_config_maps([graph_config_map(key, name, graph_to_json(graph), "edge")])
    assert stored.errors == {}
    desired = run({"name": name, "inputShape": SHAPE}, graphs=dict(stored.graphs))
    assert desired.phase == "Deploying" and desired.plan is not None and desired.jobs == ()
    assert len(desired.plan.tasks) == 3 and not marker.exists()
    # a graph of another model, or traced with another input, is refused
    wrong = graphs_from_config_maps([graph_config_map(key, name, graph_to_json(load_graph(ModelRef("alexnet"))),
                                                      "edge")])
    failed = run({"name": name, "inputShape": SHAPE}, graphs=dict(wrong.graphs))
    assert failed.phase == "Failed" and "the graph is of model 'alexnet'" in failed.status["message"]
    broken = graphs_from_config_maps([graph_config_map(key, name, "{}", "edge")])
    failed = run({"name": name, "inputShape": SHAPE}, observed=Observed(graph_errors=broken.errors))
    assert failed.phase == "Failed" and "schemaVersion" in failed.status["message"]


def test_references_the_admin_trusts_are_traced_in_process(user_model: tuple[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    name, marker = user_model
    path = Path(name.rsplit(":", 1)[0])
    monkeypatch.syspath_prepend(str(path.parent))
    trusted = OperatorSettings(image=SETTINGS.image, trusted_models=["user_model:build"])
    desired = run({"name": "user_model:build", "inputShape": SHAPE}, settings=trusted)
    assert desired.phase == "Deploying" and desired.jobs == () and marker.exists()
    sys.modules.pop("user_model", None)


def test_render_never_imports_the_model_and_takes_a_traced_graph(user_model: tuple[str, Path], tmp_path: Path) -> None:
    name, marker = user_model
    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text(json.dumps([{"name": f"edge-{i}", "cpu": "4", "memory": "8Gi", "deviceClass": "rpi4",
                                       "labels": {"pool": "edge"}} for i in range(2)]))
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(profile().to_json())

    def render(model: str, *extra: str) -> subprocess.CompletedProcess[str]:
        resource = tmp_path / "dnn.yaml"
        resource.write_text(json.dumps({"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
                                        "metadata": {"name": "mine"},
                                        "spec": {"model": {"name": model, "inputShape": SHAPE},
                                                 "nodeSelector": {"pool": "edge"}, "solver": "single"}}))
        return subprocess.run([sys.executable, "-m", "edgepart.cli", "render", str(resource), "--nodes",
                               str(nodes_file), "--profile", f"rpi4={profile_file}", "-o", str(tmp_path / "out"),
                               *extra], capture_output=True, text=True, timeout=180, check=False)

    aborted = render("os:abort")  # imported and called, this killed `edgepart render` (exit 134)
    assert aborted.returncode == 0 and "phase Tracing" in aborted.stdout, aborted.stderr
    job = next((tmp_path / "out").glob("*-job-edgepart-trace-*.yaml"))
    assert "os:abort" in job.read_text()
    untraced = render(name)
    assert untraced.returncode == 0 and "phase Tracing" in untraced.stdout and not marker.exists()
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(graph_to_json(load_graph(ModelRef(name, tuple(SHAPE)))))
    marker.unlink()
    planned = render(name, "--graph", str(graph_file))
    assert planned.returncode == 0 and "phase Deploying" in planned.stdout, planned.stderr
    assert not marker.exists()
    mismatch = render("alexnet", "--graph", str(graph_file))
    assert mismatch.returncode == 2 and "not 'alexnet'" in mismatch.stderr
