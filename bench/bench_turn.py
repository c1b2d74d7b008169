"""What one turn costs (turnstile: a partition tells the next one on its device that its turn has come).

Side by side, in one run, against the same partition (the real `partition_app`, served on loopback with the
guarded protocol the services use):

- before: the turn as the app's FastAPI route, one httpx POST each, on a new connection each (the app
  answers with `Connection: close`), as the runtime sent turns before issue #12;
- lane: the turn as a notice on the tensor lane, POSTed by the process's kept-alive `HopClient`, as the
  runtime sends it now.

Median and p90 wall time of one turn (client and server share this process and its one event loop, so both
ends' CPU is in the figure), plus the connections each side opened. The cost model charges a turn as a local
message: `Cluster.local_s` = both ends' per-message cost of the device profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import torch

from edgepart.graph.layer_graph import trace
from edgepart.graph.loader import ModelRef
from edgepart.partition_service import PartitionService, partition_app, render_configs
from edgepart.partition_service.auth import write_secret
from edgepart.partition_service.server import loopback_url, on_loopback
from edgepart.partition_service.transport import internal_headers, make_hop_client
from edgepart.partition_service.turnstile import TURN_PATH, device_turns
from edgepart.plan import Plan
from edgepart.planner.cluster import (
    Cluster,
    Device,
    Link,
    reference_message_overhead,
    reference_profile,
)
from edgepart.planner.offload import OffloadProblem
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.deploy import offload_plan

RESULTS = Path(__file__).parent / "results"


def _plan() -> tuple[Plan, str, str]:
    """An offloading plan (a small CNN in 2x2 paths) whose end device takes turns: (plan, a partition of the end
    device, the one before it)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
    _, graph = trace(model, (1, 3, 16, 16), "turn-cnn")
    base = reference_profile()
    cluster = Cluster((Device("end", base, 0.2), Device("server", base, 2.0)), "end", "switched", Link(1e-3, 1e6))
    problem = OffloadProblem(graph, cluster)
    tau = problem.tau_limit
    result = fl_result(problem, "mw", "sequential", tau, (2, 2), [0, 1, 2, 3], [1, 1, 1, 1])
    plan = offload_plan(result, graph, ModelRef("turn-cnn", (1, 3, 16, 16)))
    tid, (before, _) = next((t, pair) for t, pair in device_turns(plan).items() if pair[0] is not None)
    assert before is not None
    return plan, tid, before


@asynccontextmanager
async def _served(service: PartitionService, *, lane: bool) -> AsyncIterator[str]:
    app = partition_app(service)
    if not lane:  # the route only: what a turn was before it rode the lane
        app.state.guard = dataclasses.replace(app.state.guard, notices={})
    async with on_loopback(app) as server:
        yield loopback_url(server)


async def _times(turn: Callable[[int], Awaitable[None]], reps: int) -> list[float]:
    for k in range(5):  # warm up
        await turn(-1 - k)
    out = []
    for k in range(reps):
        started = time.perf_counter()
        await turn(k)
        out.append(time.perf_counter() - started)
    return out


async def _measure(reps: int) -> dict[str, dict[str, float]]:
    plan, tid, before = _plan()
    directory = Path(tempfile.mkdtemp(prefix="bench-turn-"))
    secret = write_secret(directory / "secret")
    configs = render_configs(plan, "bench-turn", {t.id: f"http://{t.id}:8000" for t in plan.tasks},
                             "http://gateway:9000", client_port=8080, secret_file=str(directory / "secret"))
    results: dict[str, dict[str, float]] = {}
    body = {"sender": before}
    service = PartitionService(configs.partition(tid))
    async with _served(service, lane=False) as url, httpx.AsyncClient(timeout=5.0) as client:
        opened = [0]

        async def before_turn(k: int) -> None:
            response = await client.post(url + TURN_PATH, json={**body, "request_id": f"b{k}"},
                                         headers=internal_headers(secret))
            assert response.status_code == 204, response.text
            opened[0] += response.headers.get("connection", "") == "close"

        times = await _times(before_turn, reps)
        results["route, new connection each (before)"] = _summary(times, opened[0])
    service = PartitionService(configs.partition(tid))
    async with _served(service, lane=True) as url, make_hop_client(5.0, secret=secret) as hop:
        data = json.dumps(body)

        async def lane_turn(k: int) -> None:
            payload = f'{{"request_id": "l{k}", {data[1:]}'.encode()
            answer = await hop.post(url + TURN_PATH, [payload], {"Content-Type": "application/json"}, peer=tid,
                                    what="turn")
            assert answer.status == 204, answer.content

        times = await _times(lane_turn, reps)
        results["tensor lane, kept alive (now)"] = _summary(times, hop.opened)
    return results


def _summary(times: list[float], connections: int) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": statistics.median(times) * 1e3, "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3,
            "connections": float(connections), "turns": float(len(times))}


def main(quick: bool = False) -> None:
    reps = 200 if quick else 2000
    results = asyncio.run(_measure(reps))
    modelled = 2 * reference_message_overhead() * 1e3
    print(f"{'turn':40} {'median ms':>10} {'p90 ms':>8} {'connections':>12}")
    for name, row in results.items():
        print(f"{name:40} {row['median_ms']:10.3f} {row['p90_ms']:8.3f} {int(row['connections']):>12}")
    print(f"{'modelled (local message, reference)':40} {modelled:10.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turn.json").write_text(json.dumps({"reps": reps, "rows": results, "modelled_ms": modelled}, indent=2))
