"""The emulated edge testbed: speedup over one device, measured against predicted, and pipelined throughput.

Two settings (`SETTINGS`): HotEdge's, VGG-16 and YOLOv2 on 1, 2, 4 and 8 emulated devices at 0.2 CPU
each (cgroup v1 quota), each in its own network namespace behind a 100 Mbit/s tbf cap; and DeepThings',
YOLOv2-608 on 1 and 4 devices at 0.5 CPU behind 1 Gbit/s; 2 ms link latency added in userspace. Plan with the planner (`auto`, objective latency) on a cluster whose devices
are calibrated as they run, under the setting's quota: their speed by running the whole model through the
executor, their message cost through a chain of partitions (`edgepart.runtime.calibrate.message_cpu`);
deploy it with `up --emulate`, and measure

- latency: median of the gateway's own latency over sequential requests after two warm-up requests,
  against the planner's predicted latency (target within 15 %), and the speedup over the 1-device
  deployment; the fastest and slowest request show how much one request varies here;
- compute: each partition's mean compute time (from the gateway's /v1/status) against the cost
  model's prediction for it (median and worst partition), which separates compute from transfer;
- device CPU: the CPU time each device's partition processes used per latency request (their threads'
  scheduler run time) against the CPU the cost model gives the device's partitions (predicted compute x
  cpus), for the busiest device: what the device spends beyond computing (messages, wake-ups) shows here;
- pipelined throughput: M requests sent at once, M / makespan, against the discrete-event
  simulator's prediction for the same M requests (`edgepart.sim.simulate`);
- the baseline a user compares with: plain PyTorch on one such device (the whole model, torch's default
  kernels, one thread, in a fresh interpreter under the same quota; `calibrate.plain_latency`),
  measured in the same run; "vs torch" is its latency over the deployment's, beside the speedup over
  edgepart on one device.

Needs root (network namespaces, tc, cgroups); without it the benchmark prints why and skips.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._testbed import RESULTS, cannot_emulate, emulate_lock
from edgepart.graph.loader import ModelRef, load_graph, load_model
from edgepart.planner.cluster import cluster_from_spec
from edgepart.planner.evaluate import task_compute
from edgepart.runtime.calibrate import (
    calibrated,
    message_cpu,
    per_core_speed,
    plain_latency,
    process_cpu_seconds,
)
from edgepart.runtime.client import infer
from edgepart.runtime.demo import export_weights
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import plan_deployment
from edgepart.sim.simulate import simulate
from edgepart.spec import DNNDeployment, deployment_from_dict


@dataclass(frozen=True)
class Setting:
    """Models deployed on identical emulated devices: their CPU quota, link and the device counts tried."""

    models: tuple[str, ...]
    cpus: float
    bandwidth: str
    device_counts: tuple[int, ...]


SETTINGS = (
    Setting(("vgg16", "yolov2"), 0.2, "100Mbps", (1, 2, 4, 8)),  # HotEdge's testbed
    Setting(("yolov2-608",), 0.5, "1Gbps", (1, 4)),  # DeepThings' YOLOv2-608 on four devices
)


def _deployment(model: str, weights: Path, devices: int, setting: Setting) -> DNNDeployment:
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
        "metadata": {"name": f"bench-{model.replace('_', '-')}-{devices}"},
        "spec": {
            "model": {"name": model, "weights": str(weights)}, "objective": "latency", "solver": "auto",
            "devices": [{"name": f"edge-{i}", "cpus": setting.cpus, "memory": "2Gi"} for i in range(devices)],
            "network": {"bandwidth": setting.bandwidth, "latency": "2ms"}, "requestTimeout": "300s",
        },
    })


def _device_cpu(processes: list[Any]) -> dict[str, float]:
    result: dict[str, float] = {}
    for proc in processes:
        if proc.role == "partition":
            result[proc.device] = result.get(proc.device, 0.0) + process_cpu_seconds(proc.pid)
    return result


@dataclass(frozen=True)
class Run:
    """How one deployment is measured, and where."""

    setting: Setting
    weights: Path
    speed: float  # per-core speed over the reference profile, calibrated under the quota
    message_s: float  # CPU per message end under the quota
    requests: int
    burst: int
    warmup: int
    root: Path


async def _measure(model: str, devices: int, run: Run) -> dict[str, Any]:
    setting = run.setting
    deployment = calibrated(_deployment(model, run.weights, devices, setting), run.speed, run.message_s)
    graph = load_graph(ModelRef(model))
    planned = await asyncio.to_thread(plan_deployment, deployment.spec, graph=graph)
    plan = planned.plan
    cluster = cluster_from_spec(deployment.spec.cluster())
    burst, requests = run.burst, run.requests
    sim = await asyncio.to_thread(simulate, plan, graph, cluster, None, burst)
    runtime = LocalRuntime(run.root)
    state = await runtime.up(deployment, port=0, emulate=True, plan=plan, ready_timeout_s=900)
    try:
        x = torch.randn(graph.input_shape)
        async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
            for _ in range(run.warmup):  # the first requests fault in each process's working memory
                await infer(state.gateway_url, x, client=client, timeout_s=600)
            cpu_before = _device_cpu(state.processes)
            latencies = []
            for _ in range(requests):
                result = await infer(state.gateway_url, x, client=client, timeout_s=600)
                latencies.append(result.server_latency_s or result.latency_s)
            cpu_after = _device_cpu(state.processes)
            status = (await client.get(state.gateway_url + "/v1/status")).json()
            started = time.perf_counter()
            await asyncio.gather(*(infer(state.gateway_url, x, client=client, timeout_s=600) for _ in range(burst)))
            makespan = time.perf_counter() - started
    finally:
        await runtime.down(state.name)
    assert plan.predicted is not None
    # each partition's mean compute (warm-up and latency requests) against the cost model's prediction
    ratios = []
    for part in status["partitions"]:
        predicted = task_compute(plan.task(part["id"]), graph, cluster)
        if part.get("compute_mean_s") and predicted > 1e-3:
            ratios.append(part["compute_mean_s"] / predicted)
    # CPU per request of each device against the CPU its partitions' predicted compute takes
    predicted_cpu: dict[str, float] = {}
    for task in plan.tasks:
        predicted_cpu[task.device] = (predicted_cpu.get(task.device, 0.0)
                                      + task_compute(task, graph, cluster) * setting.cpus)
    used = {d: (cpu_after[d] - cpu_before.get(d, 0.0)) / requests for d in cpu_after}
    busiest = max(used, key=lambda d: used[d])
    return {
        "device_cpu_s": used[busiest], "device_cpu_predicted_s": predicted_cpu.get(busiest, 0.0),
        "busiest_device": busiest,
        "compute_ratio_median": statistics.median(ratios) if ratios else None,
        "compute_ratio_max": max(ratios) if ratios else None,
        "model": model, "devices": devices, "cpus": setting.cpus, "bandwidth": setting.bandwidth,
        "solver": plan.solver, "partitions": len(plan.tasks),
        "stages": len(plan.stage_view()), "measured_s": statistics.median(latencies), "predicted_s": plan.predicted.latency_s,
        "measured_min_s": min(latencies), "measured_max_s": max(latencies),
        "throughput_measured": burst / makespan, "throughput_simulated": burst / sim.makespan_s,
    }


async def _run(quick: bool, settings: tuple[Setting, ...]) -> list[dict[str, Any]]:
    rows = []
    requests, burst, warmup = (2, 4, 1) if quick else (9, 8, 2)
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-testbed-"))
    try:
        for setting in settings:
            cpus = setting.cpus
            message_s = await message_cpu(cpus, root=scratch / "probe")
            print(f"a message costs a {cpus}-CPU device {message_s * 1e3:.2f} ms of CPU at each end "
                  f"({message_s / cpus * 1e3:.1f} ms under its quota; measured through a chain of partitions)",
                  flush=True)
            for model in setting.models:
                ref = ModelRef(model)
                whole = await asyncio.to_thread(load_model, ref)
                speed = await asyncio.to_thread(per_core_speed, ref, whole, 5, cpus)  # inside the quota
                weights = await asyncio.to_thread(export_weights, whole, scratch / f"{model}.safetensors")
                del whole
                print(f"{model}: a {cpus}-CPU device here runs at {speed * cpus:.3f}x the reference profile "
                      f"(calibrated under the quota)", flush=True)
                plain = await asyncio.to_thread(plain_latency, ModelRef(model, weights=str(weights)), cpus,
                                                2 if quick else 5)
                print(f"{model}: plain PyTorch on one {cpus}-CPU device (default kernels, one thread) "
                      f"{plain.median_s:.2f} s ({plain.min_s:.2f}-{plain.max_s:.2f})", flush=True)
                run = Run(setting, weights, speed, message_s, requests, burst, warmup, scratch / "run")
                for devices in setting.device_counts:
                    row = await _measure(model, devices, run)
                    row.update(plain_s=plain.median_s, plain_min_s=plain.min_s, plain_max_s=plain.max_s)
                    rows.append(row)
                    print(f"  {devices} devices: {row['partitions']} partitions, measured {row['measured_s']:.2f} s, "
                          f"predicted {row['predicted_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def _compute_ratios(row: dict[str, Any]) -> str:
    """Median and worst partition: mean measured compute / predicted compute."""
    if row.get("compute_ratio_median") is None:
        return "-"
    return f"{row['compute_ratio_median']:.2f}/{row['compute_ratio_max']:.2f}"


def _cpu_ratio(row: dict[str, Any]) -> str:
    """The busiest device: CPU its processes used per request / CPU of its partitions' predicted compute."""
    if not row.get("device_cpu_predicted_s"):
        return "-"
    return f"{row['device_cpu_s'] / row['device_cpu_predicted_s']:.2f}"


def _plain(row: dict[str, Any]) -> str:
    """Plain PyTorch's latency on one device (the whole model, default kernels, one thread, the same quota)."""
    return f"{row['plain_s']:.2f}s" if row.get("plain_s") else "-"


def _vs_plain(row: dict[str, Any]) -> str:
    """The speedup a user sees: plain PyTorch on one device over this deployment."""
    return f"{row['plain_s'] / row['measured_s']:.2f}x" if row.get("plain_s") else "-"


def _print(rows: list[dict[str, Any]]) -> None:
    header = (f"{'model':10} {'cpu':>4} {'dev':>3} {'parts':>5} {'measured':>9} {'min-max':>9} {'predicted':>9} {'meas/pred':>9} "
              f"{'compute m/p':>11} {'dev cpu m/p':>11} {'speedup':>7} {'pred.spd':>8} {'torch':>7} {'vs torch':>8} "
              f"{'thr/s':>6} {'sim/s':>6} {'thr/sim':>7}")
    print(header)
    print("-" * len(header))
    base: dict[str, dict[str, Any]] = {r["model"]: r for r in rows if r["devices"] == 1}
    for r in rows:
        one = base.get(r["model"], r)
        spread = f"{r['measured_min_s']:.2f}-{r['measured_max_s']:.2f}" if "measured_min_s" in r else "-"
        print(f"{r['model']:10} {r.get('cpus', 0.2):>4} {r['devices']:>3} {r['partitions']:>5} {r['measured_s']:>8.2f}s {spread:>9} "
              f"{r['predicted_s']:>8.2f}s "
              f"{r['measured_s'] / r['predicted_s']:>9.2f} {_compute_ratios(r):>11} {_cpu_ratio(r):>11} "
              f"{one['measured_s'] / r['measured_s']:>6.2f}x "
              f"{one['predicted_s'] / r['predicted_s']:>7.2f}x {_plain(r):>7} {_vs_plain(r):>8} "
              f"{r['throughput_measured']:>6.2f} "
              f"{r['throughput_simulated']:>6.2f} {r['throughput_measured'] / r['throughput_simulated']:>7.2f}")


def main(quick: bool, settings: tuple[Setting, ...] = SETTINGS) -> None:
    out = RESULTS / "testbed.json"
    if cannot_emulate(out):
        return
    with emulate_lock():
        rows = asyncio.run(_run(quick, settings))
    _print(rows)
    out.write_text(json.dumps({"quick": quick, "rows": rows}, indent=2))
    print(f"wrote {out}")
