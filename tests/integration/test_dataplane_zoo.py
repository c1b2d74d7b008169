"""Zoo models split across real processes over real HTTP equal the whole model (fused and layer-wise plans).

Each plan has 2 to 4 partitions, each partition its own process with one torch thread; the
whole model runs here for the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from edgepart.executor import use_exact_kernels
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph, load_model
from edgepart.plan import Plan, Stage, make_plan
from edgepart.planner.builders import (
    build_ftp_grid,
    channel_split,
    make_stage,
    row_split,
    single_stage,
)
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime
from edgepart.spec import deployment_from_dict

pytestmark = pytest.mark.slow


def one_layerwise_stage(graph: LayerGraph, ref: ModelRef, unit_index: int, split: str) -> Plan:
    """single on d0 | one unit split by `split` over d0, d1 | single on d1 (3 or 4 partitions)."""
    unit = graph.units[unit_index]
    regions = channel_split(graph, unit, 2) if split == "channels" else row_split(graph, unit.stop, 2)
    stages: list[Stage] = []
    if unit.start > 0:
        stages.append(single_stage(graph, 0, 0, unit.start, "d0"))
    stages.append(make_stage(graph, len(stages), "layerwise", split, unit.start, unit.stop,  # type: ignore[arg-type]
                             list(zip(("d0", "d1"), regions, strict=True))))
    if unit.stop < len(graph):
        stages.append(single_stage(graph, len(stages), unit.stop, len(graph), "d1"))
    return make_plan(ref, "test-layerwise", "latency", ("d0", "d1"), tuple(stages)).to_plan("d0")


def _unit_named(graph: LayerGraph, name: str) -> int:
    return next(i for i, u in enumerate(graph.units) if u.name == name)


PLANS: dict[str, Callable[[LayerGraph, ModelRef], Plan]] = {
    "vgg16-fused-2x1": lambda g, r: build_ftp_grid(g, r, ["d0", "d1"], (2, 1)).to_plan("d0"),
    "vgg16-layerwise-channels": lambda g, r: one_layerwise_stage(g, r, _unit_named(g, "features_19"), "channels"),
    "yolov2-fused-1x2": lambda g, r: build_ftp_grid(g, r, ["d0", "d1"], (1, 2)).to_plan("d0"),
    "yolov2-layerwise-rows": lambda g, r: one_layerwise_stage(g, r, len(g.units) // 2, "rows"),
    "resnet50-fused-2x1": lambda g, r: build_ftp_grid(g, r, ["d0", "d1"], (2, 1)).to_plan("d0"),
    "resnet50-layerwise-fc": lambda g, r: one_layerwise_stage(g, r, len(g.units) - 1, "channels"),
}

_REFERENCE: dict[str, torch.nn.Module] = {}


def reference(name: str, x: torch.Tensor) -> torch.Tensor:
    if name not in _REFERENCE:
        use_exact_kernels(True)
        _REFERENCE[name] = load_model(ModelRef(name))
    with torch.no_grad():
        out = _REFERENCE[name](x)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize("case", sorted(PLANS))
async def test_zoo_plan_over_processes_equals_the_whole_model(case: str, tmp_path: Path) -> None:
    model = case.split("-")[0]
    ref = ModelRef(model)
    graph = load_graph(ref)
    plan = PLANS[case](graph, ref)
    assert 2 <= len(plan.compute_tasks) <= 4
    manifest = deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": case},
        "spec": {"model": {"name": model}, "devices": [{"name": "d0"}, {"name": "d1"}], "requestTimeout": "120s",
                 "exactKernels": True},  # the native kernels: tiles compute what the whole model computes
    })
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(manifest, port=0, plan=plan, ready_timeout_s=300)
    try:
        x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(7))
        result = await infer(state.gateway_url, x, timeout_s=120)
        expected = await asyncio.to_thread(reference, model, x)
        torch.testing.assert_close(result.output, expected, atol=1e-5, rtol=1e-4)
    finally:
        await runtime.down(state.name)
