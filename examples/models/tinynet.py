"""A small bring-your-own model: any torch.fx-traceable nn.Module works the same way.

    edgepart inspect examples/models/tinynet.py:build --input-shape 1,3,64,64
    edgepart verify examples/models/tinynet.py:build --input-shape 1,3,64,64 --solver ftp-grid --grid 2x2
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([x, torch.relu(self.branch(x)) + x], dim=1)
        x = self.head(self.pool(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build() -> nn.Module:
    return TinyNet()
