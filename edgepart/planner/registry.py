"""One entry point for every solver: `solve(graph, model, cluster, objective, solver, **options) -> Plan`.

A solver is a function `(problem, objective, *, option=default, ...) -> Plan`
(a task graph; the chain solvers may return a `StagedPlan`, which `finalize`
turns into one) registered under a name with `@register`. Its keyword-only parameters are its
options: `solve` rejects unknown ones by name, and `parse_options` turns the
CLI's `key=value` strings into the annotated types. Later solvers (partial
offloading, multi-model, MS-MDI, accuracy-aware; SOLVERS.md §5-§8) register
the same way.

Every plan `solve` returns has passed `check_plan` (geometry) and the memory
check, and carries `predicted` from the task-graph evaluator.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.plan import (
    Objective,
    Plan,
    PlanError,
    StagedPlan,
    check_plan,
    check_stages,
    make_plan,
    merge_plans,
    model_id_of,
    rename_model,
)
from edgepart.planner.brute_force import solve_brute_force
from edgepart.planner.builders import (
    PlanBuildError,
    build_ftp_grid,
    build_layerwise,
    build_single,
    parse_grid,
)
from edgepart.planner.cluster import Cluster
from edgepart.planner.codec_cost import WireSettings, choose_wire
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import check_memory, evaluate
from edgepart.planner.fused_dp import solve_fused_dp
from edgepart.planner.multimodel.joint import JointModel, JointSettings, plan_jointly
from edgepart.planner.multimodel.methods import Method
from edgepart.planner.offload.costs import OffloadProblem
from edgepart.planner.offload.deploy import settings_from_options, solve_offload
from edgepart.planner.pipeline_dp import solve_pipeline_dp
from edgepart.planner.problem import Problem
from edgepart.planner.stage_costs import check_staged_memory, evaluate_staged

SolverFn = Callable[..., Plan | StagedPlan]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput")


@dataclass(frozen=True)
class SolverInfo:
    name: str
    fn: SolverFn
    summary: str
    options: dict[str, tuple[Any, Any]]  # name -> (type, default)
    joint: bool = False  # receives every model of a deployment at once: fn(models, cluster, objective, **options)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v[1]!r}" for k, v in self.options.items())
        return f"{self.summary}" + (f" Options: {opts}." if opts else "")


SOLVERS: dict[str, SolverInfo] = {}


def _options_of(fn: SolverFn) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(fn)
    result = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            result[name] = (hints.get(name, Any), param.default)
    return result


def register(name: str, summary: str, joint: bool = False) -> Callable[[SolverFn], SolverFn]:
    """Register `fn(problem, objective, *, options...) -> Plan` as solver `name` (`joint`:
    `fn(models, cluster, objective, *, options...) -> Plan`, every model of a deployment at once)."""
    def decorate(fn: SolverFn) -> SolverFn:
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = SolverInfo(name, fn, summary, _options_of(fn), joint)
        return fn
    return decorate


def solver_help() -> str:
    return "; ".join(f"{name}: {info.summary}" for name, info in SOLVERS.items())


# ------------------------------------------------------------------ option parsing


def _coerce(solver: str, key: str, kind: Any, text: str) -> Any:
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = next((a for a in args if a is not type(None)), kind) if args else kind
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise PlanningError(f"{solver}: option {key}={text!r} is not a valid {getattr(base, '__name__', base)}") \
            from None
    return text


def parse_options(solver: str, items: Sequence[str]) -> dict[str, Any]:
    """`["max_fused=4", "device_sets=subsets"]` -> typed options for `solver`."""
    info = _info(solver)
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = _snake(key.strip())
        if not sep or not key:
            raise PlanningError(f"{solver}: option {item!r} must look like key=value")
        if key not in info.options:
            raise PlanningError(_unknown_option(info, key))
        result[key] = _coerce(solver, key, info.options[key][0], value.strip())
    return result


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower().replace("-", "_")


def _info(solver: str) -> SolverInfo:
    info = SOLVERS.get(solver)
    if info is None:
        raise PlanningError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return info


def _unknown_option(info: SolverInfo, key: str) -> str:
    accepted = ", ".join(info.options) or "none"
    return f"{info.name}: unknown option {key!r} (accepted: {accepted})"


# ------------------------------------------------------------------ entry point


def finalize(result: Plan | StagedPlan, graph: LayerGraph, cluster: Cluster) -> Plan:
    """The task graph of a solver's result, checked (geometry, memory) and costed by the evaluator."""
    try:
        if isinstance(result, StagedPlan):
            check_stages(result, graph)
            result = result.to_plan(master=cluster.master)
        check_plan(result, graph)
    except PlanError as err:
        raise PlanningError(f"{result.solver} produced an invalid plan: {err}") from None
    check_memory(result, graph, cluster)
    meta = {**result.meta, "master": cluster.master, "medium": cluster.medium}
    return result.replace(predicted=evaluate(result, graph, cluster), meta=meta)


def with_wire(plan: Plan, graphs: LayerGraph | Mapping[str, LayerGraph], cluster: Cluster,
              wire: WireSettings | None) -> Plan:
    """The plan with a codec and wire dtype chosen per link (`codec_cost.choose_wire`), costed again."""
    if wire is None or (wire.compression == "off" and wire.wire_dtype == "float32"):
        return plan
    by_model = {plan.models[0].id: graphs} if isinstance(graphs, LayerGraph) else graphs
    chosen = choose_wire(plan, by_model, cluster, wire)
    return chosen.replace(predicted=evaluate(chosen, graphs, cluster),
                          meta={**plan.meta, "compression": wire.compression, "wireDtype": wire.wire_dtype})


def solve(graph: LayerGraph, model: ModelRef, cluster: Cluster, objective: Objective = "latency",
          solver: str = "auto", *, wire: WireSettings | None = None, **options: Any) -> Plan:
    """Plan `graph` on `cluster` with a registered solver; the plan is checked and carries `predicted`.

    `wire`: codecs the planner may choose per link and the element type on the wire (default: raw float32).
    """
    info = _info(solver)
    options = _typed_options(info, objective, options)
    if info.joint:
        return solve_models([PlanningModel(model_id_of(model), model, graph)], cluster, objective, solver,
                            wire=wire, **options)
    problem = Problem(graph, cluster, model)
    try:
        plan = info.fn(problem, objective, **options)
    except PlanBuildError as err:
        raise PlanningError(f"{solver}: {err}") from None
    return with_wire(finalize(plan, graph, cluster), graph, cluster, wire)


@dataclass(frozen=True)
class PlanningModel:
    """One model of a deployment: its id in the plan, its reference and its layer graph."""

    id: str
    ref: ModelRef
    graph: LayerGraph


def solve_models(models: Sequence[PlanningModel], cluster: Cluster, objective: Objective = "latency",
                 solver: str = "auto", *, wire: WireSettings | None = None, **options: Any) -> Plan:
    """Plan several models on one cluster. Each model is planned by `solver` on the whole cluster and the
    plans are merged into one task graph, which the evaluator costs with their contention for devices and
    links (a model's latency is its request's, with one request of every model issued together)."""
    if not models:
        raise PlanningError("no model to plan")
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise PlanningError(f"model ids must be unique, got {ids}")
    info = _info(solver)
    if info.joint:
        merged = _solve_joint(info, models, cluster, objective, options)
    else:
        plans = [rename_model(solve(m.graph, m.ref, cluster, objective, solver, wire=wire, **options), m.id)
                 for m in models]
        if len(plans) == 1:
            return plans[0]
        merged = merge_plans(plans, plans[0].solver, objective, cluster.master,
                             {"medium": cluster.medium, "planned": "each model on its own, merged"})
    graphs = {m.id: m.graph for m in models}
    try:
        check_plan(merged, graphs)
    except PlanError as err:
        raise PlanningError(f"{solver} produced an invalid plan: {err}") from None
    check_memory(merged, graphs, cluster)
    return with_wire(merged.replace(predicted=evaluate(merged, graphs, cluster)), graphs, cluster, wire)


def _typed_options(info: SolverInfo, objective: Objective, options: dict[str, Any]) -> dict[str, Any]:
    if objective not in OBJECTIVES:
        raise PlanningError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    solver = info.name
    typed: dict[str, Any] = {}
    for key, value in options.items():
        name = _snake(key)  # YAML documents spell options in camelCase
        if name not in info.options:
            raise PlanningError(_unknown_option(info, key))
        kind = info.options[name][0]
        typed[name] = _coerce(solver, name, kind, value) if isinstance(value, str) else value
    return typed


# ------------------------------------------------------------------ the solvers


def _devices(problem: Problem, devices: int | None) -> list[str]:
    names = list(problem.names)
    master = problem.master  # first: it holds the input, and builders put unsplit units on the first device
    ordered = [master, *(n for n in names if n != master)]
    if devices is None:
        return ordered
    if not 1 <= devices <= len(names):
        raise PlanningError(f"devices={devices}: the cluster has {len(names)} devices")
    return ordered[:devices]


@register("single", "the whole model on one device (the fastest by predicted latency, or device=NAME).")
def _single(problem: Problem, objective: Objective, *, device: str | None = None) -> StagedPlan:
    graph, cluster = problem.graph, problem.cluster
    if device is not None:
        cluster.device(device)
        return build_single(graph, problem.model, [device], objective)
    best: tuple[float, StagedPlan] | None = None
    for name in problem.names:
        try:
            check_staged_memory(plan := build_single(graph, problem.model, [name], objective), graph, cluster)
        except PlanningError:
            continue
        latency = evaluate_staged(plan, graph, cluster).latency_s
        if best is None or latency < best[0]:
            best = (latency, plan)
    if best is None:
        raise PlanningError("single: the model fits on no single device's memory; try fused-dp or pipeline-dp")
    return best[1]


@register("layerwise", "every unit split across the devices, equal shares (HotEdge's layer-wise baseline).")
def _layerwise(problem: Problem, objective: Objective, *, split: str = "auto",
               devices: int | None = None) -> StagedPlan:
    return build_layerwise(problem.graph, problem.model, _devices(problem, devices), split, objective)


def _near_square(n: int) -> tuple[int, int]:
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return n // rows, rows


@register("ftp-grid", "DeepThings' fused tile grid over the first F units, the rest on the master.")
def _ftp_grid(problem: Problem, objective: Objective, *, grid: str | list[int] = "auto",
              fused_layers: int | None = None, devices: int | None = None) -> StagedPlan:
    names = _devices(problem, devices)
    if isinstance(grid, str):
        shape = _near_square(len(names)) if grid == "auto" else parse_grid(grid)
    else:
        if len(grid) != 2:
            raise PlanningError(f"ftp-grid: grid must be ROWSxCOLS or [rows, cols], got {grid!r}")
        shape = (int(grid[0]), int(grid[1]))
    return build_ftp_grid(problem.graph, problem.model, names, shape, fused_layers, objective)


@register("fused-dp", "HotEdge/AOFL search over single / layer-wise / fused segments (minimises latency).")
def _fused_dp(problem: Problem, objective: Objective, *, device_sets: str = "prefix", max_fused: int | None = None,
              layerwise: bool = True) -> StagedPlan:
    return solve_fused_dp(problem, objective, device_sets=device_sets, max_fused=max_fused, layerwise=layerwise)


@register("pipeline-dp", "PipeEdge's bottleneck DP: contiguous stages on distinct devices (maximises throughput).")
def _pipeline_dp(problem: Problem, objective: Objective, *, max_states: int = 2_000_000) -> StagedPlan:
    return solve_pipeline_dp(problem, objective, max_states=max_states)


@register("brute-force", "exhaustive search of fused-dp's (space=fused) or pipeline-dp's (space=pipeline) "
                         "space; small instances only.")
def _brute_force(problem: Problem, objective: Objective, *, space: str | None = None, device_sets: str = "prefix",
                 max_fused: int | None = None, layerwise: bool = True, max_plans: int = 200_000) -> StagedPlan:
    return solve_brute_force(problem, objective, space=space, device_sets=device_sets, max_fused=max_fused,
                             layerwise=layerwise, max_plans=max_plans)


@register("auto", "fused-dp for latency; for throughput the better of pipeline-dp and fused-dp.")
def _auto(problem: Problem, objective: Objective) -> StagedPlan:
    sets = "subsets" if len(problem.names) <= 4 else "prefix"
    fused = solve_fused_dp(problem, objective, device_sets=sets)
    if objective == "latency":
        return _tag(fused)
    candidates = [fused]
    with contextlib.suppress(PlanningError):  # too many device kinds, or no pipeline fits: fused-dp stands
        candidates.append(solve_pipeline_dp(problem, objective))
    graph, cluster = problem.graph, problem.cluster
    scored = []
    for plan in candidates:
        try:
            check_staged_memory(plan, graph, cluster)
        except PlanningError:
            continue
        result = evaluate_staged(plan, graph, cluster)
        scored.append(((-result.throughput_per_s, result.latency_s), plan))
    if not scored:
        check_staged_memory(fused, graph, cluster)  # raises with the devices at fault
    return _tag(min(scored, key=lambda item: item[0])[1])


def _tag(plan: StagedPlan) -> StagedPlan:
    return make_plan(plan.model, plan.solver, plan.objective, plan.devices, plan.stages, plan.predicted,
                     {**plan.meta, "requested": "auto"})


# ------------------------------------------------------------------ joint solvers: every model at once


def _solve_joint(info: SolverInfo, models: Sequence[PlanningModel], cluster: Cluster, objective: Objective,
                 options: dict[str, Any]) -> Plan:
    options = _typed_options(info, objective, options)
    if objective != "latency":
        raise PlanningError(f"{info.name}: objective {objective!r} is not supported; it minimises the completion "
                            "time of one request of every model (objective: latency)")
    try:
        plan = info.fn([JointModel(m.id, m.ref, m.graph) for m in models], cluster, objective, **options)
    except PlanError as err:
        raise PlanningError(f"{info.name} produced an invalid plan: {err}") from None
    if not isinstance(plan, Plan):
        raise PlanningError(f"{info.name} returned stages; a joint solver returns a task graph")
    return plan


def _joint_settings(method: Method, k: int, blocks_per_model: int, seed: int, iterations: int | None,
                    links: str) -> JointSettings:
    if links not in ("free", "fifo"):
        raise PlanningError(f"option links must be free or fifo, got {links!r}")
    return JointSettings(method, K=k, blocks_per_model=blocks_per_model, seed=seed, iterations=iterations,
                         links="free" if links == "free" else "fifo")


_JOINT = " (several models at once: the completion time of one request of every model)"


@register("mgp-memetic", "K row pieces per unit, multilevel k-way blocks, memetic search over the blocks' devices "
                         "(Jin et al. MO)" + _JOINT, joint=True)
def _mgp_memetic(models: Sequence[JointModel], cluster: Cluster, objective: Objective, *, k: int = 3,
                 blocks_per_model: int = 3, seed: int = 0, iterations: int | None = None,
                 links: str = "fifo") -> Plan:
    return plan_jointly(models, cluster, "mgp-memetic",
                        _joint_settings("MO", k, blocks_per_model, seed, iterations, links))


@register("mgp-pso", "the same blocks, PSO-GA without local search (Jin et al. PO)" + _JOINT, joint=True)
def _mgp_pso(models: Sequence[JointModel], cluster: Cluster, objective: Objective, *, k: int = 3,
             blocks_per_model: int = 3, seed: int = 0, iterations: int | None = None, links: str = "fifo") -> Plan:
    return plan_jointly(models, cluster, "mgp-pso", _joint_settings("PO", k, blocks_per_model, seed, iterations, links))


@register("lo-pso", "whole units, PSO-GA over a device and a priority per unit (Jin et al. LO)" + _JOINT, joint=True)
def _lo_pso(models: Sequence[JointModel], cluster: Cluster, objective: Objective, *, seed: int = 0,
            iterations: int | None = None, links: str = "fifo") -> Plan:
    return plan_jointly(models, cluster, "lo-pso", _joint_settings("LO", 1, 1, seed, iterations, links))


@register("heft", "K row pieces per unit, each placed by HEFT" + _JOINT, joint=True)
def _heft(models: Sequence[JointModel], cluster: Cluster, objective: Objective, *, k: int = 3,
          links: str = "fifo") -> Plan:
    return plan_jointly(models, cluster, "heft", _joint_settings("HEFT", k, 1, 0, None, links))


# ------------------------------------------------------------------ partial offloading (SOLVERS.md §5)


def _offload(solver: str, problem: Problem, objective: Objective, end: str | None, server: str | None,
             compute_model: str, tau_max: int | None, grid_max: str, max_paths: int | None) -> Plan:
    settings = settings_from_options(solver, end=end, server=server, compute_model=compute_model, tau_max=tau_max,
                                     grid_max=grid_max, max_paths=max_paths)
    return solve_offload(OffloadProblem(problem.graph, problem.cluster, settings), problem.model, solver, objective)


@register("mw", "partial offloading (Li et al. GLOBECOM'22): fused-layer paths from the end device (role end, or "
                "end=NAME) to one edge server (role edge-server, or server=NAME), each cut at its own layer, "
                "scheduled by Minimizing Waiting over every path length tau and grid.")
def _mw(problem: Problem, objective: Objective, *, end: str | None = None, server: str | None = None,
        compute_model: str = "sequential", tau_max: int | None = None, grid_max: str = "32x32",
        max_paths: int | None = None) -> Plan:
    return _offload("mw", problem, objective, end, server, compute_model, tau_max, grid_max, max_paths)


@register("nfl", "partial offloading without fused layers: the best single cut of the whole model between the end "
                 "device and the edge server.")
def _nfl(problem: Problem, objective: Objective, *, end: str | None = None, server: str | None = None,
         compute_model: str = "sequential") -> Plan:
    return _offload("nfl", problem, objective, end, server, compute_model, None, "32x32", None)


@register("offload-bf", "partial offloading, exact optimum over every tau, grid of at most max_paths (6) paths, "
                        "order and cut vector; small instances only.")
def _offload_bf(problem: Problem, objective: Objective, *, end: str | None = None, server: str | None = None,
                compute_model: str = "sequential", tau_max: int | None = None, grid_max: str = "32x32",
                max_paths: int | None = None) -> Plan:
    return _offload("offload-bf", problem, objective, end, server, compute_model, tau_max, grid_max, max_paths)
