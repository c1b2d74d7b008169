"""A family of small CNNs for scikit-learn's bundled handwritten digits (8x8, 10 classes).

Five variants of one design at different widths and depths, from a single
2-channel convolution to three convolutions and a hidden layer. Each is a
zero-argument factory, so a variant is an ordinary model reference
(`edgepart.variants.digits:digits_m`) that the loader, the tracer and the
data plane already understand. `train.py` trains and evaluates them; the
trained weights and their measured accuracy ship beside this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

INPUT_SHAPE = (1, 1, 8, 8)  # N, C, H, W: one grey 8x8 digit
CLASSES = 10


@dataclass(frozen=True)
class DigitsDesign:
    """Convolutions (3x3, 'same' padding, ReLU), each optionally followed by a 2x2 max-pool, then a classifier
    with an optional hidden layer."""

    widths: tuple[int, ...]
    pools: tuple[bool, ...]
    hidden: int = 0  # 0: the flattened features go straight to the 10 outputs

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.pools):
            raise ValueError(f"digits design: {len(self.widths)} widths but {len(self.pools)} pool flags")
        if sum(self.pools) > 3:
            raise ValueError("digits design: an 8x8 input allows at most 3 pools")


class DigitsCNN(nn.Module):
    def __init__(self, design: DigitsDesign) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = INPUT_SHAPE[1], INPUT_SHAPE[2]
        for width, pool in zip(design.widths, design.pools, strict=True):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        flat = channels * side * side
        head: list[nn.Module] = [nn.Flatten()]
        if design.hidden:
            head += [nn.Linear(flat, design.hidden), nn.ReLU(), nn.Linear(design.hidden, CLASSES)]
        else:
            head.append(nn.Linear(flat, CLASSES))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


# Name -> design, cheapest first: one convolution of 1, 2 or 4 channels, then two and three convolutions with a
# hidden layer. Predicted cost spans ~13x (batch 32, reference profile) and measured accuracy ~9 points.
DESIGNS: dict[str, DigitsDesign] = {
    "digits-xs": DigitsDesign((1,), (True,)),
    "digits-s": DigitsDesign((2,), (True,)),
    "digits-m": DigitsDesign((4,), (True,)),
    "digits-l": DigitsDesign((8, 16), (False, True), hidden=32),
    "digits-xl": DigitsDesign((16, 32, 32), (False, True, True), hidden=64),
}


def digits_xs() -> DigitsCNN:
    return DigitsCNN(DESIGNS["digits-xs"])


def digits_s() -> DigitsCNN:
    return DigitsCNN(DESIGNS["digits-s"])


def digits_m() -> DigitsCNN:
    return DigitsCNN(DESIGNS["digits-m"])


def digits_l() -> DigitsCNN:
    return DigitsCNN(DESIGNS["digits-l"])


def digits_xl() -> DigitsCNN:
    return DigitsCNN(DESIGNS["digits-xl"])


FACTORIES: dict[str, Callable[[], DigitsCNN]] = {
    "digits-xs": digits_xs, "digits-s": digits_s, "digits-m": digits_m, "digits-l": digits_l,
    "digits-xl": digits_xl,
}


def model_ref_name(variant: str) -> str:
    """The loader's reference for a variant: `edgepart.variants.digits:digits_m`."""
    return f"{__name__}:{FACTORIES[variant].__name__}"
