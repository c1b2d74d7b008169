"""Make before break: when to switch the gateway to a new plan, what to keep, when to re-plan at all.

Pure decisions, no I/O. Every plan's ConfigMap, partition pods and Services carry its hash (in their names
and the `edgepart.io/plan` label), so two plans coexist. A new plan is rolled out next to the serving one:

    RollingOut                the new plan's pods start; the gateway still routes to the serving plan
    Switching                 every new partition is ready: the gateway rolls over to the new plan
    Switched                  the gateway runs the new plan: the old plan's objects are pruned
    ProgressDeadlineExceeded  the new plan missed its deadline: reported; the old plan keeps serving

A node that becomes usable again changes the plan's inputs; re-planning it costs a rollout, so it happens
only when the plan with the node predicts a gain above the spec's `replanGain`.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

ROLLING_OUT = "RollingOut"
SWITCHING = "Switching"
SWITCHED = "Switched"
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
REPLAN_SKIPPED = "ReplanBelowGain"


@dataclass(frozen=True)
class RolloutSettings:
    deadline_seconds: float = 600.0
    replan_gain: float = 0.10


@dataclass(frozen=True)
class RolloutState:
    """What the decision needs: the plans, as the last status recorded them and as observed now."""

    new: str  # hash of the plan just computed
    serving: str = ""  # status.servingPlan: the plan the gateway routes to ('' before the first)
    pending: str = ""  # status.pendingPlan of the last status
    pending_since: str = ""  # status.pendingSince of the last status
    new_ready: bool = False  # every partition pod of the new plan is ready
    gateway_on_new: bool = False  # the gateway's spec is the one that routes to the new plan
    gateway_ready: bool = False  # ... and its rollout is complete

    @staticmethod
    def from_status(status: Mapping[str, Any], new: str) -> RolloutState:
        return RolloutState(new=new, serving=str(status.get("servingPlan") or ""),
                            pending=str(status.get("pendingPlan") or ""),
                            pending_since=str(status.get("pendingSince") or ""))


@dataclass(frozen=True)
class Rollout:
    """The decision: where the gateway routes, which plans' objects survive pruning, what status says."""

    route: str  # plan the gateway's config is taken from
    keep: frozenset[str]  # plans whose objects are not pruned although not desired
    serving: str
    pending: str  # '' when no rollout is under way
    pending_since: str
    reason: str
    message: str

    @property
    def progressing(self) -> bool:
        return self.reason != DEADLINE_EXCEEDED


def decide(state: RolloutState, settings: RolloutSettings, now: str) -> Rollout:
    """The next step of the rollout from `state.serving` to `state.new`."""
    old, new = state.serving, state.new
    if not old or old == new:
        return Rollout(route=new, keep=frozenset(), serving=new, pending="", pending_since="", reason=SWITCHED,
                       message=f"the gateway routes to plan {new}")
    since = state.pending_since if state.pending == new and state.pending_since else now
    if state.gateway_on_new and state.gateway_ready:  # the old plan answers nothing any more
        return Rollout(route=new, keep=frozenset(), serving=new, pending="", pending_since="", reason=SWITCHED,
                       message=f"the gateway switched from plan {old} to plan {new}; plan {old} is pruned")
    rolling = Rollout(route=old, keep=frozenset({old}), serving=old, pending=new, pending_since=since,
                      reason=ROLLING_OUT, message=f"starting plan {new}; plan {old} keeps serving")
    if state.new_ready or state.gateway_on_new:  # once switched, a pod's hiccup does not switch back
        return Rollout(route=new, keep=rolling.keep, serving=old, pending=new, pending_since=since,
                       reason=SWITCHING, message=f"every partition of plan {new} is ready; the gateway moves "
                                                 f"to it from plan {old}")
    if seconds_between(since, now) > settings.deadline_seconds:
        return Rollout(route=old, keep=rolling.keep, serving=old, pending=new, pending_since=since,
                       reason=DEADLINE_EXCEEDED,
                       message=f"plan {new} is not ready after {settings.deadline_seconds:g}s "
                               f"(progressDeadlineSeconds); plan {old} keeps serving")
    return rolling


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    throughput_per_s: float

    @staticmethod
    def from_status(status: Mapping[str, Any]) -> Prediction | None:
        predicted = status.get("predicted")
        if not isinstance(predicted, Mapping) or "latencySeconds" not in predicted:
            return None
        return Prediction(float(predicted["latencySeconds"]), float(predicted.get("throughputPerSecond") or 0))


def gain(objective: str, serving: Prediction, candidate: Prediction) -> float:
    """How much better the candidate is, as a fraction of the serving plan's figure (negative: worse)."""
    if objective == "throughput":
        return (candidate.throughput_per_s - serving.throughput_per_s) / max(serving.throughput_per_s, 1e-12)
    return (serving.latency_s - candidate.latency_s) / max(serving.latency_s, 1e-12)


def worth_replanning(objective: str, serving: Prediction | None, candidate: Prediction | None,
                     settings: RolloutSettings) -> bool:
    """Re-plan for a returning node only for a predicted gain above the threshold (unknown: re-plan)."""
    if serving is None or candidate is None:
        return True
    return gain(objective, serving, candidate) > settings.replan_gain


def returning_nodes(status: Mapping[str, Any], usable: Collection[str], same_generation: bool) -> tuple[str, ...]:
    """Usable nodes the serving plan was not made for, when nothing else changed: the spec is the same and
    every node of the serving plan is still usable (else the serving plan is broken and must be replaced), and no
    rollout is under way."""
    planned = [str(d) for d in status.get("devices") or ()]
    if not same_generation or not status.get("servingPlan") or status.get("pendingPlan") or not planned:
        return ()
    if not set(planned) <= set(usable):
        return ()
    return tuple(sorted(set(usable) - set(planned)))


def seconds_between(start: str, end: str) -> float:
    """Seconds from one RFC 3339 time to another (0 when either is unreadable)."""
    try:
        return (_parse(end) - _parse(start)).total_seconds()
    except ValueError:
        return 0.0


def _parse(when: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
