"""Codec ratio and speed on real activations: lz4 and zstd (level 1), side by side, on the outputs of the
activation layers of VGG-16 (ReLU) and YOLOv2 (LeakyReLU), seeded weights, a seeded image.

Ratio = encoded / raw bytes; MB/s = raw megabytes per second on one CPU of this machine (the planner's
`codec_cost.DEFAULT_CODECS` come from the median row). float16 rows: the tensor cast to float16 first
(ratio against float32 bytes) and the largest absolute error of the round trip.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edgepart.codec import compress, decompress
from edgepart.graph.zoo import ZOO, build_zoo_model

RESULTS = Path(__file__).parent / "results" / "codec.md"
CODECS = ("lz4", "zstd")


def _activations(name: str, quick: bool) -> list[tuple[str, torch.Tensor]]:
    model = build_zoo_model(name, seed=0).eval()
    found: list[tuple[str, torch.Tensor]] = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            module.register_forward_hook(lambda _m, _i, out, n=module_name: found.append((n, out.detach().clone())))
    shape = ZOO[name].input_shape
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(image)
    return found[::4] if quick else found[::2]


def _timed(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def _row(model: str, layer: str, tensor: torch.Tensor, repeat: int) -> list[str]:
    raw = tensor.contiguous().numpy().tobytes()
    cells = [model, layer, f"{len(raw) / 1e6:.2f}", f"{float((tensor == 0).float().mean()):.2f}"]
    for codec in CODECS:
        packed = compress(codec, raw)  # type: ignore[arg-type]
        c_s = _timed(lambda c=codec: compress(c, raw), repeat)
        d_s = _timed(lambda c=codec, p=packed: decompress(c, p, len(raw)), repeat)
        cells += [f"{len(packed) / len(raw):.3f}", f"{len(raw) / c_s / 1e6:.0f}", f"{len(raw) / d_s / 1e6:.0f}"]
    half = tensor.to(torch.float16)
    packed = compress("lz4", half.numpy().tobytes())
    error = float((half.float() - tensor).abs().max())
    cells += [f"{len(packed) / len(raw):.3f}", f"{error:.2e}"]
    return cells


HEAD = ["model", "layer", "MB", "zeros", "lz4 ratio", "lz4 c MB/s", "lz4 d MB/s", "zstd ratio", "zstd c MB/s",
        "zstd d MB/s", "fp16+lz4 ratio", "fp16 max err"]


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    repeat = 2 if quick else 3
    rows = [_row(name, layer, t, repeat) for name in ("vgg16", "yolov2") for layer, t in _activations(name, quick)]
    medians = ["median", "", "", ""] + [f"{statistics.median(float(r[i]) for r in rows):.3g}"
                                        for i in range(4, len(HEAD) - 1)] + [""]
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in [*rows, medians]]
    table = "\n".join(lines)
    print(table)
    RESULTS.write_text(f"# python -m bench codec{' --quick' if quick else ''}\n\n{__doc__}\n{table}\n")
