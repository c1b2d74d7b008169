"""Devices and links the planner costs plans on, built from a `ClusterSpec`.

A `Device` is a profile (per-op cost models, `costmodel.py`) times a speed
factor, plus the memory its partitions may use. A `Link` costs
t = alpha + bytes / bandwidth (SOLVERS.md §2 A.2); a device talks to itself
for free.

[R] Every message between two devices also costs software time on both ends
(HTTP stack, frame encoding, event loop): each device's `message_s`, its
profile's `message_overhead_s` (CPU seconds at the profile's speed, measured
through the real data plane) divided by its speed. `Cluster.link(u, v)` is
the link the cost model uses: the configured wire (`Cluster.wire`) with both
ends' message costs added to its alpha. Every consumer (evaluator,
simulator, fused-dp, pipeline-dp, brute force) costs transfers through it.
Partitions on one device are separate processes too: a message between them
crosses no wire but costs both ends' software time (`Cluster.local_s`).

`medium` says which transfers queue behind each other: `switched` gives every
NIC direction its own FIFO, `shared` (Wi-Fi) puts every transfer on one FIFO.
The `master` holds the input and receives the output.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from edgepart.errors import EdgepartError
from edgepart.geometry import Region
from edgepart.graph.layer_graph import Layer
from edgepart.planner.costmodel import DeviceProfile, ProfileError, load_profile, profile_from_json
from edgepart.spec import ClusterSpec, DeviceSpec, parse_bandwidth, parse_duration, parse_memory

Medium = Literal["switched", "shared"]

REFERENCE_PROFILE = "reference_profile.json"
# [R] used only when the reference profile carries no messageOverheadS (it does: see bench/bench_msgcost.py)
FALLBACK_MESSAGE_OVERHEAD_S = 1e-3


class ClusterError(EdgepartError, ValueError):
    """A cluster that cannot be costed (unknown device, unreadable profile, bad link)."""


@functools.cache
def reference_profile() -> DeviceProfile:
    """The built-in profile (`speed: 1.0`): this project's profiler on one core of a development machine."""
    text = importlib.resources.files("edgepart.planner").joinpath(REFERENCE_PROFILE).read_text()
    return profile_from_json(text, f"edgepart/planner/{REFERENCE_PROFILE}")


def reference_message_overhead() -> float:
    """CPU seconds one message costs each end of a hop at the reference speed (one core)."""
    value = reference_profile().message_overhead_s
    return FALLBACK_MESSAGE_OVERHEAD_S if value is None else value


@dataclass(frozen=True)
class Link:
    """t(n) = alpha_s + n / bandwidth_Bps; zero bytes cost nothing."""

    alpha_s: float
    bandwidth_Bps: float  # noqa: N815 - the unit is part of the name

    def __post_init__(self) -> None:
        if not self.alpha_s >= 0:
            raise ClusterError(f"link latency must be >= 0, got {self.alpha_s}")
        if not self.bandwidth_Bps > 0:
            raise ClusterError(f"link bandwidth must be > 0, got {self.bandwidth_Bps}")

    def time(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return self.alpha_s + nbytes / self.bandwidth_Bps


LOCAL = Link(0.0, math.inf)


@dataclass(frozen=True)
class Device:
    name: str
    profile: DeviceProfile
    speed: float = 1.0  # times faster than `profile`
    memory_bytes: int = 4 * 2**30
    cpus: float | None = None
    # CPU seconds per message sent or received at the profile's speed; None: the profile's own value,
    # or the reference profile's when the profile has none
    message_overhead_s: float | None = None
    role: str | None = None  # partial offloading: "end" or "edge-server" (DeviceSpec.role)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ClusterError(f"device {self.name!r}: speed must be > 0, got {self.speed}")
        if self.memory_bytes <= 0:
            raise ClusterError(f"device {self.name!r}: memory must be > 0, got {self.memory_bytes}")
        if self.message_overhead_s is not None and not self.message_overhead_s >= 0:
            raise ClusterError(f"device {self.name!r}: message overhead must be >= 0, got {self.message_overhead_s}")

    @property
    def message_s(self) -> float:
        """Seconds one message (sent or received) costs this device: its overhead over its speed."""
        base = self.message_overhead_s
        if base is None:
            base = self.profile.message_overhead_s
        if base is None:
            base = reference_message_overhead()
        return base / self.speed

    def layer_time(self, layer: Layer, region: Region | None = None, batch: int = 1) -> float:
        """Predicted seconds for `layer` to produce `region` (default: its whole output) here."""
        return self.profile.layer_time(layer, region, batch) / self.speed

    @property
    def cost_key(self) -> tuple[int, float]:
        """Devices with equal keys have identical cost models (same profile object, same speed)."""
        return (id(self.profile), self.speed)


@dataclass(frozen=True)
class Cluster:
    devices: tuple[Device, ...]
    master: str
    medium: Medium = "switched"
    network: Link = Link(2e-3, 100e6 / 8)
    overrides: Mapping[tuple[str, str], Link] = field(default_factory=dict)  # (from, to) -> link

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if not names:
            raise ClusterError("a cluster needs at least one device")
        if len(set(names)) != len(names):
            raise ClusterError(f"device names must be unique, got {names}")
        if self.master not in names:
            raise ClusterError(f"master {self.master!r} is not one of the devices {names}")
        for u, v in self.overrides:
            for end in (u, v):
                if end not in names:
                    raise ClusterError(f"link override ({u} -> {v}): {end!r} is not one of the devices {names}")
        # every pair's link, looked up millions of times by the searches: the wire plus both ends' message costs
        message = {d.name: d.message_s for d in self.devices}
        table = {}
        for u in names:
            for v in names:
                if u == v:
                    table[(u, v)] = LOCAL
                    continue
                wire = self.overrides.get((u, v), self.network)
                ends = sum(sorted((message[u], message[v])))  # same float both ways round
                table[(u, v)] = Link(wire.alpha_s + ends, wire.bandwidth_Bps)
        object.__setattr__(self, "_links", table)
        object.__setattr__(self, "_local", {name: 2 * message[name] for name in names})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ClusterError(f"unknown device {name!r}; the cluster has {list(self.names)}")

    def wire(self, u: str, v: str) -> Link:
        """The configured link from u to v (network latency and bandwidth, no software cost)."""
        if u == v:
            return LOCAL
        self.link(u, v)  # names checked
        return self.overrides.get((u, v), self.network)

    def link(self, u: str, v: str) -> Link:
        """What a message from u to v costs: the wire's, plus u's and v's per-message software time."""
        try:
            return self._links[(u, v)]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            unknown = u if u not in self.names else v
            raise ClusterError(f"unknown device {unknown!r}; the cluster has {list(self.names)}") from None

    def local_s(self, device: str) -> float:
        """What a message between two partitions on `device` costs: no wire, both ends' software time."""
        try:
            return self._local[device]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            raise ClusterError(f"unknown device {device!r}; the cluster has {list(self.names)}") from None

    def tx(self, u: str, v: str, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        link = self.link(u, v)
        return link.alpha_s + nbytes / link.bandwidth_Bps

    def restrict(self, names: Iterable[str]) -> Cluster:
        """The sub-cluster of `names` (cluster order kept); the master must stay."""
        keep = set(names)
        unknown = keep - set(self.names)
        if unknown:
            raise ClusterError(f"unknown devices {sorted(unknown)}; the cluster has {list(self.names)}")
        if self.master not in keep:
            raise ClusterError(f"the master {self.master!r} holds the input and cannot be removed")
        overrides = {k: v for k, v in self.overrides.items() if k[0] in keep and k[1] in keep}
        return replace(self, devices=tuple(d for d in self.devices if d.name in keep), overrides=overrides)

    def with_device(self, device: Device) -> Cluster:
        return replace(self, devices=(*self.devices, device))

    @staticmethod
    def homogeneous(n: int, bandwidth: str = "100Mbps", latency: str = "2ms", speed: float = 1.0,
                    memory: str = "4Gi", medium: Medium = "switched", profile: DeviceProfile | None = None,
                    prefix: str = "dev", names: Sequence[str] | None = None) -> Cluster:
        """`n` identical devices `{prefix}0..{prefix}{n-1}` (or `names`); the first is the master."""
        if n < 1:
            raise ClusterError(f"--devices: need at least one device, got {n}")
        base = profile or reference_profile()
        mem = parse_memory(memory)
        labels = list(names) if names is not None else [f"{prefix}{i}" for i in range(n)]
        if len(labels) != n:
            raise ClusterError(f"homogeneous cluster: {n} devices but {len(labels)} names")
        devices = tuple(Device(label, base, speed, mem) for label in labels)
        link = Link(parse_duration(latency), parse_bandwidth(bandwidth))
        return Cluster(devices, devices[0].name, medium, link)


def _device_from_spec(spec: DeviceSpec, index: int, reference: DeviceProfile, base_dir: Path | None,
                      given: DeviceProfile | None) -> Device:
    where = f"devices[{index}] ({spec.name})"
    profile = reference
    if given is not None:
        profile = given
    elif spec.profile is not None:
        path = Path(spec.profile)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            profile = load_profile(path)
        except ProfileError as err:
            raise ClusterError(f"{where}.profile: {err}") from None
    # [R] speed scales whichever profile the device has: "like this profile, but twice as fast"
    speed = spec.speed if spec.speed is not None else 1.0
    # a given message cost is this device's own time; the Device keeps it at the profile's speed
    message = None if spec.message_cost is None else parse_duration(spec.message_cost) * speed
    return Device(spec.name, profile, speed, parse_memory(spec.memory), spec.cpus, message, spec.role)


def cluster_from_spec(spec: ClusterSpec, reference_profile_: DeviceProfile | None = None,
                      base_dir: str | Path | None = None,
                      profiles: Mapping[str, DeviceProfile] | None = None) -> Cluster:
    """Build the planner's cluster; relative profile paths resolve against `base_dir`.

    `profiles` (device name -> profile) supplies profiles already in memory (the
    operator reads them from ConfigMaps); they take precedence over `profile:` paths.

    [R] A per-pair override `from: a, to: b` applies to both directions unless
    the reverse pair has its own entry: users describe links, not NIC queues.
    """
    reference = reference_profile_ or reference_profile()
    root = Path(base_dir) if base_dir is not None else None
    given = profiles or {}
    devices = tuple(_device_from_spec(d, i, reference, root, given.get(d.name)) for i, d in enumerate(spec.devices))
    net = spec.network
    default = Link(parse_duration(net.latency), parse_bandwidth(net.bandwidth))
    explicit: dict[tuple[str, str], Link] = {}
    for i, link in enumerate(net.links):
        if link.source == link.target:
            raise ClusterError(f"network.links[{i}]: a link from {link.source!r} to itself is meaningless")
        bandwidth = parse_bandwidth(link.bandwidth) if link.bandwidth is not None else default.bandwidth_Bps
        latency = parse_duration(link.latency) if link.latency is not None else default.alpha_s
        explicit[(link.source, link.target)] = Link(latency, bandwidth)
    overrides = dict(explicit)
    for (u, v), link_ in explicit.items():
        overrides.setdefault((v, u), link_)
    return Cluster(devices, spec.master_name, net.medium, default, overrides)


def load_cluster_file(path: str | Path, reference_profile_: DeviceProfile | None = None) -> Cluster:
    from edgepart.spec import load_cluster

    return cluster_from_spec(load_cluster(path), reference_profile_, Path(path).parent)


