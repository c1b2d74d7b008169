"""Turn a chosen FL strategy (τ, grid, order, cuts) into an `OffloadResult` with its step-by-step timeline."""

from __future__ import annotations

from collections.abc import Sequence

from edgepart.geometry import Region
from edgepart.planner.offload.costs import OffloadProblem
from edgepart.planner.offload.result import OffloadResult, PathPlan
from edgepart.planner.offload.schedule import timeline
from edgepart.planner.offload.settings import ComputeModel


def fl_result(problem: OffloadProblem, solver: str, model: ComputeModel, tau: int, grid: tuple[int, int],
              order: Sequence[int], cuts: Sequence[int], searched: int = 0, skipped: int = 0) -> OffloadResult:
    prefix = problem.prefix(tau)
    costs = prefix.grid_costs(grid)
    times = timeline(costs, order, cuts, model)
    bounds = problem.bounds
    paths = tuple(PathPlan(t.path, t.cut, bounds[t.cut], prefix.tile(grid, t.path),
                           prefix.cut_region(grid, t.path, t.cut), prefix.cut_region(grid, t.path, 0),
                           t.local, t.uplink, t.server, t.ready) for t in times.paths)
    graph = problem.graph
    return OffloadResult(solver, model, graph.model_name, problem.end.name, problem.server.name, tau, bounds[tau],
                         len(graph), graph.output_shape, grid, tuple(order), tuple(cuts), times.makespan_s, paths,
                         times.fuse, times.back, searched, skipped)


def single_path_result(problem: OffloadProblem, solver: str, model: ComputeModel, cut: int,
                       local_s: float, uplink_s: float, server_s: float) -> OffloadResult:
    """NFL's plan: units [0, cut) on the end device, the rest on the server, the output sent back."""
    graph = problem.graph
    bounds = problem.bounds
    units = problem.units
    full_input = Region.full(graph.shape_at(0))
    cut_region = Region.full(graph.shape_at(bounds[cut]))
    output = Region.full(graph.output_shape)
    local = (0.0, local_s) if cut > 0 else None
    if cut == units:  # wholly on the end device: nothing crosses the network; a local message to the gateway
        path = PathPlan(0, cut, bounds[cut], output, output, full_input, local, (local_s, local_s), None, local_s)
        back = None
        makespan = local_s + problem.end_return_s
    else:
        sent = local_s + uplink_s
        done = sent + server_s
        makespan = done + problem.return_s
        path = PathPlan(0, cut, bounds[cut], output, cut_region, full_input, local, (local_s, sent), (sent, done),
                        makespan)
        back = (done, makespan)
    return OffloadResult(solver, model, graph.model_name, problem.end.name, problem.server.name, units,
                         len(graph), len(graph), graph.output_shape, (1, 1), (0,), (cut,), makespan, (path,), None,
                         back, units + 1, 0)
