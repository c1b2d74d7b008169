"""Every zoo model, split by ftp-grid and layer-wise plans, gives the whole model's output."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import fx

from edgepart.executor import Executor, compare, use_exact_kernels
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.graph.zoo import zoo_names
from edgepart.plan import check_plan, plan_from_json
from edgepart.planner.builders import build_ftp_grid, build_layerwise

use_exact_kernels()

Traced = Callable[[str], tuple[fx.GraphModule, LayerGraph, Executor]]
DEVICES = ["dev-0", "dev-1", "dev-2", "dev-3"]


@pytest.mark.parametrize("name", zoo_names())
def test_zoo_model_splits_match_the_whole_model(name: str, zoo_traced: Traced) -> None:
    _, graph, executor = zoo_traced(name)
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(7))
    expected = executor.run_whole(x)
    plans = [build_ftp_grid(graph, ModelRef(name), DEVICES, grid) for grid in ((2, 2), (3, 3), (4, 1))]
    plans.append(build_layerwise(graph, ModelRef(name), DEVICES))
    for staged in plans:
        plan = plan_from_json(staged.to_plan().to_json())  # what a process would read from disk
        check_plan(plan, graph)
        result = compare(expected, executor.run_plan(plan, x))
        assert result.allclose, f"{name} {plan.solver} {plan.meta}: max abs diff {result.max_abs_diff}"


@pytest.mark.parametrize("name,fused", [("vgg16", 4), ("yolov2", 9), ("resnet50", 5)])
def test_partial_fusion_and_row_splits(name: str, fused: int, zoo_traced: Traced) -> None:
    _, graph, executor = zoo_traced(name)
    x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(1))
    expected = executor.run_whole(x)
    for staged in (build_ftp_grid(graph, ModelRef(name), DEVICES[:3], (1, 3), fused),
                   build_layerwise(graph, ModelRef(name), DEVICES[:2], split="rows")):
        plan = staged.to_plan()
        check_plan(plan, graph)
        assert compare(expected, executor.run_plan(plan, x)).allclose
