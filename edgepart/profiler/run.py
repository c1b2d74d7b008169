"""`edgepart profile`: micro-benchmarks on this machine, then one regression per op family.

Samples come from two sources (SOLVERS.md §2 A.1):

- synthetic layers covering every op family the zoo uses, over a range of
  channel counts, kernels, strides and feature-map sizes;
- every distinct layer of the given models, timed on row strips of several
  heights and, for conv/fc, on output-channel slices: the tiles the planner
  will cost.

Each layer configuration is one group: the fit quality (R², MAPE) is measured
on groups held out of a first fit, then the model is refitted on everything.
The profile also records predicted vs measured latency of the whole models.
"""

from __future__ import annotations

import functools
import gc
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import Region, backprop
from edgepart.graph.layer_graph import Layer, LayerGraph, trace
from edgepart.graph.loader import ModelRef, load_graph, load_model, load_part, trace_ref
from edgepart.graph.ops import OpKind
from edgepart.planner.cluster import reference_message_overhead, reference_profile
from edgepart.planner.costmodel import (
    DeviceProfile,
    Roofline,
    Sample,
    fit_linear_model,
    fit_profile,
    layer_key,
    layer_signature,
    op_family,
    region_counts,
)
from edgepart.profiler.microbench import (
    layer_tiles,
    partition_allocator,
    release_freed_memory,
    tile_call,
    time_call,
    unique_layers,
)

Progress = Callable[[int, int, str], None]  # (done, total, what)

DEFAULT_MODELS = ("vgg16", "yolov2", "resnet50", "mobilenet_v2", "googlenet", "squeezenet1_1", "alexnet")
QUICK_MODELS = ("vgg16",)


@dataclass(frozen=True)
class ProfileConfig:
    name: str = field(default_factory=platform.node)
    models: tuple[str, ...] = DEFAULT_MODELS
    quick: bool = False
    threads: int | None = None  # None: leave torch's setting
    exact_kernels: bool = False  # time the kernels partitions run: oneDNN's unless a deployment sets exactKernels
    warmup: int = 3
    repeats: int = 5  # timed runs per tile and pass
    passes: int = 3  # passes over all tiles; a tile's time is the median over passes
    heights: int = 5  # tile heights per layer
    synthetic: int = 60  # synthetic conv configurations
    seed: int = 0
    validate: bool = True  # time whole models against the fitted prediction


@dataclass(frozen=True)
class ModelCheck:
    model: str
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


# ------------------------------------------------------------------ synthetic layers


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class _Elementwise(nn.Module):
    """BN, activation, residual add, concat, pooling and friends on one feature map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.LeakyReLU(0.1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        self.maxpool3 = nn.MaxPool2d(3, 2, 1)
        self.avgpool = nn.AvgPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lrn = nn.LocalResponseNorm(5)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn(x))
        z = self.relu(x) + y
        c = torch.cat([z, y], 1)
        p = self.maxpool(c) + self.avgpool(c)
        q = self.maxpool3(self.lrn(self.up(p)))
        out: Tensor = self.pad(torch.nn.functional.pixel_unshuffle(q, 2))
        return out


class _Head(nn.Module):
    def __init__(self, c: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.softmax(self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(x), 1)))))
        return out


def _layers_of(model: nn.Module, shape: Sequence[int]) -> list[Layer]:
    _, graph = trace(model.eval(), shape, "synthetic")
    return list(graph.layers)


def synthetic_layers(count: int, seed: int = 0) -> list[Layer]:
    """Layers of every op family over a range of sizes (FLOPs capped to keep the run short)."""
    rng = random.Random(seed)
    layers: list[Layer] = []
    configs = 0
    while configs < count:
        cin = rng.choice((3, 16, 32, 64, 128, 256, 512))
        cout = rng.choice((16, 32, 64, 128, 256, 512))
        k = 1 if configs % 3 == 0 else 3  # pointwise and k x k convs are separate families
        s = rng.choice((1, 1, 2))
        size = rng.choice((7, 14, 28, 56, 112))
        flops = 2 * cin * cout * k * k * (size // s) ** 2
        if flops > 4e8 or flops < 1e5:
            continue
        configs += 1
        layers += _layers_of(_Conv(cin, cout, k, s), (1, cin, size, size))
    for c, size in ((32, 112), (96, 56), (144, 28), (384, 14), (960, 7)):
        for s in (1, 2):
            layers += _layers_of(_Conv(c, c, 3, s, groups=c), (1, c, size, size))
    for c, size in ((16, 112), (64, 56), (128, 28), (256, 16), (512, 8)):
        layers += _layers_of(_Elementwise(c), (1, c, size, size))
    for c, hidden, classes in ((512, 4096, 1000), (2048, 1000, 1000), (1024, 512, 10), (256, 256, 100)):
        layers += _layers_of(_Head(c, hidden, classes), (1, c, 7, 7))
    return unique_layers(layers)


# ------------------------------------------------------------------ sampling


def _graph_layers(models: Sequence[str]) -> list[tuple[Layer, int, str]]:
    result = []
    for name in models:
        _, graph = trace_ref(ModelRef(name))
        result += [(layer, graph.batch, name) for layer in graph.layers]
    return result


def collect_samples(config: ProfileConfig, progress: Progress | None = None) -> list[Sample]:
    """Time every tile of every synthetic and model layer (each distinct layer once)."""
    jobs: list[tuple[Layer, int]] = [(layer, 1) for layer in synthetic_layers(
        config.synthetic // (3 if config.quick else 1), config.seed)]
    seen = {layer_signature(layer) for layer, _ in jobs}
    for layer, batch, _ in _graph_layers(config.models):
        key = layer_signature(layer)
        if key not in seen:
            seen.add(key)
            jobs.append((layer, batch))
    heights = max(2, config.heights - (2 if config.quick else 0))
    tiles = [(layer, batch, region) for layer, batch in jobs for region in layer_tiles(layer, heights)]
    passes = 1 if config.quick else max(1, config.passes)
    # [R] Separate passes over all tiles, not one burst per tile: background load on this shared machine comes
    # in bursts that inflated every run of whichever tile was timing (20-50%); the median over passes drops them.
    times: list[list[float]] = [[] for _ in tiles]
    for p in range(passes):
        for i, (layer, batch, region) in enumerate(tiles):
            if progress is not None:
                progress(p * len(tiles) + i, passes * len(tiles), f"{layer.op.value} {region}")
            times[i].append(_time_tile(layer, region, batch, config))
    if progress is not None:
        progress(passes * len(tiles), passes * len(tiles), "done")
    samples = [Sample(op_family(layer), region_counts(layer, region, batch), statistics.median(t), layer_key(layer))
               for (layer, batch, region), t in zip(tiles, times, strict=True)]
    return samples


def _time_tile(layer: Layer, region: Region, batch: int, config: ProfileConfig) -> float:
    """Median seconds of one tile. Its tensors die on return: built in a loop, the next tile's would be made
    while this one's are still held (two of vgg16's fc6 slices, 411 + 308 MB, at once)."""
    fn = tile_call(layer, region, batch)
    with torch.no_grad():
        seconds = time_call(fn, config.warmup, config.repeats).median_s
    counts = region_counts(layer, region, batch)
    if 4 * (counts.weight_elems + counts.in_elems + counts.out_elems) >= TRIM_TILE_BYTES:
        del fn
        # [R] freed big tiles stayed resident under partition_allocator, fragmented among small ones: the
        # micro-benchmarks of vgg16 alone peaked at 900 MiB with ~700 MiB ever alive
        release_freed_memory()
    return seconds


def layer_overhead(layers: int = 100, repeats: int = 10) -> float:
    """Seconds the executor spends per layer beyond the op itself (crop, pad, dispatch), measured on a chain
    of ReLUs over a tiny tensor run by a `SliceRunner`."""
    model = nn.Sequential(*[nn.ReLU() for _ in range(layers)]).eval()
    gm, graph = trace(model, (1, 4, 4, 4), "overhead")
    runner = Executor(gm, graph).runner(0, len(graph), Region.full(graph.shape_at(len(graph))))
    x = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        op = time_call(lambda: torch.relu(x), 3, repeats).median_s
        chain = time_call(lambda: runner(x), 3, repeats).median_s
    return max(0.0, chain / layers - op)


def message_overhead(layer_overhead_s: float) -> float:
    """Per-message CPU seconds of the data plane on this machine, for the planner's links.

    [R] The profiler cannot run the data plane (it sits below it), so it scales the reference
    profile's value (measured through the real HTTP hop: bench/bench_msgcost.py) by this machine's
    interpreter speed against the reference's, the ratio of their per-layer bookkeeping overheads
    (both are Python-bound), clamped to [1/4, 4] against a noisy timing. Falls back to the reference
    value when either overhead is unknown.
    """
    reference = reference_profile()
    value = reference_message_overhead()
    # the reference's measured dispatch cost (its layer overhead also holds fitted executor costs)
    dispatch = reference.meta.get("dispatchS", reference.layer_overhead_s)
    if isinstance(dispatch, int | float) and dispatch > 0 and layer_overhead_s > 0:
        value *= min(4.0, max(0.25, layer_overhead_s / dispatch))
    return value


def roofline_of(samples: Sequence[Sample]) -> Roofline:
    """Peak FLOP/s from dense convolutions and memory bandwidth from elementwise ops, as measured."""
    flops = [s.counts.flops / s.seconds for s in samples if s.family in ("conv", "conv_1x1", "fc") and s.counts.flops > 0]
    elementwise = [(s.counts.in_elems + s.counts.out_elems) * 4 / s.seconds for s in samples
                   if s.family in ("act", "bn", "add")]
    return Roofline(max(flops, default=1e10), max(elementwise, default=1e10))


# ------------------------------------------------------------------ partitions: executor terms and checks


def predicted_partition(profile: DeviceProfile, graph: LayerGraph, start: int, stop: int, region: Region) -> float:
    """The cost model's compute time of one partition (the layers' predictions over the exact geometry)."""
    geometry = backprop(graph, start, stop, region)
    return sum(profile.layer_time(graph.layers[i], r, graph.batch) for i, r in geometry.regions.items())


def predicted_whole(profile: DeviceProfile, graph: LayerGraph) -> float:
    return predicted_partition(profile, graph, 0, len(graph), Region.full(graph.output_shape))


def measure_partition(executor: Executor, start: int, stop: int, region: Region, repeats: int = 5) -> float:
    """Seconds the executor takes for one partition, as a partition process runs it."""
    runner = executor.runner(start, stop, region)
    tile = torch.randn(executor.graph.batch, *runner.input_region.shape)
    with torch.no_grad():
        return time_call(lambda: runner(tile), warmup=2, repeats=repeats).median_s


@dataclass(frozen=True)
class PartitionCase:
    """One partition the executor runs: a whole model, a row strip or a channel slice."""

    label: str
    graph: LayerGraph
    start: int
    stop: int
    region: Region
    run: Callable[[], object]


# A model with more weights than this has its whole-model case measured as consecutive slices (see
# `weight_slices`). [R] vgg16's 528 MB as one partition, on top of the profiler's ~300 MiB of torch, took the
# profiling Job over a 1 GiB device.
WHOLE_MODEL_BYTES = 256 << 20
TRIM_TILE_BYTES = 64 << 20  # a tile holding this much is handed back to the kernel once timed


@dataclass(frozen=True)
class Part:
    label: str
    start: int
    stop: int
    region: Region


def weight_slices(graph: LayerGraph, limit: int = WHOLE_MODEL_BYTES) -> list[tuple[int, int]]:
    """Consecutive unit-aligned layer ranges covering `graph`, each with at most `limit` bytes of weights (a
    unit holding more is a slice of its own)."""
    slices: list[tuple[int, int]] = []
    start = 0
    for unit in graph.units:
        if unit.start > start and graph.weight_bytes(start, unit.stop) > limit:
            slices.append((start, unit.start))
            start = unit.start
    slices.append((start, len(graph)))
    return slices


def model_parts(graph: LayerGraph, strips: bool = True, channels: bool = True,
                limit: int = WHOLE_MODEL_BYTES) -> list[Part]:
    """The partitions measured for one model: the whole model (or its `weight_slices` when its weights exceed
    `limit`), with `strips` row strips (1/2, 1/4) of its first fused block and, with `channels`,
    output-channel slices (1/2, 1/4) of its first convolution unit after the stem."""
    name = graph.model_name
    if graph.weight_bytes() <= limit:
        parts = [Part(name, 0, len(graph), Region.full(graph.output_shape))]
    else:
        parts = [Part(f"{name} layers {a}:{b}", a, b, Region.full(graph.shape_at(b)))
                 for a, b in weight_slices(graph, limit)]
    fused = graph.longest_fusable_prefix() // 2
    if strips and fused > 0:
        stop = graph.units[fused - 1].stop
        shape = graph.shape_at(stop)
        for share in (2, 4):
            rows = shape[1] // share
            parts.append(Part(f"{name} strip 1/{share}", 0, stop,
                              Region.of((0, shape[0]), (rows, 2 * rows), (0, shape[2]))))
    unit = next((u for u in graph.units[1:] if graph.layers[u.start].op is OpKind.CONV), None)
    if channels and unit is not None:
        out = graph.shape_at(unit.stop)
        for share in (2, 4):
            if out[0] // share > 0:
                parts.append(Part(f"{name} channels 1/{share} of {unit.name}", unit.start, unit.stop,
                                  Region.of((0, out[0] // share), *((0, n) for n in out[1:]))))
    return parts


def part_groups(name: str, strips: bool = True, channels: bool = True,
                limit: int = WHOLE_MODEL_BYTES) -> list[list[Part]]:
    """`model_parts` grouped by what is built at once: every part of a model within `limit` from one copy of
    it; each part of a bigger one from its own layers only (`load_part`), so no more than about `limit` of
    its weights (or its biggest unit) is ever alive."""
    graph = load_graph(ModelRef(name))
    parts = model_parts(graph, strips, channels, limit)
    return [parts] if graph.weight_bytes() <= limit else [[p] for p in parts]


def build_cases(name: str, parts: Sequence[Part]) -> list[PartitionCase]:
    """Runnable cases for `parts` of model `name`, built from the layers they need (the whole model for one
    part spanning it, or several parts)."""
    ref = ModelRef(name)
    if len(parts) == 1:
        part = parts[0]
        gm, graph = load_part(ref, lambda g: g.param_names(part.start, part.stop))
    else:
        gm, graph = trace_ref(ref, load_model(ref))
    executor = Executor(gm, graph)
    cases = []
    for part in parts:
        runner = executor.runner(part.start, part.stop, part.region)
        tile = torch.randn(graph.batch, *runner.input_region.shape)
        cases.append(PartitionCase(part.label, graph, part.start, part.stop, part.region,
                                   functools.partial(runner, tile)))
    return cases


def partition_cases(models: Sequence[str], strips: bool = True, channels: bool = True) -> list[PartitionCase]:
    """Every part of `model_parts` of each model, all built (see `measure_models` to hold one at a time)."""
    return [case for name in models for group in part_groups(name, strips, channels)
            for case in build_cases(name, group)]


def measure_cases(cases: Sequence[PartitionCase], rounds: int = 3, repeats: int = 3) -> list[float]:
    """Median seconds of each case over `rounds` interleaved rounds (a burst of background load then hits every
    case alike instead of one)."""
    times: list[list[float]] = [[] for _ in cases]
    with torch.no_grad():
        for _ in range(rounds):
            for case, bucket in zip(cases, times, strict=True):
                bucket.append(time_call(case.run, warmup=1, repeats=repeats).median_s)
    return [statistics.median(t) for t in times]


def _released() -> object:
    raise RuntimeError("this partition was measured and its model released (see measure_models)")


def measure_models(models: Sequence[str], rounds: int = 3, repeats: int = 3, strips: bool = True,
                   channels: bool = True) -> tuple[list[PartitionCase], list[float]]:
    """The partitions of `model_parts` and their median seconds, one build at a time (`part_groups`): a
    group's cases are built, measured (interleaved among themselves, see `measure_cases`), then released
    before the next is built. [R] Building the whole zoo first held ~1.2 GB of weights at once, and vgg16
    alone as one partition took the profiling Job over 1 GiB; now the weights alive are at most about
    `WHOLE_MODEL_BYTES` (or vgg16's fc6, 411 MB), so the Job fits a 1 GiB device. The returned cases keep
    their geometry for the fits; their `run` only raises."""
    cases: list[PartitionCase] = []
    measured: list[float] = []
    for name in models:
        for group in part_groups(name, strips, channels):
            built = build_cases(name, group)
            measured += measure_cases(built, rounds, repeats)
            cases += [replace(case, run=_released) for case in built]
            del built  # the executor, weights and input tiles go before the next group is built
            gc.collect()  # [R] a GraphModule and its Graph form a cycle: vgg16's fc6 outlived its slice
            release_freed_memory()
    return cases, measured


def whole_models(profile: DeviceProfile, cases: Sequence[PartitionCase], measured: Sequence[float]
                 ) -> list[dict[str, Any]]:
    """Measured vs predicted seconds of each whole model: its one case, or the sum of its `weight_slices`
    (one partition runs the same layers in the same order; only the handoff between slices differs)."""
    totals: dict[str, list[float]] = {}
    for case, m in zip(cases, measured, strict=True):
        name = case.graph.model_name
        if case.label == name or case.label.startswith(f"{name} layers "):
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += m
            total[1] += predicted_partition(profile, case.graph, case.start, case.stop, case.region)
    return [{"model": name, "measuredS": m, "predictedS": p, "error": round((p - m) / m, 4)}
            for name, (m, p) in totals.items()]


def partition_terms(profile: DeviceProfile, case: PartitionCase) -> tuple[float, float, float, float]:
    """(Σ micro-benchmark predictions, Σ activation elements read and written, Σ weight elements, layers
    computed) of one case under `profile` without its executor terms."""
    bare = replace(profile, layer_overhead_s=0.0, executor_scale=1.0, executor_elem_s=0.0, executor_weight_s=0.0)
    geometry = backprop(case.graph, case.start, case.stop, case.region)
    layers = elems = weights = seconds = 0.0
    for i, region in geometry.regions.items():
        if region.empty:
            continue
        layer = case.graph.layers[i]
        counts = region_counts(layer, region, case.graph.batch)
        seconds += bare.time_of_counts(layer, counts)
        elems += counts.in_elems + counts.out_elems
        weights += counts.weight_elems
        layers += 1
    return seconds, elems, weights, layers


def fit_executor_terms(profile: DeviceProfile, cases: Sequence[PartitionCase], measured: Sequence[float],
                       dispatch_s: float = 0.0) -> DeviceProfile:
    """`profile` with its executor terms (scale, per activation element, per weight element, per layer) fitted
    on measured partitions (NNLS, least relative error; see costmodel "Executor terms"). The per-layer
    overhead is at least `dispatch_s`, the bookkeeping measured on a chain of trivial layers."""
    terms = np.array([partition_terms(profile, c) for c in cases])
    y = np.asarray(measured, dtype=float) - dispatch_s * terms[:, 3]
    keep = y > 0
    if keep.sum() < 4:
        return replace(profile, layer_overhead_s=dispatch_s)
    model = fit_linear_model(terms[keep], y[keep], ("scale", "elem", "weight", "layer"))
    scale, elem, weight, layer = model.coef
    if scale <= 0:  # the micro-benchmarks carry no information: keep them as they are
        return replace(profile, layer_overhead_s=dispatch_s)
    return replace(profile, executor_scale=scale, executor_elem_s=elem, executor_weight_s=weight,
                   layer_overhead_s=dispatch_s + layer)


def partition_checks(profile: DeviceProfile, models: Sequence[str], repeats: int = 3,
                     strips: bool = True) -> list[ModelCheck]:
    """Measured vs predicted partitions: each whole model (one partition) and, with `strips`, row strips and
    channel slices (see `partition_cases`)."""
    cases, measured = measure_models(models, repeats=repeats, strips=strips, channels=strips)
    return [ModelCheck(c.label, m, predicted_partition(profile, c.graph, c.start, c.stop, c.region))
            for c, m in zip(cases, measured, strict=True)]


def check_models(profile: DeviceProfile, models: Sequence[str], repeats: int = 5) -> list[ModelCheck]:
    """Measured vs predicted whole models, each run by the executor as one partition."""
    return partition_checks(profile, models, repeats, strips=False)


def executor_scale(checks: Sequence[ModelCheck]) -> float:
    """The geometric mean of measured / predicted: least relative error for one multiplicative factor."""
    ratios = [c.measured_s / c.predicted_s for c in checks if c.predicted_s > 0 and c.measured_s > 0]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 1.0


# ------------------------------------------------------------------ entry point


def profile_device(config: ProfileConfig, progress: Progress | None = None) -> DeviceProfile:
    """Run the micro-benchmarks and fit the profile of this machine."""
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    use_exact_kernels(config.exact_kernels)
    allocator = partition_allocator()
    try:
        started = time.perf_counter()
        samples = collect_samples(config, progress)
        release_freed_memory()  # the tiles' tensors, before the models are built
        roof = roofline_of(samples)
        overhead = layer_overhead()
        meta: dict[str, Any] = {
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpu": _cpu_model(), "kernels": "exact" if config.exact_kernels else "fast",
            "clock": "thread-cpu" if torch.get_num_threads() == 1 else "wall",
            "allocator": "keep freed memory (microbench.partition_allocator)" if allocator else "default",
            "samples": len(samples), "models": list(config.models),
            "seconds": round(time.perf_counter() - started, 1),
        }
        meta["dispatchS"] = overhead
        profile = fit_profile(samples, config.name, torch.get_num_threads(), roof, meta, seed=config.seed,
                              layer_overhead_s=overhead)
        profile = replace(profile, message_overhead_s=message_overhead(overhead))
        if config.validate and config.models:
            models = config.models[:1] if config.quick else config.models
            cases, measured = measure_models(models, rounds=2 if config.quick else 3)
            profile = fit_executor_terms(profile, cases, measured, overhead)
            meta["executorTerms"] = {"scale": round(profile.executor_scale, 4),
                                     "elemS": profile.executor_elem_s, "weightS": profile.executor_weight_s,
                                     "layerS": profile.layer_overhead_s,
                                     "partitions": len(cases)}
            meta["wholeModels"] = whole_models(profile, cases, measured)
            profile = replace(profile, meta=meta)
        return profile
    finally:
        torch.set_num_threads(previous_threads)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def samples_summary(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.family] = counts.get(s.family, 0) + 1
    return dict(sorted(counts.items()))



__all__ = [
    "DEFAULT_MODELS",
    "QUICK_MODELS",
    "WHOLE_MODEL_BYTES",
    "ModelCheck",
    "PartitionCase",
    "ProfileConfig",
    "build_cases",
    "check_models",
    "collect_samples",
    "executor_scale",
    "fit_executor_terms",
    "measure_cases",
    "measure_models",
    "measure_partition",
    "model_parts",
    "part_groups",
    "partition_cases",
    "partition_checks",
    "partition_terms",
    "predicted_partition",
    "predicted_whole",
    "profile_device",
    "roofline_of",
    "samples_summary",
    "synthetic_layers",
    "weight_slices",
    "whole_models",
]
