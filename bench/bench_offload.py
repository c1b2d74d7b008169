"""Partial offloading with fused-layer paths (Li et al., GLOBECOM'22): MW against NFL and brute force.

Setup. One end device and one edge server, both with the reference profile:
the end device at speed 0.1 (a tenth of the reference core, about an
embedded board; its per-message software time is 7.2 ms), the server
FACTOR times faster (10x; also 4x and 20x), an uplink of 1-100 Mbps with
1 ms latency, AlexNet, SqueezeNet 1.1 and YOLOv2 (416 x 416). Solvers, all
costed by the same model (per-layer profile times on each tile with its
halo, Cluster.tx for every transfer, a local message for each hand-off to
the fusion, the output sent back to the end device):

- nfl: the best single cut of the whole model;
- mw: Minimizing Waiting over every τ of the fusable prefix and every grid
  up to 32 x 32 paths;
- mw<=6 and bf: MW and the exact optimum (offload-bf) over the grids with
  at most 6 paths, the space the brute force can enumerate.

Reported: NFL / MW (how many times less time MW takes; the paper's
"18.39x less than NFL") and MW<=6 / BF (how close MW is to the optimum),
under both compute models, side by side, one row per model and rate; then
the averages, the reported figures, and the time `mw` takes on YOLOv2.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.offload import ComputeModel, OffloadProblem, OffloadSettings
from edgepart.planner.offload.bf import solve_bf_problem
from edgepart.planner.offload.mw import solve_mw_problem
from edgepart.planner.offload.nfl import solve_nfl_problem

RESULTS = Path(__file__).parent / "results"
END_SPEED = 0.1
FACTORS = (10.0, 4.0, 20.0)  # server speed / end-device speed; the first is the main table
RATES_MBPS = (1, 5, 10, 20, 50, 100)
MODELS = ("alexnet", "squeezenet1_1", "yolov2")
COMPUTE_MODELS: tuple[ComputeModel, ...] = ("paper", "sequential")
SOLVER_TIME_TARGET_S = 2.0

REPORTED = ("GLOBECOM'22: MW takes 18.39x less time than NFL on average (AlexNet, SqueezeNet, YOLOv2, "
            "varying the transmission rate) and is very close to BF; TPDS'23 (PSOMW): 12.75x vs NFL, "
            "within 0.04% of BF.")

NOTES = """Notes: where and why our ratios differ from the reported ones.

1. Under `sequential` (the end device, the uplink and the server each serve one path at a time,
   which is what a real end device does) no FL schedule can be more than 3x faster than NFL.
   Proof: let C(o) = A(o) + B(o) + E(o) be the whole-tensor cost of cutting the fused prefix at
   unit o (end-device compute of units < o, the transfer, server compute up to τ). Path p's
   cost at its cut is at least its share f_p of C(o_p) (Σ f_p = 1): a tile's layer time is
   affine in its elements with non-negative coefficients, its region holds at least its share
   of each tensor (halos only add), and each transfer pays the link latency and message cost
   once per path. So a + b + e summed over the paths is at least Σ f_p C(o_p) >= min_o C(o),
   and since each resource serves one path at a time, the makespan is at least the busiest
   resource's load, >= (Σa + Σb + Σe) / 3 >= min_o C(o) / 3. Adding the layers after τ and the
   output's return to both sides, T_FL >= T_NFL(best o <= τ) / 3 >= T_NFL / 3. The tables'
   largest sequential NFL / MW stays below 3.
   So the 18.39x requires the paper model (or an NFL that costs more than ours).
2. Under `paper` each path's local and server compute run without contention, so P paths compute
   their tiles in parallel on one end device. The gain is then bounded by the halo, not by the
   end device: a tile of a deep fused prefix needs most of the input (YOLOv2's receptive field
   spans hundreds of pixels), so per-path compute hardly shrinks with P; and every path pays
   the per-message software time of both ends (7.2 ms on this end device) and the link latency.
   Our ratios stay far below 18x for these reasons; the reported setting (f_end, f_es, data sizes,
   no per-message cost) is not published, so we cannot reproduce the exact figure.
3. NFL here may keep everything on the end device (cut = all units), which costs no transfer at
   all, while every FL strategy fuses on the server and returns the output; at low rates NFL can
   beat MW (ratio < 1).
4. MW<=6 / BF compares the same search space; MW over all grids can beat BF over P <= 6."""


@dataclass(frozen=True)
class Row:
    model: str
    factor: float
    rate_mbps: float
    compute_model: ComputeModel
    nfl_s: float
    mw_s: float
    mw6_s: float
    bf_s: float
    mw_strategy: str


def cluster(factor: float, rate_mbps: float, overheads: bool = True) -> Cluster:
    """The end device and the server; without `overheads`, no per-message software time, no link latency and
    no per-layer executor overhead (the idealised costs of the paper's model)."""
    base = reference_profile()
    if not overheads:
        base = replace(base, layer_overhead_s=0.0)
    message = None if overheads else 0.0
    devices = (Device("end", base, END_SPEED, message_overhead_s=message),
               Device("server", base, END_SPEED * factor, message_overhead_s=message))
    return Cluster(devices, "end", "switched", Link(1e-3 if overheads else 0.0, rate_mbps * 1e6 / 8))


def measure(graph: LayerGraph, factor: float, rate: float, model: ComputeModel) -> Row:
    problem = OffloadProblem(graph, cluster(factor, rate), OffloadSettings(compute_model=model))
    nfl = solve_nfl_problem(problem)
    mw = solve_mw_problem(problem)
    mw6 = solve_mw_problem(problem, max_paths=problem.settings.bf_max_paths)
    bf = solve_bf_problem(problem)
    strategy = f"τ={mw.tau} {mw.grid[0]}x{mw.grid[1]}"
    return Row(graph.model_name, factor, rate, model, nfl.makespan_s, mw.makespan_s, mw6.makespan_s, bf.makespan_s,
               strategy)


def table(rows: list[Row], factor: float) -> list[str]:
    lines = [f"### Server {factor:g}x faster than the end device (end device speed {END_SPEED:g})", "",
             "| model | uplink | NFL ms | MW ms (paper) | NFL / MW (paper) | MW<=6 / BF (paper) | MW (paper) | "
             "MW ms (seq.) | NFL / MW (seq.) | MW<=6 / BF (seq.) | MW (seq.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for rate in sorted({r.rate_mbps for r in rows}):
            by_model = {r.compute_model: r for r in rows if r.model == name and r.rate_mbps == rate and
                        r.factor == factor}
            if len(by_model) < 2:
                continue
            paper, seq = by_model["paper"], by_model["sequential"]
            lines.append(f"| {name} | {rate:g} Mbps | {seq.nfl_s * 1e3:.0f} | {paper.mw_s * 1e3:.0f} | "
                         f"{paper.nfl_s / paper.mw_s:.2f}x | {paper.mw6_s / paper.bf_s:.4f} | {paper.mw_strategy} | "
                         f"{seq.mw_s * 1e3:.0f} | {seq.nfl_s / seq.mw_s:.2f}x | {seq.mw6_s / seq.bf_s:.4f} | "
                         f"{seq.mw_strategy} |")
    return lines


def summary(rows: list[Row]) -> list[str]:
    lines = ["### Averages over models and rates", "",
             "| server / end | compute model | mean NFL / MW | max NFL / MW | mean MW<=6 / BF - 1 | max |",
             "|---|---|---|---|---|---|"]
    for factor in sorted({r.factor for r in rows}):
        for model in COMPUTE_MODELS:
            chosen = [r for r in rows if r.factor == factor and r.compute_model == model]
            gains = [r.nfl_s / r.mw_s for r in chosen]
            gaps = [r.mw6_s / r.bf_s - 1 for r in chosen]
            lines.append(f"| {factor:g}x | {model} | {statistics.mean(gains):.2f}x | {max(gains):.2f}x | "
                         f"{statistics.mean(gaps):.3%} | {max(gaps):.3%} |")
    return [*lines, "", f"Reported: {REPORTED}"]


def without_overheads(graphs: dict[str, LayerGraph], rates: tuple[float, ...]) -> list[str]:
    lines = ["### Sensitivity: the paper model without per-transfer and per-layer overheads (server 10x)", "",
             "No per-message software time, no link latency, no per-layer executor overhead: only FLOP-driven "
             "compute and bytes / rate.", "",
             "| model | " + " | ".join(f"{r:g} Mbps" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    for name, graph in graphs.items():
        cells = []
        for rate in rates:
            problem = OffloadProblem(graph, cluster(10.0, rate, overheads=False), OffloadSettings(compute_model="paper"))
            nfl, mw = solve_nfl_problem(problem), solve_mw_problem(problem)
            cells.append(f"{nfl.makespan_s / mw.makespan_s:.2f}x ({mw.grid[0]}x{mw.grid[1]})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, "", "NFL / MW with MW's grid; halos and the single uplink still cap the gain."]


def solver_time(graph: LayerGraph, repeats: int) -> list[str]:
    lines = ["### Solver time: mw on YOLOv2, every τ of its fusable prefix and every grid up to 32 x 32", "",
             "| compute model | uplink | wall s | CPU s | strategies (τ, grid) evaluated | ruled out by the bound | "
             f"target < {SOLVER_TIME_TARGET_S:g} s |", "|---|---|---|---|---|---|---|"]
    for model in COMPUTE_MODELS:
        for rate in (1.0, 10.0, 100.0):
            wall = cpu = float("inf")
            for _ in range(repeats):
                started, started_cpu = time.perf_counter(), time.process_time()
                problem = OffloadProblem(graph, cluster(10.0, rate), OffloadSettings(compute_model=model))
                result = solve_mw_problem(problem)
                wall = min(wall, time.perf_counter() - started)
                cpu = min(cpu, time.process_time() - started_cpu)
            lines.append(f"| {model} | {rate:g} Mbps | {wall:.2f} | {cpu:.2f} | {result.searched} | "
                         f"{result.skipped} | {'yes' if cpu < SOLVER_TIME_TARGET_S else 'NO'} |")
    return [*lines, "", "Judged on CPU time (single-threaded; wall time on a shared machine also counts other "
                        "processes)."]


def main(quick: bool) -> None:
    rates = (1, 10, 100) if quick else RATES_MBPS
    factors = FACTORS[:1] if quick else FACTORS
    graphs = {name: load_graph(ModelRef(name)) for name in MODELS}
    rows: list[Row] = []
    out = ["# Partial offloading: MW vs NFL and BF (GLOBECOM'22 setting, our cost model)", ""]
    for factor in factors:
        for _name, graph in graphs.items():
            for rate in rates:
                for model in COMPUTE_MODELS:
                    rows.append(measure(graph, factor, rate, model))
        lines = table(rows, factor)
        print("\n".join(lines), flush=True)
        out += [*lines, ""]
    lines = summary(rows)
    print("\n" + "\n".join(lines), flush=True)
    out += [*lines, ""]
    lines = without_overheads(graphs, tuple(float(r) for r in rates))
    print("\n" + "\n".join(lines), flush=True)
    out += [*lines, ""]
    lines = solver_time(graphs["yolov2"], 1 if quick else 3)
    print("\n" + "\n".join(lines), flush=True)
    out += [*lines, "", NOTES]
    print("\n" + NOTES)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "offload.md").write_text("\n".join(out) + "\n")
