"""The DNNDeployment CustomResourceDefinition, generated from the pydantic models.

`spec` comes from `edgepart.spec.DeploymentSpec` (the model the CLI uses) and
`status` from `edgepart.operator.status.DeploymentStatus`; pydantic's JSON
schema is turned into a Kubernetes *structural* OpenAPI v3 schema:

- `$ref`s are inlined, titles dropped, `anyOf [X, null]` becomes `X` + `nullable`;
- JSON Schema 2020 `exclusiveMinimum: 0` becomes OpenAPI 3.0 `minimum: 0` +
  `exclusiveMinimum: true`; `const` becomes a one-value `enum`;
- `additionalProperties: false` goes (the API server prunes unknown fields, and
  kubectl's strict field validation rejects them); free-form objects get
  `x-kubernetes-preserve-unknown-fields`;
- strings checked by a pydantic validator (bandwidth, duration, memory) get
  the equivalent `pattern`, so the API server rejects what the CLI rejects.

Cross-field rules are CEL (`x-kubernetes-validations`). `manifests/crds/` holds
the generated file; `edgepart crd` (or `scripts/gen_crd.py`) rewrites it and a
test checks that it equals what this module generates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from edgepart import spec as spec_module
from edgepart.operator.status import DeploymentStatus
from edgepart.spec import API_GROUP, API_VERSION, KIND, PLURAL, DeploymentSpec

CRD_NAME = f"{PLURAL}.{API_GROUP}"
SHORT_NAMES = ["dnn", "dnnd"]
CATEGORIES = ["edgepart"]

_NUMBER = r"[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?"


def _alternatives(words: list[str]) -> str:
    """A regex group of `words`, longest first ('ms' before 'm'), case-sensitive as the parsers are."""
    ordered = sorted(words, key=len, reverse=True)
    return "(" + "|".join(w.replace(".", "\\.") for w in ordered) + ")"


BANDWIDTH_PATTERN = (r"^\s*" + _NUMBER + r"\s*" + _alternatives(list(spec_module.BANDWIDTH_UNITS))
                     + r"\s*$")  # case-sensitive, as the parser: b bits, B bytes
DURATION_PATTERN = r"^\s*" + _NUMBER + r"\s*" + _alternatives(list(spec_module.TIME_UNITS)) + r"\s*$"
MEMORY_PATTERN = r"^\s*" + _NUMBER + _alternatives(list(spec_module.MEMORY_SUFFIXES)) + r"?\s*$"

# The pydantic validators whose accepted strings these patterns describe.
_VALIDATOR_PATTERNS: dict[Callable[..., Any], str] = {
    spec_module.check_bandwidth: BANDWIDTH_PATTERN,
    spec_module.check_duration: DURATION_PATTERN,
    spec_module.check_memory: MEMORY_PATTERN,
}

# Bounds the CRD adds so the API server can bound the cost of the CEL rules
# (an unbounded list makes every rule over it too expensive to admit).
CRD_BOUNDS: dict[tuple[str, ...], dict[str, Any]] = {
    ("devices",): {"maxItems": 256},
    ("model", "name"): {"maxLength": 512},
    ("models",): {"maxItems": 16},
    ("network", "links"): {"maxItems": 1024},
    ("variants", "custom", "variants"): {"maxItems": 32},
    ("variants", "power"): {"maxProperties": 256},
}

SPEC_VALIDATIONS: list[dict[str, str]] = [
    {
        "rule": "(has(self.devices) && size(self.devices) > 0) || "
                "(has(self.nodeSelector) && size(self.nodeSelector) > 0)",
        "message": "spec.devices or spec.nodeSelector is required: name the nodes, or select them by label",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "(has(self.model) ? 1 : 0) + (has(self.models) && size(self.models) > 0 ? 1 : 0) + "
                "(has(self.variants) ? 1 : 0) == 1",
        "message": "give one of spec.model (one network), spec.models (several) or spec.variants (a family)",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.master) || !has(self.devices) || size(self.devices) == 0 || "
                "self.devices.exists(d, d.name == self.master)",
        "message": "spec.master must be the name of one of spec.devices",
        "fieldPath": ".master",
        "reason": "FieldValueInvalid",
    },
]
MODEL_VALIDATIONS: list[dict[str, str]] = [
    {
        "rule": "!self.name.contains(':') || has(self.inputShape)",
        "message": "spec.model.inputShape is required for models outside the zoo (module:factory or file.py:factory)",
        "fieldPath": ".inputShape",
        "reason": "FieldValueRequired",
    },
]

VARIANTS_VALIDATIONS: list[dict[str, str]] = [
    {
        "rule": "has(self.family) != has(self.custom)",
        "message": "give exactly one of spec.variants.family or spec.variants.custom",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "has(self.target.throughput) != has(self.target.accuracy)",
        "message": "give exactly one of spec.variants.target.throughput or spec.variants.target.accuracy",
        "fieldPath": ".target",
        "reason": "FieldValueInvalid",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {"name": "Partitions", "type": "integer", "jsonPath": ".status.partitions",
     "description": "Partition pods in the current plan."},
    {"name": "Predicted", "type": "string", "jsonPath": ".status.predicted.latency",
     "description": "Predicted single-request latency."},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "Ready partitions."},
    {"name": "Objective", "type": "string", "jsonPath": ".spec.objective", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class _StructuralJsonSchema(GenerateJsonSchema):
    """pydantic's JSON schema, plus patterns for strings checked by after-validators."""

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        result = super().function_after_schema(schema)
        function = schema["function"].get("function")
        pattern = _VALIDATOR_PATTERNS.get(function) if function is not None else None
        if pattern is not None:
            result = dict(result, pattern=pattern)
        return result


def _resolve(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **siblings}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        siblings = {k: v for k, v in node.items() if k != "allOf"}
        return _resolve({**node["allOf"][0], **siblings}, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    node.pop("title", None)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {any_of} in a structural schema")
        nullable = len(options) < len(any_of)
        node = {**options[0], **node}
        node.pop("title", None)
        if nullable:
            node["nullable"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("Minimum", "Maximum"):
        exclusive = node.get(f"exclusive{bound}")
        if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
            node[bound.lower()] = exclusive
            node[f"exclusive{bound}"] = True
    if node.get("default", 0) is None:
        del node["default"]
    additional = node.get("additionalProperties")
    if additional is False:
        del node["additionalProperties"]
    elif additional is True or (node.get("type") == "object" and not node.get("properties") and additional is None):
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    converted = {key: _structural(value) if key not in ("enum", "default", "properties") else value
                 for key, value in node.items()}
    if "properties" in converted:
        converted["properties"] = {name: _structural(sub) for name, sub in converted["properties"].items()}
    return _ordered(converted)


_KEY_ORDER = ("type", "description", "nullable", "default", "enum", "format", "pattern", "minLength",
              "maxLength", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minItems",
              "maxItems", "items", "required", "properties", "additionalProperties")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a fixed, readable order: type and description first, extensions last."""
    def rank(key: str) -> tuple[int, str]:
        return (_KEY_ORDER.index(key), key) if key in _KEY_ORDER else (len(_KEY_ORDER), key)
    return {key: node[key] for key in sorted(node, key=rank)}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model (camelCase keys, as in YAML)."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_StructuralJsonSchema)
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(_resolve(raw, defs))
    return result


def _reorder(node: dict[str, Any]) -> dict[str, Any]:
    """Re-apply the key order through a whole schema (after keys were added)."""
    result = _ordered(node)
    if isinstance(result.get("items"), dict):
        result["items"] = _reorder(result["items"])
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = _reorder(result["additionalProperties"])
    if "properties" in result:
        result["properties"] = {name: _reorder(sub) for name, sub in result["properties"].items()}
    return result


def _at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for key in path:
        node = node["properties"][key]
    return node


def spec_schema() -> dict[str, Any]:
    schema = openapi_schema(DeploymentSpec)
    for path, bounds in CRD_BOUNDS.items():
        _at(schema, path).update(bounds)
    devices = _at(schema, ("devices",))
    devices["x-kubernetes-list-type"] = "map"
    devices["x-kubernetes-list-map-keys"] = ["name"]
    schema["x-kubernetes-validations"] = copy.deepcopy(SPEC_VALIDATIONS)
    _at(schema, ("model",))["x-kubernetes-validations"] = copy.deepcopy(MODEL_VALIDATIONS)
    _at(schema, ("models",))["items"]["x-kubernetes-validations"] = [
        {**rule, "message": rule["message"].replace("spec.model.", "spec.models[].")} for rule in MODEL_VALIDATIONS]
    _at(schema, ("variants",))["x-kubernetes-validations"] = copy.deepcopy(VARIANTS_VALIDATIONS)
    schema["description"] = ("What to run (model), where (nodes selected by label, or named), and what to "
                             "optimise (objective); edgepart decides how to split it.")
    return _reorder(schema)


def status_schema() -> dict[str, Any]:
    schema = openapi_schema(DeploymentStatus)
    conditions = _at(schema, ("conditions",))
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema["description"] = "Observed state, written by the edgepart operator."
    return _reorder(schema)


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "edgepart", "app.kubernetes.io/part-of": "edgepart"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": KIND.lower(),
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A CNN split across edge devices, one pod per partition.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }


HEADER = ("# Generated from edgepart.spec.DeploymentSpec and edgepart.operator.status.DeploymentStatus\n"
          "# by `edgepart crd -o manifests/crds/edgepart.io_dnndeployments.yaml`. Do not edit.\n")


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
