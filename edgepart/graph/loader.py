"""Resolve a model reference (zoo name, `package.module:factory`, `path/file.py:factory`).

Weights come from a safetensors file when one is given (only the tensors a
partition needs are read), otherwise from a deterministic seeded init, so
every process that builds the same reference gets the same numbers.
`load_part` materialises only some tensors (a partition's slice): the rest
stay on `meta`, and the seeded init skips their draws, so the kept tensors
get exactly the values of the whole model.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.graph.zoo import (
    ZOO,
    UnknownModelError,
    build_zoo_model,
    covered_by_init_weights,
    init_weights,
)


class ModelLoadError(EdgepartError, ValueError):
    """The model reference, its factory or its weights cannot be used."""


@dataclass(frozen=True)
class ModelRef:
    """Everything needed to rebuild a model identically in any process."""

    name: str
    input_shape: tuple[int, ...] | None = None  # (N, C, H, W); zoo models have a default
    weights: str | None = None  # path to a .safetensors file
    seed: int = 0


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse '1,3,224,224' (also 'x' separated)."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ModelLoadError(f"input shape {text!r}: expected integers like 1,3,224,224") from None
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise ModelLoadError(f"input shape {text!r}: expected 4 positive integers N,C,H,W")
    return shape


def is_zoo_name(name: str) -> bool:
    return name in ZOO


def _load_factory(name: str) -> Callable[[], nn.Module]:
    if ":" not in name:
        close = difflib.get_close_matches(name, list(ZOO), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: not in the zoo ({', '.join(sorted(ZOO))}) and not of the form "
            f"package.module:factory or path/to/file.py:factory{hint}"
        )
    location, _, attr = name.rpartition(":")
    if location.endswith(".py") or "/" in location:
        path = Path(location)
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: file {location} does not exist")
        module_name = f"edgepart_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"model {name!r}: cannot import {location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ModelLoadError(f"model {name!r}: importing {location} failed: {err}") from err
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as err:
            raise ModelLoadError(f"model {name!r}: cannot import module {location}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"model {name!r}: {location} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def input_shape_of(ref: ModelRef) -> tuple[int, ...]:
    if ref.input_shape is not None:
        return tuple(ref.input_shape)
    if ref.name in ZOO:
        return ZOO[ref.name].input_shape
    if ":" not in ref.name:
        _load_factory(ref.name)  # raises UnknownModelError with the zoo's names
    raise ModelLoadError(f"model {ref.name!r}: --input-shape (input_shape) is required for models outside the zoo")


def _architecture(ref: ModelRef, device: str) -> nn.Module:
    if ref.name in ZOO:
        return build_zoo_model(ref.name, seed=ref.seed, device=device)
    factory = _load_factory(ref.name)
    try:
        with torch.device(device):
            model = factory()
    except Exception as err:
        raise ModelLoadError(f"model {ref.name!r}: the factory failed: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model {ref.name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    if device != "meta":
        init_weights(model, ref.seed)
    return model.eval()


def load_model(ref: ModelRef, only: Iterable[str] | None = None) -> nn.Module:
    """The model in eval mode with its weights; `only` limits which safetensors keys are read."""
    model = _architecture(ref, "cpu")
    if ref.weights is not None:
        load_weights(model, ref.weights, only)
    return model


def load_part(ref: ModelRef, names_of: Callable[[LayerGraph], Iterable[str]]
              ) -> tuple[fx.GraphModule, LayerGraph]:
    """The traced model with only the tensors `names_of(graph)` materialised; every other one stays on `meta`
    (no storage). The whole model never exists in memory, except for a factory whose modules the seeded
    init does not cover (their values come from the factory): that one is built whole, then released."""
    model = _architecture(ref, "meta")
    gm, graph = trace(model, input_shape_of(ref), ref.name)
    names = list(names_of(graph))
    if ref.weights is not None:
        tensors = read_weights(ref.weights, gm.state_dict(keep_vars=True), names)
    elif covered_by_init_weights(model):
        tensors = _seeded_part(model, ref.seed, names)
    else:
        gm, graph = trace_ref(ref, load_model(ref))
        tensors = {k: v for k, v in gm.state_dict().items() if k in set(names)}
    _keep_only(gm, tensors)
    return gm, graph


def _seeded_part(model: nn.Module, seed: int, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The seeded values of tensors `names`, materialising nothing else of `model` (on `meta`)."""
    like = model.state_dict(keep_vars=True)
    empty = {k: torch.empty_like(like[k], device="cpu") for k in names}
    model.load_state_dict(empty, strict=False, assign=True)
    init_weights(model, seed)  # skips the draws of every tensor still on meta
    state = model.state_dict()
    return {k: state[k] for k in empty}


def _keep_only(gm: fx.GraphModule, tensors: Mapping[str, torch.Tensor]) -> None:
    """Give `gm` exactly `tensors`; every other parameter and buffer goes to `meta` (its storage is freed)."""
    state = gm.state_dict(keep_vars=True)
    update = {k: torch.empty_like(v, device="meta") for k, v in state.items() if k not in tensors}
    update.update(tensors)
    with torch.no_grad():
        gm.load_state_dict(update, strict=False, assign=True)


def read_weights(path: str, like: Mapping[str, torch.Tensor], names: Iterable[str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Read tensors `names` (default: all of `like`) from a safetensors file, checking each against the
    shape and dtype of the same key in `like`. Only the named tensors are read from disk."""
    from safetensors import safe_open

    wanted = list(like) if names is None else list(names)
    if not Path(path).is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        handle = safe_open(path, framework="pt")
    except Exception as err:
        raise ModelLoadError(f"weights file {path}: not a safetensors file ({err})") from err
    result = {}
    with handle as f:
        available = set(f.keys())
        missing = [k for k in wanted if k not in available]
        if missing:
            raise ModelLoadError(f"weights file {path}: missing tensors {missing[:5]}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        for key in wanted:
            if key not in like:
                raise ModelLoadError(f"weights file {path}: the model has no parameter {key!r}")
            tensor, target = f.get_tensor(key), like[key]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ModelLoadError(f"weights file {path}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(target.shape)}")
            result[key] = tensor.to(target.dtype)
    return result


def load_weights(model: nn.Module, path: str, only: Iterable[str] | None = None) -> None:
    """Copy tensors from a safetensors file into `model`, checking names, shapes and dtypes."""
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in read_weights(path, state, only).items():
            state[key].copy_(tensor)


def trace_ref(ref: ModelRef, model: nn.Module | None = None) -> tuple[fx.GraphModule, LayerGraph]:
    """Trace a reference. Without a model, traces on the meta device: no weights, no arithmetic."""
    shape = input_shape_of(ref)
    return trace(model if model is not None else _architecture(ref, "meta"), shape, ref.name)


def load_graph(ref: ModelRef) -> LayerGraph:
    return trace_ref(ref)[1]

