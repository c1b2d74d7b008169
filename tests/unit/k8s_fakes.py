"""Fakes and checks shared by the Kubernetes unit tests (nodes, profiles, schema validation)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
from kubernetes_validate import utils as kv_utils

from edgepart.operator.names import LABEL_DEVICE_CLASS, LABEL_PROFILE
from edgepart.operator.nodes import NodeInfo, node_from_short_form
from edgepart.operator.render import PROFILE_KEY, Owner
from edgepart.planner.cluster import reference_profile
from edgepart.planner.costmodel import DeviceProfile

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
OWNER = Owner(name="alex", namespace="edge", uid="0c1d2e3f-uid", generation=1)
# Kubernetes versions every object must validate against: the oldest supported and the newest shipped.
K8S_VERSIONS = ("1.30.0", kv_utils.latest_version())


def nodes(count: int = 4, device_class: str = "rpi4", **extra: Any) -> list[NodeInfo]:
    return [node_from_short_form({"name": f"edge-{i}", "cpu": "4", "memory": "8Gi", "arch": "arm64",
                                  "deviceClass": device_class, "labels": {"pool": "edge"}, **extra}, i)
            for i in range(count)]


@functools.cache
def profile(name: str = "rpi4", speed: float = 1.0) -> DeviceProfile:
    """A device class's profile: the planner's reference profile, `speed` times faster."""
    return reference_profile().scaled(speed, name)


def spec(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "alexnet"}, "nodeSelector": {"pool": "edge"}, "master": "edge-0",
                            "solver": "ftp-grid", "solverOptions": {"grid": [2, 2]}}
    body.update(fields)
    return body


def profile_config_map(device_class: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"edgepart-profile-{device_class}", "namespace": "edge",
                         "labels": {LABEL_PROFILE: "true", LABEL_DEVICE_CLASS: device_class}},
            "data": {PROFILE_KEY: text}}


def validate_strict(obj: Mapping[str, Any]) -> None:
    """kubernetes-validate --strict against every version in K8S_VERSIONS (raises on the first error)."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')} fails for Kubernetes {version}: "
                                 f"{path}: {err.message}") from None


# ---------------------------------------------------------------- the CRD's own schema, as the API server applies it


def openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (structural, as in a CRD) to JSON Schema 2020-12, dropping x-kubernetes-* keys."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            result[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if value is True:
                result[key] = node["minimum" if key == "exclusiveMinimum" else "maximum"]
        elif key in ("items", "additionalProperties"):
            result[key] = openapi_to_jsonschema(value)
        else:
            result[key] = value
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True:
            result.pop(bound, None)
    if node.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in result:
        pass
    return result


def cel_violations(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on `value` (recursively), as the API server does."""
    import celpy

    problems: list[str] = []
    if value is None:
        return problems
    for rule in schema.get("x-kubernetes-validations", ()):
        env = celpy.Environment()
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            problems.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                problems += cel_violations(sub, value[name], f"{path}.{name}" if path else name)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problems += cel_violations(schema["items"], item, f"{path}[{i}]")
    return problems
