"""Cost-model accuracy on this machine: predicted vs measured latency of whole models and of tiles.

The built-in reference profile (speed 1.0) was fitted by `edgepart profile`
on one core of the development machine with the executor's exact kernels, so
this benchmark runs the same way (torch.set_num_threads(1), exact kernels) and
compares, side by side in one run:

- whole models: the traced model's forward pass vs the sum of per-layer predictions;
- tiles: the executor's `SliceRunner` computing a row strip of a fused block
  (halo included) or an output-channel slice of one unit vs the prediction the
  searches use for that partition (`part_work`).

Target: within 15%. Medians of repeated runs; the machine is shared, so the
ratios are what to read.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model, trace_ref
from edgepart.planner.cluster import Cluster, Device, reference_profile
from edgepart.planner.evaluate import part_work
from edgepart.planner.segments import strip_region
from edgepart.profiler.microbench import time_call

RESULTS = Path(__file__).parent / "results"


def main(quick: bool) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    use_exact_kernels(True)
    try:
        _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> None:
    device = Device("ref", reference_profile())
    cluster = Cluster((device,), "ref")
    models = ("resnet50", "squeezenet1_1", "mobilenet_v2") if quick else \
        ("vgg16", "yolov2", "resnet50", "googlenet", "mobilenet_v2", "squeezenet1_1", "alexnet")
    repeats = 3 if quick else 5
    rows: list[tuple[str, str, float, float]] = []
    for name in models:
        ref = ModelRef(name)
        gm, graph = trace_ref(ref, load_model(ref))
        x = torch.randn(*graph.input_shape)
        with torch.no_grad():
            measured = time_call(lambda gm=gm, x=x: gm(x), warmup=2, repeats=repeats).median_s
        predicted = sum(device.layer_time(layer, None, graph.batch) for layer in graph.layers)
        rows.append((name, "whole model", measured, predicted))
        print(f"  {name:14s} whole model   measured {measured * 1e3:8.1f} ms  predicted {predicted * 1e3:8.1f} ms  "
              f"ratio {predicted / measured:5.2f}", flush=True)
        if name not in ("vgg16", "yolov2", "resnet50") and not (quick and name == "resnet50"):
            continue
        executor = Executor(gm, graph)
        units = graph.units
        fused = max(1, graph.longest_fusable_prefix() // (3 if quick else 2))
        stop = units[fused - 1].stop
        shape = graph.shape_at(stop)
        tiles: list[tuple[str, int, int, Region]] = []
        for parts in (2, 4, 8):
            rows_each = shape[1] // parts
            a = rows_each * (parts // 2)
            tiles.append((f"strip 1/{parts} of units 0-{fused - 1}", 0, stop, strip_region(graph, stop, a,
                                                                                            a + rows_each)))
        conv_unit = next(u for u in units[1:] if graph.layers[u.start].op.value == "conv")
        out = graph.shape_at(conv_unit.stop)
        for parts in (2, 4):
            region = Region(((0, out[0] // parts), *((0, n) for n in out[1:])))
            tiles.append((f"channels 1/{parts} of {conv_unit.name}", conv_unit.start, conv_unit.stop, region))
        for label, start, end, region in tiles:
            runner = executor.runner(start, end, region)
            with torch.no_grad():
                if start == 0:
                    tile = x[runner.input_region.slices()].contiguous()
                else:
                    tile = torch.randn(graph.batch, *runner.input_region.shape)
                measured = time_call(lambda runner=runner, tile=tile: runner(tile), warmup=2,
                                     repeats=repeats).median_s
            predicted = part_work(graph, cluster, start, end, "ref", region).compute_s
            rows.append((name, label, measured, predicted))
            print(f"  {name:14s} {label:34s} measured {measured * 1e3:8.2f} ms  predicted "
                  f"{predicted * 1e3:8.2f} ms  ratio {predicted / measured:5.2f}", flush=True)
    errors = [abs(p - m) / m for _, _, m, p in rows]
    within = sum(e <= 0.15 for e in errors)
    table = ["| model | what | measured (ms) | predicted (ms) | predicted / measured |", "|---|---|---|---|---|"]
    table += [f"| {n} | {w} | {m * 1e3:.2f} | {p * 1e3:.2f} | {p / m:.2f} |" for n, w, m, p in rows]
    table += ["", f"{within} of {len(rows)} within 15%; median |error| {statistics.median(errors) * 100:.1f}%, "
                  f"max {max(errors) * 100:.1f}% (one thread, exact kernels, reference profile)"]
    print("\n" + "\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "costmodel.md").write_text("# Cost model: predicted vs measured on this machine\n\n"
                                          + "\n".join(table) + "\n")
