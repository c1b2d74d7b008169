"""NFL, no fused layers (the GLOBECOM'22 baseline): the whole model as one path with one cut.

T(o) = Σ_{u<o} t_end(u) + tx(cut o) + Σ_{u>=o} t_server(u) + tx(output back), over every unit cut o
(not only the fusable prefix); o = all units keeps everything on the end device and sends nothing over the
network (the output is a local message to the gateway there, `Cluster.local_s`).
One path meets no contention, so both compute models give the same time.
"""

from __future__ import annotations

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster
from edgepart.planner.offload.build import single_path_result
from edgepart.planner.offload.costs import OffloadProblem
from edgepart.planner.offload.result import OffloadResult
from edgepart.planner.offload.settings import OffloadSettings


def nfl_times(problem: OffloadProblem) -> list[tuple[float, float, float, float]]:
    """(makespan, local, uplink, server) seconds of every cut o = 0..units."""
    cluster = problem.cluster
    result = []
    for cut in range(problem.units + 1):
        local = float(sum(problem.end_unit_s[:cut]))
        if cut == problem.units:  # the output goes to the gateway, another process on the end device
            result.append((local + problem.end_return_s, local, 0.0, 0.0))
            continue
        uplink = cluster.tx(problem.end.name, problem.server.name, problem.cut_bytes(cut))
        server = float(sum(problem.server_unit_s[cut:]))
        result.append((local + uplink + server + problem.return_s, local, uplink, server))
    return result


def solve_nfl_problem(problem: OffloadProblem) -> OffloadResult:
    times = nfl_times(problem)
    best = min(range(len(times)), key=lambda o: (times[o][0], o))
    _, local, uplink, server = times[best]
    return single_path_result(problem, "nfl", problem.settings.compute_model, best, local, uplink, server)


def solve_nfl(graph: LayerGraph, cluster: Cluster, settings: OffloadSettings | None = None) -> OffloadResult:
    """The best single cut of the whole model between the end device and the server."""
    return solve_nfl_problem(OffloadProblem(graph, cluster, settings))
