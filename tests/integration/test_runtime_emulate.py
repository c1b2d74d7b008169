"""Emulated devices: network namespaces with tbf-capped links and cgroup v1 CPU quotas (root only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime import emulate
from edgepart.runtime.calibrate import message_cpu
from edgepart.runtime.client import infer
from edgepart.runtime.emulate import (
    EmulationError,
    create_testbed,
    destroy_testbed,
    support_problems,
    used_indexes,
)
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import with_cpu_speeds
from edgepart.spec import DeviceSpec, NetworkSpec, deployment_from_dict, load_deployment

needs_root = pytest.mark.skipif(bool(support_problems()), reason="emulation needs root, iproute2 and cgroup v1 cpu: "
                                + "; ".join(support_problems()))

TINY = '''
import torch
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
                         nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
'''


def _free_index() -> int:
    return next(i for i in range(200, 255) if i not in used_indexes())


def _in_ns(netns: str, code: str, timeout: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_without_root_the_message_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 1000)
    problems = support_problems()
    assert problems and "--emulate needs root" in problems[0] and "drop --emulate" in problems[0]
    with pytest.raises(EmulationError, match="needs root"):
        create_testbed("nope", 0, [DeviceSpec(name="a")], NetworkSpec())


@needs_root
def test_a_testbed_caps_bandwidth_and_cpu_and_cleans_up() -> None:
    run = f"t{os.getpid()}"
    devices = [DeviceSpec(name="a", cpus=0.5), DeviceSpec(name="b")]
    testbed = create_testbed(run, _free_index(), devices, NetworkSpec(bandwidth="40Mbps", latency="1ms"))
    try:
        a, b = testbed.devices
        assert Path(f"/run/netns/{a.netns}").exists() and Path(f"/run/netns/{testbed.hub}").exists()
        qdisc = subprocess.run(["ip", "netns", "exec", a.netns, "tc", "qdisc", "show", "dev", a.device_if],
                               capture_output=True, text=True, check=True).stdout
        assert "tbf" in qdisc and "40Mbit" in qdisc
        assert a.cgroup is not None and b.cgroup is None
        quota = int(Path(a.cgroup, "cpu.cfs_quota_us").read_text())
        period = int(Path(a.cgroup, "cpu.cfs_period_us").read_text())
        assert quota / period == 0.5
        nbytes = 2_000_000
        server = _in_ns(b.netns, f"""
import socket
s = socket.create_server(("{b.address}", 9555)); c, _ = s.accept(); n = 0
while (d := c.recv(1 << 20)): n += len(d)
print(n)""")
        time.sleep(1.0)
        client = _in_ns(a.netns, f"""
import socket, time
for _ in range(50):
    try:
        c = socket.create_connection(("{b.address}", 9555)); break
    except OSError:
        time.sleep(0.1)
t = time.perf_counter(); c.sendall(b"x" * {nbytes}); c.shutdown(socket.SHUT_WR); c.recv(1)
print(time.perf_counter() - t)""")
        seconds = float(client.communicate(timeout=60)[0])
        assert int(server.communicate(timeout=60)[0]) == nbytes
        # the cap's own counters say it carried the bytes and held packets back; a lower bound on the rate
        # would be a wall-clock window (unreliable on a shared host), an upper bound is not
        stats = subprocess.run(["ip", "netns", "exec", a.netns, "tc", "-s", "qdisc", "show", "dev", a.device_if],
                               capture_output=True, text=True, check=True).stdout
        sent = re.search(r"Sent (\d+) bytes \d+ pkt \(dropped \d+, overlimits (\d+)", stats)
        assert sent is not None, stats
        assert int(sent.group(1)) >= nbytes and int(sent.group(2)) > 0, stats
        mbps = nbytes * 8 / seconds / 1e6
        assert mbps < 45, f"{mbps:.1f} Mbit/s through a 40 Mbit/s cap"
    finally:
        problems = destroy_testbed(testbed)
    assert problems == []
    assert not any(Path(f"/run/netns/{ns}").exists() for ns in (testbed.hub, *(d.netns for d in testbed.devices)))
    assert not Path(emulate.CGROUP_CPU, "edgepart", run).exists()


@needs_root
async def test_up_emulate_runs_and_down_removes_everything(tmp_path: Path) -> None:
    model = tmp_path / "tiny_emulated.py"
    model.write_text(TINY)
    name = f"emu{os.getpid()}"
    manifest = deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": f"{model}:tiny", "inputShape": [1, 3, 32, 32]}, "solver": "ftp-grid",
                 "solverOptions": {"grid": "2x1"}, "devices": [{"name": "a", "cpus": 0.5}, {"name": "b", "cpus": 0.5}],
                 "network": {"bandwidth": "100Mbps", "latency": "20ms"}, "requestTimeout": "20s",
                 "exactKernels": True},
    })
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(manifest, port=0, emulate=True, ready_timeout_s=180)
    try:
        assert state.gateway_url.startswith("http://127.0.0.1:") and state.testbed is not None
        procs = {p.id: p for p in state.processes}
        assert procs["s0p1"].netns == state.testbed.device("b").netns
        assert procs["s0p1"].url.startswith("http://10.123.")
        cgroup = Path(procs["s0p1"].cgroup or "")
        assert str(procs["s0p1"].pid) in (cgroup / "cgroup.procs").read_text().split()
        use_exact_kernels(True)
        reference = load_model(ModelRef(f"{model}:tiny", (1, 3, 32, 32)))
        x = torch.randn(1, 3, 32, 32)
        results = [await infer(state.gateway_url, x) for _ in range(3)]
        with torch.no_grad():
            torch.testing.assert_close(results[-1].output, reference(x), atol=1e-5, rtol=1e-4)
        # gateway -> b (20 ms) and b -> a (20 ms) are emulated hops; a's tile stays on a
        assert min(r.latency_s for r in results) >= 0.040
        statuses = await runtime.status(name)
        assert statuses[0].ready and statuses[0].emulated
    finally:
        await runtime.down(name)
    assert not any(Path("/run/netns").glob(f"edgepart-{name}-*"))
    assert not Path(emulate.CGROUP_CPU, "edgepart", name).exists()


def test_emulated_devices_are_costed_at_their_cpu_quota() -> None:
    manifest = deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "q"},
        "spec": {"model": {"name": "vgg16"}, "devices": [
            {"name": "a", "cpus": 0.2}, {"name": "b", "cpus": 0.5, "speed": 3.0}, {"name": "c"}]},
    })
    speeds = [d.speed for d in with_cpu_speeds(manifest, per_core=0.5).spec.devices]
    assert speeds == [0.1, 3.0, None]  # an explicit speed wins; no quota, no change
    costs = [d.message_cost for d in with_cpu_speeds(manifest, 0.5, message_cpu_s=1e-3).spec.devices]
    assert costs == ["5ms", "2ms", None]  # a message's CPU over the device's quota; no quota, the profile's


@needs_root
def test_cpu_capped_throttles_the_calling_thread_and_puts_it_back() -> None:
    def busy() -> None:
        total = 0
        for i in range(2_000_000):
            total += i

    with emulate.cpu_capped(0.2):
        group = emulate._cpu_cgroup_of(threading.get_native_id())
        busy()
        assert group.name.startswith("calibrate-")
        throttled = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    busy()
    assert not emulate._cpu_cgroup_of(threading.get_native_id()).name.startswith("calibrate-")
    # ~80 ms of CPU under 2 ms per 10 ms period cannot run without being throttled: the group's own counter
    # says so (a wall-clock window is unreliable on a shared 2-vCPU host; timings belong in benchmarks)
    assert int(throttled["nr_throttled"]) >= 3
    assert not group.exists()  # its group is gone


@needs_root
async def test_the_message_probe_measures_a_chain_of_partitions_under_the_quota_and_cleans_up() -> None:
    cpu = await message_cpu(0.5, requests=3, gap_s=0.05)
    # a real hop costs a partition process tenths of a millisecond of CPU or more; nothing near a second
    assert 5e-5 < cpu < 0.05
    assert not any(Path("/run/netns").glob(f"edgepart-msgprobe-{os.getpid()}*"))
    assert not Path(emulate.CGROUP_CPU, "edgepart", f"msgprobe-{os.getpid()}").exists()


class _FakeMeasure:
    """A quarter of the reference per core and 3 ms of CPU per message end, whatever the quota."""

    def __init__(self) -> None:
        self.calls = 0

    def speed(self, ref: ModelRef, cpus: float) -> float:
        self.calls += 1
        return 0.25

    async def message(self, cpus: float) -> float:
        self.calls += 1
        return 3e-3


@needs_root
async def test_up_emulate_plans_with_the_calibrated_devices_and_status_says_so(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepart.runtime import commands
    from edgepart.runtime.device_calibration import CalibrationSettings
    from edgepart.runtime.planning import plan_deployment

    model = tmp_path / "tiny_cal.py"
    model.write_text(TINY)
    name = f"cal{os.getpid()}"
    manifest = tmp_path / "cal.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": f"{model}:tiny", "inputShape": [1, 3, 32, 32]}, "solver": "single",
                 "devices": [{"name": "a", "cpus": 0.5}, {"name": "b", "cpus": 0.5}],  # one partition: quick to start
                 "network": {"bandwidth": "100Mbps", "latency": "1ms"}, "requestTimeout": "20s"}}))
    runtimes: list[LocalRuntime] = []  # `up`'s own runtime stops what it started (and reaps its children)

    def runtime(root: Path | None, echo: Callable[[str], None]) -> LocalRuntime:
        runtimes.append(LocalRuntime(root, echo=echo))
        return runtimes[-1]

    monkeypatch.setattr(commands, "LocalRuntime", runtime)
    lines: list[str] = []
    measure = _FakeMeasure()
    settings = CalibrationSettings(cache_path=tmp_path / "calibration.json")
    state = await commands.up(manifest, port=0, emulate=True, plan_path=None, timeout_s=120, echo=lines.append,
                              root=tmp_path / "run", supervise=False, calibration=settings, measure=measure)
    try:
        assert measure.calls == 2 and state.calibration is not None
        assert [(d.speed, d.message_cost) for d in state.calibration.devices] == [(0.125, "6ms"), (0.125, "6ms")]
        calibrated = with_cpu_speeds(load_deployment(manifest), 0.25, 3e-3)
        expected = plan_deployment(calibrated.spec).plan.predicted
        assert expected is not None and state.predicted_latency_s == expected.latency_s
        assert any("devices calibrated" in line and "a (0.5 CPU): speed 0.125, 6ms/message" in line for line in lines)
        shown: list[str] = []
        await commands.status(name, shown.append, root=tmp_path / "run")
        assert any("devices calibrated" in line for line in shown)
    finally:
        await runtimes[0].down(name)


@needs_root
def test_plain_pytorch_is_timed_in_a_fresh_interpreter_under_the_quota(tmp_path: Path) -> None:
    from edgepart.runtime.calibrate import plain_latency

    model = tmp_path / "tiny_plain.py"
    model.write_text(TINY)
    plain = plain_latency(ModelRef(f"{model}:tiny", (1, 3, 32, 32)), 0.5, repeats=3)
    assert 0 < plain.min_s <= plain.median_s <= plain.max_s < 5
