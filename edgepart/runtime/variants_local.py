"""Accuracy-aware data partitioning as local processes: `edgepart dse` and `edgepart up` of a variants deployment.

A variants deployment runs a dispatcher (the gateway's role in this mode, on
the master device) and one worker per device; the dispatcher's resource
manager chooses which variant each worker runs and splits every request's
images over them (`edgepart.partition_service.dispatcher`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from edgepart.runtime.emulate import EmulationError, create_testbed, support_problems, used_indexes
from edgepart.runtime.local import (
    PARTITION_BASE_PORT,
    SECRET_FILE,
    LocalRuntime,
    LocalRuntimeError,
    RunState,
    _free_socket,
)
from edgepart.spec import DNNDeployment, parse_duration

if TYPE_CHECKING:
    import torch

    from edgepart.policy.variants_plan import Exploration

__all__ = ["dse_report", "exploration_table", "infer_held_out", "infer_parts", "manager_lines", "up_variants",
           "worker_id"]

DISPATCHER = "dispatcher"


def worker_id(device: str) -> str:
    return f"worker-{device}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def exploration_table(exploration: Exploration) -> str:
    """θ per device and variant, the Pareto front and the choice, as text."""
    family, problem, selection = exploration.family, exploration.problem, exploration.selection
    names = [v.name for v in family.variants]
    batch = exploration.batch
    lines = [f"family {family.name} ({len(names)} variants: {family.task}) on {len(problem.nodes)} devices; "
             f"target: {exploration.settings.target.describe() if exploration.settings.target else '-'}",
             "",
             "variant accuracy: " + ", ".join(f"{v.name} {v.accuracy.value:.4f} ({v.accuracy.kind})"
                                              for v in family.variants),
             "", f"θ, images/s (cost model, batches of {batch}):",
             _table(["device", *names], [[n.name, *(f"{t:.0f}" if t is not None else "-" for t in n.throughput)]
                                         for n in problem.nodes]),
             "",
             f"Pareto front: {len(exploration.front)} of {problem.configuration_count} configurations "
             f"({exploration.front.examined} partial ones examined, {exploration.dse_seconds * 1e3:.1f} ms)"]
    chosen = selection.assignment.choices
    rows = []
    for c in exploration.front.configurations:
        mark = "*" if c.choices == chosen else ""
        rows.append([mark, f"{c.score.throughput:.0f}", f"{c.score.accuracy:.4f}", f"{c.score.power_w:g}",
                     *((v or "off") for v in problem.describe(c.choices))])
    lines.append(_table(["", "images/s", "accuracy", "W", *(n.name for n in problem.nodes)], rows))
    total = sum(selection.assignment.weights)
    shares = ", ".join(f"{n.name}: {v or 'off'}" + (f" ({w / total:.1%})" if v else "")
                       for n, v, w in zip(problem.nodes, selection.variants, selection.assignment.weights,
                                          strict=True))
    lines += ["", f"chosen: {shares}",
              f"predicted {selection.throughput:.0f} images/s, accuracy {selection.accuracy:.4f}, "
              f"{selection.power_w:g} W; " + ("target met" if selection.feasible else selection.note)]
    return "\n".join(lines)


def dse_report(deployment: DNNDeployment, base: Path, *, as_json: bool = False) -> tuple[str, bool]:
    """What `edgepart dse` prints, and whether the target is met."""
    from edgepart.policy.variants_plan import explore, to_json

    exploration = explore(deployment.spec, base)
    text = to_json(exploration) if as_json else exploration_table(exploration)
    return text, exploration.selection.feasible


async def up_variants(runtime: LocalRuntime, deployment: DNNDeployment, *, port: int, emulate: bool,
                      ready_timeout_s: float, base: Path | None,
                      theta: Mapping[str, Mapping[str, float]] | None = None) -> RunState:
    """Start a dispatcher and one worker per device; wait until every worker answers (module docstring).

    With `emulate` (root), every worker runs in its device's network namespace and CPU quota and the
    dispatcher in the master device's namespace, serving its clients on the host's 127.0.0.1:PORT.
    `theta` (device -> variant -> images/s, e.g. measured) replaces the cost model's estimates."""
    from edgepart.partition_service.auth import write_secret
    from edgepart.policy.variants_plan import explore
    from edgepart.runtime.planning import with_cpu_speeds

    name = deployment.metadata.name
    existing = runtime.load(name)
    if existing is not None:
        if any(runtime.alive(p) for p in existing.processes):
            raise LocalRuntimeError(f"deployment {name} is already up (dispatcher {existing.gateway_url}); "
                                    f"run `edgepart down {name}` first")
        await runtime.teardown(existing)
    if emulate:
        problems = support_problems()
        if problems:
            raise EmulationError("; ".join(problems))
        deployment = with_cpu_speeds(deployment)
    spec = deployment.spec
    root = base or Path.cwd()
    from edgepart.policy.throughput import ThroughputEstimates

    given = None if theta is None else ThroughputEstimates(
        {(n, v): t for n, row in theta.items() for v, t in row.items()})
    exploration = await asyncio.to_thread(lambda: explore(spec, root, estimates=given))
    selection = exploration.selection
    runtime._echo(f"{exploration.family.name}: {len(exploration.family.variants)} variants on "
                  f"{len(exploration.cluster.devices)} devices; chosen "
                  + ", ".join(f"{n}: {v or 'off'}" for n, v in zip(exploration.cluster.names, selection.variants,
                                                                  strict=True))
                  + f"; predicted {selection.throughput:.0f} images/s at accuracy {selection.accuracy:.4f}"
                  + ("" if selection.feasible else f" ({selection.note})"))
    directory = runtime.root / name
    for sub in ("logs", "configs"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    write_secret(directory / SECRET_FILE)
    state = RunState(name=name, directory=str(directory), cwd=str(root), started_at=time.time(), gateway_url="",
                     port=port, emulated=emulate, model=f"variants of {exploration.family.name}",
                     solver="accuracy-aware", how="design-space exploration",
                     predicted_throughput_per_s=selection.throughput)
    try:
        await _start(runtime, deployment, exploration, state, root, emulate, theta)
        runtime._echo(f"started {len(state.processes)} processes; waiting until every worker answers")
        await runtime._wait_ready(state, ready_timeout_s)
        runtime._apply_caps(state)
    except BaseException:
        await runtime.teardown(state)
        raise
    state.status = "ready"
    runtime._save(state)
    return state


async def _start(runtime: LocalRuntime, deployment: DNNDeployment, exploration: Exploration, state: RunState,
                 root: Path, emulate: bool, theta: Mapping[str, Mapping[str, float]] | None) -> None:
    from edgepart.partition_service.dispatcher import DispatcherConfig
    from edgepart.partition_service.variant_worker import WorkerConfig

    spec = deployment.spec
    assert spec.variants is not None
    configs = Path(state.directory) / "configs"
    secret = str(Path(state.directory) / SECRET_FILE)
    devices = {d.name: d for d in spec.devices}
    client_sock = _free_socket("127.0.0.1", state.port)
    sockets = {}
    testbed = None
    try:
        state.port = client_sock.getsockname()[1]
        state.gateway_url = f"http://127.0.0.1:{state.port}"
        if emulate:
            taken = used_indexes() | {s.testbed.index for s in runtime.runs() if s.testbed is not None}
            index = next((i for i in range(255) if i not in taken), None)
            if index is None:
                raise EmulationError("all 255 testbed subnets 10.123.K.0/24 are in use")
            runtime._echo(f"emulating {len(devices)} devices: network namespaces on 10.123.{index}.0/24, "
                          f"{spec.network.bandwidth} tbf caps, cgroup v1 CPU quotas")
            testbed = await asyncio.to_thread(create_testbed, state.name, index, list(spec.cluster().devices),
                                              spec.network)
            state.testbed = testbed
            runtime._save(state)
            hosts = {n: testbed.device(n).address for n in devices}
            urls = {n: f"http://{hosts[n]}:{PARTITION_BASE_PORT}" for n in devices}
        else:
            sockets = {n: _free_socket() for n in devices}
            hosts = {n: "127.0.0.1" for n in devices}
            urls = {n: f"http://127.0.0.1:{s.getsockname()[1]}" for n, s in sockets.items()}
        runtime._save(state)
        for device, d in devices.items():
            threads = max(1, int(d.cpus)) if d.cpus else 1
            port = PARTITION_BASE_PORT if emulate else sockets[device].getsockname()[1]
            config = WorkerConfig(deployment=state.name, device=device, host=hosts[device], port=port,
                                  family=exploration.family, input_shape=exploration.input_shape,
                                  batch=spec.variants.batch, secret_file=secret, threads=threads)
            path = configs / f"{worker_id(device)}.json"
            path.write_text(config.model_dump_json(indent=2))
            netns = testbed.device(device).netns if testbed is not None else None
            cgroup = testbed.device(device).cgroup if testbed is not None else None
            state.processes.append(runtime._spawn(
                state, worker_id(device), "worker", device, urls[device], path, threads=threads,
                sockets=() if emulate else (sockets[device],), netns=netns, cgroup=cgroup, cap_later=True))
            runtime._save(state)
        master = exploration.master
        dconfig = DispatcherConfig(
            deployment=state.name, host="127.0.0.1", port=state.port,
            spec=json.loads(deployment.spec.model_dump_json(by_alias=True, exclude_none=True)),
            base=str(root), workers=urls, secret_file=secret,
            theta={n: dict(row) for n, row in (theta or {}).items()},
            request_timeout_s=parse_duration(spec.request_timeout))
        path = configs / f"{DISPATCHER}.json"
        path.write_text(dconfig.model_dump_json(indent=2))
        netns = testbed.device(master).netns if testbed is not None else None
        state.processes.append(runtime._spawn(state, DISPATCHER, "dispatcher", master, state.gateway_url, path,
                                              sockets=(client_sock,), netns=netns))
        runtime._save(state)
    finally:
        client_sock.close()
        for sock in sockets.values():
            sock.close()


def manager_lines(manager: dict[str, object]) -> list[str]:
    """The resource manager's state as `edgepart status` prints it."""
    configuration = manager.get("configuration") or {}
    assert isinstance(configuration, dict)
    chosen = ", ".join(f"{n}: {v or 'off'}" for n, v in configuration.items()) or "none yet"

    def number(key: str, fmt: str) -> str:
        value = manager.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-"

    lines = [f"resource manager: {manager.get('phase')}; configuration {chosen}",
             f"  predicted {number('predictedThroughput', '.0f')} images/s at accuracy "
             f"{number('predictedAccuracy', '.4f')} (target {'met' if manager.get('targetMet') else 'NOT met'}); "
             f"measured {number('measuredThroughput', '.0f')} images/s",
             f"  re-plans {manager.get('replans', 0)} (last: {manager.get('lastReplan') or '-'}); "
             f"images dispatched again {manager.get('redispatchedImages', 0)}; queued {manager.get('queued', 0)}"]
    if manager.get("note"):
        lines.append(f"  {manager['note']}")
    if manager.get("stalled"):
        lines.append(f"  stalled: {manager['stalled']}")
    return lines


async def infer_held_out(url: str, *, images: int, check_with: Path | None, echo: Callable[[str], None],
                         timeout_s: float = 120.0) -> int:
    """Send the digits family's held-out images to a dispatcher in requests of `images`; report the measured
    accuracy of its answers against the expected one. With `check_with` (a deployment file naming the family),
    every part's answers are compared with its variant's own output computed here (atol 1e-5)."""
    import torch

    from edgepart.graph.loader import load_model
    from edgepart.runtime.client import fetch_model
    from edgepart.spec import load_deployment
    from edgepart.variants import model_ref
    from edgepart.variants.family import DIGITS_FAMILY
    from edgepart.variants.train import load_split

    info = await fetch_model(url)
    if info.get("mode") != "variants":
        raise LocalRuntimeError(f"{url} is not a dispatcher of a variant family (GET /v1/model has no mode "
                                "'variants')")
    if info.get("family") != DIGITS_FAMILY:
        raise LocalRuntimeError(f"--held-out knows the held-out split of the {DIGITS_FAMILY!r} family only; "
                                f"{url} serves {info.get('family')!r}")
    models: dict[str, torch.nn.Module] = {}
    if check_with is not None:
        from edgepart.policy.variants_plan import resolve_family

        variants = load_deployment(check_with).spec.variants
        if variants is None:
            raise LocalRuntimeError(f"--deployment {check_with} names no variant family")
        family = resolve_family(variants, Path.cwd())
        models = {v.name: load_model(model_ref(v)) for v in family.variants}
    split = load_split()
    xs, ys = split.test_x, split.test_y
    right = expected = 0.0
    worst = 0.0
    mismatch = False
    answered: dict[str, int] = {}
    started = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False, timeout=timeout_s) as client:
        for k, start in enumerate(range(0, xs.shape[0], images)):
            x = xs[start:start + images].contiguous()
            result, parts, accuracy = await infer_parts(url, x, f"held-{k}", client)
            right += int((result.argmax(dim=1) == ys[start:start + images]).sum())
            expected += accuracy * x.shape[0]
            for a, b, _node, variant in parts:
                answered[variant] = answered.get(variant, 0) + b - a
                if models:
                    with torch.no_grad():
                        own = models[variant](x[a:b])
                    worst = max(worst, float((own - result[a:b]).abs().max()))
                    mismatch = mismatch or not torch.allclose(own, result[a:b], atol=1e-5, rtol=1e-4)
    seconds = time.perf_counter() - started
    total = xs.shape[0]
    echo(f"{total} held-out digits in requests of {images}: measured accuracy {right / total:.4f} "
         f"({int(right)}/{total}), expected {expected / total:.4f}; {total / seconds:.0f} images/s")
    echo("answered by " + ", ".join(f"{v} {n}" for v, n in sorted(answered.items())))
    if not models:
        return 0
    if mismatch:
        echo(f"MISMATCH: an answer differs from its variant's own output (max abs diff {worst:.3g}; "
             "atol 1e-05, rtol 1e-04)")
        return 1
    echo(f"OK: every answer equals its variant's own output (max abs diff {worst:.3g}; atol 1e-05, rtol 1e-04)")
    return 0


async def infer_parts(url: str, x: torch.Tensor, request_id: str, client: httpx.AsyncClient
                      ) -> tuple[torch.Tensor, list[tuple[int, int, str, str]], float]:
    """One request to a dispatcher: the answers, the parts (start, stop, node, variant) by start, and the
    expected accuracy of the answers."""
    from edgepart.partition_service.variant_worker import frame_body
    from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame

    body = frame_body(request_id, x, "client")
    response = await client.post(url.rstrip("/") + "/v1/infer", content=body,
                                 headers={"content-type": CONTENT_TYPE, "x-request-id": request_id})
    if response.status_code != 200:
        raise LocalRuntimeError(f"{url}: /v1/infer answered {response.status_code}: {response.text[:300]}")
    parts = [(int(a), int(b), str(n), str(v)) for a, b, n, v in json.loads(response.headers["x-edgepart-parts"])]
    return decode_frame(response.content).tensor, parts, float(response.headers["x-edgepart-accuracy"])
