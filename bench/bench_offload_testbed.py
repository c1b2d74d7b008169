"""Partial offloading on the emulated testbed: `mw` and `nfl` deployed, measured against predicted latency.

AlexNet; an end device at 0.2 CPU (role end: it holds the input and gets the answer) and an edge server at
1.0 CPU (role edge-server), each in its own network namespace behind a tbf cap at the uplink rate (10 and
50 Mbit/s), 2 ms link latency added in userspace. Devices are costed with this host's own profile
(`host_profile`: one speed ratio against the reference profile misjudged AlexNet's convolutions against its
fully connected layers by 1.8x), each at its quota's share of a free core (`per_core_speed` under the quota
over the free core's), and its message cost through a chain of partitions (`message_cpu`): the calibration
all testbed benchmarks share (`bench._testbed.calibrate`). For each rate,
both plans are made by the registry's solvers (`sequential` compute model, the one the runtime executes),
deployed with `up --emulate` (the end device's partitions take turns in the order S), and measured: the
median of the gateway's own latency over sequential requests after a warm-up, against the plan's predicted
latency (target within 15 %), and MW / NFL measured next to MW / NFL predicted.

Needs root (network namespaces, tc, cgroups); without it the benchmark prints why and skips. It holds
/tmp/edgepart-emulate.lock while it emulates.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._testbed import RESULTS, calibrate, calibration_note, cannot_emulate, emulate_lock
from edgepart.graph.loader import ModelRef, load_graph, load_model
from edgepart.runtime.calibrate import HostCalibration, with_host_calibration
from edgepart.runtime.client import infer
from edgepart.runtime.demo import export_weights
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import plan_deployment
from edgepart.spec import DNNDeployment, deployment_from_dict

MODEL = "alexnet"
END_CPUS, SERVER_CPUS = 0.2, 1.0
RATES = ("10Mbps", "50Mbps")
SOLVERS = ("mw", "nfl")
TARGET = 0.15


def _deployment(solver: str, rate: str, weights: Path, calibration: HostCalibration) -> DNNDeployment:
    def device(name: str, cpus: float, role: str) -> dict[str, Any]:
        return {"name": name, "cpus": cpus, "role": role, "memory": "2Gi"}

    return with_host_calibration(deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
        "metadata": {"name": f"offload-{solver}-{rate.lower().replace('/', '')}"},
        "spec": {"model": {"name": MODEL, "weights": str(weights)}, "solver": solver,
                 "devices": [device("end", END_CPUS, "end"), device("server", SERVER_CPUS, "edge-server")],
                 "network": {"bandwidth": rate, "latency": "2ms"}, "requestTimeout": "300s"},
    }), calibration)


async def _measure(deployment: DNNDeployment, requests: int, warmup: int, root: Path) -> dict[str, Any]:
    graph = load_graph(ModelRef(MODEL))
    planned = await asyncio.to_thread(plan_deployment, deployment.spec, graph=graph)
    plan = planned.plan
    assert plan.predicted is not None
    runtime = LocalRuntime(root)
    state = await runtime.up(deployment, port=0, emulate=True, plan=plan, ready_timeout_s=900)
    try:
        x = torch.randn(graph.input_shape)
        latencies = []
        async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
            for k in range(warmup + requests):
                result = await infer(state.gateway_url, x, client=client, timeout_s=600)
                if k >= warmup:
                    latencies.append(result.server_latency_s or result.latency_s)
    finally:
        await runtime.down(state.name)
    return {"solver": plan.solver, "summary": plan.meta.get("summary", ""), "partitions": len(plan.tasks),
            "measured_s": statistics.median(latencies), "measured_min_s": min(latencies),
            "measured_max_s": max(latencies), "predicted_s": plan.predicted.latency_s}


async def _run(quick: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    requests, warmup = (3, 1) if quick else (9, 2)
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-offload-testbed-"))
    rows = []
    try:
        calibration = await calibrate((MODEL,), (END_CPUS, SERVER_CPUS), scratch, quick)
        whole = await asyncio.to_thread(load_model, ModelRef(MODEL))
        weights = await asyncio.to_thread(export_weights, whole, scratch / f"{MODEL}.safetensors")
        del whole
        for rate in RATES:
            for solver in SOLVERS:
                deployment = _deployment(solver, rate, weights, calibration)
                row = await _measure(deployment, requests, warmup, scratch / "run")
                row["rate"] = rate
                rows.append(row)
                print(f"  {rate} {solver}: measured {row['measured_s'] * 1e3:.0f} ms, predicted "
                      f"{row['predicted_s'] * 1e3:.0f} ms ({row['summary']})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return calibration.summary(), rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| uplink | solver | partitions | measured (ms) | min-max (ms) | predicted (ms) | meas/pred | within 15% |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["measured_s"] / r["predicted_s"]
        lines.append(f"| {r['rate']} | {r['solver']} | {r['partitions']} | {r['measured_s'] * 1e3:.0f} | "
                     f"{r['measured_min_s'] * 1e3:.0f}-{r['measured_max_s'] * 1e3:.0f} | "
                     f"{r['predicted_s'] * 1e3:.0f} | {ratio:.2f} | {'yes' if abs(ratio - 1) <= TARGET else 'MISSED'} |")
    lines += ["", "| uplink | MW / NFL measured | MW / NFL predicted |", "|---|---|---|"]
    for rate in RATES:
        by = {r["solver"]: r for r in rows if r["rate"] == rate}
        if {"mw", "nfl"} <= set(by):
            lines.append(f"| {rate} | {by['mw']['measured_s'] / by['nfl']['measured_s']:.2f} | "
                         f"{by['mw']['predicted_s'] / by['nfl']['predicted_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(quick: bool) -> None:
    out = RESULTS / "offload_testbed.json"
    if cannot_emulate(out):
        return
    with emulate_lock():
        calibration, rows = asyncio.run(_run(quick))
    text = table(rows)
    print("\n" + text)
    (RESULTS / "offload_testbed.md").write_text(f"# Partial offloading on the emulated testbed ({MODEL}; end "
                                                 f"{END_CPUS} CPU, server {SERVER_CPUS} CPU)\n\n"
                                                 + calibration_note(calibration) + "\n\n" + text)
    out.write_text(json.dumps({"quick": quick, "calibration": calibration, "rows": rows}, indent=2))
    print(f"wrote {out}")
