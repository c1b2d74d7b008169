"""Where a deployment's pods may go: tolerations against node taints, node affinity against node labels,
and the same settings written into every pod and Job the operator renders.

Kubernetes would keep a pod off a tainted node, or off a node its affinity rules out, and leave it Pending
forever; the operator applies the same rules first, so such a node is left out of the plan with the reason
in status (NodeTainted, NodeAffinity) and the model is planned over the nodes the pods can really reach.
Pure: node facts in, decisions and object edits out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from edgepart.operator.names import ANNOTATION_HASH, digest
from edgepart.operator.nodes import NodeInfo, Taint
from edgepart.spec import (
    DeploymentSpec,
    NodeSelectorRequirementSpec,
    NodeSelectorTermSpec,
    TolerationSpec,
)

__all__ = ["affinity_allows", "untolerated_taints", "with_scheduling"]

BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only discourages


def tolerates(toleration: TolerationSpec, taint: Taint) -> bool:
    """Kubernetes' matching: an empty effect matches every effect, Exists with no key every taint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.operator == "Exists":
        return not toleration.key or toleration.key == taint.key
    return toleration.key == taint.key and (toleration.value or "") == taint.value


def untolerated_taints(node: NodeInfo, tolerations: Sequence[TolerationSpec]) -> list[Taint]:
    """The node's taints that keep the deployment's pods off it."""
    return [t for t in node.taints
            if t.effect in BLOCKING_EFFECTS and not any(tolerates(tol, t) for tol in tolerations)]


def _requirement_holds(requirement: NodeSelectorRequirementSpec, value: str | None) -> bool:
    op = requirement.operator
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op == "In":
        return value is not None and value in requirement.values
    if op == "NotIn":
        return value is None or value not in requirement.values
    if value is None or not value.lstrip("-").isdigit():  # Gt, Lt compare integers
        return False
    bound = int(requirement.values[0])
    return int(value) > bound if op == "Gt" else int(value) < bound


def _term_holds(term: NodeSelectorTermSpec, node: NodeInfo) -> bool:
    if not term.match_expressions and not term.match_fields:
        return False  # as in Kubernetes, an empty term matches no node
    return (all(_requirement_holds(r, node.labels.get(r.key)) for r in term.match_expressions)
            and all(_requirement_holds(r, node.name) for r in term.match_fields))


def affinity_allows(node: NodeInfo, spec: DeploymentSpec) -> bool:
    """Whether the required node affinity lets pods onto the node (terms ORed, requirements ANDed)."""
    affinity = spec.node_affinity
    required = affinity.required_during_scheduling_ignored_during_execution if affinity else None
    return required is None or any(_term_holds(t, node) for t in required.node_selector_terms)


def _pruned(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _dump(model: Any) -> Any:
    """The Kubernetes form of a spec field, without the empty lists Kubernetes would leave out too."""
    return _pruned(model.model_dump(by_alias=True, mode="json", exclude_none=True))


def _combined_affinity(pod_spec: Mapping[str, Any], spec: DeploymentSpec) -> dict[str, Any] | None:
    """The pod's own affinity (its pin to a node) ANDed with the deployment's: every pin term joined with
    every required term (Kubernetes ORs terms and ANDs inside one); preferred terms added as they are."""
    user = spec.node_affinity
    if user is None:
        return None
    affinity = copy.deepcopy(dict(pod_spec.get("affinity") or {}))
    node_affinity = affinity.setdefault("nodeAffinity", {})
    key = "requiredDuringSchedulingIgnoredDuringExecution"
    own = (node_affinity.get(key) or {}).get("nodeSelectorTerms") or []
    required = user.required_during_scheduling_ignored_during_execution
    if required is not None:
        theirs = [_dump(t) for t in required.node_selector_terms]
        terms = [{"matchExpressions": [*a.get("matchExpressions", []), *b.get("matchExpressions", [])],
                  "matchFields": [*a.get("matchFields", []), *b.get("matchFields", [])]}
                 for a in own for b in theirs] if own else theirs
        node_affinity[key] = {"nodeSelectorTerms": [{k: v for k, v in t.items() if v} for t in terms]}
    preferred = user.preferred_during_scheduling_ignored_during_execution
    if preferred:
        node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).extend(
            _dump(p) for p in preferred)
    return affinity


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        obj = obj.get("spec", {}).get("template", {})
    elif kind != "Pod":
        return None
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else None


def with_scheduling(obj: Mapping[str, Any], spec: DeploymentSpec) -> dict[str, Any]:
    """A copy of a rendered object whose pods carry the deployment's image pull secrets, tolerations and node
    affinity; an object with no pod, or a deployment that sets none of them, comes back unchanged. The
    object's content digest (names.ANNOTATION_HASH) is stamped again, so a change of these settings rolls it."""
    if not (spec.image_pull_secrets or spec.tolerations or spec.node_affinity):
        return dict(obj)
    result = copy.deepcopy(dict(obj))
    pod = _pod_spec(result)
    if pod is None:
        return result
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [_dump(s) for s in spec.image_pull_secrets]
    if spec.tolerations:
        pod["tolerations"] = [_dump(t) for t in spec.tolerations]
    affinity = _combined_affinity(pod, spec)
    if affinity is not None:
        pod["affinity"] = affinity
    annotations = result.setdefault("metadata", {}).get("annotations")
    if annotations is not None and ANNOTATION_HASH in annotations:
        annotations.pop(ANNOTATION_HASH)
        annotations[ANNOTATION_HASH] = digest(result, 16)
    return result
