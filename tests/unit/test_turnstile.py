"""Turns between the partitions of one device: chains in the plan's priority order, rendered into the partition
configs, the wait (with its limit) and POST /v1/turn behind the deployment's secret."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.graph.loader import ModelRef
from edgepart.partition_service import PartitionService, partition_app, render_configs
from edgepart.partition_service.auth import write_secret
from edgepart.partition_service.server import loopback_url, on_loopback
from edgepart.partition_service.transport import make_hop_client
from edgepart.partition_service.turnstile import (
    TURN_PATH,
    TurnConfig,
    Turnstile,
    device_turns,
    turn_wait_s,
)
from edgepart.plan import Plan
from edgepart.planner.cluster import Cluster, Device, Link, reference_profile
from edgepart.planner.evaluate import evaluate
from edgepart.planner.offload import OffloadProblem
from edgepart.planner.offload.build import fl_result
from edgepart.planner.offload.deploy import offload_plan, raw_paths_first


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.p(torch.relu(self.c2(torch.relu(self.c1(x))))), 1))


def offload_four_paths() -> tuple[Plan, LayerGraph]:
    _, graph = trace(Small(), (1, 3, 16, 16), "small")
    base = reference_profile()
    cluster = Cluster((Device("end", base, 0.2), Device("server", base, 2.0)), "end", "switched", Link(1e-3, 1e6))
    problem = OffloadProblem(graph, cluster)
    tau = problem.tau_limit
    result = raw_paths_first(problem, fl_result(problem, "mw", "sequential", tau, (2, 2), [2, 0, 3, 1],
                                                [1, tau, 0, 1]))
    return offload_plan(result, graph, ModelRef("small", (1, 3, 16, 16))), graph


def test_each_device_chains_its_compute_tasks_in_priority_order() -> None:
    plan, _ = offload_four_paths()
    turns = device_turns(plan)
    by_device: dict[str, list[str]] = {}
    for task in sorted(plan.compute_tasks, key=lambda t: t.priority):
        by_device.setdefault(task.device, []).append(task.id)
    assert by_device["end"] == ["p0-local", "p3-local", "p1-local"]  # order S; path 2 is cut at 0: no local part
    for chain in by_device.values():
        for k, tid in enumerate(chain):
            assert turns[tid] == (chain[k - 1] if k else None, chain[k + 1] if k + 1 < len(chain) else None)
    assert by_device["server"][-1] == "fuse"
    assert device_turns(plan.replace(meta={})) == {}  # plans that do not ask for turns take none


def test_configs_carry_the_chain_and_the_wait_limit(tmp_path: Path) -> None:
    plan, _ = offload_four_paths()
    addresses = {t.id: f"http://127.0.0.1:{9100 + i}" for i, t in enumerate(plan.tasks)}
    configs = render_configs(plan, "turns", addresses, "http://127.0.0.1:9000", client_port=8080,
                             secret_file=str(tmp_path / "secret"), request_timeout_s=4.0)
    first = configs.partition("p0-local")
    assert first.turn is not None and first.turn.after is None and first.turn.next == "p3-local"
    assert first.turn.next_url == addresses["p3-local"] and first.turn.wait_s == 1.0  # timeout / 4
    fuse = configs.partition("fuse")
    assert fuse.turn is not None and fuse.turn.next is None and fuse.turn.after is not None
    assert turn_wait_s(30.0) == 2.0
    plain = render_configs(plan.replace(meta={}), "plain", addresses, "http://127.0.0.1:9000", client_port=8080,
                           secret_file=str(tmp_path / "secret"))
    assert all(c.turn is None for c in plain.partitions)


async def test_a_turn_waits_for_its_predecessor_and_no_longer_than_its_limit() -> None:
    first = Turnstile(TurnConfig(after=None, next="b", next_url="http://b:1"))
    assert await first.wait("r0") == 0.0
    gate = Turnstile(TurnConfig(after="a", wait_s=5.0))
    waiter = asyncio.create_task(gate.wait("r1"))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # its predecessor has not computed r1
    gate.passed("r1")
    assert await asyncio.wait_for(waiter, 1.0) < 1.0
    gate.passed("r2")  # the call may come before the request's pieces
    assert await gate.wait("r2") < 0.05
    limited = Turnstile(TurnConfig(after="a", wait_s=0.1))
    started = time.monotonic()
    await limited.wait("lost")
    assert 0.09 < time.monotonic() - started < 1.0 and limited.waited_out == 1
    small = Turnstile(TurnConfig(after="a"), capacity=3)
    for k in range(10):
        small.passed(f"r{k}")
    assert len(small._turns) == 3  # bounded


async def test_turn_calls_need_the_secret_and_the_right_sender(tmp_path: Path) -> None:
    plan, _ = offload_four_paths()
    secret = write_secret(tmp_path / "secret")
    addresses = {t.id: f"http://{t.id}:8000" for t in plan.tasks}
    configs = render_configs(plan, "turns", addresses, "http://gateway:9000", client_port=8080,
                             secret_file=str(tmp_path / "secret"))
    service = PartitionService(configs.partition("p3-local"))
    app = partition_app(service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p3-local:8000") as client:
        body = {"request_id": "r1", "sender": "p0-local"}
        assert (await client.post(TURN_PATH, json=body)).status_code == 401
        assert service.turns is not None and "r1" not in service.turns._turns
        auth = {"authorization": secret.header}
        wrong = await client.post(TURN_PATH, json={"request_id": "r1", "sender": "p1-local"}, headers=auth)
        assert wrong.status_code == 422 and "does not compute before it" in wrong.json()["detail"]
        bad = await client.post(TURN_PATH, json={"request_id": "", "sender": "p0-local"}, headers=auth)
        assert bad.status_code in (400, 422)
        assert (await client.post(TURN_PATH, json=body, headers=auth)).status_code == 204
        assert await asyncio.wait_for(service.turns.wait("r1"), 1.0) < 0.5
        info = (await client.get("/v1/info", headers=auth)).json()
        assert info["turn"] == {"after": "p0-local", "next": "p1-local", "received": 1, "passed": 0, "waited_out": 0}


@asynccontextmanager
async def served(service: PartitionService) -> AsyncIterator[str]:
    """`service`'s app on a real port, with the guarded protocol the services serve with (no slice loaded)."""
    async with on_loopback(partition_app(service)) as server:
        yield loopback_url(server)


async def test_turns_go_over_one_kept_alive_connection_on_the_lane(tmp_path: Path) -> None:
    """A partition passes its turns to the next one over the hop client's kept-alive connection, served on the
    receiver's tensor lane: one connection for many turns, the secret and the sender still checked."""
    plan, _ = offload_four_paths()
    secret = write_secret(tmp_path / "secret")
    addresses = {t.id: f"http://{t.id}:8000" for t in plan.tasks}
    configs = render_configs(plan, "turns", addresses, "http://gateway:9000", client_port=8080,
                             secret_file=str(tmp_path / "secret"))
    receiver = PartitionService(configs.partition("p3-local"))
    sender = PartitionService(configs.partition("p0-local"))
    async with served(receiver) as url, make_hop_client(5.0, secret=secret) as hop:
        sender._hop = hop
        for k in range(5):
            await sender._notify_turn(url, "p3-local", f"r{k}")
        assert hop.opened == 1 and sender.turns_passed == 5  # keep-alive: no connection per turn
        assert receiver.turns is not None and receiver.turns.received == 5
        assert await asyncio.wait_for(receiver.turns.wait("r4"), 1.0) < 0.5
        body = [b'{"request_id": "r9", "sender": "p1-local"}']
        json_type = {"Content-Type": "application/json"}
        wrong = await hop.post(url + TURN_PATH, body, json_type, peer="p3-local", what="turn")
        assert wrong.status == 422 and b"does not compute before it" in wrong.content
        bad = await hop.post(url + TURN_PATH, [b'{"request_id": ""'], json_type, peer="p3-local", what="turn")
        assert bad.status == 400 and hop.opened == 1  # refusals keep the connection too
        async with make_hop_client(5.0) as stranger:  # no secret: refused from the head
            refused = await stranger.post(url + TURN_PATH, [b'{"request_id": "r9", "sender": "p0-local"}'],
                                          json_type, peer="p3-local", what="turn")
            assert refused.status == 401
        assert receiver.turns.received == 5


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0]])
def test_the_plan_is_exact_whatever_the_order(order: list[int]) -> None:
    from edgepart.executor import Executor, compare
    from edgepart.plan import check_plan

    gm, graph = trace(Small().eval(), (1, 3, 16, 16), "small")
    base = reference_profile()
    cluster = Cluster((Device("end", base, 0.2), Device("server", base, 2.0)), "end", "switched", Link(1e-3, 1e6))
    problem = OffloadProblem(graph, cluster)
    tau = problem.tau_limit
    plan = offload_plan(fl_result(problem, "mw", "sequential", tau, (2, 2), order, [1, tau, 1, 1]), graph,
                        ModelRef("small", (1, 3, 16, 16)))
    check_plan(plan, graph)
    executor = Executor(gm, graph)
    x = torch.randn(1, 3, 16, 16)
    assert compare(executor.run_whole(x), executor.run_plan(plan, x)).allclose


def test_the_evaluator_charges_each_turn_as_a_local_message() -> None:
    plan, graph = offload_four_paths()
    base = reference_profile()
    cluster = Cluster((Device("end", base, 0.2), Device("server", base, 2.0)), "end", "switched", Link(1e-3, 1e6))
    timing = {t.id: t for t in evaluate(plan, graph, cluster).tasks}
    turns = device_turns(plan)
    for tid, (before, _) in turns.items():
        if before is not None:
            waited = timing[tid].ready_s - timing[before].end_s
            assert waited >= cluster.local_s(plan.task(tid).device) * (1 - 1e-9)
    chain = ("p0-local", "p3-local", "p1-local")  # the end device's chain: back to back, a turn apart
    for before, tid in itertools.pairwise(chain):
        assert timing[tid].start_s == pytest.approx(timing[before].end_s + cluster.local_s("end"), rel=1e-9)
    untimed = {t.id: t for t in evaluate(plan.replace(meta={}), graph, cluster).tasks}  # no turns: no gap
    assert untimed["p3-local"].start_s == pytest.approx(untimed["p0-local"].end_s, rel=1e-9)
