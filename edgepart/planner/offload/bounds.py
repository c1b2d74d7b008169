"""Lower bounds on the makespan of every grid of one τ at once, so the searches can skip grids that cannot win.

Whatever the order and the cuts, with T = F + post + return (`schedule.py`):

- every path passes the end device, the uplink and the server in turn, so
  F >= max over paths of min_o (a + b + e + d)   (both models);
- the uplink serves one path at a time and starts after the first local part,
  so F >= min_p a_p + Σ_p b_p; with cuts free, for any θ >= 0 the paths either
  all have a_p >= θ or one has a_p < θ, and since a_p(o) grows with o,
  min over cuts >= min_i (θ_i + Σ_p min_{o: a_p(o) >= θ_i} b_p(o)) over
  breakpoints 0 = θ_0 < θ_1 < ... (a value of θ between two breakpoints is
  bounded by the lower one)   (both models);
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

# (λ_a, λ_b, λ_e) for the sequential model's resource bound
WEIGHTS = ((1 / 3, 1 / 3, 1 / 3), (0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5),
           (0.25, 0.5, 0.25), (0.2, 0.6, 0.2), (0.4, 0.4, 0.2), (0.2, 0.4, 0.4))


def _counts(of_strip: tuple[np.ndarray, ...], classes: int) -> np.ndarray:
    """(parts, classes): how many strips of each class a split into 1, 2, ... parts has."""
    return np.stack([np.bincount(s, minlength=classes) for s in of_strip]).astype(float)


def _uplink_bound(a: np.ndarray, b: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> np.ndarray:
    """min_i (θ_i + Σ_p min_{o: a_p(o) >= θ_i} b_p(o)) per grid, breakpoints θ_i spread over the a values."""
    top = float(a[:, :, -1].max())
    thresholds = [0.0, *(top * 2.0 ** -k for k in range(12, -1, -1))] if top > 0 else [0.0]
    # b's suffix minima: the cheapest transfer among cuts o' >= o (a grows with o)
    suffix = np.minimum.accumulate(b[:, :, ::-1], axis=2)[:, :, ::-1]
    best = np.full((n_rows.shape[0], n_cols.shape[0]), np.inf)
    for theta in thresholds:
        reachable = a >= theta
        first = np.argmax(reachable, axis=2)  # the first cut whose a reaches θ
        per_pair = np.take_along_axis(suffix, first[:, :, None], axis=2)[:, :, 0]
        if not reachable.any(axis=2).all():
            # some tile class never reaches θ: every grid with such a tile has min_p a_p < θ
            per_pair = np.where(reachable.any(axis=2), per_pair, np.inf)
        total = n_rows @ np.where(np.isfinite(per_pair), per_pair, 0.0) @ n_cols.T
        unreachable = n_rows @ (~np.isfinite(per_pair)).astype(float) @ n_cols.T > 0
        best = np.minimum(best, np.where(unreachable, np.inf, theta + total))
    return best


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
    bound = np.maximum(longest, _uplink_bound(a, b, n_rows, n_cols))
    if model == "sequential":
        for la, lb, le in WEIGHTS:
            per_pair = (la * a + lb * b + le * e).min(axis=2)
            bound = np.maximum(bound, n_rows @ per_pair @ n_cols.T)
    problem = prefix.problem
    result: np.ndarray = bound + problem.post_s(prefix.tau) + problem.return_s
    return result
