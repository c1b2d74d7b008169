"""Names, labels and hashes shared by everything the operator renders.

Kubernetes names of Services must be DNS-1035 labels (at most 63 characters,
starting with a letter); Pod names become host names, so they keep to 63 too.
Children are named after their DNNDeployment; a name that would be too long is
shortened and given a hash suffix, so it stays unique and stable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

GROUP = "edgepart.io"
MANAGED_BY = "edgepart-operator"
FIELD_MANAGER = "edgepart-operator"

# Labels on every object the operator renders.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_PARTITION = f"{GROUP}/partition"
LABEL_PLAN = f"{GROUP}/plan"
# Device classes, profiles and profiling jobs.
LABEL_DEVICE_CLASS = f"{GROUP}/device-class"
LABEL_PROFILE = f"{GROUP}/profile"
# Layer graphs of models outside the zoo, traced by a Job (the operator never imports a model's code).
LABEL_GRAPH = f"{GROUP}/graph"
LABEL_GRAPH_KEY = f"{GROUP}/graph-key"
ANNOTATION_MODEL = f"{GROUP}/model"
# Annotations.
ANNOTATION_HASH = f"{GROUP}/spec-hash"
ANNOTATION_PLAN_HASH = f"{GROUP}/plan-hash"

HOSTNAME_LABEL = "kubernetes.io/hostname"


def pinned_node(pod_spec: Mapping[str, Any]) -> str:
    """The node a pod spec runs on or is pinned to: spec.nodeName once bound, else the `metadata.name` field
    affinity the operator renders (or, from older operators, a hostname nodeSelector); '' if none."""
    if pod_spec.get("nodeName"):
        return str(pod_spec["nodeName"])
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or ():
        for field in (term or {}).get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return str(field["values"][0])
    return str((pod_spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL, ""))
ARCH_LABEL = "kubernetes.io/arch"

MAX_NAME = 63
_INVALID = re.compile(r"[^a-z0-9-]+")


def digest(value: Any, length: int = 10) -> str:
    """A short, stable hex digest of any JSON-serialisable value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def dns_label(*parts: str, max_length: int = MAX_NAME) -> str:
    """Join parts with '-' into a DNS-1035 label (lower case, starts with a letter, <= 63).

    Over-long names keep their start and end in a hash, so different inputs stay different.
    """
    raw = "-".join(p for p in parts if p)
    name = _INVALID.sub("-", raw.lower()).strip("-") or "x"
    if not name[0].isalpha():
        name = "e-" + name
    if len(name) > max_length:
        suffix = digest(raw, 8)
        name = name[: max_length - len(suffix) - 1].rstrip("-") + "-" + suffix
    return name


def sanitize_label_value(value: str) -> str:
    """A valid label value (<= 63, alphanumerics at both ends, [-_.A-Za-z0-9] inside)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    if len(cleaned) > MAX_NAME:
        cleaned = cleaned[: MAX_NAME - 9].rstrip("-_.") + "-" + digest(value, 8)
    return cleaned


def base_labels(deployment: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "edgepart",
        LABEL_INSTANCE: sanitize_label_value(deployment),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: sanitize_label_value(deployment),
    }


def selector_labels(deployment: str) -> dict[str, str]:
    """Labels that pick every pod of one DNNDeployment (partitions and gateway)."""
    return {LABEL_DEPLOYMENT: sanitize_label_value(deployment)}


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Equality-based label selector, evaluated client-side."""
    return all(labels.get(key) == value for key, value in selector.items())


# Names of the children of one DNNDeployment.

def config_map_name(deployment: str) -> str:
    return dns_label(deployment, "plan")


def plan_config_map_name(deployment: str, plan_hash: str) -> str:
    """One ConfigMap per plan, so the serving plan's stays while the next one rolls out."""
    return dns_label(deployment, "plan", plan_hash[:8])


def plan_service_name(deployment: str, partition_id: str, plan_hash: str) -> str:
    """A partition's Service in one plan: two plans with the same partition ids coexist."""
    return dns_label(deployment, partition_id, plan_hash[:8])


def gateway_plan_service_name(deployment: str, plan_hash: str) -> str:
    """Where one plan's partitions send their output: only the gateway pods that route to that plan."""
    return dns_label(deployment, "gateway", plan_hash[:8])


def service_account_name(deployment: str) -> str:
    return dns_label(deployment, "partition")


def partition_service_name(deployment: str, partition_id: str) -> str:
    return dns_label(deployment, partition_id)


def partition_pod_name(deployment: str, partition_id: str, content_hash: str) -> str:
    return dns_label(deployment, partition_id, content_hash[:8])


def secret_name(deployment: str) -> str:
    return dns_label(deployment, "secret")


def gateway_name(deployment: str) -> str:
    return dns_label(deployment, "gateway")


def network_policy_name(deployment: str, role: str) -> str:
    return dns_label(deployment, role)


def profile_config_map_name(device_class: str) -> str:
    return dns_label("edgepart-profile", device_class)


def profile_job_name(device_class: str) -> str:
    return dns_label("edgepart-profile", device_class)


def graph_config_map_name(key: str) -> str:
    return dns_label("edgepart-graph", key)


def trace_job_name(key: str) -> str:
    return dns_label("edgepart-trace", key)
