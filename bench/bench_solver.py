"""Solver time against model size and device count (VGG-16, YOLOv2, ResNet-50; 2 to 16 devices).

Clusters are heterogeneous, like the sample edge cluster: a Pi-class master
(speed 0.2), one edge server (4.0), then Jetson-class (0.5) and Pi-class (0.2)
boards alternating, 100 Mbps switched. Each time is the wall time of
`registry.solve` (search, geometry check, memory check, evaluation) on an
already traced graph, the best of `repeats` runs, as wall time and as CPU
time (the solvers are single-threaded; on a shared machine wall time also
counts other processes). Targets: fused-dp on YOLOv2 with 8 devices < 1 s;
on ResNet-50 with 16 devices < 10 s (judged on CPU time).
"""

from __future__ import annotations

import time
from pathlib import Path

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.plan import Objective
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.registry import solve
from edgepart.sim.draw import line_chart_svg

RESULTS = Path(__file__).parent / "results"
TARGETS = {("yolov2", 8): 1.0, ("resnet50", 16): 10.0}
OFFLOAD_TARGET_S = 2.0  # mw on YOLOv2, every τ and every grid up to 32 x 32


def edge_cluster(n: int) -> Cluster:
    base = reference_profile()
    speeds = [0.2, 4.0] + [0.5 if i % 2 == 0 else 0.2 for i in range(max(0, n - 2))]
    devices = tuple(Device(f"d{i}", base, speeds[i]) for i in range(n))
    return Cluster(devices, "d0", "switched", Link(2e-3, 100e6 / 8))


def timed(repeats: int, graph: LayerGraph, ref: ModelRef, cluster: Cluster, solver: str,
          objective: Objective) -> tuple[float, float]:
    """(wall, cpu) seconds, each the best of `repeats`."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        solve(graph, ref, cluster, objective, solver)
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu


def main(quick: bool) -> None:
    models = ("yolov2", "resnet50") if quick else ("vgg16", "yolov2", "resnet50")
    counts = (2, 8, 16) if quick else (2, 4, 8, 12, 16)
    repeats = 1 if quick else 3
    rows = []
    series: dict[str, list[tuple[float, float]]] = {}
    for name in models:
        ref = ModelRef(name)
        graph = load_graph(ref)
        for n in counts:
            cluster = edge_cluster(n)
            fused, fused_cpu = timed(repeats, graph, ref, cluster, "fused-dp", "latency")
            pipeline, pipeline_cpu = timed(repeats, graph, ref, cluster, "pipeline-dp", "throughput")
            target = TARGETS.get((name, n))
            verdict = "" if target is None else f"{'OK' if fused_cpu < target else 'MISSED'} (< {target:g} s)"
            rows.append((name, len(graph.units), n, fused, fused_cpu, pipeline, pipeline_cpu, verdict))
            series.setdefault(f"{name} fused-dp", []).append((n, fused_cpu))
            series.setdefault(f"{name} pipeline-dp", []).append((n, pipeline_cpu))
            print(f"  {name:9s} {len(graph.units):3d} units {n:3d} devices: fused-dp {fused_cpu:7.3f} s CPU "
                  f"({fused:.3f} s wall), pipeline-dp {pipeline_cpu:7.3f} s CPU {verdict}", flush=True)
    header = ("| model | units | devices | fused-dp CPU (s) | fused-dp wall (s) | pipeline-dp CPU (s) | "
              "pipeline-dp wall (s) | target |\n|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(f"| {m} | {u} | {n} | {fc:.3f} | {f:.3f} | {pc:.3f} | {p:.3f} | {v} |\n"
                             for m, u, n, f, fc, p, pc, v in rows)
    table += "\n" + offload_row(repeats)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "solver.md").write_text(f"# Solver time (best of {repeats}; {'quick' if quick else 'full'})\n\n"
                                       + table)
    (RESULTS / "solver.svg").write_text(line_chart_svg("solver CPU time vs devices", "devices", "seconds", series,
                                                       log_y=True))


def offload_row(repeats: int) -> str:
    """`mw` (partial offloading) on YOLOv2: an end device at speed 0.2, a server at 4.0, 20 Mbps; every τ of
    the fusable prefix and every grid up to 32 x 32 (the default grid_max)."""
    ref = ModelRef("yolov2")
    graph = load_graph(ref)
    base = reference_profile()
    cluster = Cluster((Device("end", base, 0.2), Device("server", base, 4.0)), "end", "switched",
                      Link(2e-3, 20e6 / 8))
    wall, cpu = timed(repeats, graph, ref, cluster, "mw", "latency")
    verdict = f"{'OK' if cpu < OFFLOAD_TARGET_S else 'MISSED'} (< {OFFLOAD_TARGET_S:g} s)"
    print(f"  yolov2 mw, grids up to 32x32: {cpu:.3f} s CPU ({wall:.3f} s wall) {verdict}", flush=True)
    return ("| model | solver | devices | grids | CPU (s) | wall (s) | target |\n|---|---|---|---|---|---|---|\n"
            f"| yolov2 | mw | end + server | up to 32x32 | {cpu:.3f} | {wall:.3f} | {verdict} |\n")
