"""Design-space exploration for accuracy-aware data partitioning (SOLVERS.md §8, Taufique et al. ASP-DAC'24).

A request of n images is split by image across nodes; each node runs one
variant of the model or is off. For a configuration (a variant or off per
node) the best shares are proportional to throughput, x_n = θ_n / Σθ, so

    throughput  Θ = Σ_n θ[n][m_n]                 (images/s, nodes in parallel)
    accuracy    A = Σ_n x_n · acc[m_n] = Q / Θ    with Q = Σ_n θ[n][m_n] · acc[m_n]
    power       P = Σ_{n on} π_n                  (W, optional per-device figure)

and a request's image counts are n · x_n rounded by largest remainder. Its
completion time T adds the links (`completion_time`).

Objectives are held exactly: θ as integer micro-images/s, accuracy as integer
parts per million, power as integer milliwatts, so Θ, Q and P are integer sums
and A is compared as the rational Q/Θ (cross-multiplied). Configurations that
tie on every objective are one point of the front, represented by the
lexicographically smallest choice tuple (off = -1 sorts first).

The Pareto front over (Θ max, A max, P min) is found exactly by a dynamic
program over nodes (`pareto_front`) [R]. A partial configuration s over nodes
0..k may be dropped when another one, s*, beats it for every completion R of
the remaining nodes. Since A of the whole is (Q_s + Q_R)/(Θ_s + Θ_R), that
holds when Θ* ≥ Θ, P* ≤ P, and, with Q_R ≤ a·Θ_R (a: the best accuracy left)
and Θ_R ≤ Θ̄ (the most the remaining nodes can add),

    C0 ≥ 0  and  C0 + Θ̄·(ΔQ − a·ΔΘ) ≥ 0,   C0 = Q*·Θ − Q·Θ*,  Δ = s* − s,

because Q_total·Θ_total' − Q_total'·Θ_total = C0 + Θ_R·ΔQ − Q_R·ΔΘ is linear
in (Θ_R, Q_R) and smallest at a vertex of {0 ≤ Θ_R ≤ Θ̄, 0 ≤ Q_R ≤ a·Θ_R}:
(0, 0) or (Θ̄, a·Θ̄). That is, s* is at least as accurate as s alone and
when both are completed by the best imaginable rest. Identical partial sums keep the smallest choice tuple. The
brute force (`brute_force_front`) enumerates all (|M|+1)^|N| configurations and
is what the tests compare against.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Literal

import numpy as np

from edgepart.errors import EdgepartError
from edgepart.planner.cluster import LOCAL, Link

OFF = -1  # a node's choice when it runs no variant
THROUGHPUT_UNIT = 1e-6  # θ held as integer micro-images per second
ACCURACY_UNIT = 1e-6  # accuracy held as integer parts per million
POWER_UNIT = 1e-3  # power held as integer milliwatts
MAX_TABLE_ROWS = 200_000  # `dse_table` lists every configuration; beyond this use `pareto_front`

Medium = Literal["switched", "shared"]


class DseError(EdgepartError, ValueError):
    """A design-space problem that cannot be explored; the message names the field at fault."""


@dataclass(frozen=True)
class Variant:
    name: str
    accuracy: float  # top-1, a fraction

    def __post_init__(self) -> None:
        if not 0 <= self.accuracy <= 1:
            raise DseError(f"variant {self.name!r}: accuracy must be in [0, 1], got {self.accuracy}")


@dataclass(frozen=True)
class Node:
    name: str
    throughput: tuple[float | None, ...]  # θ per variant (images/s); None: that variant cannot run here
    power_w: float = 0.0  # drawn while it runs a variant; off nodes draw none
    link_in: Link = LOCAL  # dispatcher -> node
    link_out: Link = LOCAL  # node -> dispatcher
    local: bool = False  # the dispatcher's own device: its messages cross no NIC

    def __post_init__(self) -> None:
        for m, theta in enumerate(self.throughput):
            if theta is not None and not (theta > 0 and math.isfinite(theta)):
                raise DseError(f"node {self.name!r}: throughput[{m}] must be a finite number > 0 or None, "
                               f"got {theta}")
        if not self.power_w >= 0:
            raise DseError(f"node {self.name!r}: power_w must be >= 0, got {self.power_w}")


@dataclass(frozen=True)
class DseProblem:
    variants: tuple[Variant, ...]
    nodes: tuple[Node, ...]
    image_bytes: float = 0.0  # sent to a node per image
    result_bytes: float = 0.0  # returned per image
    medium: Medium = "switched"

    def __post_init__(self) -> None:
        if not self.variants:
            raise DseError("variants: need at least one variant")
        if not self.nodes:
            raise DseError("nodes: need at least one node")
        for label, names in (("variants", [v.name for v in self.variants]), ("nodes", [n.name for n in self.nodes])):
            dupes = sorted({x for x in names if names.count(x) > 1})
            if dupes:
                raise DseError(f"{label}: duplicate names {dupes}")
        for node in self.nodes:
            if len(node.throughput) != len(self.variants):
                raise DseError(f"node {node.name!r}: {len(node.throughput)} throughputs for "
                               f"{len(self.variants)} variants")
            if all(t is None for t in node.throughput):
                raise DseError(f"node {node.name!r}: no variant can run there (every throughput is None)")
            for m, theta in enumerate(node.throughput):
                if theta is not None and round(theta / THROUGHPUT_UNIT) < 1:
                    raise DseError(f"node {node.name!r}: throughput[{m}] = {theta} images/s is below the "
                                   f"resolution {THROUGHPUT_UNIT}")
        if self.image_bytes < 0 or self.result_bytes < 0:
            raise DseError("image_bytes and result_bytes must be >= 0")

    @cached_property
    def theta_q(self) -> tuple[tuple[int | None, ...], ...]:
        return tuple(tuple(None if t is None else round(t / THROUGHPUT_UNIT) for t in n.throughput)
                     for n in self.nodes)

    @cached_property
    def accuracy_q(self) -> tuple[int, ...]:
        return tuple(round(v.accuracy / ACCURACY_UNIT) for v in self.variants)

    @cached_property
    def power_q(self) -> tuple[int, ...]:
        return tuple(round(n.power_w / POWER_UNIT) for n in self.nodes)

    @property
    def configuration_count(self) -> int:
        """Configurations with at least one node on (the all-off one answers nothing)."""
        return math.prod(1 + sum(t is not None for t in n.throughput) for n in self.nodes) - 1

    def options(self, node: int) -> tuple[tuple[int, int, int, int], ...]:
        """(choice, θ, θ·acc, power) of each option of a node, off first, in exact units."""
        result = [(OFF, 0, 0, 0)]
        for m, theta in enumerate(self.theta_q[node]):
            if theta is not None:
                result.append((m, theta, theta * self.accuracy_q[m], self.power_q[node]))
        return tuple(result)

    def score(self, choices: Sequence[int]) -> Score:
        if len(choices) != len(self.nodes):
            raise DseError(f"a configuration needs one choice per node ({len(self.nodes)}), got {len(choices)}")
        theta = quality = power = 0
        for n, m in enumerate(choices):
            if m == OFF:
                continue
            if not 0 <= m < len(self.variants) or self.theta_q[n][m] is None:
                raise DseError(f"node {self.nodes[n].name!r}: choice {m} is not a variant that runs there")
            t = self.theta_q[n][m]
            assert t is not None
            theta += t
            quality += t * self.accuracy_q[m]
            power += self.power_q[n]
        return Score(theta, quality, power)

    def describe(self, choices: Sequence[int]) -> tuple[str | None, ...]:
        """Variant name per node, None for off."""
        return tuple(None if m == OFF else self.variants[m].name for m in choices)

    def weights(self, choices: Sequence[int]) -> tuple[int, ...]:
        """Throughput-proportional share weights (exact units) of a configuration."""
        return tuple(0 if m == OFF else self.theta_q[n][m] or 0 for n, m in enumerate(choices))


@dataclass(frozen=True)
class Score:
    """A configuration's objectives in exact units: Θ (µimg/s), Q = Σθ·acc (µimg/s·ppm), P (mW)."""

    throughput_q: int
    quality_q: int
    power_q: int

    @property
    def throughput(self) -> float:
        return self.throughput_q * THROUGHPUT_UNIT

    @property
    def accuracy(self) -> float:
        return self.quality_q / self.throughput_q * ACCURACY_UNIT if self.throughput_q else 0.0

    @property
    def accuracy_exact(self) -> Fraction:
        return Fraction(self.quality_q, self.throughput_q) if self.throughput_q else Fraction(0)

    @property
    def power_w(self) -> float:
        return self.power_q * POWER_UNIT

    def accuracy_cmp(self, other: Score) -> int:
        """-1, 0, 1 as this accuracy is below, equal to, above the other's (exact)."""
        left, right = self.quality_q * other.throughput_q, other.quality_q * self.throughput_q
        return (left > right) - (left < right)

    def dominates(self, other: Score) -> bool:
        """At least as good on Θ, A and P, and not the same point."""
        return (self.throughput_q >= other.throughput_q and self.power_q <= other.power_q
                and self.accuracy_cmp(other) >= 0 and self != other)


@dataclass(frozen=True)
class Configuration:
    choices: tuple[int, ...]  # variant index per node, OFF for off
    score: Score


def _order_key(c: Configuration) -> tuple[int, Fraction, int, tuple[int, ...]]:
    return (c.score.throughput_q, -c.score.accuracy_exact, c.score.power_q, c.choices)


@dataclass(frozen=True)
class Front:
    """The Pareto front over (Θ max, A max, P min), sorted by throughput ascending."""

    problem: DseProblem
    configurations: tuple[Configuration, ...]
    examined: int  # configurations (brute force) or partial configurations (dynamic program) looked at

    def __len__(self) -> int:
        return len(self.configurations)

    @cached_property
    def throughputs(self) -> tuple[int, ...]:
        return tuple(c.score.throughput_q for c in self.configurations)

    @cached_property
    def best_from(self) -> tuple[int, ...]:
        """best_from[i]: index of the most accurate configuration among i.. (ties: lower power, then higher
        throughput, then smaller choices): answers 'most accurate with Θ ≥ target' in O(log |front|)."""
        best: list[int] = [0] * len(self.configurations)
        for i in range(len(self.configurations) - 1, -1, -1):
            if i == len(self.configurations) - 1 or _more_accurate(self.configurations[i],
                                                                   self.configurations[best[i + 1]]):
                best[i] = i
            else:
                best[i] = best[i + 1]
        return tuple(best)

    def most_accurate_reaching(self, throughput: float) -> Configuration | None:
        """The most accurate configuration with Θ ≥ `throughput` (ties to lower power), None if none reaches it."""
        target = math.ceil(round(throughput / THROUGHPUT_UNIT, 6))
        i = bisect.bisect_left(self.throughputs, target)
        return self.configurations[self.best_from[i]] if i < len(self.configurations) else None


def _more_accurate(a: Configuration, b: Configuration) -> bool:
    """a before b: higher accuracy, then lower power, then higher throughput, then smaller choices."""
    order = a.score.accuracy_cmp(b.score)
    if order:
        return order > 0
    if a.score.power_q != b.score.power_q:
        return a.score.power_q < b.score.power_q
    if a.score.throughput_q != b.score.throughput_q:
        return a.score.throughput_q > b.score.throughput_q
    return a.choices < b.choices


_Partial = tuple[int, int, int, tuple[int, ...]]  # (Θ, Q, P, choices)


def _dedupe(items: Iterable[_Partial]) -> list[_Partial]:
    """One partial per (Θ, Q, P): the smallest choice tuple."""
    best: dict[tuple[int, int, int], tuple[int, ...]] = {}
    for theta, quality, power, choices in items:
        key = (theta, quality, power)
        kept = best.get(key)
        if kept is None or choices < kept:
            best[key] = choices
    return [(t, q, p, c) for (t, q, p), c in best.items()]


def _sorted(items: Iterable[_Partial]) -> list[_Partial]:
    """Θ descending, then A descending (for equal Θ, that is Q descending: exact), then P ascending."""
    return sorted(items, key=lambda s: (-s[0], -s[1], s[2]))


def _plain_front(items: list[_Partial]) -> list[_Partial]:
    """Non-dominated points of (Θ, A, P), all with Θ > 0 and distinct, in O(k log k): a sweep by descending Θ
    over a staircase of (P ascending, A strictly ascending) of the points kept so far."""
    kept: list[_Partial] = []
    stair_p: list[int] = []
    stair: list[tuple[int, int]] = []  # (Q, Θ) of each step: A = Q/Θ, compared by cross-multiplying

    def at_least(x: tuple[int, int], quality: int, theta: int) -> bool:
        return x[0] * theta >= quality * x[1]

    for item in _sorted(items):
        theta, quality, power = item[0], item[1], item[2]
        i = bisect.bisect_right(stair_p, power) - 1
        if i >= 0 and at_least(stair[i], quality, theta):
            continue  # a point with Θ ≥, P ≤ and A ≥ exists, and it is not this one (deduplicated)
        kept.append(item)
        j = k = i + 1
        while k < len(stair_p) and at_least((quality, theta), *stair[k]):
            k += 1
        stair_p[j:k] = [power]
        stair[j:k] = [(quality, theta)]
    return kept


_BLOCK = 256  # partials screened together by `_robust_prune`


def _robust_prune(items: list[_Partial], rest_theta: int, rest_accuracy: int) -> list[_Partial]:
    """Drop partials that another one beats for every completion (module docstring). Θ = 0 partials stay.

    With R = `rest_theta` and a = `rest_accuracy`, t beats s when Θ_t ≥ Θ_s, P_t ≤ P_s, and t is at least as
    accurate both alone and completed by (R, a·R), the two vertices where the difference is smallest. That
    is dominance in four coordinates, so it is transitive: s goes when any partial before it in the order
    (Θ descending) beats it, kept or not. Floats of both accuracies screen the pairs in blocks (numpy); a
    pair that passes the screen, with a margin for rounding, is confirmed in exact integers.
    """
    zero = [s for s in items if s[0] == 0]
    ordered = _sorted(s for s in items if s[0] > 0)
    count = len(ordered)
    theta = np.array([s[0] for s in ordered], dtype=np.float64)
    quality = np.array([s[1] for s in ordered], dtype=np.float64)
    power = np.array([s[2] for s in ordered], dtype=np.float64)
    alone = quality / theta
    completed = (quality + float(rest_accuracy) * rest_theta) / (theta + rest_theta)
    alone_floor, completed_floor = alone * (1 - 1e-9), completed * (1 - 1e-9)

    def beats(t: _Partial, s: _Partial) -> bool:
        c0 = t[1] * s[0] - s[1] * t[0]
        return t[2] <= s[2] and c0 >= 0 and \
            c0 + rest_theta * ((t[1] - s[1]) - rest_accuracy * (t[0] - s[0])) >= 0

    kept: list[int] = []
    for begin in range(0, count, _BLOCK):
        block = range(begin, min(begin + _BLOCK, count))
        before = np.array(kept, dtype=np.int64)
        # candidates[i, j]: partial j (kept, before the block; or earlier in the block) may beat partial i
        within = np.arange(block.start, block.stop)
        rows = slice(block.start, block.stop)
        against = np.concatenate([before, within])
        screen = ((power[against][None, :] <= power[rows][:, None])
                  & (alone[against][None, :] >= alone_floor[rows][:, None])
                  & (completed[against][None, :] >= completed_floor[rows][:, None]))
        screen[:, len(before):] &= np.tri(len(within), k=-1, dtype=bool)
        for row, i in enumerate(block):
            if not any(beats(ordered[int(j)], ordered[i]) for j in against[np.flatnonzero(screen[row])]):
                kept.append(i)
    return zero + [ordered[i] for i in kept]


def _front(problem: DseProblem, items: list[_Partial], examined: int) -> Front:
    configurations = tuple(sorted((Configuration(c, Score(t, q, p)) for t, q, p, c in
                                   _plain_front(_dedupe(s for s in items if s[0] > 0))), key=_order_key))
    return Front(problem, configurations, examined)


def pareto_front(problem: DseProblem) -> Front:
    """The exact Pareto front by the dynamic program over nodes (module docstring)."""
    count = len(problem.nodes)
    options = [problem.options(n) for n in range(count)]
    # what nodes k+1.. can still add: the most throughput, and the best accuracy among variants that run there
    rest_theta = [0] * count
    rest_accuracy = [0] * count
    for k in range(count - 2, -1, -1):
        later = options[k + 1]
        rest_theta[k] = rest_theta[k + 1] + max(o[1] for o in later)
        rest_accuracy[k] = max([rest_accuracy[k + 1]] + [problem.accuracy_q[o[0]] for o in later if o[0] != OFF])
    partials: list[_Partial] = [(0, 0, 0, ())]
    examined = 0
    for k in range(count):
        expanded = [(t + ot, q + oq, p + op, (*c, choice))
                    for t, q, p, c in partials for choice, ot, oq, op in options[k]]
        examined += len(expanded)
        if k < count - 1:
            partials = _robust_prune(_dedupe(expanded), rest_theta[k], rest_accuracy[k])
        else:
            partials = expanded
    return _front(problem, partials, examined)


def all_configurations(problem: DseProblem) -> Iterable[Configuration]:
    """Every configuration with at least one node on, in lexicographic order of choices."""
    options = [problem.options(n) for n in range(len(problem.nodes))]
    for combo in itertools.product(*options):
        theta = sum(o[1] for o in combo)
        if theta:
            yield Configuration(tuple(o[0] for o in combo),
                                Score(theta, sum(o[2] for o in combo), sum(o[3] for o in combo)))


def brute_force_front(problem: DseProblem) -> Front:
    """The Pareto front by enumerating all configurations (the reference the dynamic program is checked
    against)."""
    items = [(c.score.throughput_q, c.score.quality_q, c.score.power_q, c.choices)
             for c in all_configurations(problem)]
    return _front(problem, items, len(items))


# ---------------------------------------------------------------- shares, image counts, completion time


def image_counts(weights: Sequence[int], images: int) -> tuple[int, ...]:
    """Split `images` in proportion to integer `weights` by largest remainder (ties to the lower index):
    counts sum to `images` exactly, and a zero weight gets no image."""
    if images < 0:
        raise DseError(f"images must be >= 0, got {images}")
    if any(w < 0 for w in weights):
        raise DseError(f"weights must be >= 0, got {list(weights)}")
    total = sum(weights)
    if total <= 0:
        raise DseError("at least one weight must be positive")
    counts = [images * w // total for w in weights]
    remainders = [images * w % total for w in weights]
    left = images - sum(counts)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        counts[i] += 1
    return tuple(counts)


def shares(weights: Sequence[int]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(w / total for w in weights)


@dataclass(frozen=True)
class PartTiming:
    node: int
    images: int
    arrive_s: float  # input delivered
    done_s: float  # computed
    back_s: float  # result delivered to the dispatcher


def dispatch_order(problem: DseProblem, choices: Sequence[int], counts: Sequence[int]) -> tuple[int, ...]:
    """Nodes with images in the order their inputs are sent: longest compute-plus-return first (Jackson's rule,
    optimal for one sending queue followed by independent nodes), ties to the lower index."""
    def tail(n: int) -> float:
        theta = problem.nodes[n].throughput[choices[n]]
        assert theta is not None
        return counts[n] / theta + problem.nodes[n].link_out.time(counts[n] * problem.result_bytes)

    return tuple(sorted((n for n in range(len(counts)) if counts[n] > 0), key=lambda n: (-tail(n), n)))


def timeline(problem: DseProblem, choices: Sequence[int], counts: Sequence[int],
             order: Sequence[int] | None = None) -> tuple[PartTiming, ...]:
    """When each part of one request arrives, is computed and is answered, starting from idle [R].

    Inputs leave the dispatcher one after another (its NIC's send queue; `dispatch_order`), results come
    back one after another in order of completion (its receive queue); on a `shared` medium both use the
    one queue, so results wait for the last input. The dispatcher's own node (`local`) uses no queue: its
    messages cost the link's alpha (software time) only.
    """
    sequence = dispatch_order(problem, choices, counts) if order is None else tuple(order)
    send_free = 0.0
    arrived: dict[int, float] = {}
    for n in sequence:
        node = problem.nodes[n]
        cost = node.link_in.time(counts[n] * problem.image_bytes)
        if node.local:
            arrived[n] = cost
        else:
            send_free += cost
            arrived[n] = send_free
    done = {}
    for n in sequence:
        theta = problem.nodes[n].throughput[choices[n]]
        assert theta is not None
        done[n] = arrived[n] + counts[n] / theta
    receive_free = send_free if problem.medium == "shared" else 0.0
    parts = []
    for n in sorted(sequence, key=lambda n: (done[n], n)):
        node = problem.nodes[n]
        cost = node.link_out.time(counts[n] * problem.result_bytes)
        if node.local:
            back = done[n] + cost
        else:
            receive_free = max(receive_free, done[n]) + cost
            back = receive_free
        parts.append(PartTiming(n, counts[n], arrived[n], done[n], back))
    return tuple(sorted(parts, key=lambda p: p.node))


def completion_time(problem: DseProblem, choices: Sequence[int], counts: Sequence[int]) -> float:
    """Seconds from dispatch to the last result, for one request split as `counts` (0 when no image)."""
    parts = timeline(problem, choices, counts)
    return max((p.back_s for p in parts), default=0.0)


@dataclass(frozen=True)
class TableRow:
    """One configuration of the DSE table, for a request of `images` images."""

    variants: tuple[str | None, ...]  # per node, None for off
    shares: tuple[float, ...]
    counts: tuple[int, ...]
    throughput: float
    accuracy: float
    power_w: float
    completion_s: float


def table_row(problem: DseProblem, configuration: Configuration, images: int) -> TableRow:
    weights = problem.weights(configuration.choices)
    counts = image_counts(weights, images)
    return TableRow(problem.describe(configuration.choices), shares(weights), counts, configuration.score.throughput,
                    configuration.score.accuracy, configuration.score.power_w,
                    completion_time(problem, configuration.choices, counts))


def dse_table(problem: DseProblem, images: int) -> tuple[TableRow, ...]:
    """Every configuration (a variant or off per node) for a request of `images` images."""
    if problem.configuration_count > MAX_TABLE_ROWS:
        raise DseError(f"{len(problem.nodes)} nodes x {len(problem.variants)} variants make "
                       f"{problem.configuration_count} configurations, more than a table lists "
                       f"({MAX_TABLE_ROWS}); use pareto_front, which finds the front without listing them")
    return tuple(table_row(problem, c, images) for c in all_configurations(problem))
