"""Several models at once, as deployable plans: the joint solvers against each model planned alone.

Two clusters: the devices of examples/deployments/three-models.yaml (a
4-CPU server holding the inputs, three 1-CPU edge devices, 1 Gbit/s
switched links with 1 ms latency) and the 7-device edge cluster of
`bench_solver` (a slow master, one fast device, five slow or medium ones,
100 Mbit/s). Models: AlexNet, SqueezeNet 1.1 and ResNet-50, one request of
each issued together. Every plan is costed by the task-graph evaluator (list
scheduling over devices and FIFO NICs, outputs back to the master): the
number is the predicted completion time of the last model.

Rows: the joint solvers (mgp-memetic, mgp-pso, lo-pso: mean and spread over
seeds; heft: deterministic), and the chain solvers applied to each model
alone on the whole cluster, the plans merged and evaluated together (what
`edgepart plan` did for several models before the joint solvers): fused-dp
(the baseline of the ratios) and single. The solver time row: mgp-memetic's
wall time for the three models on the 7 devices (DAG, blocks, cost graph,
search and evaluation) against the 30 s target. Writes
bench/results/multimodel_plans.md.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import Cluster, Device, Link, cluster_from_spec
from edgepart.planner.registry import PlanningModel, solve_models
from edgepart.runtime.planning import planning_models
from edgepart.spec import load_deployment

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"
JOINT = ("mgp-memetic", "mgp-pso", "lo-pso")
MODELS = {"alexnet": "alexnet", "squeezenet": "squeezenet1_1", "resnet50": "resnet50"}


def deployment_cluster() -> tuple[list[PlanningModel], Cluster]:
    spec = load_deployment(ROOT / "examples" / "deployments" / "three-models.yaml").spec
    return planning_models(spec, ROOT), cluster_from_spec(spec.cluster(), base_dir=ROOT)


def edge_cluster(n: int) -> Cluster:
    """`bench_solver`'s heterogeneous edge cluster."""
    from edgepart.planner.cluster import reference_profile

    base = reference_profile()
    speeds = [0.2, 4.0] + [0.5 if i % 2 == 0 else 0.2 for i in range(max(0, n - 2))]
    devices = tuple(Device(f"d{i}", base, speeds[i]) for i in range(n))
    return Cluster(devices, "d0", "switched", Link(2e-3, 100e6 / 8))


def latency(models: list[PlanningModel], cluster: Cluster, solver: str, **options: object) -> tuple[float, float]:
    started = time.perf_counter()
    plan = solve_models(models, cluster, "latency", solver, **options)  # type: ignore[arg-type]
    assert plan.predicted is not None
    return plan.predicted.latency_s, time.perf_counter() - started


def table(title: str, models: list[PlanningModel], cluster: Cluster, seeds: int) -> list[str]:
    base, _ = latency(models, cluster, "fused-dp")
    rows = [f"### {title}", "", "| plan | predicted completion (ms) | vs fused-dp alone | solver s |",
            "|---|---|---|---|"]
    for solver in JOINT:
        runs = [latency(models, cluster, solver, seed=seed) for seed in range(seeds)]
        values = [r[0] for r in runs]
        spread = f" ± {statistics.stdev(values) * 1e3:.1f}" if len(values) > 1 else ""
        rows.append(f"| {solver} ({seeds} seeds) | {statistics.mean(values) * 1e3:.1f}{spread} | "
                    f"{statistics.mean(values) / base:.2f}x | {statistics.mean(r[1] for r in runs):.1f} |")
        print(rows[-1], flush=True)
    for solver in ("heft", "fused-dp", "single"):
        value, seconds = latency(models, cluster, solver)
        note = " each model alone, merged" if solver in ("fused-dp", "single") else ""
        rows.append(f"| {solver}{note} | {value * 1e3:.1f} | {value / base:.2f}x | {seconds:.1f} |")
        print(rows[-1], flush=True)
    return [*rows, ""]


def main(quick: bool) -> None:
    seeds = 2 if quick else 5
    models, cluster = deployment_cluster()
    lines = ["# Several models at once: joint plans vs each model planned alone", "",
             "AlexNet + SqueezeNet 1.1 + ResNet-50, one request of each issued together; predicted by the "
             "task-graph evaluator. Ratios < 1: the joint plan completes sooner than fused-dp's plans of each "
             "model alone on the same devices at once.", ""]
    lines += table("three-models.yaml: server (4 CPUs) + 3 edge devices (1 CPU), 1 Gbit/s", models, cluster, seeds)
    seven = edge_cluster(7)
    lines += table("7 heterogeneous edge devices, 100 Mbit/s", models, seven, seeds)
    graphs = [PlanningModel(mid, ModelRef(name), load_graph(ModelRef(name))) for mid, name in MODELS.items()]
    started, cpu = time.perf_counter(), time.process_time()
    solve_models(graphs, seven, "latency", "mgp-memetic")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    row = (f"Solver time, mgp-memetic, 3 models x 7 devices: {wall:.1f} s wall, {cpu:.1f} s CPU "
           f"(target 30 s): {'within' if wall <= 30 else 'OVER'}")
    print(row)
    lines += [row, ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multimodel_plans.md").write_text(text)
