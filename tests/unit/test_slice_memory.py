"""A partition materialises only its slice: seeded values identical to the whole model's, and a measured peak
RSS below the memory the operator requests for it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.graph import zoo
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph, load_model, load_part, trace_ref
from edgepart.partition_service.config import render_configs
from edgepart.plan import make_plan
from edgepart.planner.builders import single_stage
from edgepart.planner.resources import PROCESS_OVERHEAD_BYTES, partition_resources


@pytest.mark.parametrize("count", [1, 15, 16, 17, 33, 64, 65, 200, 64 * 3 + 16, 1027])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_skipping_draws_leaves_the_generator_where_drawing_does(monkeypatch: pytest.MonkeyPatch, count: int,
                                                               kind: str) -> None:
    monkeypatch.setattr(zoo, "SKIP_CHUNK", 64)  # chunked bodies and tails at small sizes
    drawn, skipped = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    getattr(torch.empty(count), f"{kind}_")(generator=drawn)
    (zoo.skip_normal if kind == "normal" else zoo.skip_uniform)(count, skipped)
    assert torch.equal(torch.empty(40).normal_(generator=drawn), torch.empty(40).normal_(generator=skipped))


def _halves(graph: LayerGraph) -> list[tuple[int, int]]:
    middle = len(graph) // 2
    return [(0, middle), (middle, len(graph))]


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "yolov2", "googlenet"])
def test_a_seeded_slice_has_the_whole_models_values_and_nothing_else(name: str) -> None:
    ref = ModelRef(name, seed=3)
    whole = trace_ref(ref, load_model(ref))[0].state_dict()
    graph = load_graph(ref)
    for start, stop in _halves(graph):
        gm, _ = load_part(ref, lambda g, a=start, b=stop: g.param_names(a, b))
        kept = set(graph.param_names(start, stop))
        for key, tensor in gm.state_dict().items():
            if key in kept:
                assert torch.equal(tensor, whole[key]), key
            else:
                assert tensor.is_meta, key


def test_a_file_model_outside_the_zoo_is_sliced_too(tmp_path: Path) -> None:
    ref = ModelRef(f"{write_tiny_cnn(tmp_path)}:tiny", SHAPE, seed=1)
    whole = trace_ref(ref, load_model(ref))[0].state_dict()
    gm, graph = load_part(ref, lambda g: g.param_names(0, 2))
    kept = set(graph.param_names(0, 2))
    assert kept and all(torch.equal(gm.state_dict()[k], whole[k]) for k in kept)
    assert all(t.is_meta for k, t in gm.state_dict().items() if k not in kept)


# The partition process's imports, then what its worker thread does at start (load, warm), then the peak:
# VmHWM, this process's own high-water mark (ru_maxrss would carry over pytest's peak across fork and exec).
_MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    import edgepart.partition_service.server
    from edgepart.executor import use_exact_kernels
    from edgepart.partition_service.config import load_partition_config
    from edgepart.partition_service.slicing import load_slice
    config = load_partition_config(sys.stdin.read())
    torch.set_num_threads(config.threads)
    use_exact_kernels(config.exact_kernels)
    runner = load_slice(config)
    runner(torch.zeros((config.batch, *config.input_region.shape)))
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak": int(hwm.split()[1]) * 1024}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_the_memory_request_covers_the_measured_peak_of_vgg16_slices() -> None:
    ref = ModelRef("vgg16")
    graph = load_graph(ref)
    cut = next(i for i, layer in enumerate(graph.layers) if layer.name == "flatten")  # features | classifier
    plan = make_plan(ref, "manual", "latency", ("d0", "d1"), (
        single_stage(graph, 0, 0, cut, "d0"), single_stage(graph, 1, cut, len(graph), "d1"))).to_plan()
    configs = render_configs(plan, "memory", {t.id: f"http://{t.id}:8000" for t in plan.tasks}, "http://gw:8081",
                             client_port=8080, secret_file="/nonexistent")
    for task, config in zip(plan.tasks, configs.partitions, strict=True):
        assert task.id == config.partition
        done = subprocess.run([sys.executable, "-c", _MEASURE], input=config.model_dump_json(), text=True,
                              capture_output=True, check=True, timeout=300)
        peak = json.loads(done.stdout.splitlines()[-1])["peak"]
        request = partition_resources(graph, task, 4, 1).memory_request
        print(f"{task.id} layers [{task.start}, {task.stop}): peak {peak / 2**20:.0f} MiB, "
              f"request {request / 2**20:.0f} MiB")
        assert peak < request, (task.id, peak, request)
        # never the whole model: before slicing on `meta`, the features slice peaked at 1239 MiB
        assert peak < PROCESS_OVERHEAD_BYTES + graph.weight_bytes(), (task.id, peak)
