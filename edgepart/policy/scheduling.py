"""Which queue a worker serves next, and where a new image goes: MS-MDI, AR-MDI and Local.

Queues (seed 001 §4): a source i keeps a local queue q_l^i (whole model, here);
every worker n keeps a queue q_n^j per source j (its share of j's images, AR-MDI
allocation). One decision, called by the simulator and by the data plane:

- `route(view)`: at a source, where an arriving image goes. MS-MDI: the
  shorter of the local queue and the first-hop queue (ties: local, which
  sends nothing). AR-MDI: always distributed. Local: always local.
- `pick(view)`: a worker that becomes idle picks the largest weight among
  LOCAL = q_l^n (sources only) and, per source j with work queued,
  q_n^j − q_{next}^j, where q_{next}^j is the queue of the worker that runs
  the next layers of the head image, as last reported (0 when this worker runs
  its last layers: the result goes home) [S eq. 2; R for the 0]. Ties: LOCAL,
  then the head that has waited longer, then source order. Strict
  backpressure serves only positive weights.

[R] A queue's length counts the image being computed from it: at routing time
the source is usually busy, and an image in service has not left the queue's
work. (Waiting images only, a saturated source served its local queue on
every tie and its distributed queue almost never.)

[R] `weights="rate"` divides each weight by the seconds its task takes on
this worker (whole model for LOCAL, the head image's share plus its messages
otherwise): the max-weight rule of backpressure scheduling (Neely), where
each option's queue differential counts at its service rate. The paper's
rule (`"queue"`, the default) weighs a whole-model LOCAL image like a share
of a few layers, so a saturated source keeps about two thirds of its images
local; `bench/bench_multisource.py` compares both.

Views are what the caller knows: its own queues exactly, other workers'
queue lengths as reported `age_s` ago (piggy-backed on responses to frames,
or on a heartbeat). [R] A report older than `max_report_age_s` is not
trusted: that option ranks below every option with a fresh report (weight
−∞; strict mode never serves it), so a worker that stopped reporting gets no
new work while anything else is possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from edgepart.policy.errors import PolicyError

SchedulerName = Literal["ms-mdi", "ar-mdi", "local"]
SCHEDULERS: tuple[SchedulerName, ...] = ("ms-mdi", "ar-mdi", "local")
Route = Literal["local", "mdi"]


@dataclass(frozen=True)
class Report:
    """A queue length as known here: exact (age 0) or as another worker reported it `age_s` ago."""

    length: int
    age_s: float = 0.0


@dataclass(frozen=True)
class SourceQueue:
    """This worker's queue q_n^j for source j."""

    source: str
    length: int
    head_wait_s: float = 0.0  # how long the head image has waited here
    # the next holder's q^j for the head image, as last reported; None: this worker runs its last layers
    downstream: Report | None = None
    blocked: bool = False  # the next holder refused an earlier image (queue full): serving j would pile up here
    task_s: float | None = None  # seconds this worker expects to spend on the head image (for rate weights)


@dataclass(frozen=True)
class WorkerView:
    """What an idle worker knows when it decides."""

    local: int | None  # q_l^n at a source; None at a worker that is not a source
    queues: tuple[SourceQueue, ...] = ()  # one per source, in source order
    local_head_wait_s: float = 0.0
    local_task_s: float | None = None  # seconds this worker expects to spend on one local image (for rate weights)


@dataclass(frozen=True)
class ArrivalView:
    """What a source knows when an image arrives: its local queue and the queue the image's first layers wait in."""

    local: int
    first_hop: Report


@dataclass(frozen=True)
class Decision:
    """Serve the local queue (`source` None: run the whole model) or source `source`'s queue (run this share)."""

    source: str | None
    weight: float

    @property
    def local(self) -> bool:
        return self.source is None


@dataclass(frozen=True)
class DecisionSettings:
    strict: bool = False  # serve only positive weights (strict backpressure)
    max_report_age_s: float | None = None  # reports older than this are not trusted (see the module docstring)
    weights: Literal["queue", "rate"] = "queue"  # "rate": each weight over the seconds its task takes here [R]

    def __post_init__(self) -> None:
        if self.max_report_age_s is not None and not self.max_report_age_s > 0:
            raise PolicyError(f"max_report_age_s: must be > 0, got {self.max_report_age_s}")
        if self.weights not in ("queue", "rate"):
            raise PolicyError(f"weights: expected 'queue' or 'rate', got {self.weights!r}")


class Policy(Protocol):
    """One scheduler: where arrivals go and what an idle worker serves."""

    @property
    def name(self) -> SchedulerName: ...

    def route(self, view: ArrivalView) -> Route: ...

    def pick(self, view: WorkerView) -> Decision | None: ...


def backpressure_weight(queue: SourceQueue, settings: DecisionSettings) -> float:
    """q_n^j − q_next^j for a non-empty queue (the downstream term 0 when this worker runs the last layers)."""
    down = queue.downstream
    if down is None:
        return float(queue.length)
    if settings.max_report_age_s is not None and down.age_s > settings.max_report_age_s:
        return -math.inf
    return float(queue.length - down.length)


def _task_seconds(seconds: float | None) -> float:
    if seconds is None or not seconds > 0:
        raise PolicyError(f"rate weights need each option's task seconds (> 0), got {seconds}")
    return seconds


@dataclass(frozen=True)
class MsMdi:
    """Backpressure scheduling over the local queue and the per-source queues (seed 001 §4)."""

    settings: DecisionSettings = DecisionSettings()

    @property
    def name(self) -> SchedulerName:
        return "ms-mdi"

    def route(self, view: ArrivalView) -> Route:
        return "local" if view.local <= view.first_hop.length else "mdi"

    def pick(self, view: WorkerView) -> Decision | None:
        # candidates sort by (weight, LOCAL first, longer head wait, source order)
        best: tuple[float, int, float, int] | None = None
        choice: Decision | None = None
        rate = self.settings.weights == "rate"
        if view.local is not None and view.local > 0:
            weight = float(view.local) / _task_seconds(view.local_task_s) if rate else float(view.local)
            best = (weight, 1, view.local_head_wait_s, 0)
            choice = Decision(None, weight)
        for order, queue in enumerate(view.queues):
            if queue.length <= 0 or queue.blocked:
                continue
            weight = backpressure_weight(queue, self.settings)
            if rate:
                weight /= _task_seconds(queue.task_s)
            key = (weight, 0, queue.head_wait_s, -order)
            if best is None or key > best:
                best, choice = key, Decision(queue.source, weight)
        if choice is None or (self.settings.strict and not choice.weight > 0):
            return None
        return choice


@dataclass(frozen=True)
class ArMdi:
    """Every image distributed along the ring; a worker serves its queues first come, first served."""

    @property
    def name(self) -> SchedulerName:
        return "ar-mdi"

    def route(self, view: ArrivalView) -> Route:
        return "mdi"

    def pick(self, view: WorkerView) -> Decision | None:
        ready = [(q.head_wait_s, -order, q) for order, q in enumerate(view.queues) if q.length > 0 and not q.blocked]
        if not ready:
            return None
        queue = max(ready, key=lambda item: item[:2])[2]
        return Decision(queue.source, float(queue.length))


@dataclass(frozen=True)
class Local:
    """Every source runs the whole model on its own images; other workers idle."""

    @property
    def name(self) -> SchedulerName:
        return "local"

    def route(self, view: ArrivalView) -> Route:
        return "local"

    def pick(self, view: WorkerView) -> Decision | None:
        if view.local is not None and view.local > 0:
            return Decision(None, float(view.local))
        return None


def make_policy(name: str, settings: DecisionSettings | None = None) -> Policy:
    """The scheduler called `name` (`ms-mdi`, `ar-mdi` or `local`); `settings` apply to MS-MDI."""
    if name == "ms-mdi":
        return MsMdi(settings or DecisionSettings())
    if name == "ar-mdi":
        return ArMdi()
    if name == "local":
        return Local()
    raise PolicyError(f"scheduler: expected one of {list(SCHEDULERS)}, got {name!r}")
