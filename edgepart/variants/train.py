"""Train and evaluate the digits family: deterministic, one core, seconds per variant.

Data: scikit-learn's bundled `load_digits` (1,797 images, 8x8, 16 grey levels;
shipped inside the package, nothing is downloaded), pixels scaled to [0, 1].
Split: a stratified 80/20 train/held-out split (`train_test_split`, seed
`split_seed`); the held-out images are never trained on, and accuracy is
correct/count on them. Training: the loader's seeded init (`init_weights`),
Adam, cross-entropy, mini-batches in an order drawn from a local generator,
one thread (thread count changes float summation order, hence the weights).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from edgepart.errors import EdgepartError
from edgepart.graph.zoo import init_weights
from edgepart.variants.digits import FACTORIES

DATASET = "sklearn.datasets.load_digits"


class TrainingError(EdgepartError, ValueError):
    """A variant or training setting that cannot be used."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-2
    seed: int = 0  # weight init and mini-batch order
    split_seed: int = 0  # the held-out split
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"training {name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise TrainingError(f"training learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.test_fraction < 1:
            raise TrainingError(f"training test_fraction must be in (0, 1), got {self.test_fraction}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class DigitsSplit:
    train_x: Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    train_y: Tensor  # (N,) int64
    test_x: Tensor
    test_y: Tensor
    test_indices: tuple[int, ...]  # rows of load_digits() held out, ascending

    @property
    def test_count(self) -> int:
        return len(self.test_indices)

    def test_indices_sha256(self) -> str:
        """Fingerprint of the held-out rows: a retraining elsewhere can check it evaluates the same images."""
        return hashlib.sha256(",".join(map(str, self.test_indices)).encode()).hexdigest()


@dataclass(frozen=True)
class Evaluation:
    correct: int
    count: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count


def load_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]
    labels = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                           random_state=seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return DigitsSplit(torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]),
                       torch.from_numpy(images[test_idx]), torch.from_numpy(labels[test_idx]),
                       tuple(int(i) for i in test_idx))


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build(variant: str) -> nn.Module:
    factory = FACTORIES.get(variant)
    if factory is None:
        raise TrainingError(f"unknown digits variant {variant!r}; known: {list(FACTORIES)}")
    return factory()


def train(variant: str, split: DigitsSplit, settings: TrainSettings = TrainSettings()) -> nn.Module:
    """The trained variant, in eval mode. Same settings, same split, same torch: same weights, bit for bit."""
    model = build(variant)
    init_weights(model, settings.seed)
    order = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    count = len(split.train_y)
    with one_thread():
        model.train()
        for _ in range(settings.epochs):
            permutation = torch.randperm(count, generator=order)
            for start in range(0, count, settings.batch_size):
                batch = permutation[start:start + settings.batch_size]
                optimiser.zero_grad()
                loss = nn.functional.cross_entropy(model(split.train_x[batch]), split.train_y[batch])
                torch.autograd.backward(loss)
                optimiser.step()
    return model.eval()


def predictions(model: nn.Module, images: Tensor) -> Tensor:
    """Predicted class per image."""
    with torch.no_grad(), one_thread():
        result: Tensor = model(images).argmax(dim=1)
    return result


def evaluate(model: nn.Module, split: DigitsSplit) -> Evaluation:
    correct = int((predictions(model, split.test_x) == split.test_y).sum())
    return Evaluation(correct, split.test_count)
