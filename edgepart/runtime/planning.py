"""Plan a DNNDeployment for the local runtime with the deployment's solver (default auto) and predict its costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, input_shape_of, load_graph
from edgepart.plan import Plan, Predicted, check_plan, make_plan
from edgepart.planner.cluster import cluster_from_spec
from edgepart.planner.evaluate import evaluate
from edgepart.planner.registry import solve
from edgepart.spec import ClusterSpec, DeploymentSpec, DNNDeployment, ModelSpec

__all__ = ["Planned", "model_ref", "plan_deployment", "predict", "with_cpu_speeds"]


@dataclass(frozen=True)
class Planned:
    plan: Plan
    graph: LayerGraph
    how: str  # "solver fused-dp", "builder ftp-grid", "given"


def model_ref(model: ModelSpec, base: Path | None = None) -> ModelRef:
    """The model reference, with a relative `path/file.py:factory` and weights made absolute (processes
    may run from elsewhere)."""
    base = base or Path.cwd()
    name = model.name
    location, sep, attr = name.rpartition(":")
    if sep and (location.endswith(".py") or "/" in location) and not Path(location).is_absolute():
        candidate = (base / location).resolve()
        if candidate.is_file():
            name = f"{candidate}:{attr}"
    weights = model.weights
    if weights is not None and not Path(weights).is_absolute():
        weights = str((base / weights).resolve())
    shape = tuple(model.input_shape) if model.input_shape else None
    ref = ModelRef(name, shape, weights, model.seed)
    return ModelRef(name, input_shape_of(ref), weights, model.seed)


def with_cpu_speeds(deployment: DNNDeployment, per_core: float = 1.0,
                    message_cpu_s: float | None = None) -> DNNDeployment:
    """Devices with `cpus` and neither `speed` nor `profile` get speed = cpus x `per_core`, and with
    `message_cpu_s` (CPU seconds per message end measured under such a quota) and no `messageCost` of
    their own, messageCost = `message_cpu_s` / cpus.

    For emulated devices `cpus` is the CPU quota they run under, so the planner should cost them at that
    fraction of a core (`per_core`: this host's core against the reference profile; 1.0 when unknown).
    """
    devices = []
    for d in deployment.spec.devices:
        if d.cpus is not None and d.speed is None and d.profile is None:
            d = d.model_copy(update={"speed": round(d.cpus * per_core, 4)})
        if d.cpus is not None and message_cpu_s is not None and d.message_cost is None:
            d = d.model_copy(update={"message_cost": f"{message_cpu_s / d.cpus * 1e3:.4g}ms"})
        devices.append(d)
    return deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"devices": devices})})


def predict(plan: Plan, graph: LayerGraph, cluster_spec: ClusterSpec, base: Path | None = None) -> Predicted:
    """The planner's prediction for `plan` on this cluster (its reference evaluator)."""
    return evaluate(plan, graph, cluster_from_spec(cluster_spec, base_dir=base or Path.cwd()))


def plan_deployment(spec: DeploymentSpec, *, plan: Plan | None = None, base: Path | None = None,
                    graph: LayerGraph | None = None) -> Planned:
    """Plan `spec` on its inline devices with its solver (or check a given plan), with predicted costs.

    Relative paths (model file, weights, device profiles) resolve against `base` (default: the
    current directory).
    """
    base = base or Path.cwd()
    ref = model_ref(spec.model, base)
    graph = graph or load_graph(ref)
    cluster_spec = spec.cluster()
    if plan is not None:  # it must fit this model; the deployment's reference (weights, seed) is what runs
        check_plan(plan, graph)
        plan = make_plan(ref, plan.solver, plan.objective, plan.devices, plan.stages, None, plan.meta)
        return Planned(plan.with_predicted(predict(plan, graph, cluster_spec, base)), graph, "given")
    cluster = cluster_from_spec(cluster_spec, base_dir=base)
    result = solve(graph, ref, cluster, spec.objective, spec.solver, **spec.solver_options)
    requested = "" if spec.solver == result.solver else f" ({spec.solver})"
    return Planned(result, graph, f"solver {result.solver}{requested}")
