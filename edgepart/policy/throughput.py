"""θ[n][m], the images per second variant m sustains on node n: predicted, then refined by measurement.

Predictions come from the project's cost model: a variant's LayerGraph at the
batch a node computes at once, costed layer by layer on the node's `Device`
(`Device.layer_time`), θ = batch / Σ layer times. At run time every finished
part reports how many images it computed in how many seconds; the estimate
moves towards that measurement by an exponentially weighted moving average
(`ThroughputEstimates.observe`; the node's other variants move by the same
ratio), and the relative deviation from the prediction the dispatch used is
what the resource manager watches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from edgepart.errors import EdgepartError
from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster, Device


class ThroughputError(EdgepartError, ValueError):
    """A throughput estimate or measurement that cannot be used."""


def variant_throughput(device: Device, graph: LayerGraph) -> float:
    """Images per second of `graph` (at its own batch size) on `device`, from the cost model."""
    seconds = sum(device.layer_time(layer, None, graph.batch) for layer in graph.layers)
    if not seconds > 0:
        raise ThroughputError(f"model {graph.model_name!r} costs nothing on {device.name!r}: cannot derive a throughput")
    return graph.batch / seconds


@dataclass(frozen=True)
class ThroughputEstimates:
    """θ per (node, variant), images/s; `None` where nothing is known yet (the node needs profiling)."""

    values: Mapping[tuple[str, str], float] = field(default_factory=dict)
    weight: float = 0.5  # EWMA weight of a new measurement
    version: int = 0  # changes whenever an estimate does: what a DSE table built from it is keyed on

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1:
            raise ThroughputError(f"EWMA weight must be in (0, 1], got {self.weight}")
        for (node, variant), value in self.values.items():
            if not value > 0:
                raise ThroughputError(f"throughput of {variant!r} on {node!r} must be > 0, got {value}")

    @staticmethod
    def predicted(cluster: Cluster, graphs: Mapping[str, LayerGraph], weight: float = 0.5) -> ThroughputEstimates:
        """The cost model's θ for every device of `cluster` and every variant (name -> graph)."""
        values = {(d.name, name): variant_throughput(d, g) for d in cluster.devices for name, g in graphs.items()}
        return ThroughputEstimates(values, weight)

    def get(self, node: str, variant: str) -> float | None:
        return self.values.get((node, variant))

    def missing(self, nodes: Iterable[str], variants: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The (node, variant) pairs with no estimate, in the given orders."""
        names = tuple(variants)
        return tuple((n, v) for n in nodes for v in names if (n, v) not in self.values)

    def observe(self, node: str, variant: str, images: int, seconds: float,
                weight: float | None = None) -> ThroughputEstimates:
        """Fold in a measurement: `images` computed in `seconds`, with `weight` (default: the EWMA's; 1 takes
        the measurement as is). The first one for a pair is taken as is.

        [R] The node's other variants move by the same ratio: a node that runs one variant slower than
        expected (throttling, a noisy neighbour) runs the others slower too, and a re-plan that swaps its
        variant should not start from a stale speed. Their own measurements correct them later.
        """
        measured = measured_throughput(images, seconds)
        old = self.values.get((node, variant))
        if old is None:
            return replace(self, values={**self.values, (node, variant): measured}, version=self.version + 1)
        w = self.weight if weight is None else weight
        if not 0 < w <= 1:
            raise ThroughputError(f"EWMA weight must be in (0, 1], got {w}")
        ratio = ((1 - w) * old + w * measured) / old
        values = {k: v * ratio if k[0] == node else v for k, v in self.values.items()}
        return replace(self, values=values, version=self.version + 1)

    def without(self, node: str) -> ThroughputEstimates:
        """Forget a node (it left; if it comes back it is profiled again)."""
        kept = {k: v for k, v in self.values.items() if k[0] != node}
        if len(kept) == len(self.values):
            return self
        return replace(self, values=kept, version=self.version + 1)


def measured_throughput(images: int, seconds: float) -> float:
    if images < 1:
        raise ThroughputError(f"a throughput measurement needs at least one image, got {images}")
    if not seconds > 0:
        raise ThroughputError(f"a throughput measurement needs a positive duration, got {seconds} s")
    return images / seconds


def deviation(predicted: float, measured: float) -> float:
    """Relative deviation |measured - predicted| / predicted."""
    return abs(measured - predicted) / predicted
