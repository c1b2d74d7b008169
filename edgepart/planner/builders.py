"""Plan builders that need no cost model: single, layer-wise and DeepThings' FTP grid.

Each builder returns a Plan whose regions come from the exact geometry, so
every plan it returns passes `check_plan` and `edgepart verify`.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgepart.errors import EdgepartError
from edgepart.geometry import Region, backprop, grid_regions, split_interval
from edgepart.graph.layer_graph import LayerGraph, Unit
from edgepart.graph.loader import ModelRef
from edgepart.graph.ops import CHANNELWISE, OpKind
from edgepart.plan import Objective, Partition, SplitKind, Stage, StagedPlan, StageKind, make_plan


class PlanBuildError(EdgepartError, ValueError):
    """The requested split is impossible for this model (say which layer and why)."""


def make_stage(graph: LayerGraph, index: int, kind: StageKind, split: SplitKind, start: int, stop: int,
               assignments: Sequence[tuple[str, Region]]) -> Stage:
    """A stage whose input regions are computed from its output regions."""
    partitions = tuple(
        Partition(id=f"s{index}p{i}", device=device, output_region=region,
                  input_region=backprop(graph, start, stop, region).input_region)
        for i, (device, region) in enumerate(assignments)
    )
    return Stage(index=index, kind=kind, split=split, start=start, stop=stop,
                 first_layer=graph.layers[start].name, last_layer=graph.layers[stop - 1].name,
                 partitions=partitions)


def single_stage(graph: LayerGraph, index: int, start: int, stop: int, device: str) -> Stage:
    return make_stage(graph, index, "single", "none", start, stop,
                      [(device, Region.full(graph.shape_at(stop)))])


def _check_devices(devices: Sequence[str]) -> tuple[str, ...]:
    if not devices:
        raise PlanBuildError("devices: need at least one device")
    if len(set(devices)) != len(devices):
        raise PlanBuildError(f"devices: names must be unique, got {list(devices)}")
    return tuple(devices)


def build_single(graph: LayerGraph, model: ModelRef, devices: Sequence[str],
                 objective: Objective = "latency") -> StagedPlan:
    """The whole model on the first device."""
    devs = _check_devices(devices)
    return make_plan(model, "single", objective, devs[:1], (single_stage(graph, 0, 0, len(graph), devs[0]),))


def channel_splittable(graph: LayerGraph, unit: Unit) -> bool:
    """A unit that starts with a conv or fc layer followed only by channel-wise ops."""
    first = graph.layers[unit.start]
    rest = graph.layers[unit.start + 1: unit.stop]
    return first.op in (OpKind.CONV, OpKind.FC) and all(layer.op in CHANNELWISE for layer in rest)


def channel_split(graph: LayerGraph, unit: Unit, parts: int, weights: Sequence[float] | None = None) -> list[Region]:
    """Output-channel ranges for a unit; grouped convs split on group boundaries."""
    first = graph.layers[unit.start]
    out_shape = graph.shape_at(unit.stop)
    channels = out_shape[0]
    step = channels // first.spec.groups if first.op is OpKind.CONV and first.spec.groups > 1 else 1
    if first.op is OpKind.CONV and first.spec.groups == first.in_shapes[0][0] == channels:
        step = 1  # depthwise: any channel range maps to the same input channels
    blocks = channels // step
    parts = min(parts, blocks)
    sizes = split_interval(blocks, list(weights[:parts]) if weights else [1.0] * parts)
    rest = tuple((0, n) for n in out_shape[1:])
    return [Region(((a * step, b * step), *rest)) for a, b in sizes]


def row_split(graph: LayerGraph, stop: int, parts: int, weights: Sequence[float] | None = None) -> list[Region]:
    shape = graph.shape_at(stop)
    if len(shape) != 3:
        raise PlanBuildError(f"layer {graph.layers[stop - 1].name!r} outputs a flat tensor; it has no rows to split")
    rows = split_interval(shape[1], list(weights[:parts]) if weights else [1.0] * min(parts, shape[1]))
    return grid_regions(shape, rows, [(0, shape[2])])


def build_layerwise(graph: LayerGraph, model: ModelRef, devices: Sequence[str], split: str = "auto",
                    objective: Objective = "latency") -> StagedPlan:
    """Every unit is its own stage, split across all devices (HotEdge's layer-wise baseline).

    split="channels" splits conv/fc units by output channels, "rows" splits every
    fusable unit by rows, "auto" uses channels where possible and rows otherwise.
    Units that need their whole input (flatten, global pooling) and cannot be
    split by channels run on the first device.
    """
    if split not in ("auto", "channels", "rows"):
        raise PlanBuildError(f"split: expected auto, channels or rows, got {split!r}")
    devs = _check_devices(devices)
    stages: list[Stage] = []
    for unit in graph.units:
        index = len(stages)
        by_channels = channel_splittable(graph, unit) and split in ("auto", "channels")
        if len(devs) > 1 and by_channels:
            regions = channel_split(graph, unit, len(devs))
            stages.append(make_stage(graph, index, "layerwise", "channels", unit.start, unit.stop,
                                     list(zip(devs, regions, strict=False))))
        elif len(devs) > 1 and unit.fusable and split in ("auto", "rows"):
            regions = row_split(graph, unit.stop, len(devs))
            stages.append(make_stage(graph, index, "layerwise", "rows", unit.start, unit.stop,
                                     list(zip(devs, regions, strict=False))))
        else:
            stages.append(single_stage(graph, index, unit.start, unit.stop, devs[0]))
    return make_plan(model, "layerwise", objective, devs, tuple(stages), meta={"split": split})


def parse_grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PlanBuildError(f"grid {text!r}: expected ROWSxCOLS, e.g. 3x3") from None
    if rows < 1 or cols < 1:
        raise PlanBuildError(f"grid {text!r}: rows and columns must be at least 1")
    return rows, cols


def build_ftp_grid(graph: LayerGraph, model: ModelRef, devices: Sequence[str], grid: tuple[int, int] = (3, 3),
                   fused_units: int | None = None, objective: Objective = "latency") -> StagedPlan:
    """DeepThings' fused tile partitioning: an N x M grid over the first F units, the rest on one device.

    Tiles are dealt to devices round-robin. F defaults to the longest fusable prefix.
    """
    devs = _check_devices(devices)
    longest = graph.longest_fusable_prefix()
    if longest == 0:
        raise PlanBuildError(f"{graph.model_name}: its first layer {graph.layers[0].name!r} cannot be tiled")
    count = longest if fused_units is None else fused_units
    if count < 1:
        raise PlanBuildError(f"fused layers: must be at least 1, got {count}")
    if count > longest:
        blocker = graph.units[longest]
        raise PlanBuildError(f"fused layers: {count} requested but only the first {longest} can be fused; "
                             f"layer {blocker.name!r} needs its whole input")
    stop = graph.units[count - 1].stop
    shape = graph.shape_at(stop)
    n, m = grid
    last = graph.layers[stop - 1].name
    if n > shape[1] or m > shape[2]:
        raise PlanBuildError(f"grid {n}x{m}: layer {last!r} outputs only {shape[1]}x{shape[2]} "
                             f"(rows x cols); use a smaller grid or fewer fused layers")
    rows = split_interval(shape[1], [1.0] * n)
    cols = split_interval(shape[2], [1.0] * m)
    tiles = grid_regions(shape, rows, cols)
    assignments = [(devs[i % len(devs)], tile) for i, tile in enumerate(tiles)]
    stages = [make_stage(graph, 0, "fused", "grid", 0, stop, assignments)]
    if stop < len(graph):
        stages.append(single_stage(graph, 1, stop, len(graph), devs[0]))
    return make_plan(model, "ftp-grid", objective, devs, tuple(stages),
                     meta={"grid": [n, m], "fused_units": count})
