"""`edgepart up` for a deployment with `sources`: one ring worker process per device (several data sources).

No plan is made: each worker gets the ring, the sources, the scheduler and every device's per-parameter
delay γ (from the cost model's whole-model time), and computes the AR-MDI layer ranges itself
(`partition_service.ring_config`). Locally every worker listens on a socket the runtime binds on
127.0.0.1; emulated, each runs in its device's namespace and CPU group, listens there for the ring, and
serves clients (the load generator, readiness checks) on a socket bound on the host's loopback, which is
the URL recorded in `state.ring`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from edgepart.runtime.emulate import EmulationError, create_testbed, used_indexes
from edgepart.spec import DNNDeployment, parse_duration

if TYPE_CHECKING:
    from edgepart.runtime.local import LocalRuntime, RunState

__all__ = ["RING_BASE_PORT", "ring_status", "up_ring", "wait_ring_ready"]

RING_BASE_PORT = 9300  # inside an emulated device


async def up_ring(runtime: LocalRuntime, deployment: DNNDeployment, state: RunState, *, emulate: bool,
                  base: Path) -> None:
    """Start the ring workers of `deployment` (its processes recorded in `state`); `runtime.up` waits for them."""
    from edgepart.graph.loader import load_graph
    from edgepart.partition_service.config import ModelSource
    from edgepart.partition_service.ring_config import render_ring_configs
    from edgepart.planner.cluster import cluster_from_spec
    from edgepart.runtime.local import SECRET_FILE, _free_socket
    from edgepart.runtime.planning import model_ref

    spec = deployment.spec
    cluster_spec = spec.cluster()
    ring = spec.ring_order()
    sources = [s.device for s in spec.sources]
    ref = model_ref(spec.first_model, base)
    graph = await asyncio.to_thread(load_graph, ref)
    cluster = cluster_from_spec(cluster_spec, base_dir=base)
    whole_s = {w: sum(cluster.device(w).layer_time(layer) for layer in graph) for w in ring}
    devices = {d.name: d for d in cluster_spec.devices}
    threads = {w: max(1, int(devices[w].cpus or 1)) for w in ring}
    assert ref.input_shape is not None
    model = ModelSource.of(ref, ref.input_shape)
    host_sockets = {w: _free_socket() for w in ring}
    try:
        state.ring = {w: f"http://127.0.0.1:{s.getsockname()[1]}" for w, s in host_sockets.items()}
        common: dict[str, Any] = dict(
            scheduler=spec.scheduler, secret_file=str(Path(state.directory) / SECRET_FILE),
            queue_bound=spec.queue_bound, heartbeat_s=parse_duration(spec.heartbeat), threads=threads,
            request_timeout_s=max(parse_duration(spec.request_timeout), 1.0),
            connection=runtime._connection, exact_kernels=spec.exact_kernels)
        if not emulate:
            configs = render_ring_configs(graph, whole_s, state.name, model, ring, sources, state.ring, **common)
            netns: dict[str, str | None] = dict.fromkeys(ring)
            cgroups: dict[str, str | None] = dict.fromkeys(ring)
        else:
            taken = used_indexes() | {s.testbed.index for s in runtime.runs() if s.testbed is not None}
            index = next((i for i in range(255) if i not in taken), None)
            if index is None:
                raise EmulationError("all 255 testbed subnets 10.123.K.0/24 are in use")
            testbed = await asyncio.to_thread(create_testbed, state.name, index,
                                              [devices[w] for w in ring], spec.network)
            state.testbed = testbed
            runtime._save(state)
            addresses = {w: f"http://{testbed.device(w).address}:{RING_BASE_PORT}" for w in ring}
            delay = parse_duration(spec.network.latency)
            configs = render_ring_configs(
                graph, whole_s, state.name, model, ring, sources, addresses,
                hosts={w: testbed.device(w).address for w in ring}, delays=dict.fromkeys(ring, delay),
                client_ports={w: s.getsockname()[1] for w, s in host_sockets.items()}, **common)
            netns = {w: testbed.device(w).netns for w in ring}
            cgroups = {w: testbed.device(w).cgroup for w in ring}
        directory = Path(state.directory) / "configs"
        for config in configs:
            path = directory / f"{config.worker}.json"
            path.write_text(config.model_dump_json(indent=2))
            state.processes.append(runtime._spawn(
                state, config.worker, "ring", config.worker, state.ring[config.worker], path,
                threads=config.threads, sockets=(host_sockets[config.worker],), netns=netns[config.worker],
                cgroup=cgroups[config.worker], cap_later=True))
            runtime._save(state)
        state.gateway_url = state.ring[sources[0]]
    finally:
        for sock in host_sockets.values():
            sock.close()


async def wait_ring_ready(runtime: LocalRuntime, state: RunState, timeout_s: float) -> None:
    """Until every worker answers /readyz; fail fast when a process exits or its model failed to load."""
    from edgepart.runtime.local import LocalRuntimeError, _tail

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        while True:
            waiting = []
            for proc in state.processes:
                code = runtime._exit_code(proc)
                if code is not None:
                    raise LocalRuntimeError(f"ring worker {proc.id} exited (code {code}) while starting; the end "
                                            f"of {proc.log}:\n{_tail(proc.log)}")
                try:
                    answer = (await client.get(state.ring[proc.id] + "/readyz")).json()
                except (httpx.HTTPError, ValueError) as err:
                    answer = {"state": type(err).__name__}
                if answer.get("state") == "failed":
                    raise LocalRuntimeError(f"ring worker {proc.id} failed to load: {answer.get('failure')}; "
                                            f"the end of {proc.log}:\n{_tail(proc.log)}")
                if answer.get("state") != "ready":
                    waiting.append(f"{proc.id}: {answer.get('state')}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise LocalRuntimeError(f"deployment {state.name} not ready after {timeout_s:g} s: "
                                        + "; ".join(waiting))
            await asyncio.sleep(0.25)


async def ring_status(runtime: LocalRuntime, state: RunState, client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """One row per worker: its state as it reports it (readiness from /readyz)."""
    rows = []
    for proc in state.processes:
        row: dict[str, Any] = {"id": proc.id, "device": proc.device, "stage": "ring", "pid": proc.pid,
                               "url": state.ring[proc.id], "ready": False, "detail": None}
        try:
            answer = await client.get(state.ring[proc.id] + "/readyz")
            row["ready"] = answer.status_code == 200
            row["detail"] = None if row["ready"] else answer.json().get("failure") or answer.json().get("state")
        except (httpx.HTTPError, ValueError) as err:
            row["detail"] = f"does not answer: {type(err).__name__}"
        rows.append(row)
    return rows
