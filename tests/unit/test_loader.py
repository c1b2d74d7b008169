"""Model references: zoo names, module:factory, file.py:factory, and safetensors weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgepart.graph.loader import ModelLoadError, ModelRef, load_model, parse_input_shape, trace_ref
from edgepart.graph.zoo import UnknownModelError

TINY = str(Path(__file__).parents[2] / "examples" / "models" / "tinynet.py") + ":build"
SHAPE = (1, 3, 32, 32)


def test_file_factory_builds_deterministic_weights() -> None:
    a = load_model(ModelRef(TINY, SHAPE, seed=3)).state_dict()
    b = load_model(ModelRef(TINY, SHAPE, seed=3)).state_dict()
    c = load_model(ModelRef(TINY, SHAPE, seed=4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.0.weight"], c["stem.0.weight"])


def test_module_factory_reference() -> None:
    model = load_model(ModelRef("torch.nn:Identity", SHAPE))
    assert isinstance(model, torch.nn.Identity)


def test_weights_come_from_safetensors(tmp_path: Path) -> None:
    source = load_model(ModelRef(TINY, SHAPE, seed=11))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_model(ModelRef(TINY, SHAPE, weights=str(path), seed=0))
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_partial_weight_loading_reads_only_the_slice(tmp_path: Path) -> None:
    source = load_model(ModelRef(TINY, SHAPE, seed=11))
    path = tmp_path / "part.safetensors"
    save_file({"stem.0.weight": source.state_dict()["stem.0.weight"].contiguous()}, str(path))
    _, graph = trace_ref(ModelRef(TINY, SHAPE))
    needed = graph.param_names(0, 1)
    assert needed == ("stem.0.weight", "stem.0.bias")
    with pytest.raises(ModelLoadError, match=r"missing tensors \['stem.0.bias'\]"):
        load_model(ModelRef(TINY, SHAPE, weights=str(path)), only=needed)
    model = load_model(ModelRef(TINY, SHAPE, weights=str(path)), only=("stem.0.weight",))
    assert torch.equal(model.state_dict()["stem.0.weight"], source.state_dict()["stem.0.weight"])


def test_weight_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in load_model(ModelRef(TINY, SHAPE)).state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"tensor 'fc.weight' has shape \(3, 3\), the model expects \(10, 32\)"):
        load_model(ModelRef(TINY, SHAPE, weights=str(path)))


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 20)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_model(ModelRef(TINY, SHAPE, weights=str(path)))


def test_unknown_names_suggest_the_closest_zoo_model() -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'resnet50'"):
        load_model(ModelRef("resnet5"))


def test_factory_that_is_not_a_module(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def build():\n    return 42\n")
    with pytest.raises(ModelLoadError, match=r"returned int, not an nn\.Module"):
        load_model(ModelRef(f"{path}:build", SHAPE))


@pytest.mark.parametrize("text", ["1,3,224", "a,b,c,d", "1,3,0,4"])
def test_bad_input_shapes(text: str) -> None:
    with pytest.raises(ModelLoadError, match="input shape"):
        parse_input_shape(text)
