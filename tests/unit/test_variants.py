"""The digits variant family: shipped weights, measured accuracy, reproducible training, family documents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgepart.graph.loader import load_model
from edgepart.spec import AccuracySpec, ModelSpec, VariantFamilySpec, VariantSpec
from edgepart.variants import (
    FamilyError,
    family_graphs,
    imagenet_declared,
    load_manifest,
    model_ref,
    shipped_family,
)
from edgepart.variants.__main__ import main as variants_main
from edgepart.variants.train import DigitsSplit, TrainSettings, evaluate, load_split


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_split()


def test_shipped_family_is_measured_on_the_recorded_split(split: DigitsSplit) -> None:
    manifest = shipped_family()
    assert [v.name for v in manifest.family.variants] == ["digits-xs", "digits-s", "digits-m", "digits-l",
                                                          "digits-xl"]
    assert manifest.split is not None
    assert manifest.split.count == split.test_count == 360
    assert manifest.split.test_indices_sha256 == split.test_indices_sha256()
    accuracies = [v.accuracy.value for v in manifest.family.variants]
    assert accuracies == sorted(accuracies) and accuracies[0] < accuracies[-1] - 0.05  # a real trade-off
    assert all(v.accuracy.kind == "measured" and v.accuracy.count == 360 for v in manifest.family.variants)


def test_shipped_weights_score_exactly_the_manifest_accuracy(split: DigitsSplit) -> None:
    for variant in shipped_family().family.variants:
        model = load_model(model_ref(variant))  # the loader every process uses, weights from the package
        result = evaluate(model, split)
        assert (result.correct, result.count) == (variant.accuracy.correct, variant.accuracy.count), variant.name


def test_retraining_a_variant_reproduces_its_shipped_accuracy(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert variants_main(["retrain", "--out", str(tmp_path), "--only", "digits-xs"]) == 0
    assert "324/360" in capsys.readouterr().out
    shipped = shipped_family().family.variant("digits-xs")
    retrained = load_manifest(tmp_path / "manifest.json").family.variant("digits-xs")
    # correct counts, not weight bytes: another CPU's kernels (AVX2 vs SSE) round differently; checked here with
    # ATEN_CPU_CAPABILITY=default: different weights, the same 324/360
    assert retrained.accuracy.correct == shipped.accuracy.correct
    assert retrained.accuracy.value == pytest.approx(shipped.accuracy.value, abs=1e-6)


def test_training_is_deterministic(split: DigitsSplit) -> None:
    from edgepart.variants.train import train

    settings = TrainSettings(epochs=2)
    a, b = train("digits-s", split, settings).state_dict(), train("digits-s", split, settings).state_dict()
    assert all(a[k].equal(b[k]) for k in a)
    c = train("digits-s", split, TrainSettings(epochs=2, seed=1)).state_dict()
    assert not a["features.0.weight"].equal(c["features.0.weight"])


def test_variants_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert variants_main(["show"]) == 0
    assert "| digits-xl | edgepart.variants.digits:digits_xl | 0.9861 | measured | 355/360 |" in capsys.readouterr().out
    assert variants_main(["retrain", "--out", "unused", "--only", "digits-xxl"]) == 2
    assert "unknown digits variants ['digits-xxl']" in capsys.readouterr().err


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    source = shipped_family().directory
    for f in source.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "digits-m.safetensors").write_bytes((source / "digits-s.safetensors").read_bytes())
    with pytest.raises(FamilyError, match=r"variant 'digits-m'.*does not match weightsSha256"):
        load_manifest(tmp_path / "manifest.json")


def test_manifest_errors_name_the_field(tmp_path: Path) -> None:
    data = json.loads((shipped_family().directory / "manifest.json").read_text())
    data["family"]["variants"][1]["accuracy"]["correct"] = 400
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(FamilyError, match=r"family\.variants\[1\]\.accuracy.*correct \(400\) exceeds count"):
        load_manifest(tmp_path / "manifest.json")
    data["schemaVersion"] = 7
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(FamilyError, match="schemaVersion 7"):
        load_manifest(tmp_path / "manifest.json")


def test_accuracy_documents_say_how_they_were_obtained() -> None:
    with pytest.raises(ValidationError, match="needs count and correct"):
        AccuracySpec(value=0.9, kind="measured", source="my test set")
    with pytest.raises(ValidationError, match="not correct/count"):
        AccuracySpec(value=0.9, kind="measured", source="x", count=10, correct=8)
    assert AccuracySpec(value=0.7, kind="declared", source="paper").count is None
    model = ModelSpec(name="alexnet")
    accuracy = AccuracySpec(value=0.5, kind="declared", source="x")
    with pytest.raises(ValidationError, match=r"duplicate variant names \['a'\]"):
        VariantFamilySpec(name="f", task="t", variants=[VariantSpec(name="a", model=model, accuracy=accuracy)] * 2)


def test_family_graphs_cost_each_variant_and_check_they_are_interchangeable() -> None:
    family = shipped_family().family
    graphs = family_graphs(family, batch=32)
    assert all(g.batch == 32 and g.output_shape == (10,) for g in graphs.values())
    flops = [graphs[v.name].flops() for v in family.variants]
    assert flops == sorted(flops) and flops[-1] > 100 * flops[0]
    mixed = family.model_copy(update={"variants": [*family.variants, imagenet_declared(["alexnet"]).variants[0]]})
    with pytest.raises(FamilyError, match=r"variants\[5\] \(alexnet\): input shape \[3, 224, 224\] per image "
                                          r"differs from digits-xs's \[1, 8, 8\]"):
        family_graphs(mixed)


def test_declared_imagenet_family() -> None:
    family = imagenet_declared(["squeezenet1_1", "mobilenet_v2"])
    assert [(v.name, v.accuracy.kind, v.accuracy.value) for v in family.variants] == [
        ("squeezenet1-1", "declared", 0.58178), ("mobilenet-v2", "declared", 0.71878)]
    assert "torchvision" in family.variants[0].accuracy.source
    with pytest.raises(FamilyError, match="no declared accuracy for"):
        imagenet_declared(["yolov2"])
