"""Options of the partial-offloading solvers, and the choice of the end device and the edge server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepart.graph.layer_graph import LayerGraph
from edgepart.planner.cluster import Cluster, ClusterError, Device
from edgepart.planner.errors import PlanningError

ComputeModel = Literal["paper", "sequential"]
COMPUTE_MODELS: tuple[ComputeModel, ...] = ("paper", "sequential")


@dataclass(frozen=True)
class OffloadSettings:
    """What `mw`, `nfl` and `offload-bf` search, and on which two devices."""

    end: str | None = None
    """The end device: it holds the input, runs each path's local part and receives the output.
    None: the device with role `end`, else the cluster's master."""
    server: str | None = None
    """The edge server: the rest of each path, the fusion and the layers after it.
    None: of the devices with role `edge-server` (all others when none has it), the one other than the end
    device that runs the whole model fastest."""
    compute_model: ComputeModel = "sequential"
    """`sequential`: the end device, the uplink and the server each serve one path at a time, in the
    order S (a 3-machine flow shop), which is what the runtime executes. `paper`: each path's local and
    server compute run without contention, as the GLOBECOM'22 recurrence does; only the uplink is a queue.
    Use it to reproduce the reported figures."""
    tau_max: int | None = None
    """Longest FL path length (in units) to try; None: the whole fusable prefix."""
    grid_max: tuple[int, int] = (32, 32)
    """Largest grid P_h x P_w of paths; also capped by the fused output's height and width."""
    max_paths: int | None = None
    """Only grids with P_h * P_w <= max_paths (None: no cap besides `grid_max`)."""
    bf_max_paths: int = 6
    """`offload-bf` enumerates every grid with at most this many paths (its cost grows as (τ+1)^P P!)."""

    def __post_init__(self) -> None:
        if self.compute_model not in COMPUTE_MODELS:
            raise PlanningError(f"compute_model: must be one of {list(COMPUTE_MODELS)}, got {self.compute_model!r}")
        if self.tau_max is not None and self.tau_max < 1:
            raise PlanningError(f"tau_max: must be >= 1, got {self.tau_max}")
        if len(self.grid_max) != 2 or min(self.grid_max) < 1:
            raise PlanningError(f"grid_max: must be two positive integers (P_h, P_w), got {self.grid_max}")
        if self.max_paths is not None and self.max_paths < 1:
            raise PlanningError(f"max_paths: must be >= 1, got {self.max_paths}")
        if not 1 <= self.bf_max_paths <= 8:
            raise PlanningError(f"bf_max_paths: must be in 1..8 (brute force is exponential), got {self.bf_max_paths}")


def whole_model_time(graph: LayerGraph, device: Device) -> float:
    return sum(device.layer_time(layer, None, graph.batch) for layer in graph.layers)


def pick_devices(graph: LayerGraph, cluster: Cluster, settings: OffloadSettings) -> tuple[Device, Device]:
    """(end device, edge server) from the settings, with the defaults described there."""
    ends = [d.name for d in cluster.devices if d.role == "end"]
    end_name = settings.end if settings.end is not None else (ends[0] if ends else cluster.master)
    try:
        end = cluster.device(end_name)
    except ClusterError:
        raise PlanningError(f"end: unknown device {end_name!r}; the cluster has {list(cluster.names)}") from None
    if settings.server is not None:
        try:
            server = cluster.device(settings.server)
        except ClusterError:
            raise PlanningError(f"server: unknown device {settings.server!r}; the cluster has "
                                f"{list(cluster.names)}") from None
        if server.name == end.name:
            raise PlanningError(f"server: {server.name!r} is also the end device; pick another device")
        return end, server
    others = [d for d in cluster.devices if d.name != end.name]
    servers = [d for d in others if d.role == "edge-server"]
    others = servers or others
    if not others:
        raise PlanningError(f"partial offloading needs an edge server besides the end device {end.name!r}; "
                            f"the cluster has only {list(cluster.names)}")
    times = [whole_model_time(graph, d) for d in others]
    return end, others[times.index(min(times))]
