"""Which selected nodes a deployment leaves out, and whether a failure is a node's or the deployment's own.

- A node that is not Ready, is cordoned, has a taint the pods do not tolerate, or is ruled out by the
  required node affinity is left out while that lasts.
- A partition pod that fails on a node (its image cannot be pulled there, its container cannot be
  created, or it restarted `maxRestarts` times) leaves the node out for `exclusionSeconds`, doubling on
  each new failure up to `maxExclusionSeconds`; then the node is tried again (status.retriedNodes keeps
  the count, so a node that fails again stays out twice as long).
- A failure of the same kind on two or more nodes follows the pods from node to node: it is the
  deployment's (a wrong image or pull secret, a model that crashes, too little memory), not the nodes'.
  It is reported as the deployment's failure and no node is left out for it; nodes left out for it
  earlier come back.

Pure: observed facts and the time in, a decision out.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgepart.operator.nodes import NodeInfo
from edgepart.operator.scheduling import affinity_allows, untolerated_taints
from edgepart.operator.status import DeploymentFailure, ExcludedNode
from edgepart.spec import DeploymentSpec

__all__ = ["Exclusions", "PodFacts", "decide", "pod_failure"]

PARTITION_FAILED = "PartitionFailed"
IMAGE_REASONS = {"ErrImagePull": "ImagePull", "ImagePullBackOff": "ImagePull", "InvalidImageName": "ImagePull",
                 "ErrImageNeverPull": "ImagePull"}
CREATE_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


class PodFacts(Protocol):
    """What the decision needs of an observed pod (reconcile.PodState)."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def waiting_reason(self) -> str: ...
    @property
    def deleting(self) -> bool: ...


@dataclass(frozen=True)
class Failure:
    kind: str  # ImagePull, CreateContainerConfigError, ..., CrashLoop or PodFailed: what may follow the pods
    message: str


def pod_failure(pod: PodFacts, max_restarts: int) -> Failure | None:
    """Why this pod counts as failed, or None. A crash loop counts only once it reached `max_restarts`."""
    if pod.deleting:
        return None
    if pod.phase == "Failed":
        return Failure("PodFailed", f"pod {pod.name} failed")
    if pod.waiting_reason in IMAGE_REASONS:
        return Failure(IMAGE_REASONS[pod.waiting_reason], f"pod {pod.name}: {pod.waiting_reason}")
    if pod.waiting_reason in CREATE_REASONS:
        return Failure(pod.waiting_reason, f"pod {pod.name}: {pod.waiting_reason}")
    if pod.restarts >= max_restarts:
        how = f" ({pod.waiting_reason})" if pod.waiting_reason else ""
        return Failure("CrashLoop", f"pod {pod.name} restarted {pod.restarts} times{how}")
    return None


@dataclass(frozen=True)
class ExclusionSettings:
    max_restarts: int
    exclusion_seconds: float
    max_exclusion_seconds: float


@dataclass
class Exclusions:
    excluded: list[ExcludedNode] = field(default_factory=list)  # left out of this plan
    retried: list[ExcludedNode] = field(default_factory=list)  # excluded before, tried again now
    failure: DeploymentFailure | None = None  # a failure that follows the pods: the deployment's own

    @property
    def names(self) -> set[str]:
        return {e.name for e in self.excluded}


def _time(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _entries(status: Mapping[str, Any], key: str) -> Iterable[ExcludedNode]:
    for item in status.get(key) or ():
        if isinstance(item, Mapping) and item.get("reason") in (PARTITION_FAILED, "Retrying"):
            try:
                yield ExcludedNode.model_validate(item)
            except ValueError:
                continue  # an entry written by another version: forget it rather than fail the deployment


def decide(selected: Sequence[NodeInfo], spec: DeploymentSpec, pods: Sequence[PodFacts],
           status: Mapping[str, Any], same_generation: bool, settings: ExclusionSettings, now: str) -> Exclusions:
    """The nodes left out of the plan, those tried again, and the deployment's own failure if any.

    `status`: the status written last; exclusions and their counts carry over while the generation
    (`same_generation`) does. On the first reconcile of a new generation the pods still run the old spec, so
    their failures are not counted yet."""
    clock = _time(now) or datetime.datetime.now(datetime.UTC)
    before = {e.name: e for e in _entries(status, "excludedNodes")} if same_generation else {}
    retried = {e.name: e for e in _entries(status, "retriedNodes")} if same_generation else {}
    failures: dict[str, Failure] = {}
    if same_generation:
        for pod in pods:
            failure = pod_failure(pod, settings.max_restarts)
            if failure is not None and pod.node:
                failures.setdefault(pod.node, failure)

    # a kind of failure on two or more nodes (now, or remembered) follows the pods: the deployment's own
    nodes_by_kind: dict[str, set[str]] = {}
    for name, failure in failures.items():
        nodes_by_kind.setdefault(failure.kind, set()).add(name)
    for entry in [*before.values(), *retried.values()]:
        if entry.failure:
            nodes_by_kind.setdefault(entry.failure, set()).add(entry.name)
    own = {kind: sorted(nodes) for kind, nodes in nodes_by_kind.items() if len(nodes) >= 2}
    result = Exclusions()
    if own:
        kind = sorted(own, key=lambda k: (-len(own[k]), k))[0]
        example = next((f.message for f in failures.values() if f.kind == kind), "")
        result.failure = DeploymentFailure(
            reason=kind, nodes=own[kind],
            message=f"{kind} on nodes {own[kind]}" + (f" ({example})" if example else "")
                    + ": it follows the pods from node to node, so it is the deployment's (image, pull secret, "
                      "model or memory), not the nodes'; no node is left out for it")

    for node in selected:
        if not node.usable:
            reason = "NodeNotReady" if not node.ready else "NodeUnschedulable"
            result.excluded.append(ExcludedNode(name=node.name, reason=reason,
                                                message=f"node {node.name} is {node.why_unusable}"))
            continue
        taints = untolerated_taints(node, spec.tolerations)
        if taints:
            shown = ", ".join(f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in taints)
            result.excluded.append(ExcludedNode(name=node.name, reason="NodeTainted", message=(
                f"node {node.name} has taints {shown} that spec.tolerations do not tolerate")))
            continue
        if not affinity_allows(node, spec):
            result.excluded.append(ExcludedNode(name=node.name, reason="NodeAffinity", message=(
                f"node {node.name} is ruled out by spec.nodeAffinity's required terms")))
            continue
        failure = failures.get(node.name)
        kept = before.get(node.name)
        if kept is not None and kept.failure in own:
            kept = None  # left out for the deployment's failure: it comes back
        if kept is not None:
            ends = _time(kept.until or "")
            if ends is None or clock < ends:
                result.excluded.append(kept)
                continue
        if failure is not None and failure.kind not in own:
            previous = kept or retried.get(node.name)
            count = ((previous.count or 0) if previous else 0) + 1
            seconds = min(settings.max_exclusion_seconds, settings.exclusion_seconds * 2 ** (count - 1))
            result.excluded.append(ExcludedNode(
                name=node.name, reason=PARTITION_FAILED, message=failure.message, failure=failure.kind,
                count=count, until=_stamp(clock + datetime.timedelta(seconds=seconds))))
            continue
        if kept is not None:  # its time is up: try it again, remembering how often it failed
            result.retried.append(kept.model_copy(update={"reason": "Retrying", "message": (
                f"node {node.name} was left out until {kept.until} ({kept.message}); tried again")}))
        elif node.name in retried and retried[node.name].failure not in own:
            result.retried.append(retried[node.name])
    return result
