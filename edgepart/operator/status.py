"""The DNNDeployment status: phase state machine, conditions, plan summary.

The same pydantic model builds the status the operator writes and the status
part of the CRD's schema. Phases, in the order a deployment normally walks:

    Pending -> Tracing -> Profiling -> Planning -> Deploying -> Ready
                                            ^           |
                                            +- Degraded <+   (a node lost: re-planned on the rest)
    any phase -> Failed                                      (invalid spec, impossible plan)

Every condition has a CamelCase reason, and `lastTransitionTime` moves only
when its status changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Tracing", "Profiling", "Planning", "Deploying", "Ready", "Degraded", "Failed"]
PHASES: tuple[Phase, ...] = ("Pending", "Tracing", "Profiling", "Planning", "Deploying", "Ready", "Degraded",
                             "Failed")
ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types, each answering one question.
SPEC_VALID = "SpecValid"  # is the spec usable?
DEVICES_AVAILABLE = "DevicesAvailable"  # do enough usable nodes match?
TRACED = "Traced"  # is the model's layer graph known (a model outside the zoo is traced by a Job)?
PROFILED = "Profiled"  # does every device class have a cost model?
PLANNED = "Planned"  # is there a plan for the current spec and devices?
READY = "Ready"  # does every partition pod and the gateway answer /readyz?
DEGRADED = "Degraded"  # is the plan running on fewer devices than selected?
PROGRESSING = "Progressing"  # is a new plan rolling out (or did it miss its deadline)? see operator/rollout.py
CONDITION_TYPES = (SPEC_VALID, DEVICES_AVAILABLE, TRACED, PROFILED, PLANNED, READY, DEGRADED, PROGRESSING)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Condition(_Model):
    type: str = Field(min_length=1, max_length=316, description="Condition type, e.g. Ready or Planned.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                        description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int = Field(default=0, ge=0, description="The generation this condition was set for.")


class StageSummary(_Model):
    index: int = Field(ge=0)
    kind: str = Field(description="single, tiles (one layer range split) or paths (tiles cut at different "
                                  "layers).")
    split: str = Field(description="none, rows, channels or grid.")
    layers: str = Field(description="Half-open layer range, e.g. [0, 17).")
    devices: list[str] = Field(description="Nodes that run this stage.")
    partitions: int = Field(ge=1)
    model: str = Field(default="", description="Model id (deployments with several models).")


class PlanSummary(_Model):
    solver: str
    objective: str
    hash: str = Field(description="Digest of the plan; partition pods carry it in the edgepart.io/plan label.")
    devices: list[str] = Field(description="Nodes the plan uses.")
    stages: list[StageSummary]
    config_map: str = Field(description="ConfigMap holding plan.json and the partition configs.")


class Predicted(_Model):
    latency: str = Field(description="Predicted single-request latency, e.g. 182.4ms.")
    latency_seconds: float = Field(ge=0)
    throughput: str = Field(description="Predicted pipelined throughput, e.g. 7.1/s.")
    throughput_per_second: float = Field(ge=0)


class Gateway(_Model):
    service: str
    endpoint: str = Field(description="In-cluster URL of the gateway, e.g. http://name-gateway.ns.svc:8080.")


class ExcludedNode(_Model):
    name: str
    reason: str = Field(description="NodeNotReady, NodeUnschedulable, NodeTainted, NodeAffinity or "
                                    "PartitionFailed (Retrying in retriedNodes).")
    message: str = ""
    failure: str | None = Field(default=None, description="PartitionFailed: the kind of failure (ImagePull, CrashLoop, "
                                                 "PodFailed, CreateContainerConfigError, ...).")
    count: int | None = Field(default=None, ge=1, description="PartitionFailed: times this node was left out for a "
                                                    "failure in this generation (each doubles the time).")
    until: str | None = Field(default=None, description="PartitionFailed: when the node is tried again (RFC 3339).")


class DeploymentFailure(_Model):
    """A failure that follows the pods from node to node: the deployment's own, not a node's."""

    reason: str = Field(description="The kind of failure: ImagePull, CrashLoop, PodFailed, ...")
    nodes: list[str] = Field(default_factory=list, description="Nodes it happened on.")
    message: str = ""


class DeploymentStatus(_Model):
    """What `kubectl get dnndeployment -o yaml` shows under status."""

    phase: Phase = Field(description="Pending, Tracing, Profiling, Planning, Deploying, Ready, Degraded or "
                                            "Failed.")
    message: str = Field(default="", description="Why the deployment is in this phase.")
    observed_generation: int = Field(default=0, ge=0, description="metadata.generation of the spec last acted on.")
    conditions: list[Condition] = Field(default_factory=list)
    partitions: int = Field(default=0, ge=0, description="Partition pods the current plan needs.")
    ready_partitions: int = Field(default=0, ge=0, description="Partition pods that are ready.")
    ready: str = Field(default="0/0", description="Ready partitions out of planned ones, e.g. 3/4.")
    devices: list[str] = Field(default_factory=list, description="Usable nodes the plan was made for.")
    excluded_nodes: list[ExcludedNode] = Field(default_factory=list,
                                               description="Selected nodes left out of the plan, with why.")
    retried_nodes: list[ExcludedNode] = Field(
        default_factory=list, description="Nodes left out earlier for a failed partition whose time is up: in "
                                          "the plan again; a new failure leaves them out twice as long.")
    failure: DeploymentFailure | None = Field(
        default=None, description="A failure of the deployment itself (the same failure on several nodes).")
    plan: PlanSummary | None = None
    predicted: Predicted | None = None
    gateway: Gateway | None = None
    plan_inputs: str = Field(default="", description="Digest of everything the plan was made from.")
    serving_plan: str | None = Field(
        default=None, description="Hash of the plan the gateway routes to; its pods stay until a new plan is "
                                  "ready and the gateway has switched to it.")
    pending_plan: str | None = Field(default=None, description="Hash of the plan being rolled out, if any.")
    pending_since: str | None = Field(default=None, description="When the pending plan's rollout began (RFC "
                                                                "3339); progressDeadlineSeconds counts from it.")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f}s"
    return f"{seconds * 1000:.1f}ms"


def format_rate(per_second: float) -> str:
    return f"{per_second:.2f}/s" if per_second < 100 else f"{per_second:.0f}/s"


def make_condition(type_: str, status: bool | ConditionStatus, reason: str, message: str, *,
                   generation: int, now: str, previous: Sequence[Mapping[str, Any]] = ()) -> Condition:
    """A condition whose lastTransitionTime carries over from `previous` when its status did not change."""
    value: ConditionStatus = ("True" if status else "False") if isinstance(status, bool) else status
    since = now
    for old in previous:
        if old.get("type") == type_ and old.get("status") == value and old.get("lastTransitionTime"):
            since = str(old["lastTransitionTime"])
            break
    return Condition(type=type_, status=value, reason=reason, message=message[:32768],
                     last_transition_time=since, observed_generation=generation)


def same_status(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal statuses, ignoring condition timestamps (so an unchanged status is not written again)."""
    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        copy = {k: v for k, v in status.items() if k != "kopf"}
        copy["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                              for c in status.get("conditions") or ()]
        return copy
    return strip(a) == strip(b)
