"""The profiler: tiles are timed the way partitions compute them; a short run fits a usable profile;
the network probe fits alpha + bytes/bandwidth."""

from __future__ import annotations

import asyncio
import functools
import itertools
import resource
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace

import httpx
import pytest
import torch

from edgepart.executor import SliceRunner
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import reference_profile
from edgepart.planner.costmodel import profile_from_json
from edgepart.profiler import run
from edgepart.profiler.microbench import (
    channel_counts,
    layer_tiles,
    partition_allocator,
    tile_call,
    tile_heights,
    time_call,
)
from edgepart.profiler.netprobe import echo_app, fit_link, probe
from edgepart.profiler.run import (
    PartitionCase,
    ProfileConfig,
    fit_executor_terms,
    partition_cases,
    partition_terms,
    predicted_partition,
    profile_device,
    synthetic_layers,
)


def test_time_call_reports_a_positive_median_and_loops_tiny_calls() -> None:
    timing = time_call(lambda: None, warmup=1, repeats=5)
    assert timing.median_s > 0 and timing.inner > 1 and timing.runs == 5
    x = torch.randn(64, 64)
    big = time_call(lambda: x @ x, warmup=1, repeats=3, min_run_s=0.0)
    assert big.inner == 1


def test_tile_sizes() -> None:
    assert tile_heights(224, 5) == [1, 8, 32, 128, 224] or len(tile_heights(224, 5)) == 5
    assert tile_heights(224, 5)[0] == 1 and tile_heights(224, 5)[-1] == 224
    assert tile_heights(3, 5) == [1, 2, 3]
    assert channel_counts(64) == [8, 16, 32, 64]
    assert channel_counts(96, step=32) == [32, 96]


@pytest.mark.parametrize("name", ["squeezenet1_1", "yolov2", "mobilenet_v2", "googlenet", "alexnet"])
def test_tile_calls_compute_the_tile_shape(name: str) -> None:
    graph = load_graph(ModelRef(name))
    seen = set()
    for layer in graph.layers:
        if layer.op in seen:
            continue
        seen.add(layer.op)
        for region in layer_tiles(layer, heights=3):
            out = tile_call(layer, region, graph.batch)()
            assert isinstance(out, torch.Tensor)
            if layer.op.value in ("conv", "pool_max", "pool_avg", "fc", "bn", "act", "add", "concat"):
                assert tuple(out.shape[1:]) == region.shape, (name, layer.name, region)


def test_a_short_profile_run_fits_every_family_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert {layer.op.value for layer in synthetic_layers(3)} >= {"conv", "pool_max", "pool_avg", "fc", "bn", "act",
                                                                 "add", "concat", "upsample", "space_to_depth"}
    calls = []
    config = ProfileConfig(name="ci", models=(), quick=True, threads=1, repeats=3, warmup=1, heights=3,
                           synthetic=6, validate=False)
    profile = profile_device(config, lambda done, total, what: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert {"conv", "conv_1x1", "conv_grouped", "fc", "bn", "act", "pool_max"} <= set(profile.ops)
    assert profile.threads == 1 and profile.meta["kernels"] == "fast"  # what partitions run by default
    path = tmp_path / "device.json"
    profile.save(path)
    loaded = profile_from_json(path.read_text())
    layer = load_graph(ModelRef("vgg16")).layers[2]
    tile = Region.full(layer.out_shape).replace(1, (0, 16))
    assert loaded.layer_time(layer, tile) == pytest.approx(profile.layer_time(layer, tile))
    assert profile.layer_time(layer) > profile.layer_time(layer, tile) > 0


def test_fit_link_recovers_alpha_and_bandwidth() -> None:
    sizes = [2**k for k in range(10, 25, 2)]
    link = fit_link(sizes, [3e-3 + n / 12.5e6 for n in sizes])
    assert link.alpha_s == pytest.approx(3e-3, rel=1e-6)
    assert link.bandwidth_Bps == pytest.approx(12.5e6, rel=1e-6)


def test_probe_against_the_echo_app() -> None:
    async def run() -> tuple[float, float, int, int]:
        transport = httpx.ASGITransport(app=echo_app)
        link = await probe("http://probe", sizes=(1024, 65536, 1 << 20), repeats=2, transport=transport)
        async with httpx.AsyncClient(transport=transport) as client:
            missing = await client.get("http://probe/nope")
            counted = await client.post("http://probe/sink", content=b"x" * 1000)
        assert counted.json() == {"bytes": 1000}
        return link.alpha_s, link.bandwidth_Bps, missing.status_code, counted.status_code

    alpha, bandwidth, missing, ok = asyncio.run(run())
    assert alpha >= 0 and bandwidth > 0
    assert missing == 404 and ok == 200


def test_fit_executor_terms_recovers_synthetic_terms() -> None:
    base = reference_profile()
    cases = partition_cases(["squeezenet1_1", "resnet50"])
    assert {c.label.split(" ")[1] if " " in c.label else "whole" for c in cases} == {"whole", "strip", "channels"}
    terms = [partition_terms(base, c) for c in cases]
    dispatch = 5e-6
    truth = (1.3, 2e-10, 4e-10, 2e-5)  # scale, per activation element, per weight element, per layer
    measured = [truth[0] * t + truth[1] * e + truth[2] * w + (dispatch + truth[3]) * n for t, e, w, n in terms]
    fitted = fit_executor_terms(base, cases, measured, dispatch)
    assert fitted.executor_scale == pytest.approx(truth[0], rel=1e-3)
    assert fitted.executor_elem_s == pytest.approx(truth[1], rel=1e-2)
    assert fitted.executor_weight_s == pytest.approx(truth[2], rel=1e-2)
    assert fitted.layer_overhead_s == pytest.approx(dispatch + truth[3], rel=1e-2)
    for case, m in zip(cases, measured, strict=True):  # the fitted profile predicts the partitions
        assert predicted_partition(fitted, case.graph, case.start, case.stop, case.region) == pytest.approx(m, rel=1e-3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_partition_allocator_keeps_big_scratch_buffers_mapped() -> None:
    """A 64 MiB buffer (a large convolution's unfold scratch) allocated again after being freed must not
    page-fault in again: that cost made layer times jump with tile size (see microbench.partition_allocator)."""
    if not partition_allocator():
        pytest.skip("allocator settings overridden by MALLOC_* variables")

    def faults_of_one_buffer() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(3):  # the heap settles (small allocations may take the freed chunk's head at first)
        faults_of_one_buffer()
    # 16384 pages when mapped afresh each time, as without the settings; with them a reuse now and then
    # still lands on fresh pages, depending on where the heap's other chunks lie, so the best of a few
    # allocations is asserted (without the settings every one of them faults)
    assert min(faults_of_one_buffer() for _ in range(6)) < 1000


def test_partitions_are_measured_one_model_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the timed model's partitions (its weights, its tiles) are alive while it is timed: building every
    model first held the whole zoo's weights at once, more than a 1 GiB device has."""
    built: list[weakref.ref[Callable[[], object]]] = []
    alive: list[tuple[int, int]] = []  # (partitions alive, partitions being timed) at each build and timing
    build_cases = run.build_cases

    def building(name: str, parts: Sequence[run.Part]) -> list[PartitionCase]:
        alive.append((sum(r() is not None for r in built), 0))  # the previous model is gone before this one
        cases = build_cases(name, parts)
        built.extend(weakref.ref(c.run) for c in cases)
        return cases

    def timing(cases: Sequence[PartitionCase], rounds: int = 3, repeats: int = 3) -> list[float]:
        alive.append((sum(r() is not None for r in built), len(cases)))
        return [1e-3] * len(cases)

    monkeypatch.setattr(run, "build_cases", building)
    monkeypatch.setattr(run, "measure_cases", timing)
    cases, measured = run.measure_models(["squeezenet1_1", "mobilenet_v2"])
    assert alive[0::2] == [(0, 0), (0, 0)] and all(live == timed > 1 for live, timed in alive[1::2])
    assert len(measured) == len(cases) and {c.graph.model_name for c in cases} == {"squeezenet1_1", "mobilenet_v2"}
    with pytest.raises(RuntimeError, match="released"):
        cases[0].run()


def test_a_model_over_the_weight_limit_is_measured_one_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """vgg16 (528 MB of weights) as one partition took the profiling Job over 1 GiB: its whole-model case is
    consecutive slices, each built from its own layers only and measured alone, and its whole-model check
    is their sum."""
    graph = load_graph(ModelRef("vgg16"))
    slices = run.weight_slices(graph)
    assert slices[0][0] == 0 and slices[-1][1] == len(graph) and len(slices) > 1
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(slices))  # consecutive
    for a, b in slices:  # under the limit, or one unit (vgg16's fc6, 411 MB)
        assert graph.weight_bytes(a, b) <= run.WHOLE_MODEL_BYTES or sum(
            a <= u.start < b for u in graph.units) == 1
    groups = run.part_groups("vgg16")
    assert all(len(group) == 1 for group in groups)
    assert [(g[0].start, g[0].stop) for g in groups[:len(slices)]] == slices
    assert len(run.part_groups("squeezenet1_1")) == 1  # a small model: every part from one copy

    weights: list[int] = []  # bytes of materialised weights of each build
    build_cases = run.build_cases

    def building(name: str, parts: Sequence[run.Part]) -> list[PartitionCase]:
        cases = build_cases(name, parts)
        call = cases[0].run
        assert isinstance(call, functools.partial) and isinstance(call.func, SliceRunner)
        module = call.func.gm
        weights.append(sum(t.numel() * t.element_size() for t in module.state_dict().values()
                           if t.device.type != "meta"))
        return [replace(c, run=lambda: None) for c in cases]

    monkeypatch.setattr(run, "part_groups", lambda name, strips=True, channels=True: groups[:len(slices)])
    monkeypatch.setattr(run, "build_cases", building)
    monkeypatch.setattr(run, "measure_cases", lambda cases, rounds=3, repeats=3: [1e-3] * len(cases))
    cases, measured = run.measure_models(["vgg16"])
    assert weights == [graph.weight_bytes(a, b) for a, b in slices]  # never the whole model
    whole = run.whole_models(reference_profile(), cases, measured)
    assert [w["model"] for w in whole] == ["vgg16"] and whole[0]["measuredS"] == pytest.approx(1e-3 * len(slices))
