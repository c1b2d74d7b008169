"""In-project CNN model zoo with deterministic, well-scaled weights.

Every model here is written from scratch (no torchvision, no downloads) and is
traceable with :func:`torch.fx.symbolic_trace`: the forward passes contain no
Python control flow that depends on tensor values or shapes.

Weights come from :func:`init_weights`, which draws from a local
``torch.Generator`` so the same seed always gives the same model, independent of
the global RNG state. The initialisation is He/Kaiming-scaled so activations
keep an O(1) scale through deep networks, and BatchNorm statistics are random
but near identity, so eval-mode outputs neither vanish nor explode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgepart.errors import EdgepartError

__all__ = [
    "RESIDUAL_BN_SCALE",
    "VGG16",
    "ZOO",
    "AlexNet",
    "GoogLeNet",
    "MobileNetV2",
    "ResNet50",
    "SqueezeNet11",
    "UnknownModelError",
    "YOLOv2",
    "ZooEntry",
    "build_zoo_model",
    "covered_by_init_weights",
    "init_weights",
    "skip_normal",
    "skip_uniform",
    "zoo_names",
]


# --------------------------------------------------------------------------- VGG-16

# Configuration "D" from Simonyan & Zisserman (2015); "M" is a 2x2/2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 (configuration D) for 224x224 inputs; the last pool yields 7x7 directly."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
                layers.append(nn.ReLU())
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        out: Tensor = self.classifier(x)
        return out


# --------------------------------------------------------------------------- YOLOv2


class DarknetConv(nn.Module):
    """Darknet convolution: Conv2d (no bias) + BatchNorm2d + LeakyReLU(0.1), 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class YOLOv2(nn.Module):
    """YOLOv2 (Redmon & Farhadi, 2017): Darknet-19 backbone + detection head with passthrough.

    Fully convolutional: a 416x416 input gives a 13x13 grid, 608x608 gives 19x19.
    Output channels are ``num_anchors * (5 + num_classes)`` (425 for COCO).
    """

    def __init__(self, num_classes: int = 80, num_anchors: int = 5) -> None:
        super().__init__()
        # Darknet-19 up to the 26x26x512 feature map (the passthrough source).
        self.stage1 = nn.Sequential(
            DarknetConv(3, 32, 3),
            nn.MaxPool2d(2, 2),
            DarknetConv(32, 64, 3),
            nn.MaxPool2d(2, 2),
            DarknetConv(64, 128, 3),
            DarknetConv(128, 64, 1),
            DarknetConv(64, 128, 3),
            nn.MaxPool2d(2, 2),
            DarknetConv(128, 256, 3),
            DarknetConv(256, 128, 1),
            DarknetConv(128, 256, 3),
            nn.MaxPool2d(2, 2),
            DarknetConv(256, 512, 3),
            DarknetConv(512, 256, 1),
            DarknetConv(256, 512, 3),
            DarknetConv(512, 256, 1),
            DarknetConv(256, 512, 3),
        )
        # Rest of Darknet-19 (13x13x1024) plus the two 3x3x1024 detection convs.
        self.stage2 = nn.Sequential(
            nn.MaxPool2d(2, 2),
            DarknetConv(512, 1024, 3),
            DarknetConv(1024, 512, 1),
            DarknetConv(512, 1024, 3),
            DarknetConv(1024, 512, 1),
            DarknetConv(512, 1024, 3),
            DarknetConv(1024, 1024, 3),
            DarknetConv(1024, 1024, 3),
        )
        # Passthrough: 26x26x512 -> 1x1x64 -> space-to-depth -> 13x13x256.
        self.passthrough = DarknetConv(512, 64, 1)
        self.reorg = nn.PixelUnshuffle(2)
        self.head = DarknetConv(64 * 4 + 1024, 1024, 3)
        # Registered last on purpose: init_weights treats the last conv/linear as the output layer.
        self.detect = nn.Conv2d(1024, num_anchors * (5 + num_classes), kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        route = self.stage1(x)
        main = self.stage2(route)
        passthrough = self.reorg(self.passthrough(route))
        x = torch.cat([passthrough, main], dim=1)
        x = self.head(x)
        out: Tensor = self.detect(x)
        return out


# --------------------------------------------------------------------------- AlexNet


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al., 2012), torchvision layout; 224x224 gives 6x6x256 features."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        out: Tensor = self.classifier(x)
        return out


# --------------------------------------------------------------------------- SqueezeNet 1.1


class Fire(nn.Module):
    """SqueezeNet Fire module: 1x1 squeeze, then parallel 1x1 / 3x3 expands concatenated."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, kernel_size=1)
        self.squeeze_act = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_act = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], 1
        )


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 (Iandola et al., 2016), torchvision layout."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(512, num_classes, kernel_size=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


# --------------------------------------------------------------------------- GoogLeNet


class BasicConv2d(nn.Module):
    """Conv2d (no bias) + BatchNorm2d(eps=0.001) + ReLU, as in torchvision's GoogLeNet."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn(self.conv(x)))
        return out


class Inception(nn.Module):
    """Inception v1 block; like torchvision, the "5x5" branch uses a 3x3 convolution."""

    def __init__(
        self,
        in_ch: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_ch, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_ch, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_ch, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_ch, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 (Szegedy et al., 2015), torchvision layout without aux heads."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = torch.flatten(self.avgpool(x), 1)
        out: Tensor = self.fc(self.dropout(x))
        return out


# --------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    """ResNet bottleneck (v1.5: the stride sits on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        # nn.Identity keeps forward free of Python branching on a None attribute.
        self.downsample: nn.Module = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + identity)
        return result


class ResNet50(nn.Module):
    """ResNet-50 (He et al., 2016), torchvision layout: Bottleneck blocks [3, 4, 6, 3]."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_ch = 64
        self.layer1 = self._make_layer(64, 3, stride=1)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, width: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = width * Bottleneck.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        layers: list[nn.Module] = [Bottleneck(self._in_ch, width, stride, downsample)]
        self._in_ch = out_ch
        layers.extend(Bottleneck(out_ch, width) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = torch.flatten(self.avgpool(x), 1)
        out: Tensor = self.fc(x)
        return out


# --------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU6 with 'same' padding."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_ch,
                out_ch,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: expand 1x1, depthwise 3x3, linear 1x1 projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        # Decided at construction time, so the traced graph has no data-dependent branch.
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers.extend(
            [
                ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, out_ch, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_ch),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        if self.use_res_connect:
            return x + out
        return out


# (expand ratio t, output channels c, repeats n, first stride s), from the paper's Table 2.
_MOBILENET_V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018), width multiplier 1.0, torchvision layout."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_ch = 32
        last_ch = 1280
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in _MOBILENET_V2_CFG:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers.append(ConvBNReLU6(in_ch, last_ch, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_ch, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        out: Tensor = self.classifier(x)
        return out


# --------------------------------------------------------------------------- initialisation


RESIDUAL_BN_SCALE = 0.2
"""Factor applied to the gamma of the last BatchNorm in each ResNet bottleneck branch."""


SKIP_CHUNK = 1 << 20  # elements drawn at a time for a tensor left on `meta` (a multiple of 16)


def _fill_normal(t: Tensor, std: float, gen: torch.Generator) -> None:
    if t.is_meta:
        skip_normal(t.numel(), gen)
        return
    if _drawable_in_place(t):
        t.normal_(0.0, std, generator=gen)
        return
    values = torch.empty(t.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
    t.copy_(values)


def _fill_uniform(t: Tensor, low: float, high: float, gen: torch.Generator) -> None:
    if t.is_meta:
        skip_uniform(t.numel(), gen)
        return
    if _drawable_in_place(t):
        t.uniform_(low, high, generator=gen)
        return
    values = torch.empty(t.shape, dtype=torch.float32).uniform_(low, high, generator=gen)
    t.copy_(values)


def _drawable_in_place(t: Tensor) -> bool:
    """Drawing into `t` gives the values of a fresh CPU float32 draw, without a temporary copy of its size."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def skip_uniform(count: int, gen: torch.Generator) -> None:
    """Advance `gen` as `uniform_` on `count` float32 elements would, holding at most SKIP_CHUNK of them.

    uniform_ draws one number per element, so chunks consume the stream exactly as one draw does."""
    for start in range(0, count, SKIP_CHUNK):
        torch.empty(min(SKIP_CHUNK, count - start), dtype=torch.float32).uniform_(generator=gen)


def skip_normal(count: int, gen: torch.Generator) -> None:
    """Advance `gen` as `normal_` on `count` float32 elements would, holding at most SKIP_CHUNK + 32.

    CPU normal_ on m >= 16 elements draws m uniforms (Box-Muller in blocks of 16) and, when m % 16 != 0,
    16 more to redo the last block. So the body goes in chunks that are multiples of 16, and the tail
    (16 + m % 16 elements) in one draw that redoes its own last block: the same count overall."""
    if count <= SKIP_CHUNK:
        torch.empty(count, dtype=torch.float32).normal_(generator=gen)
        return
    tail = 16 + count % 16 if count % 16 else 0
    body = count - tail
    for start in range(0, body, SKIP_CHUNK):
        torch.empty(min(SKIP_CHUNK, body - start), dtype=torch.float32).normal_(generator=gen)
    if tail:
        torch.empty(tail, dtype=torch.float32).normal_(generator=gen)


def init_weights(model: nn.Module, seed: int) -> None:
    """Deterministically initialise ``model`` in place from a local generator seeded with ``seed``.

    * Conv/Linear weights ~ N(0, 2/fan_in) (He/Kaiming), except the output layer (the last
      Conv/Linear in registration order), which gets N(0, 1/fan_in).
    * Conv/Linear biases ~ U(-0.1, 0.1).
    * BatchNorm: weight ~ U(0.5, 1.5), bias ~ U(-0.1, 0.1),
      running_mean ~ U(-0.1, 0.1), running_var ~ U(0.5, 1.5).
    * Exception: the weight of the last BatchNorm in each ResNet :class:`Bottleneck` branch
      (``bn3``) is then multiplied by :data:`RESIDUAL_BN_SCALE` (so ~ U(0.1, 0.3)); without it
      the residual additions compound and ResNet-50's output std reaches ~1e4.

    The global RNG is never touched. Values are drawn on the CPU and copied, so the result is
    the same whatever device the model lives on. A tensor left on ``meta`` gets no values but
    its draws are skipped, so a model with only some tensors materialised (a partition's slice)
    gets exactly the values the whole model would.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    modules = list(model.modules())
    weighted = [m for m in modules if isinstance(m, nn.Conv2d | nn.Linear)]
    output_layer = weighted[-1] if weighted else None
    with torch.no_grad():
        for m in modules:
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                gain = 1.0 if m is output_layer else 2.0
                _fill_normal(m.weight, math.sqrt(gain / fan_in), gen)
                if m.bias is not None:
                    _fill_uniform(m.bias, -0.1, 0.1, gen)
            elif isinstance(m, nn.BatchNorm2d):
                if m.weight is not None:
                    _fill_uniform(m.weight, 0.5, 1.5, gen)
                if m.bias is not None:
                    _fill_uniform(m.bias, -0.1, 0.1, gen)
                if m.running_mean is not None:
                    _fill_uniform(m.running_mean, -0.1, 0.1, gen)
                if m.running_var is not None:
                    _fill_uniform(m.running_var, 0.5, 1.5, gen)
                if m.num_batches_tracked is not None:
                    m.num_batches_tracked.zero_()
        # Eval-mode BN with random statistics does not renormalise, so each of ResNet-50's 16
        # un-gated residual additions would roughly triple the activation variance (output std
        # ~1e4). Damping the last BN of every bottleneck branch (as trained ResNets do, and like
        # torchvision's zero_init_residual but non-zero) keeps the output O(1). Draws no numbers.
        # MobileNetV2 gets the same damping on its residual blocks; its projection conv is a
        # linear bottleneck (no activation after it), so it takes the linear gain 1, not 2.
        for m in modules:
            if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                m.bn3.weight.mul_(RESIDUAL_BN_SCALE)
            if isinstance(m, InvertedResidual):
                projection, projection_bn = m.conv[-2], m.conv[-1]
                assert isinstance(projection, nn.Conv2d) and isinstance(projection_bn, nn.BatchNorm2d)
                projection.weight.mul_(math.sqrt(0.5))
                if m.use_res_connect and projection_bn.weight is not None:
                    projection_bn.weight.mul_(RESIDUAL_BN_SCALE)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, what it eats, and a one-line description."""

    name: str
    factory: Callable[[], nn.Module]
    """Builds the architecture only (no init), e.g. for tracing on the meta device."""
    input_shape: tuple[int, ...]
    description: str


class UnknownModelError(EdgepartError, ValueError, KeyError):
    """Raised by :func:`build_zoo_model` for a name that is not in :data:`ZOO`."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep ValueError's plain text.
        return str(self.args[0]) if self.args else ""


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "vgg16",
            VGG16,
            (1, 3, 224, 224),
            "VGG-16 (Simonyan & Zisserman), 224x224, 138M params",
        ),
        ZooEntry(
            "yolov2",
            YOLOv2,
            (1, 3, 416, 416),
            "YOLOv2 (Redmon & Farhadi), Darknet-19 + passthrough, 416x416 -> 13x13x425, 51.0M params",
        ),
        ZooEntry(
            "yolov2-608",
            YOLOv2,
            (1, 3, 608, 608),
            "YOLOv2 (Redmon & Farhadi), Darknet-19 + passthrough, 608x608 -> 19x19x425, 51.0M params",
        ),
        ZooEntry(
            "alexnet",
            AlexNet,
            (1, 3, 224, 224),
            "AlexNet (Krizhevsky et al.), torchvision layout, 224x224, 61.1M params",
        ),
        ZooEntry(
            "squeezenet1_1",
            SqueezeNet11,
            (1, 3, 224, 224),
            "SqueezeNet 1.1 (Iandola et al.), Fire modules, 224x224, 1.2M params",
        ),
        ZooEntry(
            "googlenet",
            GoogLeNet,
            (1, 3, 224, 224),
            "GoogLeNet / Inception v1 (Szegedy et al.), no aux heads, 224x224, 6.6M params",
        ),
        ZooEntry(
            "resnet50",
            ResNet50,
            (1, 3, 224, 224),
            "ResNet-50 (He et al.), Bottleneck [3,4,6,3], 224x224, 25.6M params",
        ),
        ZooEntry(
            "mobilenet_v2",
            MobileNetV2,
            (1, 3, 224, 224),
            "MobileNetV2 (Sandler et al.), inverted residuals, 224x224, 3.5M params",
        ),
    )
}


def zoo_names() -> list[str]:
    """Names of all zoo models, in registry order."""
    return list(ZOO)


def build_zoo_model(name: str, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Architecture + deterministic init + eval().

    On the ``meta`` device the model is built without storage and initialisation is skipped.
    Unknown names raise :class:`UnknownModelError`, whose message lists the known names.
    """
    entry = ZOO.get(name)
    if entry is None:
        raise UnknownModelError(
            f"unknown zoo model {name!r}; known models: {', '.join(zoo_names())}"
        )
    dev = torch.device(device)
    # Build without storage: skips PyTorch's default init (slow for VGG's 138M parameters, and
    # it would consume the global RNG); init_weights then writes every parameter and buffer.
    with torch.device("meta"):
        model = entry.factory()
    if dev.type != "meta":
        _check_fully_initialised_by_init_weights(model)
        model = model.to_empty(device=dev)
        init_weights(model, seed)
    return model.eval()


_INITIALISED_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def covered_by_init_weights(model: nn.Module) -> bool:
    """Whether init_weights writes every parameter and buffer of `model` (so it may start on `meta`)."""
    try:
        _check_fully_initialised_by_init_weights(model)
    except TypeError:
        return False
    return True


def _check_fully_initialised_by_init_weights(model: nn.Module) -> None:
    """Guard for ``to_empty``: every module owning tensors must be one init_weights fills."""
    for mod_name, m in model.named_modules():
        owns_tensors = any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        )
        if owns_tensors and not isinstance(m, _INITIALISED_TYPES):
            raise TypeError(
                f"zoo module {mod_name!r} ({type(m).__name__}) owns tensors that "
                "init_weights does not initialise"
            )
