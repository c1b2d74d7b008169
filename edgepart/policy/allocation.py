"""AR-MDI layer allocation (SOLVERS.md §7, seed 001 eq. 1): who runs which layers of one source's images.

Worker n's share of the model's W parameters is ρ_n = W·(1/γ_n) / Σ_m(1/γ_m), with
γ_n its per-parameter compute delay. Shares become contiguous ranges of the
model's units (the LayerGraph's user-visible layers, bounded by cut points, so
one tensor crosses each boundary) by rounding cumulatively along the ring
starting at the source [R]:

    R_n = Σ_{m ≤ n} ρ_m ;  P(b) = Σ_{u < b} W_u ;  b_0 = 0
    b_n = argmin_{b ∈ [b_{n−1}, U]} |P(b) − R_n|   (ties: the smaller b) ;  b_N = U

Worker n runs units [b_{n−1}, b_n): the ranges are contiguous, cover every
unit once, and |P(b_n) − R_n| ≤ max_u W_u. A worker with an empty range only
forwards; the one that runs the last unit sends the result back to the source.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from edgepart.graph.layer_graph import LayerGraph
from edgepart.policy.errors import PolicyError


@dataclass(frozen=True)
class UnitTable:
    """The model as AR-MDI sees it: unit boundaries (layer indices) and each unit's parameter count W_u."""

    boundaries: tuple[int, ...]  # layer index where each unit starts, then the layer count: U + 1 entries
    params: tuple[int, ...]  # W_u per unit (parameters and buffers)

    def __post_init__(self) -> None:
        if len(self.boundaries) != len(self.params) + 1 or not self.params:
            raise PolicyError(f"unit table: {len(self.params)} units need {len(self.params) + 1} boundaries, "
                                  f"got {len(self.boundaries)}")
        if any(w < 0 for w in self.params):
            raise PolicyError(f"unit table: parameter counts must be >= 0, got {list(self.params)}")
        if any(a >= b for a, b in itertools.pairwise(self.boundaries)):
            raise PolicyError(f"unit table: boundaries must increase, got {list(self.boundaries)}")

    @staticmethod
    def of(graph: LayerGraph) -> UnitTable:
        units = graph.units
        return UnitTable((units[0].start, *(u.stop for u in units)),
                         tuple(sum(layer.params for layer in graph.layers[u.start:u.stop]) for u in units))

    @property
    def count(self) -> int:
        return len(self.params)

    @property
    def total(self) -> int:
        return sum(self.params)

    def prefix(self) -> tuple[int, ...]:
        """P(b) for b in [0, U]."""
        return (0, *itertools.accumulate(self.params))

    def layers(self, start_unit: int, stop_unit: int) -> tuple[int, int]:
        """Layer range [start, stop) of units [start_unit, stop_unit)."""
        return self.boundaries[start_unit], self.boundaries[stop_unit]

    def params_of(self, start_unit: int, stop_unit: int) -> int:
        return sum(self.params[start_unit:stop_unit])


def parameter_shares(gamma: Sequence[float], total: float) -> tuple[float, ...]:
    """ρ_n = total·(1/γ_n) / Σ_m (1/γ_m): faster workers (smaller γ) get more parameters."""
    if not gamma:
        raise PolicyError("gamma: need at least one worker")
    for i, g in enumerate(gamma):
        if not g > 0 or g == float("inf"):
            raise PolicyError(f"gamma[{i}]: per-parameter delay must be finite and > 0, got {g}")
    inverse = [1.0 / g for g in gamma]
    whole = sum(inverse)
    return tuple(total * v / whole for v in inverse)


def round_cumulative(prefix: Sequence[int], shares: Sequence[float]) -> tuple[int, ...]:
    """Cut positions b_0 = 0 ≤ b_1 ≤ … ≤ b_N = U from prefix sums P(0..U) and shares ρ_1..ρ_N (module docstring)."""
    units = len(prefix) - 1
    cuts = [0]
    target = 0.0
    for share in shares[:-1]:
        target += share
        low = cuts[-1]
        # P is non-decreasing: the closest values are P(above), the first b with P(b) >= target, and P(above − 1)
        above = min(bisect.bisect_left(prefix, target, lo=low), units)
        b = above
        if above > low and abs(prefix[above - 1] - target) <= abs(prefix[above] - target):
            b = bisect.bisect_left(prefix, prefix[above - 1], lo=low)  # ties: the smallest such b
        cuts.append(b)
    cuts.append(units)
    return tuple(cuts)


@dataclass(frozen=True)
class Share:
    """One worker's part of one source's images: units [start_unit, stop_unit) = layers [start, stop)."""

    worker: str
    start_unit: int
    stop_unit: int
    start: int
    stop: int
    params: int

    @property
    def empty(self) -> bool:
        return self.start_unit == self.stop_unit


@dataclass(frozen=True)
class RingAllocation:
    """Where each of one source's images goes: the ring from the source, each worker's share in ring order."""

    source: str
    shares: tuple[Share, ...]  # ring order starting at the source; together they cover every unit once

    def share_of(self, worker: str) -> Share:
        try:
            return self._by_worker[worker]
        except KeyError:
            raise PolicyError(f"worker {worker!r} is not on the ring {[s.worker for s in self.shares]}") from None

    @cached_property
    def _by_worker(self) -> dict[str, Share]:
        return {share.worker: share for share in self.shares}

    @cached_property
    def _next(self) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        following: str | None = None
        for share in reversed(self.shares):
            result[share.worker] = following
            if not share.empty:
                following = share.worker
        return result

    @property
    def holders(self) -> tuple[Share, ...]:
        """The non-empty shares in ring order: the workers an image is computed on."""
        return tuple(s for s in self.shares if not s.empty)

    @property
    def last(self) -> str:
        """The worker that runs the last layers and sends the result to the source."""
        return self.holders[-1].worker

    def next_holder(self, worker: str) -> str | None:
        """The first worker after `worker` on the ring that runs layers (None when `worker` runs the last ones)."""
        try:
            return self._next[worker]
        except KeyError:
            raise PolicyError(f"worker {worker!r} is not on the ring {[s.worker for s in self.shares]}") from None

    def path(self, worker: str) -> tuple[str, ...]:
        """Workers an activation leaving `worker` crosses to reach the next holder (relays, then the holder)."""
        order = [s.worker for s in self.shares]
        target = self.next_holder(worker)
        if target is None:
            return ()
        return tuple(order[order.index(worker) + 1:order.index(target) + 1])

    @property
    def cuts(self) -> tuple[int, ...]:
        """Layer indices where the image changes hands, in ring order (b_1 … b_{N−1} as layers)."""
        return tuple(s.stop for s in self.shares[:-1])


def ring_from(ring: Sequence[str], source: str) -> tuple[str, ...]:
    """The ring rotated to start at `source`."""
    if source not in ring:
        raise PolicyError(f"source {source!r} is not on the ring {list(ring)}")
    start = list(ring).index(source)
    return (*ring[start:], *ring[:start])


def ar_mdi_allocation(table: UnitTable, gamma: Mapping[str, float], ring: Sequence[str],
                      source: str) -> RingAllocation:
    """AR-MDI for one source: shares from γ, rounded to unit ranges along the ring starting at `source`."""
    if not ring:
        raise PolicyError("ring: need at least one worker")
    if len(set(ring)) != len(ring):
        raise PolicyError(f"ring: workers must be distinct, got {list(ring)}")
    order = ring_from(ring, source)
    missing = [w for w in order if w not in gamma]
    if missing:
        raise PolicyError(f"gamma: no per-parameter delay for workers {missing}")
    shares = parameter_shares([gamma[w] for w in order], table.total)
    cuts = round_cumulative(table.prefix(), shares)
    return RingAllocation(source, tuple(
        Share(w, a, b, *table.layers(a, b), table.params_of(a, b))
        for w, a, b in zip(order, cuts, cuts[1:], strict=False)))
