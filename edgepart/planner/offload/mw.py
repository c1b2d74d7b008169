"""MW, Minimizing Waiting (GLOBECOM'22 Algorithm 1, as rewritten in SOLVERS.md §5).

For one FL strategy (τ, grid), MW schedules the paths greedily: first the
(path, cut) that reaches the server earliest (min a + b); then, repeatedly,
the (path, cut) whose local part finishes closest to the moment the uplink
frees up, |X - ready|, ties broken by the earlier end of its transfer,
max(X, ready) + b, then by class (classes are numbered by their first path)
and cut. `ready` is the local finish in the
compute model: a alone (`paper`: local parts run in parallel) or L + a
(`sequential`: after the previous local parts).

Both rules depend on one number: v = X under `paper`, v = X - L (how far the
uplink runs ahead of the end device) under `sequential`; choosing (a, b)
moves it to max(v, a) + b, resp. max(v - a, 0) + b. Paths of one cost class
are interchangeable, so MW's state is v and how many paths of each class are
left, and it repeats itself: when v comes back to a value it had since the
last class ran out, the choices in between repeat until a class runs out
(exactly: the same v gives the same choice); when v is past every remaining
candidate's a and the chosen one keeps it there, that choice repeats for the
rest of its class. Consecutive equal choices form one `Run`, costed in
closed form.

The outer loop tries every τ of the fusable prefix and every grid, keeping
the smallest makespan (ties: smaller τ, fewer paths, fewer rows). A grid
whose lower bound (`bounds.py`) is above the best makespan found cannot win
and is skipped; grids are visited in increasing bound.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster
from edgepart.planner.offload.bounds import grid_lower_bounds
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.costs import OffloadProblem, PathCosts
from edgepart.planner.offload.result import OffloadResult
from edgepart.planner.offload.schedule import Run, expand_runs, runs_makespan
from edgepart.planner.offload.settings import ComputeModel, OffloadSettings

BOUND_SLACK = 1e-9  # relative: a bound equal to the best makespan up to rounding still gets evaluated


@dataclass
class _Candidates:
    """Every (class, cut) pair sorted by (a, b, class, cut); pairs of classes with no path left are skipped,
    and dropped once they are the majority."""

    a: list[float]
    b: list[float]
    klass: list[int]
    cut: list[int]
    left: list[int]  # paths left per class (shared with the caller)
    live_classes: int
    listed_classes: int  # classes with pairs in the lists, live or not

    @staticmethod
    def of(costs: PathCosts, left: list[int]) -> _Candidates:
        cuts = costs.tau + 1
        klass = np.repeat(np.arange(costs.classes), cuts)
        cut = np.tile(np.arange(cuts), costs.classes)
        a = costs.local.reshape(-1)
        b = costs.uplink.reshape(-1)
        order = np.lexsort((cut, klass, b, a))
        return _Candidates(a[order].tolist(), b[order].tolist(), klass[order].tolist(), cut[order].tolist(), left,
                           costs.classes, costs.classes)

    def class_done(self) -> None:
        """A class ran out: drop the dead pairs when they outnumber the live ones."""
        self.live_classes -= 1
        if 2 * self.live_classes < self.listed_classes:
            self.listed_classes = self.live_classes
            keep = [i for i, k in enumerate(self.klass) if self.left[k] > 0]
            self.a = [self.a[i] for i in keep]
            self.b = [self.b[i] for i in keep]
            self.klass = [self.klass[i] for i in keep]
            self.cut = [self.cut[i] for i in keep]

    def largest_a(self) -> float:
        i = len(self.a) - 1
        while self.left[self.klass[i]] == 0:
            i -= 1
        return self.a[i]

    def nearest(self, v: float) -> int:
        """Index of the live candidate with the smallest |v - a|, then max(v, a) + b, then class, then cut."""
        a, klass, left = self.a, self.klass, self.left
        n = len(a)
        above = bisect.bisect_right(a, v)
        while above < n and left[klass[above]] == 0:
            above += 1
        below = above - 1
        while below >= 0 and left[klass[below]] == 0:
            below -= 1
        if below < 0:
            return above
        best = bisect.bisect_left(a, a[below])  # the first live candidate with the same a
        while left[klass[best]] == 0:
            best += 1
        if above < n:
            below_key = (v - a[best], v + self.b[best], klass[best], self.cut[best])
            above_key = (a[above] - v, a[above] + self.b[above], klass[above], self.cut[above])
            if above_key < below_key:
                return above
        return best


def _step(v: float, a: float, b: float, sequential: bool) -> float:
    return max(v - a, 0.0) + b if sequential else max(v, a) + b


def mw_runs(costs: PathCosts, model: ComputeModel) -> list[Run]:
    """MW's order and cuts for one (τ, grid), as runs of identical choices."""
    sequential = model == "sequential"
    left = costs.counts.astype(int).tolist()
    runs: list[Run] = []

    def take(klass: int, cut: int, count: int) -> None:
        left[klass] -= count
        if runs and runs[-1].klass == klass and runs[-1].cut == cut:
            runs[-1] = Run(klass, cut, runs[-1].count + count)
        else:
            runs.append(Run(klass, cut, count))

    # the first path: the earliest arrival at the server
    cuts = costs.tau + 1
    arrival = (costs.local + costs.uplink).reshape(-1)
    first = int(np.lexsort((np.tile(np.arange(cuts), costs.classes), np.repeat(np.arange(costs.classes), cuts),
                            arrival))[0])
    klass, cut = divmod(first, cuts)
    v = _step(0.0, float(costs.local[klass, cut]), float(costs.uplink[klass, cut]), sequential)
    take(klass, cut, 1)
    remaining = costs.paths - 1
    candidates = _Candidates.of(costs, left)
    if left[klass] == 0:
        candidates.class_done()
    seen: dict[float, int] = {}  # v -> choices made before v had that value (since a class ran out)
    history: list[tuple[int, int]] = []

    def class_done() -> None:
        candidates.class_done()
        seen.clear()
        history.clear()

    while remaining > 0:
        if v in seen:  # the choices since v last had this value repeat until a class runs short
            cycle = history[seen[v]:]
            uses: dict[int, int] = {}
            for k, _ in cycle:
                uses[k] = uses.get(k, 0) + 1
            repeats = min(left[k] // n for k, n in uses.items())
            seen.clear()
            history.clear()
            if repeats > 0:
                for _ in range(repeats):
                    for k, o in cycle:
                        take(k, o, 1)
                remaining -= repeats * len(cycle)
                for k in uses:
                    if left[k] == 0:
                        class_done()
                continue
        i = candidates.nearest(v)
        klass, cut = candidates.klass[i], candidates.cut[i]
        a, b = candidates.a[i], candidates.b[i]
        if (not sequential or b >= a) and v >= candidates.largest_a():
            # past every candidate's a, and this choice keeps v there: it repeats for the rest of its class
            count = left[klass]
            if sequential:
                for _ in range(count):
                    v = v - a + b  # max(v - a, 0) + b with v >= a
            else:
                for _ in range(count):
                    v = v + b  # max(v, a) + b with v >= a
            take(klass, cut, count)
            remaining -= count
            class_done()
            continue
        seen[v] = len(history)
        history.append((klass, cut))
        v = _step(v, a, b, sequential)
        take(klass, cut, 1)
        remaining -= 1
        if left[klass] == 0:
            class_done()
    return runs


@dataclass(frozen=True)
class _Best:
    key: tuple[float, int, int, int]  # (makespan, τ, paths, rows)
    tau: int
    grid: tuple[int, int]
    runs: tuple[Run, ...]


GridSolver = Callable[[PathCosts, ComputeModel, float], Sequence[Run] | None]


def search(problem: OffloadProblem, solve_grid: GridSolver, max_paths: int | None = None, prune: bool = True,
           start: _Best | None = None) -> tuple[_Best, int, int]:
    """The best (τ, grid) under `solve_grid(costs, model, incumbent)` (None: nothing better than the
    incumbent), visiting grids by increasing lower bound from the incumbent `start`; also how many grids
    were evaluated and how many the bound ruled out."""
    model = problem.settings.compute_model
    queue: list[tuple[float, int, int, int, int]] = []
    for tau in problem.taus():
        prefix = problem.prefix(tau)
        bounds = grid_lower_bounds(prefix, model) if prune else None
        for ph, pw in problem.grids(tau, max_paths):
            queue.append((float(bounds[ph - 1, pw - 1]) if bounds is not None else 0.0, tau, ph * pw, ph, pw))
    queue.sort()
    best = start
    searched = 0
    for bound, tau, paths, ph, pw in queue:
        if best is not None and bound > best.key[0] * (1 + BOUND_SLACK):
            break
        costs = problem.prefix(tau).grid_costs((ph, pw))
        found = solve_grid(costs, model, best.key[0] if best is not None else math.inf)
        searched += 1
        if found is None:
            continue
        runs = tuple(found)
        key = (runs_makespan(costs, runs, model), tau, paths, ph)
        if best is None or key < best.key:
            best = _Best(key, tau, (ph, pw), runs)
    assert best is not None
    return best, searched, len(queue) - searched


def mw_grid(costs: PathCosts, model: ComputeModel, incumbent: float) -> list[Run]:
    return mw_runs(costs, model)


def solve_mw_problem(problem: OffloadProblem, max_paths: int | None = None, prune: bool = True) -> OffloadResult:
    best, searched, skipped = search(problem, mw_grid, max_paths, prune)
    costs = problem.prefix(best.tau).grid_costs(best.grid)
    order, cuts = expand_runs(costs, best.runs)
    return fl_result(problem, "mw", problem.settings.compute_model, best.tau, best.grid, order, cuts, searched,
                     skipped)


def solve_mw(graph: LayerGraph, cluster: Cluster, settings: OffloadSettings | None = None) -> OffloadResult:
    """Minimizing Waiting over every FL path length τ and grid (see the module docstring)."""
    return solve_mw_problem(OffloadProblem(graph, cluster, settings))
