"""Several models at once: piece-wise DAG, multilevel k-way blocks, PSO-GA and memetic offloading.

Jin, Park, Lee (MobiHoc'22 poster; SOLVERS.md §6):

    pieces.py      the piece-wise DAG: K row pieces per unit, exact halos, bytes that really cross
    platform.py    devices that cost a region (profiled, or the authors' frequency table) and the network
    tasks.py       blocks -> tasks (stripes that recompute their halos) -> the cost graph
    schedule.py    the fitness: list-scheduled completion time of one request of every model
    multilevel.py  multilevel k-way partitioning with boundary FM refinement
    search.py      PSO-GA, the memetic algorithm, and the server + order PSO-GA (LO)
    heft.py        HEFT
    poster.py      the authors' device table and setup
    methods.py     LO, PO, MO and HEFT end to end
"""

from edgepart.planner.multimodel.heft import heft
from edgepart.planner.multimodel.methods import (
    METHODS,
    MethodResult,
    PieceSettings,
    Prepared,
    SearchSettings,
    Workload,
    prepare_blocks,
    prepare_units,
    run_method,
)
from edgepart.planner.multimodel.multilevel import (
    Partition,
    boundary_fm,
    cut,
    multilevel_kway,
    multilevel_per_model,
    weighted_graph,
)
from edgepart.planner.multimodel.pieces import Piece, PieceDAG, PieceEdge, piecewise_dag
from edgepart.planner.multimodel.platform import Network, Platform, ProfiledDevice, TableDevice
from edgepart.planner.multimodel.schedule import LinkModel, completion_times, makespans
from edgepart.planner.multimodel.search import (
    MEMETIC,
    PSO_GA,
    BlockProblem,
    PsoSettings,
    SearchResult,
    block_problem,
    memetic,
    pso_ga,
    pso_ga_server_order,
)
from edgepart.planner.multimodel.tasks import CostGraph, Task, TaskGraph, cost_graph, task_graph

__all__ = [
    "MEMETIC", "METHODS", "PSO_GA", "BlockProblem", "CostGraph", "LinkModel", "MethodResult", "Network",
    "Partition", "Piece", "PieceDAG", "PieceEdge", "PieceSettings", "Platform", "Prepared", "ProfiledDevice",
    "PsoSettings", "SearchResult", "SearchSettings", "TableDevice", "Task", "TaskGraph", "Workload",
    "block_problem", "boundary_fm", "completion_times", "cost_graph", "cut", "heft", "makespans", "memetic",
    "multilevel_kway", "multilevel_per_model", "piecewise_dag", "prepare_blocks", "prepare_units", "pso_ga",
    "pso_ga_server_order", "run_method", "task_graph", "weighted_graph",
]
