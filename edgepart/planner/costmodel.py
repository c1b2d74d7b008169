"""Compute cost models: one non-negative linear regression per (device, op family).

SOLVERS.md §2 A.1. A layer's latency on a device is t = βᵀx, where the
feature vector x depends on the op family:

    conv, conv_1x1,
    conv_grouped         [1, flops, in_elems, out_elems, weight_elems]
    fc                   [1, flops, in_elems, out_elems]
    pool_max, pool_avg   [1, in_elems, out_elems, window_elems]
    everything else      [1, elems]            (elems = in_elems + out_elems)

Features are recomputed for the tile a partition actually computes: a conv
producing h of its H output rows (or c of its C output channels) gets the
tile's FLOPs, the elements of the input rows it reads (halo included) and of
the rows it writes. β ≥ 0 and every feature grows with the tile, so predicted
time is monotone in the tile size.

Fitting is non-negative least squares with sample weights 1/t², i.e. least
relative error, which is what a makespan search needs. An op family with no
fitted model falls back to a roofline, max(FLOPs / peak, bytes / bandwidth).

[R] Layer calibration. The profiler times every layer of the models it is
given on several tiles. One regression per family, weighted for relative
error, fits the many small layers well and under-predicts the few large ones
that dominate a model (by ~30% on the reference machine: kernels' efficiency
depends on shapes no linear feature captures). So a profile also keeps, per
profiled layer shape, t = c + s·t_family fitted on that layer's own tiles
for row tiles of at least a tenth of the layer (the tiles plans use; small
strips run relatively faster, the time is convex in the rows), and a scale
t = s·t_family for output-channel slices of at least a quarter of the
channels: the median of their and the whole layer's measured / family
ratios. (An offset fitted on three or four noisy slices swung slice
predictions by 10-25% from one profile to the next: vgg16 features_2 got
c = 7.5 ms, s = 1.02 where its slices measured 1.15-1.24x the family; and a
conv with an eighth of its filters, a skinny GEMM the plans rarely use,
pulled the offset up.) Both stay affine in the tile's features, so every
tile is costed consistently (and the searches' O(1) strip costs stay exact);
layers of other models use the family regression alone.

[R] Executor terms. Micro-benchmarks time one layer over and over, so its
input, output and weights stay in cache; in a partition every layer reads
activations the previous ones wrote and writes fresh ones, through memory.
So a layer in a partition costs

    layer_overhead + executor_scale · t_layer
        + executor_elem_s · (in_elems + out_elems) + executor_weight_s · weight_elems

with the four executor terms fitted (NNLS, relative error) on partitions
the executor ran during profiling (whole models, row strips, channel
slices). The memory terms are what a single scale factor misses: they weigh
little against vgg16's compute-heavy convolutions and a lot against the
many small layers of resnet50, squeezenet or alexnet (one scale
over-predicted the first by ~10% and under-predicted the others by 10-15%).
They are affine in the tile like every other term (the weights a tile
touches shrink with its channel range).

A `DeviceProfile` is the JSON a profiler run writes (device, arch, threads,
per-op coefficients with their fit quality); `Device` in `cluster.py` pairs a
profile with a speed factor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from edgepart.errors import EdgepartError
from edgepart.geometry import Region, required_input
from edgepart.graph.layer_graph import Layer
from edgepart.graph.ops import OpKind

PROFILE_SCHEMA_VERSION = 1
PROFILE_KIND = "edgepart.io/device-profile"


class ProfileError(EdgepartError, ValueError):
    """A device profile file that is malformed; the message names the field."""


# ------------------------------------------------------------------ features

CONV_FEATURES = ("const", "flops", "in_elems", "out_elems", "weight_elems")
FC_FEATURES = ("const", "flops", "in_elems", "out_elems")
POOL_FEATURES = ("const", "in_elems", "out_elems", "window_elems")
ELEMENTWISE_FEATURES = ("const", "elems")


def op_family(layer: Layer) -> str:
    """The regression a layer belongs to.

    [R] Convolutions get three models. Grouped (depthwise) ones run an order of
    magnitude slower per FLOP than dense ones; pointwise (1x1) ones are a plain
    GEMM while k x k ones first unfold their input. One model with a shared
    FLOPs coefficient mispredicts both ends (held-out MAPE 21% vs 15% split,
    measured on the reference machine).
    """
    if layer.op is OpKind.CONV:
        if layer.spec.groups > 1:
            return "conv_grouped"
        window = layer.spec.window
        if window is not None and window.kernel == (1, 1):
            return "conv_1x1"
    return layer.op.value


def layer_signature(layer: Layer) -> str:
    """Layers with equal signatures compute the same thing at the same cost."""
    return f"{layer.op.value}|{layer.in_shapes}|{layer.out_shape}|{layer.spec}"


def signature_key(signature: str) -> str:
    return hashlib.sha1(signature.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=65536)
def layer_key(layer: Layer) -> str:
    """A short stable key of `layer_signature` (the profile's calibration table is keyed by it)."""
    return signature_key(layer_signature(layer))


Calibration = tuple[float, float, float, float]  # (row offset, row scale, channel offset, channel scale)


def family_features(family: str) -> tuple[str, ...]:
    if family in ("conv", "conv_1x1", "conv_grouped"):
        return CONV_FEATURES
    if family == OpKind.FC.value:
        return FC_FEATURES
    if family in (OpKind.POOL_MAX.value, OpKind.POOL_AVG.value):
        return POOL_FEATURES
    return ELEMENTWISE_FEATURES


@dataclass(frozen=True)
class TileCounts:
    """Element counts of one layer computing one tile (batch included)."""

    flops: float
    in_elems: float
    out_elems: float
    weight_elems: float
    window_elems: float
    channel_share: float = 1.0  # the tile's share of the layer's output channels

    def vector(self, names: Sequence[str]) -> list[float]:
        values = {
            "const": 1.0, "flops": self.flops, "in_elems": self.in_elems, "out_elems": self.out_elems,
            "weight_elems": self.weight_elems, "window_elems": self.window_elems,
            "elems": self.in_elems + self.out_elems,  # [R] elements touched by a memory-bound op
        }
        return [values[n] for n in names]


def tile_counts(layer: Layer, out_size: float, in_sizes: Sequence[float], out_channels: float | None,
                batch: int) -> TileCounts:
    """Counts for a tile of `out_size` output elements reading `in_sizes` elements per argument.

    `out_channels` is the number of output channels of the tile (None: all);
    the weights a tile touches shrink with its channel range. Sizes exclude
    the batch dimension; `layer.flops` includes it.
    """
    full = max(layer.out_elems, 1)
    flops = layer.flops * out_size / full
    channels = layer.out_shape[0] if layer.out_shape else 1
    share = 1.0 if out_channels is None else out_channels / max(channels, 1)
    window = layer.spec.window
    kernel = window.kernel[0] * window.kernel[1] if window is not None else 1
    out_elems = out_size * batch
    return TileCounts(flops=flops, in_elems=sum(in_sizes) * batch, out_elems=out_elems,
                      weight_elems=layer.params * share, window_elems=out_elems * kernel, channel_share=share)


def region_counts(layer: Layer, region: Region | None, batch: int) -> TileCounts:
    """Counts for `layer` producing `region` (None: its whole output), from the exact geometry."""
    if region is None:
        region = Region.full(layer.out_shape)
    in_sizes = [required_input(layer, region, arg).size for arg in range(len(layer.preds))]
    out_channels = region.channels[1] - region.channels[0] if region.ndim else None
    return tile_counts(layer, region.size, in_sizes, out_channels, batch)


def bytes_moved(layer: Layer, counts: TileCounts) -> float:
    """Bytes a tile reads and writes, weights included (roofline memory term)."""
    return (counts.in_elems + counts.out_elems + counts.weight_elems) * layer.dtype_bytes


# ------------------------------------------------------------------ one regression


@dataclass(frozen=True)
class LinearModel:
    """t = Σ coef·x over `features`; coef ≥ 0. Quality is measured on held-out layers."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    samples: int = 0
    r2: float | None = None  # held-out coefficient of determination
    mape: float | None = None  # held-out mean absolute percentage error (0.1 = 10%)

    def __post_init__(self) -> None:
        if len(self.features) != len(self.coef):
            raise ProfileError(f"{len(self.features)} features but {len(self.coef)} coefficients")
        if any(c < 0 or not math.isfinite(c) for c in self.coef):
            raise ProfileError(f"coefficients must be finite and non-negative, got {list(self.coef)}")

    def predict(self, x: Sequence[float]) -> float:
        return float(sum(c * v for c, v in zip(self.coef, x, strict=True)))

    def scaled(self, factor: float) -> LinearModel:
        return LinearModel(self.features, tuple(c * factor for c in self.coef), self.samples, self.r2, self.mape)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef), "samples": self.samples,
                "r2": self.r2, "mape": self.mape}


def fit_linear_model(x: np.ndarray, y: np.ndarray, features: Sequence[str]) -> LinearModel:
    """Non-negative least squares with weights 1/t² (least relative error), A.1.

    Columns are scaled to unit maximum before solving: FLOPs are ~1e9 while
    the constant is 1, and NNLS's active-set steps are sensitive to scale.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != len(features):
        raise ValueError(f"fit: x has shape {x.shape}, y {y.shape}, {len(features)} features")
    if x.shape[0] == 0:
        raise ValueError("fit: no samples")
    if np.any(y <= 0):
        raise ValueError("fit: every sample time must be positive")
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    a = (x / scale) / y[:, None]
    beta, _ = nnls(a, np.ones_like(y), maxiter=50 * x.shape[1])
    coef = np.clip(beta / scale, 0.0, None)
    return LinearModel(tuple(features), tuple(float(c) for c in coef), samples=int(x.shape[0]))


def fit_quality(model: LinearModel, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(R², MAPE) of `model` on samples (x, y)."""
    pred = np.asarray(x, dtype=float) @ np.asarray(model.coef)
    y = np.asarray(y, dtype=float)
    residual = float(np.sum((y - pred) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)
    mape = float(np.mean(np.abs(pred - y) / y))
    return r2, mape


@dataclass(frozen=True)
class Sample:
    """One timed tile: its op family, feature counts, median seconds, and the layer it came from."""

    family: str
    counts: TileCounts
    seconds: float
    group: str  # samples of one layer configuration share a group; held-out splits never cut a group


def fit_family(samples: Sequence[Sample], family: str, holdout: float = 0.25, seed: int = 0) -> LinearModel:
    """Fit one family; R² and MAPE come from groups held out of a first fit, then all data is used."""
    names = family_features(family)
    rows = [s for s in samples if s.family == family]
    if not rows:
        raise ValueError(f"fit: no samples for {family!r}")
    x = np.array([s.counts.vector(names) for s in rows])
    y = np.array([s.seconds for s in rows])
    groups = sorted({s.group for s in rows})
    r2: float | None = None
    mape: float | None = None
    if len(groups) >= 4 and holdout > 0:
        rng = random.Random(seed)
        held = set(rng.sample(groups, max(1, round(len(groups) * holdout))))
        train = np.array([s.group not in held for s in rows])
        if train.any() and (~train).any():
            first = fit_linear_model(x[train], y[train], names)
            r2, mape = fit_quality(first, x[~train], y[~train])
    final = fit_linear_model(x, y, names)
    return LinearModel(final.features, final.coef, len(rows), r2, mape)


# ------------------------------------------------------------------ device profile


@dataclass(frozen=True)
class Roofline:
    """Fallback for op families without a model: max(FLOPs / peak, bytes / bandwidth)."""

    peak_flops: float  # FLOP/s
    mem_bandwidth: float  # B/s

    def time(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.mem_bandwidth)


@dataclass(frozen=True)
class DeviceProfile:
    """Per-op cost models of one device class, as written by `edgepart profile`."""

    name: str
    ops: Mapping[str, LinearModel]
    roofline: Roofline
    arch: str = field(default_factory=platform.machine)
    threads: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)  # torch version, date, whole-model checks
    layer_overhead_s: float = 0.0  # [R] the executor's per-layer bookkeeping (crop, pad, dispatch)
    layers: Mapping[str, Calibration] = field(default_factory=dict)  # layer_key -> calibration, see above
    # [R] measured partitions (the executor's SliceRunner: crops, border pads, fresh buffers) over the sum of
    # their layers' micro-benchmark predictions; multiplies every prediction
    executor_scale: float = 1.0
    # [R] CPU seconds one tensor message costs each end of a hop on this device (HTTP stack, frame encoding,
    # event loop); None: not measured, the planner uses the reference profile's value scaled by speed
    message_overhead_s: float | None = None
    # [R] seconds per activation element a layer reads or writes in a partition beyond its micro-benchmark
    # (cold activations, see "Executor terms" above)
    executor_elem_s: float = 0.0
    # [R] seconds per weight element a layer streams in a partition (cold weights, ditto)
    executor_weight_s: float = 0.0

    def model_for(self, layer: Layer) -> LinearModel | None:
        return self.ops.get(op_family(layer))

    def time_of_counts(self, layer: Layer, counts: TileCounts) -> float:
        model = self.model_for(layer)
        memory = self.executor_elem_s * (counts.in_elems + counts.out_elems) + \
            self.executor_weight_s * counts.weight_elems
        if model is None:
            return self.layer_overhead_s + memory + self.executor_scale * self.roofline.time(
                counts.flops, bytes_moved(layer, counts))
        predicted = model.predict(counts.vector(model.features))
        if self.layers:
            calibration = self.layers.get(layer_key(layer))
            if calibration is not None:
                if counts.channel_share < 1.0:
                    predicted = calibration[2] + calibration[3] * predicted
                else:
                    predicted = calibration[0] + calibration[1] * predicted
        return self.layer_overhead_s + memory + self.executor_scale * predicted

    def layer_time(self, layer: Layer, region: Region | None = None, batch: int = 1) -> float:
        """Predicted seconds for `layer` to produce `region` (default: its whole output).

        An empty region (a tile lying wholly in a later layer's padding) is not computed: 0 s.
        """
        if region is not None and region.empty:
            return 0.0
        return self.time_of_counts(layer, region_counts(layer, region, batch))

    def scaled(self, speed: float, name: str | None = None) -> DeviceProfile:
        """The same device `speed` times faster (times divided by `speed`)."""
        if not speed > 0:
            raise ProfileError(f"speed must be positive, got {speed}")
        ops = {k: m.scaled(1.0 / speed) for k, m in self.ops.items()}
        roof = Roofline(self.roofline.peak_flops * speed, self.roofline.mem_bandwidth * speed)
        layers = {k: (c / speed, scale, cc / speed, cscale) for k, (c, scale, cc, cscale) in self.layers.items()}
        message = None if self.message_overhead_s is None else self.message_overhead_s / speed
        return DeviceProfile(name or self.name, ops, roof, self.arch, self.threads, dict(self.meta),
                             self.layer_overhead_s / speed, layers, self.executor_scale, message,
                             self.executor_elem_s / speed, self.executor_weight_s / speed)

    # -------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": PROFILE_SCHEMA_VERSION,
            "kind": PROFILE_KIND,
            "device": {"name": self.name, "arch": self.arch, "threads": self.threads},
            "roofline": {"peakFlops": self.roofline.peak_flops, "memBandwidth": self.roofline.mem_bandwidth},
            "layerOverheadS": self.layer_overhead_s,
            "executorScale": self.executor_scale,
            "executorElemS": self.executor_elem_s,
            "executorWeightS": self.executor_weight_s,
            **({} if self.message_overhead_s is None else {"messageOverheadS": self.message_overhead_s}),
            "ops": {k: self.ops[k].to_dict() for k in sorted(self.ops)},
            "layers": {k: list(self.layers[k]) for k in sorted(self.layers)},
            "meta": dict(self.meta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def _need(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ProfileError(f"{where}.{key}: missing" if where else f"{key}: missing")
    return data[key]


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ProfileError(f"{where}: must be greater than zero, got {value!r}")
    return float(value)


def _optional_number(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


def profile_from_dict(data: Any, source: str = "profile") -> DeviceProfile:
    """Validate a profile document; errors name the field (`ops.conv.coef[2]: ...`)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a JSON object")
    if data.get("schemaVersion") != PROFILE_SCHEMA_VERSION:
        raise ProfileError(f"{source}: schemaVersion: expected {PROFILE_SCHEMA_VERSION}, "
                           f"got {data.get('schemaVersion')!r}")
    if data.get("kind") != PROFILE_KIND:
        raise ProfileError(f"{source}: kind: expected {PROFILE_KIND!r}, got {data.get('kind')!r}")
    device = _need(data, "device", "")
    if not isinstance(device, dict) or not isinstance(device.get("name"), str) or not device["name"]:
        raise ProfileError(f"{source}: device.name: expected a non-empty string")
    roof = _need(data, "roofline", "")
    if not isinstance(roof, dict):
        raise ProfileError(f"{source}: roofline: expected an object")
    roofline = Roofline(_number(_need(roof, "peakFlops", "roofline"), "roofline.peakFlops", positive=True),
                        _number(_need(roof, "memBandwidth", "roofline"), "roofline.memBandwidth", positive=True))
    ops_data = _need(data, "ops", "")
    if not isinstance(ops_data, dict):
        raise ProfileError(f"{source}: ops: expected an object keyed by op family")
    ops: dict[str, LinearModel] = {}
    for family, entry in ops_data.items():
        where = f"ops.{family}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{source}: {where}: expected an object")
        names = _need(entry, "features", where)
        coef = _need(entry, "coef", where)
        expected = family_features(family)
        if list(names) != list(expected):
            raise ProfileError(f"{source}: {where}.features: expected {list(expected)}, got {names!r}")
        if not isinstance(coef, list) or len(coef) != len(expected):
            raise ProfileError(f"{source}: {where}.coef: expected {len(expected)} numbers")
        values = tuple(_number(c, f"{where}.coef[{i}]") for i, c in enumerate(coef))
        if any(v < 0 for v in values):
            raise ProfileError(f"{source}: {where}.coef: coefficients must be non-negative, got {list(values)}")
        ops[family] = LinearModel(tuple(expected), values, int(entry.get("samples", 0)),
                                  _optional_number(entry.get("r2"), f"{where}.r2"),
                                  _optional_number(entry.get("mape"), f"{where}.mape"))
    threads = device.get("threads", 1)
    meta = data.get("meta", {})
    overhead = _number(data.get("layerOverheadS", 0.0), "layerOverheadS")
    if overhead < 0:
        raise ProfileError(f"{source}: layerOverheadS: must not be negative, got {overhead}")
    raw_layers = data.get("layers", {})
    if not isinstance(raw_layers, dict):
        raise ProfileError(f"{source}: layers: expected an object keyed by layer key")
    layers: dict[str, Calibration] = {}
    for key, values in raw_layers.items():
        if not isinstance(values, list) or len(values) != 4:
            raise ProfileError(f"{source}: layers.{key}: expected [row offset, row scale, channel offset, "
                               "channel scale]")
        c, scale, cc, cscale = (_number(v, f"layers.{key}") for v in values)
        if min(c, scale, cc, cscale) < 0:
            raise ProfileError(f"{source}: layers.{key}: offsets and scales must be non-negative, got {values}")
        layers[str(key)] = (c, scale, cc, cscale)
    scale = _number(data.get("executorScale", 1.0), "executorScale", positive=True)
    message = _optional_number(data.get("messageOverheadS"), "messageOverheadS")
    if message is not None and message < 0:
        raise ProfileError(f"{source}: messageOverheadS: must not be negative, got {message}")
    elem = _number(data.get("executorElemS", 0.0), "executorElemS")
    weight = _number(data.get("executorWeightS", 0.0), "executorWeightS")
    for key, value in (("executorElemS", elem), ("executorWeightS", weight)):
        if value < 0:
            raise ProfileError(f"{source}: {key}: must not be negative, got {value}")
    return DeviceProfile(device["name"], ops, roofline, str(device.get("arch", "unknown")),
                         int(threads) if isinstance(threads, int) else 1, meta if isinstance(meta, dict) else {},
                         overhead, layers, scale, message, elem, weight)


def profile_from_json(text: str, source: str = "profile") -> DeviceProfile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{source}: not valid JSON: {err.msg} at line {err.lineno}") from None
    return profile_from_dict(data, source)


def load_profile(path: str | Path) -> DeviceProfile:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ProfileError(f"cannot read profile {path}: {err.strerror}") from None
    return profile_from_json(text, str(path))


def _calibrate(rows: Sequence[Sample], model: LinearModel) -> tuple[float, float]:
    base = np.array([model.predict(r.counts.vector(model.features)) for r in rows])
    y = np.array([r.seconds for r in rows])
    if len(rows) < 2 or np.all(base <= 0) or np.ptp(base) <= 0:
        return (0.0, float(np.median(y / np.maximum(base, 1e-15)))) if len(rows) else (0.0, 1.0)
    fit = fit_linear_model(np.column_stack([np.ones_like(base), base]), y, ("const", "family"))
    return fit.coef[0], fit.coef[1]


def _scale(rows: Sequence[Sample], model: LinearModel) -> tuple[float, float]:
    """(0, median of measured / family prediction): a robust scale from a few noisy tiles."""
    ratios = [r.seconds / base for r in rows if (base := model.predict(r.counts.vector(model.features))) > 0]
    return (0.0, float(np.median(ratios))) if ratios else (0.0, 1.0)


def calibrate_layers(samples: Sequence[Sample], ops: Mapping[str, LinearModel],
                     min_rows_share: float = 0.1, min_channel_share: float = 0.25) -> dict[str, Calibration]:
    """Per layer (sample group): (c, s) for row tiles of at least `min_rows_share` of the layer, t = c + s·t_family
    by NNLS with weights 1/t², and (0, s) for channel slices of at least `min_channel_share` of the channels,
    the median ratio over them and the whole layer (which anchors both)."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group, []).append(sample)
    result: dict[str, Calibration] = {}
    for key, rows in groups.items():
        model = ops.get(rows[0].family)
        if model is None or len(rows) < 2:
            continue
        largest = max(r.counts.out_elems for r in rows if r.counts.channel_share >= 1.0) \
            if any(r.counts.channel_share >= 1.0 for r in rows) else 0.0
        whole = [r for r in rows if r.counts.channel_share >= 1.0 and r.counts.out_elems >= largest]
        strips = [r for r in rows if r.counts.channel_share >= 1.0 and r.counts.out_elems >= min_rows_share * largest]
        slices = [r for r in rows if min_channel_share <= r.counts.channel_share < 1.0]
        row_fit = _calibrate(strips, model)
        channel_fit = _scale([*slices, *whole], model) if slices else row_fit
        result[key] = (*row_fit, *channel_fit)
    return result


def fit_profile(samples: Iterable[Sample], name: str, threads: int, roofline: Roofline,
                meta: Mapping[str, Any] | None = None, holdout: float = 0.25, seed: int = 0,
                layer_overhead_s: float = 0.0, calibrate: bool = True) -> DeviceProfile:
    """One model per op family present in `samples`, plus the per-layer calibration."""
    items = list(samples)
    families = sorted({s.family for s in items})
    ops = {f: fit_family(items, f, holdout, seed) for f in families}
    layers = calibrate_layers(items, ops) if calibrate else {}
    return DeviceProfile(name, ops, roofline, platform.machine(), threads, dict(meta or {}), layer_overhead_s,
                         layers)
