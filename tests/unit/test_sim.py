"""The discrete-event simulator agrees with the evaluator for one request and with the bottleneck law
under saturation; the SVG drawing is well formed."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.registry import solve
from edgepart.sim.draw import plan_svg
from edgepart.sim.simulate import LatencyStats, poisson_arrivals, simulate

REF = ModelRef("squeezenet1_1")


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return load_graph(REF)


def cluster(medium: str = "switched", n: int = 4) -> Cluster:
    base = reference_profile()
    return Cluster(tuple(Device(f"d{i}", base, 0.05 * (1 + i)) for i in range(n)), "d0", medium,  # type: ignore[arg-type]
                   Link(1e-3, 12.5e6))


@pytest.mark.parametrize("medium", ["switched", "shared"])
@pytest.mark.parametrize("solver", ["fused-dp", "pipeline-dp", "ftp-grid", "layerwise", "single"])
def test_one_request_takes_the_evaluators_latency(graph, medium: str, solver: str) -> None:  # type: ignore[no-untyped-def]
    target = cluster(medium)
    plan = solve(graph, REF, target, "latency", solver)
    result = simulate(plan, graph, target, None, 1)
    assert plan.predicted is not None
    assert result.latency.mean_s == pytest.approx(plan.predicted.latency_s, rel=1e-12)
    assert len(result.stages) == len(plan.stage_view())
    for simulated, predicted in zip(result.stages, plan.predicted.stages, strict=True):
        assert simulated.time_s == pytest.approx(predicted.time_s, rel=1e-9, abs=1e-15)
        assert simulated.queue_s >= 0


def test_saturated_pipeline_reaches_the_bottleneck_throughput(graph) -> None:  # type: ignore[no-untyped-def]
    target = cluster()
    plan = solve(graph, REF, target, "throughput", "pipeline-dp")
    assert len(plan.stage_view()) >= 2
    result = simulate(plan, graph, target, None, 400)
    assert plan.predicted is not None
    bound = plan.predicted.throughput_per_s
    assert result.throughput_per_s <= bound * (1 + 1e-9)
    assert result.throughput_per_s >= 0.95 * bound
    assert max(result.utilisation.values()) > 0.95  # the bottleneck is kept busy
    assert result.latency.max_s > result.latency.p50_s >= plan.predicted.latency_s * (1 - 1e-9)


def test_light_poisson_load_sees_little_queueing(graph) -> None:  # type: ignore[no-untyped-def]
    target = cluster()
    plan = solve(graph, REF, target, "latency", "fused-dp")
    assert plan.predicted is not None
    rate = 0.05 * plan.predicted.throughput_per_s
    result = simulate(plan, graph, target, rate, 300, seed=3)
    assert result.requests == 300 and result.rate_per_s == rate
    assert result.latency.p50_s == pytest.approx(plan.predicted.latency_s, rel=0.05)
    assert result.throughput_per_s == pytest.approx(rate, rel=0.25)
    again = simulate(plan, graph, target, rate, 300, seed=3)
    assert again.latency == result.latency  # seeded


def test_heavy_load_queues(graph) -> None:  # type: ignore[no-untyped-def]
    target = cluster()
    plan = solve(graph, REF, target, "latency", "fused-dp")
    assert plan.predicted is not None
    result = simulate(plan, graph, target, 3 * plan.predicted.throughput_per_s, 300)
    assert result.latency.mean_s > 5 * plan.predicted.latency_s
    assert sum(s.queue_s for s in result.stages) > 0


def test_poisson_arrivals_and_stats() -> None:
    times = poisson_arrivals(10.0, 5000, seed=1)
    assert times == sorted(times) and times[0] == 0.0
    assert (len(times) - 1) / times[-1] == pytest.approx(10.0, rel=0.05)
    stats = LatencyStats.of([1.0, 2.0, 3.0, 4.0])
    assert stats.p50_s == 2.0 and stats.max_s == 4.0 and stats.mean_s == 2.5
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 3)


def test_svg_draws_gantt_and_tiles(graph) -> None:  # type: ignore[no-untyped-def]
    target = cluster()
    plan = solve(graph, REF, target, "latency", "fused-dp")
    svg = plan_svg(plan, graph, target)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    text = "".join(root.itertext())
    for device in plan.devices:
        assert device in text
    assert "compute" in svg and math.isfinite(float(root.attrib["height"]))
