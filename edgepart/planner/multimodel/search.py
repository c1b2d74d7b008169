"""Block offloading by PSO-GA and by the memetic algorithm (SOLVERS.md §6 E.3).

A particle is a device per block. Per iteration t of at most T, every
particle goes through [C ServerEvolutionary.py]:

1. inertia (mutation): with probability w, one random block moves to another
   random device; w = w_max - (w_max - w_min) exp(d / (d - 1.01)), d the
   share of positions, over the swarm, equal to the global best;
2. cognitive crossover: with probability c1(t) (linear from c1 start to end
   over T), the segment between two random cut points is copied from the
   particle's own best;
3. social crossover: the same from the global best with c2(t);
4. memory repair: blocks of an overfull device move, in random order, to the
   fallback device (the edge server) until it fits;
5. memetic variant only: with probability ls_prob, for ls_blocks random
   blocks in turn, the block moves to the device that lowers F most, when
   one does and memory allows (the particle keeps the move);
6. a particle's best changes on strict improvement; the global best is the
   best of them.

The search stops after `patience` iterations without improvement or after T.
At least one particle mutates and crosses over per step, as in the authors'
code. Everything random comes from one seeded generator: the same seed gives
the same result. The first particle starts with every block on the fallback
device, the others at random.

`pso_ga_server_order` is the layer-level baseline LO [C
ServerOrderEvolutionary.py]: a particle is a device and a priority per task
(a permutation); mutation also swaps two priorities, crossover also copies
the priority segment, repairing the permutation by swaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.schedule import LinkModel, makespans
from edgepart.planner.multimodel.tasks import CostGraph

BlockFitness = Callable[[np.ndarray], np.ndarray]  # (rows, blocks) devices -> (rows,) F
OrderFitness = Callable[[np.ndarray, np.ndarray], np.ndarray]  # devices, priorities (rows, n) -> (rows,) F


@dataclass(frozen=True)
class PsoSettings:
    particles: int = 50
    iterations: int = 600  # T: at most this many iterations (the authors: 600, 300 for the memetic runs)
    patience: int = 50  # stop after this many iterations without improvement
    w_max: float = 0.8
    w_min: float = 0.2
    c1: tuple[float, float] = (0.9, 0.2)  # cognitive crossover probability, start and end
    c2: tuple[float, float] = (0.4, 0.9)  # social crossover probability, start and end
    memetic: bool = False
    ls_prob: float = 0.5  # share of particles that run the local search each iteration
    ls_blocks: int = 2  # blocks each local search tries to move

    def __post_init__(self) -> None:
        if self.particles < 1:
            raise PlanningError(f"particles must be >= 1, got {self.particles}")
        if self.iterations < 0 or self.patience < 1:
            raise PlanningError(f"iterations must be >= 0 and patience >= 1, got {self.iterations}, {self.patience}")
        for name, value in (("w_max", self.w_max), ("w_min", self.w_min), ("ls_prob", self.ls_prob),
                            *(("c1", c) for c in self.c1), *(("c2", c) for c in self.c2)):
            if not 0 <= value <= 1:
                raise PlanningError(f"{name} must be in [0, 1], got {value}")
        if self.ls_blocks < 1:
            raise PlanningError(f"ls_blocks must be >= 1, got {self.ls_blocks}")


PSO_GA = PsoSettings()
MEMETIC = PsoSettings(iterations=300, memetic=True)


@dataclass(frozen=True, eq=False)
class BlockProblem:
    blocks: int
    devices: int
    fitness: BlockFitness
    block_memory: np.ndarray  # (blocks,) bytes
    capacity: np.ndarray  # (devices,) bytes
    fallback: int


@dataclass(frozen=True)
class SearchResult:
    assignment: tuple[int, ...]  # device of each block (or task)
    fitness: float
    history: tuple[float, ...]  # best F so far: after initialisation, then after each iteration
    evaluations: int  # assignments evaluated
    priority: tuple[int, ...] | None = None  # the server + order encoding's priorities


def block_problem(cost: CostGraph, links: LinkModel = "free") -> BlockProblem:
    """Search the cost graph's blocks with the list-scheduling fitness under `links`."""

    def fitness(block_devices: np.ndarray) -> np.ndarray:
        return makespans(cost, cost.task_devices(block_devices), links)

    return BlockProblem(cost.blocks, cost.devices, fitness, cost.block_memory, cost.capacity_bytes, cost.fallback)


def loads(problem: BlockProblem, assignment: np.ndarray) -> np.ndarray:
    """(rows, devices) bytes placed on each device."""
    rows = assignment.shape[0]
    index = (np.arange(rows)[:, None] * problem.devices + assignment).ravel()
    weights = np.broadcast_to(problem.block_memory, assignment.shape).ravel()
    return np.bincount(index, weights=weights, minlength=rows * problem.devices).reshape(rows, problem.devices)


def feasible(problem: BlockProblem, assignment: np.ndarray) -> np.ndarray:
    fits: np.ndarray = np.all(loads(problem, np.atleast_2d(assignment)) <= problem.capacity, axis=1)
    return fits


def repair(problem: BlockProblem, assignment: np.ndarray, rng: np.random.Generator) -> None:
    """[C] Move random blocks of each overfull device to the fallback device, in place."""
    over = ~feasible(problem, assignment)
    for i in np.flatnonzero(over).tolist():
        row = assignment[i]
        load = np.bincount(row, weights=problem.block_memory, minlength=problem.devices)
        for d in range(problem.devices):
            if d == problem.fallback or load[d] <= problem.capacity[d]:
                continue
            members = np.flatnonzero(row == d)
            rng.shuffle(members)
            for b in members.tolist():
                if load[d] <= problem.capacity[d]:
                    break
                row[b] = problem.fallback
                load[d] -= problem.block_memory[b]
                load[problem.fallback] += problem.block_memory[b]


def _evaluate(problem: BlockProblem, assignment: np.ndarray) -> np.ndarray:
    values = np.asarray(problem.fitness(assignment), dtype=float)
    return np.where(feasible(problem, assignment), values, np.inf)


def _inertia(swarm: np.ndarray, best: np.ndarray, settings: PsoSettings) -> float:
    share = float(np.mean(swarm == best[None, :]))
    return settings.w_max - (settings.w_max - settings.w_min) * float(np.exp(share / (share - 1.01)))


def _chosen(rng: np.random.Generator, count: int, probability: float) -> np.ndarray:
    picked = rng.random(count) < probability
    if not picked.any():
        picked[rng.integers(count)] = True
    return np.flatnonzero(picked)


def _mutate_devices(swarm: np.ndarray, rows: np.ndarray, devices: int, rng: np.random.Generator) -> np.ndarray:
    position = rng.integers(swarm.shape[1], size=len(rows))
    if devices > 1:
        swarm[rows, position] = (swarm[rows, position] + rng.integers(1, devices, size=len(rows))) % devices
    return position


def _segments(rng: np.random.Generator, rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct cut points per row (one when length is 1): the segment [lo, hi] inclusive."""
    first = rng.integers(length, size=rows)
    if length == 1:
        return first, first
    second = rng.integers(length - 1, size=rows)
    second += second >= first
    return np.minimum(first, second), np.maximum(first, second)


def _crossover(swarm: np.ndarray, source: np.ndarray, rows: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _segments(rng, len(rows), swarm.shape[1])
    position = np.arange(swarm.shape[1])
    mask = (position[None, :] >= lo[:, None]) & (position[None, :] <= hi[:, None])
    swarm[rows] = np.where(mask, source[rows], swarm[rows])
    return lo, hi


def _local_search(problem: BlockProblem, swarm: np.ndarray, values: np.ndarray, settings: PsoSettings,
                  rng: np.random.Generator) -> int:
    """[S poster line 5][C] move ls_blocks random blocks of some particles to their best device, in place."""
    rows = np.flatnonzero(rng.random(len(swarm)) < settings.ls_prob)
    if len(rows) == 0 or problem.devices < 2:
        return 0
    tries = min(settings.ls_blocks, problem.blocks)
    picks = np.argsort(rng.random((len(rows), problem.blocks)), axis=1)[:, :tries]
    others = problem.devices - 1
    evaluated = 0
    for step in range(tries):
        blocks = picks[:, step]
        candidates = np.repeat(swarm[rows], others, axis=0)
        current = swarm[rows, blocks]
        shift = np.tile(np.arange(1, problem.devices), len(rows))
        moved = (np.repeat(current, others) + shift) % problem.devices
        candidates[np.arange(len(candidates)), np.repeat(blocks, others)] = moved
        scores = _evaluate(problem, candidates).reshape(len(rows), others)
        evaluated += len(candidates)
        best = scores.argmin(axis=1)
        better = scores[np.arange(len(rows)), best] < values[rows]
        winners = rows[better]
        swarm[winners, blocks[better]] = moved.reshape(len(rows), others)[better, best[better]]
        values[winners] = scores[better, best[better]]
    return evaluated


def pso_ga(problem: BlockProblem, settings: PsoSettings = PSO_GA, seed: int = 0) -> SearchResult:
    """PSO-GA over block -> device assignments (the memetic algorithm when settings.memetic)."""
    if problem.blocks < 1 or problem.devices < 1:
        raise PlanningError("the search needs at least one block and one device")
    rng = np.random.default_rng(seed)
    size = settings.particles
    swarm = rng.integers(problem.devices, size=(size, problem.blocks))
    swarm[0] = problem.fallback
    repair(problem, swarm, rng)
    values = _evaluate(problem, swarm)
    evaluations = size
    if settings.memetic:
        evaluations += _local_search(problem, swarm, values, settings, rng)
    own, own_values = swarm.copy(), values.copy()
    leader = int(own_values.argmin())
    history = [float(own_values[leader])]
    stall = 0
    horizon = max(settings.iterations, 1)
    for t in range(settings.iterations):
        best = own[leader]
        _mutate_devices(swarm, _chosen(rng, size, _inertia(swarm, best, settings)), problem.devices, rng)
        c1 = settings.c1[0] + (settings.c1[1] - settings.c1[0]) * t / horizon
        _crossover(swarm, own, _chosen(rng, size, c1), rng)
        c2 = settings.c2[0] + (settings.c2[1] - settings.c2[0]) * t / horizon
        _crossover(swarm, np.broadcast_to(best, swarm.shape), _chosen(rng, size, c2), rng)
        repair(problem, swarm, rng)
        values = _evaluate(problem, swarm)
        evaluations += size
        if settings.memetic:
            evaluations += _local_search(problem, swarm, values, settings, rng)
        improved = values < own_values
        own[improved] = swarm[improved]
        own_values[improved] = values[improved]
        previous = history[-1]
        leader = int(own_values.argmin())
        history.append(float(own_values[leader]))
        stall = 0 if history[-1] < previous else stall + 1
        if stall >= settings.patience:
            break
    if not np.isfinite(own_values[leader]):
        raise PlanningError("no assignment fits the devices' memory, even with every block on the fallback")
    return SearchResult(tuple(int(d) for d in own[leader]), float(own_values[leader]), tuple(history), evaluations)


def memetic(problem: BlockProblem, settings: PsoSettings = MEMETIC, seed: int = 0) -> SearchResult:
    """The memetic algorithm (MA): PSO-GA plus local search."""
    if not settings.memetic:
        settings = replace(settings, memetic=True)
    return pso_ga(problem, settings, seed)


def _swap_priority(order: np.ndarray, position: int, rng: np.random.Generator) -> None:
    other = int(rng.integers(len(order) - 1))
    other += other >= position
    order[position], order[other] = order[other], order[position]


def _copy_priorities(order: np.ndarray, source: np.ndarray, lo: int, hi: int) -> None:
    """Make order[lo..hi] equal source[lo..hi], keeping a permutation by swaps [C]."""
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    for j in range(lo, hi + 1):
        value = source[j]
        k = int(where[value])
        if k != j:
            order[j], order[k] = order[k], order[j]
            where[order[k]] = k
            where[order[j]] = j


def pso_ga_server_order(cost: CostGraph, links: LinkModel = "free", settings: PsoSettings = PSO_GA,
                        seed: int = 0) -> SearchResult:
    """LO's search: a device and a priority per task of `cost` (its blocks are ignored)."""
    n = cost.tasks
    problem = BlockProblem(n, cost.devices, lambda devices: devices, cost.memory_bytes, cost.capacity_bytes,
                           cost.fallback)

    def evaluate(devices: np.ndarray, order: np.ndarray) -> np.ndarray:
        values = makespans(cost, devices, links, order)
        return np.where(feasible(problem, devices), values, np.inf)

    rng = np.random.default_rng(seed)
    size = settings.particles
    swarm = rng.integers(cost.devices, size=(size, n))
    swarm[0] = cost.fallback
    orders = np.argsort(rng.random((size, n)), axis=1)
    repair(problem, swarm, rng)
    values = evaluate(swarm, orders)
    evaluations = size
    own, own_orders, own_values = swarm.copy(), orders.copy(), values.copy()
    leader = int(own_values.argmin())
    history = [float(own_values[leader])]
    stall = 0
    horizon = max(settings.iterations, 1)
    for t in range(settings.iterations):
        best, best_order = own[leader].copy(), own_orders[leader].copy()
        rows = _chosen(rng, size, _inertia(swarm, best, settings))
        positions = _mutate_devices(swarm, rows, cost.devices, rng)
        if n > 1:
            for i, p in zip(rows.tolist(), positions.tolist(), strict=True):
                _swap_priority(orders[i], p, rng)
        for rate, source, source_order in (
                (settings.c1[0] + (settings.c1[1] - settings.c1[0]) * t / horizon, own, own_orders),
                (settings.c2[0] + (settings.c2[1] - settings.c2[0]) * t / horizon,
                 np.broadcast_to(best, swarm.shape), np.broadcast_to(best_order, orders.shape))):
            rows = _chosen(rng, size, rate)
            lo, hi = _crossover(swarm, source, rows, rng)
            for i, a, b in zip(rows.tolist(), lo.tolist(), hi.tolist(), strict=True):
                _copy_priorities(orders[i], source_order[i], a, b)
        repair(problem, swarm, rng)
        values = evaluate(swarm, orders)
        evaluations += size
        improved = values < own_values
        own[improved], own_orders[improved] = swarm[improved], orders[improved]
        own_values[improved] = values[improved]
        previous = history[-1]
        leader = int(own_values.argmin())
        history.append(float(own_values[leader]))
        stall = 0 if history[-1] < previous else stall + 1
        if stall >= settings.patience:
            break
    if not np.isfinite(own_values[leader]):
        raise PlanningError("no assignment fits the devices' memory, even with every task on the fallback")
    return SearchResult(tuple(int(d) for d in own[leader]), float(own_values[leader]), tuple(history),
                        evaluations, tuple(int(p) for p in own_orders[leader]))
