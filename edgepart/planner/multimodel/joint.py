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
evaluator and the data plane issue inputs and sends in plan order). The objective is the completion time of one
request of every model issued together; the search scores candidates with the
batched list schedule (`schedule.makespans`, links `free` or `fifo`) and the
registry costs the chosen plan with the task-graph evaluator, like every
solver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgepart.geometry import Region
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


def plan_tasks(models: Sequence[JointModel], tasks: TaskGraph, devices: Sequence[str],
               priority: Sequence[int]) -> tuple[list[Task], dict[str, list[str]]]:
    """The plan's tasks (task i on `devices[i]` with `priority[i]`) and each model's output tasks."""
    ids = [_task_id(models[t.model].id, t.first_unit, t.stop_unit, t.piece) for t in tasks.tasks]
    reads: list[list[TaskInput]] = [[] for _ in tasks.tasks]
    for edge in tasks.edges:
        reads[edge.dst].append(TaskInput(source=ids[edge.src], region=edge.region))
    result: list[Task] = []
    outputs: dict[str, list[str]] = {m.id: [] for m in models}
    for i, t in enumerate(tasks.tasks):
        model = models[t.model]
        graph = model.graph
        inputs = reads[i]
        if t.start == 0:
            inputs = [TaskInput(source=INPUT, region=t.input), *inputs]
        if not inputs:  # a stripe that lies wholly in padding still waits for its producers
            trigger = next(ids[s.index] for s in tasks.tasks if s.model == t.model and s.stop == t.start)
            inputs = [TaskInput(source=trigger, region=_empty_like(t.input))]
        result.append(Task(id=ids[i], model=model.id, device=devices[i], start=t.start, stop=t.stop,
                           output=t.output, inputs=tuple(inputs), first_layer=graph.layers[t.start].name,
                           last_layer=graph.layers[t.stop - 1].name, priority=int(priority[i])))
        if t.stop == len(graph):
            outputs[model.id].append(ids[i])
    return result, outputs


def _task_id(model_id: str, first_unit: int, stop_unit: int, piece: int) -> str:
    return f"{model_id}.u{first_unit}-{stop_unit}.p{piece}"


def _empty_like(region: Region) -> Region:
    return region.replace(region.ndim - 1, (0, 0))


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
    tasks, outputs = plan_tasks(models, prepared.tasks, [names[d] for d in result.task_devices], priority.tolist())
    tasks.sort(key=lambda t: t.priority)  # the evaluator issues inputs and sends in plan order: the schedule's
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
