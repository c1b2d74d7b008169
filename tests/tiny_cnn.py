"""A small CNN written to a file, so that partition processes import it as a user's `path.py:factory` model."""

from __future__ import annotations

from pathlib import Path

SOURCE = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(8, 16, 3, padding=1)
        self.g = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.p(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(torch.flatten(self.g(torch.relu(self.c3(x))), 1))

def tiny():
    return Tiny()
'''
SHAPE = (1, 3, 32, 32)


def write_tiny_cnn(directory: Path, name: str = "tiny_cnn.py") -> Path:
    """The model file in `directory`; its factory is `tiny`."""
    path = directory / name
    path.write_text(SOURCE)
    return path
