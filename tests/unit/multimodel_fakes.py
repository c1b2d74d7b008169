"""Small traced models and platforms shared by the multi-model tests."""

from __future__ import annotations

import functools

import torch
from torch import fx, nn

from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.graph.zoo import init_weights
from edgepart.planner.multimodel.platform import Network, Platform, TableDevice

MIB = 2**20


class Residual(nn.Module):
    """conv-relu-conv plus the input: one unit (two tensors cross inside it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 3, padding=1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + x


def conv_stack() -> nn.Sequential:
    """Windows of several sizes, strides and paddings, and a ceil-mode pool."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 5, stride=1, padding=2), nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
    )


def classifier(width: int, residual: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(width))
    layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 8 * 8, 10)]
    return nn.Sequential(*layers)


@functools.cache
def traced(name: str) -> tuple[fx.GraphModule, LayerGraph]:
    """'stack' (conv_stack on 23x17), 'net-a' (classifier 4), 'net-b' (classifier 6 with a residual)."""
    builders = {"stack": (conv_stack, (1, 3, 23, 17)), "net-a": (lambda: classifier(4), (1, 3, 16, 16)),
                "net-b": (lambda: classifier(6, residual=True), (1, 3, 16, 16))}
    build, shape = builders[name]
    model = build()
    init_weights(model, seed=7)
    model.eval()
    return trace(model, shape, name)


def table_platform(names: tuple[str, ...] = ("net-a", "net-b", "stack"), small_memory: int = 10**9,
                   bandwidth: float = 1 * MIB) -> tuple[Platform, tuple[int, ...]]:
    """A slow device with `small_memory`, a medium one, and a fast server (the fallback); one source."""
    def device(name: str, frequency: float, memory: int) -> TableDevice:
        return TableDevice(name, frequency, dict.fromkeys(names, 1.0), memory)

    devices = (device("slow", 2e7, small_memory), device("medium", 4e7, 10**9), device("server", 1e8, 10**10))
    network = Network.uniform([d.name for d in devices] + ["camera"], bandwidth)
    return Platform(devices, network, 2), tuple(3 for _ in names)
