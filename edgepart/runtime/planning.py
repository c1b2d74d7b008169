"""Plan a DNNDeployment for the local runtime with the deployment's solver (default auto) and predict its costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, input_shape_of, load_graph
from edgepart.plan import ModelEntry, Plan, PlanError, Predicted, check_plan, rename_model
from edgepart.planner.cluster import cluster_from_spec
from edgepart.planner.codec_cost import WireSettings
from edgepart.planner.evaluate import evaluate
from edgepart.planner.registry import PlanningModel, solve_models
from edgepart.spec import ClusterSpec, DeploymentSpec, DNNDeployment, ModelSpec

__all__ = ["Planned", "model_ref", "plan_deployment", "planning_models", "predict", "with_cpu_speeds"]


@dataclass(frozen=True)
class Planned:
    plan: Plan
    graphs: dict[str, LayerGraph]  # by model id
    how: str  # "solver fused-dp", "builder ftp-grid", "given"

    @property
    def graph(self) -> LayerGraph:
        """The graph of a one-model deployment."""
        return self.graphs[self.plan.models[0].id]


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


def predict(plan: Plan, graphs: LayerGraph | dict[str, LayerGraph], cluster_spec: ClusterSpec,
            base: Path | None = None) -> Predicted:
    """The planner's prediction for `plan` on this cluster (the task-graph evaluator)."""
    return evaluate(plan, graphs, cluster_from_spec(cluster_spec, base_dir=base or Path.cwd()))


def planning_models(spec: DeploymentSpec, base: Path | None = None,
                    graphs: dict[str, LayerGraph] | None = None) -> list[PlanningModel]:
    """Every model of the deployment with its id, its reference (paths made absolute) and its graph."""
    result = []
    for model_id, model in spec.model_specs():
        ref = model_ref(model, base)
        graph = (graphs or {}).get(model_id) or load_graph(ref)
        result.append(PlanningModel(model_id, ref, graph))
    return result


def plan_deployment(spec: DeploymentSpec, *, plan: Plan | None = None, base: Path | None = None,
                    graph: LayerGraph | None = None) -> Planned:
    """Plan `spec` on its inline devices with its solver (or check a given plan), with predicted costs.

    Relative paths (model files, weights, device profiles) resolve against `base` (default: the
    current directory). `graph`: the already traced graph of a one-model deployment.
    """
    base = base or Path.cwd()
    known = {spec.model_specs()[0][0]: graph} if graph is not None else None
    models = planning_models(spec, base, known)
    graphs = {m.id: m.graph for m in models}
    cluster_spec = spec.cluster()
    if plan is not None:  # it must fit these models; the deployment's references (weights, seed) are what runs
        if len(plan.models) == 1 and len(models) == 1 and plan.models[0].id != models[0].id:
            plan = rename_model(plan, models[0].id)
        unknown = sorted(set(plan.model_ids) - set(graphs))
        if unknown or len(plan.models) != len(models):
            raise PlanError(f"the plan's models {list(plan.model_ids)} are not the deployment's "
                            f"{[m.id for m in models]}")
        check_plan(plan, graphs)
        entries = tuple(ModelEntry.of(m.id, m.ref, plan.model_entry(m.id).source) for m in models)
        plan = plan.replace(models=entries, predicted=None)
        return Planned(plan.with_predicted(predict(plan, graphs, cluster_spec, base)), graphs, "given")
    cluster = cluster_from_spec(cluster_spec, base_dir=base)
    wire = WireSettings(compression=spec.compression, wire_dtype=spec.wire_dtype)
    result = solve_models(models, cluster, spec.objective, spec.solver, wire=wire, **spec.solver_options)
    requested = "" if spec.solver == result.solver else f" ({spec.solver})"
    return Planned(result, graphs, f"solver {result.solver}{requested}")
