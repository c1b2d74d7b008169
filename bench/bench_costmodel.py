"""Cost-model accuracy on this machine: predicted vs measured latency of whole models and of tiles.

Profiles are per device (README), so the full run first fits a fresh profile
of this machine with the profiler (`edgepart profile --threads 1`, ~2.5 min,
written to bench/results/costmodel-profile.json) and predicts with it; the
table also shows the built-in reference profile's predictions (fitted the same
way on this machine class, at another time: the shared host's speed drifts by
10-20% with its load). `--quick` uses the built-in reference profile alone.

Everything runs the way partitions do: one torch thread, exact kernels, the
process pinned to one CPU, the allocator keeping freed memory
(microbench.partition_allocator). For each case the executor's `SliceRunner`
computes one partition exactly as a partition process does:

- whole models (one partition holding every layer, what a `single` plan runs);
- tiles: a row strip of a fused block (halo included) and an output-channel
  slice of one unit;

and the prediction is what the searches use for that partition (`part_work`).
Predictions come from the profile alone; nothing is fitted to these
measurements (the profiler fits its executor terms on its own runs).

Target: within 15%. The machine is shared and a tile's time moves by tens of
percent with background load, so the cases are measured interleaved in
several rounds (each round: one warm-up call, then the median of a few calls)
and the table reports the median over rounds.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model, trace_ref
from edgepart.planner.cluster import Cluster, Device, reference_profile
from edgepart.planner.costmodel import DeviceProfile, load_profile
from edgepart.planner.segments import strip_region
from edgepart.planner.stage_costs import part_work
from edgepart.profiler.microbench import partition_allocator, time_call
from edgepart.profiler.run import PartitionCase, ProfileConfig, profile_device

RESULTS = Path(__file__).parent / "results"
TILED = ("vgg16", "yolov2", "resnet50")


@dataclass
class Case:
    model: str
    part: PartitionCase  # what the executor runs
    predicted_s: float
    reference_s: float  # the built-in reference profile's prediction
    measured: list[float]  # one median per round


@contextmanager
def measuring_conditions() -> Iterator[None]:
    """One torch thread, exact kernels, pinned to one CPU (the last one this process may use); restored after."""
    threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(1)
    use_exact_kernels(True)
    partition_allocator()
    if affinity:
        os.sched_setaffinity(0, {max(affinity)})
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def build_cases(profile: DeviceProfile, quick: bool) -> list[Case]:
    cluster = Cluster((Device("ref", profile),), "ref")
    reference = Cluster((Device("ref", reference_profile()),), "ref")
    models = ("resnet50", "squeezenet1_1", "mobilenet_v2") if quick else \
        ("vgg16", "yolov2", "resnet50", "googlenet", "mobilenet_v2", "squeezenet1_1", "alexnet")
    cases: list[Case] = []
    for name in models:
        ref = ModelRef(name)
        gm, graph = trace_ref(ref, load_model(ref))
        executor = Executor(gm, graph)
        x = torch.randn(*graph.input_shape)
        parts: list[tuple[str, int, int, Region]] = [
            ("whole model", 0, len(graph), Region.full(graph.output_shape))]
        if name in TILED and not (quick and name != "resnet50"):
            units = graph.units
            fused = max(1, graph.longest_fusable_prefix() // (3 if quick else 2))
            stop = units[fused - 1].stop
            shape = graph.shape_at(stop)
            for share in (2, 4, 8):
                rows_each = shape[1] // share
                a = rows_each * (share // 2)
                parts.append((f"strip 1/{share} of units 0-{fused - 1}", 0, stop,
                              strip_region(graph, stop, a, a + rows_each)))
            conv_unit = next(u for u in units[1:] if graph.layers[u.start].op.value == "conv")
            out = graph.shape_at(conv_unit.stop)
            for share in (2, 4):
                region = Region(((0, out[0] // share), *((0, n) for n in out[1:])))
                parts.append((f"channels 1/{share} of {conv_unit.name}", conv_unit.start, conv_unit.stop, region))
        for label, start, end, region in parts:
            runner = executor.runner(start, end, region)
            tile = x[runner.input_region.slices()].contiguous() if start == 0 else \
                torch.randn(graph.batch, *runner.input_region.shape)
            predicted = part_work(graph, cluster, start, end, "ref", region).compute_s
            built_in = part_work(graph, reference, start, end, "ref", region).compute_s
            part = PartitionCase(label, graph, start, end, region, functools.partial(runner, tile))
            cases.append(Case(name, part, predicted, built_in, []))
    return cases


def measure(cases: list[Case], rounds: int, repeats: int) -> None:
    """Interleaved rounds: a burst of background load then hits every case alike instead of one."""
    with torch.no_grad():
        for _ in range(rounds):
            for case in cases:
                case.measured.append(time_call(case.part.run, warmup=1, repeats=repeats).median_s)


def _profile_to(path: str) -> None:
    profile_device(ProfileConfig(name=platform.node() or "this-machine", threads=1, exact_kernels=True)).save(path)


def fresh_profile(path: Path) -> DeviceProfile:
    """Profile this machine in a child process (pinned like this one), so that the cases run in a process
    that, like a partition process, has not first timed thousands of micro-benchmark tiles (the C heap keeps
    freed memory, see partition_allocator)."""
    path.parent.mkdir(exist_ok=True)
    child = multiprocessing.get_context("spawn").Process(target=_profile_to, args=(str(path),))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"profiling this machine failed (exit code {child.exitcode})")
    return load_profile(path)


def summary(errors: list[float]) -> str:
    within = sum(e <= 0.15 for e in errors)
    return (f"{within} of {len(errors)} within 15%; median |error| {statistics.median(errors) * 100:.1f}%, "
            f"max {max(errors) * 100:.1f}%")


def main(quick: bool) -> None:
    with measuring_conditions():
        if quick:
            profile = reference_profile()
            source = f"built-in reference profile (created {profile.meta.get('created', '?')})"
        else:
            started = time.perf_counter()
            profile = fresh_profile(RESULTS / "costmodel-profile.json")
            source = (f"fresh profile of this machine fitted by this run ({time.perf_counter() - started:.0f} s, "
                      "bench/results/costmodel-profile.json)")
        print(f"  predictions: {source}", flush=True)
        cases = build_cases(profile, quick)
        measure(cases, rounds=3 if quick else 5, repeats=3)
    rows = [(c.model, c.part.label, statistics.median(c.measured), c.predicted_s, c.reference_s) for c in cases]
    for c, (_, _, m, p, _) in zip(cases, rows, strict=True):
        spread = (max(c.measured) - min(c.measured)) / m
        print(f"  {c.model:14s} {c.part.label:40s} measured {m * 1e3:8.2f} ms (spread {spread * 100:3.0f}%)  "
              f"predicted {p * 1e3:8.2f} ms  ratio {p / m:5.2f}", flush=True)
    table = ["| model | what | measured (ms) | predicted (ms) | predicted / measured | built-in reference / measured |",
             "|---|---|---|---|---|---|"]
    table += [f"| {n} | {w} | {m * 1e3:.2f} | {p * 1e3:.2f} | {p / m:.2f} | {r / m:.2f} |" for n, w, m, p, r in rows]
    table += ["", f"Predicted: {summary([abs(p - m) / m for _, _, m, p, _ in rows])} ({source}).",
              f"Built-in reference profile: {summary([abs(r - m) / m for _, _, m, _, r in rows])}.",
              f"Measured: executor SliceRunner, one thread pinned to one CPU, exact kernels, allocator keeping freed "
              f"memory, median of {len(cases[0].measured)} interleaved rounds."]
    print("\n" + "\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "costmodel.md").write_text("# Cost model: predicted vs measured on this machine\n\n"
                                          + "\n".join(table) + "\n")
