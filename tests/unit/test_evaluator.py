"""The stage costs (A.3, C.0) on hand-computed cases, the searches' O(1) costs against them, and the task-graph
evaluator: hand-computed task graphs, and exactly the stage costs on every chain solver's plans over the zoo."""

from __future__ import annotations

import random

import pytest

from edgepart.geometry import Region, backprop
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.builders import build_ftp_grid, build_single
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.costmodel import DeviceProfile
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import check_memory, evaluate, evaluate_plan
from edgepart.planner.problem import Problem
from edgepart.planner.segments import RowMaps, strip_region
from edgepart.planner.stage_costs import (
    PartWork,
    busy_times,
    evaluate_works,
    holders,
    part_work,
    schedule_stage,
    stage_times,
)


def two_devices(medium: str = "switched", alpha: float = 0.0, bandwidth: float = 1000.0) -> Cluster:
    base = reference_profile()
    # no per-message software cost: the link is exactly alpha + bytes / bandwidth
    return Cluster((Device("m", base, message_overhead_s=0.0), Device("w", base, message_overhead_s=0.0)), "m",
                   medium, Link(alpha, bandwidth))  # type: ignore[arg-type]


def bare(profile: DeviceProfile, *names: str) -> tuple[Device, ...]:
    return tuple(Device(n, profile, message_overhead_s=0.0) for n in names)


def test_a3_switched_two_devices_by_hand() -> None:
    cluster = two_devices(alpha=0.5, bandwidth=100.0)
    parts = [PartWork("m", 400, 200, 3.0), PartWork("w", 300, 100, 1.0)]
    s = schedule_stage(parts, "m", "m", cluster)
    # w: scatter 0.5 + 3 = 3.5, compute to 4.5, gather 0.5 + 1 = 1.5 -> 6.0; m: local, done at 3.0
    assert s.parts[1].scatter == (0.0, 3.5)
    assert s.parts[1].compute == (3.5, 4.5)
    assert s.parts[1].gather == (4.5, 6.0)
    assert s.parts[0].scatter is None and s.parts[0].gather is None and s.parts[0].compute == (0.0, 3.0)
    assert s.time_s == pytest.approx(6.0)
    assert s.scatter_s == pytest.approx(3.5) and s.compute_s == 3.0 and s.gather_s == pytest.approx(1.5)


def test_a3_fifo_scatter_and_gather_in_completion_order() -> None:
    base = reference_profile()
    cluster = Cluster(bare(base, "m", "a", "b"), "m", "switched", Link(0.0, 1.0))
    parts = [PartWork("a", 2, 1, 5.0), PartWork("b", 1, 4, 1.0)]
    s = schedule_stage(parts, "m", "m", cluster)
    # scatter: a [0, 2], b [2, 3] (the master's send queue); compute a [2, 7], b [3, 4]
    # gather in completion order: b [4, 8] then a [8, 9] (the master's receive queue)
    assert s.parts[0].scatter == (0.0, 2.0) and s.parts[1].scatter == (2.0, 3.0)
    assert s.parts[1].gather == (4.0, 8.0) and s.parts[0].gather == (8.0, 9.0)
    assert s.time_s == 9.0


def test_a3_shared_medium_queues_gathers_behind_scatters() -> None:
    base = reference_profile()
    cluster = Cluster(bare(base, "m", "a", "b"), "m", "shared", Link(0.0, 1.0))
    parts = [PartWork("a", 1, 1, 0.5), PartWork("b", 3, 1, 0.5)]
    s = schedule_stage(parts, "m", "m", cluster)
    # scatter a [0,1], b [1,4]; a computes [1,1.5] but the medium is busy until 4: gather a [4,5], b [5,6]
    assert s.parts[0].gather == (4.0, 5.0) and s.parts[1].gather == (5.0, 6.0)
    switched = schedule_stage(parts, "m", "m",
                              Cluster(cluster.devices, "m", "switched", Link(0.0, 1.0)))
    assert switched.time_s < s.time_s


def test_parts_on_one_device_share_its_compute() -> None:
    cluster = two_devices(bandwidth=1e12)
    parts = [PartWork("w", 1, 1, 2.0), PartWork("w", 1, 1, 3.0)]
    s = schedule_stage(parts, "m", "m", cluster)
    assert s.time_s == pytest.approx(5.0, rel=1e-6)


def test_stage_times_for_many_sinks_equal_one_at_a_time() -> None:
    rng = random.Random(0)
    base = reference_profile()
    devs = tuple(Device(f"d{i}", base) for i in range(4))
    for medium in ("switched", "shared"):
        cluster = Cluster(devs, "d0", medium, Link(1e-3, 1e6))  # type: ignore[arg-type]
        parts = [PartWork(f"d{rng.randrange(4)}", rng.randrange(1, 10**6), rng.randrange(1, 10**6),
                          rng.random()) for _ in range(5)]
        together = stage_times(parts, "d0", cluster.names, cluster)
        alone = [schedule_stage(parts, "d0", sink, cluster).time_s for sink in cluster.names]
        assert together == alone


def test_holders_route_single_stages_directly() -> None:
    assert holders([["a"], ["b"], ["c"]], "m") == ["m", "b", "c", "m"]
    assert holders([["a", "b"], ["c"], ["a", "b"], ["d", "e"]], "m") == ["m", "c", "m", "m", "m"]
    assert holders([["a", "a"]], "m") == ["m", "m"]


def test_pipeline_latency_and_bottleneck_throughput() -> None:
    base = reference_profile()
    cluster = Cluster(bare(base, "m", "u", "v"), "m", "switched", Link(0.0, 10.0))
    works = [[PartWork("u", 10, 20, 1.0)], [PartWork("v", 20, 5, 4.0)]]
    result = evaluate_plan_works(works, cluster)
    # m->u 1 s, compute 1 s, u->v 2 s, compute 4 s, v->m 0.5 s
    assert result.latency_s == pytest.approx(8.5)
    busy = busy_times(works, holders([["u"], ["v"]], "m"), cluster)
    assert busy == pytest.approx({"send:m": 1.0, "recv:u": 1.0, "compute:u": 1.0, "send:u": 2.0, "recv:v": 2.0,
                                  "compute:v": 4.0, "send:v": 0.5, "recv:m": 0.5})
    assert result.throughput_per_s == pytest.approx(1 / 4.0)


def evaluate_plan_works(works: list[list[PartWork]], cluster: Cluster):  # type: ignore[no-untyped-def]
    return evaluate_works(works, cluster)


def test_latency_is_at_least_every_resources_busy_time() -> None:
    graph = load_graph(ModelRef("squeezenet1_1"))
    base = reference_profile()
    for medium in ("switched", "shared"):
        cluster = Cluster(tuple(Device(f"dev-{i}", base, 0.3 + i) for i in range(4)), "dev-0", medium,  # type: ignore[arg-type]
                          Link(1e-3, 12.5e6))
        plan = build_ftp_grid(graph, ModelRef("squeezenet1_1"), cluster.names, (3, 2)).to_plan(cluster.master)
        result = evaluate_plan(plan, graph, cluster)
        assert result.latency_s >= max(result.busy.values()) * (1 - 1e-12)
        assert result.latency_s == pytest.approx(sum(s.time_s for s in result.stage_costs()))
        assert evaluate(plan, graph, cluster).latency_s == result.latency_s


def test_part_work_is_the_sum_of_layer_predictions_over_the_exact_geometry() -> None:
    graph = load_graph(ModelRef("vgg16"))
    device = Device("d", reference_profile(), 0.5)
    cluster = Cluster((device,), "d")
    region = strip_region(graph, 10, 5, 17)
    work = part_work(graph, cluster, 0, 10, "d", region)
    geometry = backprop(graph, 0, 10, region)
    expected = sum(device.layer_time(graph.layers[i], r, 1) for i, r in geometry.regions.items())
    assert work.compute_s == pytest.approx(expected)
    assert work.in_bytes == geometry.input_region.size * 4
    assert work.out_bytes == region.size * 4


def test_memory_check_names_the_device() -> None:
    graph = load_graph(ModelRef("alexnet"))
    base = reference_profile()
    cluster = Cluster((Device("big", base, memory_bytes=2**31), Device("small", base, memory_bytes=2**20)), "big")
    plan = build_single(graph, ModelRef("alexnet"), ["small"]).to_plan("big")
    with pytest.raises(PlanningError, match=r"small needs [0-9.]+ MiB but has 1.0 MiB"):
        check_memory(plan, graph, cluster)
    check_memory(build_single(graph, ModelRef("alexnet"), ["big"]).to_plan("big"), graph, cluster)


# ------------------------------------------------------------------ O(1) strip costs vs the geometry


@pytest.mark.parametrize("name", ["vgg16", "yolov2", "resnet50", "mobilenet_v2", "googlenet"])
def test_row_maps_and_strip_costs_match_the_geometry(name: str) -> None:
    graph = load_graph(ModelRef(name))
    base = reference_profile()
    cluster = Cluster((Device("a", base), Device("b", base, 0.25)), "a", "switched", Link(1e-3, 1e7))
    problem = Problem(graph, cluster, ModelRef(name))
    rng = random.Random(0)
    fusable_ends = [j for j in range(1, problem.L + 1) if problem.fusable(j - 1, j)]
    for j in rng.sample(fusable_ends, min(6, len(fusable_ends))):
        maps: RowMaps = problem.row_maps(j)
        starts = [i for i in range(j) if problem.fusable(i, j)]
        for _ in range(4):
            i = rng.choice(starts)
            a = rng.randrange(maps.rows)
            b = rng.randrange(a + 1, maps.rows + 1)
            region = strip_region(graph, problem.bounds[j], a, b)
            geometry = backprop(graph, problem.bounds[i], problem.bounds[j], region)
            for index, r in geometry.regions.items():
                assert (int(maps.lo[index][a]), int(maps.hi[index][b - 1])) == r.rows, (name, index)
            for d in (0, 1):
                fast = problem.strip_work(i, j, d, a, b)
                exact = part_work(graph, cluster, problem.bounds[i], problem.bounds[j], cluster.names[d], region)
                assert fast.compute_s == pytest.approx(exact.compute_s, rel=1e-9)
                assert fast.in_bytes == exact.in_bytes and fast.out_bytes == exact.out_bytes


def test_single_stage_costs_match_the_geometry() -> None:
    graph = load_graph(ModelRef("resnet50"))
    cluster = Cluster((Device("a", reference_profile(), 0.7),), "a")
    problem = Problem(graph, cluster, ModelRef("resnet50"))
    for i, j in ((0, problem.L), (3, 9), (5, 6), (problem.L - 2, problem.L)):
        full = Region.full(graph.shape_at(problem.bounds[j]))
        exact = part_work(graph, cluster, problem.bounds[i], problem.bounds[j], "a", full)
        fast = problem.single_work(0, i, j)
        assert fast.compute_s == pytest.approx(exact.compute_s, rel=1e-9)
        assert fast.in_bytes == exact.in_bytes and fast.out_bytes == exact.out_bytes


# ------------------------------------------------------------------ per-message software cost


def test_message_overhead_is_charged_on_both_ends_of_every_hop() -> None:
    graph = load_graph(ModelRef("alexnet"))
    ref = ModelRef("alexnet")
    base = reference_profile()

    def cluster(overhead: float) -> Cluster:
        devices = (Device("m", base, 1.0, message_overhead_s=overhead), Device("w", base, 0.5,
                                                                               message_overhead_s=overhead))
        return Cluster(devices, "m", "switched", Link(2e-3, 12.5e6))

    plain, costly = cluster(0.0), cluster(4e-3)
    assert costly.device("m").message_s == pytest.approx(4e-3) and costly.device("w").message_s == pytest.approx(8e-3)
    assert costly.link("m", "w").alpha_s == pytest.approx(2e-3 + 4e-3 + 8e-3)
    assert costly.wire("m", "w") == Link(2e-3, 12.5e6) and costly.link("w", "w").time(1e6) == 0.0
    # the whole model on the worker: the input goes m -> w, the output w -> m, two messages
    remote = build_single(graph, ref, ["w"]).to_plan("m")
    grown = evaluate(remote, graph, costly).latency_s - evaluate(remote, graph, plain).latency_s
    assert grown == pytest.approx(2 * (4e-3 + 8e-3), rel=1e-9)
    # on the master no wire, but its process hands the output to the gateway's: a local message, both ends
    local = build_single(graph, ref, ["m"]).to_plan("m")
    grown = evaluate(local, graph, costly).latency_s - evaluate(local, graph, plain).latency_s
    assert grown == pytest.approx(costly.local_s("m")) and costly.local_s("m") == pytest.approx(2 * 4e-3)
    # a two-device split: each partition on w receives its input and sends its output
    split = build_ftp_grid(graph, ref, ["m", "w"], grid=(2, 1), fused_units=3).to_plan("m")
    grown = evaluate(split, graph, costly).latency_s - evaluate(split, graph, plain).latency_s
    assert grown >= 2 * (4e-3 + 8e-3) * (1 - 1e-9)


def test_device_message_overhead_defaults_to_the_profiles_then_the_references() -> None:
    base = reference_profile()
    assert base.message_overhead_s is not None and base.message_overhead_s > 0
    assert Device("a", base, 0.25).message_s == pytest.approx(base.message_overhead_s / 0.25)
    own = base.scaled(2.0)  # twice as fast: its measured overhead halves too
    assert own.message_overhead_s == pytest.approx(base.message_overhead_s / 2)
    assert Device("b", own).message_s == pytest.approx(base.message_overhead_s / 2)
    unmeasured = DeviceProfile("old", base.ops, base.roofline)
    assert Device("c", unmeasured, 0.5).message_s == pytest.approx(base.message_overhead_s / 0.5)


# ------------------------------------------------------------------ the task-graph evaluator


def _chain_solvers() -> list[tuple[str, dict[str, object]]]:
    return [("single", {}), ("layerwise", {}), ("layerwise", {"split": "rows"}), ("ftp-grid", {"grid": "3x2"}),
            ("fused-dp", {}), ("fused-dp", {"device_sets": "subsets"}), ("pipeline-dp", {})]


@pytest.mark.parametrize("name", ["alexnet", "squeezenet1_1", "vgg16", "yolov2", "resnet50", "googlenet",
                                  "mobilenet_v2"])
def test_task_graph_evaluator_equals_the_stage_costs_on_chain_plans(name: str) -> None:
    """Every chain solver's stages, as the task graph `plan_from_stages` makes of them (relays where a split
    stage gathers at the master), cost exactly what the stage costs say: latency, throughput and stages."""
    from edgepart.planner.registry import SOLVERS
    from edgepart.planner.stage_costs import evaluate_staged

    ref = ModelRef(name)
    graph = load_graph(ref)
    base = reference_profile()
    clusters = [
        Cluster(tuple(Device(f"d{i}", base, 0.05 * (1 + i % 3)) for i in range(3)), "d1", "switched",
                Link(2e-3, 12.5e6)),
        Cluster(tuple(Device(f"d{i}", base, 0.1) for i in range(4)), "d0", "shared", Link(1e-3, 12.5e6)),
    ]
    checked = 0
    for cluster in clusters:
        for objective in ("latency", "throughput"):
            for solver, options in _chain_solvers():
                staged = SOLVERS[solver].fn(Problem(graph, cluster, ref), objective, **options)
                stage_costs = evaluate_staged(staged, graph, cluster)
                plan = staged.to_plan(cluster.master)
                result = evaluate_plan(plan, graph, cluster)
                where = f"{name} {solver} {options} {objective} {cluster.medium}"
                assert result.latency_s == pytest.approx(stage_costs.latency_s, rel=1e-9), where
                assert result.throughput_per_s == pytest.approx(stage_costs.throughput_per_s, rel=1e-9), where
                costs = result.stage_costs()
                assert [c.time_s for c in costs] == pytest.approx([s.time_s for s in stage_costs.stages],
                                                                  rel=1e-9, abs=1e-12), where
                checked += 1
    assert checked == 28


def _task_plan(tasks: list[dict[str, object]], outputs: list[str], devices: tuple[str, ...] = ("m", "w")):
    from edgepart.plan import plan_from_dict

    return plan_from_dict({"schemaVersion": 2, "solver": "hand", "objective": "latency", "devices": list(devices),
                           "master": devices[0], "models": [{"id": "net", "name": "net", "input_shape": [1, 1, 4, 4]}],
                           "tasks": tasks, "outputs": {"net": outputs}})


def test_list_scheduling_by_hand_with_contention_and_priorities() -> None:
    """Two tiles on the worker read the input from the master over one link (FIFO), the worker runs the
    lower priority first, a fusion task on the master gathers both: times worked out by hand."""
    from edgepart.planner.evaluate import SOURCE, CostEdge, CostGraph, CostTask, schedule

    cluster = Cluster(bare(reference_profile(), "m", "w"), "m", "switched", Link(0.0, 10.0))
    graph = CostGraph(
        tasks=(CostTask("a", "w", 2.0, priority=1), CostTask("b", "w", 1.0, priority=0),
               CostTask("fuse", "m", 0.5, priority=2)),
        edges=(CostEdge(SOURCE, 0, 10.0, "net"), CostEdge(SOURCE, 1, 10.0, "net"),  # 1 s each, in this order
               CostEdge(0, 2, 20.0, "net"), CostEdge(1, 2, 20.0, "net"), CostEdge(2, SOURCE, 5.0, "net")),
        sources={"net": "m"})
    s = schedule(graph, cluster)
    # a's input arrives at 1, b's at 2; the worker is free at 1 and only a is ready: it runs 1-3, then b 3-4
    assert s.start[:2] == (1.0, 3.0) and s.end[:2] == (3.0, 4.0)
    # a sends 3-5, b sends 5-7 (the worker's send FIFO), the fusion runs 7-7.5 on the master (output is local)
    assert s.ready == (1.0, 2.0, 7.0)
    assert s.start[2] == 7.0 and s.end[2] == 7.5
    assert s.latency == {"net": 7.5}  # a local hand-over of a holder-less task costs local_s = 0 here
    assert s.busy == pytest.approx({"compute:w": 3.0, "compute:m": 0.5, "send:m": 2.0, "recv:w": 2.0,
                                    "send:w": 4.0, "recv:m": 4.0})


def test_two_models_contend_for_a_shared_device() -> None:
    """Each model alone finishes in its own compute time; together on one device the lower priority waits."""
    from edgepart.planner.evaluate import SOURCE, CostEdge, CostGraph, CostTask, schedule

    cluster = Cluster(bare(reference_profile(), "m"), "m", "switched", Link(0.0, 10.0))
    tasks = (CostTask("x", "m", 2.0, priority=0, model="x"), CostTask("y", "m", 3.0, priority=1, model="y"))
    edges = (CostEdge(SOURCE, 0, 1.0, "x"), CostEdge(SOURCE, 1, 1.0, "y"), CostEdge(0, SOURCE, 1.0, "x"),
             CostEdge(1, SOURCE, 1.0, "y"))
    s = schedule(CostGraph(tasks, edges, {"x": "m", "y": "m"}), cluster)
    assert s.latency == {"x": 2.0, "y": 5.0} and s.makespan == 5.0
