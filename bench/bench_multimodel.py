"""Several models at once: the MobiHoc'22 poster's comparison (Jin, Park, Lee; SOLVERS.md §6).

The authors' simulation (edgepart.planner.multimodel.poster): an edge server
plus D = 3 or 6 IoT devices (Raspberry Pi 4B, Jetson TX2), their frequency /
intensity / memory table, 100 MiB/s links, each model's input sent by its
own request device; AlexNet, GoogLeNet, ResNet-50 requested in turn, 1 to 6
models at once. F is the completion time of one request of every model.

- LO: layer-level DAG, PSO-GA with the server + order encoding;
- PO: piece-wise DAG (K = 3), multilevel k-way blocks (k = 3 per model, the
  authors' setting), PSO-GA;
- MO: the same blocks, the memetic algorithm;
- HEFT: every piece placed on its own.

Pieces run as their own tasks and send their halos (the authors' piece-level
model, `fuse=False`). Searches optimise F with links not contended (the
poster's model); every result is also scored with FIFO-contended NICs. 20
seeds per point (3 with --quick, on a subset); mean and standard deviation.
The improvements are 1 - mean F(MO) / mean F(other), per model count; the
range over model counts is printed beside the poster's.

Also: MO with 6 blocks per model and with stripes that recompute their
halos instead of sending them (the form a plan deploys); the solver time of
MO (DAG, blocks, cost graph and search) for 3
models on 7 devices against the 30 s target, and the cut of multilevel
k-way against METIS (pymetis) on the same weighted piece graphs. Writes
bench/results/multimodel.md and multimodel_convergence.svg.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pymetis

from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.multimodel import (
    MethodResult,
    PieceSettings,
    Prepared,
    Workload,
    cut,
    multilevel_kway,
    piecewise_dag,
    prepare_blocks,
    prepare_units,
    run_method,
    weighted_graph,
)
from edgepart.planner.multimodel.methods import Method, piece_seconds
from edgepart.planner.multimodel.multilevel import WeightedGraph
from edgepart.planner.multimodel.platform import mean_transfer
from edgepart.planner.multimodel.poster import MODEL_CYCLE, poster_models, poster_platform

RESULTS = Path(__file__).parent / "results"
SETTINGS = PieceSettings(K=3, blocks_per_model=3, fuse=False)
REPORTED = {3: {"LO": (16.2, 33.1), "PO": (9.4, 20.6)}, 6: {"LO": (26.2, 40.6), "PO": (8.4, 18.2)}}
SOLVER_TARGET_S = 30.0
SEARCHED: tuple[Method, ...] = ("LO", "PO", "MO")


def workload(graphs: dict[str, LayerGraph], iot: int, count: int) -> Workload:
    platform, sources = poster_platform(iot, count)
    return Workload(tuple(graphs[name] for name in poster_models(count)), platform, sources)


def improvement(better: Sequence[float], other: Sequence[float]) -> float:
    return 100.0 * (1.0 - statistics.fmean(better) / statistics.fmean(other))


def spread(values: Sequence[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * 1e3:.1f} ± {deviation * 1e3:.1f}"


def comparison(graphs: dict[str, LayerGraph], iot: int, counts: Sequence[int], seeds: int,
               lines: list[str]) -> dict[str, list[float]]:
    """Table rows for one D; returns, per link model, MO's improvements over LO and PO per model count."""
    gains: dict[str, list[float]] = {f"{links} {base}": [] for links in ("free", "fifo") for base in ("LO", "PO")}
    lines += [f"\n### D = {iot} IoT devices + edge server\n",
              "| models | tasks LO/PO | LO F (ms) | PO F (ms) | MO F (ms) | HEFT F (ms) | MO vs LO | MO vs PO "
              "| MO vs LO (fifo) | MO vs PO (fifo) | LO / PO / MO search (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for count in counts:
        load = workload(graphs, iot, count)
        prepared: dict[Method, Prepared] = {"LO": prepare_units(load, K=1), "PO": prepare_blocks(load, SETTINGS)}
        prepared["MO"] = prepared["PO"]
        heft = run_method("HEFT", prepare_units(load, K=SETTINGS.K))
        runs: dict[Method, list[MethodResult]] = {m: [run_method(m, prepared[m], seed) for seed in range(seeds)]
                                                  for m in SEARCHED}
        value = {(m, links): [r.fitness[links] for r in runs[m]] for m in SEARCHED for links in ("free", "fifo")}
        for links in ("free", "fifo"):
            for base in ("LO", "PO"):
                gains[f"{links} {base}"].append(improvement(value[("MO", links)], value[(base, links)]))
        times = " / ".join(f"{statistics.fmean(r.seconds for r in runs[m]):.2f}" for m in SEARCHED)
        row = (f"| {count} | {prepared['LO'].cost.tasks}/{prepared['PO'].cost.tasks} | "
               f"{spread(value[('LO', 'free')])} | {spread(value[('PO', 'free')])} | {spread(value[('MO', 'free')])} | "
               f"{heft.fitness['free'] * 1e3:.1f} | {gains['free LO'][-1]:.1f}% | {gains['free PO'][-1]:.1f}% | "
               f"{gains['fifo LO'][-1]:.1f}% | {gains['fifo PO'][-1]:.1f}% | {times} |")
        lines.append(row)
        print(f"  D={iot} models={count}: " + row, flush=True)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "multimodel.md").write_text("\n".join(lines) + "\n\n(in progress)\n")  # a long run keeps its rows
    return gains


COLOURS = {"LO": "#1f77b4", "PO": "#ff7f0e", "MO": "#2ca02c"}


def step_chart_svg(title: str, series: dict[str, Sequence[float]], width: int = 560, height: int = 340) -> str:
    """Best-so-far curves as step lines, five ticks per axis (hundreds of iterations stay readable)."""
    left, right, top, bottom = 60, 90, 30, 45
    plot_w, plot_h = width - left - right, height - top - bottom
    last = max(len(values) for values in series.values()) - 1 or 1
    low = min(min(values) for values in series.values())
    high = max(max(values) for values in series.values())
    low, high = low - 0.05 * (high - low or 1), high + 0.05 * (high - low or 1)

    def x(i: float) -> float:
        return left + i / last * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - low) / (high - low) * plot_h

    out = [f'<text x="{left}" y="18" font-size="13" font-family="sans-serif">{title}</text>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
           f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" font-family="sans-serif" '
           'text-anchor="middle">iteration</text>',
           f'<text x="8" y="{top - 8}" font-size="11" font-family="sans-serif">F (ms)</text>']
    for tick in range(5):
        i, v = last * tick / 4, low + (high - low) * tick / 4
        out.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" font-size="9" font-family="sans-serif" '
                   f'text-anchor="middle">{i:.0f}</text>')
        out.append(f'<text x="{left - 4}" y="{y(v) + 3:.1f}" font-size="9" font-family="sans-serif" '
                   f'text-anchor="end">{v:.1f}</text>')
    for row, (name, values) in enumerate(series.items()):
        points = [f"{x(0):.1f},{y(values[0]):.1f}"]
        for i in range(1, len(values)):
            points += [f"{x(i):.1f},{y(values[i - 1]):.1f}", f"{x(i):.1f},{y(values[i]):.1f}"]
        colour = COLOURS.get(name, "#555")
        out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<rect x="{left + plot_w + 12}" y="{top + row * 18}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{left + plot_w + 26}" y="{top + row * 18 + 9}" font-size="10" '
                   f'font-family="sans-serif">{name} ({len(values) - 1} it.)</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(out) + "\n</svg>\n")


def convergence(graphs: dict[str, LayerGraph]) -> str:
    """Best F so far per iteration of LO, PO and MO (D = 6, 3 models, seed 0)."""
    load = workload(graphs, 6, 3)
    blocks = prepare_blocks(load, SETTINGS)
    runs: tuple[tuple[Method, Prepared], ...] = (("LO", prepare_units(load, K=1)), ("PO", blocks), ("MO", blocks))
    series: dict[str, Sequence[float]] = {
        method: [value * 1e3 for value in run_method(method, prepared, seed=0).history] for method, prepared in runs}
    return step_chart_svg("best F so far (D = 6, 3 models, seed 0)", series)


def variants(graphs: dict[str, LayerGraph], seeds: int) -> list[str]:
    """MO with other blocks and task shapes (D = 6, 3 models): k per model, and stripes that recompute halos."""
    load = workload(graphs, 6, 3)
    rows = []
    for fuse in (False, True):
        for k in (3, 6):
            prepared = prepare_blocks(load, PieceSettings(K=SETTINGS.K, blocks_per_model=k, fuse=fuse))
            runs = [run_method("MO", prepared, seed) for seed in range(seeds)]
            rows.append(f"| {k} | {'stripes, halos recomputed' if fuse else 'pieces, halos sent'} | "
                        f"{prepared.cost.tasks} | {spread([r.fitness['free'] for r in runs])} | "
                        f"{spread([r.fitness['fifo'] for r in runs])} |")
    return rows


def solver_time(graphs: dict[str, LayerGraph]) -> str:
    """MO end to end (pieces, blocks, cost graph, memetic search) for 3 models on 6 IoT devices + server."""
    load = workload(graphs, 6, 3)
    started, started_cpu = time.perf_counter(), time.process_time()
    result = run_method("MO", prepare_blocks(load, SETTINGS), seed=0)
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    verdict = "OK" if cpu < SOLVER_TARGET_S else "MISSED"
    return (f"| 3 models x 7 devices | {cpu:.2f} | {wall:.2f} | {result.evaluations} | "
            f"{verdict} (< {SOLVER_TARGET_S:g} s CPU) |")


def metis_labels(graph: WeightedGraph, k: int, eps: float) -> list[int]:
    xadj, adjncy, eweights = [0], [], []
    for nbrs in graph.adjacency:
        for v, w in sorted(nbrs.items()):
            adjncy.append(v)
            eweights.append(int(w))
        xadj.append(len(adjncy))
    options = pymetis.Options(ufactor=round(eps * 1000))
    result = pymetis.part_graph(k, pymetis.CSRAdjacency(xadj, adjncy), vweights=[int(w) for w in graph.weight],
                                eweights=eweights, options=options)
    return [int(p) for p in result.vertex_part]


def balance(graph: WeightedGraph, labels: Sequence[int], k: int) -> float:
    weights = np.bincount(np.array(labels), weights=np.array(graph.weight), minlength=k)
    return float(weights.max() / (weights.sum() / k))


def pure_blocks(graph: WeightedGraph, labels: Sequence[int], k: int) -> int:
    return sum(len({graph.piece[v] for v in range(len(graph)) if labels[v] == b}) == 1 for b in range(k))


def metis_rows(graphs: dict[str, LayerGraph]) -> list[str]:
    """Cut (microseconds of mean transfer) of multilevel k-way and METIS, same integer weights, eps = 0.1."""
    load = workload(graphs, 6, 3)
    dag = piecewise_dag(load.models, SETTINGS.K)
    devices = len(load.platform.devices)
    node_s = np.maximum(1, np.round(piece_seconds(dag, load.platform).mean(axis=1) * 1e6))
    edge_s = np.maximum(1, np.round(mean_transfer(load.platform.network, devices,
                                                  np.array([e.nbytes for e in dag.edges], dtype=float)) * 1e6))
    graph = weighted_graph(dag, node_s, edge_s)
    rows = []
    for k in (devices, 9, 18):
        for name, labels in (
                ("multilevel k-way, one piece index per block",
                 multilevel_kway(dag, k, 0.1, True, node_s=node_s, edge_s=edge_s).labels),
                ("multilevel k-way, pieces mixed",
                 multilevel_kway(dag, k, 0.1, False, node_s=node_s, edge_s=edge_s).labels),
                ("METIS (pymetis, ufactor 100)", metis_labels(graph, k, 0.1))):
            rows.append(f"| {k} | {name} | {cut(graph, labels):.0f} | {balance(graph, labels, k):.2f} | "
                        f"{pure_blocks(graph, labels, k)}/{k} |")
    return rows


def main(quick: bool) -> None:
    graphs = {name: load_graph(ModelRef(name)) for name in MODEL_CYCLE}
    counts = (1, 3) if quick else (1, 2, 3, 4, 5, 6)
    seeds = 3 if quick else 20
    lines = [f"# Several models at once ({'quick' if quick else 'full'}: {seeds} seeds, models {list(counts)})",
             "", "F: completion time of one request of every model, mean ± standard deviation over seeds, "
             "links not contended; (fifo): the same plans with FIFO-contended NICs."]
    summary = []
    for iot in (3, 6):
        gains = comparison(graphs, iot, counts, seeds, lines)
        for links in ("free", "fifo"):
            for base in ("LO", "PO"):
                values = gains[f"{links} {base}"]
                low, high = REPORTED[iot][base]
                summary.append(f"| {iot} | MO vs {base} | {links} | {min(values):.1f}–{max(values):.1f}% | "
                               f"{low}–{high}% |")
    lines += ["\n### MO's improvement, range over model counts, beside the poster's\n",
              "| D | comparison | links | measured | poster |", "|---|---|---|---|---|", *summary]
    lines += [f"\n### MO variants (D = 6, 3 models, {min(seeds, 5)} seeds)\n",
              "| blocks per model | tasks are | task count | F (ms) | F fifo (ms) |", "|---|---|---|---|---|",
              *variants(graphs, min(seeds, 5))]
    lines += ["\n### Solver time (MO end to end, seed 0)\n",
              "| workload | CPU (s) | wall (s) | evaluations | target |", "|---|---|---|---|---|",
              solver_time(graphs)]
    lines += ["\n### Multilevel k-way against METIS (AlexNet + GoogLeNet + ResNet-50 pieces, K = 3)\n",
              "| k | partitioner | cut (µs) | max block / mean | one-piece blocks |", "|---|---|---|---|---|",
              *metis_rows(graphs)]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multimodel.md").write_text(text)
    (RESULTS / "multimodel_convergence.svg").write_text(convergence(graphs))
