"""Exact (native) against fast (oneDNN) kernels: one-thread latency of zoo models, side by side.

Partitions run the fastest kernels by default and native ones with `exactKernels: true`
(`executor.use_exact_kernels`). This measures what that choice costs: each model whole (plain PyTorch)
and as one partition computes it (the executor's SliceRunner over all layers: row-chunked native
convolutions, contiguous crops), with each kernel choice, at one thread, in interleaved rounds (every
round runs the four variants one after another, so host load hits them alike); the median round counts.
It also prints the fast answer's relative error against the exact one (max|diff| / max|exact|), the
figure `infer --check` bounds by 1e-4. No emulation, no root.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model, trace_ref

RESULTS = Path(__file__).parent / "results"
MODELS = (ModelRef("alexnet"), ModelRef("vgg16"), ModelRef("mobilenet_v2"), ModelRef("resnet50"),
          ModelRef("yolov2", (1, 3, 224, 224)))
QUICK_MODELS = (MODELS[0], MODELS[2])
VARIANTS = ("whole exact", "whole fast", "partition exact", "partition fast")


@dataclass
class Case:
    ref: ModelRef
    runs: dict[str, Callable[[], torch.Tensor]]
    times: dict[str, list[float]] = field(default_factory=dict)
    relative_error: float = 0.0


def _label(ref: ModelRef) -> str:
    return ref.name + (f" {ref.input_shape[2]}x{ref.input_shape[3]}" if ref.input_shape else "")


def build(ref: ModelRef) -> Case:
    model = load_model(ref)
    gm, graph = trace_ref(ref, model)
    runner = Executor(gm, graph).runner(0, len(graph), Region.full(graph.shape_at(len(graph))))
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(0))
    # the rows and columns the whole output reads (a model may leave the input's last row unread)
    crop = torch.randn(graph.input_shape[0], *runner.input_region.shape, generator=torch.Generator().manual_seed(0))

    def whole() -> torch.Tensor:
        out = model(x)
        assert isinstance(out, torch.Tensor)
        return out

    def partition() -> torch.Tensor:
        return runner(crop)

    return Case(ref, {"whole": whole, "partition": partition})


def _run(case: Case, variant: str) -> tuple[float, torch.Tensor]:
    what, kernels = variant.split()
    use_exact_kernels(kernels == "exact")
    started = time.perf_counter()
    out = case.runs[what]()
    return time.perf_counter() - started, out


def measure(case: Case, rounds: int) -> None:
    with torch.no_grad():
        for variant in VARIANTS:  # warm-up: oneDNN builds its primitives on the first call
            _run(case, variant)
        exact = _run(case, "whole exact")[1]
        fast = _run(case, "whole fast")[1]
        case.relative_error = float((fast - exact).abs().max() / exact.abs().max())
        for _ in range(rounds):
            for variant in VARIANTS:
                case.times.setdefault(variant, []).append(_run(case, variant)[0])


def main(quick: bool) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rounds = 3 if quick else 7
    cases = []
    try:
        for ref in QUICK_MODELS if quick else MODELS:
            case = build(ref)
            measure(case, rounds)
            cases.append(case)
            m = {v: statistics.median(case.times[v]) * 1e3 for v in VARIANTS}
            print(f"  {_label(ref):18s} whole: exact {m['whole exact']:8.1f} ms, fast {m['whole fast']:8.1f} ms "
                  f"(exact/fast {m['whole exact'] / m['whole fast']:.2f})   partition: exact "
                  f"{m['partition exact']:8.1f} ms, fast {m['partition fast']:8.1f} ms "
                  f"(exact/fast {m['partition exact'] / m['partition fast']:.2f})   fast vs exact relative "
                  f"error {case.relative_error:.2g}", flush=True)
    finally:
        torch.set_num_threads(threads)
        use_exact_kernels(False)
    table = ["| model | whole exact (ms) | whole fast (ms) | exact / fast | partition exact (ms) | "
             "partition fast (ms) | exact / fast | fast vs exact: max abs diff / max abs |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        m = {v: statistics.median(case.times[v]) * 1e3 for v in VARIANTS}
        table.append(f"| {_label(case.ref)} | {m['whole exact']:.1f} | {m['whole fast']:.1f} | "
                     f"{m['whole exact'] / m['whole fast']:.2f} | {m['partition exact']:.1f} | "
                     f"{m['partition fast']:.1f} | {m['partition exact'] / m['partition fast']:.2f} | "
                     f"{case.relative_error:.2g} |")
    table += ["", f"One thread, median of {rounds} interleaved rounds after a warm-up; torch {torch.__version__}. "
              "whole: the plain module; partition: the executor's SliceRunner over all layers (what a partition "
              "computes). exact / fast > 1: the fast kernels are faster."]
    print("\n" + "\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernels.md").write_text("# Kernels: exact (native) vs fast (oneDNN), one thread\n\n"
                                        + "\n".join(table) + "\n")
