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
from edgepart.operator.job_output import between_markers, parse_config_maps
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


def _graph_key_of(obj: Mapping[str, Any]) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    key = labels.get(LABEL_GRAPH_KEY)
    return key if labels.get(LABEL_GRAPH) == "true" and isinstance(key, str) and key else None


def graphs_from_config_maps(objects: Sequence[Mapping[str, Any]]) -> GraphSet:
    return GraphSet(*parse_config_maps(objects, _graph_key_of, GRAPH_KEY, graph_from_json, GraphError))


def graph_from_log(log: str, source: str = "tracing job log") -> tuple[LayerGraph, str]:
    """The graph a tracing Job printed between the marker lines of its log, and its JSON text."""
    text = between_markers(log, GRAPH_BEGIN, GRAPH_END, "graph", source, GraphError)
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
