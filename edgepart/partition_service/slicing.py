"""Load exactly one partition's slice of the model.

The model is traced on the meta device and only the tensors of layers
[start, stop) are materialised (read from the safetensors file, or drawn by
the seeded init, which skips the draws of every other tensor); every other
parameter stays on `meta` (no storage). See `load_part`.
"""

from __future__ import annotations

import torch
from torch import fx

from edgepart.executor import SliceRunner, crop
from edgepart.geometry import Region
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import load_part
from edgepart.partition_service.config import PartitionConfig

__all__ = ["SliceError", "TaskRunner", "load_slice", "resident_bytes"]


class SliceError(RuntimeError):
    """The partition's slice does not match its model (wrong layers or regions)."""


def _build(config: PartitionConfig) -> tuple[fx.GraphModule, LayerGraph]:
    return load_part(config.model.ref(), lambda graph: graph.param_names(config.start, config.stop))


class TaskRunner:
    """A task's compute on its input buffer: crop the region the layers need, run them (a relay forwards)."""

    def __init__(self, runner: SliceRunner | None, buffer: Region, output: Region):
        self.runner = runner
        self.buffer = buffer
        self.output = output

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        if self.runner is None:
            return crop(tile, self.buffer, self.output)
        need = self.runner.input_region
        if need.empty:
            return self.runner(tile.new_zeros((tile.shape[0], *need.shape)))
        return self.runner(crop(tile, self.buffer, need))


def load_slice(config: PartitionConfig) -> TaskRunner:
    """The runner for this task, its layers checked against the config."""
    if config.start == config.stop:
        if not config.input_region.contains(config.output_region):
            raise SliceError(f"output_region: a relay forwards what it receives, but {config.output_region} is not "
                             f"inside its input {config.input_region}")
        return TaskRunner(None, config.input_region, config.output_region)
    gm, graph = _build(config)
    if config.stop > len(graph):
        raise SliceError(f"stop: {config.stop} is past the model's {len(graph)} layers")
    for field, index in (("first_layer", config.start), ("last_layer", config.stop - 1)):
        actual = graph.layers[index].name
        if getattr(config, field) not in (None, actual):
            raise SliceError(f"{field}: config says {getattr(config, field)!r}, layer {index} of "
                             f"{graph.model_name} is {actual!r}")
    runner = SliceRunner(gm, graph, config.start, config.stop, config.output_region)
    need = runner.input_region
    if not need.empty and not config.input_region.contains(need):
        raise SliceError(f"input_region: config has {config.input_region}, the layers need {need}")
    return TaskRunner(runner, config.input_region, config.output_region)


def resident_bytes(gm: torch.nn.Module) -> int:
    """Bytes of parameters and buffers that have storage (not on `meta`)."""
    return sum(t.numel() * t.element_size() for t in gm.state_dict().values() if t.device.type != "meta")
