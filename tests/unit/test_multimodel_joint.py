"""The joint solvers (mgp-memetic, mgp-pso, lo-pso, heft): several models in, one v2 plan out, every model
of it computing exactly what its whole model computes."""

from __future__ import annotations

import pytest
import torch
from multimodel_fakes import traced

from edgepart.executor import Executor, compare, use_exact_kernels
from edgepart.graph.loader import ModelRef
from edgepart.plan import check_plan, plan_from_json
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import evaluate
from edgepart.planner.registry import SOLVERS, PlanningModel, parse_options, solve, solve_models

JOINT = ("mgp-memetic", "mgp-pso", "lo-pso", "heft")
NAMES = ("net-a", "net-b", "stack")


def cluster() -> Cluster:
    base = reference_profile()
    devices = (Device("hub", base, 0.002, 2**30), Device("d1", base, 0.003, 2**30), Device("d2", base, 0.002, 2**30))
    return Cluster(devices, "hub", "switched", Link(1e-5, 1e9))


def models() -> list[PlanningModel]:
    return [PlanningModel(name, ModelRef(name, traced(name)[1].input_shape), traced(name)[1]) for name in NAMES]


def test_joint_solvers_are_registered_with_their_options() -> None:
    for name in JOINT:
        assert SOLVERS[name].joint
        assert {"seed", "links"} <= set(SOLVERS[name].options) or name == "heft"
    assert not SOLVERS["fused-dp"].joint
    assert {"k", "blocks_per_model", "seed", "iterations", "links"} == set(SOLVERS["mgp-memetic"].options)
    assert parse_options("mgp-memetic", ["K=2", "blocksPerModel=2", "links=free"]) == \
        {"k": 2, "blocks_per_model": 2, "links": "free"}


@pytest.mark.parametrize("solver", JOINT)
def test_a_joint_plan_computes_every_model_exactly(solver: str) -> None:
    options = {"iterations": 20} if solver != "heft" else {}
    plan = solve_models(models(), cluster(), "latency", solver, **options)
    assert plan.solver == solver and set(plan.model_ids) == set(NAMES)
    check_plan(plan, {m.id: m.graph for m in models()})
    assert plan.predicted is not None and set(plan.predicted.models) == set(NAMES)
    assert plan.predicted == evaluate(plan, {m.id: m.graph for m in models()}, cluster())
    plan = plan_from_json(plan.to_json())  # what a deployment ships
    use_exact_kernels()
    for name in NAMES:
        gm, graph = traced(name)
        x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(3))
        executor = Executor(gm, graph)
        # exact geometry; the row kernels of a strided conv may differ from the whole one by a few ulps
        assert compare(executor.run_whole(x), executor.run_plan(plan, x, name), atol=1e-6, rtol=1e-5).allclose


def test_blocks_become_tasks_ordered_by_the_list_schedule() -> None:
    plan = solve_models(models(), cluster(), "latency", "mgp-memetic", k=2, blocks_per_model=2, iterations=10)
    priorities = sorted(t.priority for t in plan.tasks)
    assert priorities == list(range(len(plan.tasks)))  # a total order: the schedule's
    for task in plan.tasks:  # a task reads only tasks that end where it starts, or the model input
        for producer in task.producers:
            assert plan.task(producer).stop == task.start and plan.task(producer).model == task.model
    assert plan.meta["method"] == "MO" and plan.meta["blocks_per_model"] == 2


def test_the_same_seed_gives_the_same_plan_and_one_model_plans_too() -> None:
    first = solve_models(models(), cluster(), "latency", "mgp-pso", seed=4, iterations=15)
    again = solve_models(models(), cluster(), "latency", "mgp-pso", seed=4, iterations=15)
    assert first.tasks == again.tasks
    _gm, graph = traced("stack")
    single = solve(graph, ModelRef("stack", graph.input_shape), cluster(), "latency", "mgp-memetic", iterations=5)
    assert single.model_ids == ("stack",) and single.predicted is not None


def test_bad_options_and_objectives_name_what_is_wrong() -> None:
    with pytest.raises(PlanningError, match="links must be free or fifo"):
        solve_models(models(), cluster(), "latency", "mgp-memetic", links="lossy")
    with pytest.raises(PlanningError, match="K: pieces per unit must be >= 1"):
        solve_models(models(), cluster(), "latency", "heft", k=0)
    with pytest.raises(PlanningError, match="objective 'throughput' is not supported"):
        solve_models(models(), cluster(), "throughput", "mgp-memetic")
    with pytest.raises(PlanningError, match="unknown option 'grid'"):
        solve_models(models(), cluster(), "latency", "lo-pso", grid="2x2")


def test_pieces_of_a_stripe_on_one_device_become_one_task() -> None:
    base = reference_profile()
    devices = (Device("hub", base, 1.0, 2**30), Device("slow", base, 1e-4, 2**30))
    lopsided = Cluster(devices, "hub", "switched", Link(1e-3, 1e6))
    plan = solve_models(models(), lopsided, "latency", "mgp-memetic", iterations=10)
    assert {t.device for t in plan.tasks} == {"hub"}
    assert any(".p" not in t.id for t in plan.tasks)  # merged pieces: the whole stripe
    assert len(plan.tasks) == len({(t.model, t.start) for t in plan.tasks})  # one task per stripe
    use_exact_kernels()
    for name in NAMES:
        gm, graph = traced(name)
        x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(5))
        executor = Executor(gm, graph)
        assert torch.equal(executor.run_plan(plan, x, name), executor.run_whole(x))
