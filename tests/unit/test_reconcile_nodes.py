"""Devices from Nodes: quantities, readiness, device classes, selection, and the short form of `render`."""

from __future__ import annotations

from typing import Any

import pytest

from edgepart.operator.nodes import (
    NodeError,
    format_cpu,
    format_memory,
    node_from_object,
    nodes_from_documents,
    select_nodes,
)


def test_formats_round_up() -> None:
    assert format_cpu(0.0001) == "1m" and format_cpu(3.2) == "3200m"
    assert format_memory(1) == "1Mi" and format_memory(2**30 + 1) == "1025Mi"


def node(name: str, ready: str = "True", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64", **(labels or {})}},
            "spec": spec, "status": {"allocatable": {"cpu": "3800m", "memory": "7901468Ki"},
                                     "conditions": [{"type": "MemoryPressure", "status": "False"},
                                                    {"type": "Ready", "status": ready}]}}


def test_a_node_object_becomes_a_device() -> None:
    info = node_from_object(node("pi-1", labels={"edgepart.io/device-class": "rpi4"}))
    assert (info.name, info.arch, info.device_class, info.ready, info.usable) == ("pi-1", "arm64", "rpi4", True, True)
    assert info.cpu == pytest.approx(3.8) and info.memory == 7901468 * 1024
    assert not node_from_object(node("pi-2", ready="Unknown")).usable
    cordoned = node_from_object(node("pi-3", unschedulable=True))
    assert cordoned.ready and not cordoned.usable and cordoned.why_unusable == "Unschedulable"


def test_nodes_without_a_class_label_are_grouped_by_arch_and_size() -> None:
    a, b = node_from_object(node("a")), node_from_object(node("b"))
    assert a.device_class == b.device_class == "arm64-3p8cpu-8gi"


def test_documents_in_every_form() -> None:
    items = [node("b"), node("a")]
    assert [n.name for n in nodes_from_documents({"kind": "NodeList", "items": items})] == ["a", "b"]
    assert [n.name for n in nodes_from_documents(items)] == ["a", "b"]
    short = nodes_from_documents([{"name": "x", "cpu": "2", "memory": "1Gi", "deviceClass": "tiny",
                                   "labels": {"pool": "edge"}}])
    assert short[0].device_class == "tiny" and short[0].labels["kubernetes.io/hostname"] == "x"
    with pytest.raises(NodeError, match="duplicate"):
        nodes_from_documents([node("a"), node("a")])
    with pytest.raises(NodeError, match=r"nodes\[0\]: unknown fields \['gpu'\]"):
        nodes_from_documents([{"name": "x", "gpu": 1}])
    with pytest.raises(NodeError, match=r"nodes\[0\]\.cpu: cpu .many."):
        nodes_from_documents([{"name": "x", "cpu": "many"}])


def test_selection_by_labels_and_names() -> None:
    nodes = nodes_from_documents([node("a", labels={"pool": "edge"}), node("b", labels={"pool": "edge"}),
                                  node("c", labels={"pool": "core"})])
    assert [n.name for n in select_nodes(nodes, {"pool": "edge"})] == ["a", "b"]
    assert [n.name for n in select_nodes(nodes, {"pool": "edge"}, ["b", "c"])] == ["b"]
    assert [n.name for n in select_nodes(nodes, {}, ["c"])] == ["c"]
