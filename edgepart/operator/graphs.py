"""Layer graphs of models outside the zoo: traced by a Job, handed back as data, stored in a ConfigMap.

The operator never imports a model's code. A zoo model is edgepart's own code and is traced in the
operator's process (on the meta device: no weights); a reference the cluster admin listed in
`trustedModels` too. Any other model is traced by a Job that runs the image (`edgepart trace --markers`):
the Job prints the graph between two marker lines, the operator validates it as data
(`edgepart.graph.serial`) and keeps it in a ConfigMap named after the graph key, which every deployment of
that model (same reference, input shape and image) in the namespace plans from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgepart.graph.layer_graph import GraphError, LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.graph.serial import GRAPH_BEGIN, GRAPH_END, graph_from_json
from edgepart.operator.names import LABEL_GRAPH, LABEL_GRAPH_KEY, digest
from edgepart.operator.profiles import JobState
from edgepart.operator.render import GRAPH_KEY

__all__ = ["GraphSet", "TraceJob", "check_graph", "graph_from_log", "graph_key", "graphs_from_config_maps"]


def graph_key(model: ModelRef, image: str) -> str:
    """What a traced graph depends on: the reference, the input shape, and the image whose code ran."""
    return digest([model.name, list(model.input_shape or ()), image], 16)


def check_graph(graph: LayerGraph, model: ModelRef, source: str) -> LayerGraph:
    """`graph` is one of `model` (the name and input shape it was traced with)."""
    if graph.model_name != model.name:
        raise GraphError(f"{source}: the graph is of model {graph.model_name[:200]!r}, not {model.name!r}")
    if model.input_shape is not None and tuple(graph.input_shape) != tuple(model.input_shape):
        raise GraphError(f"{source}: the graph was traced with input shape {list(graph.input_shape)}, "
                         f"the model takes {list(model.input_shape)}")
    return graph


@dataclass(frozen=True)
class GraphSet:
    """Traced graphs by key, and the keys whose ConfigMap could not be read (with why)."""

    graphs: Mapping[str, LayerGraph]
    errors: Mapping[str, str]


def graphs_from_config_maps(objects: Sequence[Mapping[str, Any]]) -> GraphSet:
    graphs: dict[str, LayerGraph] = {}
    errors: dict[str, str] = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        key = labels.get(LABEL_GRAPH_KEY)
        if labels.get(LABEL_GRAPH) != "true" or not isinstance(key, str) or not key:
            continue
        source = f"ConfigMap {meta.get('name')}"
        text = (obj.get("data") or {}).get(GRAPH_KEY)
        if not isinstance(text, str):
            errors[key] = f"{source}: no data key {GRAPH_KEY!r}"
            continue
        try:
            graphs[key] = graph_from_json(text, source)
        except GraphError as err:
            errors[key] = str(err)
    return GraphSet(graphs, {k: v for k, v in errors.items() if k not in graphs})


def graph_from_log(log: str, source: str = "tracing job log") -> tuple[LayerGraph, str]:
    """The graph a tracing Job printed between the marker lines of its log, and its JSON text."""
    begin = log.rfind(GRAPH_BEGIN)
    end = log.rfind(GRAPH_END)
    if begin < 0 or end < begin:
        raise GraphError(f"{source}: no graph between {GRAPH_BEGIN!r} and {GRAPH_END!r}")
    text = log[begin + len(GRAPH_BEGIN): end].strip()
    return graph_from_json(text, source), text


@dataclass(frozen=True)
class TraceJob:
    """A tracing Job as the operator sees it."""

    name: str
    key: str
    succeeded: bool
    failed: bool
    message: str = ""

    @staticmethod
    def from_object(obj: Mapping[str, Any]) -> TraceJob:
        state = JobState.from_object(obj)
        key = str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_GRAPH_KEY, ""))
        return TraceJob(state.name, key, state.succeeded, state.failed, state.message)
