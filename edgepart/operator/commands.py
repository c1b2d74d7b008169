"""What the `edgepart render`, `edgepart crd` and `edgepart operator` commands do (the CLI parses and prints).

`render` runs the same `reconcile` as the operator, without a cluster: nodes
come from a file (Node objects as `kubectl get nodes -o yaml` prints them, or a
short form), profiles from files, the layer graph of a model outside the zoo
from `edgepart trace` (never imported here, as the operator never does), and
the objects land in a directory, ready for `kubectl apply -f DIR`.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.graph.serial import graph_from_json
from edgepart.operator import crd
from edgepart.operator.configs import ConfigRenderer
from edgepart.operator.graphs import check_graph, graph_key
from edgepart.operator.nodes import NodeError, NodeInfo, nodes_from_documents
from edgepart.operator.planning import PlanFn, compute_plan
from edgepart.operator.reconcile import DesiredState, reconcile
from edgepart.operator.render import SECRET_KEY, Owner
from edgepart.operator.settings import OperatorSettings
from edgepart.planner.costmodel import DeviceProfile, load_profile
from edgepart.spec import API_GROUP, API_VERSION, KIND


class RenderError(EdgepartError, ValueError):
    """An input of `edgepart render` that cannot be used; the message names the file and field."""


def _documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise RenderError(f"cannot read {path}: {err.strerror}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise RenderError(f"{path}: not valid YAML: {err}") from None


def load_resource(path: Path) -> Mapping[str, Any]:
    """The DNNDeployment in a YAML file (the first one, if the file holds several documents)."""
    for doc in _documents(path):
        if isinstance(doc, Mapping) and doc.get("kind") == KIND:
            if doc.get("apiVersion") != f"{API_GROUP}/{API_VERSION}":
                raise RenderError(f"{path}: apiVersion: expected {API_GROUP}/{API_VERSION}, "
                                  f"got {doc.get('apiVersion')!r}")
            return doc
    raise RenderError(f"{path}: no {KIND} document")


def load_nodes(path: Path) -> tuple[NodeInfo, ...]:
    docs = _documents(path)
    data: Any = docs[0] if len(docs) == 1 else docs
    try:
        return nodes_from_documents(data)
    except NodeError as err:
        raise RenderError(f"{path}: {err}") from None


def load_profiles(specs: Sequence[str]) -> dict[str, DeviceProfile]:
    """`CLASS=profile.json` pairs."""
    profiles = {}
    for item in specs:
        device_class, sep, file = item.partition("=")
        if not sep or not device_class or not file:
            raise RenderError(f"--profile {item!r}: expected DEVICE_CLASS=path/to/profile.json")
        profiles[device_class] = load_profile(file)
    return profiles


@dataclass(frozen=True)
class RenderResult:
    desired: DesiredState
    files: tuple[Path, ...]


def load_graph_file(path: Path, resource: Mapping[str, Any], settings: OperatorSettings) -> dict[str, LayerGraph]:
    """The layer graph `edgepart trace` wrote for the resource's model, keyed as the operator keys it."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RenderError(f"--graph: cannot read {path}: {err.strerror}") from None
    graph = graph_from_json(text, str(path))
    model = (resource.get("spec") or {}).get("model") or {}
    shape = model.get("inputShape")
    ref = ModelRef(str(model.get("name", "")), tuple(shape) if isinstance(shape, list) else graph.input_shape)
    check_graph(graph, ref, str(path))
    return {graph_key(ref, settings.image): graph}


def render_directory(resource: Mapping[str, Any], nodes: Sequence[NodeInfo], profiles: Mapping[str, DeviceProfile],
                     output: Path, *, settings: OperatorSettings, configs: ConfigRenderer,
                     planner: PlanFn = compute_plan, owner_uid: str = "",
                     graphs: Mapping[str, LayerGraph] | None = None) -> RenderResult:
    """Reconcile without a cluster and write one YAML file per object (and `status.yaml`).

    Without `owner_uid` the objects carry no owner reference (a reference to a uid that does
    not exist would make the garbage collector delete them).
    """
    meta = resource.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise RenderError("metadata.name: required")
    owner = Owner(name=name, namespace=str(meta.get("namespace") or "default"), uid=owner_uid,
                  generation=int(meta.get("generation") or 1))
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    desired = reconcile(owner, resource.get("spec") or {}, nodes, profiles, settings=settings, planner=planner,
                        configs=configs, now=now, graphs=graphs)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    # the Secret with a fresh value (kubectl apply creates it; re-applying a new render changes it)
    secrets_ = [{**s, "stringData": {SECRET_KEY: secrets.token_urlsafe(32)}} for s in desired.secrets]
    for index, obj in enumerate([*secrets_, *desired.objects, *desired.jobs]):
        path = output / f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        text = yaml.safe_dump(dict(obj), sort_keys=False, width=120)
        if obj["kind"] == "Secret":  # only its owner may read the file
            path.unlink(missing_ok=True)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(text)
        else:
            path.write_text(text)
        files.append(path)
    status_path = output / "status.yaml"
    status_path.write_text(yaml.safe_dump({"status": dict(desired.status)}, sort_keys=False, width=120))
    return RenderResult(desired, (*files, status_path))


def write_crd(output: Path | None) -> str:
    text = crd.crd_yaml()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    return text


def run_operator(configs: ConfigRenderer, *, namespaces: Sequence[str] = (), all_namespaces: bool = False,
                 liveness: str | None = "http://0.0.0.0:8080/healthz", settings: OperatorSettings | None = None,
                 planner: PlanFn | None = None) -> None:
    """Run the kopf operator until interrupted (in the foreground)."""
    import kopf

    import edgepart.operator.handlers  # noqa: F401 - registers the handlers

    settings = settings or OperatorSettings()
    watched = list(namespaces) or list(settings.namespaces) or [os.environ.get("POD_NAMESPACE", "default")]
    memo = kopf.Memo(config_renderer=configs, operator_settings=settings, planner=planner)
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=all_namespaces,
        namespaces=[] if all_namespaces else watched,
        liveness_endpoint=liveness,
        memo=memo,
    ))
