"""Calibration: what this host's cores and an emulated device's messages cost, against the planner's reference.

The planner costs devices from its reference profile times a speed, and messages from a per-message
software time. For emulated devices both depend on this host and on the CPU quota they run under, so
`make demo` and the testbed benchmark measure them here first:

- `per_core_speed`: the whole model through the executor, on one core or under a quota;
- `message_cpu`: a chain of partitions that compute next to nothing, under a quota;
- `host_profile`: this host's own per-op cost model (the profiler's regressions, one thread), for
  deployments whose layers the reference profile's single speed ratio misjudges (AlexNet's convolutions run
  1.45x the reference here, its fully connected layers 0.8x: one ratio for the whole model put 32% too much
  time on the device holding the convolutions);
- `calibrate_host`: all three for the CPU quotas of a deployment's devices (`HostCalibration`), which
  `with_host_calibration` puts on its emulated devices: what the testbed benchmarks cost devices with;
- `calibrated`: a deployment whose emulated devices carry the first two (the reference profile at one speed);
- `plain_latency`: the baseline a user compares with, plain PyTorch on one such device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from edgepart.errors import EdgepartError
from edgepart.executor import Executor, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, input_shape_of, load_graph, load_model, trace_ref
from edgepart.plan import make_plan
from edgepart.planner.builders import single_stage
from edgepart.planner.cluster import reference_profile
from edgepart.profiler.microbench import partition_allocator
from edgepart.profiler.run import ProfileConfig, profile_device
from edgepart.runtime.client import infer
from edgepart.runtime.emulate import cpu_capped, support_problems
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import model_ref, with_cpu_speeds
from edgepart.spec import DeviceSpec, DNNDeployment, deployment_from_dict

__all__ = ["BUSY_LOOP", "HostCalibration", "PlainLatency", "calibrate_host", "calibrated", "host_profile",
           "message_cpu", "per_core_speed", "plain_latency", "process_cpu_seconds", "with_host_calibration"]


def per_core_speed(ref: ModelRef, model: torch.nn.Module, repeats: int = 5, cpus: float | None = None, *,
                   exact_kernels: bool = False, fastest: bool = False) -> float:
    """This host's speed on one core, relative to the planner's reference profile.

    The whole model runs as one partition through the executor, as partitions compute (the deployment's
    kernels: `exact_kernels` or oneDNN's, row-chunked native convolutions, the services' warm heap, one
    thread), the median of `repeats` after a warm-up
    (a throttled device computes for seconds, so its sustained speed matters, not the host's best moment).
    Timing the plain module instead measured a different code path (one huge convolution scratch buffer,
    page-faulted on each call) and mis-calibrated every emulated device by 10-15%.

    With `cpus` (root), the timing runs under the CPU quota an emulated device with `cpus` gets
    (`emulate.cpu_capped`) and the result is its speed divided by `cpus`: a throttled process runs slower
    than its share of a free core (it restarts cold after every throttled slice), and that is what the
    devices will do.

    `fastest` takes the fastest of the `repeats` instead of the median: for a free core, whose speed other
    processes on the host can only lower (a loaded host's median made the free core look 3x slower than it is).
    """
    partition_allocator()
    use_exact_kernels(exact_kernels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gm, graph = trace_ref(ref, model)
        runner = Executor(gm, graph).runner(0, len(graph), Region.full(graph.shape_at(len(graph))))
        # the rows and columns the whole output reads (a model may leave the input's last row unread)
        x = torch.randn(graph.input_shape[0], *runner.input_region.shape)
        with torch.no_grad(), cpu_capped(cpus) if cpus is not None else contextlib.nullcontext():
            runner(x)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                runner(x)
                times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    profile = reference_profile()
    predicted = sum(profile.layer_time(layer, None, graph.batch) for layer in graph.layers)
    taken = min(times) if fastest else statistics.median(times)
    return predicted / taken / (cpus or 1.0)


def host_profile(models: Sequence[str], path: Path) -> Path:
    """Profile this host (quick: the layers of `models`, one thread, the kernels partitions run) into `path`.

    A device under a CPU quota is then this profile at speed cpus x (its per-core speed under the quota /
    the free core's, both from `per_core_speed`)."""
    profile = profile_device(ProfileConfig(name="host", models=tuple(models), quick=True, threads=1))
    path.write_text(profile.to_json())
    return path


# a chain of partitions that compute next to nothing: what they cost their device is their messages
PROBE_MODEL = """
from torch import nn


def chain():
    return nn.Sequential(*(nn.ReLU() for _ in range(4)))
"""
PROBE_INPUT = (1, 32, 40, 40)  # 200 KiB pieces, the size of a typical split plan's (the model has no per-byte CPU)
# keeps a core busy while the probe's processes idle between requests, as the other devices' compute does
BUSY_LOOP = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def process_cpu_seconds(pid: int) -> float:
    """CPU time all threads of `pid` have run (the scheduler's own count, in ns, not tick-sampled); 0 once gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


async def message_cpu(cpus: float, *, requests: int = 12, gap_s: float = 0.5, root: Path | None = None) -> float:
    """CPU seconds one message costs an emulated device with `cpus` at each end, measured through the data plane.

    The per-message figure in the reference profile was measured on a free core. A device under a small
    CPU quota pays more per message: every message wakes a process whose caches the other devices' work
    has evicted, and its quota runs out in slices. So this runs a chain of 4 partitions that compute next to
    nothing (ReLUs on 200 KiB tensors) on one emulated device with `cpus`, sends requests through it one at a
    time, `gap_s` apart while another process keeps a core busy, and divides the device's CPU per request (its
    processes' scheduler run time) by the 8 message ends it handles (each partition receives once and sends
    once). Under the quota one end then takes that over `cpus` seconds (`with_cpu_speeds`). What a partition
    does per request besides its layers (assembling its tile, handing it to its compute thread) is counted
    with its messages. Root only, like `up --emulate`.
    """
    problems = support_problems()
    if problems:
        raise EdgepartError("measuring the message cost needs emulated devices: " + "; ".join(problems))
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-msgprobe-"))
    busy: subprocess.Popen[bytes] | None = None
    try:
        source = scratch / "probe_chain.py"
        source.write_text(PROBE_MODEL)
        deployment = deployment_from_dict({
            "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": f"msgprobe-{os.getpid()}"},
            "spec": {"model": {"name": f"{source}:chain", "inputShape": list(PROBE_INPUT)},
                     "devices": [{"name": "probe", "cpus": cpus}], "requestTimeout": "60s"},
        })
        ref = model_ref(deployment.spec.first_model)
        graph = load_graph(ref)
        stages = tuple(single_stage(graph, i, i, i + 1, "probe") for i in range(len(graph)))
        plan = make_plan(ref, "chain", "latency", ("probe",), stages).to_plan()
        runtime = LocalRuntime(root or scratch / "run", echo=lambda message: None)
        state = await runtime.up(deployment, port=0, emulate=True, plan=plan)
        try:
            partitions = [p.pid for p in state.processes if p.role == "partition"]
            x = torch.randn(PROBE_INPUT)
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
                for _ in range(2):  # warm-up
                    await infer(state.gateway_url, x, client=client, timeout_s=60)
                await asyncio.sleep(gap_s)
                before = sum(process_cpu_seconds(pid) for pid in partitions)
                for _ in range(requests):
                    await infer(state.gateway_url, x, client=client, timeout_s=60)
                    await asyncio.sleep(gap_s)
                used = sum(process_cpu_seconds(pid) for pid in partitions) - before
        finally:
            await runtime.down(state.name)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    return used / requests / (2 * len(stages))


# plain PyTorch in a fresh interpreter: torch's default kernels and allocator, nothing edgepart sets for partitions
PLAIN_SCRIPT = """
import json, statistics, sys, time
import torch
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime.emulate import cpu_capped

args = json.loads(sys.argv[1])
ref = ModelRef(args["name"], tuple(args["shape"]), args["weights"], args["seed"])
model = load_model(ref).eval()
torch.set_num_threads(1)
x = torch.randn(ref.input_shape)
times = []
with torch.no_grad(), cpu_capped(args["cpus"]):
    model(x)
    for _ in range(args["repeats"]):
        started = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - started)
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}))
"""


@dataclass(frozen=True)
class PlainLatency:
    """Plain PyTorch's latency on one emulated device: the whole model, default kernels, one thread."""

    median_s: float
    min_s: float
    max_s: float


def plain_latency(ref: ModelRef, cpus: float, repeats: int = 3, timeout_s: float = 1800) -> PlainLatency:
    """What a user compares a deployment with: `model(x)` in plain PyTorch on one device with `cpus`.

    A fresh interpreter loads the model (the same weights), keeps torch's default kernels (oneDNN where it
    applies; partitions may run others) and allocator, sets one thread, and times the whole model under the
    CPU quota an emulated device gets (`emulate.cpu_capped`): the median of `repeats` after a warm-up.
    Root only, like the emulated devices it is compared with.
    """
    problems = support_problems()
    if problems:
        raise EdgepartError("timing plain PyTorch under a CPU quota needs root: " + "; ".join(problems))
    args = {"name": ref.name, "shape": list(input_shape_of(ref)), "weights": ref.weights, "seed": ref.seed,
            "cpus": cpus, "repeats": repeats}
    done = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise EdgepartError(f"plain PyTorch run of {ref.name} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return PlainLatency(float(result["median_s"]), float(result["min_s"]), float(result["max_s"]))


def calibrated(deployment: DNNDeployment, speed_per_core: float, message_cpu_s: float | None = None) -> DNNDeployment:
    """Devices without a speed or profile get speed = cpus x `speed_per_core` (1 cpu when unset), and with
    `message_cpu_s` (`message_cpu`) a message cost of `message_cpu_s` / cpus."""
    devices = [d if d.cpus is not None or d.speed is not None or d.profile is not None
               else d.model_copy(update={"cpus": 1.0}) for d in deployment.spec.devices]
    whole = deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"devices": devices})})
    return with_cpu_speeds(whole, speed_per_core, message_cpu_s)


@dataclass(frozen=True)
class HostCalibration:
    """What emulated devices on this host are costed with: this host's profile, and per CPU quota its share of
    a free core and what a message costs (`calibrate_host`; `with_host_calibration` applies it)."""

    profile: Path
    """This host's per-op profile (`host_profile`: one free core, one thread)."""
    quota_factor: dict[float, float]
    """Per CPU quota: the per-core speed under it over a free core's (`per_core_speed`), at most 1."""
    message_cpu_s: dict[float, float]
    """Per CPU quota: CPU seconds one message costs a device at each end (`message_cpu`)."""
    load_average: float
    """The host's 1-minute load average while calibrating (the highest seen)."""
    cores: int
    measured_factor: dict[float, float] | None = None
    """`quota_factor` before the clamp at 1 (above 1: the free core was timed while other work slowed it)."""

    @property
    def warning(self) -> str | None:
        """Why the figures may be off: more runnable processes than cores while measuring."""
        if self.load_average <= self.cores:
            return None
        return (f"host load average {self.load_average:.1f} exceeds its {self.cores} cores: calibration and "
                f"measurements share the cores with other work, so measured against predicted is distorted")

    def summary(self) -> dict[str, Any]:
        """For the results JSON."""
        return {"profile": "this host's (quick, one thread)",
                "quota_factor": {str(c): f for c, f in sorted(self.quota_factor.items())},
                "measured_factor": {str(c): f for c, f in sorted((self.measured_factor or {}).items())},
                "message_cpu_s": {str(c): m for c, m in sorted(self.message_cpu_s.items())},
                "load_average": self.load_average, "cores": self.cores, "warning": self.warning}


async def calibrate_host(models: Sequence[ModelRef], quotas: Iterable[float], scratch: Path, *, repeats: int = 5,
                         message_requests: int = 12) -> HostCalibration:
    """Profile this host for `models` into `scratch` and measure every quota in `quotas` (root).

    The quota factors are timed with the first model: a free core's speed is the fastest of `repeats` (other
    work on the host only slows it), a quota's the median (a throttled device's sustained speed), and the
    factor is clamped at 1 (a quota cannot make a core faster; a free core timed under load can look slower).
    """
    loads = [os.getloadavg()[0]]
    scratch.mkdir(parents=True, exist_ok=True)
    profile = await asyncio.to_thread(host_profile, [m.name for m in models], scratch / "host-profile.json")
    ref = models[0]
    whole = await asyncio.to_thread(load_model, ref)
    free = await asyncio.to_thread(per_core_speed, ref, whole, repeats, fastest=True)
    measured = {}
    for cpus in sorted(set(quotas)):
        measured[cpus] = await asyncio.to_thread(per_core_speed, ref, whole, repeats, cpus) / free
    factors = {cpus: min(1.0, f) for cpus, f in measured.items()}
    del whole
    messages = {cpus: await message_cpu(cpus, requests=message_requests, root=scratch / f"probe-{cpus}")
                for cpus in factors}
    loads.append(os.getloadavg()[0])
    return HostCalibration(profile, factors, messages, max(loads), os.cpu_count() or 1, measured)


def with_host_calibration(deployment: DNNDeployment, calibration: HostCalibration) -> DNNDeployment:
    """Devices with `cpus` and neither `speed` nor `profile` get this host's profile at speed cpus x their quota's
    factor; those without `messageCost` get their quota's message CPU / cpus (the time it takes under the quota)."""
    def device(d: DeviceSpec) -> DeviceSpec:
        cpus = d.cpus
        if cpus is None:
            return d
        if cpus not in calibration.quota_factor:
            raise EdgepartError(f"device {d.name!r}: its quota {cpus} CPU was not calibrated "
                                f"(calibrated: {sorted(calibration.quota_factor)})")
        if d.speed is None and d.profile is None:
            d = d.model_copy(update={"profile": str(calibration.profile),
                                     "speed": round(cpus * calibration.quota_factor[cpus], 4)})
        if d.message_cost is None:
            d = d.model_copy(update={"message_cost": f"{calibration.message_cpu_s[cpus] / cpus * 1e3:.4g}ms"})
        return d

    devices = [device(d) for d in deployment.spec.devices]
    return deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"devices": devices})})
