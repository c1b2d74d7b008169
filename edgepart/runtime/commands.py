"""What `edgepart up / status / down / infer` do; cli.py only parses options and calls these."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepart.errors import EdgepartError
from edgepart.runtime.local import LocalRuntime, RunState, RunStatus
from edgepart.spec import load_deployment

if TYPE_CHECKING:  # torch-heavy: imported by the commands that need them, so `status` starts fast
    import torch

    from edgepart.graph.loader import ModelRef
    from edgepart.plan import Plan
    from edgepart.runtime.device_calibration import CalibrationSettings, Measure

__all__ = ["down", "infer_command", "read_input", "reference_model", "replan_lines", "restart", "status", "table",
           "trace_table", "up"]

Echo = Callable[[str], None]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def plan_table(plan: Plan) -> str:
    several = len(plan.models) > 1
    rows = [[*([v.model] if several else []), v.index, v.kind, f"[{t.start},{t.stop})", t.id, t.device,
             str(t.output), ", ".join(f"{i.source}:{i.region}" for i in t.inputs)]
            for v in plan.stage_view() for t in v.tasks]
    headers = ["stage", "kind", "layers", "task", "device", "output region", "reads"]
    return table([*(["model"] if several else []), *headers], rows)


async def up(path: Path, *, port: int, emulate: bool, plan_path: Path | None, timeout_s: float, echo: Echo,
             root: Path | None = None, supervise: bool = True, calibration: CalibrationSettings | None = None,
             measure: Measure | None = None, device_timeout_s: float | None = 30.0) -> RunState:
    """`edgepart up`. With `emulate`, the devices are calibrated first (`device_calibration`, per `calibration`;
    `measure`: what measures a quota, default this host under real quotas). The supervisor re-plans without a
    device down `device_timeout_s` (None: never)."""
    from edgepart.plan import load_plan
    from edgepart.runtime.device_calibration import CalibrationSettings, calibrate_devices

    deployment = load_deployment(path)
    plan = load_plan(plan_path) if plan_path is not None else None
    runtime = LocalRuntime(root, echo=echo)
    calibrated = None
    if emulate:
        deployment, calibrated = await calibrate_devices(deployment, calibration or CalibrationSettings(), echo=echo,
                                                         measure=measure, base=Path.cwd())
    state = await runtime.up(deployment, port=port, emulate=emulate, plan=plan, ready_timeout_s=timeout_s,
                             base=Path.cwd(), calibration=calibrated, device_timeout_s=device_timeout_s)
    if deployment.spec.variants is not None:  # accuracy-aware data partitioning: no plan, a configuration
        echo(f"{state.name}: dispatcher and {len(state.processes) - 1} variant workers ready "
             f"({'emulated devices; ' if state.emulated else ''}predicted "
             f"{state.predicted_throughput_per_s or 0:.0f} images/s)")
        echo(f"dispatcher: {state.gateway_url}")
        echo(f"try:     edgepart infer {state.gateway_url} --held-out --check --deployment {path}")
        echo(f"stop:    edgepart down {state.name}")
        return state  # the dispatcher handles a worker's loss itself: no supervisor
    if state.ring:  # several data sources: ring workers, no plan
        echo(table(["worker", "url"], [[w, u] for w, u in state.ring.items()]))
        echo(f"{state.name}: {len(state.ring)} ring workers ready ({state.how}"
             f"{', emulated devices' if state.emulated else ''})")
        if state.calibration is not None:
            echo(state.calibration.summary())
        echo(f"try:     edgepart load --deployment {state.name} --rate 5 --count 50")
        echo(f"stop:    edgepart down {state.name}")
        return state
    if supervise:
        runtime.start_supervisor(state)
    echo(plan_table(runtime.plan_of(state.name)))
    predicted = (f"; predicted latency {state.predicted_latency_s * 1e3:.1f} ms"
                 if state.predicted_latency_s is not None else "")
    echo(f"{state.name}: {len(state.processes) - 1} partitions ready ({state.how}"
         f"{', emulated devices' if state.emulated else ''}){predicted}")
    if state.calibration is not None:
        echo(state.calibration.summary())
    elif state.emulated:
        echo("devices costed at `cpus` x the reference profile (not calibrated: --no-calibrate, or every device "
             "has its own speed and messageCost)")
    echo(f"gateway: {state.gateway_url}")
    echo(f"try:     edgepart infer {state.gateway_url} --random --check --deployment {path}")
    if supervise:
        echo("processes that exit are restarted (with backoff) until `edgepart down`; `edgepart status` counts it")
        if device_timeout_s is not None:
            echo(f"a device whose partitions stay down {device_timeout_s:g} s is left out and the deployment "
                 "re-planned over the others")
    echo(f"stop:    edgepart down {state.name}")
    return state


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


async def status(name: str | None, echo: Echo, root: Path | None = None) -> bool:
    runtime = LocalRuntime(root, echo=echo)
    runs = await runtime.status(name)
    if not runs:
        echo(f"no deployments are up (run directory {runtime.root})")
        return True
    for run in runs:
        ready = sum(1 for p in run.partitions if p["ready"])
        restarts = sum(run.restarts.values())
        echo(f"{run.name}: {'ready' if run.ready else 'NOT READY'}, gateway {run.gateway_url}"
             f"{'' if run.alive.get('gateway', True) else ' (NOT RUNNING)'}, "
             f"{ready}/{len(run.partitions)} partitions ready{', emulated devices' if run.emulated else ''}"
             f", {'supervised' if run.supervised else 'not supervised'}"
             + (f", {restarts} restarts (gateway {run.restarts.get('gateway', 0)})" if restarts else "")
             + (f"; {run.detail}" if run.detail else ""))
        if run.calibration is not None:
            echo(run.calibration.summary())
        for line in replan_lines(run):
            echo(line)
        rows = [[p["id"], p["device"], p["stage"], p["pid"], "yes" if run.alive.get(p["id"]) else "NO",
                 "yes" if p["ready"] else "NO", run.restarts.get(p["id"], 0), p.get("computed") or 0,
                 _ms(p.get("compute_mean_s")), p["url"], p["detail"] or ""] for p in run.partitions]
        if run.manager is not None:  # accuracy-aware data partitioning
            from edgepart.runtime.variants_local import manager_lines

            echo("\n".join(manager_lines(run.manager)))
            rows = [[p["id"], p["device"], p["pid"], "yes" if run.alive.get(p["id"]) else "NO",
                     "yes" if p["ready"] else "NO", p.get("variant") or "off", p.get("loaded") or "-", p["url"],
                     p["detail"] or ""] for p in run.partitions]
            echo(table(["worker", "device", "pid", "alive", "ready", "runs", "loaded", "url", "detail"], rows))
            continue
        if rows:
            echo(table(["partition", "device", "stage", "pid", "alive", "ready", "restarts", "requests", "compute",
                        "url", "detail"], rows))
    return all(r.ready for r in runs)


def replan_lines(run: RunStatus) -> list[str]:
    """What `status` says of re-plans: the plan's generation, the devices left out and why, a failed re-plan."""
    lines = []
    record = run.replan
    if record is not None and not record.feasible:
        lines.append(f"RE-PLAN FAILED: {record.reason}; the plan of generation {run.generation} still runs")
    elif record is not None:
        lines.append(f"re-planned: generation {run.generation}, plan {run.plan_hash} on {', '.join(record.devices)}"
                     f" (master {record.master}): {record.reason}")
    for excluded in run.excluded:
        lines.append(f"excluded device {excluded.name} ({excluded.reason}) since "
                     f"{time.strftime('%H:%M:%S', time.localtime(excluded.since))}: {excluded.message}")
    return lines


async def restart(name: str, ident: str, echo: Echo, root: Path | None = None, timeout_s: float = 300.0) -> None:
    runtime = LocalRuntime(root, echo=echo)
    new = await runtime.restart(name, ident, ready_timeout_s=timeout_s)
    echo(f"{name}: {ident} restarted (pid {new.pid}, restart {new.restarts}); every partition is ready")


async def down(name: str | None, echo: Echo, root: Path | None = None) -> list[str]:
    stopped = await LocalRuntime(root, echo=echo).down(name)
    echo(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")
    return stopped


def read_input(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """A .npy file (no pickle), cast to float32, checked against the model's input shape."""
    import numpy as np
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EdgepartError(f"--input {path}: not a readable .npy array: {err}") from None
    if tuple(array.shape) != tuple(shape):
        raise EdgepartError(f"--input {path}: shape {list(array.shape)}, the model expects {list(shape)}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def trace_table(trace: dict[str, Any]) -> str:
    """A request's timeline: per partition (by stage) when its first piece arrived, its tile was complete,
    it computed and its pieces were delivered, in ms after the gateway received the request."""
    def at(events: dict[str, float], key: str) -> str:
        return f"{events[key] * 1e3:.1f}" if key in events else "-"

    def took(events: dict[str, float], begin: str, end: str) -> str:
        return f"{(events[end] - events[begin]) * 1e3:.1f}" if begin in events and end in events else "-"

    rows = []
    for p in trace["partitions"]:
        e = p["events"]
        rows.append([p["stage"], p["partition"], p["device"], at(e, "first_piece"), at(e, "assembled"),
                     at(e, "compute_start"), took(e, "compute_start", "compute_end"), at(e, "sent"),
                     p.get("detail") or ""])
    g = trace["gateway"]
    rows.append(["", "gateway", "", "", "", "", "", at(g, "output"), f"scattered at {at(g, 'scattered')} ms"])
    return (f"request {trace['request_id']}, ms after the gateway received it:\n"
            + table(["stage", "partition", "device", "first piece", "assembled", "compute start", "compute ms",
                     "sent", "detail"], rows))


def reference_model(model: str | None, input_shape: str | None, weights: Path | None, model_seed: int,
                    deployment: Path | None, model_id: str | None = None) -> ModelRef | None:
    """The model `--check` compares with: named by the user (`--model`, or the model of `--deployment`; of
    several, the one with id `model_id`)."""
    from edgepart.graph.loader import ModelRef, input_shape_of, parse_input_shape
    from edgepart.runtime.planning import model_ref

    if model is not None and deployment is not None:
        raise EdgepartError("give one of --model and --deployment, not both")
    if deployment is not None:
        specs = load_deployment(deployment).spec.model_specs()
        ids = [mid for mid, _ in specs]
        if model_id is None and len(specs) > 1:
            raise EdgepartError(f"{deployment} deploys {len(specs)} models ({', '.join(ids)}): name one with "
                                "--model-id")
        chosen = next((m for mid, m in specs if model_id in (None, mid)), None)
        if chosen is None:
            raise EdgepartError(f"--model-id: {deployment} deploys {', '.join(ids)}, not {model_id!r}")
        return model_ref(chosen, Path.cwd())
    if model is None:
        return None
    shape = parse_input_shape(input_shape) if input_shape else None
    ref = ModelRef(model, shape, str(weights) if weights else None, model_seed)
    return ModelRef(model, input_shape_of(ref), ref.weights, model_seed)


def deployed_kernels(deployment: Path | None, exact_kernels: bool) -> bool:
    """Whether the deployment `--check` compares with runs exact kernels: its file's exactKernels, else what
    the user says (--exact-kernels)."""
    if deployment is None:
        return exact_kernels
    if exact_kernels:
        raise EdgepartError("--exact-kernels: the deployment file says which kernels it runs (exactKernels); "
                            "give one of --exact-kernels and --deployment")
    return load_deployment(deployment).spec.exact_kernels


async def infer_command(url: str, *, random: bool, input_path: Path | None, check_output: bool, seed: int,
                        requests: int, output_path: Path | None, echo: Echo, show_trace: bool = False,
                        reference: ModelRef | None = None, model_id: str | None = None,
                        exact_kernels: bool = False) -> int:
    """Send inputs to a gateway (to model `model_id` of several); with `check_output`, compare the last
    output with `reference` run here with the deployment's kernels (`exact_kernels`: bit for bit; else
    within executor.DEPLOYED_RTOL of max|reference|).

    The reference is the model the user names, never the one the gateway describes (`GET /v1/model` is
    only read for the input shape and to print what the gateway says it serves).
    """
    import numpy as np
    import torch

    from edgepart.runtime.client import check, fetch_model, fetch_trace, infer, served_model

    if random == (input_path is not None):
        raise EdgepartError("give exactly one of --random and --input FILE.npy")
    if check_output and reference is None:
        raise EdgepartError("--check needs the model to compare with: --model NAME (with --input-shape outside "
                            "the zoo) or --deployment FILE (the gateway's own description is not trusted to name "
                            "code to run here)")
    info = await fetch_model(url)
    served = served_model(info, model_id)
    shape = tuple(served["input_shape"])
    if reference is not None and reference.input_shape is not None and tuple(reference.input_shape) != shape:
        raise EdgepartError(f"the gateway takes inputs of shape {list(shape)}, the model to check with "
                            f"({reference.name}) takes {list(reference.input_shape)}")
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) if input_path is None
         else read_input(input_path, shape))
    results = [await infer(url, x, model_id=model_id) for _ in range(max(1, requests))]
    last = results[-1]
    latencies = [r.latency_s * 1e3 for r in results]
    server = [r.server_latency_s * 1e3 for r in results if r.server_latency_s is not None]
    echo(f"output {'x'.join(map(str, last.output.shape))} from {str(served['model']['name'])[:200]} "
         f"({info.get('partitions', '?')} partitions), request {last.request_id}")
    summary = f"latency {statistics.median(latencies):.1f} ms"
    if len(results) > 1:
        summary = f"median latency {statistics.median(latencies):.1f} ms over {len(results)} requests"
    if server:
        summary += f" (gateway {statistics.median(server):.1f} ms)"
    predicted = served.get("predicted_latency_s") or info.get("predicted", {}).get("latency_s")
    if predicted:
        summary += f"; predicted {predicted * 1e3:.1f} ms"
    echo(summary)
    if show_trace:
        echo(trace_table(await fetch_trace(url, last.request_id)))
    if output_path is not None:
        np.save(output_path, last.output.numpy(), allow_pickle=False)
        echo(f"wrote {output_path}")
    if not check_output or reference is None:
        return 0
    comparison = await check(reference, x, last.output, exact_kernels=exact_kernels)
    kernels = "exact" if exact_kernels else "fast"
    echo(f"whole model {reference.name} here ({kernels} kernels, as the deployment) vs deployment: "
         f"{comparison.describe()}")
    if not comparison.passed:
        echo("MISMATCH: the deployment's output differs from the whole model's")
        return 1
    echo("OK: the deployment's output equals the whole model's" + (
        " bit for bit" if exact_kernels else f" within the tolerance (relative error "
                                             f"{comparison.relative_error:.3g} <= {comparison.rtol:g})"))
    return 0
