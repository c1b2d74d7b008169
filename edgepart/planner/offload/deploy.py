"""The partial-offloading solvers as deployable solvers: an `OffloadResult` -> a plan v2 task graph.

`solve_offload(problem, solver, settings)` runs `mw`, `nfl` or `offload-bf` and
returns the plan the registry checks and costs. The tasks are `OffloadResult.tasks()`:

    p<i>-local   end device, layers [0, cut)    the path's local part (its tile's halo included)
    p<i>-server  server, layers [cut, τ)        the rest of the path, reading the cut activation
    fuse         server, layers [τ, L)          reads every path's tile (a relay when τ = L)

with priorities in the order S, and the plan's master (input holder, output sink)
is the end device. `meta.turns = "priority"` asks the runtime to make the tasks of
one device take turns in that order (`partition_service.turnstile`): the end device
computes its paths one after another and sends each cut activation as soon as it is
ready, the server serves the tiles in the same order, which is the `sequential`
compute model the evaluator charges too.

[R] Paths cut at unit 0 send the raw input tile, which the gateway (on the end
device) sends at once when a request arrives, as the evaluator does for every
read of the input. So such paths go first in the order S here (their relative
order kept) and the schedule is recomputed with that order; the `sequential`
makespan then is exactly what the evaluator predicts for the plan.
"""

from __future__ import annotations

from typing import Any

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.plan import (
    INPUT,
    ModelEntry,
    Objective,
    Plan,
    Task,
    TaskInput,
    make_task_plan,
    model_id_of,
)
from edgepart.planner.errors import PlanningError
from edgepart.planner.offload.bf import solve_bf_problem
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.costs import OffloadProblem
from edgepart.planner.offload.mw import solve_mw_problem
from edgepart.planner.offload.nfl import solve_nfl_problem
from edgepart.planner.offload.result import INPUT_SOURCE, OffloadResult
from edgepart.planner.offload.settings import OffloadSettings

TURNS = "priority"  # meta.turns: tasks of one device compute one at a time, in priority order
DEPLOYABLE = ("mw", "nfl", "offload-bf")


def raw_paths_first(problem: OffloadProblem, result: OffloadResult) -> OffloadResult:
    """The same strategy with the paths cut at unit 0 moved to the front of the order S (see the module
    docstring); `result` itself when they already are."""
    if not result.fused:
        return result
    order = [p.path for p in result.paths]
    raw = [p for p in order if result.cuts[p] == 0]
    reordered = raw + [p for p in order if result.cuts[p] != 0]
    if reordered == order:
        return result
    return fl_result(problem, result.solver, result.compute_model, result.tau, result.grid, reordered, result.cuts,
                     result.searched, result.skipped)


def run_solver(problem: OffloadProblem, solver: str) -> OffloadResult:
    if solver == "mw":
        result = solve_mw_problem(problem)
    elif solver == "nfl":
        result = solve_nfl_problem(problem)
    elif solver == "offload-bf":
        result = solve_bf_problem(problem)
    else:
        raise PlanningError(f"unknown offloading solver {solver!r}; choose one of {', '.join(DEPLOYABLE)}")
    return raw_paths_first(problem, result)


def _task_id(sketch_id: str) -> str:
    return sketch_id.rsplit("/", 1)[-1]  # "<model>/p3-local" -> "p3-local": ids are unique within one model


def offload_plan(result: OffloadResult, graph: LayerGraph, model: ModelRef, objective: Objective = "latency") -> Plan:
    """The plan v2 task graph of `result` (master: the end device)."""
    mid = model_id_of(model)
    tasks = []
    for sketch in result.tasks():
        inputs = tuple(TaskInput(source=INPUT if source == INPUT_SOURCE else _task_id(source), region=region)
                       for source, region in sketch.inputs)
        named = sketch.stop > sketch.start
        tasks.append(Task(id=_task_id(sketch.id), model=mid, device=sketch.device, start=sketch.start,
                          stop=sketch.stop, output=sketch.output, inputs=inputs, priority=sketch.priority,
                          first_layer=graph.layers[sketch.start].name if named else None,
                          last_layer=graph.layers[sketch.stop - 1].name if named else None))
    read = {i.source for t in tasks for i in t.inputs}
    outputs = [t.id for t in tasks if t.id not in read]
    meta: dict[str, Any] = {
        "turns": TURNS, "compute_model": result.compute_model, "end": result.end, "server": result.server,
        "tau": result.tau, "grid": list(result.grid), "order": list(result.order), "cuts": list(result.cuts),
        "schedule_makespan_s": result.makespan_s, "searched": result.searched, "skipped": result.skipped,
        "summary": result.describe(),
    }
    if result.note:
        meta["note"] = result.note
    devices = tuple(dict.fromkeys((result.end, result.server)))
    return make_task_plan(result.solver, objective, devices, result.end, (ModelEntry.of(mid, model),), tasks,
                          {mid: outputs}, None, meta)


def solve_offload(problem: OffloadProblem, model: ModelRef, solver: str, objective: Objective) -> Plan:
    """Run one of the deployable offloading solvers and return its task graph."""
    if objective != "latency":
        raise PlanningError(f"{solver}: partial offloading minimises one request's latency; use objective latency "
                            f"(got {objective!r})")
    return offload_plan(run_solver(problem, solver), problem.graph, model, objective)


def settings_from_options(solver: str, *, end: str | None, server: str | None, compute_model: str,
                          tau_max: int | None, grid_max: str, max_paths: int | None) -> OffloadSettings:
    """`OffloadSettings` from the registry's options; errors name the option."""
    try:
        rows, _, cols = grid_max.lower().partition("x")
        grid = (int(rows), int(cols or rows))
    except ValueError:
        raise PlanningError(f"{solver}: option grid_max={grid_max!r}: expected ROWSxCOLS (e.g. 32x32) or one "
                            "number for both") from None
    if compute_model not in ("paper", "sequential"):
        raise PlanningError(f"{solver}: option compute_model={compute_model!r}: must be paper or sequential")
    bf = solver == "offload-bf"
    return OffloadSettings(end=end, server=server, compute_model=compute_model,  # type: ignore[arg-type]
                           tau_max=tau_max, grid_max=grid,
                           max_paths=None if bf else max_paths,
                           bf_max_paths=(6 if max_paths is None else max_paths) if bf else 6)
