"""Predicted speedup over the best single device: VGG-16 and YOLOv2, 1-8 devices, 10/100/1000 Mbps.

Devices are HotEdge-class (speed 0.05 of the reference core: VGG-16 takes
~8 s alone, like the paper's 1 GHz ARM boards) on one shared Wi-Fi medium
with 2 ms per message, the master holding the input. Two clusters:
homogeneous, and the same with one device (not the master) at half speed.
Solvers: fused-dp (this project's search), layerwise (equal channel/row
shares per layer), ftp-grid (DeepThings' equal tile grid over the fusable
prefix), single (best one device). Every number comes from the same
reference evaluator, side by side in one run.

HotEdge'19 reports, 8 devices at 100 Mbps vs 1 device: VGG-16 1.6-3.7x,
YOLOv2 1.3-1.9x (range over device clock 1 GHz..500 MHz), and with one
half-speed device a capability-aware split cut time by 51% (medium network)
and 39% (fast network) versus an equal split. We report the same ratios:
speedups at each bandwidth, and 1 - T(fused-dp) / T(equal split) on the
half-speed cluster.
"""

from __future__ import annotations

from pathlib import Path

from edgepart.graph.loader import ModelRef, load_graph
from edgepart.plan import make_plan
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.errors import PlanningError
from edgepart.planner.evaluate import evaluate
from edgepart.planner.problem import Problem, SplitOption, balance
from edgepart.planner.registry import solve
from edgepart.sim.draw import line_chart_svg

RESULTS = Path(__file__).parent / "results"
SPEED = 0.05  # HotEdge-class board relative to the reference core
SOLVERS = ("fused-dp", "layerwise", "ftp-grid", "single")
BANDWIDTHS = {"10Mbps": 10e6 / 8, "100Mbps": 100e6 / 8, "1000Mbps": 1e9 / 8}


def cluster(n: int, bandwidth: float, half: bool) -> Cluster:
    base = reference_profile()
    devices = tuple(Device(f"d{i}", base, SPEED / 2 if half and i == n - 1 and n > 1 else SPEED)
                    for i in range(n))
    return Cluster(devices, "d0", "shared", Link(2e-3, bandwidth))


def latency(graph, ref, target: Cluster, solver: str) -> float:  # type: ignore[no-untyped-def]
    try:
        plan = solve(graph, ref, target, "latency", solver)
    except PlanningError:
        return float("nan")
    assert plan.predicted is not None
    return plan.predicted.latency_s


def strip_split(graph, ref, target: Cluster, aware: bool) -> float:  # type: ignore[no-untyped-def]
    """Latency of one fused block over the longest fusable prefix in row strips on every device, the rest
    on the master: equal strips, or strips balanced by capability (B.3) -- HotEdge's comparison."""
    problem = Problem(graph, target, ref)
    stop = graph.longest_fusable_prefix()
    rows = problem.row_maps(stop).rows
    devices = list(range(len(target)))
    lanes = problem.strip_lanes(0, stop, devices)
    if aware:
        assignment, _ = balance(lanes, rows)
    else:
        step = [round(rows * k / len(devices)) for k in range(len(devices) + 1)]
        assignment = [(k, step[k], step[k + 1]) for k in range(len(devices)) if step[k + 1] > step[k]]
    parts = tuple((lanes[k].device, (a, b)) for k, a, b in assignment)
    option = SplitOption("fused", "rows", 0, stop, parts, (), ())
    stages = [problem.split_stage(0, option)]
    if stop < problem.L:
        stages.append(problem.single_stage(1, stop, problem.L, problem.master_index))
    plan = make_plan(ref, "strips", "latency", target.names, tuple(stages)).to_plan(target.master)
    return evaluate(plan, graph, target).latency_s


def main(quick: bool) -> None:
    counts = (1, 2, 4, 8) if quick else tuple(range(1, 9))
    bandwidths = {k: BANDWIDTHS[k] for k in ("100Mbps", "1000Mbps")} if quick else BANDWIDTHS
    lines = ["# Predicted speedup over the best single device (shared medium, HotEdge-class devices)", ""]
    summary = []
    for name in ("vgg16", "yolov2"):
        ref = ModelRef(name)
        graph = load_graph(ref)
        base = latency(graph, ref, cluster(1, 1.0, False), "single")
        for bw_name, bw in bandwidths.items():
            for half in (False, True):
                label = f"{name} @ {bw_name}, {'one half-speed device' if half else 'homogeneous'}"
                header = "| devices | " + " | ".join(SOLVERS) + " |"
                rows = [f"### {label} (single device: {base:.2f} s)", "", header,
                        "|" + "---|" * (len(SOLVERS) + 1)]
                series: dict[str, list[tuple[float, float]]] = {}
                at8: dict[str, float] = {}
                for n in counts:
                    target = cluster(n, bw, half)
                    times = {s: latency(graph, ref, target, s) for s in SOLVERS}
                    rows.append(f"| {n} | " + " | ".join(f"{base / times[s]:.2f}x" for s in SOLVERS) + " |")
                    for s in SOLVERS:
                        series.setdefault(s, []).append((n, base / times[s]))
                    at8 = times
                lines += [*rows, ""]
                print("\n".join(rows), flush=True)
                top_cluster = cluster(max(counts), bw, half)
                equal, aware = strip_split(graph, ref, top_cluster, False), strip_split(graph, ref, top_cluster, True)
                summary.append((name, bw_name, half, base / at8["fused-dp"], base / at8["ftp-grid"],
                                base / at8["layerwise"], 1 - aware / equal, 1 - at8["fused-dp"] / equal))
                if bw_name == "100Mbps":
                    slug = f"speedup_{name}_{'half' if half else 'homog'}.svg"
                    RESULTS.mkdir(exist_ok=True)
                    (RESULTS / slug).write_text(line_chart_svg(f"{label}: speedup", "devices", "speedup", series))
    top = max(counts)
    table = [f"## Summary at {top} devices", "",
             "Speedups over one device; then, against equal row strips over the fusable prefix, the time saved by "
             "capability-aware strips (B.3) and by fused-dp's plan.", "",
             "| model | network | cluster | fused-dp | ftp-grid | layerwise | aware strips vs equal | "
             "fused-dp vs equal |", "|---|---|---|---|---|---|---|---|"]
    for name, bw_name, half, fused, grid, layer, cut, dp_cut in summary:
        table.append(f"| {name} | {bw_name} | {'half-speed' if half else 'homog.'} | {fused:.2f}x | {grid:.2f}x | "
                     f"{layer:.2f}x | {-cut * 100:+.0f}% | {-dp_cut * 100:+.0f}% |")
    table += ["", "HotEdge'19 (8 devices, 100 Mbps Wi-Fi): VGG-16 1.6-3.7x, YOLOv2 1.3-1.9x; half-speed device: "
                  "-51% (medium network) / -39% (fast network) vs equal split."]
    print("\n" + "\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speedup.md").write_text("\n".join(lines + table) + "\n")
