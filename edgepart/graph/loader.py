"""Resolve a model reference (zoo name, `package.module:factory`, `path/file.py:factory`).

Weights come from a safetensors file when one is given (only the tensors a
partition needs are read), otherwise from a deterministic seeded init, so
every process that builds the same reference gets the same numbers.
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
from edgepart.graph.zoo import ZOO, UnknownModelError, build_zoo_model, init_weights


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

