"""What the multi-model searches run on: devices that cost a region of a model, and the network.

Two kinds of device cost:

- `ProfiledDevice` wraps the planner's `Device`: the sum of its per-layer
  cost model (`Device.layer_time`) over the regions the geometry says each
  layer computes, as every other solver costs a partition.
- `TableDevice` is the authors' simulation model [C dag_server.py,
  config.py]: seconds = workload x intensity[model] / frequency, with
  workload = scale[model] x multiply-accumulates (`pieces.macs`).

The `Network` has one endpoint per device, then any endpoints that only hold
model inputs (the authors' request devices). A message from u to v costs
alpha[u, v] + bytes x seconds_per_byte[u, v]; the diagonal is what a message
between two tasks on one device costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from edgepart.geometry import TileGeometry
from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster, Device
from edgepart.planner.errors import PlanningError
from edgepart.planner.multimodel.pieces import macs

Medium = Literal["switched", "shared"]


class DeviceCost(Protocol):
    """A device a search may place work on."""

    @property
    def name(self) -> str: ...

    @property
    def memory_bytes(self) -> int: ...

    def seconds(self, graph: LayerGraph, geometry: TileGeometry) -> float:
        """Predicted seconds to compute the regions of `geometry` of `graph`."""
        ...


@dataclass(frozen=True)
class ProfiledDevice:
    device: Device

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def memory_bytes(self) -> int:
        return self.device.memory_bytes

    def seconds(self, graph: LayerGraph, geometry: TileGeometry) -> float:
        return sum(self.device.layer_time(graph.layers[i], region, graph.batch)
                   for i, region in geometry.regions.items())


@dataclass(frozen=True)
class TableDevice:
    """[C config.py] one row of the authors' device table."""

    name: str
    frequency: float  # workload units per second (the table's "computing_frequency")
    intensity: Mapping[str, float]  # per model name: units per multiply-accumulate
    memory_bytes: int
    workload_scale: Mapping[str, float] = field(default_factory=dict)  # per model name; 1 when absent

    def seconds(self, graph: LayerGraph, geometry: TileGeometry) -> float:
        name = graph.model_name
        if name not in self.intensity:
            raise PlanningError(f"device {self.name!r}: no intensity for model {name!r} "
                                f"(the table has {sorted(self.intensity)})")
        scale = self.workload_scale.get(name, 1.0)
        return scale * macs(graph, geometry) * self.intensity[name] / self.frequency


@dataclass(frozen=True, eq=False)
class Network:
    endpoints: tuple[str, ...]  # the devices first (same order), then input-only endpoints
    alpha_s: np.ndarray  # (E, E) seconds per message
    s_per_byte: np.ndarray  # (E, E)
    medium: Medium = "switched"

    def __post_init__(self) -> None:
        size = len(self.endpoints)
        if len(set(self.endpoints)) != size:
            raise PlanningError(f"network endpoints must be unique, got {list(self.endpoints)}")
        for name, matrix in (("alpha_s", self.alpha_s), ("s_per_byte", self.s_per_byte)):
            if matrix.shape != (size, size):
                raise PlanningError(f"network.{name}: shape {matrix.shape}, expected ({size}, {size})")
            if not np.all(matrix >= 0):
                raise PlanningError(f"network.{name}: costs must be >= 0")

    def index(self, name: str) -> int:
        try:
            return self.endpoints.index(name)
        except ValueError:
            raise PlanningError(f"unknown endpoint {name!r}; the network has {list(self.endpoints)}") from None

    def tx(self, u: int, v: int, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return float(self.alpha_s[u, v] + nbytes * self.s_per_byte[u, v])

    @staticmethod
    def uniform(endpoints: Sequence[str], bandwidth_Bps: float, latency_s: float = 0.0,  # noqa: N803
                local_Bps: float = 20 * 2**30,  # noqa: N803
                medium: Medium = "switched") -> Network:
        """Every pair at one bandwidth; a device to itself at memory bandwidth ([C] DDR4, 20 GiB/s)."""
        if not bandwidth_Bps > 0 or not local_Bps > 0:
            raise PlanningError("network bandwidths must be > 0")
        size = len(endpoints)
        alpha = np.full((size, size), latency_s)
        per_byte = np.full((size, size), 1.0 / bandwidth_Bps)
        np.fill_diagonal(alpha, 0.0)
        np.fill_diagonal(per_byte, 1.0 / local_Bps)
        return Network(tuple(endpoints), alpha, per_byte, medium)

    @staticmethod
    def of_cluster(cluster: Cluster) -> Network:
        """The cluster's links (wire plus both ends' message time); a local message costs `local_s`."""
        names = cluster.names
        size = len(names)
        alpha = np.zeros((size, size))
        per_byte = np.zeros((size, size))
        for i, u in enumerate(names):
            for j, v in enumerate(names):
                if i == j:
                    alpha[i, j] = cluster.local_s(u)
                    continue
                link = cluster.link(u, v)
                alpha[i, j] = link.alpha_s
                per_byte[i, j] = 1.0 / link.bandwidth_Bps
        return Network(names, alpha, per_byte, cluster.medium)


@dataclass(frozen=True, eq=False)
class Platform:
    devices: tuple[DeviceCost, ...]  # the places work can go: network endpoints 0..len-1
    network: Network
    fallback: int  # where memory repair moves blocks (the edge server)

    def __post_init__(self) -> None:
        names = tuple(d.name for d in self.devices)
        if not names:
            raise PlanningError("a platform needs at least one device")
        if self.network.endpoints[: len(names)] != names:
            raise PlanningError(f"the network's first endpoints {list(self.network.endpoints[:len(names)])} "
                                f"must be the devices {list(names)}, in order")
        if not 0 <= self.fallback < len(names):
            raise PlanningError(f"fallback device {self.fallback} is not one of the {len(names)} devices")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    @staticmethod
    def of_cluster(cluster: Cluster, fallback: str | None = None) -> Platform:
        """Every cluster device; memory repair falls back to `fallback` (default: the fastest device)."""
        devices = tuple(ProfiledDevice(d) for d in cluster.devices)
        if fallback is None:
            fallback = max(cluster.devices, key=lambda d: (d.speed, d.memory_bytes)).name
        names = cluster.names
        if fallback not in names:
            raise PlanningError(f"fallback {fallback!r} is not one of the devices {list(names)}")
        return Platform(devices, Network.of_cluster(cluster), names.index(fallback))


def mean_transfer(network: Network, devices: int, nbytes: np.ndarray) -> np.ndarray:
    """Mean seconds to move `nbytes` between two different devices (HEFT's average communication cost)."""
    if devices < 2:
        return np.zeros_like(nbytes, dtype=float)
    off = ~np.eye(devices, dtype=bool)
    alpha = float(network.alpha_s[:devices, :devices][off].mean())
    per_byte = float(network.s_per_byte[:devices, :devices][off].mean())
    return np.where(nbytes > 0, alpha + nbytes * per_byte, 0.0)
