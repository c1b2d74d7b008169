"""Partial offloading to an edge server with fused-layer paths (Li et al., GLOBECOM'22; SOLVERS.md §5).

    settings.py  options (end device, server, compute model, τ and grid limits) and the device choice
    axes.py      vectorised B.1 back-propagation along one axis, for every strip at once
    costs.py     per-path per-cut costs (local compute, uplink, server compute) grouped into classes
    schedule.py  the two resource models (`paper`, `sequential`): step-by-step timeline and closed-form runs
    bounds.py    lower bounds on every grid's makespan, so the searches skip grids that cannot win
    mw.py        Minimizing Waiting, and the search over τ and grids the solvers share
    nfl.py       no fused layers: the best single cut of the whole model
    bf.py        the exact optimum over τ, grids of at most `bf_max_paths` paths, orders and cuts
    build.py     a chosen strategy -> `OffloadResult` (result.py), shaped for plan v2 tasks
"""

from edgepart.planner.offload.bf import solve_bf
from edgepart.planner.offload.costs import OffloadProblem, PathCosts
from edgepart.planner.offload.mw import solve_mw
from edgepart.planner.offload.nfl import solve_nfl
from edgepart.planner.offload.result import OffloadResult, PathPlan, TaskSketch
from edgepart.planner.offload.schedule import Timeline, timeline
from edgepart.planner.offload.settings import COMPUTE_MODELS, ComputeModel, OffloadSettings

SOLVERS = {"mw": solve_mw, "nfl": solve_nfl, "offload-bf": solve_bf}

__all__ = [
    "COMPUTE_MODELS", "SOLVERS", "ComputeModel", "OffloadProblem", "OffloadResult", "OffloadSettings", "PathCosts",
    "PathPlan", "TaskSketch", "Timeline", "solve_bf", "solve_mw", "solve_nfl", "timeline",
]
