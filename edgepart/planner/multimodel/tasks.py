"""From blocks of pieces to tasks, and from tasks to the cost graph the searches evaluate.

A *block* is a set of pieces that go to one device (the unit of decision of
the searches). Its pieces run as *tasks*: a task is a stripe of consecutive
units of one model with one piece index, computing layers [start, stop); its
output is that piece's region at its last unit and its input the region its
first unit needs for it, the halo recomputed inside the stripe (a fused tile).

[R] Stripes of one model break at the same cut points for every piece index
(wherever any piece index changes block, or the kind of split changes): then
every input a stripe needs is the output of stripes that end exactly where it
starts, which is what a task graph can express. With `fuse=False` every unit
is its own task (the authors' piece-level model: halos are sent, not
recomputed).

The `CostGraph` is what the fitness needs and nothing more: per task and
device the compute seconds, per edge the bytes, each task's block and memory,
the network, and the list-scheduling priority (decreasing HEFT upward rank).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from edgepart.geometry import Region, TileGeometry, backprop
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.pieces import PieceDAG, dtype_bytes_at
from edgepart.planner.multimodel.platform import Medium, Platform, mean_transfer


@dataclass(frozen=True)
class Task:
    index: int
    model: int
    first_unit: int  # units [first_unit, stop_unit) of the model
    stop_unit: int
    start: int  # layers [start, stop)
    stop: int
    piece: int
    block: int
    pieces: tuple[int, ...]  # the DAG pieces it computes, first unit first
    geometry: TileGeometry

    @property
    def output(self) -> Region:
        return self.geometry.output_region

    @property
    def input(self) -> Region:
        return self.geometry.input_region


@dataclass(frozen=True)
class TaskEdge:
    src: int
    dst: int
    region: Region  # of the tensor crossing cut dst.start
    nbytes: int


@dataclass(frozen=True)
class TaskGraph:
    dag: PieceDAG
    tasks: tuple[Task, ...]
    edges: tuple[TaskEdge, ...]
    blocks: int

    def __len__(self) -> int:
        return len(self.tasks)

    def input_bytes(self, task: Task) -> int:
        if task.start != 0:
            return 0
        graph = self.dag.models[task.model]
        return task.input.size * graph.batch * dtype_bytes_at(graph, 0)

    def output_bytes(self, task: Task) -> int:
        graph = self.dag.models[task.model]
        if task.stop != len(graph):
            return 0
        return task.output.size * graph.batch * dtype_bytes_at(graph, task.stop)

    def memory_bytes(self, task: Task) -> int:
        """[R] the weights of its layers plus its input and output buffers (a task loads its own weights)."""
        graph = self.dag.models[task.model]
        return (graph.weight_bytes(task.start, task.stop)
                + task.input.size * graph.batch * dtype_bytes_at(graph, task.start)
                + task.output.size * graph.batch * dtype_bytes_at(graph, task.stop))


def check_labels(dag: PieceDAG, labels: Sequence[int]) -> int:
    """The number of blocks; raises when `labels` is not one block id in [0, blocks) per piece."""
    if len(labels) != len(dag):
        raise PlanningError(f"labels: {len(labels)} block ids for {len(dag)} pieces")
    if min(labels) < 0:
        raise PlanningError(f"labels: block ids must be >= 0, got {min(labels)}")
    blocks = max(labels) + 1
    missing = sorted(set(range(blocks)) - set(labels))
    if missing:
        raise PlanningError(f"labels: blocks {missing[:5]} have no piece (ids must be 0..{blocks - 1})")
    return blocks


def task_graph(dag: PieceDAG, labels: Sequence[int], fuse: bool = True) -> TaskGraph:
    """The tasks that run the blocks `labels` (one block id per piece)."""
    blocks = check_labels(dag, labels)
    tasks: list[Task] = []
    edges: list[TaskEdge] = []
    for m, graph in enumerate(dag.models):
        units = graph.units
        layout = [dag.unit_pieces(m, u) for u in range(len(units))]
        cuts = [0]
        for u in range(1, len(units)):
            before, after = layout[u - 1], layout[u]
            same_shape = len(before) == len(after) and before[0].split == after[0].split
            same_blocks = same_shape and all(labels[a.index] == labels[b.index] for a, b in zip(before, after, strict=True))
            if not fuse or not same_blocks:
                cuts.append(u)
        cuts.append(len(units))
        previous: list[Task] = []
        for first, stop_unit in itertools.pairwise(cuts):
            current = []
            for r, last_piece in enumerate(layout[stop_unit - 1]):
                start, stop = units[first].start, units[stop_unit - 1].stop
                chain = tuple(layout[u][r].index for u in range(first, stop_unit))
                geometry = (last_piece.geometry if first == stop_unit - 1
                            else backprop(graph, start, stop, last_piece.output))
                task = Task(len(tasks), m, first, stop_unit, start, stop, r, labels[last_piece.index],
                            chain, geometry)
                tasks.append(task)
                current.append(task)
            dtype = dtype_bytes_at(graph, units[first].start)
            for consumer in current:
                for producer in previous:
                    overlap = producer.output.intersect(consumer.input)
                    if not overlap.empty:
                        edges.append(TaskEdge(producer.index, consumer.index, overlap,
                                              overlap.size * graph.batch * dtype))
            previous = current
    return TaskGraph(dag, tuple(tasks), tuple(edges), blocks)


@dataclass(frozen=True, eq=False)
class CostGraph:
    """Everything the fitness reads: n tasks, m devices, e edges, E >= m network endpoints."""

    compute_s: np.ndarray  # (n, m) seconds of each task on each device
    memory_bytes: np.ndarray  # (n,)
    capacity_bytes: np.ndarray  # (m,)
    block: np.ndarray  # (n,) block (decision variable) of each task
    blocks: int
    model: np.ndarray  # (n,) model of each task
    models: int
    edge_src: np.ndarray  # (e,)
    edge_dst: np.ndarray  # (e,)
    edge_bytes: np.ndarray  # (e,)
    input_bytes: np.ndarray  # (n,) read from the model's source before the task can start
    output_bytes: np.ndarray  # (n,) sent to the model's source when the task ends (0: none)
    source: np.ndarray  # (models,) endpoint holding each model's input
    alpha_s: np.ndarray  # (E, E)
    s_per_byte: np.ndarray  # (E, E)
    medium: Medium
    order: np.ndarray  # (n,) tasks by decreasing upward rank (a topological order)
    fallback: int
    device_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n, m = self.compute_s.shape
        if self.block.shape != (n,) or (n and (self.block.min() < 0 or self.block.max() >= self.blocks)):
            raise PlanningError(f"cost graph: block ids must be in [0, {self.blocks}) for each of {n} tasks")
        if self.capacity_bytes.shape != (m,):
            raise PlanningError(f"cost graph: {self.capacity_bytes.shape[0]} capacities for {m} devices")
        size = self.alpha_s.shape[0]
        if size < m or self.source.min(initial=0) < 0 or self.source.max(initial=0) >= size:
            raise PlanningError(f"cost graph: sources must be endpoints in [0, {size}), devices [0, {m})")

    @property
    def tasks(self) -> int:
        return int(self.compute_s.shape[0])

    @property
    def devices(self) -> int:
        return int(self.compute_s.shape[1])

    @cached_property
    def block_memory(self) -> np.ndarray:
        return np.bincount(self.block, weights=self.memory_bytes, minlength=self.blocks)

    @cached_property
    def preds(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per task: (producer task, edge index) pairs."""
        into: list[list[tuple[int, int]]] = [[] for _ in range(self.tasks)]
        for e, (u, v) in enumerate(zip(self.edge_src.tolist(), self.edge_dst.tolist(), strict=True)):
            into[v].append((u, e))
        return tuple(tuple(p) for p in into)

    @cached_property
    def succs(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.tasks)]
        for u, v in zip(self.edge_src.tolist(), self.edge_dst.tolist(), strict=True):
            out[u].append(v)
        return tuple(tuple(s) for s in out)

    def tx(self, u: int, v: int, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return float(self.alpha_s[u, v] + nbytes * self.s_per_byte[u, v])

    def task_devices(self, block_devices: np.ndarray) -> np.ndarray:
        """Device of every task from the device of every block; (..., blocks) -> (..., n)."""
        return np.asarray(block_devices)[..., self.block]


def _digraph(n: int, edges: Sequence[tuple[int, int]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def topological(n: int, edges: Sequence[tuple[int, int]], key: Sequence[float]) -> list[int]:
    """Kahn's order taking, among ready nodes, the smallest (key, index) first; raises on a cycle."""
    try:
        return list(nx.lexicographical_topological_sort(_digraph(n, edges), key=lambda v: (key[v], v)))
    except nx.NetworkXUnfeasible:
        raise PlanningError("the task graph has a cycle") from None


def upward_rank(compute: np.ndarray, edges: Sequence[tuple[int, int]], edge_s: np.ndarray) -> np.ndarray:
    """rank_u(v) = w_v + max over successors x of (t_vx + rank_u(x)) (HEFT), over any DAG."""
    n = len(compute)
    succ: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (u, v), t in zip(edges, edge_s.tolist(), strict=True):
        succ[u].append((v, t))
    rank = np.zeros(n)
    for v in reversed(topological(n, edges, [0.0] * n)):
        rank[v] = compute[v] + max((t + rank[x] for x, t in succ[v]), default=0.0)
    return rank


def cost_graph(tasks: TaskGraph, platform: Platform, sources: Sequence[int],
               return_outputs: bool = False) -> CostGraph:
    """Cost `tasks` on `platform`; model i's input is held by network endpoint `sources[i]`.

    `return_outputs`: the last tasks of each model send their output back to its source
    (the project's deployments do; the authors' completion time ends at the last task).
    """
    dag = tasks.dag
    if len(sources) != len(dag.models):
        raise PlanningError(f"sources: {len(sources)} endpoints for {len(dag.models)} models")
    endpoints = len(platform.network.endpoints)
    for i, s in enumerate(sources):
        if not 0 <= s < endpoints:
            raise PlanningError(f"sources[{i}]: endpoint {s} is not in [0, {endpoints})")
    n, m = len(tasks.tasks), len(platform.devices)
    compute = np.array([[device.seconds(dag.models[t.model], t.geometry) for device in platform.devices]
                        for t in tasks.tasks]).reshape(n, m)
    edge_src = np.array([e.src for e in tasks.edges], dtype=np.int64)
    edge_dst = np.array([e.dst for e in tasks.edges], dtype=np.int64)
    edge_bytes = np.array([e.nbytes for e in tasks.edges], dtype=float)
    pairs = list(zip(edge_src.tolist(), edge_dst.tolist(), strict=True))
    rank = upward_rank(compute.mean(axis=1), pairs, mean_transfer(platform.network, m, edge_bytes))
    order = topological(n, pairs, (-rank).tolist())
    return CostGraph(
        compute_s=compute,
        memory_bytes=np.array([tasks.memory_bytes(t) for t in tasks.tasks], dtype=float),
        capacity_bytes=np.array([d.memory_bytes for d in platform.devices], dtype=float),
        block=np.array([t.block for t in tasks.tasks], dtype=np.int64),
        blocks=tasks.blocks,
        model=np.array([t.model for t in tasks.tasks], dtype=np.int64),
        models=len(dag.models),
        edge_src=edge_src, edge_dst=edge_dst, edge_bytes=edge_bytes,
        input_bytes=np.array([tasks.input_bytes(t) for t in tasks.tasks], dtype=float),
        output_bytes=np.array([tasks.output_bytes(t) if return_outputs else 0 for t in tasks.tasks], dtype=float),
        source=np.array(sources, dtype=np.int64),
        alpha_s=platform.network.alpha_s, s_per_byte=platform.network.s_per_byte,
        medium=platform.network.medium,
        order=np.array(order, dtype=np.int64),
        fallback=platform.fallback,
        device_names=platform.names,
    )
