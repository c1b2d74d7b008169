"""offload-bf: the optimum over every τ, grid (at most `bf_max_paths` paths), order and cut vector.

Enumerating orders and cut vectors costs (τ+1)^P P! per grid (85 million for
YOLOv2's 21 cuts and 6 paths), so the oracle is an exact dynamic program over
the same space instead. The recurrences of `schedule.py` are non-decreasing
in their state (L, X, E, F), so of two partial schedules of the same set of
paths one that is no later in every coordinate is at least as good whatever
follows: per set of scheduled paths (a multiset of cost classes) only the
Pareto-minimal states are kept. States whose lower bound (F, or X plus the
least uplink time of the paths left) already exceeds the best makespan known
are dropped. The tests check the program against plain enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.costs import OffloadProblem, PathCosts
from edgepart.planner.offload.mw import BOUND_SLACK, mw_grid, search
from edgepart.planner.offload.result import OffloadResult
from edgepart.planner.offload.schedule import Run, expand_runs
from edgepart.planner.offload.settings import ComputeModel, OffloadSettings


@dataclass(frozen=True)
class _Label:
    """A partial schedule: the recurrences' state and how it was reached."""

    state: tuple[float, float, float, float]  # (L, X, E, F)
    parent: _Label | None
    klass: int
    cut: int


def _pareto(labels: list[_Label]) -> list[_Label]:
    """The labels no other label matches or beats in every coordinate."""
    labels.sort(key=lambda label: label.state)
    kept: list[_Label] = []
    kept_states = np.empty((len(labels), 4))
    for label in labels:
        s = label.state
        if kept:
            k = kept_states[: len(kept)]
            if np.any((k[:, 1] <= s[1]) & (k[:, 2] <= s[2]) & (k[:, 3] <= s[3])):
                continue  # sorted by L: every kept label has L <= this one's
        kept_states[len(kept)] = s
        kept.append(label)
    return kept


def bf_runs(costs: PathCosts, model: ComputeModel, incumbent: float = float("inf")) -> list[Run] | None:
    """The optimal order and cuts of one (τ, grid), or None when nothing beats `incumbent`."""
    sequential = model == "sequential"
    tail = costs.post_s + costs.return_s
    limit = incumbent * (1 + BOUND_SLACK) - tail
    cuts = range(costs.tau + 1)
    min_uplink = costs.uplink.min(axis=1).tolist()
    local, uplink, server = costs.local.tolist(), costs.uplink.tolist(), costs.server.tolist()
    delay = [costs.fuse_delay(o) for o in cuts]
    end_turn, server_turn = costs.end_turn_s, costs.server_turn_s
    tau = costs.tau
    layer: dict[tuple[int, ...], list[_Label]] = {tuple(costs.counts.tolist()): [_Label((0.0, 0.0, 0.0, 0.0), None,
                                                                                         -1, -1)]}
    for _ in range(costs.paths):
        following: dict[tuple[int, ...], list[_Label]] = {}
        for left, labels in layer.items():
            for k, count in enumerate(left):
                if count == 0:
                    continue
                rest = (*left[:k], count - 1, *left[k + 1:])
                rest_uplink = sum(n * min_uplink[j] for j, n in enumerate(rest))
                bucket = following.setdefault(rest, [])
                for label in labels:
                    end, link, busy, fused = label.state
                    for o in cuts:
                        a, b, e = local[k][o], uplink[k][o], server[k][o]
                        if sequential:
                            # turns (schedule.py): a part waits for one only after the device's first part;
                            # compute times are positive, so a device has run a part iff its time is > 0 (and
                            # the update stays monotone in the state: dominance still holds)
                            new_end = end + (end_turn if end > 0 and o > 0 else 0.0) + a
                            new_link = max(link, new_end) + b
                            new_busy = max(busy + (server_turn if busy > 0 else 0.0), new_link) + e if o < tau else busy
                        else:
                            new_end = 0.0
                            new_link = max(link, a) + b
                            new_busy = 0.0
                        ready = (new_busy if sequential else new_link + e) + delay[o] if o < tau else new_link
                        new_fused = max(fused, ready)
                        if max(new_fused, new_link + rest_uplink) > limit:
                            continue
                        bucket.append(_Label((new_end, new_link, new_busy, new_fused), label, k, o))
        layer = {left: _pareto(labels) for left, labels in following.items() if labels}
        if not layer:
            return None
    finals = [label for labels in layer.values() for label in labels]
    best = min(finals, key=lambda label: label.state[3])
    runs: list[Run] = []
    node: _Label | None = best
    while node is not None and node.parent is not None:
        runs.append(Run(node.klass, node.cut, 1))
        node = node.parent
    return runs[::-1]


def solve_bf_problem(problem: OffloadProblem, prune: bool = True) -> OffloadResult:
    settings = problem.settings
    model = settings.compute_model
    paths = settings.bf_max_paths
    start, _, _ = search(problem, mw_grid, paths, prune)  # MW over the same grids: the first incumbent
    best, searched, skipped = search(problem, bf_runs, paths, prune, start)
    costs = problem.prefix(best.tau).grid_costs(best.grid)
    order, cuts = expand_runs(costs, best.runs)
    return fl_result(problem, "offload-bf", model, best.tau, best.grid, order, cuts, searched, skipped)


def solve_bf(graph: LayerGraph, cluster: Cluster, settings: OffloadSettings | None = None) -> OffloadResult:
    """The exact optimum over every τ, grid with at most `bf_max_paths` paths, order and cut vector."""
    return solve_bf_problem(OffloadProblem(graph, cluster, settings))
