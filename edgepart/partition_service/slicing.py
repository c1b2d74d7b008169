"""Load exactly one partition's slice of the model.

With a safetensors file the model is traced on the meta device and only the
tensors of layers [start, stop) are read from the file and materialised;
every other parameter stays on `meta` (no storage). With seeded weights the
whole model has to be initialised (the seed's draws run through every layer
in order), then every tensor outside the slice is released.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import fx

from edgepart.executor import SliceRunner
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelLoadError, load_model, trace_ref
from edgepart.partition_service.config import PartitionConfig

__all__ = ["SliceError", "load_slice", "resident_bytes"]


class SliceError(RuntimeError):
    """The partition's slice does not match its model (wrong layers or regions)."""


def _read_tensors(path: str, names: Iterable[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        handle = safe_open(path, framework="pt")
    except Exception as err:
        raise ModelLoadError(f"weights file {path}: not a safetensors file ({err})") from err
    result = {}
    with handle as f:
        available = set(f.keys())
        for name in names:
            if name not in available:
                raise ModelLoadError(f"weights file {path}: missing tensor {name!r}")
            tensor = f.get_tensor(name)
            target = like[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ModelLoadError(f"weights file {path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(target.shape)}")
            result[name] = tensor.to(target.dtype)
    return result


def _build(config: PartitionConfig) -> tuple[fx.GraphModule, LayerGraph]:
    ref = config.model.ref()
    if ref.weights is not None:
        gm, graph = trace_ref(ref)  # meta device: no storage, no init
        names = graph.param_names(config.start, config.stop)
        state = gm.state_dict(keep_vars=True)
        gm.load_state_dict(_read_tensors(ref.weights, names, state), strict=False, assign=True)
        return gm, graph
    model = load_model(ref)
    gm, graph = trace_ref(ref, model)
    keep = set(graph.param_names(config.start, config.stop))
    release = {k: torch.empty_like(v, device="meta") for k, v in gm.state_dict(keep_vars=True).items()
               if k not in keep}
    gm.load_state_dict(release, strict=False, assign=True)
    return gm, graph


def load_slice(config: PartitionConfig) -> SliceRunner:
    """The runner for this partition, its layers checked against the config."""
    gm, graph = _build(config)
    if config.stop > len(graph):
        raise SliceError(f"stop: {config.stop} is past the model's {len(graph)} layers")
    for field, index in (("first_layer", config.start), ("last_layer", config.stop - 1)):
        actual = graph.layers[index].name
        if getattr(config, field) != actual:
            raise SliceError(f"{field}: config says {getattr(config, field)!r}, layer {index} of "
                             f"{graph.model_name} is {actual!r}")
    runner = SliceRunner(gm, graph, config.start, config.stop, config.output_region)
    if runner.input_region != config.input_region:
        raise SliceError(f"input_region: config has {config.input_region}, the layers need {runner.input_region}")
    return runner


def resident_bytes(gm: torch.nn.Module) -> int:
    """Bytes of parameters and buffers that have storage (not on `meta`)."""
    return sum(t.numel() * t.element_size() for t in gm.state_dict().values() if t.device.type != "meta")
