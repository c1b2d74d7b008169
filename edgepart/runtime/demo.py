"""The end-to-end demo: plan a model on emulated edge devices, run it, check it, compare with one device.

`run_demo()` (what `make demo` / `edgepart demo` run):

1. calibrate: time the whole model on one core here (the kernels the partitions use), so the
   planner's reference profile is scaled to this host: a device's speed = its `cpus` x that factor;
   when emulating, under the devices' CPU quota, and measure what a message costs such a device;
2. plan the deployment with its solver and start it (`--emulate` semantics when root: network
   namespaces, tbf caps, CPU quotas; plain local processes otherwise);
3. send requests, check every output against the whole model run here with the deployment's kernels
   (exactKernels: bit for bit; else max|diff| <= 1e-4 * max|reference|);
4. do the same with the whole model on the master device alone;
5. print measured against predicted latency and the speedup over one device; stop everything.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgepart.executor import check_deployed, use_exact_kernels
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_graph, load_model
from edgepart.plan import Plan
from edgepart.planner.builders import build_single
from edgepart.planner.cluster import cluster_from_spec
from edgepart.planner.evaluate import evaluate
from edgepart.runtime.calibrate import calibrated, message_cpu, per_core_speed
from edgepart.runtime.client import infer
from edgepart.runtime.emulate import support_problems
from edgepart.runtime.local import LocalRuntime
from edgepart.runtime.planning import model_ref, plan_deployment
from edgepart.spec import DeviceSpec, DNNDeployment, load_deployment

__all__ = ["DEFAULT_DEPLOYMENT", "DemoReport", "DemoRun", "demo", "export_weights", "run_demo", "with_weights"]

DEFAULT_DEPLOYMENT = Path("examples/deployments/vgg16-4dev.yaml")


@dataclass(frozen=True)
class DemoRun:
    label: str
    solver: str
    devices: int
    partitions: int
    measured_s: float  # median of the gateway's own latency over the measured requests
    client_s: float  # median seen by the client (loopback hop to the gateway included)
    predicted_s: float
    max_abs_diff: float
    allclose: bool


@dataclass(frozen=True)
class DemoReport:
    model: str
    emulated: bool
    speed_per_core: float
    split: DemoRun
    single: DemoRun

    @property
    def ok(self) -> bool:
        return self.split.allclose and self.single.allclose

    @property
    def speedup_measured(self) -> float:
        return self.single.measured_s / self.split.measured_s

    @property
    def speedup_predicted(self) -> float:
        return self.single.predicted_s / self.split.predicted_s


def export_weights(model: torch.nn.Module, path: Path) -> Path:
    """Write the model's weights to a safetensors file (each partition then reads only its own tensors)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def with_weights(deployment: DNNDeployment, path: Path) -> DNNDeployment:
    model = deployment.spec.first_model.model_copy(update={"weights": str(path)})
    return deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"model": model})})


def single_device(deployment: DNNDeployment) -> tuple[DNNDeployment, DeviceSpec]:
    cluster = deployment.spec.cluster()
    master = next(d for d in cluster.devices if d.name == cluster.master_name)
    spec = deployment.spec.model_copy(update={"devices": [master], "solver": "single", "solver_options": {},
                                              "master": master.name})
    meta = deployment.metadata.model_copy(update={"name": f"{deployment.metadata.name}-single"})
    return deployment.model_copy(update={"spec": spec, "metadata": meta}), master


async def _run(runtime: LocalRuntime, deployment: DNNDeployment, plan: Plan, label: str, emulate: bool,
               reference: torch.nn.Module, graph: LayerGraph, requests: int, port: int,
               echo: Callable[[str], None]) -> DemoRun:
    state = await runtime.up(deployment, port=port, emulate=emulate, plan=plan)
    try:
        echo(f"  {label}: {len(plan.tasks)} partitions up, gateway {state.gateway_url}")
        gateway, client, worst, close = [], [], 0.0, True
        for i in range(requests + 1):  # the first request warms connections and is not measured
            x = torch.randn(graph.input_shape, generator=torch.Generator().manual_seed(i))
            result = await infer(state.gateway_url, x, request_id=f"demo-{i}", timeout_s=300)
            exact = deployment.spec.exact_kernels
            expected = await asyncio.to_thread(_whole, reference, x, exact)
            comparison = check_deployed(expected, result.output, exact_kernels=exact)
            worst = max(worst, comparison.max_abs_diff)
            close = close and comparison.passed
            if i > 0:
                gateway.append(result.server_latency_s or result.latency_s)
                client.append(result.latency_s)
        predicted = state.predicted_latency_s or 0.0
        return DemoRun(label, plan.solver, len(plan.devices), len(plan.tasks), statistics.median(gateway),
                       statistics.median(client), predicted, worst, close)
    finally:
        await runtime.down(state.name)


def _calibration_cpus(deployment: DNNDeployment) -> float | None:
    """The CPU quota most devices of `deployment` get (None: none has one)."""
    quotas = [d.cpus for d in deployment.spec.devices if d.cpus is not None]
    return statistics.mode(quotas) if quotas else None


def _whole(model: torch.nn.Module, x: torch.Tensor, exact_kernels: bool) -> torch.Tensor:
    use_exact_kernels(exact_kernels)  # the deployment's kernels
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    return out


async def demo(deployment: str | Path = DEFAULT_DEPLOYMENT, *, requests: int = 5, emulate: bool | None = None,
               port: int = 0, root: Path | None = None, echo: Callable[[str], None] = print) -> DemoReport:
    """Plan, run, check and compare (see the module docstring); raises EdgepartError on a setup problem."""
    original = load_deployment(deployment)
    problems = support_problems()
    if emulate is None:
        emulate = not problems
    elif emulate and problems:
        from edgepart.runtime.emulate import EmulationError

        raise EmulationError("; ".join(problems))
    ref: ModelRef = model_ref(original.spec.first_model)
    graph = load_graph(ref)
    echo(f"edgepart demo: {ref.name} on {len(original.spec.devices)} devices from {deployment}")
    echo("  loading the whole model here (the reference every output is checked against)")
    reference = await asyncio.to_thread(load_model, ref)
    capped = _calibration_cpus(original) if emulate else None
    exact = original.spec.exact_kernels
    kernels = "exact" if exact else "fast"
    if capped is None:
        speed = await asyncio.to_thread(functools.partial(per_core_speed, ref, reference, exact_kernels=exact))
        echo(f"  calibrated: one core here runs at {speed:.2f}x the planner's reference profile ({kernels} "
             f"kernels); device speed = cpus x {speed:.2f}")
        message_s = None
    else:
        speed = await asyncio.to_thread(functools.partial(per_core_speed, ref, reference, 3, capped,
                                                          exact_kernels=exact))
        echo(f"  calibrated under a {capped:g}-CPU quota (as the emulated devices run): {speed * capped:.3f}x the "
             f"planner's reference profile, i.e. device speed = cpus x {speed:.2f}")
        message_s = await message_cpu(capped, requests=8)
        echo(f"  a message costs such a device {message_s * 1e3:.2f} ms of CPU at each end (a chain of partitions "
             f"under the quota), i.e. messageCost = {message_s * 1e3:.2f} ms / cpus")
    weights_dir = Path(tempfile.mkdtemp(prefix="edgepart-demo-"))
    try:
        return await _demo(original, ref, graph, reference, speed, message_s, weights_dir, requests, emulate, port,
                           root, echo)
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)


async def _demo(original: DNNDeployment, ref: ModelRef, graph: LayerGraph, reference: torch.nn.Module, speed: float,
                message_s: float | None, weights_dir: Path, requests: int, emulate: bool, port: int,
                root: Path | None, echo: Callable[[str], None]) -> DemoReport:
    if original.spec.first_model.weights is None:  # seeded weights: export them once, partitions read their slices
        echo(f"  exporting the seeded weights to {weights_dir} so each partition reads only its own tensors")
        await asyncio.to_thread(export_weights, reference, weights_dir / "weights.safetensors")
        original = with_weights(original, weights_dir / "weights.safetensors")
    tuned = calibrated(original, speed, message_s)
    ref = model_ref(tuned.spec.first_model)
    cluster = cluster_from_spec(tuned.spec.cluster(), base_dir=Path.cwd())
    planned = await asyncio.to_thread(plan_deployment, tuned.spec, graph=graph)
    single_deployment, master = single_device(tuned)
    single_plan = build_single(graph, ref, [master.name]).to_plan(master.name)
    single_plan = single_plan.with_predicted(evaluate(single_plan, graph, cluster))
    if emulate:
        echo(f"  emulating the devices: network {tuned.spec.network.bandwidth}, latency {tuned.spec.network.latency}, "
             f"CPU quotas {', '.join(f'{d.name}={d.cpus}' for d in tuned.spec.devices)}")
    else:
        echo("  not root (or no netns/tc/cgroup here): plain local processes share this host's cores, so the "
             "speedup below is not an edge-device speedup; run as root for emulated devices")
    runtime = LocalRuntime(root, echo=lambda message: None)
    split = await _run(runtime, tuned, planned.plan, f"split ({planned.plan.solver})", emulate, reference, graph,
                       requests, port, echo)
    single = await _run(runtime, single_deployment, single_plan, f"one device ({master.name})", emulate, reference,
                        graph, requests, port, echo)
    report = DemoReport(original.spec.first_model.name, emulate, speed, split, single)
    echo(_table(report, requests))
    return report


def _table(report: DemoReport, requests: int) -> str:
    rows = [("", "devices", "partitions", "measured", "predicted", "measured/predicted", "max |diff|", "equal")]
    for run in (report.split, report.single):
        rows.append((run.label, str(run.devices), str(run.partitions), f"{run.measured_s * 1e3:.1f} ms",
                     f"{run.predicted_s * 1e3:.1f} ms", f"{run.measured_s / run.predicted_s:.2f}" if run.predicted_s
                     else "-", f"{run.max_abs_diff:.2g}", "yes" if run.allclose else "NO"))
    rows.append(("speedup over one device", "", "", f"{report.speedup_measured:.2f}x",
                 f"{report.speedup_predicted:.2f}x", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    where = "emulated devices" if report.emulated else "local processes (not emulated)"
    return "\n".join([f"\n{report.model} on {where}; median gateway latency over {requests} requests:",
                      lines[0], "  ".join("-" * w for w in widths), *lines[1:],
                      "outputs equal the whole model's: " + ("yes" if report.ok else "NO")])


def run_demo(deployment: str | Path = DEFAULT_DEPLOYMENT, *, requests: int = 5, emulate: bool | None = None,
             port: int = 0, root: Path | None = None, echo: Callable[[str], None] = print) -> DemoReport:
    """Synchronous entry for the CLI's `demo` command; `report.ok` says whether every output matched."""
    return asyncio.run(demo(deployment, requests=requests, emulate=emulate, port=port, root=root, echo=echo))
