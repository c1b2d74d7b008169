"""The partial-offloading solvers as deployable solvers: registered, roles from the cluster, plan v2 task graphs
that compute exactly the whole model's output on every zoo model with a fusable prefix, and a predicted latency
from the common evaluator equal to the offload schedule's makespan under the `sequential` model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import fx

from edgepart.executor import Executor, compare, use_exact_kernels
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_model, trace_ref
from edgepart.graph.zoo import zoo_names
from edgepart.plan import INPUT, Plan, check_plan, plan_from_json
from edgepart.planner.cluster import Cluster, Device, Link, cluster_from_spec, reference_profile
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import evaluate
from edgepart.planner.offload import OffloadProblem, OffloadSettings
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.deploy import TURNS, offload_plan, raw_paths_first
from edgepart.planner.registry import SOLVERS, parse_options, solve
from edgepart.spec import SpecError, cluster_from_dict

use_exact_kernels()

# small inputs where the model takes them (fully convolutional or adaptive pooling before the head)
SMALL = {"yolov2": 64, "yolov2-608": 64, "squeezenet1_1": 96, "googlenet": 96, "resnet50": 96, "mobilenet_v2": 96}
_CACHE: dict[str, tuple[ModelRef, LayerGraph, Executor]] = {}


def traced(name: str) -> tuple[ModelRef, LayerGraph, Executor]:
    if name not in _CACHE:
        size = SMALL.get(name)
        ref = ModelRef(name, (1, 3, size, size) if size else None)
        gm, graph = trace_ref(ref, load_model(ref))
        assert isinstance(gm, fx.GraphModule)
        _CACHE[name] = (ref, graph, Executor(gm, graph))
    return _CACHE[name]


def end_and_server(bandwidth: float = 20e6 / 8) -> Cluster:
    base = reference_profile()
    return Cluster((Device("end", base, 0.2), Device("server", base, 2.0)), "end", "switched",
                   Link(2e-3, bandwidth))


def exact(plan: Plan, graph: LayerGraph, executor: Executor, expected: torch.Tensor | None = None) -> torch.Tensor:
    """`edgepart verify`'s check: the plan, as read from disk, gives the whole model's output (allclose)."""
    plan = plan_from_json(plan.to_json())
    check_plan(plan, graph)
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(3))
    whole = executor.run_whole(x) if expected is None else expected
    result = compare(whole, executor.run_plan(plan, x))
    assert result.allclose, f"{plan.solver} {plan.meta}: max abs diff {result.max_abs_diff}"
    return whole


def mixed_strategy(problem: OffloadProblem) -> tuple[int, tuple[int, int], list[int], list[int]]:
    """A 2x2 grid (or what fits) over the deepest fused prefix, the paths cut at 0, τ, 1 and τ // 2, out of order."""
    tau = problem.tau_limit
    height, width = problem.prefix(tau).shape
    grid = (min(2, height), min(2, width))
    paths = grid[0] * grid[1]
    cuts = [0, tau, 1, tau // 2][:paths]
    order = list(reversed(range(paths)))
    return tau, grid, order, cuts


@pytest.mark.parametrize("name", zoo_names())
def test_plans_of_every_zoo_model_verify_and_cost_what_the_schedule_says(name: str) -> None:
    ref, graph, executor = traced(name)
    if graph.longest_fusable_prefix() < 1:
        pytest.skip(f"{name} has no fusable prefix")
    cluster = end_and_server()
    plan = solve(graph, ref, cluster, "latency", "mw")
    assert plan.solver == "mw" and plan.master == "end" and plan.meta["turns"] == TURNS
    expected = exact(plan, graph, executor)
    assert plan.predicted is not None
    assert plan.predicted.latency_s == pytest.approx(plan.meta["schedule_makespan_s"], rel=1e-9)
    # a strategy with several paths cut at different layers, a raw-input path among them
    problem = OffloadProblem(graph, cluster, OffloadSettings())
    tau, grid, order, cuts = mixed_strategy(problem)
    result = raw_paths_first(problem, fl_result(problem, "mw", "sequential", tau, grid, order, cuts))
    assert result.cuts[result.order[0]] == 0  # the raw-input path goes first
    mixed = offload_plan(result, graph, ref)
    exact(mixed, graph, executor, expected)
    predicted = evaluate(mixed, graph, cluster)
    assert predicted.latency_s == pytest.approx(result.makespan_s, rel=1e-9)
    timings = {t.id: t for t in predicted.tasks}
    local = [p for p in result.paths if p.local is not None]
    for path in local:  # the end device computes its paths one after another in the order S
        assert path.local is not None
        assert timings[f"p{path.path}-local"].start_s == pytest.approx(path.local[0], abs=1e-12)


def test_nfl_and_offload_bf_plans_verify() -> None:
    ref, graph, executor = traced("squeezenet1_1")
    cluster = end_and_server(50e6 / 8)
    for solver in ("nfl", "offload-bf"):
        options = parse_options(solver, ["max_paths=2"] if solver == "offload-bf" else [])
        plan = solve(graph, ref, cluster, "latency", solver, **options)
        exact(plan, graph, executor)
        assert plan.predicted is not None
        assert plan.predicted.latency_s == pytest.approx(plan.meta["schedule_makespan_s"], rel=1e-9)
    nfl = solve(graph, ref, cluster, "latency", "nfl")
    assert len({t.device for t in nfl.tasks}) <= 2 and not any(t.id == "fuse" for t in nfl.tasks)


def test_registered_with_their_options() -> None:
    for name in ("mw", "nfl", "offload-bf"):
        assert name in SOLVERS
        assert {"end", "server", "compute_model"} <= set(SOLVERS[name].options)
    assert {"tau_max", "grid_max", "max_paths"} <= set(SOLVERS["mw"].options)
    assert SOLVERS["mw"].options["compute_model"][1] == "sequential"


def test_paper_model_says_so_and_bad_options_name_the_field() -> None:
    ref, graph, _ = traced("alexnet")
    cluster = end_and_server()
    plan = solve(graph, ref, cluster, "latency", "mw", compute_model="paper", max_paths=4)
    assert plan.meta["compute_model"] == "paper" and "compute_model=paper" in plan.meta["summary"]
    with pytest.raises(PlanningError, match="compute_model"):
        solve(graph, ref, cluster, "latency", "mw", compute_model="fast")
    with pytest.raises(PlanningError, match="grid_max"):
        solve(graph, ref, cluster, "latency", "mw", grid_max="big")
    with pytest.raises(PlanningError, match="objective latency"):
        solve(graph, ref, cluster, "throughput", "mw")
    with pytest.raises(PlanningError, match="server: unknown device 'gpu'"):
        solve(graph, ref, cluster, "latency", "nfl", server="gpu")


def test_roles_choose_the_end_device_and_the_server() -> None:
    spec = cluster_from_dict({"devices": [
        {"name": "fast", "speed": 8.0}, {"name": "cam", "speed": 0.2, "role": "end"},
        {"name": "edge", "speed": 2.0, "role": "edge-server"}], "network": {"bandwidth": "20Mbps"}})
    assert spec.master_name == "cam"  # the end device holds the input
    cluster = cluster_from_spec(spec)
    ref, graph, _ = traced("alexnet")
    plan = solve(graph, ref, cluster, "latency", "mw", max_paths=4)
    assert plan.master == "cam" and set(plan.devices) == {"cam", "edge"}  # not the faster device without a role
    assert plan.meta["end"] == "cam" and plan.meta["server"] == "edge"
    assert all(i.source != INPUT or t.device == "cam" or t.start == 0 for t in plan.tasks for i in t.inputs)
    override = solve(graph, ref, cluster, "latency", "nfl", server="fast")
    assert override.meta["server"] == "fast"
    with pytest.raises(SpecError, match="only one device may have role end"):
        cluster_from_dict({"devices": [{"name": "a", "role": "end"}, {"name": "b", "role": "end"}]})
    with pytest.raises(SpecError, match="master: 'b' differs from the device with role end"):
        cluster_from_dict({"devices": [{"name": "a", "role": "end"}, {"name": "b"}], "master": "b"})
    with pytest.raises(SpecError, match="role"):
        cluster_from_dict({"devices": [{"name": "a", "role": "server"}]})
    assert math.isfinite(plan.meta["schedule_makespan_s"])
