"""One reading of bandwidth, memory and CPU everywhere: case-sensitive bits and bytes, Kubernetes quantities."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity

from edgepart.operator.nodes import NodeError, node_from_object, node_from_short_form
from edgepart.planner.cluster import Cluster, cluster_from_spec
from edgepart.runtime.emulate import link_rate_bits
from edgepart.spec import (
    NetworkSpec,
    SpecError,
    cluster_from_dict,
    deployment_from_dict,
    parse_bandwidth,
    parse_cpu,
    parse_memory,
)


@pytest.mark.parametrize(("text", "bytes_per_s"), [
    ("100Mbps", 12_500_000), ("100Mb/s", 12_500_000), ("100Mbit/s", 12_500_000), ("100 Mbps", 12_500_000),
    ("1Gbps", 125_000_000), ("10kbps", 1250), ("10Kbps", 1250), ("8bps", 1), ("8b/s", 1), ("1e3bps", 125),
    ("12.5MB/s", 12_500_000), ("12.5MBps", 12_500_000), ("1GB/s", 1e9), ("8 B/s", 8),
    ("50MiB/s", 50 * 2**20), ("1KiB/s", 1024), ("2GiB/s", 2 * 2**30),
])
def test_bandwidth_b_is_bits_and_capital_b_is_bytes(text: str, bytes_per_s: float) -> None:
    assert parse_bandwidth(text) == bytes_per_s


def test_the_three_spellings_of_a_megabit_agree_and_a_megabyte_is_eight_of_them() -> None:
    assert parse_bandwidth("100Mbps") == parse_bandwidth("100Mb/s") == parse_bandwidth("100Mbit/s")
    assert parse_bandwidth("100MB/s") == 8 * parse_bandwidth("100Mb/s")


@pytest.mark.parametrize("text", ["100mbps", "100mb/s", "100MBPS", "100mB/s", "1gbps", "100MbPS"])
def test_ambiguous_bandwidths_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        parse_bandwidth(text)
    with pytest.raises(SpecError, match=r"network\.bandwidth: .*ambiguous"):
        cluster_from_dict({"devices": [{"name": "a"}], "network": {"bandwidth": text}})


@pytest.mark.parametrize("text", ["100", "fast", "100 Mb", "Mbps", "-1Mbps", "100Mibps", 100])
def test_bandwidths_without_a_known_unit_are_refused(text: Any) -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth(text)


@pytest.mark.parametrize(("text", "value"), [
    ("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1G", 10**9), ("1.5Gi", 3 * 2**29), ("1048576", 2**20),
    (4096, 4096), ("3977908Ki", 3977908 * 1024), ("1e3", 1000), ("1000m", 1), (" 64Mi ", 64 * 2**20),
])
def test_memory_is_a_kubernetes_quantity(text: Any, value: int) -> None:
    assert parse_memory(text) == value == int(parse_quantity(str(text).strip()))


@pytest.mark.parametrize(("text", "words"), [
    ("512m", "0.512 bytes"), ("1.5", "1.5 bytes"), ("4gi", "Kubernetes quantity"), ("2GB", "Kubernetes quantity"),
    ("lots", "Kubernetes quantity"), ("0", "greater than zero"), ("-1Gi", "greater than zero"), (True, "quantity"),
])
def test_memory_below_a_byte_or_in_other_units_is_refused(text: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_memory(text)


def test_512m_memory_is_refused_naming_the_field_everywhere() -> None:
    with pytest.raises(SpecError, match=r"devices\[0\]\.memory: .*0\.512 bytes.*milli"):
        cluster_from_dict({"devices": [{"name": "a", "memory": "512m"}]})
    with pytest.raises(SpecError, match=r"spec\.devices\[0\]\.memory"):
        deployment_from_dict({"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
                              "metadata": {"name": "x"},
                              "spec": {"model": {"name": "vgg16"}, "devices": [{"name": "a", "memory": "512m"}]}})
    with pytest.raises(NodeError, match=r"nodes\[0\]\.memory: .*0\.512 bytes"):
        node_from_short_form({"name": "n", "memory": "512m"})
    with pytest.raises(NodeError, match=r"node n: status\.allocatable\.memory"):
        node_from_object({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "2", "memory": "512m"}}})


@pytest.mark.parametrize(("text", "cores"), [("500m", 0.5), ("4", 4.0), ("1.5", 1.5), (2, 2.0), ("250u", 0.00025)])
def test_cpu_is_a_kubernetes_quantity(text: Any, cores: float) -> None:
    assert parse_cpu(text) == cores


def test_nodes_the_planner_and_the_emulator_read_the_same_numbers() -> None:
    node = node_from_object({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "3500m",
                                                                                   "memory": "3977908Ki"}}})
    assert (node.cpu, node.memory) == (3.5, 3977908 * 1024)
    cluster = cluster_from_spec(cluster_from_dict({"devices": [{"name": "a", "memory": "1536Mi"}, {"name": "b"}],
                                                   "network": {"bandwidth": "100Mb/s"}}))
    assert cluster.device("a").memory_bytes == 1536 * 2**20
    assert cluster.network.bandwidth_Bps == 12_500_000
    assert Cluster.homogeneous(2, bandwidth="100Mbit/s").network.bandwidth_Bps == 12_500_000
    # tc's tbf takes bits per second: 100Mb/s is 100 Mbit/s, not 800
    assert link_rate_bits(NetworkSpec(bandwidth="100Mb/s")) == link_rate_bits(NetworkSpec(bandwidth="100Mbps"))
    assert link_rate_bits(NetworkSpec(bandwidth="100Mb/s")) == 100_000_000
    assert link_rate_bits(NetworkSpec(bandwidth="12.5MB/s")) == 100_000_000
