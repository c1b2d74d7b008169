"""Real processes: a partition killed (or stopped) while requests wait on it fails them at once, naming it.

No supervisor runs (`LocalRuntime.up` alone, as `edgepart up --no-supervise`). The requests are put in
flight by stopping a first-stage partition (SIGSTOP): the tail then holds each request with one piece in and
the other missing, which the tail's in-flight gauge counts. The request timeout is 60 s and the client's
own 30 s: every answer must come from the death being noticed, not from a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.geometry import Region
from edgepart.partition_service.wire import CONTENT_TYPE, frame_bytes, make_header
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.spec import deployment_from_dict

IN_FLIGHT = 4


@contextlib.contextmanager
def _deployed(tmp_path: Path, peer_timeout: str) -> Iterator[tuple[LocalRuntime, RunState]]:
    model = write_tiny_cnn(tmp_path)
    runtime = LocalRuntime(tmp_path / "run")
    spec = deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "dead"},
        "spec": {"model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)}, "solver": "ftp-grid",
                 "solverOptions": {"grid": "2x1"}, "devices": [{"name": "d0"}, {"name": "d1"}],
                 "network": {"bandwidth": "100Mbps", "latency": "1ms"}, "requestTimeout": "60s",
                 "peerTimeout": peer_timeout}})
    state = asyncio.run(runtime.up(spec, port=0, ready_timeout_s=180))
    try:
        yield runtime, state
    finally:
        current = runtime.load("dead")
        for proc in current.processes if current is not None else ():  # a stopped process must run to end
            if runtime.alive(proc):
                os.kill(proc.pid, signal.SIGCONT)
        asyncio.run(runtime.down("dead"))


@pytest.fixture()
def deployment(tmp_path: Path) -> Iterator[tuple[LocalRuntime, RunState]]:
    """Pings that wait out the test: a stopped partition only holds requests up (until it is killed)."""
    with _deployed(tmp_path, "60s") as deployed:
        yield deployed


@pytest.fixture()
def pinged(tmp_path: Path) -> Iterator[tuple[LocalRuntime, RunState]]:
    """A partition silent for 1 s is unreachable."""
    with _deployed(tmp_path, "1s") as deployed:
        yield deployed


def _sample(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def _until(check: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s  # a cap on a wait for an event, far below the 60 s timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {limit_s:g} s"
        await asyncio.sleep(0.05)


def _frame(seed: int) -> bytes:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    return frame_bytes(make_header(f"r{seed}", x, Region.full(SHAPE[1:]), -1, "gateway"), x)


def _infer(url: str, seed: int) -> httpx.Response:
    return httpx.post(url + "/v1/infer", content=_frame(seed), headers={"content-type": CONTENT_TYPE}, timeout=30)


def _stop_a_tile(state: RunState) -> tuple[str, str]:
    """(the tail, a first-stage tile): after one answered request, the tile is stopped (SIGSTOP): its process
    keeps its sockets open and answers nothing. The caller sends SIGCONT."""
    partitions = sorted(p.id for p in state.processes if p.role == "partition")
    tail = partitions[-1]
    tile = next(p for p in partitions if p != tail and p.endswith("1"))
    assert _infer(state.gateway_url, 0).status_code == 200
    os.kill(state.process(tile).pid, signal.SIGSTOP)
    return tail, tile


async def _in_flight(state: RunState, client: httpx.AsyncClient, tail: str,
                     seed: int) -> list[asyncio.Task[httpx.Response]]:
    """Send IN_FLIGHT requests and wait until the tail holds each of them (one piece in, one missing)."""
    tail_url = state.process(tail).url
    held = _sample(tail_url, "edgepart_inflight_requests")  # a request refused after a death may linger there
    sends = [asyncio.create_task(client.post(state.gateway_url + "/v1/infer", content=_frame(seed + i),
                                             headers={"content-type": CONTENT_TYPE}))
             for i in range(IN_FLIGHT)]
    await _until(lambda: _sample(tail_url, "edgepart_inflight_requests") == held + IN_FLIGHT, "the tail holds them")
    return sends


async def test_requests_waiting_on_a_killed_partition_fail_at_once_naming_it(
        deployment: tuple[LocalRuntime, RunState]) -> None:
    runtime, state = deployment
    partitions = sorted(p.id for p in state.processes if p.role == "partition")
    tail = partitions[-1]
    tile = next(p for p in partitions if p != tail and p.endswith("1"))
    tail_url = state.process(tail).url
    async with httpx.AsyncClient(timeout=30) as client:
        ok = _infer(state.gateway_url, 0)
        assert ok.status_code == 200, ok.text

        # 1. a first-stage tile dies: the tail gives up what waits for its pieces; the clients hear its name
        os.kill(state.process(tile).pid, signal.SIGSTOP)
        sends = await _in_flight(state, client, tail, 100)
        await runtime.kill("dead", tile)
        for answer in await asyncio.gather(*sends):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "peer_unreachable" and answer.json()["peer"] == tile
        await _until(lambda: _sample(tail_url, "edgepart_inflight_requests") == 0, "the tail gave them up")
        # given up for the death (POST /v1/pending), or dropped for the gateway's cancel, whichever came first
        gave_up = (_sample(tail_url, "edgepart_errors_total", reason="peer_unreachable")
                   + _sample(tail_url, "edgepart_requests_cancelled_total", reason="peer_unreachable"))
        assert gave_up == IN_FLIGHT
        refused = _infer(state.gateway_url, 1)
        assert refused.status_code == 503 and refused.json()["peer"] == tile  # its connection is refused

        # 2. the tail dies holding requests while the gateway still sends to the stopped tile: it names the tail
        await runtime.restart("dead", tile, ready_timeout_s=180)
        assert _infer(state.gateway_url, 2).status_code == 200
        restarted = runtime.load("dead")
        assert restarted is not None
        os.kill(restarted.process(tile).pid, signal.SIGSTOP)
        sends = await _in_flight(state, client, tail, 200)
        await runtime.kill("dead", tail)
        for answer in await asyncio.gather(*sends):
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["error"] == "peer_unreachable" and body["peer"] == tail, body
            assert f"partition {tail}" in body["detail"] and "died" in body["detail"]


async def test_a_silent_partition_is_found_by_pings_long_before_the_timeout(
        pinged: tuple[LocalRuntime, RunState]) -> None:
    """A stopped process keeps its sockets open and its kernel acknowledges: only the watch's pings (1 s here)
    see it. The clients are answered 503 naming it within their own 30 s, half the 60 s request timeout, and
    the tail drops the pieces it held for them (the gateway cancels them, or the tail gives them up)."""
    _, state = pinged
    tail, tile = _stop_a_tile(state)
    tail_url = state.process(tail).url
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(*(client.post(state.gateway_url + "/v1/infer", content=_frame(300 + i),
                                                         headers={"content-type": CONTENT_TYPE})
                                             for i in range(IN_FLIGHT)))
        for answer in answers:
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["error"] == "peer_unreachable" and body["peer"] == tile, body
            assert "answered no ping for 1 s" in body["detail"], body
        gateway = state.gateway_url
        assert _sample(gateway, "edgepart_errors_total", reason="timeout") == 0
        assert _sample(gateway, "edgepart_requests_cancelled_total", reason="peer_unreachable") == IN_FLIGHT
        await _until(lambda: _sample(tail_url, "edgepart_inflight_requests") == 0, "the tail dropped them")
        later = _infer(state.gateway_url, 2)  # known silent: refused before any piece goes out
        assert later.status_code == 503 and later.json()["peer"] == tile, later.text
        assert "answered no ping" in later.json()["detail"]
        assert _sample(gateway, "edgepart_errors_total", reason="timeout") == 0
    finally:
        os.kill(state.process(tile).pid, signal.SIGCONT)
    await _until(lambda: _infer(state.gateway_url, 1).status_code == 200, "answers again once it runs")


async def test_a_client_that_goes_away_has_its_request_cancelled_at_the_partitions(
        deployment: tuple[LocalRuntime, RunState]) -> None:
    """The tile is stopped (pings wait 60 s here), so the tail holds each request with one piece missing; the
    clients go away: the gateway cancels their requests and the tail drops what it held."""
    _, state = deployment
    tail, tile = _stop_a_tile(state)
    tail_url = state.process(tail).url
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            sends = await _in_flight(state, client, tail, 400)
            for send in sends:
                send.cancel()  # the client closes its connections
            await asyncio.gather(*sends, return_exceptions=True)
        gateway = state.gateway_url
        await _until(lambda: _sample(gateway, "edgepart_requests_cancelled_total", reason="client_gone") == IN_FLIGHT,
                     "the gateway cancelled them")
        await _until(lambda: _sample(tail_url, "edgepart_inflight_requests") == 0, "the tail dropped them")
        assert _sample(tail_url, "edgepart_requests_cancelled_total", reason="client_gone") == IN_FLIGHT
        assert _sample(tail_url, "edgepart_errors_total", reason="timeout") == 0
    finally:
        os.kill(state.process(tile).pid, signal.SIGCONT)
