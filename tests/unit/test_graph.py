"""LayerGraph: cut points, units, costs, and clear errors for what cannot be partitioned."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from edgepart.graph import GraphError, OpKind, trace
from edgepart.graph.layer_graph import INPUT
from edgepart.graph.loader import ModelRef, load_graph


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu(self.inner(x)) + x
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_cut_points_skip_the_inside_of_a_residual_block() -> None:
    _, graph = trace(Residual().eval(), (1, 3, 8, 8))
    names = [layer.name for layer in graph.layers]
    assert names == ["conv", "bn", "relu", "inner", "relu_1", "add", "adaptive_avg_pool2d", "flatten", "fc"]
    # inside the block (after `inner`, after `relu_1`) two tensors cross: x and the branch
    assert graph.cut_points == (0, 1, 2, 3, 6, 7, 8, 9)
    assert graph.producer_at(0) == INPUT and graph.producer_at(6) == 5
    units = [(u.start, u.stop, u.name, u.fusable) for u in graph.units]
    assert units == [(0, 3, "conv", True), (3, 6, "inner", True), (6, 7, "adaptive_avg_pool2d", False),
                     (7, 8, "flatten", False), (8, 9, "fc", False)]
    assert graph.longest_fusable_prefix() == 2


def test_costs_are_counted_per_layer() -> None:
    _, graph = trace(Residual().eval(), (1, 3, 8, 8))
    conv = graph.by_name("conv")
    assert conv.op is OpKind.CONV
    assert conv.flops == 2 * 4 * 8 * 8 * 3 * 3 * 3
    assert conv.weight_bytes == (4 * 3 * 3 * 3 + 4) * 4
    assert conv.out_bytes == 4 * 8 * 8 * 4
    assert graph.by_name("fc").flops == 2 * 4 * 2
    assert set(graph.by_name("bn").param_names) >= {"bn.weight", "bn.running_var"}


def test_meta_tracing_needs_no_weights() -> None:
    graph = load_graph(ModelRef("vgg16"))
    assert graph.output_shape == (1000,)
    assert graph.flops() > 30e9


def test_unsupported_layers_are_named() -> None:
    class Weird(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.roll(x, 1, 2)

    with pytest.raises(GraphError, match=r"layer 'roll' \(roll\): unsupported function roll"):
        trace(Weird(), (1, 3, 8, 8))


def test_view_by_size_gets_a_hint() -> None:
    class Viewer(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.view(x.size(0), -1)

    with pytest.raises(GraphError, match=r"torch\.flatten"):
        trace(Viewer(), (1, 3, 8, 8))


def test_wrong_input_rank_is_rejected() -> None:
    with pytest.raises(GraphError, match=r"need 4 dimensions"):
        trace(nn.Conv2d(3, 3, 1), (3, 8, 8))
