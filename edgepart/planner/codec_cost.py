"""What a codec costs on a transfer, and the per-link choice of one.

A lossless codec (lz4, zstd) trades CPU for bytes: on a slow link the bytes
it saves outweigh the time to compress on the sender and decompress on the
receiver; on a fast one it does not. The cost model is a ratio (encoded /
raw bytes, for post-ReLU activations) and a throughput in raw bytes per second
on one CPU of the reference speed, scaled by each device's `speed`. The
defaults are measured by ``python -m bench codec`` on VGG-16 and YOLOv2
activations (bench/results/codec.md). The model input (cut 0, an image) is
not sparse: codecs are costed and chosen only for activations.

`choose_wire` is the planner's pass after solving: for every transfer that
crosses a link it keeps the cheapest of raw and each allowed codec. The
evaluator costs the plan's choice with the same `wire_cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from edgepart.graph.layer_graph import LayerGraph
from edgepart.plan import INPUT, Plan, Task, TaskInput, WireCodec, WireDtype
from edgepart.planner.cluster import Cluster
from edgepart.planner.stage_costs import dtype_at

Compression = Literal["auto", "off", "lz4", "zstd"]


@dataclass(frozen=True)
class CodecCost:
    ratio: float  # encoded / raw bytes on post-ReLU activations
    compress_Bps: float  # noqa: N815 - raw bytes per second on one reference CPU
    decompress_Bps: float  # noqa: N815


# from `python -m bench codec` (bench/results/codec.md), VGG-16's ReLU outputs, rounded down for speed:
# YOLOv2's LeakyReLU outputs are not sparse (lz4 1.00, zstd 0.90), so this ratio is optimistic for them
DEFAULT_CODECS: Mapping[str, CodecCost] = {
    "lz4": CodecCost(ratio=0.57, compress_Bps=900e6, decompress_Bps=3000e6),
    "zstd": CodecCost(ratio=0.49, compress_Bps=300e6, decompress_Bps=1000e6),
}


@dataclass(frozen=True)
class WireSettings:
    """How transfers may travel: which codecs the planner may choose and the element type on the wire."""

    compression: Compression = "off"  # auto: the cheapest per link; lz4 / zstd: that one wherever it pays
    wire_dtype: WireDtype = "float32"  # float16: float32 activations travel as float16 (lossy)
    codecs: Mapping[str, CodecCost] = field(default_factory=lambda: dict(DEFAULT_CODECS))

    @property
    def candidates(self) -> tuple[WireCodec, ...]:
        if self.compression == "off":
            return ()
        if self.compression == "auto":
            return ("lz4", "zstd")
        return (self.compression,)


@dataclass(frozen=True)
class WireCost:
    nbytes: float  # bytes on the wire
    cpu_s: float  # compress on the sender plus decompress on the receiver


def wire_cost(raw_bytes: float, cut: int, item: TaskInput, sender_speed: float, receiver_speed: float,
              codecs: Mapping[str, CodecCost] = DEFAULT_CODECS, dtype_bytes: int = 4) -> WireCost:
    """Bytes on the wire and codec CPU seconds of a transfer of `raw_bytes` across cut `cut`."""
    nbytes = raw_bytes / 2 if item.wire_dtype == "float16" and dtype_bytes == 4 else raw_bytes
    if item.codec == "none" or cut == 0:
        return WireCost(nbytes, 0.0)
    cost = codecs[item.codec]
    cpu_s = nbytes / (cost.compress_Bps * sender_speed) + nbytes / (cost.decompress_Bps * receiver_speed)
    return WireCost(nbytes * cost.ratio, cpu_s)


def choose_wire(plan: Plan, graphs: Mapping[str, LayerGraph], cluster: Cluster, settings: WireSettings) -> Plan:
    """`plan` with each input's codec and wire dtype chosen for its link (see the module docstring)."""
    by_id = {t.id: t for t in plan.tasks}
    tasks = []
    for task in plan.tasks:
        width = dtype_at(graphs[task.model], task.start)
        inputs = tuple(_choose(item, task, _sender(plan, by_id, task, item), cluster, width, settings)
                       for item in task.inputs)
        tasks.append(replace(task, inputs=inputs))
    return plan.replace(tasks=tuple(tasks))


def _sender(plan: Plan, by_id: Mapping[str, Task], task: Task, item: TaskInput) -> str:
    return plan.source_of(task.model) if item.source == INPUT else by_id[item.source].device


def _choose(item: TaskInput, task: Task, sender: str, cluster: Cluster, width: int,
            settings: WireSettings) -> TaskInput:
    if sender == task.device or item.region.empty:
        return replace(item, codec="none", wire_dtype="float32")  # no wire crossed: nothing to save
    item = replace(item, codec="none", wire_dtype=settings.wire_dtype)
    raw_bytes = float(item.region.size * width)  # per batch element: the choice does not depend on the batch
    speeds = (cluster.device(sender).speed, cluster.device(task.device).speed)

    def seconds(codec: WireCodec) -> float:
        cost = wire_cost(raw_bytes, task.start, replace(item, codec=codec), *speeds, settings.codecs, width)
        return cluster.tx(sender, task.device, cost.nbytes) + cost.cpu_s

    best: WireCodec = min(("none", *settings.candidates), key=seconds)
    return replace(item, codec=best if task.start > 0 else "none")
