"""Tests for the in-project CNN model zoo (edgepart.graph.zoo)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.fx
from torch import Tensor, nn

from edgepart.graph.zoo import (
    ZOO,
    UnknownModelError,
    ZooEntry,
    build_zoo_model,
    init_weights,
    zoo_names,
)

EXPECTED_NAMES = [
    "vgg16",
    "yolov2",
    "yolov2-608",
    "alexnet",
    "squeezenet1_1",
    "googlenet",
    "resnet50",
    "mobilenet_v2",
]

EXPECTED_OUTPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "vgg16": (1, 1000),
    "yolov2": (1, 425, 13, 13),
    "yolov2-608": (1, 425, 19, 19),
    "alexnet": (1, 1000),
    "squeezenet1_1": (1, 1000),
    "googlenet": (1, 1000),
    "resnet50": (1, 1000),
    "mobilenet_v2": (1, 1000),
}


@dataclass
class Built:
    name: str
    entry: ZooEntry
    model: nn.Module
    x: Tensor
    y: Tensor


@pytest.fixture(scope="module", params=EXPECTED_NAMES)
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    """Each zoo model built (seed 0) and run once on a standard-normal input."""
    name: str = request.param
    entry = ZOO[name]
    model = build_zoo_model(name, seed=0)
    x = torch.randn(entry.input_shape, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        y = model(x)
    yield Built(name, entry, model, x, y)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------ registry


def test_zoo_names() -> None:
    assert zoo_names() == EXPECTED_NAMES
    assert list(ZOO) == EXPECTED_NAMES


def test_entries_are_well_formed() -> None:
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description
        assert entry.input_shape[:2] == (1, 3)
        assert len(entry.input_shape) == 4
    assert ZOO["yolov2"].input_shape == (1, 3, 416, 416)
    assert ZOO["yolov2-608"].input_shape == (1, 3, 608, 608)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ZOO["vgg16"].name = "other"  # type: ignore[misc]


def test_unknown_name_raises_and_lists_known_models() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_zoo_model("no-such-net")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "no-such-net" in message
    for name in EXPECTED_NAMES:
        assert name in message


def test_meta_build_skips_init_and_traces() -> None:
    for name in EXPECTED_NAMES:
        model = build_zoo_model(name, device="meta")
        assert not model.training
        assert all(p.device.type == "meta" for p in model.parameters())
        assert all(b.device.type == "meta" for b in model.buffers())
        graph_module = torch.fx.symbolic_trace(model)
        assert any(n.op == "call_module" for n in graph_module.graph.nodes)


def test_factory_builds_architecture_only() -> None:
    with torch.device("meta"):
        model = ZOO["squeezenet1_1"].factory()
    assert isinstance(model, nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_build_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    build_zoo_model("squeezenet1_1", seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_yolov2_variants_share_architecture_and_weights() -> None:
    a = build_zoo_model("yolov2", seed=5)
    b = build_zoo_model("yolov2-608", seed=5)
    _assert_same_weights(a, b)


def test_init_weights_is_deterministic_on_a_small_module() -> None:
    def make(seed: int) -> nn.Sequential:
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
        init_weights(m, seed)
        return m

    _assert_same_weights(make(7), make(7))
    assert not torch.equal(make(7).state_dict()["0.weight"], make(8).state_dict()["0.weight"])


# ------------------------------------------------------------------ per model


def test_eval_mode(built: Built) -> None:
    assert all(not m.training for m in built.model.modules())


def test_output_shape(built: Built) -> None:
    assert tuple(built.y.shape) == EXPECTED_OUTPUT_SHAPES[built.name]


def test_output_scale(built: Built) -> None:
    std = built.y.std().item()
    print(f"{built.name}: output std {std:.4f}")
    assert torch.isfinite(built.y).all()
    assert 0.1 <= std <= 100.0, f"{built.name}: output std {std}"


def test_symbolic_trace_matches_eager(built: Built) -> None:
    graph_module = torch.fx.symbolic_trace(built.model)
    with torch.no_grad():
        traced = graph_module(built.x)
    assert torch.equal(traced, built.y)


def test_same_seed_gives_identical_weights(built: Built) -> None:
    _assert_same_weights(built.model, build_zoo_model(built.name, seed=0))


def test_different_seed_gives_different_weights(built: Built) -> None:
    other = build_zoo_model(built.name, seed=1)
    mine = dict(built.model.named_parameters())
    theirs = dict(other.named_parameters())
    assert mine.keys() == theirs.keys()
    assert all(not torch.equal(mine[k], theirs[k]) for k in mine)
