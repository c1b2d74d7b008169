"""From usable nodes and device profiles to a Plan, and from a Plan to pod resources.

The operator plans from the LayerGraph and from the device profiles; it never runs the model, and never
imports one it does not trust: zoo models (edgepart's own code) and references the cluster admin listed
are traced here on the meta device (no weights, no arithmetic); every other graph arrives as data
(`operator.graphs`). The request is a frozen value with a stable digest, so callers can cache plans.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, is_zoo_name, load_graph
from edgepart.operator.names import digest
from edgepart.operator.nodes import NodeInfo
from edgepart.plan import Objective, Plan, Task
from edgepart.planner.cluster import Cluster, cluster_from_spec
from edgepart.planner.costmodel import DeviceProfile
from edgepart.planner.errors import PlanningError
from edgepart.planner.registry import PlanningModel, solve_models
from edgepart.planner.resources import Resources
from edgepart.planner.resources import partition_resources as _partition_resources
from edgepart.spec import ClusterSpec


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on; equal requests give equal plans."""

    models: tuple[tuple[str, ModelRef], ...]  # (model id, reference)
    objective: Objective
    solver: str
    cluster: ClusterSpec
    profiles: Mapping[str, DeviceProfile] = field(default_factory=dict)  # device name -> its class's profile
    options: Mapping[str, Any] = field(default_factory=dict)
    # every model's graph when the caller has it (traced by a Job, or here for a zoo or trusted model), by
    # model id, and what each depends on (`graphs.graph_key`; '' for a model traced here)
    graphs: Mapping[str, LayerGraph] = field(default_factory=dict, compare=False, repr=False)
    graph_keys: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return digest({
            "models": [[mid, m.name, list(m.input_shape or ()), m.weights, m.seed] for mid, m in self.models],
            "graphs": list(self.graph_keys),
            "objective": self.objective,
            "solver": self.solver,
            "options": dict(self.options),
            "cluster": self.cluster.model_dump(by_alias=True, mode="json"),
            "profiles": {name: p.to_dict() for name, p in sorted(self.profiles.items())},
        }, 16)


PlanFn = Callable[[PlanRequest], Plan]


class UntrustedModelError(EdgepartError, ValueError):
    """The operator was asked to import a model that is neither in the zoo nor on the admin's allow-list."""


@functools.lru_cache(maxsize=16)
def graph_of(model: ModelRef, trusted: frozenset[str] = frozenset()) -> LayerGraph:
    """The LayerGraph of a zoo model, or of a reference in `trusted`, traced on the meta device (cached:
    tracing VGG-16 takes a moment). Anything else is refused: tracing imports and runs the model's code."""
    if not is_zoo_name(model.name) and model.name not in trusted:
        raise UntrustedModelError(f"model {model.name[:200]!r} is not in the zoo nor in the operator's "
                                  "trustedModels: the operator does not import it (a tracing Job does)")
    return load_graph(model)


def planner_cluster(request: PlanRequest) -> Cluster:
    """The planner's cluster: one device per usable node, with its class's profile (in memory, no files).

    Nodes of one class share one profile object, so the solvers see them as one kind of device.
    A node with no class profile uses the built-in reference profile times its `speed`.
    """
    cluster = cluster_from_spec(request.cluster)
    devices = tuple(replace(d, profile=request.profiles[d.name]) if d.name in request.profiles else d
                    for d in cluster.devices)
    return replace(cluster, devices=devices)


def graphs_of(request: PlanRequest) -> dict[str, LayerGraph]:
    """Every model's graph: the traced one given with the request, else traced here (zoo or trusted)."""
    return {mid: request.graphs[mid] if mid in request.graphs else graph_of(ref) for mid, ref in request.models}


def compute_plan(request: PlanRequest) -> Plan:
    """Run the solver the spec names (`auto` by default) over the usable nodes."""
    graphs = graphs_of(request)
    models = [PlanningModel(mid, ref, graphs[mid]) for mid, ref in request.models]
    try:
        return solve_models(models, planner_cluster(request), request.objective, request.solver,
                            **dict(request.options))
    except PlanningError as err:
        text = str(err)
        if text.startswith("unknown solver"):
            raise PlanningError(f"spec.solver: {text}") from None
        if "option" in text:
            raise PlanningError(f"spec.solverOptions: {text}") from None
        raise


def plan_digest(plan: Plan) -> str:
    return digest(json.loads(plan.to_json(indent=None)), 10)


def partition_resources(graph: LayerGraph, task: Task, node: NodeInfo, partitions_on_node: int,
                        cpu_share: float = 0.8) -> Resources:
    """Pod requests from the plan (`edgepart.planner.resources`, the formula the containers runtime uses too)."""
    return _partition_resources(graph, task, node.cpu, partitions_on_node, cpu_share)
