"""The DNNDeployment CRD: generated from the pydantic spec, structural, valid, with working CEL rules."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from k8s_fakes import ROOT, cel_violations, openapi_to_jsonschema, validate_strict
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from edgepart.cli import app
from edgepart.operator import crd
from edgepart.operator.status import PHASES, DeploymentStatus
from edgepart.spec import DeploymentSpec, parse_bandwidth, parse_duration, parse_memory

CRD_FILE = ROOT / "manifests" / "crds" / "edgepart.io_dnndeployments.yaml"
VERSION = crd.build_crd()["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]


def test_the_manifest_is_what_the_model_generates() -> None:
    assert CRD_FILE.read_text() == crd.crd_yaml(), "regenerate with: edgepart crd -o " + str(CRD_FILE.relative_to(ROOT))
    assert yaml.safe_load(CRD_FILE.read_text()) == crd.build_crd()


def test_the_crd_command_prints_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["crd"])
    assert result.exit_code == 0 and result.output == crd.crd_yaml()
    out = tmp_path / "crd.yaml"
    assert CliRunner().invoke(app, ["crd", "-o", str(out)]).exit_code == 0
    assert out.read_text() == CRD_FILE.read_text()


def test_validates_strictly() -> None:
    validate_strict(crd.build_crd())


def _unwrap(annotation: Any) -> Any:
    """X | None -> X; Annotated[X, ...] -> X."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _check_model(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    """Every field of the pydantic model, and nothing else, with the same requiredness, type and enums."""
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    assert set(schema["properties"]) == set(fields), where
    assert set(schema.get("required", [])) == {alias for alias, info in fields.items() if info.is_required()}, where
    for alias, info in fields.items():
        node = schema["properties"][alias]
        here = f"{where}.{alias}"
        if info.description:
            assert node["description"] == info.description, here
        annotation = _unwrap(info.annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert node["type"] == "object", here
            _check_model(annotation, node, here)
        elif origin is Literal:
            assert node["type"] == "string" and node["enum"] == list(typing.get_args(annotation)), here
        elif origin is list:
            assert node["type"] == "array", here
            item = _unwrap(typing.get_args(annotation)[0])
            if isinstance(item, type) and issubclass(item, BaseModel):
                _check_model(item, node["items"], f"{here}[]")
        elif origin is dict:
            assert node["type"] == "object", here
        else:
            expected = {str: "string", int: "integer", float: "number", bool: "boolean"}[annotation]
            assert node["type"] == expected, here
        if info.default is not None and not callable(info.default_factory) and isinstance(info.default, str | int):
            assert node.get("default") == info.default, here


def test_spec_schema_matches_the_pydantic_model() -> None:
    _check_model(DeploymentSpec, SPEC, "spec")
    assert SCHEMA["required"] == ["spec"]


def test_status_schema_matches_the_status_model() -> None:
    _check_model(DeploymentStatus, STATUS, "status")
    assert STATUS["properties"]["phase"]["enum"] == list(PHASES)
    assert STATUS["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def _walk(node: Any, path: str = "") -> typing.Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in (node.get("properties") or {}).items():
            yield from _walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], f"{path}[{key}]")


def test_the_schema_is_structural() -> None:
    for path, node in _walk(SCHEMA):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "const", "$defs"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert node.get("additionalProperties") is not False, path
        assert not (node.get("properties") and node.get("additionalProperties")), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be the OpenAPI 3.0 boolean"
    assert SPEC["properties"]["solverOptions"]["x-kubernetes-preserve-unknown-fields"] is True
    devices = SPEC["properties"]["devices"]
    assert devices["x-kubernetes-list-type"] == "map" and devices["x-kubernetes-list-map-keys"] == ["name"]
    assert devices["maxItems"] == 256  # bounds the cost of the CEL rules over devices


def test_status_subresource_printer_columns_and_names() -> None:
    spec = crd.build_crd()["spec"]
    assert spec["names"]["shortNames"] == ["dnn", "dnnd"] and spec["scope"] == "Namespaced"
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert list(columns)[:4] == ["Phase", "Partitions", "Predicted", "Ready"] and "Age" in columns
    for name, path in columns.items():
        node = SCHEMA
        if path == ".metadata.creationTimestamp":
            continue
        for part in path.strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in ("string", "integer"), name


def valid_by_the_api_server(body: dict[str, Any]) -> list[str]:
    """What the API server would say of this object: schema errors, then CEL rule violations."""
    validator = jsonschema.Draft202012Validator(openapi_to_jsonschema(SCHEMA))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(body)]
    return errors or cel_violations(SCHEMA, body)


def resource(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("spec", [
    {"model": {"name": "vgg16"}, "nodeSelector": {"pool": "edge"}},
    {"model": {"name": "vgg16"}, "devices": [{"name": "a"}, {"name": "b"}], "master": "b"},
    {"model": {"name": "pkg.mod:build", "inputShape": [1, 3, 64, 64]}, "nodeSelector": {"a": "b"},
     "network": {"bandwidth": "12.5MB/s", "latency": "500us", "links": [{"from": "a", "to": "b", "bandwidth": "1Gbps"}]},
     "devices": [{"name": "a", "memory": "512Mi", "speed": 2.5}], "solverOptions": {"grid": [2, 2], "maxFused": 3}},
    {"variants": {"family": "digits", "target": {"throughput": 1000}}, "nodeSelector": {"pool": "edge"}},
    {"variants": {"custom": {"name": "f", "task": "t", "variants": [
        {"name": "v", "model": {"name": "alexnet"}, "accuracy": {"value": 0.5, "kind": "declared", "source": "s"}}]},
        "target": {"accuracy": 0.5}, "power": {"a": 3}}, "devices": [{"name": "a"}]},
])
def test_valid_specs_pass_the_schema_the_cel_rules_and_pydantic(spec: dict[str, Any]) -> None:
    assert valid_by_the_api_server(resource(**spec)) == []
    DeploymentSpec.model_validate(spec)


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {"name": "vgg16"}}, "spec.devices or spec.nodeSelector is required"),
    ({"model": {"name": "vgg16"}, "nodeSelector": {}}, "spec.devices or spec.nodeSelector is required"),
    ({"model": {"name": "vgg16"}, "devices": [{"name": "a"}], "master": "b"}, "spec.master must be"),
    ({"model": {"name": "pkg.mod:build"}, "nodeSelector": {"a": "b"}}, "inputShape is required"),
    ({"model": {"name": "vgg16"}, "nodeSelector": {"a": "b"}, "objective": "speed"}, "objective"),
    ({"model": {"name": "vgg16"}, "nodeSelector": {"a": "b"}, "network": {"bandwidth": "fast"}}, "bandwidth"),
    ({"model": {"name": "vgg16"}, "nodeSelector": {"a": "b"}, "network": {"latency": "2"}}, "latency"),
    ({"model": {"name": "vgg16"}, "devices": [{"name": "A_B"}]}, "devices.0.name"),
    ({"model": {"name": "vgg16"}, "devices": [{"name": "a", "speed": 0}]}, "speed"),
    ({"model": {"name": "vgg16", "inputShape": [1, 3, 64]}, "nodeSelector": {"a": "b"}}, "inputShape"),
    ({"model": {"name": "vgg16"}, "variants": {"family": "digits", "target": {"throughput": 1}},
      "nodeSelector": {"a": "b"}}, "give one of spec.model"),
    ({"variants": {"target": {"throughput": 1}}, "nodeSelector": {"a": "b"}}, "spec.variants.family or"),
    ({"variants": {"family": "digits", "target": {"throughput": 1, "accuracy": 0.5}}, "nodeSelector": {"a": "b"}},
     "spec.variants.target.throughput or"),
    ({"variants": {"family": "digits", "target": {"throughput": 0}}, "nodeSelector": {"a": "b"}}, "throughput"),
])
def test_invalid_specs_are_rejected_by_the_api_server_and_by_pydantic(spec: dict[str, Any], message: str) -> None:
    problems = valid_by_the_api_server(resource(**spec))
    assert problems and any(message in p for p in problems), problems
    if message in ("spec.devices or spec.nodeSelector is required", "spec.master must be", "inputShape is required"):
        return  # cross-field rules: pydantic leaves them to cluster() and the loader; reconcile names the field too
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate(spec)


@pytest.mark.parametrize(("pattern", "parse", "good", "bad"), [
    (crd.BANDWIDTH_PATTERN, parse_bandwidth, ["100Mbps", "100Mb/s", "100Mbit/s", "1Gbps", "12.5MB/s", "50MiB/s",
                                              "10 kbps", "1e3bps", "8 B/s"],
     ["100", "fast", "100 Mb", "Mbps", "-1Mbps", "1.5.2Mbps", "100mbps", "100mb/s", "100MBPS"]),
    (crd.DURATION_PATTERN, parse_duration, ["2ms", "500us", "0.1s", "1m", "3µs", "10 ns"],
     ["2", "2 MS", "fast", "-2ms", "2h"]),
    (crd.MEMORY_PATTERN, parse_memory, ["512Mi", "2Gi", "1G", "1048576", "1.5Gi", "1e3", "3977908Ki"],
     ["lots", "2GB", "-1Gi", "Gi", "4gi", "512m", "512 Mi"]),
])
def test_string_patterns_accept_what_the_parsers_accept(pattern: str, parse: Any, good: list[str],
                                                        bad: list[str]) -> None:
    for text in good:
        assert re.search(pattern, text), text
        parse(text)
    for text in bad:
        assert not re.search(pattern, text), text
        with pytest.raises(ValueError):
            parse(text)
