"""Variant families: the shipped digits family, its manifest, retraining, and declared zoo families.

A family's manifest (`manifest.json` beside the weights) is a
`VariantFamilySpec` (the same document a user writes for their own variants)
plus how the accuracies were obtained: the training settings, the held-out
split (dataset, seed, size and a fingerprint of its rows) and each weights
file's SHA-256. Weights paths in a manifest are relative to its folder.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgepart.errors import EdgepartError, explain_validation
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, input_shape_of, load_graph
from edgepart.spec import AccuracySpec, ModelSpec, VariantFamilySpec, VariantSpec
from edgepart.variants.digits import CLASSES, DESIGNS, INPUT_SHAPE, model_ref_name

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
SHIPPED_FOLDER = "digits_family"
DIGITS_FAMILY = "digits"


class FamilyError(EdgepartError, ValueError):
    """A variant family, or its manifest, that cannot be used; the message names the field at fault."""


@dataclass(frozen=True)
class SplitRecord:
    """Which held-out images an accuracy was measured on."""

    dataset: str
    seed: int
    test_fraction: float
    count: int
    test_indices_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "seed": self.seed, "testFraction": self.test_fraction,
                "count": self.count, "testIndicesSha256": self.test_indices_sha256}


@dataclass(frozen=True)
class FamilyManifest:
    family: VariantFamilySpec  # weights paths absolute
    directory: Path
    training: Mapping[str, Any] = field(default_factory=dict)
    split: SplitRecord | None = None
    weights_sha256: Mapping[str, str] = field(default_factory=dict)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _resolve(spec: VariantFamilySpec, directory: Path) -> VariantFamilySpec:
    variants = []
    for v in spec.variants:
        weights = v.model.weights
        if weights is not None and not Path(weights).is_absolute():
            weights = str(directory / weights)
        variants.append(v.model_copy(update={"model": v.model.model_copy(update={"weights": weights})}))
    return spec.model_copy(update={"variants": variants})


def load_manifest(path: str | Path) -> FamilyManifest:
    """Read and check a manifest: schema, fields, and every weights file against its recorded SHA-256."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise FamilyError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise FamilyError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise FamilyError(f"{path}: expected a JSON object with schemaVersion and family")
    if data.get("schemaVersion") != MANIFEST_SCHEMA_VERSION:
        raise FamilyError(f"{path}: schemaVersion {data.get('schemaVersion')!r} is not "
                          f"{MANIFEST_SCHEMA_VERSION}")
    try:
        family = VariantFamilySpec.model_validate(data.get("family"))
    except ValidationError as err:
        raise FamilyError(f"{path}: family.{explain_validation(err)}") from None
    directory = path.parent
    resolved = _resolve(family, directory)
    hashes = data.get("weightsSha256", {})
    if not isinstance(hashes, dict):
        raise FamilyError(f"{path}: weightsSha256 must map variant names to SHA-256 digests")
    for v in resolved.variants:
        expected = hashes.get(v.name)
        if v.model.weights is None or expected is None:
            continue
        if not Path(v.model.weights).is_file():
            raise FamilyError(f"{path}: variant {v.name!r}: weights file {v.model.weights} does not exist")
        if sha256_file(v.model.weights) != expected:
            raise FamilyError(f"{path}: variant {v.name!r}: {v.model.weights} does not match weightsSha256 "
                              "(retrained or corrupted; run `python -m edgepart.variants retrain` to rewrite both)")
    split = data.get("split")
    record = None
    if isinstance(split, dict):
        try:
            record = SplitRecord(str(split["dataset"]), int(split["seed"]), float(split["testFraction"]),
                                 int(split["count"]), str(split["testIndicesSha256"]))
        except (KeyError, TypeError, ValueError) as err:
            raise FamilyError(f"{path}: split: missing or malformed field {err}") from None
    return FamilyManifest(resolved, directory, dict(data.get("training", {})), record, dict(hashes))


def write_manifest(directory: str | Path, family: VariantFamilySpec, training: Mapping[str, Any],
                   split: SplitRecord | None) -> Path:
    """Write `manifest.json` in `directory` (weights paths stored relative to it, hashes of the files there)."""
    folder = Path(directory)
    relative = []
    hashes = {}
    for v in family.variants:
        weights = v.model.weights
        if weights is not None:
            hashes[v.name] = sha256_file(weights if Path(weights).is_absolute() else folder / weights)
            weights = Path(weights).name if Path(weights).parent in (folder, Path(".")) else weights
        relative.append(v.model_copy(update={"model": v.model.model_copy(update={"weights": weights})}))
    document = {
        "schemaVersion": MANIFEST_SCHEMA_VERSION,
        "family": family.model_copy(update={"variants": relative}).model_dump(mode="json", by_alias=True,
                                                                              exclude_none=True),
        "training": dict(training),
        **({"split": split.to_dict()} if split is not None else {}),
        "weightsSha256": hashes,
    }
    target = folder / MANIFEST
    target.write_text(json.dumps(document, indent=2) + "\n")
    return target


def shipped_manifest_path() -> Path:
    return Path(str(importlib.resources.files("edgepart.variants").joinpath(SHIPPED_FOLDER, MANIFEST)))


def shipped_family() -> FamilyManifest:
    """The digits family trained by this project, with accuracies measured on its held-out split."""
    return load_manifest(shipped_manifest_path())


def retrain_family(directory: str | Path, settings: Any = None, variants: Sequence[str] | None = None
                   ) -> FamilyManifest:
    """Train the digits family from scratch, write `<variant>.safetensors` and `manifest.json` in `directory`.

    `settings` is a `train.TrainSettings` (default: the shipped recipe); `variants` a subset of names.
    """
    from safetensors.torch import save_file

    from edgepart.variants.train import DATASET, TrainSettings, evaluate, load_split, train

    recipe = settings if settings is not None else TrainSettings()
    names = list(variants) if variants is not None else list(DESIGNS)
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        raise FamilyError(f"unknown digits variants {unknown}; known: {list(DESIGNS)}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    split = load_split(recipe.split_seed, recipe.test_fraction)
    record = SplitRecord(DATASET, recipe.split_seed, recipe.test_fraction, split.test_count,
                         split.test_indices_sha256())
    specs = []
    for name in names:
        model = train(name, split, recipe)
        result = evaluate(model, split)
        weights = folder / f"{name}.safetensors"
        save_file({k: t.contiguous() for k, t in model.state_dict().items()}, str(weights))
        accuracy = AccuracySpec(
            value=round(result.accuracy, 6), kind="measured",
            source=f"{DATASET}, stratified held-out {recipe.test_fraction:.0%} (seed {recipe.split_seed})",
            count=result.count, correct=result.correct, seed=recipe.split_seed)
        specs.append(VariantSpec(name=name, model=ModelSpec(name=model_ref_name(name), input_shape=list(INPUT_SHAPE),
                                                            weights=str(weights)), accuracy=accuracy))
    family = VariantFamilySpec(name=DIGITS_FAMILY, task=f"handwritten digits 8x8, {CLASSES} classes",
                               variants=specs)
    return load_manifest(write_manifest(folder, family, recipe.to_dict(), record))


# [R] Published ImageNet-1K top-1 of the reference architectures (torchvision's IMAGENET1K_V1 weights, as listed
# in the torchvision model documentation). The zoo's own weights are seeded, not trained: the figure holds for a
# user's weights file with the reference's trained weights, and says nothing about the seeded ones.
IMAGENET_TOP1 = {
    "alexnet": 0.56522,
    "squeezenet1_1": 0.58178,
    "googlenet": 0.69778,
    "mobilenet_v2": 0.71878,
    "resnet50": 0.76130,
    "vgg16": 0.71592,
}


def imagenet_declared(models: Sequence[str] | None = None) -> VariantFamilySpec:
    """Zoo ImageNet classifiers as a family with declared (published) accuracies."""
    names = list(models) if models is not None else sorted(IMAGENET_TOP1, key=IMAGENET_TOP1.__getitem__)
    unknown = [n for n in names if n not in IMAGENET_TOP1]
    if unknown:
        raise FamilyError(f"no declared accuracy for {unknown}; declared: {sorted(IMAGENET_TOP1)}")
    variants = [VariantSpec(
        name=name.replace("_", "-"), model=ModelSpec(name=name),
        accuracy=AccuracySpec(value=IMAGENET_TOP1[name], kind="declared",
                              source=f"torchvision {name} IMAGENET1K_V1 acc@1 on ImageNet-1K val "
                                     "(published top-1 of the reference architecture; needs its trained weights)"))
        for name in names]
    return VariantFamilySpec(name="imagenet-zoo", task="ImageNet-1K 224x224, 1000 classes", variants=variants)


def model_ref(variant: VariantSpec, batch: int | None = None) -> ModelRef:
    """The loader's reference for a variant; `batch` replaces the batch dimension of its input shape."""
    spec = variant.model
    ref = ModelRef(spec.name, tuple(spec.input_shape) if spec.input_shape else None, spec.weights, spec.seed)
    if batch is None:
        return ref
    shape = input_shape_of(ref)
    return ModelRef(ref.name, (batch, *shape[1:]), ref.weights, ref.seed)


def family_graphs(family: VariantFamilySpec, batch: int = 1) -> dict[str, LayerGraph]:
    """Each variant's LayerGraph at `batch` images (traced on the meta device, no weights read).

    Checks that the variants are interchangeable: same input shape per image and same output shape.
    """
    if batch < 1:
        raise FamilyError(f"batch must be >= 1, got {batch}")
    graphs: dict[str, LayerGraph] = {}
    first: VariantSpec | None = None
    for i, variant in enumerate(family.variants):
        where = f"family {family.name!r} variants[{i}] ({variant.name})"
        try:
            graph = load_graph(model_ref(variant, batch))
        except EdgepartError as err:
            raise FamilyError(f"{where}: {err}") from None
        if first is not None:
            reference = graphs[first.name]
            if graph.input_shape[1:] != reference.input_shape[1:]:
                raise FamilyError(f"{where}: input shape {list(graph.input_shape[1:])} per image differs from "
                                  f"{first.name}'s {list(reference.input_shape[1:])}: variants must take the same "
                                  "images")
            if graph.output_shape != reference.output_shape:
                raise FamilyError(f"{where}: output shape {list(graph.output_shape)} differs from {first.name}'s "
                                  f"{list(reference.output_shape)}: variants must answer the same classes")
        else:
            first = variant
        graphs[variant.name] = graph
    return graphs
