"""Emulated edge devices on one Linux host: a network namespace, a capped link and a CPU quota per device.

Topology of one testbed (K: the testbed's index, i: the device's index)::

    netns edgepart-<run>-hub:   bridge epKbr ── epKh0 ── epKh1 ── ...     (tbf: device i's downlink)
                                                 │veth      │veth
    netns edgepart-<run>-<dev0>:              epKd0       │            (tbf: device 0's uplink)
       10.123.K.2/24, lo                                  │
    netns edgepart-<run>-<dev1>:                        epKd1          (tbf: device 1's uplink)
       10.123.K.3/24, lo

Every address lives in a namespace created here (10.123.K.0/24); the host's
own namespaces get none. Each veth end carries a `tc ... tbf` qdisc at the
network's bandwidth, so every device has a capped uplink and downlink (a
switched network; a shared medium is emulated the same way). This kernel has no
netem, so link latency is added in userspace: the sender sleeps before each
send (`Route.delay_s`). A device with `cpus` gets a CPU cgroup, on the layout the host
has (`edgepart.runtime.cgroups`): cgroup v1, cpu.cfs_quota_us = cpus x cpu.cfs_period_us;
cgroup v2, cpu.max (and memory.max for a device with `memory`). Processes join both
at start (`enter(...)`, run between fork and exec).

Everything is created with rollback on failure and destroyed idempotently.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edgepart.errors import EdgepartError
from edgepart.runtime import cgroups
from edgepart.spec import DeviceSpec, NetworkSpec, parse_bandwidth, parse_memory

__all__ = ["EmulatedDevice", "EmulationError", "Testbed", "cpu_capped", "create_testbed", "destroy_testbed", "enter",
           "link_rate_bits", "support_problems"]

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
NETNS_DIR = Path("/run/netns")
SUBNET = "10.123.{index}.0/24"
# 10 ms: a 0.2-CPU device runs 2 ms in every 10 ms instead of 20 ms in every 100 ms, so a throttled
# process (its sends included) stalls for at most 8 ms, closer to a slow core than to a stop-and-go one
CFS_PERIOD_US = 10_000
_CLONE_NEWNET = 0x40000000


class EmulationError(EdgepartError, RuntimeError):
    """Emulated devices cannot be set up here (not root, missing kernel support, a failed command)."""


class EmulatedDevice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    netns: str
    address: str
    host_if: str
    device_if: str
    rate_bps: int
    cgroup: str | None = None
    cpus: float | None = None
    memory_bytes: int | None = None  # capped on cgroup v2 (memory.max)


class Testbed(BaseModel):
    """What `create_testbed` made; enough for `destroy_testbed` from another process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str
    index: int
    hub: str
    bridge: str
    devices: tuple[EmulatedDevice, ...]
    cgroup_root: str | None = None

    def device(self, name: str) -> EmulatedDevice:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)


def support_problems() -> list[str]:
    """Why emulation cannot run here (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("--emulate needs root: it creates network namespaces, tc qdiscs and cgroups "
                        "(run as root, or drop --emulate to run plain local processes)")
        return problems
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` (iproute2) is not installed")
    problems.extend(cgroups.layout_problems())
    return problems


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EmulationError(f"`{' '.join(args)}` failed: {(result.stderr or result.stdout).strip()}")


def _quiet(*args: str) -> None:
    subprocess.run(args, capture_output=True, check=False)


def _burst_bytes(rate_bps: int) -> int:
    # 2 ms of traffic at the rate, at least two full frames. Not a 64 KiB GSO segment: tbf splits GSO
    # packets larger than its bucket itself, and a 64 KiB bucket let every message under 64 KiB through
    # at the veth's speed (an AlexNet cut of 36 KiB crossed a 10 Mbit/s link in ~0 ms instead of 30 ms)
    return max(2 * 1514, rate_bps // 8 // 500)


def link_rate_bits(network: NetworkSpec) -> int:
    """The tbf rate of every emulated link, in bits per second (tc's unit), from the network's bandwidth."""
    return round(parse_bandwidth(network.bandwidth) * 8)


def create_testbed(run: str, index: int, devices: Sequence[DeviceSpec], network: NetworkSpec) -> Testbed:
    """Create namespaces, bridge, veths with tbf caps and CPU cgroups; everything is removed on failure."""
    problems = support_problems()
    if problems:
        raise EmulationError("; ".join(problems))
    if not 0 <= index <= 254 or len(devices) > 250:
        raise EmulationError(f"testbed index {index} / {len(devices)} devices out of range")
    rate = link_rate_bits(network)
    hub = f"edgepart-{run}-hub"
    layout = cgroups.detect()
    base = layout.root if layout is not None else CGROUP_CPU
    cgroup_root = base / "edgepart" / run if any(d.cpus for d in devices) else None
    emulated = tuple(
        EmulatedDevice(name=d.name, netns=f"edgepart-{run}-{d.name}", address=f"10.123.{index}.{i + 2}",
                       host_if=f"ep{index}h{i}", device_if=f"ep{index}d{i}", rate_bps=rate,
                       cgroup=str(cgroup_root / d.name) if cgroup_root and d.cpus else None, cpus=d.cpus,
                       memory_bytes=parse_memory(d.memory))
        for i, d in enumerate(devices)
    )
    testbed = Testbed(run=run, index=index, hub=hub, bridge=f"ep{index}br", devices=emulated,
                      cgroup_root=str(cgroup_root) if cgroup_root else None)
    try:
        _build(testbed)
    except BaseException:
        destroy_testbed(testbed)
        raise
    return testbed


def _build(tb: Testbed) -> None:
    for ns in (tb.hub, *(d.netns for d in tb.devices)):
        if (NETNS_DIR / ns).exists():
            raise EmulationError(f"network namespace {ns} already exists (a previous run not cleaned up? "
                                 f"try `edgepart down {tb.run}`, or `ip netns del {ns}`)")
    _run("ip", "netns", "add", tb.hub)
    _run("ip", "-n", tb.hub, "link", "add", tb.bridge, "type", "bridge")
    _run("ip", "-n", tb.hub, "link", "set", tb.bridge, "up")
    for d in tb.devices:
        burst = str(_burst_bytes(d.rate_bps))
        _run("ip", "netns", "add", d.netns)
        _run("ip", "-n", d.netns, "link", "set", "lo", "up")
        _run("ip", "-n", tb.hub, "link", "add", d.host_if, "type", "veth", "peer", "name", d.device_if,
             "netns", d.netns)
        _run("ip", "-n", tb.hub, "link", "set", d.host_if, "master", tb.bridge)
        _run("ip", "-n", tb.hub, "link", "set", d.host_if, "up")
        _run("ip", "-n", d.netns, "addr", "add", f"{d.address}/24", "dev", d.device_if)
        _run("ip", "-n", d.netns, "link", "set", d.device_if, "up")
        for ns, dev in ((tb.hub, d.host_if), (d.netns, d.device_if)):
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                 f"{d.rate_bps}bit", "burst", burst, "latency", "100ms")
        if d.cgroup is not None and d.cpus is not None:
            layout = cgroups.detect()
            if layout is None:
                raise EmulationError("; ".join(cgroups.layout_problems()))
            cgroups.create_group(layout, Path(d.cgroup).relative_to(layout.root), d.cpus, CFS_PERIOD_US,
                                 memory_bytes=d.memory_bytes)


def destroy_testbed(tb: Testbed) -> list[str]:
    """Remove what `create_testbed` made (whatever of it exists); problems left, if any."""
    problems = []
    for d in tb.devices:
        if (NETNS_DIR / d.netns).exists():
            _quiet("ip", "netns", "del", d.netns)  # takes the veth pair with it
    if (NETNS_DIR / tb.hub).exists():
        _quiet("ip", "netns", "del", tb.hub)
    for d in tb.devices:
        if d.cgroup is not None and Path(d.cgroup).exists():
            error = _rmdir_when_released(Path(d.cgroup))
            if error is not None:
                problems.append(f"cannot remove cgroup {d.cgroup}: {error} (processes still in it?)")
    if tb.cgroup_root is not None:
        root = Path(tb.cgroup_root)
        for path in (root, root.parent):
            try:
                if path.exists() and path not in (CGROUP_CPU, cgroups.ROOT):
                    path.rmdir()
            except OSError:
                break  # other runs still use the parent
    for ns in (tb.hub, *(d.netns for d in tb.devices)):
        if (NETNS_DIR / ns).exists():
            problems.append(f"network namespace {ns} is still there")
    return problems


def _rmdir_when_released(path: Path, timeout_s: float = 10.0) -> str | None:
    """rmdir a cgroup; an exited process holds it (EBUSY) until its parent reaps it, so retry a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as err:
            if time.monotonic() > deadline:
                return err.strerror
        time.sleep(0.05)


def _cpu_cgroup_of(tid: int) -> Path:
    """The cgroup v1 cpu group a thread is in now."""
    for line in Path(f"/proc/self/task/{tid}/cgroup").read_text().splitlines():
        _, controllers, where = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return CGROUP_CPU / where.lstrip("/")
    return CGROUP_CPU


@contextlib.contextmanager
def cpu_capped(cpus: float) -> Iterator[None]:
    """Run the calling thread under the CPU quota an emulated device with `cpus` gets (cgroup v1, the same
    period), then put it back where it was. Root only, like the testbed; for calibrating device speeds."""
    tid = threading.get_native_id()
    home = _cpu_cgroup_of(tid)
    group = CGROUP_CPU / "edgepart" / f"calibrate-{os.getpid()}-{tid}"
    try:
        group.mkdir(parents=True, exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(max(1000, round(cpus * CFS_PERIOD_US))))
        (group / "tasks").write_text(str(tid))
    except OSError as err:
        _rmdir_when_released(group, timeout_s=1.0)
        raise EmulationError(f"cannot cap this thread at {cpus:g} CPU with a cgroup ({group}): {err}") from err
    try:
        yield
    finally:
        (home / "tasks").write_text(str(tid))
        _rmdir_when_released(group)
        with contextlib.suppress(OSError):
            group.parent.rmdir()  # unless a testbed uses it


def used_indexes() -> set[int]:
    """Testbed indexes whose bridge namespaces exist (taken by live or leftover runs)."""
    result: set[int] = set()
    if not NETNS_DIR.exists():
        return result
    for ns in NETNS_DIR.iterdir():
        if ns.name.startswith("edgepart-") and ns.name.endswith("-hub"):
            out = subprocess.run(["ip", "-n", ns.name, "-o", "link", "show", "type", "bridge"],
                                 capture_output=True, text=True, check=False).stdout
            for token in out.split():
                name = token.rstrip(":").split("@")[0]
                if name.startswith("ep") and name.endswith("br") and name[2:-2].isdigit():
                    result.add(int(name[2:-2]))
    return result


def enter(netns: str | None, cgroup: str | None) -> Callable[[], None]:
    """A preexec_fn: join `cgroup` (cgroup v1 cpu) and the network namespace `netns`, before exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    ns_path = str(NETNS_DIR / netns) if netns else None
    procs = str(Path(cgroup) / "cgroup.procs") if cgroup else None

    def join() -> None:
        if procs is not None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if ns_path is not None:
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns_path}) failed")
            finally:
                os.close(fd)

    return join
