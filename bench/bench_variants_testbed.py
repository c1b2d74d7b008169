"""Accuracy-aware data partitioning on the emulated testbed: measured vs predicted throughput and accuracy.

Setup: four emulated devices (each its own network namespace behind a 1 Gbit/s tbf cap, cgroup v1
CPU quotas of 0.6, 0.4, 0.25 and 0.25 CPU), the shipped digits family, a dispatcher on the first
device (`edgepart up --emulate` of a variants deployment) and one variant worker per device.

1. θ[n][m] is measured, not taken from the cost model: each variant computes random digits in
   batches of 32 for 2 s under each device's CPU quota (`emulate.cpu_capped`). The target is 1.3x what the
   most accurate variant sustains everywhere, so the policy mixes variants.
2. A stream of requests of 512 held-out digits (image j of request r is held-out digit
   (512 r + j) mod 360), 4 in flight from the client. The first half calibrates what the data plane
   costs beyond compute: the dispatcher's CPU per request (its process's scheduler time) and each
   worker's CPU per part beyond its compute. The second half is measured: throughput (images / wall
   time) against (a) the table's Θ (compute only) and (b) the prediction with those costs
   (`policy.variants_plan.stream_throughput`, the configuration the manager holds then, with its θ);
   the measured accuracy of the answers against the expected one (each answering variant's held-out
   accuracy, weighted by its images).
3. One worker that takes images is killed mid-stream: every request is answered (counted), the
   manager re-plans over the three that remain, and the new configuration and accuracy are reported.

Root only (network namespaces, tc, cgroups); holds /tmp/edgepart-emulate.lock. Without root it says
why and skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._testbed import RESULTS, cannot_emulate, emulate_lock
from edgepart.graph.loader import load_model
from edgepart.policy.dse import pareto_front
from edgepart.policy.select import select
from edgepart.policy.throughput import ThroughputEstimates
from edgepart.policy.variants_plan import DispatchCost, explore, stream_throughput
from edgepart.runtime.calibrate import process_cpu_seconds
from edgepart.runtime.emulate import cpu_capped
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.runtime.variants_local import infer_parts, up_variants, worker_id
from edgepart.spec import deployment_from_dict
from edgepart.variants import model_ref, shipped_family
from edgepart.variants.train import load_split

CPUS = {"jetson": 0.6, "rpi4": 0.4, "odroid-a": 0.25, "odroid-b": 0.25}
BATCH = 32
IMAGES = 512
IN_FLIGHT = 4
TARGET_FACTOR = 1.3


def measure_theta(seconds: float = 1.5) -> dict[str, dict[str, float]]:
    """Images/s of every variant under every device's CPU quota (batches of BATCH), each for at least
    `seconds` (many CFS periods: a short burst runs unthrottled on the period's budget)."""
    images = 1024
    family = shipped_family().family
    models = {v.name: load_model(model_ref(v)) for v in family.variants}
    x = torch.rand((images, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    by_quota: dict[float, dict[str, float]] = {}
    torch.set_num_threads(1)
    for quota in sorted(set(CPUS.values())):
        row = {}
        with cpu_capped(quota), torch.no_grad():
            for name, model in models.items():
                model(x[:BATCH])
                started = time.perf_counter()
                done = 0
                while time.perf_counter() - started < seconds:
                    for i in range(0, images, BATCH):
                        model(x[i:i + BATCH])
                    done += images
                row[name] = done / (time.perf_counter() - started)
        by_quota[quota] = row
    return {device: by_quota[quota] for device, quota in CPUS.items()}


def document(target: float) -> dict[str, Any]:
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "variants-testbed"},
            "spec": {"variants": {"family": "digits", "target": {"throughput": target}, "batch": BATCH},
                     "devices": [{"name": n, "cpus": c, "speed": c} for n, c in CPUS.items()],
                     "master": "jetson", "network": {"bandwidth": "1Gbps", "latency": "0.5ms"},
                     "requestTimeout": "120s"}}


class Stream:
    """Requests of held-out digits; counts answers, right answers and expected accuracy."""

    def __init__(self, url: str, client: httpx.AsyncClient):
        split = load_split()
        self.xs, self.ys = split.test_x, split.test_y
        self.url, self.client = url, client
        self.next = 0
        self.sent = self.answered = self.right = 0
        self.expected = 0.0
        self.by_variant: dict[str, int] = {}

    def batch(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(r * IMAGES, (r + 1) * IMAGES) % self.xs.shape[0]
        return self.xs[index].contiguous(), self.ys[index]

    async def one(self) -> None:
        r = self.next
        self.next += 1
        self.sent += 1
        x, y = self.batch(r)
        out, parts, accuracy = await infer_parts(self.url, x, f"s{r}", self.client)
        self.answered += 1
        self.right += int((out.argmax(dim=1) == y).sum())
        self.expected += accuracy * IMAGES
        for a, b, _node, variant in parts:
            self.by_variant[variant] = self.by_variant.get(variant, 0) + b - a

    async def run(self, requests: int) -> float:
        """Send `requests`, IN_FLIGHT at a time; the wall time."""
        started = time.perf_counter()
        queue = list(range(requests))

        async def lane() -> None:
            while queue:
                queue.pop()
                await self.one()

        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
        return time.perf_counter() - started


async def status(url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await client.get(url + "/v1/status")).json()
    return result


def cpu_of(state: RunState) -> dict[str, float]:
    return {p.id: process_cpu_seconds(p.pid) for p in state.processes}


async def run(quick: bool) -> dict[str, Any]:
    requests = 16 if quick else 40
    theta = await asyncio.to_thread(measure_theta, 1.0 if quick else 2.0)
    print("θ measured under each quota (images/s):")
    for device, row in theta.items():
        print(f"  {device} ({CPUS[device]} CPU): " + ", ".join(f"{v} {t:.0f}" for v, t in row.items()))
    xl_everywhere = sum(row["digits-xl"] for row in theta.values())
    target = TARGET_FACTOR * xl_everywhere
    deployment = deployment_from_dict(document(target))
    estimates = ThroughputEstimates({(n, v): t for n, row in theta.items() for v, t in row.items()})
    exploration = explore(deployment.spec, Path.cwd(), estimates=estimates)
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-variants-"))
    runtime = LocalRuntime(scratch / "run", echo=print)
    result: dict[str, Any] = {"cpus": CPUS, "theta": theta, "target": target, "requests": requests,
                              "images_per_request": IMAGES, "host_cores": os.cpu_count(),
                              "load_before": os.getloadavg()[0]}
    state = await up_variants(runtime, deployment, port=0, emulate=True, ready_timeout_s=300, base=Path.cwd(),
                              theta=theta)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
            url = state.gateway_url
            # calibration: the first half
            calibration = Stream(url, client)
            before = cpu_of(state)
            infos_before = await worker_compute(state, client)
            by_before = await images_by_variant(state, client)
            await calibration.run(requests // 2)
            after = cpu_of(state)
            infos_after = await worker_compute(state, client)
            by_after = await images_by_variant(state, client)
            st = await status(url, client)
            per_request = (after["dispatcher"] - before["dispatcher"]) / calibration.answered
            overheads = {}
            for device, quota in CPUS.items():
                wid = worker_id(device)
                parts = infos_after[wid]["parts"] - infos_before[wid]["parts"]
                if parts <= 0:
                    continue
                # its CPU beyond what θ says its images take (images/θ of quota-limited time, x quota of CPU),
                # per part, as time under its quota
                compute_cpu = sum((n - by_before[wid].get(v, 0)) / theta[device][v] * quota
                                  for v, n in by_after[wid].items())
                overheads[device] = max(0.0, (after[wid] - before[wid]) - compute_cpu) / parts / quota
            cost = DispatchCost(per_request_s=per_request, node_part_s=overheads)
            # measured: the second half
            measured = Stream(url, client)
            measured.next = calibration.next
            wall = await measured.run(requests - requests // 2)
            st = await status(url, client)
            manager = st["manager"]
            held = ThroughputEstimates({(n, v): t for n, row in manager["estimates"].items() for v, t in row.items()})
            problem = exploration.settings.problem(tuple(manager["nodes"]), held)

            assert exploration.settings.target is not None
            selection = select(pareto_front(problem), exploration.settings.target, IMAGES)
            images = measured.answered * IMAGES
            result.update(
                initial={"configuration": dict(zip(exploration.cluster.names, exploration.selection.variants,
                                                   strict=True)),
                         "predicted_throughput": exploration.selection.throughput,
                         "predicted_accuracy": exploration.selection.accuracy},
                held={"configuration": manager["configuration"], "replans": manager["replans"],
                      "table_throughput": selection.throughput,
                      "predicted_with_costs": stream_throughput(problem, selection, IMAGES, cost),
                      "predicted_accuracy": selection.accuracy},
                cost={"dispatcher_cpu_per_request_s": cost.per_request_s, "worker_part_s": dict(cost.node_part_s)},
                measured={"throughput": images / wall, "accuracy": measured.right / images,
                          "expected_accuracy": measured.expected / images, "answered": measured.answered,
                          "sent": measured.sent, "by_variant": measured.by_variant})
            # a worker killed mid-stream
            on = [d for d, v in (manager["configuration"] or {}).items() if v is not None and d != "jetson"]
            victim = on[-1] if on else "odroid-b"
            killed = Stream(url, client)
            killed.next = measured.next
            task = asyncio.create_task(killed.run(10))
            await asyncio.sleep(0.3)
            await runtime.kill(state.name, worker_id(victim))
            await task
            st = await status(url, client)
            after_kill = st["manager"]
            result["kill"] = {"victim": victim, "sent": killed.sent, "answered": killed.answered,
                              "accuracy": killed.right / max(1, killed.answered * IMAGES),
                              "expected_accuracy": killed.expected / max(1, killed.answered * IMAGES),
                              "configuration": after_kill["configuration"],
                              "predicted_accuracy": after_kill["predictedAccuracy"],
                              "redispatched_images": after_kill["redispatchedImages"],
                              "last_replan": after_kill["lastReplan"]}
    finally:
        result["load_after"] = os.getloadavg()[0]
        await runtime.down(state.name)
        shutil.rmtree(scratch, ignore_errors=True)
    return result


async def worker_compute(state: RunState, client: httpx.AsyncClient) -> dict[str, dict[str, float]]:
    """Each worker's parts and their compute seconds so far, as the dispatcher received them."""
    workers = (await status(state.gateway_url, client))["partitions"]
    return {w["id"]: {"computeSeconds": float(w.get("computeSeconds", 0.0)), "parts": float(w.get("parts", 0)),
                      "images": float(w.get("images", 0))} for w in workers}


async def images_by_variant(state: RunState, client: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    workers = (await status(state.gateway_url, client))["partitions"]
    return {w["id"]: {str(v): int(n) for v, n in w.get("imagesByVariant", {}).items()} for w in workers}


def report(r: dict[str, Any]) -> list[str]:
    m, h, k = r["measured"], r["held"], r["kill"]
    lines = [
        f"target {r['target']:.0f} images/s ({TARGET_FACTOR}x the most accurate variant everywhere, measured θ)",
        f"initial configuration: {r['initial']['configuration']}, predicted {r['initial']['predicted_throughput']:.0f} "
        f"images/s at {r['initial']['predicted_accuracy']:.4f}",
        f"held after {h['replans']} re-plans: {h['configuration']}",
        "",
        "| | images/s | accuracy |",
        "|---|---|---|",
        f"| table Θ (compute only) | {h['table_throughput']:.0f} | {h['predicted_accuracy']:.4f} (expected) |",
        f"| predicted with the data plane's costs | {h['predicted_with_costs']:.0f} | |",
        f"| measured ({m['answered']} requests of {r['images_per_request']}) | {m['throughput']:.0f} | "
        f"{m['accuracy']:.4f} (expected {m['expected_accuracy']:.4f}) |",
        "",
        f"measured / predicted with costs: {m['throughput'] / h['predicted_with_costs']:.2f}x; "
        f"measured / table Θ: {m['throughput'] / h['table_throughput']:.2f}x",
        f"data plane costs (calibrated on the first half): dispatcher {r['cost']['dispatcher_cpu_per_request_s'] * 1e3:.1f} "
        "ms CPU per request; per part beyond compute, under each quota: "
        + ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in r["cost"]["worker_part_s"].items()),
        f"host: {r['host_cores']} cores, load average {r['load_before']:.1f} before and {r['load_after']:.1f} after "
        "(quotas above a process's fair share of a busy host do not bind; figures from a loaded host understate "
        "throughput)",
        f"kill {k['victim']} mid-stream: {k['answered']}/{k['sent']} requests answered, "
        f"{k['redispatched_images']} images dispatched again; then {k['configuration']}, accuracy "
        f"{k['accuracy']:.4f} measured ({k['expected_accuracy']:.4f} expected; predicted {k['predicted_accuracy']:.4f})",
    ]
    return lines


def main(quick: bool) -> None:
    out = RESULTS / "variants_testbed.json"
    if cannot_emulate(out):
        return
    with emulate_lock():
        result = asyncio.run(run(quick))
    lines = report(result)
    print("\n".join(lines))
    out.write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / "variants_testbed.md").write_text("\n".join(["# bench variants_testbed", "", *lines, ""]))
    print(f"wrote {out}")
