"""The multi-model searches as deployable solvers: several models in, one v2 plan out.

A *joint* solver receives every model of a deployment at once (the chain
solvers plan model by model). It runs one of the poster's methods on the
cluster's profiled devices and links (`Platform.of_cluster`), every model's
input held by, and its output returned to, the cluster's master:

- MO (`mgp-memetic`) and PO (`mgp-pso`): K row pieces per unit, multilevel
  k-way blocks per model, the memetic algorithm or PSO-GA over the blocks;
- LO (`lo-pso`): whole units, PSO-GA over a device and a priority per unit;
- HEFT (`heft`): every piece its own task, placed by HEFT.

The search's tasks become the plan's tasks on their devices: a task computes
its stripe's output region and reads, from each producer task, the part of the
producer's output its input region needs (the model input for the first
stripe); the list schedule's priorities (position in the schedule's order)
become the tasks' priorities, and the plan lists its tasks in that order (the
evaluator and the data plane issue inputs and sends in plan order). Where
every piece of a stripe went to one device, they become one task computing
the whole stripe (its input read once, no halo recomputed), which the
evaluator then costs lower than the search did. The objective is the completion time of one
request of every model issued together; the search scores candidates with the
batched list schedule (`schedule.makespans`, links `free` or `fifo`) and the
registry costs the chosen plan with the task-graph evaluator, like every
solver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgepart.geometry import Region, backprop, hull_all
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.plan import INPUT, ModelEntry, Plan, Task, TaskInput, make_task_plan
from edgepart.planner.cluster import Cluster
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.methods import (
    Method,
    PieceSettings,
    Prepared,
    SearchSettings,
    Workload,
    prepare_blocks,
    prepare_units,
    run_method,
)
from edgepart.planner.multimodel.platform import Platform
from edgepart.planner.multimodel.schedule import LINK_MODELS, LinkModel
from edgepart.planner.multimodel.search import MEMETIC, PSO_GA
from edgepart.planner.multimodel.tasks import TaskGraph


@dataclass(frozen=True)
class JointModel:
    """One model of the deployment: its id in the plan, its reference and its layer graph."""

    id: str
    ref: ModelRef
    graph: LayerGraph


@dataclass(frozen=True)
class JointSettings:
    method: Method
    K: int = 3  # row pieces per unit (MO, PO, HEFT)
    blocks_per_model: int = 3  # multilevel k-way blocks of each model (MO, PO)
    seed: int = 0
    iterations: int | None = None  # at most this many search iterations (None: the method's default)
    particles: int | None = None  # swarm size (None: the method's default, 50)
    links: LinkModel = "fifo"  # what the search charges links: free, or FIFO NICs (as the evaluator)

    def __post_init__(self) -> None:
        if self.K < 1:
            raise PlanningError(f"K: pieces per unit must be >= 1, got {self.K}")
        if self.blocks_per_model < 1:
            raise PlanningError(f"blocks_per_model: must be >= 1, got {self.blocks_per_model}")
        if self.iterations is not None and self.iterations < 0:
            raise PlanningError(f"iterations: must be >= 0, got {self.iterations}")
        if self.particles is not None and self.particles < 1:
            raise PlanningError(f"particles: must be >= 1, got {self.particles}")
        if self.links not in LINK_MODELS:
            raise PlanningError(f"links: must be one of {', '.join(LINK_MODELS)}, got {self.links!r}")


def prepare(models: Sequence[JointModel], cluster: Cluster, settings: JointSettings) -> Prepared:
    """The method's tasks and cost graph on `cluster`, every model's input and output at the master."""
    if not models:
        raise PlanningError("no model to plan")
    master = cluster.names.index(cluster.master)
    workload = Workload(tuple(m.graph for m in models), Platform.of_cluster(cluster), (master,) * len(models))
    if settings.method in ("MO", "PO"):
        pieces = PieceSettings(K=settings.K, blocks_per_model=settings.blocks_per_model, return_outputs=True)
        return prepare_blocks(workload, pieces)
    if settings.method == "LO":
        return prepare_units(workload, K=1, return_outputs=True)
    return prepare_units(workload, K=settings.K, return_outputs=True)


def search_settings(settings: JointSettings) -> SearchSettings:
    pso, memetic = PSO_GA, MEMETIC
    if settings.iterations is not None:
        pso, memetic = replace(pso, iterations=settings.iterations), replace(memetic, iterations=settings.iterations)
    if settings.particles is not None:
        pso, memetic = replace(pso, particles=settings.particles), replace(memetic, particles=settings.particles)
    return SearchSettings(links=settings.links, pso=pso, memetic=memetic)


@dataclass(frozen=True)
class Stripe:
    """One task of the plan: units [first_unit, stop_unit) of a model, one piece (None: all its pieces)."""

    model: int
    first_unit: int
    stop_unit: int
    start: int
    stop: int
    piece: int | None
    output: Region
    device: str
    priority: int


def stripes(tasks: TaskGraph, devices: Sequence[str], priority: Sequence[int]) -> list[Stripe]:
    """The search's tasks on their devices; the pieces of one stripe that all went to one device become one
    task (its whole output: the input is read once and no halo is recomputed)."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for t in tasks.tasks:
        groups.setdefault((t.model, t.first_unit, t.stop_unit), []).append(t.index)
    result = []
    for (model, first, stop_unit), members in groups.items():
        head = tasks.tasks[members[0]]
        merge = len(members) > 1 and len({devices[i] for i in members}) == 1
        parts = [members] if merge else [[i] for i in members]
        for part in parts:
            output = hull_all(tasks.tasks[i].output for i in part)
            piece = None if merge else tasks.tasks[part[0]].piece
            result.append(Stripe(model, first, stop_unit, head.start, head.stop, piece, output,
                                 devices[part[0]], min(int(priority[i]) for i in part)))
    return result


def plan_tasks(models: Sequence[JointModel], parts: Sequence[Stripe]) -> tuple[list[Task], dict[str, list[str]]]:
    """The plan's tasks, in priority order: each reads, from every task of its model ending where it starts,
    what it needs of that task's output (the model input for the first stripes); and each model's outputs."""
    ordered = sorted(parts, key=lambda p: p.priority)
    ids = [_task_id(models[p.model].id, p.first_unit, p.stop_unit, p.piece) for p in ordered]
    result: list[Task] = []
    outputs: dict[str, list[str]] = {m.id: [] for m in models}
    for rank, (part, tid) in enumerate(zip(ordered, ids, strict=True)):
        model = models[part.model]
        graph = model.graph
        need = backprop(graph, part.start, part.stop, part.output).input_region
        producers = [(ids[k], other) for k, other in enumerate(ordered)
                     if other.model == part.model and other.stop == part.start and part.start > 0]
        inputs = [TaskInput(source=INPUT, region=need)] if part.start == 0 else []
        inputs += [TaskInput(source=pid, region=overlap) for pid, other in producers
                   if not (overlap := other.output.intersect(need)).empty]
        if not inputs:  # a stripe that lies wholly in padding still waits for its producers
            inputs = [TaskInput(source=producers[0][0], region=need.intersect(producers[0][1].output))]
        result.append(Task(id=tid, model=model.id, device=part.device, start=part.start, stop=part.stop,
                           output=part.output, inputs=tuple(inputs), first_layer=graph.layers[part.start].name,
                           last_layer=graph.layers[part.stop - 1].name, priority=rank))
        if part.stop == len(graph):
            outputs[model.id].append(tid)
    return result, outputs


def _task_id(model_id: str, first_unit: int, stop_unit: int, piece: int | None) -> str:
    return f"{model_id}.u{first_unit}-{stop_unit}" + ("" if piece is None else f".p{piece}")


def plan_jointly(models: Sequence[JointModel], cluster: Cluster, solver: str,
                 settings: JointSettings) -> Plan:
    """Plan `models` together on `cluster` with `settings.method`; `predicted` is left to the evaluator."""
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise PlanningError(f"model ids must be unique, got {ids}")
    prepared = prepare(models, cluster, settings)
    result = run_method(settings.method, prepared, settings.seed, search_settings(settings))
    cost = prepared.cost
    if result.priority is not None:  # LO: its own priority per task
        priority = np.argsort(np.argsort(np.asarray(result.priority), kind="stable"), kind="stable")
    else:
        priority = np.empty(cost.tasks, dtype=np.int64)
        priority[cost.order] = np.arange(cost.tasks)
    names = cluster.names
    parts = stripes(prepared.tasks, [names[d] for d in result.task_devices], priority.tolist())
    tasks, outputs = plan_tasks(models, parts)  # in the schedule's order: the evaluator issues sends in plan order
    entries = [ModelEntry.of(m.id, m.ref) for m in models]
    used = dict.fromkeys((cluster.master, *(t.device for t in tasks)))
    meta = {
        "method": settings.method, "K": settings.K, "blocks_per_model": settings.blocks_per_model,
        "seed": settings.seed, "links": settings.links,
        "search_completion_s": result.fitness[settings.links], "search_s": round(result.seconds, 3),
        "evaluations": result.evaluations, "prepare_s": round(prepared.seconds, 3),
        "planned": "all models jointly",
    }
    return make_task_plan(solver, "latency", tuple(used), cluster.master, entries, tasks, outputs, None, meta)
