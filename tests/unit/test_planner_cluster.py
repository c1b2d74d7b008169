"""Cluster descriptions: the sample YAML files, speeds and profiles, links, and clear errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import (
    Cluster,
    ClusterError,
    Device,
    Link,
    cluster_from_spec,
    load_cluster_file,
    reference_message_overhead,
    reference_profile,
)
from edgepart.planner.costmodel import Roofline, load_profile
from edgepart.spec import SpecError, cluster_from_dict

EXAMPLES = Path(__file__).parents[2] / "examples" / "clusters"


@pytest.mark.parametrize("name,count", [("homogeneous-4", 4), ("homogeneous-8", 8), ("heterogeneous-edge", 6)])
def test_sample_clusters_load(name: str, count: int) -> None:
    cluster = load_cluster_file(EXAMPLES / f"{name}.yaml")
    assert len(cluster) == count
    assert cluster.master in cluster.names


def test_heterogeneous_sample_has_speeds_memory_and_a_wired_pair() -> None:
    cluster = load_cluster_file(EXAMPLES / "heterogeneous-edge.yaml")
    assert cluster.master == "pi-0" and cluster.medium == "shared"
    assert cluster.device("edge-server").speed == 4.0
    assert cluster.device("pi-1").memory_bytes == 2 * 2**30
    wired = cluster.link("edge-server", "jetson-0")
    assert wired == cluster.link("jetson-0", "edge-server")  # an override applies both ways
    assert wired.bandwidth_Bps == pytest.approx(1e9 / 8)
    assert cluster.wire("edge-server", "jetson-0").alpha_s == pytest.approx(2e-4)
    # the cost model's link adds both ends' per-message software time to the wire's latency
    ends = cluster.device("edge-server").message_s + cluster.device("jetson-0").message_s
    assert ends > 0 and wired.alpha_s == pytest.approx(2e-4 + ends)
    assert cluster.link("pi-1", "pi-2").bandwidth_Bps == pytest.approx(100e6 / 8)
    assert cluster.link("pi-1", "pi-1").time(10**9) == 0.0


def test_a_profiles_message_overhead_round_trips_and_scales_with_speed(tmp_path: Path) -> None:
    profile = replace(reference_profile().scaled(1.0, name="measured"), message_overhead_s=3e-3)
    profile.save(tmp_path / "dev.json")
    loaded = load_profile(tmp_path / "dev.json")
    assert loaded.message_overhead_s == pytest.approx(3e-3)
    (tmp_path / "c.yaml").write_text(
        "devices:\n"
        "  - {name: a, profile: dev.json, speed: 0.5}\n"
        "  - {name: b, speed: 2}\n"
        "network: {bandwidth: 10MB/s, latency: 1ms}\n")
    cluster = load_cluster_file(tmp_path / "c.yaml")
    assert cluster.device("a").message_s == pytest.approx(6e-3)
    assert cluster.device("b").message_s == pytest.approx(reference_message_overhead() / 2)
    assert cluster.link("a", "b").alpha_s == pytest.approx(1e-3 + 6e-3 + reference_message_overhead() / 2)
    assert cluster.tx("a", "b", 10e6) == pytest.approx(cluster.link("a", "b").alpha_s + 1.0)
    with pytest.raises(ClusterError, match="message overhead"):
        Device("x", reference_profile(), message_overhead_s=-1.0)


def test_a_devices_own_message_cost_is_its_time_per_end_whatever_its_speed(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "devices:\n"
        "  - {name: a, speed: 0.2, messageCost: 5ms}\n"
        "  - {name: b, speed: 0.2}\n"
        "network: {bandwidth: 10MB/s, latency: 1ms}\n")
    cluster = load_cluster_file(tmp_path / "c.yaml")
    assert cluster.device("a").message_s == pytest.approx(5e-3)  # given, not scaled by the speed again
    assert cluster.device("b").message_s == pytest.approx(reference_message_overhead() / 0.2)
    assert cluster.link("b", "a").alpha_s == pytest.approx(1e-3 + 5e-3 + reference_message_overhead() / 0.2)


def test_link_time_and_local_transfers() -> None:
    link = Link(2e-3, 12.5e6)
    assert link.time(12.5e6) == pytest.approx(1.002)
    assert link.time(0) == 0.0
    with pytest.raises(ClusterError):
        Link(0.0, 0.0)


def test_speed_scales_the_reference_and_profiles_load_relative_to_the_file(tmp_path: Path) -> None:
    profile = reference_profile().scaled(1.0, name="measured")
    profile.save(tmp_path / "pi.json")
    (tmp_path / "c.yaml").write_text(
        "devices:\n"
        "  - {name: a, speed: 2}\n"
        "  - {name: b, profile: pi.json}\n"
        "  - {name: c, profile: pi.json, speed: 0.5}\n"
        "network: {bandwidth: 10MB/s, latency: 1ms}\n")
    cluster = load_cluster_file(tmp_path / "c.yaml")
    layer = load_graph(ModelRef("alexnet")).layers[0]
    base = reference_profile().layer_time(layer)
    assert cluster.device("a").layer_time(layer) == pytest.approx(base / 2)
    assert cluster.device("b").profile.name == "measured"
    assert cluster.device("c").layer_time(layer) == pytest.approx(base * 2)
    assert cluster.master == "a"
    assert cluster.network == Link(1e-3, 10e6)


def test_profiles_in_memory_take_precedence(tmp_path: Path) -> None:
    spec = cluster_from_dict({"devices": [{"name": "a"}, {"name": "b", "profile": "/nonexistent.json"}]})
    custom = reference_profile().scaled(3.0, name="custom")
    cluster = cluster_from_spec(spec, profiles={"b": custom})
    assert cluster.device("b").profile is custom


@pytest.mark.parametrize("document,message", [
    ({"devices": [{"name": "a", "profile": "missing.json"}]}, "devices[0] (a).profile: cannot read profile"),
])
def test_cluster_errors_name_the_device(tmp_path: Path, document: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ClusterError) as err:
        cluster_from_spec(cluster_from_dict(document), base_dir=tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize("document,message", [
    ({"devices": [{"name": "a"}], "network": {"bandwidth": "100Mbit"}}, "network.bandwidth"),
    ({"devices": [{"name": "a"}], "network": {"bandwidth": "0Mbps"}}, "greater than zero"),
    ({"devices": [{"name": "a"}], "network": {"latency": "2 fortnights"}}, "network.latency"),
    ({"devices": [{"name": "a"}], "master": "b"}, "master: 'b' is not one of the devices"),
    ({"devices": [{"name": "a", "memory": "lots"}]}, "devices[0].memory"),
    ({"devices": [{"name": "a", "messageCost": "fast"}]}, "devices[0].messageCost"),
    ({"devices": [{"name": "a"}], "network": {"links": [{"from": "a", "to": "z"}]}}, "'z' is not one of"),
])
def test_spec_errors_name_the_field(document: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SpecError) as err:
        cluster_from_dict(document, "cluster.yaml")
    assert message in str(err.value)


def test_homogeneous_and_restrict() -> None:
    cluster = Cluster.homogeneous(3, bandwidth="1Gbps", prefix="dev-")
    assert cluster.names == ("dev-0", "dev-1", "dev-2") and cluster.master == "dev-0"
    assert cluster.network.bandwidth_Bps == pytest.approx(1.25e8)
    assert cluster.restrict(["dev-0", "dev-2"]).names == ("dev-0", "dev-2")
    with pytest.raises(ClusterError, match="master"):
        cluster.restrict(["dev-1"])
    with pytest.raises(ClusterError):
        Cluster.homogeneous(0)
    with pytest.raises(ClusterError, match="unique"):
        Cluster((Device("x", reference_profile()), Device("x", reference_profile())), "x")
    bare = Device("r", reference_profile().scaled(1.0))
    assert bare.profile.roofline == Roofline(reference_profile().roofline.peak_flops,
                                             reference_profile().roofline.mem_bandwidth)
