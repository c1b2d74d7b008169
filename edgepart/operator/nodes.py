"""Devices from Kubernetes Nodes: selector, architecture, allocatable CPU and memory, device class.

A Node object (as the API returns it) or a short form (for `edgepart render
--nodes nodes.yaml`, no cluster needed) becomes a frozen `NodeInfo`. The device
class comes from the `edgepart.io/device-class` label; a node without it gets
a class named after its architecture and size, so nodes of the same kind share
one profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgepart.operator.names import ARCH_LABEL, LABEL_DEVICE_CLASS, dns_label, matches
from edgepart.spec import parse_cpu, parse_memory


class NodeError(ValueError):
    """A node document that cannot be read; the message names the node and field."""


def format_cpu(cores: float) -> str:
    """Cores as a Kubernetes CPU quantity in millicores ('250m'), at least 1m."""
    return f"{max(1, math.ceil(cores * 1000))}m"


def format_memory(num_bytes: int) -> str:
    """Bytes as a Kubernetes memory quantity in MiB, rounded up ('384Mi')."""
    return f"{max(1, math.ceil(num_bytes / 2**20))}Mi"


@dataclass(frozen=True)
class Taint:
    """A node taint (spec.taints): pods without a matching toleration stay off the node (effect)."""

    key: str
    effect: str
    value: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """What the planner needs to know about one Kubernetes node."""

    name: str
    cpu: float  # allocatable cores
    memory: int  # allocatable bytes
    arch: str = "amd64"
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    schedulable: bool = True
    device_class: str = ""
    taints: tuple[Taint, ...] = ()

    @property
    def usable(self) -> bool:
        return self.ready and self.schedulable

    @property
    def why_unusable(self) -> str:
        if not self.ready:
            return "NotReady"
        if not self.schedulable:
            return "Unschedulable"
        return ""


def default_device_class(arch: str, cpu: float, memory: int) -> str:
    """Nodes with no device-class label: one class per architecture and size."""
    return dns_label(arch, f"{cpu:g}cpu".replace(".", "p"), f"{round(memory / 2**30)}gi")


def _condition_ready(status: Mapping[str, Any]) -> bool:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _taints(items: Any, where: str) -> tuple[Taint, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise NodeError(f"{where}: a list of taints")
    taints = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get("key") or not item.get("effect"):
            raise NodeError(f"{where}[{i}]: a taint needs a key and an effect")
        taints.append(Taint(key=str(item["key"]), effect=str(item["effect"]), value=str(item.get("value") or "")))
    return tuple(taints)


def node_from_object(obj: Mapping[str, Any]) -> NodeInfo:
    """A Node as the API returns it (a dict with metadata, spec, status)."""
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise NodeError("node: metadata.name is missing")
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    status = obj.get("status") or {}
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    try:
        cpu = parse_cpu(allocatable.get("cpu", "1"))
    except ValueError as err:
        raise NodeError(f"node {name}: status.allocatable.cpu: {err}") from None
    try:
        memory = parse_memory(allocatable.get("memory", "1Gi"))
    except ValueError as err:
        raise NodeError(f"node {name}: status.allocatable.memory: {err}") from None
    arch = labels.get(ARCH_LABEL) or (status.get("nodeInfo") or {}).get("architecture") or "amd64"
    spec = obj.get("spec") or {}
    device_class = labels.get(LABEL_DEVICE_CLASS) or default_device_class(arch, cpu, memory)
    return NodeInfo(name=name, cpu=cpu, memory=memory, arch=arch, labels=labels,
                    ready=_condition_ready(status), schedulable=not spec.get("unschedulable", False),
                    device_class=device_class, taints=_taints(spec.get("taints"), f"node {name}: spec.taints"))


def node_from_short_form(item: Mapping[str, Any], index: int = 0) -> NodeInfo:
    """`{name, cpu, memory, arch, labels, deviceClass, ready, schedulable, taints}`; all but the name optional."""
    where = f"nodes[{index}]"
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise NodeError(f"{where}.name: required")
    unknown = set(item) - {"name", "cpu", "memory", "arch", "labels", "deviceClass", "ready", "schedulable",
                           "taints"}
    if unknown:
        raise NodeError(f"{where}: unknown fields {sorted(unknown)}")
    try:
        cpu = parse_cpu(item.get("cpu", "4"))
    except ValueError as err:
        raise NodeError(f"{where}.cpu: {err}") from None
    try:
        memory = parse_memory(item.get("memory", "4Gi"))
    except ValueError as err:
        raise NodeError(f"{where}.memory: {err}") from None
    labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
    arch = str(item.get("arch") or labels.get(ARCH_LABEL) or "amd64")
    labels.setdefault(ARCH_LABEL, arch)
    labels.setdefault("kubernetes.io/hostname", name)
    device_class = str(item.get("deviceClass") or labels.get(LABEL_DEVICE_CLASS)
                       or default_device_class(arch, cpu, memory))
    labels.setdefault(LABEL_DEVICE_CLASS, device_class)
    return NodeInfo(name=name, cpu=cpu, memory=memory, arch=arch, labels=labels,
                    ready=bool(item.get("ready", True)), schedulable=bool(item.get("schedulable", True)),
                    device_class=device_class, taints=_taints(item.get("taints"), f"{where}.taints"))


def nodes_from_documents(data: Any) -> tuple[NodeInfo, ...]:
    """Nodes from YAML data: a NodeList / `kind: List`, a list of Node objects, or the short form."""
    if isinstance(data, Mapping) and isinstance(data.get("items"), list):
        data = data["items"]
    elif isinstance(data, Mapping) and isinstance(data.get("nodes"), list):
        data = data["nodes"]
    elif isinstance(data, Mapping) and data.get("kind") == "Node":
        data = [data]
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        raise NodeError("nodes: expected a list of Node objects, a NodeList, or a list of "
                        "{name, cpu, memory, arch, labels, deviceClass}")
    nodes = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise NodeError(f"nodes[{i}]: expected a mapping")
        nodes.append(node_from_object(item) if item.get("kind") == "Node" or "metadata" in item
                     else node_from_short_form(item, i))
    names = [n.name for n in nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NodeError(f"nodes: duplicate node names {dupes}")
    return tuple(sorted(nodes, key=lambda n: n.name))


def select_nodes(nodes: Sequence[NodeInfo], selector: Mapping[str, str],
                 names: Sequence[str] = ()) -> tuple[NodeInfo, ...]:
    """Nodes whose labels match `selector` and, when `names` is given, whose name is listed."""
    wanted = set(names)
    return tuple(sorted((n for n in nodes if matches(n.labels, selector) and (not wanted or n.name in wanted)),
                        key=lambda n: n.name))
