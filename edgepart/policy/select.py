"""Choosing a configuration: the accuracy-aware policy and the baselines it is compared with.

Policy (SOLVERS.md §8) [R]:
- a throughput target Θ*: the most accurate configuration with Θ ≥ Θ*, ties to lower power (then higher
  Θ); if none reaches Θ*, the highest Θ, reported as infeasible;
- an accuracy target A*: the least completion time for the request among front configurations with A ≥ A*,
  ties to lower power; if none reaches A*, the most accurate, reported as infeasible.
The first is exact over all configurations (its optimum is on the Pareto front, and the front answers it in
O(log |front|)); the second searches the front, since T depends on the request's size and links.

Baselines (all through the same dispatcher): equal split with the most accurate variant, θ-proportional split
with the most accurate variant, the fastest variant everywhere (θ-proportional), the best single node with
the most accurate variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from edgepart.policy.dse import (
    ACCURACY_UNIT,
    OFF,
    POWER_UNIT,
    Configuration,
    DseError,
    DseProblem,
    Front,
    completion_time,
    image_counts,
    pareto_front,
)


@dataclass(frozen=True)
class ThroughputTarget:
    images_per_s: float

    def __post_init__(self) -> None:
        if not self.images_per_s > 0:
            raise DseError(f"throughput target must be > 0 images/s, got {self.images_per_s}")

    def describe(self) -> str:
        return f"throughput >= {self.images_per_s:g} images/s"


@dataclass(frozen=True)
class AccuracyTarget:
    accuracy: float

    def __post_init__(self) -> None:
        if not 0 <= self.accuracy <= 1:
            raise DseError(f"accuracy target must be in [0, 1], got {self.accuracy}")

    def describe(self) -> str:
        return f"accuracy >= {self.accuracy:g}"


Target = ThroughputTarget | AccuracyTarget


@dataclass(frozen=True)
class Assignment:
    """What the dispatcher does: a variant (or OFF) per node and integer share weights (0 for off)."""

    choices: tuple[int, ...]
    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.choices) != len(self.weights):
            raise DseError(f"assignment: {len(self.choices)} choices but {len(self.weights)} weights")
        for n, (m, w) in enumerate(zip(self.choices, self.weights, strict=True)):
            if (m == OFF) != (w == 0) or w < 0:
                raise DseError(f"assignment: node {n} has choice {m} and weight {w}: a node is off exactly "
                               "when its weight is 0")
        if not any(self.weights):
            raise DseError("assignment: every node is off")


@dataclass(frozen=True)
class Selection:
    policy: str
    assignment: Assignment
    variants: tuple[str | None, ...]  # per node, None for off
    throughput: float  # predicted images/s of the stream under these shares
    accuracy: float  # predicted: Σ share · accuracy
    power_w: float
    feasible: bool
    note: str = ""


def assignment_metrics(problem: DseProblem, assignment: Assignment) -> tuple[float, float, float]:
    """(Θ, A, P) of any shares: Θ = min over nodes on of θ_n / x_n (the first node to saturate bounds the
    stream), A = Σ x_n acc_n, P = Σ power of the nodes on."""
    total = sum(assignment.weights)
    rate = None
    accuracy = Fraction(0)
    power = 0
    for n, (m, w) in enumerate(zip(assignment.choices, assignment.weights, strict=True)):
        if m == OFF:
            continue
        theta = problem.theta_q[n][m]
        if theta is None:
            raise DseError(f"node {problem.nodes[n].name!r}: variant {problem.variants[m].name!r} cannot run there")
        node_rate = Fraction(theta * total, w)
        rate = node_rate if rate is None else min(rate, node_rate)
        accuracy += Fraction(w * problem.accuracy_q[m], total)
        power += problem.power_q[n]
    assert rate is not None
    return float(rate) * 1e-6, float(accuracy) * 1e-6, power * POWER_UNIT


def _selection(problem: DseProblem, policy: str, assignment: Assignment, target: Target | None,
               images: int, note: str = "") -> Selection:
    throughput, accuracy, power = assignment_metrics(problem, assignment)
    feasible = True
    if isinstance(target, ThroughputTarget):
        feasible = throughput >= target.images_per_s * (1 - 1e-12)
    elif isinstance(target, AccuracyTarget):
        feasible = accuracy >= target.accuracy * (1 - 1e-12)
    return Selection(policy, assignment, problem.describe(assignment.choices), throughput, accuracy, power,
                     feasible, note)


def _dse_assignment(problem: DseProblem, c: Configuration) -> Assignment:
    return Assignment(c.choices, problem.weights(c.choices))


def select(front: Front, target: Target, images: int = 1) -> Selection:
    """The policy's choice from the Pareto front (module docstring); `images` is the request size that the
    accuracy mode's completion time is computed for."""
    problem = front.problem
    if not front.configurations:
        raise DseError("the front is empty: no node can run any variant")
    if isinstance(target, ThroughputTarget):
        chosen = front.most_accurate_reaching(target.images_per_s)
        if chosen is not None:
            return _selection(problem, "accuracy-aware", _dse_assignment(problem, chosen), target, images)
        top = max(front.configurations, key=lambda c: (c.score.throughput_q, c.score.accuracy_exact,
                                                        -c.score.power_q))
        note = (f"infeasible: {target.describe()} exceeds the most any configuration sustains "
                f"({top.score.throughput:.6g} images/s); running the fastest")
        return _selection(problem, "accuracy-aware", _dse_assignment(problem, top), target, images, note)
    floor = round(target.accuracy / ACCURACY_UNIT)
    reaching = [c for c in front.configurations if c.score.quality_q >= floor * c.score.throughput_q]
    if reaching:
        def cost(c: Configuration) -> tuple[float, int, Fraction, tuple[int, ...]]:
            counts = image_counts(problem.weights(c.choices), images)
            return (completion_time(problem, c.choices, counts), c.score.power_q, -c.score.accuracy_exact,
                    c.choices)

        best = min(reaching, key=cost)
        return _selection(problem, "accuracy-aware", _dse_assignment(problem, best), target, images)
    top = max(front.configurations, key=lambda c: (c.score.accuracy_exact, c.score.throughput_q,
                                                    -c.score.power_q))
    note = (f"infeasible: {target.describe()} exceeds the most accurate configuration "
            f"({top.score.accuracy:.6g}); running it")
    return _selection(problem, "accuracy-aware", _dse_assignment(problem, top), target, images, note)


class Policy(Protocol):
    """Chooses an assignment for the nodes of `problem`; the resource manager calls it in LOOKUP."""

    @property
    def name(self) -> str: ...

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection: ...


@dataclass(frozen=True)
class AccuracyAwarePolicy:
    """The DSE table's Pareto front and the target rule (this module's docstring)."""

    name: str = "accuracy-aware"

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection:
        if target is None:
            raise DseError("the accuracy-aware policy needs a throughput or accuracy target")
        return select(pareto_front(problem), target, images)


def most_accurate_variant(problem: DseProblem) -> int:
    return max(range(len(problem.variants)), key=lambda m: (problem.accuracy_q[m], -m))


def _running(problem: DseProblem, variant: int) -> Sequence[int]:
    nodes = [n for n in range(len(problem.nodes)) if problem.theta_q[n][variant] is not None]
    if not nodes:
        raise DseError(f"variant {problem.variants[variant].name!r} runs on no node")
    return nodes


@dataclass(frozen=True)
class EqualSplit:
    """Every node that can runs the most accurate variant; images split equally."""

    name: str = "equal split, most accurate"

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection:
        m = most_accurate_variant(problem)
        on = set(_running(problem, m))
        choices = tuple(m if n in on else OFF for n in range(len(problem.nodes)))
        return _selection(problem, self.name, Assignment(choices, tuple(int(n in on) for n in range(len(choices)))),
                          target, images)


@dataclass(frozen=True)
class ProportionalSplit:
    """Every node that can runs the most accurate variant; shares by throughput."""

    name: str = "θ-proportional, most accurate"

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection:
        m = most_accurate_variant(problem)
        on = set(_running(problem, m))
        choices = tuple(m if n in on else OFF for n in range(len(problem.nodes)))
        return _selection(problem, self.name, Assignment(choices, problem.weights(choices)), target, images)


def _fastest(row: Sequence[int | None]) -> int:
    return max((m for m, t in enumerate(row) if t is not None), key=lambda m: (row[m] or 0, -m))


@dataclass(frozen=True)
class FastestEverywhere:
    """Every node runs its fastest variant; shares by throughput."""

    name: str = "fastest variant everywhere"

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection:
        choices = tuple(_fastest(row) for row in problem.theta_q)
        return _selection(problem, self.name, Assignment(choices, problem.weights(choices)), target, images)


@dataclass(frozen=True)
class BestSingleNode:
    """The one node that runs the most accurate variant fastest, alone."""

    name: str = "best single node, most accurate"

    def choose(self, problem: DseProblem, target: Target | None, images: int) -> Selection:
        m = most_accurate_variant(problem)
        best = max(_running(problem, m), key=lambda n: (problem.theta_q[n][m] or 0, -n))
        choices = tuple(m if n == best else OFF for n in range(len(problem.nodes)))
        return _selection(problem, self.name, Assignment(choices, problem.weights(choices)), target, images)


BASELINES: tuple[Policy, ...] = (EqualSplit(), ProportionalSplit(), FastestEverywhere(), BestSingleNode())
