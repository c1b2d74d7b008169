"""A deployment with spec.variants: the spec, `edgepart dse`, the stream prediction with the data plane's costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_fakes import NOW, OWNER, nodes, profile, validate_strict
from k8s_fakes import spec as deployment_spec
from typer.testing import CliRunner

from edgepart.cli import app, data_plane_configs
from edgepart.operator import names
from edgepart.operator.planning import compute_plan
from edgepart.operator.reconcile import DesiredState, Observed, reconcile
from edgepart.operator.render import partition_key
from edgepart.operator.settings import OperatorSettings
from edgepart.policy.dse import brute_force_front
from edgepart.policy.variants_plan import (
    DispatchCost,
    VariantsPlanError,
    explore,
    resolve_family,
    stream_throughput,
)
from edgepart.spec import WEIGHTS_DIR, SpecError, deployment_from_dict, load_deployment
from edgepart.variants import shipped_family

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "deployments" / "digits-variants.yaml"


def document(**variants: Any) -> dict[str, Any]:
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "d"},
            "spec": {"variants": {"family": "digits", "target": {"throughput": 1000}, **variants},
                     "devices": [{"name": "a", "speed": 0.2}, {"name": "b", "speed": 0.1}]}}


def test_the_example_explores_to_the_front_the_brute_force_finds() -> None:
    exploration = explore(load_deployment(EXAMPLE).spec, ROOT)
    brute = brute_force_front(exploration.problem)
    assert [c.choices for c in exploration.front.configurations] == [c.choices for c in brute.configurations]
    chosen = exploration.selection
    assert chosen.feasible and chosen.throughput >= 30_000
    # the most accurate configuration that reaches the target, as the front says
    reaching = [c for c in brute.configurations if c.score.throughput >= 30_000]
    best = max(c.score.accuracy for c in reaching)
    assert chosen.accuracy == pytest.approx(best)
    assert exploration.settings.local_node == "jetson" and exploration.input_shape == (1, 8, 8)


def test_dse_prints_the_front_and_the_choice() -> None:
    result = CliRunner().invoke(app, ["dse", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "Pareto front:" in result.output and "target met" in result.output
    assert "chosen: jetson: digits-xl" in result.output
    as_json = CliRunner().invoke(app, ["dse", str(EXAMPLE), "--json"])
    data = json.loads(as_json.output)
    assert data["feasible"] and data["configuration"]["rpi4"] == "digits-l"
    assert len(data["front"]) == len(explore(load_deployment(EXAMPLE).spec, ROOT).front)


def test_an_infeasible_target_is_reported_and_exits_1(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["variants"]["target"] = {"throughput": 10_000_000}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["dse", str(path)])
    assert result.exit_code == 1
    assert "infeasible: throughput >= 1e+07 images/s exceeds the most any configuration sustains" in result.output


def test_accuracy_target_picks_a_configuration_that_reaches_it() -> None:
    doc = document(target={"accuracy": 0.98})
    exploration = explore(deployment_from_dict(doc).spec, ROOT)
    assert exploration.selection.feasible and exploration.selection.accuracy >= 0.98


@pytest.mark.parametrize(("variants", "message"), [
    ({"custom": {"name": "f", "task": "t", "variants": [
        {"name": "v", "model": {"name": "alexnet"}, "accuracy": {"value": 0.5, "kind": "declared", "source": "s"}}]}},
     "give exactly one of variants.family"),
    ({"family": None, "custom": {"name": "f", "task": "t", "variants": []}}, "custom.variants: List should have"),
    ({"target": {}}, "give exactly one of target.throughput"),
    ({"batch": 0}, "variants.batch"),
])
def test_bad_variants_specs_name_the_field(variants: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        deployment_from_dict(document(**variants))


def test_variants_and_a_model_are_refused() -> None:
    doc = document()
    doc["spec"]["model"] = {"name": "vgg16"}
    with pytest.raises(SpecError, match="give either `variants`"):
        deployment_from_dict(doc)


def test_unknown_family_and_power_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(VariantsPlanError, match=r"spec.variants.family: .nope.yaml. is neither"):
        explore(deployment_from_dict(document(family="nope.yaml")).spec, tmp_path)
    with pytest.raises(VariantsPlanError, match=r"spec.variants.power: \['c'\] are not devices"):
        explore(deployment_from_dict(document(power={"c": 3})).spec, tmp_path)


def test_a_family_document_resolves_its_weights_beside_it(tmp_path: Path) -> None:
    family = shipped_family().family
    doc = family.model_dump(mode="json", by_alias=True, exclude_none=True)
    for v, spec in zip(doc["variants"], family.variants, strict=True):
        assert spec.model.weights is not None
        (tmp_path / Path(spec.model.weights).name).write_bytes(Path(spec.model.weights).read_bytes())
        v["model"]["weights"] = Path(spec.model.weights).name
    (tmp_path / "family.yaml").write_text(yaml.safe_dump(doc))
    resolved = resolve_family(deployment_from_dict(document(family="family.yaml")).spec.variants or
                              pytest.fail("no variants"), tmp_path)
    assert [v.model.weights for v in resolved.variants] == [
        str(tmp_path / Path(v.model.weights or "").name) for v in family.variants]


def test_stream_prediction_adds_the_data_plane_costs() -> None:
    exploration = explore(load_deployment(EXAMPLE).spec, ROOT)
    problem, selection = exploration.problem, exploration.selection
    free = stream_throughput(problem, selection, 4096)
    assert free == pytest.approx(selection.throughput, rel=2e-3)  # only image-count rounding
    # 4096 images take the nodes ~0.132 s: a dispatcher spending 1 ms per request and 0.5 ms per part (4 parts)
    # does not limit the stream; 50 ms per part caps it at 4096 / 0.201 s
    assert stream_throughput(problem, selection, 4096, DispatchCost(1e-3, 0.5e-3)) == pytest.approx(free)
    assert stream_throughput(problem, selection, 4096, DispatchCost(1e-3, 50e-3)) == pytest.approx(4096 / 0.201)
    slower = stream_throughput(problem, selection, 4096, DispatchCost(worker_part_s=0.05))
    assert slower < free
    with pytest.raises(VariantsPlanError, match="per_part_s"):
        DispatchCost(per_part_s=-1)


def test_status_lines_show_the_resource_managers_state() -> None:
    from edgepart.runtime.variants_local import manager_lines

    lines = manager_lines({"phase": "EXECUTE", "configuration": {"a": "digits-l", "b": None},
                           "predictedThroughput": 1234.4, "predictedAccuracy": 0.98061, "targetMet": True,
                           "measuredThroughput": 1100.0, "replans": 2, "lastReplan": "node b left",
                           "redispatchedImages": 17, "queued": 1, "note": "", "stalled": None})
    assert lines[0] == "resource manager: EXECUTE; configuration a: digits-l, b: off"
    assert "predicted 1234 images/s at accuracy 0.9806 (target met); measured 1100 images/s" in lines[1]
    assert "re-plans 2 (last: node b left); images dispatched again 17; queued 1" in lines[2]


def variants_state(custom: dict[str, Any]) -> DesiredState:
    body = deployment_spec(variants={"custom": custom, "target": {"throughput": 1000}})
    del body["model"], body["solver"], body["solverOptions"]
    return reconcile(OWNER, body, nodes(), {"rpi4": profile()}, settings=OperatorSettings(image="edgepart:1"),
                     planner=compute_plan, configs=data_plane_configs, now=NOW, observed=Observed())


def custom_digits(volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped digits family given inline, its weights relative paths on the given volumes."""
    family = json.loads(shipped_family().family.model_dump_json(by_alias=True, exclude_none=True))
    for variant, volume in zip(family["variants"], volumes, strict=False):
        variant["model"] |= {"weights": f"digits/{variant['name']}.safetensors", "volume": volume}
    return family


def test_variant_workers_mount_the_models_volume_and_load_the_weights_from_it() -> None:
    claim = {"persistentVolumeClaim": {"claimName": "models"}}
    state = variants_state(custom_digits([claim] * 8))
    workers = [p for p in state.of_kind("Pod") if p["spec"]["containers"][0]["args"] == ["serve-worker"]]
    assert len(workers) == 4, state.status
    data = state.of_kind("ConfigMap")[0]["data"]
    for pod in workers:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["weights"] == {"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}
        config = json.loads(data[partition_key(pod["metadata"]["labels"][names.LABEL_PARTITION])])
        assert {v["model"]["weights"] for v in config["family"]["variants"]} == {
            f"{WEIGHTS_DIR}/digits/{v['name']}.safetensors" for v in config["family"]["variants"]}
        validate_strict(pod)


def test_variants_on_different_volumes_are_refused_naming_the_field() -> None:
    state = variants_state(custom_digits([{"persistentVolumeClaim": {"claimName": "a"}},
                                          {"hostPath": {"path": "/b"}}]))
    assert state.phase == "Failed" and "custom.variants[1].model.volume" in state.status["message"]
