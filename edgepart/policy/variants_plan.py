"""From a DNNDeployment with `spec.variants` to the design-space table and the chosen configuration.

`explore(spec)` resolves the family (the shipped `digits`, a family document,
or an inline one), predicts θ[n][m] for every device and variant from the cost
model at the deployment's batch, builds the resource manager's settings (links
from the master device, where the dispatcher runs and which also computes),
finds the exact Pareto front and selects by the target. `edgepart dse`
prints it; the dispatcher starts from the same settings and estimates.

Prediction of a stream (`stream_throughput`) [R]: the table's Θ = Σθ counts
compute only. The runtime dispatcher also spends CPU on every request (reading
it, splitting it, answering) and on every part (an HTTP exchange with a
worker), and a worker spends some per part beyond its compute. With
`DispatchCost` (measured by `bench variants_testbed`, default none), a request
of N images split as counts c_n takes the dispatcher
per_request + k·per_part (k parts) and node n c_n/θ_n + worker_part; with
requests pipelined, the stream runs at N / max of those.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgepart.errors import EdgepartError, explain_validation
from edgepart.planner.cluster import Cluster, Link, cluster_from_spec
from edgepart.planner.costmodel import DeviceProfile
from edgepart.policy.dse import OFF, DseProblem, Front, Variant, image_counts, pareto_front
from edgepart.policy.manager import ManagerSettings
from edgepart.policy.select import (
    AccuracyAwarePolicy,
    AccuracyTarget,
    Selection,
    Target,
    ThroughputTarget,
    select,
)
from edgepart.policy.throughput import ThroughputEstimates
from edgepart.spec import ClusterSpec, DeploymentSpec, VariantFamilySpec, VariantsSpec
from edgepart.variants import family_graphs, load_manifest, shipped_family
from edgepart.variants.family import DIGITS_FAMILY

__all__ = ["DispatchCost", "Exploration", "VariantsPlanError", "explore", "resolve_family", "stream_throughput",
           "target_of"]

FLOAT_BYTES = 4  # images and answers travel as float32


class VariantsPlanError(EdgepartError, ValueError):
    """A variants deployment that cannot be explored; the message names the field at fault."""


def _absolute(family: VariantFamilySpec, base: Path) -> VariantFamilySpec:
    """Weights paths and `path/file.py:factory` models made absolute against `base`."""
    variants = []
    for v in family.variants:
        model = v.model
        weights = model.weights
        if weights is not None and not Path(weights).is_absolute():
            weights = str((base / weights).resolve())
        name = model.name
        location, sep, attr = name.rpartition(":")
        if sep and (location.endswith(".py") or "/" in location) and not Path(location).is_absolute():
            name = f"{(base / location).resolve()}:{attr}"
        variants.append(v.model_copy(update={"model": model.model_copy(update={"weights": weights, "name": name})}))
    return family.model_copy(update={"variants": variants})


def resolve_family(spec: VariantsSpec, base: Path | None = None) -> VariantFamilySpec:
    """The family a deployment names: inline, the shipped `digits`, or a document (YAML/JSON family, or a
    family's manifest.json with its weights' hashes). Relative paths resolve against `base`."""
    root = base or Path.cwd()
    if spec.custom is not None:
        return _absolute(spec.custom, root)
    assert spec.family is not None
    if spec.family == DIGITS_FAMILY:
        return shipped_family().family
    path = Path(spec.family)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise VariantsPlanError(f"spec.variants.family: {spec.family!r} is neither {DIGITS_FAMILY!r} (the shipped "
                                f"family) nor a family document ({path} does not exist)")
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise VariantsPlanError(f"spec.variants.family: cannot read {path}: {err}") from None
    if isinstance(data, dict) and "schemaVersion" in data:
        return load_manifest(path).family
    try:
        family = VariantFamilySpec.model_validate(data)
    except ValidationError as err:
        raise VariantsPlanError(f"spec.variants.family ({path}): {explain_validation(err)}") from None
    return _absolute(family, path.parent)


def target_of(spec: VariantsSpec) -> Target:
    if spec.target.throughput is not None:
        return ThroughputTarget(spec.target.throughput)
    assert spec.target.accuracy is not None
    return AccuracyTarget(spec.target.accuracy)


@dataclass(frozen=True)
class DispatchCost:
    """CPU seconds the data plane spends beyond compute: the dispatcher per request and per part, a worker
    per part."""

    per_request_s: float = 0.0
    per_part_s: float = 0.0
    worker_part_s: float = 0.0
    node_part_s: Mapping[str, float] = field(default_factory=dict)  # per node, instead of worker_part_s

    def __post_init__(self) -> None:
        values = {"per_request_s": self.per_request_s, "per_part_s": self.per_part_s,
                  "worker_part_s": self.worker_part_s, **{f"node_part_s[{n}]": v for n, v in self.node_part_s.items()}}
        for name, value in values.items():
            if not (value >= 0 and math.isfinite(value)):
                raise VariantsPlanError(f"dispatch cost {name} must be a finite number >= 0, got {value}")

    def part_s(self, node: str) -> float:
        return self.node_part_s.get(node, self.worker_part_s)


def stream_throughput(problem: DseProblem, selection: Selection, images: int,
                      cost: DispatchCost = DispatchCost()) -> float:
    """Images/s of a stream of requests of `images` each under `selection`, with the data plane's costs
    (module docstring). With no cost this is the selection's Θ up to rounding of the image counts."""
    if images < 1:
        raise VariantsPlanError(f"images per request must be >= 1, got {images}")
    choices = selection.assignment.choices
    counts = image_counts(selection.assignment.weights, images)
    slowest = 0.0
    parts = 0
    for n, (m, count) in enumerate(zip(choices, counts, strict=True)):
        if m == OFF or count == 0:
            continue
        theta = problem.nodes[n].throughput[m]
        assert theta is not None
        parts += 1
        slowest = max(slowest, count / theta + cost.part_s(problem.nodes[n].name))
    dispatcher = cost.per_request_s + parts * cost.per_part_s
    return images / max(slowest, dispatcher)


@dataclass(frozen=True)
class Exploration:
    family: VariantFamilySpec
    cluster: Cluster
    settings: ManagerSettings
    estimates: ThroughputEstimates
    problem: DseProblem
    front: Front
    selection: Selection
    dse_seconds: float  # time to build the front
    input_shape: tuple[int, ...]  # per image (C, H, W)
    output_shape: tuple[int, ...]  # per image
    batch: int  # images a worker computes at once (θ is predicted at it)

    @property
    def master(self) -> str:
        return self.cluster.master


def _links(cluster: Cluster) -> dict[str, tuple[Link, Link]]:
    master = cluster.master
    links = {d.name: (cluster.link(master, d.name), cluster.link(d.name, master))
             for d in cluster.devices if d.name != master}
    local = Link(cluster.local_s(master), float("inf"))
    links[master] = (local, local)
    return links


def explore(spec: DeploymentSpec, base: Path | None = None, *, family: VariantFamilySpec | None = None,
            estimates: ThroughputEstimates | None = None, window: int = 2, images: int | None = None,
            cluster_spec: ClusterSpec | None = None,
            profiles: Mapping[str, DeviceProfile] | None = None) -> Exploration:
    """The table, front and selection of a variants deployment on its inline devices (module docstring).

    `family` skips resolving it again; `estimates` replaces the cost model's θ (e.g. measured ones);
    `window`: requests the dispatcher keeps in flight; `images`: request size the accuracy mode times;
    `cluster_spec` and `profiles` (device name -> profile): the devices, instead of the spec's inline ones
    (the operator's view of the nodes)."""
    if spec.variants is None:
        raise VariantsPlanError("spec.variants: this deployment names no variant family")
    variants_spec = spec.variants
    root = base or Path.cwd()
    family = family if family is not None else resolve_family(variants_spec, root)
    cluster = cluster_from_spec(cluster_spec or spec.cluster(), base_dir=root, profiles=profiles)
    unknown = sorted(set(variants_spec.power) - set(cluster.names))
    if unknown:
        raise VariantsPlanError(f"spec.variants.power: {unknown} are not devices {list(cluster.names)}")
    graphs = family_graphs(family, variants_spec.batch)
    first = graphs[family.variants[0].name]
    theta = estimates if estimates is not None else ThroughputEstimates.predicted(cluster, graphs)

    input_shape = tuple(first.input_shape[1:])
    output_shape = tuple(first.output_shape[1:])
    settings = ManagerSettings(
        tuple(Variant(v.name, v.accuracy.value) for v in family.variants), AccuracyAwarePolicy(),
        target_of(variants_spec), dict(variants_spec.power), _links(cluster), local_node=cluster.master,
        image_bytes=math.prod(input_shape) * FLOAT_BYTES, result_bytes=math.prod(output_shape) * FLOAT_BYTES,
        medium=cluster.medium, window=window)
    problem = settings.problem(cluster.names, theta)
    started = time.perf_counter()
    front = pareto_front(problem)
    seconds = time.perf_counter() - started
    selection = select(front, settings.target, images or variants_spec.batch) if settings.target else None
    assert selection is not None
    return Exploration(family, cluster, settings, theta, problem, front, selection, seconds, input_shape,
                       output_shape, variants_spec.batch)


def describe_exploration(exploration: Exploration) -> Mapping[str, object]:
    """The chosen configuration as JSON-able data (what `edgepart dse --json` prints)."""
    s = exploration.selection
    return {
        "family": exploration.family.name,
        "target": exploration.settings.target.describe() if exploration.settings.target else None,
        "feasible": s.feasible,
        "note": s.note,
        "configuration": {n.name: v for n, v in zip(exploration.problem.nodes, s.variants, strict=True)},
        "shares": dict(zip((n.name for n in exploration.problem.nodes), s.assignment.weights, strict=True)),
        "throughput": s.throughput,
        "accuracy": s.accuracy,
        "powerW": s.power_w,
        "front": [{"variants": list(exploration.problem.describe(c.choices)), "throughput": c.score.throughput,
                   "accuracy": c.score.accuracy, "powerW": c.score.power_w}
                  for c in exploration.front.configurations],
        "configurations": exploration.problem.configuration_count,
        "dseSeconds": exploration.dse_seconds,
    }


def to_json(exploration: Exploration) -> str:
    return json.dumps(describe_exploration(exploration), indent=2)
