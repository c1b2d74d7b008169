"""The poster's methods end to end, on one workload (models requested together on a platform).

- LO: the layer-level DAG (every unit whole, its own task), PSO-GA with the
  server + order encoding;
- PO: the piece-wise DAG, multilevel k-way blocks, PSO-GA over the blocks;
- MO: the same blocks, the memetic algorithm;
- HEFT: the piece-wise DAG, every piece placed on its own by HEFT.

Every result is evaluated under both link models, whichever one the search
optimised.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.heft import heft
from edgepart.planner.multimodel.multilevel import Partition, multilevel_kway, multilevel_per_model
from edgepart.planner.multimodel.pieces import PieceDAG, piecewise_dag
from edgepart.planner.multimodel.platform import Platform, mean_transfer
from edgepart.planner.multimodel.schedule import LINK_MODELS, LinkModel, makespans
from edgepart.planner.multimodel.search import (
    MEMETIC,
    PSO_GA,
    PsoSettings,
    SearchResult,
    block_problem,
    pso_ga,
    pso_ga_server_order,
)
from edgepart.planner.multimodel.tasks import CostGraph, TaskGraph, cost_graph, task_graph

Method = Literal["LO", "PO", "MO", "HEFT"]
METHODS: tuple[Method, ...] = ("LO", "PO", "MO", "HEFT")


@dataclass(frozen=True, eq=False)
class Workload:
    models: tuple[LayerGraph, ...]
    platform: Platform
    sources: tuple[int, ...]  # network endpoint holding each model's input


@dataclass(frozen=True)
class PieceSettings:
    K: int = 3
    split_fc: bool = False
    blocks_per_model: int = 3  # [C mgp.py] k, each model partitioned on its own; 0: k for all models together
    blocks: int = 0  # k for all models together (when blocks_per_model is 0)
    eps: float = 0.1
    same_piece: bool = True
    refine: bool = True
    fuse: bool = True  # stripes recompute their halos (False: every piece its own task)
    return_outputs: bool = False  # outputs travel back to each model's source


@dataclass(frozen=True)
class SearchSettings:
    links: LinkModel = "free"  # the link model the searches optimise
    pso: PsoSettings = PSO_GA
    memetic: PsoSettings = MEMETIC


@dataclass(frozen=True, eq=False)
class Prepared:
    dag: PieceDAG
    partition: Partition | None
    tasks: TaskGraph
    cost: CostGraph
    seconds: float  # building the DAG, the blocks and the cost graph


@dataclass(frozen=True)
class MethodResult:
    method: Method
    fitness: dict[str, float]  # F under each link model
    history: tuple[float, ...]
    seconds: float  # the search (plus preparation when `include_preparation`)
    evaluations: int
    task_devices: tuple[int, ...]
    priority: tuple[int, ...] | None = None  # LO: its priority per task (lower first); others: the cost graph's order


def piece_seconds(dag: PieceDAG, platform: Platform) -> np.ndarray:
    """(pieces, devices) compute seconds of every piece."""
    return np.array([[d.seconds(dag.models[p.model], p.geometry) for d in platform.devices]
                     for p in dag.pieces]).reshape(len(dag), len(platform.devices))


def prepare_blocks(workload: Workload, settings: PieceSettings = PieceSettings()) -> Prepared:
    """PO and MO: pieces, multilevel k-way blocks (mean compute and transfer weights), tasks, costs."""
    started = time.perf_counter()
    dag = piecewise_dag(workload.models, settings.K, settings.split_fc)
    node_s = piece_seconds(dag, workload.platform).mean(axis=1)
    edge_s = mean_transfer(workload.platform.network, len(workload.platform.devices),
                           np.array([e.nbytes for e in dag.edges], dtype=float))
    if settings.blocks_per_model > 0:
        partition = multilevel_per_model(dag, settings.blocks_per_model, settings.eps, settings.same_piece,
                                         settings.refine, node_s, edge_s)
    elif settings.blocks > 0:
        partition = multilevel_kway(dag, settings.blocks, settings.eps, settings.same_piece, settings.refine,
                                    node_s, edge_s)
    else:
        raise PlanningError("piece settings: set blocks_per_model or blocks to a positive k")
    tasks = task_graph(dag, partition.labels, settings.fuse)
    cost = cost_graph(tasks, workload.platform, workload.sources, settings.return_outputs)
    return Prepared(dag, partition, tasks, cost, time.perf_counter() - started)


def prepare_units(workload: Workload, K: int, return_outputs: bool = False) -> Prepared:  # noqa: N803
    """Every piece its own block and task: the layer-level DAG (K = 1, for LO) or HEFT's pieces."""
    started = time.perf_counter()
    dag = piecewise_dag(workload.models, K)
    tasks = task_graph(dag, list(range(len(dag))), fuse=False)
    cost = cost_graph(tasks, workload.platform, workload.sources, return_outputs)
    return Prepared(dag, None, tasks, cost, time.perf_counter() - started)


def evaluate_all(cost: CostGraph, task_devices: Sequence[int],
                 priority: Sequence[int] | None = None) -> dict[str, float]:
    devices = np.array([task_devices])
    order = None if priority is None else np.array([priority])
    return {links: float(makespans(cost, devices, links, order)[0]) for links in LINK_MODELS}


def run_method(method: Method, prepared: Prepared, seed: int = 0,
               settings: SearchSettings = SearchSettings()) -> MethodResult:
    """Run one method on a prepared workload (LO: `prepare_units(K=1)`; HEFT: `prepare_units(K)`)."""
    cost = prepared.cost
    started = time.perf_counter()
    result: SearchResult
    if method == "LO":
        result = pso_ga_server_order(cost, settings.links, settings.pso, seed)
        task_devices = result.assignment
    elif method in ("PO", "MO"):
        chosen = settings.pso if method == "PO" else settings.memetic
        if method == "MO" and not chosen.memetic:
            raise PlanningError("MO needs memetic settings (memetic=True)")
        result = pso_ga(block_problem(cost, settings.links), chosen, seed)
        task_devices = tuple(int(d) for d in cost.task_devices(np.array(result.assignment)))
    elif method == "HEFT":
        task_devices = heft(cost)
        value = float(makespans(cost, np.array([task_devices]), settings.links)[0])
        result = SearchResult(task_devices, value, (value,), 1)
    else:
        raise PlanningError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    seconds = time.perf_counter() - started
    return MethodResult(method, evaluate_all(cost, task_devices, result.priority), result.history, seconds,
                        result.evaluations, task_devices, result.priority)
