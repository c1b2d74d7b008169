"""Lower bounds on the makespan of every grid of one τ at once, so the searches can skip grids that cannot win.

Whatever the order and the cuts, with T = F + post + return (`schedule.py`):

- every path passes the end device, the uplink and the server in turn, so
  F >= max over paths of min_o (a + b + e + d)   (both models);
- the uplink serves one path at a time: F >= Σ_paths min_o b   (both models);
- under `sequential` the end device and the server do too, so
  F >= max(Σa, Σb, Σe) >= Σ_paths min_o (λ_a a + λ_b b + λ_e e) for any
  weights λ >= 0 summing to 1 (a few fixed λ are tried).

A path's cost depends only on its (row class, column class), so the sums
over the paths of every grid are products of class-count matrices with one
matrix over class pairs, and the maxima are maxima over the classes present.
"""

from __future__ import annotations

import numpy as np

from edgepart.planner.offload.costs import PrefixCosts
from edgepart.planner.offload.settings import ComputeModel

# (λ_a, λ_b, λ_e) for the sequential model's resource bound; (0, 1, 0) is the uplink bound of both models
WEIGHTS = ((0.0, 1.0, 0.0), (1 / 3, 1 / 3, 1 / 3), (0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5),
           (0.25, 0.5, 0.25), (0.2, 0.6, 0.2), (0.4, 0.4, 0.2), (0.2, 0.4, 0.4))


def _counts(of_strip: tuple[np.ndarray, ...], classes: int) -> np.ndarray:
    """(parts, classes): how many strips of each class a split into 1, 2, ... parts has."""
    return np.stack([np.bincount(s, minlength=classes) for s in of_strip]).astype(float)


def grid_lower_bounds(prefix: PrefixCosts, model: ComputeModel) -> np.ndarray:
    """[P_h - 1, P_w - 1]: a lower bound on the makespan of the P_h x P_w grid, any order and cuts."""
    pairs = prefix.pairs
    rows, cols = prefix.row_table, prefix.col_table
    n_rows = _counts(rows.of_strip, rows.spans.shape[0])
    n_cols = _counts(cols.of_strip, cols.spans.shape[0])
    a, b, e = pairs.local, pairs.uplink, pairs.server
    delay = np.zeros(prefix.tau + 1)
    delay[: prefix.tau] = prefix.problem.fuse_message_s
    # the longest single path
    path = (a + b + e + delay).min(axis=2)
    present_cols = n_cols > 0
    longest = np.empty((n_rows.shape[0], n_cols.shape[0]))
    for ph in range(n_rows.shape[0]):
        row_max = path[n_rows[ph] > 0].max(axis=0)
        longest[ph] = np.where(present_cols, row_max[None, :], -np.inf).max(axis=1)
    bound = longest
    for weights in WEIGHTS if model == "sequential" else WEIGHTS[:1]:
        la, lb, le = weights
        per_pair = (la * a + lb * b + le * e).min(axis=2)
        bound = np.maximum(bound, n_rows @ per_pair @ n_cols.T)
    problem = prefix.problem
    return bound + problem.post_s(prefix.tau) + problem.return_s
