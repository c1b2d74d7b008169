"""Cost models (A.1): the NNLS fit recovers known coefficients, predictions follow tiles, profiles round-trip."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.planner.cluster import reference_profile
from edgepart.planner.costmodel import (
    CONV_FEATURES,
    DeviceProfile,
    LinearModel,
    ProfileError,
    Roofline,
    Sample,
    calibrate_layers,
    fit_family,
    fit_linear_model,
    fit_profile,
    layer_key,
    op_family,
    profile_from_dict,
    profile_from_json,
    region_counts,
    tile_counts,
)


def synthetic(beta: list[float], n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # log-uniform sizes: small samples pin the intercept, large ones the slopes (like real tiles)
    x = np.column_stack([np.ones(n), *(10 ** rng.uniform(2, 8, n) for _ in beta[1:])])
    y = x @ np.array(beta)
    return x, y * (1 + noise * rng.standard_normal(n))


def test_fit_recovers_known_coefficients_exactly_without_noise() -> None:
    beta = [2e-5, 1e-11, 3e-10, 5e-10, 1e-9]
    x, y = synthetic(beta, 200, 0.0)
    model = fit_linear_model(x, y, CONV_FEATURES)
    assert np.allclose(model.coef, beta, rtol=1e-6)


def test_fit_recovers_known_coefficients_under_relative_noise() -> None:
    beta = [2e-5, 1e-11, 3e-10, 5e-10, 1e-9]
    x, y = synthetic(beta, 2000, 0.02, seed=1)
    model = fit_linear_model(x, y, CONV_FEATURES)
    assert np.allclose(model.coef, beta, rtol=0.1)


def test_fit_keeps_coefficients_non_negative() -> None:
    x, y = synthetic([1e-4, 2e-9], 100, 0.0)
    y = y - 1e-10 * x[:, 1] * 0.5  # a true negative slope component cannot be represented
    model = fit_linear_model(x, np.maximum(y, 1e-9), ("const", "elems"))
    assert all(c >= 0 for c in model.coef)


def test_fit_family_reports_held_out_quality() -> None:
    rng = random.Random(0)
    layer = load_graph(ModelRef("vgg16")).layers[2]
    samples = []
    for g in range(20):
        for h in (1, 4, 16, 64):
            counts = tile_counts(layer, 64 * 224 * h * (1 + g), [64 * 224 * (h + 2) * (1 + g)], None, 1)
            t = 1e-5 + 1e-11 * counts.flops + 1e-9 * counts.out_elems
            samples.append(Sample("conv", counts, t * (1 + 0.01 * rng.uniform(-1, 1)), f"layer{g}"))
    model = fit_family(samples, "conv")
    assert model.samples == 80
    assert model.mape is not None and model.mape < 0.02
    assert model.r2 is not None and model.r2 > 0.99


def test_op_families_split_conv_kinds() -> None:
    graph = load_graph(ModelRef("mobilenet_v2"))
    families = {op_family(layer) for layer in graph.layers}
    assert {"conv", "conv_1x1", "conv_grouped", "bn", "act", "add"} <= families


def test_tile_predictions_follow_the_tile() -> None:
    graph = load_graph(ModelRef("vgg16"))
    profile = reference_profile()
    layer = graph.layers[2]  # 64 -> 64 3x3 conv at 224x224
    full = Region.full(layer.out_shape)
    times = [profile.layer_time(layer, full.replace(1, (0, h))) for h in (1, 8, 56, 224)]
    assert times == sorted(times) and times[0] > 0
    slices = [profile.layer_time(layer, full.replace(0, (0, c))) for c in (8, 16, 32, 48)]
    assert slices == sorted(slices) and slices[0] > 0
    counts = region_counts(layer, full.replace(0, (0, 16)), 1)
    assert counts.weight_elems == pytest.approx(layer.params / 4)
    assert counts.flops == pytest.approx(layer.flops / 4)
    assert profile.layer_time(layer, full.replace(1, (5, 5))) == 0.0  # an empty tile costs nothing


def test_speed_scales_every_prediction() -> None:
    graph = load_graph(ModelRef("resnet50"))
    profile = reference_profile()
    fast = profile.scaled(4.0)
    for layer in graph.layers[:20]:
        assert fast.layer_time(layer) == pytest.approx(profile.layer_time(layer) / 4)


def test_roofline_fallback_for_unprofiled_ops() -> None:
    graph = load_graph(ModelRef("vgg16"))
    layer = graph.layers[0]
    profile = DeviceProfile("bare", {}, Roofline(1e9, 1e8))
    counts = region_counts(layer, None, 1)
    expected = max(counts.flops / 1e9, (counts.in_elems + counts.out_elems + counts.weight_elems) * 4 / 1e8)
    assert profile.layer_time(layer) == pytest.approx(expected)


def test_reference_profile_covers_every_zoo_op() -> None:
    profile = reference_profile()
    for name in ("vgg16", "yolov2", "resnet50", "mobilenet_v2", "googlenet", "alexnet", "squeezenet1_1"):
        graph = load_graph(ModelRef(name))
        missing = {op_family(layer) for layer in graph.layers} - set(profile.ops)
        assert not missing, (name, missing)
    assert profile.threads == 1
    assert all(all(c >= 0 for c in m.coef) for m in profile.ops.values())


def test_profile_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    samples = [Sample("act", tile_counts(load_graph(ModelRef("alexnet")).layers[1], n, [n], None, 1), 1e-6 + n * 1e-10,
                      f"g{n}") for n in (10, 100, 1000, 10000, 100000)]
    profile = fit_profile(samples, "box", 2, Roofline(5e10, 1e10), {"cpu": "test"})
    path = tmp_path / "device.json"
    profile.save(path)
    loaded = profile_from_json(path.read_text())
    assert loaded.name == "box" and loaded.threads == 2 and loaded.meta == {"cpu": "test"}
    assert loaded.ops == profile.ops and loaded.roofline == profile.roofline
    assert loaded.to_dict() == profile.to_dict()
    reference = reference_profile()
    assert profile_from_json(reference.to_json()).to_dict() == reference.to_dict()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("ops"), "ops: missing"),
    (lambda d: d.update(schemaVersion=2), "schemaVersion"),
    (lambda d: d["device"].pop("name"), "device.name"),
    (lambda d: d["roofline"].update(peakFlops=0), "roofline.peakFlops: must be greater than zero"),
    (lambda d: d["ops"]["conv"].update(coef=[1, 2]), "ops.conv.coef: expected 5 numbers"),
    (lambda d: d["ops"]["conv"]["coef"].__setitem__(1, -1.0), "ops.conv.coef: coefficients must be non-negative"),
    (lambda d: d["ops"]["conv"]["coef"].__setitem__(2, "x"), r"ops.conv.coef\[2\]"),
    (lambda d: d["ops"]["fc"].update(features=["const"]), "ops.fc.features"),
    (lambda d: d.update(layers={"abc": [1.0, 2.0]}), "layers.abc: expected"),
    (lambda d: d.update(layers={"abc": [1.0, -2.0, 0.0, 1.0]}), "layers.abc: offsets and scales"),
    (lambda d: d.update(layerOverheadS=-1.0), "layerOverheadS"),
    (lambda d: d.update(executorElemS=-1e-9), "executorElemS: must not be negative"),
    (lambda d: d.update(executorWeightS="x"), "executorWeightS"),
])
def test_bad_profiles_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(reference_profile().to_json())
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(data, "device.json")


def test_linear_model_rejects_negative_coefficients() -> None:
    with pytest.raises(ProfileError):
        LinearModel(("const",), (-1.0,))
    assert LinearModel(("const", "elems"), (1.0, 2.0)).predict([1.0, 3.0]) == 7.0
    assert math.isclose(LinearModel(("const",), (2.0,)).scaled(0.5).coef[0], 1.0)


def test_layer_calibration_corrects_profiled_layers_only() -> None:
    graph = load_graph(ModelRef("vgg16"))
    layer, other = graph.layers[2], graph.layers[5]
    full = Region.full(layer.out_shape)
    family = LinearModel(CONV_FEATURES, (1e-5, 1e-11, 0.0, 0.0, 0.0))
    samples = []
    for rows in (28, 56, 112, 224):  # the layer runs 1.5x slower than its family predicts, + 1 ms
        counts = region_counts(layer, full.replace(1, (0, rows)), 1)
        samples.append(Sample("conv", counts, 1e-3 + 1.5 * family.predict(counts.vector(CONV_FEATURES)),
                              layer_key(layer)))
    for channels in (8, 16, 32):  # channel slices run 3x slower
        counts = region_counts(layer, full.replace(0, (0, channels)), 1)
        samples.append(Sample("conv", counts, 3.0 * family.predict(counts.vector(CONV_FEATURES)),
                              layer_key(layer)))
    layers = calibrate_layers(samples, {"conv": family})
    c, s, _, _ = layers[layer_key(layer)]
    assert c == pytest.approx(1e-3, rel=1e-3) and s == pytest.approx(1.5, rel=1e-3)
    profile = DeviceProfile("p", {"conv": family}, Roofline(1e9, 1e9), layers=layers)
    plain = DeviceProfile("p", {"conv": family}, Roofline(1e9, 1e9))
    for channels in (8, 16, 32):  # the channel pair follows the slow slices (anchored on the whole layer)
        tile_c = full.replace(0, (0, channels))
        truth = 3.0 * plain.layer_time(layer, tile_c)
        assert abs(profile.layer_time(layer, tile_c) - truth) < abs(plain.layer_time(layer, tile_c) - truth) / 2
    tile = full.replace(1, (0, 80))
    assert profile.layer_time(layer, tile) == pytest.approx(1e-3 + 1.5 * plain.layer_time(layer, tile))
    assert profile.layer_time(other) == plain.layer_time(other)  # not profiled: the family model alone
    again = profile_from_json(profile.to_json())
    assert again.layer_time(layer, tile) == pytest.approx(profile.layer_time(layer, tile))
    assert profile.scaled(2.0).layer_time(layer, tile) == pytest.approx(profile.layer_time(layer, tile) / 2)


def test_executor_terms_add_memory_costs_affine_in_the_tile() -> None:
    graph = load_graph(ModelRef("vgg16"))
    layer = graph.layers[2]
    full = Region.full(layer.out_shape)
    family = LinearModel(CONV_FEATURES, (1e-5, 1e-11, 0.0, 0.0, 0.0))
    plain = DeviceProfile("p", {"conv": family}, Roofline(1e9, 1e9))
    terms = DeviceProfile("p", {"conv": family}, Roofline(1e9, 1e9), layer_overhead_s=2e-5, executor_scale=1.2,
                          executor_elem_s=3e-10, executor_weight_s=5e-10)
    for tile in (full, full.replace(1, (10, 50)), full.replace(0, (0, 16))):
        counts = region_counts(layer, tile, 1)
        expected = 2e-5 + 1.2 * plain.layer_time(layer, tile) + 3e-10 * (counts.in_elems + counts.out_elems) \
            + 5e-10 * counts.weight_elems
        assert terms.layer_time(layer, tile) == pytest.approx(expected)
    # affine in rows and in channels: what the searches' O(1) strip and channel lines rely on
    rows = [terms.layer_time(layer, full.replace(1, (100, 100 + h))) for h in (4, 8, 12)]
    assert rows[2] - rows[1] == pytest.approx(rows[1] - rows[0])
    channels = [terms.layer_time(layer, full.replace(0, (0, c))) for c in (8, 16, 24)]
    assert channels[2] - channels[1] == pytest.approx(channels[1] - channels[0])
    again = profile_from_json(terms.to_json())
    assert again.executor_elem_s == 3e-10 and again.executor_weight_s == 5e-10
    assert terms.scaled(2.0).layer_time(layer) == pytest.approx(terms.layer_time(layer) / 2)
    legacy = json.loads(terms.to_json())
    del legacy["executorElemS"], legacy["executorWeightS"]  # profiles written before these terms
    assert profile_from_dict(legacy).executor_elem_s == 0.0
