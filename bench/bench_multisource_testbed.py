"""Several data sources on the emulated testbed: MS-MDI, AR-MDI and Local measured against the simulator.

Devices: three emulated devices at 0.4, 0.3 and 0.2 CPU (cgroup v1 quotas), each in its own network
namespace behind a 100 Mbit/s tbf cap, 2 ms latency added in userspace; the ring d0 -> d1 -> d2, sources
d0 and d1. Model: MobileNetV2 (224 x 224). The devices are calibrated as every testbed benchmark does
(`bench._testbed.calibrate`): this host's own profile of MobileNetV2, each device at its quota's share of a
free core (`per_core_speed` under 0.4, 0.3 and 0.2 CPU over a free core's) and its quota's message cost at
each end (`message_cpu`), so the simulator costs the same devices.

For each scheduler: `up --emulate` with sources, then `edgepart load`'s generator sends N images per
source with Poisson arrivals at a rate near capacity (the sources' arrival times are the simulator's:
the same seed, the same draws), and the simulator (`simulate_multisource`, the same scheduler, queue
bound, heartbeat and a fixed allocation, as the workers use) predicts the same run. Reported: total time
(first send to last answer) and per-image time (total over done), measured over simulated, and every
image answered exactly once (done + rejected = sent, none lost).

Overload: MS-MDI at twice the ring's capacity with queues of 4 images: how many were refused with 503,
that none was lost, and the workers' resident memory before and after (flat: bounded queues).

Needs root; holds /tmp/edgepart-emulate.lock while it emulates. `--quick`: 16 images per source
(full: 200, the issue's N).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._testbed import RESULTS, calibrate, calibration_note, cannot_emulate, emulate_lock
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.partition_service.auth import load_secret
from edgepart.planner.cluster import cluster_from_spec
from edgepart.runtime.calibrate import with_host_calibration
from edgepart.runtime.load import LoadReport, LoadSettings, drive
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.sim.multisource import (
    MultiSourceResult,
    MultiSourceSettings,
    SourceLoad,
    simulate_multisource,
)
from edgepart.spec import DNNDeployment, deployment_from_dict

MODEL = "mobilenet_v2"
CPUS = {"d0": 0.4, "d1": 0.3, "d2": 0.2}
RING = ["d0", "d1", "d2"]
SOURCES = ["d0", "d1"]
SCHEDULERS = ("ms-mdi", "ar-mdi", "local")
HEARTBEAT_S = 0.5
BOUND = 64
OVERLOAD_BOUND = 4
LOAD = 0.8  # the two sources together at 80% of the ring's capacity


def _deployment(name: str, scheduler: str, bound: int) -> DNNDeployment:
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": MODEL},
            "devices": [{"name": d, "cpus": c} for d, c in CPUS.items()],
            "network": {"bandwidth": "100Mbps", "latency": "2ms"},
            "sources": [{"device": s} for s in SOURCES], "ring": RING, "scheduler": scheduler,
            "queueBound": bound, "heartbeat": f"{HEARTBEAT_S * 1000:g}ms", "requestTimeout": "600s",
        },
    })


def _rss_bytes(state: RunState) -> int:
    total = 0
    for proc in state.processes:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


async def _measure(deployment: DNNDeployment, root: Path, settings: LoadSettings) -> tuple[LoadReport, int, int]:
    runtime = LocalRuntime(root)
    state = await runtime.up(deployment, emulate=True, ready_timeout_s=600)
    try:
        secret = load_secret(Path(state.directory) / "secret")
        urls = [state.ring[s] for s in SOURCES]
        before = _rss_bytes(state)
        report = await drive(urls, secret, settings)
        after = _rss_bytes(state)
    finally:
        await runtime.down(state.name)
    return report, before, after


def _simulate(calibrated: DNNDeployment, scheduler: str, settings: LoadSettings, bound: int) -> MultiSourceResult:
    graph = load_graph(ModelRef(MODEL))
    cluster = cluster_from_spec(calibrated.spec.cluster())
    sources = [SourceLoad(s, settings.count, settings.rate) for s in SOURCES]
    return simulate_multisource(graph, cluster, RING, sources, MultiSourceSettings(
        scheduler=scheduler,  # type: ignore[arg-type]
        queue_bound=bound, heartbeat_s=HEARTBEAT_S, adaptive_gamma=False, trace_period_s=None,
        seed=settings.seed))


async def _run(quick: bool) -> dict[str, Any]:
    count = 16 if quick else 200
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-msrc-"))
    try:
        calibration = await calibrate((MODEL,), CPUS.values(), scratch, quick)
        calibrated = with_host_calibration(_deployment("msrc", "ms-mdi", BOUND), calibration)
        cluster = cluster_from_spec(calibrated.spec.cluster())
        graph = load_graph(ModelRef(MODEL))
        whole_s = {d: sum(cluster.device(d).layer_time(layer) for layer in graph) for d in RING}
        capacity = sum(1 / s for s in whole_s.values())
        rate = LOAD * capacity / len(SOURCES)
        print("whole model "
              + ", ".join(f"{d} {s:.2f} s" for d, s in whole_s.items())
              + f"; ring capacity {capacity:.2f} images/s; {rate:.2f} images/s per source", flush=True)
        rows: dict[str, Any] = {"count": count, "rate": rate, "capacity": capacity, "whole_s": whole_s,
                                "calibration": calibration.summary(), "schedulers": {}}
        for scheduler in SCHEDULERS:
            settings = LoadSettings(rate=rate, count=count, seed=7, timeout_s=600)
            deployment = with_host_calibration(_deployment(f"msrc-{scheduler.replace('-', '')}", scheduler, BOUND),
                                               calibration)
            report, _, _ = await _measure(deployment, scratch / "run", settings)
            sim = _simulate(calibrated, scheduler, settings, BOUND)
            row = {
                "measured_total_s": report.total_s, "simulated_total_s": sim.total_time_s,
                "measured_per_image_s": report.per_image_s, "simulated_per_image_s": sim.per_image_s,
                "sent": sum(s.sent for s in report.sources), "done": report.done,
                "rejected": sum(s.rejected for s in report.sources), "lost": sum(s.lost for s in report.sources),
                "done_locally": sum(s.done_locally for s in report.sources),
                "simulated_done_locally": sum(s.done_locally for s in sim.sources),
            }
            rows["schedulers"][scheduler] = row
            print(f"{scheduler}: total {row['measured_total_s']:.1f} s measured, {row['simulated_total_s']:.1f} s "
                  f"simulated ({row['measured_total_s'] / row['simulated_total_s']:.2f}); done {row['done']}/"
                  f"{row['sent']}, lost {row['lost']}, local {row['done_locally']} (sim "
                  f"{row['simulated_done_locally']})", flush=True)
        over = LoadSettings(rate=2 * capacity / len(SOURCES), count=2 * count, seed=8, timeout_s=600)
        deployment = with_host_calibration(_deployment("msrc-over", "ms-mdi", OVERLOAD_BOUND), calibration)
        started = time.monotonic()
        report, before, after = await _measure(deployment, scratch / "run", over)
        rows["overload"] = {
            "rate": over.rate, "sent": sum(s.sent for s in report.sources), "done": report.done,
            "rejected": sum(s.rejected for s in report.sources), "lost": sum(s.lost for s in report.sources),
            "rss_before": before, "rss_after": after, "seconds": time.monotonic() - started,
        }
        print(f"overload: {rows['overload']}", flush=True)
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _table(rows: dict[str, Any], quick: bool) -> str:
    lines = ["# Several data sources on the emulated testbed: measured vs simulated", "",
             f"MobileNetV2 224x224; devices d0 0.4, d1 0.3, d2 0.2 CPU, 100 Mbit/s, 2 ms; sources d0, d1; "
             f"{rows['count']} images per source, Poisson {rows['rate']:.2f} images/s each (80% of the ring's "
             f"capacity {rows['capacity']:.2f}/s){' (--quick)' if quick else ''}.", "",
             calibration_note(rows["calibration"]), "",
             "| scheduler | total measured | total simulated | measured/sim | per image measured | per image sim "
             "| done/sent | lost | run locally (sim) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows["schedulers"].items():
        lines.append(f"| {name} | {r['measured_total_s']:.1f} s | {r['simulated_total_s']:.1f} s | "
                     f"{r['measured_total_s'] / r['simulated_total_s']:.2f} | {r['measured_per_image_s'] * 1e3:.0f} ms"
                     f" | {r['simulated_per_image_s'] * 1e3:.0f} ms | {r['done']}/{r['sent']} | {r['lost']} | "
                     f"{r['done_locally']} ({r['simulated_done_locally']}) |")
    o = rows["overload"]
    lines += ["", f"Overload (MS-MDI, {o['rate']:.2f} images/s per source = 2x capacity, queues of "
                  f"{OVERLOAD_BOUND}): {o['sent']} sent, {o['done']} done, {o['rejected']} refused with 503, "
                  f"{o['lost']} lost; workers' resident memory {o['rss_before'] / 2**20:.0f} MiB before, "
                  f"{o['rss_after'] / 2**20:.0f} MiB after."]
    return "\n".join(lines) + "\n"


def main(quick: bool) -> None:
    suffix = "-quick" if quick else ""
    if cannot_emulate(RESULTS / f"multisource_testbed{suffix}.json"):
        return
    with emulate_lock():
        rows = asyncio.run(_run(quick))
    text = _table(rows, quick)
    print(text)
    (RESULTS / f"multisource_testbed{suffix}.md").write_text(text)
    (RESULTS / f"multisource_testbed{suffix}.json").write_text(json.dumps(rows, indent=2))
