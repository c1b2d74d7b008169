"""Piece-wise multilevel k-way partitioning (SOLVERS.md §6 E.2; the poster's phases I-III).

Vertex weight w_v = compute seconds (mean over devices), edge weight t_uv =
transfer seconds (mean link); the cut is the sum of t over edges between
blocks.

I   Coarsening: nodes in decreasing HEFT upward rank each take their
    heaviest-edge unmatched neighbour, restricted to the same piece index
    (`same_piece`), and contract with it (weights add, parallel edges add,
    rank = max), level after level while at least 2k nodes remain. [R] As
    in METIS, coarse nodes stay small (half the balance bound) so that the
    blocks can still be balanced.
II  Initial partition: keep contracting the same way until k nodes remain,
    as long as merged nodes respect the balance bound; then [R] one pair at
    a time: the lightest neighbours if they fit the bound, else the two
    lightest nodes that may share a block if they do (disjoint models have
    no edges between them), else the lightest neighbours anyway.
III Uncoarsening: project the blocks level by level, each time balanced
    (`rebalance`) and refined by boundary Fiduccia-Mattheyses [R: the
    authors' refinement is unfinished]:
    moves of boundary nodes to a neighbouring block of their piece index,
    largest gain first (gain = weight to the target block - weight to the
    own block), each node once a pass, only into blocks that stay within
    (1+eps) W/k and out of blocks that keep a node; the best prefix of moves
    is kept (so the cut never grows); up to 8 passes, until a pass gains
    nothing.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.pieces import PieceDAG
from edgepart.planner.multimodel.tasks import upward_rank

FM_PASSES = 8


@dataclass(frozen=True)
class WeightedGraph:
    """The undirected graph a level of the partitioner works on."""

    weight: tuple[float, ...]
    piece: tuple[int, ...]  # -1: a node that mixes piece indices (only without same_piece)
    rank: tuple[float, ...]
    adjacency: tuple[Mapping[int, float], ...]

    def __len__(self) -> int:
        return len(self.weight)

    def edges(self) -> list[tuple[int, int, float]]:
        return [(u, v, w) for u, nbrs in enumerate(self.adjacency) for v, w in nbrs.items() if u < v]


@dataclass(frozen=True)
class LevelCut:
    nodes: int
    cut_projected: float  # the cut of the blocks projected onto this level
    cut_balanced: float  # after moving nodes out of blocks over the bound
    cut_refined: float  # after boundary FM (all three equal when refine=False)


@dataclass(frozen=True)
class Partition:
    labels: tuple[int, ...]  # block of each piece, in [0, k)
    k: int
    cut: float
    levels: tuple[LevelCut, ...]  # coarsest first


def weighted_graph(dag: PieceDAG, node_s: Sequence[float] | np.ndarray | None = None,
                   edge_s: Sequence[float] | np.ndarray | None = None) -> WeightedGraph:
    """The DAG as a partitioning graph; default weights: FLOPs / 1e10 and bytes / 12.5e6 [R]."""
    nodes = np.asarray(node_s if node_s is not None else [dag.flops(p) / 1e10 for p in dag.pieces], dtype=float)
    links = np.asarray(edge_s if edge_s is not None else [e.nbytes / 12.5e6 for e in dag.edges], dtype=float)
    if nodes.shape != (len(dag),) or links.shape != (len(dag.edges),):
        raise PlanningError(f"weights: {nodes.shape[0]} node and {links.shape[0]} edge weights for "
                            f"{len(dag)} pieces and {len(dag.edges)} edges")
    pairs = [(e.src, e.dst) for e in dag.edges]
    rank = upward_rank(nodes, pairs, links)
    adjacency: list[dict[int, float]] = [{} for _ in dag.pieces]
    for (u, v), t in zip(pairs, links.tolist(), strict=True):
        adjacency[u][v] = adjacency[u].get(v, 0.0) + t
        adjacency[v][u] = adjacency[v].get(u, 0.0) + t
    return WeightedGraph(tuple(nodes.tolist()), tuple(p.piece for p in dag.pieces), tuple(rank.tolist()),
                         tuple(adjacency))


def subgraph(graph: WeightedGraph, nodes: Sequence[int]) -> WeightedGraph:
    index = {v: i for i, v in enumerate(nodes)}
    return WeightedGraph(
        tuple(graph.weight[v] for v in nodes), tuple(graph.piece[v] for v in nodes),
        tuple(graph.rank[v] for v in nodes),
        tuple({index[u]: w for u, w in graph.adjacency[v].items() if u in index} for v in nodes))


def cut(graph: WeightedGraph, labels: Sequence[int]) -> float:
    return math.fsum(w for u, v, w in graph.edges() if labels[u] != labels[v])


def _match(graph: WeightedGraph, same_piece: bool, floor: int = 0,
           max_weight: float = math.inf) -> tuple[list[int], int]:
    """Heavy-edge matching in decreasing rank; stops merging at `floor` nodes. Returns (parent, count)."""
    n = len(graph)
    parent = [-1] * n
    remaining = n
    count = 0
    for v in sorted(range(n), key=lambda x: (-graph.rank[x], x)):
        if parent[v] >= 0:
            continue
        best, best_w = -1, -math.inf
        if remaining > floor:
            for u, w in graph.adjacency[v].items():
                if parent[u] >= 0 or u == v:
                    continue
                if same_piece and graph.piece[u] != graph.piece[v]:
                    continue
                if graph.weight[u] + graph.weight[v] > max_weight:
                    continue
                if w > best_w or (w == best_w and u < best):
                    best, best_w = u, w
        parent[v] = count
        if best >= 0:
            parent[best] = count
            remaining -= 1
        count += 1
    return parent, count


def _lightest_pair(graph: WeightedGraph, same_piece: bool, neighbours: bool) -> tuple[float, int, int] | None:
    """The pair that may share a block and weighs least together (only neighbours, or any)."""
    pairs = []
    if neighbours:
        pairs = [(graph.weight[a] + graph.weight[b], a, b) for a, b, _ in graph.edges()
                 if not same_piece or graph.piece[a] == graph.piece[b]]
    else:
        groups: dict[int, list[int]] = {}
        for v in range(len(graph)):
            groups.setdefault(graph.piece[v] if same_piece else 0, []).append(v)
        for members in groups.values():
            if len(members) >= 2:
                a, b = sorted(members, key=lambda x: (graph.weight[x], x))[:2]
                pairs.append((graph.weight[a] + graph.weight[b], a, b))
    return min(pairs) if pairs else None


def _merge_pair(graph: WeightedGraph, a: int, b: int) -> tuple[list[int], int]:
    parent = [-1] * len(graph)
    count = 0
    for v in range(len(graph)):
        if v == b:
            continue
        parent[v] = count
        count += 1
    parent[b] = parent[a]
    return parent, count


def contract(graph: WeightedGraph, parent: Sequence[int], count: int) -> WeightedGraph:
    weight = [0.0] * count
    piece = [-2] * count
    rank = [-math.inf] * count
    adjacency: list[dict[int, float]] = [{} for _ in range(count)]
    for v in range(len(graph)):
        c = parent[v]
        weight[c] += graph.weight[v]
        piece[c] = graph.piece[v] if piece[c] in (-2, graph.piece[v]) else -1
        rank[c] = max(rank[c], graph.rank[v])
        for u, w in graph.adjacency[v].items():
            cu = parent[u]
            if cu != c:
                adjacency[c][cu] = adjacency[c].get(cu, 0.0) + w
    return WeightedGraph(tuple(weight), tuple(piece), tuple(rank), tuple(adjacency))


def initial_partition(graph: WeightedGraph, k: int, same_piece: bool, bound: float) -> list[int]:
    """Contract `graph` down to k nodes; the label of each node is the block it ends in."""
    mapping = list(range(len(graph)))
    current = graph
    while len(current) > k:
        parent, count = _match(current, same_piece, floor=k, max_weight=bound)
        if count == len(current):
            near = _lightest_pair(current, same_piece, neighbours=True)
            anywhere = _lightest_pair(current, same_piece, neighbours=False)
            if near is not None and (near[0] <= bound or anywhere is None or anywhere[0] > bound):
                pair = near
            elif anywhere is not None:
                pair = anywhere
            else:
                raise PlanningError(f"cannot merge {len(current)} nodes further: every node has its own "
                                    "piece index")
            parent, count = _merge_pair(current, pair[1], pair[2])
        current = contract(current, parent, count)
        mapping = [parent[c] for c in mapping]
    return mapping


def rebalance(graph: WeightedGraph, labels: Sequence[int], k: int, bound: float,
              same_piece: bool = True) -> list[int]:
    """[R] Move nodes out of blocks heavier than `bound` (as METIS balances before refining).

    From the heaviest block, the move of largest gain into a block that stays within the bound
    (a neighbouring block first, any block of the same piece index when none borders); stops
    when every block fits or no such move exists.
    """
    result = list(labels)
    weight = [0.0] * k
    members: list[set[int]] = [set() for _ in range(k)]
    for v, b in enumerate(result):
        weight[b] += graph.weight[v]
        members[b].add(v)
    block_piece = [next((graph.piece[v] for v in group), -2) for group in members]
    while True:
        heavy = max(range(k), key=lambda b: weight[b])
        if weight[heavy] <= bound or len(members[heavy]) <= 1:
            return result
        best: tuple[bool, float, float, int] | None = None  # (borders, gain, -target weight, -node)
        choice = (-1, -1)
        for v in sorted(members[heavy]):
            links: dict[int, float] = {}
            for u, w in graph.adjacency[v].items():
                links[result[u]] = links.get(result[u], 0.0) + w
            own = links.get(heavy, 0.0)
            for target in range(k):
                if target == heavy or weight[target] + graph.weight[v] > bound:
                    continue
                if same_piece and block_piece[target] != graph.piece[v]:
                    continue
                key = (target in links, links.get(target, 0.0) - own, -weight[target], -v)
                if best is None or key > best:
                    best, choice = key, (v, target)
        if best is None:
            return result
        v, target = choice
        result[v] = target
        members[heavy].discard(v)
        members[target].add(v)
        weight[heavy] -= graph.weight[v]
        weight[target] += graph.weight[v]


def boundary_fm(graph: WeightedGraph, labels: Sequence[int], k: int, eps: float = 0.1,
                same_piece: bool = True, passes: int = FM_PASSES) -> list[int]:
    """Refine `labels` (k blocks) by boundary FM passes; the cut never increases."""
    result = list(labels)
    bound = (1 + eps) * math.fsum(graph.weight) / k
    for _ in range(passes):
        if _fm_pass(graph, result, k, bound, same_piece) <= 0:
            break
    return result


def _fm_pass(graph: WeightedGraph, labels: list[int], k: int, bound: float, same_piece: bool) -> float:
    n = len(graph)
    block_weight = [0.0] * k
    block_size = [0] * k
    block_piece = [-2] * k
    for v in range(n):
        b = labels[v]
        block_weight[b] += graph.weight[v]
        block_size[b] += 1
        block_piece[b] = graph.piece[v] if block_piece[b] in (-2, graph.piece[v]) else -1
    conn: list[dict[int, float]] = [{} for _ in range(n)]
    for v in range(n):
        for u, w in graph.adjacency[v].items():
            conn[v][labels[u]] = conn[v].get(labels[u], 0.0) + w
    version = [0] * n
    locked = [False] * n
    heap: list[tuple[float, int, int, int]] = []

    def compatible(v: int, target: int) -> bool:
        return not same_piece or block_piece[target] == graph.piece[v]

    def push(v: int) -> None:
        own = conn[v].get(labels[v], 0.0)
        for target, w in conn[v].items():
            if target != labels[v] and compatible(v, target):
                heapq.heappush(heap, (-(w - own), v, target, version[v]))

    for v in range(n):
        if any(b != labels[v] for b in conn[v]):
            push(v)
    moves: list[tuple[int, int]] = []
    gained = best = 0.0
    best_moves = 0
    while heap:
        negative, v, target, stamp = heapq.heappop(heap)
        if locked[v] or stamp != version[v]:
            continue
        source = labels[v]
        if block_size[source] <= 1 or block_weight[target] + graph.weight[v] > bound:
            continue
        labels[v] = target
        locked[v] = True
        block_weight[source] -= graph.weight[v]
        block_weight[target] += graph.weight[v]
        block_size[source] -= 1
        block_size[target] += 1
        moves.append((v, source))
        gained += -negative
        if gained > best:
            best, best_moves = gained, len(moves)
        for u, w in graph.adjacency[v].items():
            conn[u][source] -= w
            if conn[u][source] <= 0:
                del conn[u][source]
            conn[u][target] = conn[u].get(target, 0.0) + w
            if not locked[u]:
                version[u] += 1
                push(u)
    for v, source in reversed(moves[best_moves:]):
        labels[v] = source
    return best


def _multilevel(graph: WeightedGraph, k: int, eps: float, same_piece: bool, refine: bool) -> Partition:
    n = len(graph)
    if not 1 <= k <= n:
        raise PlanningError(f"k = {k}: need 1 <= k <= {n} (the number of pieces)")
    if not eps >= 0:
        raise PlanningError(f"eps must be >= 0, got {eps}")
    pieces = set(graph.piece)
    if same_piece and len(pieces) > k:
        raise PlanningError(f"k = {k} blocks cannot keep one piece index each: the pieces have "
                            f"{len(pieces)} piece indices (use k >= {len(pieces)} or same_piece=False)")
    bound = (1 + eps) * math.fsum(graph.weight) / k
    levels = [graph]
    parents: list[list[int]] = []
    while len(levels[-1]) >= 2 * k:
        parent, count = _match(levels[-1], same_piece, max_weight=bound / 2)
        if count == len(levels[-1]):
            break
        parents.append(parent)
        levels.append(contract(levels[-1], parent, count))
    labels = initial_partition(levels[-1], k, same_piece, bound)
    history = []
    for depth in range(len(levels) - 1, -1, -1):
        level = levels[depth]
        before = balanced = cut(level, labels)
        if refine:
            labels = rebalance(level, labels, k, bound, same_piece)
            balanced = cut(level, labels)
            labels = boundary_fm(level, labels, k, eps, same_piece)
        history.append(LevelCut(len(level), before, balanced, cut(level, labels)))
        if depth > 0:
            labels = [labels[c] for c in parents[depth - 1]]
    return Partition(tuple(labels), k, cut(graph, labels), tuple(history))


def multilevel_kway(dag: PieceDAG, k: int, eps: float = 0.1, same_piece: bool = True, refine: bool = True,
                    node_s: Sequence[float] | np.ndarray | None = None,
                    edge_s: Sequence[float] | np.ndarray | None = None) -> Partition:
    """k blocks of the whole DAG (every model together)."""
    return _multilevel(weighted_graph(dag, node_s, edge_s), k, eps, same_piece, refine)


def multilevel_per_model(dag: PieceDAG, k: int, eps: float = 0.1, same_piece: bool = True,
                         refine: bool = True, node_s: Sequence[float] | np.ndarray | None = None,
                         edge_s: Sequence[float] | np.ndarray | None = None) -> Partition:
    """k blocks per model, each model partitioned on its own as the authors do [C mgp.py]."""
    graph = weighted_graph(dag, node_s, edge_s)
    labels = [0] * len(dag)
    offset = 0
    levels: list[LevelCut] = []
    for m in range(len(dag.models)):
        nodes = [p.index for p in dag.pieces if p.model == m]
        part = _multilevel(subgraph(graph, nodes), min(k, len(nodes)), eps, same_piece, refine)
        for v, label in zip(nodes, part.labels, strict=True):
            labels[v] = offset + label
        offset += part.k
        levels.extend(part.levels)
    return Partition(tuple(labels), offset, cut(graph, labels), tuple(levels))
