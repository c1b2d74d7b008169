"""Several models at once on the emulated testbed: the joint memetic plan deployed, measured against predicted.

AlexNet + SqueezeNet 1.1 + ResNet-50 on 4 emulated devices (network namespaces behind 100 Mbit/s tbf caps,
2 ms latency added in userspace; cgroup v1 CPU quotas): a "server" at 0.8 CPU that holds every input and
three devices at 0.2 CPU. Devices are calibrated as every testbed benchmark does (`bench._testbed.calibrate`):
this host's own profile of the three models (with the reference profile at one speed ratio, measured
missed predicted by 1.3-3.8x), each device at its quota's share of a free core (`per_core_speed` of the whole ResNet-50 under
0.8 and 0.2 CPU over a free core's) and its quota's message cost (`message_cpu`). Then two plans of the same
deployment are deployed with `up --emulate` in turn:

- mgp-memetic (the joint plan), and
- fused-dp, each model planned alone on the whole cluster and merged (what several models got before);

for each: after a warm-up round, R rounds of one request of every model issued together; the completion of a
round is the last model's answer (client-side, from the moment the requests leave). Printed: the median
completion against the plan's predicted completion (the evaluator's makespan; the issue's target: within
15 %), every model's answer checked against its whole model run with the same (fast) kernels
(max|diff| <= 1e-4 max|ref|), and memetic against fused-dp measured side by side. Needs root; holds /tmp/edgepart-emulate.lock while it emulates.
Writes bench/results/multimodel_testbed.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._testbed import RESULTS, calibrate, cannot_emulate, emulate_lock
from edgepart.executor import check_deployed, use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime.calibrate import with_host_calibration
from edgepart.runtime.client import infer
from edgepart.runtime.demo import export_weights
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import plan_deployment
from edgepart.spec import DNNDeployment, deployment_from_dict

MODELS = {"alexnet": "alexnet", "squeezenet": "squeezenet1_1", "resnet50": "resnet50"}
DEVICES = (("server", 0.8), ("edge-0", 0.2), ("edge-1", 0.2), ("edge-2", 0.2))


def _deployment(solver: str, weights: dict[str, Path]) -> DNNDeployment:
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment",
        "metadata": {"name": f"bench-three-{solver}"},
        "spec": {
            "models": [{"id": mid, "name": name, "weights": str(weights[mid])} for mid, name in MODELS.items()],
            "objective": "latency", "solver": solver, "master": "server",
            "devices": [{"name": name, "cpus": cpus, "memory": "4Gi"} for name, cpus in DEVICES],
            "network": {"bandwidth": "100Mbps", "latency": "2ms"}, "requestTimeout": "300s",
        },
    })


async def _round(url: str, inputs: dict[str, torch.Tensor], client: httpx.AsyncClient) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(infer(url, x, model_id=mid, client=client, timeout_s=600)
                                     for mid, x in inputs.items()))
    return time.perf_counter() - started, dict(zip(inputs, results, strict=True))


async def _measure(deployment: DNNDeployment, rounds: int, root: Path,
                   expected: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    planned = await asyncio.to_thread(plan_deployment, deployment.spec)
    plan = planned.plan
    assert plan.predicted is not None
    runtime = LocalRuntime(root)
    state = await runtime.up(deployment, port=0, emulate=True, plan=plan, ready_timeout_s=900)
    try:
        async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
            _, answers = await _round(state.gateway_url, inputs, client)  # warm-up; its answers are checked
            exact = {mid: check_deployed(expected[mid], answers[mid].output, exact_kernels=False).passed
                     for mid in MODELS}
            times = [(await _round(state.gateway_url, inputs, client))[0] for _ in range(rounds)]
    finally:
        await runtime.down(state.name)
    return {"solver": plan.solver, "tasks": len(plan.tasks), "devices": sorted({t.device for t in plan.tasks}),
            "predicted_s": plan.predicted.latency_s, "predicted_models_s": plan.predicted.models,
            "measured_s": statistics.median(times), "measured_min_s": min(times), "measured_max_s": max(times),
            "exact": exact}


async def _run(quick: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rounds = 2 if quick else 5
    scratch = Path(tempfile.mkdtemp(prefix="edgepart-mm-testbed-"))
    try:
        # the heaviest model (first) times the quotas
        calibration = await calibrate(("resnet50", "alexnet", "squeezenet1_1"), {c for _, c in DEVICES}, scratch,
                                      quick)
        weights: dict[str, Path] = {}
        inputs: dict[str, torch.Tensor] = {}
        expected: dict[str, torch.Tensor] = {}
        for k, (mid, name) in enumerate(MODELS.items()):
            whole = await asyncio.to_thread(load_model, ModelRef(name))
            weights[mid] = await asyncio.to_thread(export_weights, whole, scratch / f"{mid}.safetensors")
            inputs[mid] = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(k))
            use_exact_kernels(False)  # the deployments' kernels
            with torch.no_grad():
                expected[mid] = whole(inputs[mid])
            del whole
        rows = []
        for solver in ("mgp-memetic", "fused-dp"):
            deployment = with_host_calibration(_deployment(solver, weights), calibration)
            row = await _measure(deployment, rounds, scratch / "run", expected, inputs)
            rows.append(row)
            print(f"  {solver}: {row['tasks']} tasks on {row['devices']}, measured {row['measured_s']:.2f} s "
                  f"(min {row['measured_min_s']:.2f}, max {row['measured_max_s']:.2f}), predicted "
                  f"{row['predicted_s']:.2f} s, every model within tolerance: {all(row['exact'].values())}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return calibration.summary(), rows


def main(quick: bool) -> None:
    out = RESULTS / "multimodel_testbed.json"
    if cannot_emulate(out):
        return
    with emulate_lock():
        calibration, rows = asyncio.run(_run(quick))
    memetic, fused = rows
    print(f"mgp-memetic: measured / predicted {memetic['measured_s'] / memetic['predicted_s']:.2f}; "
          f"fused-dp alone: {fused['measured_s'] / fused['predicted_s']:.2f}; memetic / fused-dp measured "
          f"{memetic['measured_s'] / fused['measured_s']:.2f}x, predicted {memetic['predicted_s'] / fused['predicted_s']:.2f}x")
    out.write_text(json.dumps({"quick": quick, "calibration": calibration, "rows": rows}, indent=2))
    print(f"wrote {out}")
