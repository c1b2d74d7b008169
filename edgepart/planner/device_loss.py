"""Devices lost for good, and the cluster that remains without them.

Shared by the operator (a node NotReady or failing: `operator.reconcile`) and the embedded runtime (a
device whose partitions cannot be kept running: `runtime.supervise`), so both re-plan the same way:

- a device is *down* while one of its partitions is not running (or, emulated, its namespace is gone);
  it is *up* again only once every partition stayed up `recovery_s` (a crash loop is briefly up between
  restarts, and that must not reset its clock);
- a device down `timeout_s` without a break is *lost*: the deployment is re-planned without it;
- the remaining cluster keeps the other devices in their order, the links between them, and the master;
  a lost master hands the input to the first remaining device (as the operator moves the gateway).

Pure: observations and the time in, a decision out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from edgepart.errors import EdgepartError
from edgepart.spec import ClusterSpec, DeploymentSpec, NetworkSpec

__all__ = ["DeviceWatch", "LossSettings", "NoDevicesLeftError", "Remaining", "choose_master", "links_among",
           "lost_devices", "observe", "remaining_spec"]


@dataclass(frozen=True)
class LossSettings:
    timeout_s: float = 30.0  # down this long without a break: lost, re-plan without it
    recovery_s: float = 10.0  # up this long without a break: no longer down


@dataclass(frozen=True)
class DeviceWatch:
    """One device's history as far as the decision needs it (monotonic seconds)."""

    down_since: float | None = None
    up_since: float | None = None

    def seen(self, down: bool, now: float, recovery_s: float) -> DeviceWatch:
        if down:
            return DeviceWatch(down_since=self.down_since if self.down_since is not None else now)
        up_since = self.up_since if self.up_since is not None else now
        recovered = now - up_since >= recovery_s
        return DeviceWatch(down_since=None if recovered else self.down_since, up_since=up_since)


def observe(watches: Mapping[str, DeviceWatch], down: Collection[str], devices: Collection[str], now: float,
            settings: LossSettings) -> dict[str, DeviceWatch]:
    """Every device of `devices` after one look at it: `down` holds those seen down now."""
    return {name: watches.get(name, DeviceWatch()).seen(name in down, now, settings.recovery_s)
            for name in sorted(devices)}


def lost_devices(watches: Mapping[str, DeviceWatch], now: float, settings: LossSettings) -> list[str]:
    """The devices down for `timeout_s` or longer, by name."""
    return sorted(name for name, watch in watches.items()
                  if watch.down_since is not None and now - watch.down_since >= settings.timeout_s)


def choose_master(wanted: str | None, usable: Sequence[str]) -> str:
    """The device that holds the input: the one wanted while it is usable, else the first usable one."""
    if not usable:
        raise ValueError("no usable device to hold the input")
    return wanted if wanted is not None and wanted in usable else usable[0]


def links_among(network: NetworkSpec, names: Collection[str]) -> NetworkSpec:
    """The network with only the per-pair links whose ends both remain."""
    return network.model_copy(update={"links": [
        link for link in network.links if {link.source, link.target} <= set(names)]})


class NoDevicesLeftError(EdgepartError, ValueError):
    """Every device of the deployment is lost."""


@dataclass(frozen=True)
class Remaining:
    spec: DeploymentSpec  # the deployment on the remaining devices
    master: str
    moved_from: str | None  # the master that was lost, when the input moved


def remaining_spec(spec: DeploymentSpec, lost: Collection[str]) -> Remaining:
    """`spec` (inline devices) without the `lost` devices. Raises NoDevicesLeftError when none remains."""
    cluster: ClusterSpec = spec.cluster()
    kept = [d for d in cluster.devices if d.name not in lost]
    if not kept:
        raise NoDevicesLeftError(f"every device ({', '.join(d.name for d in cluster.devices)}) is lost")
    wanted = cluster.master_name
    master = choose_master(wanted, [d.name for d in kept])
    # role end marks the device holding the input: only the master may keep it
    devices = [d if d.role != "end" or d.name == master else d.model_copy(update={"role": None}) for d in kept]
    reduced = spec.model_copy(update={"devices": devices, "master": master,
                                      "network": links_among(spec.network, [d.name for d in kept])})
    return Remaining(spec=reduced, master=master, moved_from=None if master == wanted else wanted)
