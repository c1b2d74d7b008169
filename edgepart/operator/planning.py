"""From usable nodes and device profiles to a Plan, and from a Plan to pod resources.

The operator plans from the LayerGraph and from the device profiles; it never runs the model, and never
imports one it does not trust: zoo models (edgepart's own code) and references the cluster admin listed
are traced here on the meta device (no weights, no arithmetic); every other graph arrives as data
(`operator.graphs`). The request is a frozen value with a stable digest, so callers can cache plans.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, is_zoo_name, load_graph
from edgepart.operator.names import digest
from edgepart.operator.nodes import NodeInfo
from edgepart.plan import Objective, Partition, Plan, Stage
from edgepart.planner.cluster import Cluster, cluster_from_spec
from edgepart.planner.costmodel import DeviceProfile
from edgepart.planner.errors import PlanningError
from edgepart.planner.registry import solve
from edgepart.spec import ClusterSpec

# Resident memory of a partition process before it holds any weights (Python, torch, uvicorn).
PROCESS_OVERHEAD_BYTES = 320 * 2**20


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on; equal requests give equal plans."""

    model: ModelRef
    objective: Objective
    solver: str
    cluster: ClusterSpec
    profiles: Mapping[str, DeviceProfile] = field(default_factory=dict)  # device name -> its class's profile
    options: Mapping[str, Any] = field(default_factory=dict)
    # the model's graph when it was traced elsewhere (a Job), and what it depends on (`graphs.graph_key`);
    # None: a zoo (or trusted) model, traced here
    graph: LayerGraph | None = field(default=None, compare=False, repr=False)
    graph_key: str = ""

    @property
    def key(self) -> str:
        return digest({
            "model": [self.model.name, list(self.model.input_shape or ()), self.model.weights, self.model.seed],
            "graph": self.graph_key,
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


def compute_plan(request: PlanRequest) -> Plan:
    """Run the solver the spec names (`auto` by default) over the usable nodes."""
    graph = request.graph if request.graph is not None else graph_of(request.model)
    try:
        return solve(graph, request.model, planner_cluster(request), request.objective, request.solver,
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


@dataclass(frozen=True)
class Resources:
    cpu: float  # cores requested
    memory_request: int  # bytes
    memory_limit: int  # bytes


def _share(region_size: int, full: int) -> float:
    return region_size / full if full else 1.0


def partition_resources(graph: LayerGraph, stage: Stage, partition: Partition, node: NodeInfo,
                        partitions_on_node: int, cpu_share: float = 0.8) -> Resources:
    """Requests from the plan: the partition's weights and activations, and its share of the node's CPU.

    Memory: process overhead + the stage's weights + three live activation buffers of the
    largest layer in the stage, scaled to the partition's share of the output. The limit
    adds the whole model's weights, which the seeded initialisation may hold for a moment.
    """
    full_output = math.prod(graph.shape_at(stage.stop))
    share = _share(partition.output_region.size, full_output)
    batch = graph.batch
    layers = graph.layers[stage.start: stage.stop]
    largest = max((layer.out_bytes for layer in layers), default=0) * batch
    input_bytes = partition.input_region.size * 4 * batch
    weights = graph.weight_bytes(stage.start, stage.stop)
    request = PROCESS_OVERHEAD_BYTES + weights + int(3 * largest * share) + input_bytes
    limit = request + graph.weight_bytes()
    cpu = max(0.1, node.cpu * cpu_share / max(1, partitions_on_node))
    return Resources(cpu=cpu, memory_request=request, memory_limit=limit)
