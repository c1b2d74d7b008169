"""Frames over httpx (MockTransport): the sender's FIFO, emulated latency, and errors that name the peer."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch

from edgepart.geometry import Region
from edgepart.partition_service.errors import (
    NotReadyError,
    PeerError,
    PeerUnreachableError,
    RequestTimeoutError,
)
from edgepart.partition_service.transport import SEND_CHUNK, Sender, send_frame
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame, make_header


def _header(rid: str, tensor: torch.Tensor) -> object:
    return make_header(rid, tensor, Region.full(tensor.shape[1:]), 0, "s0p0")


async def test_a_frame_arrives_whole_with_its_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    tensor = torch.randn(1, 48, 128, 96)  # 2.25 MiB: several body slices
    assert tensor.numel() * 4 > SEND_CHUNK
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        size = await send_frame(client, "http://peer:1", _header("r1", tensor), tensor, peer="s1p0")  # type: ignore[arg-type]
    request = seen[0]
    assert request.url.path == "/v1/tensor"
    assert request.headers["content-type"] == CONTENT_TYPE and request.headers["x-request-id"] == "r1"
    assert int(request.headers["content-length"]) == size == len(request.content)
    assert torch.equal(decode_frame(request.content).tensor, tensor)


async def test_the_sender_keeps_fifo_order_and_sleeps_the_link_latency() -> None:
    arrivals: list[tuple[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        arrivals.append((request.headers["x-request-id"], time.perf_counter()))
        return httpx.Response(204)

    tensor = torch.zeros(1, 4)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = Sender(client)
        started = time.perf_counter()
        await asyncio.gather(*(sender.send("http://peer:1", _header(f"r{i}", tensor), tensor,  # type: ignore[arg-type]
                                           peer="s1p0", delay_s=0.05) for i in range(4)))
    assert [rid for rid, _ in arrivals] == ["r0", "r1", "r2", "r3"]
    assert arrivals[0][1] - started >= 0.05
    assert arrivals[-1][1] - started >= 4 * 0.05  # the latency holds the link, as the evaluator assumes


@pytest.mark.parametrize(("failure", "error", "words"), [
    (httpx.ConnectError("connection refused"), PeerUnreachableError, "s1p0 at http://peer:1 is unreachable"),
    (httpx.ReadTimeout("slow"), RequestTimeoutError, "did not answer in time"),
    (httpx.RemoteProtocolError("server disconnected"), PeerUnreachableError, "lost the connection"),
])
async def test_transport_failures_name_the_peer(failure: Exception, error: type[Exception], words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    tensor = torch.zeros(1, 4)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sender = Sender(client)
        with pytest.raises(error, match=words) as caught:
            await sender.send("http://peer:1", _header("r", tensor), tensor, peer="s1p0")  # type: ignore[arg-type]
        assert caught.value.peer == "s1p0"  # type: ignore[attr-defined]
        with pytest.raises(error):  # the FIFO was released: the next send runs (and fails the same way)
            await asyncio.wait_for(sender.send("http://peer:1", _header("r2", tensor), tensor,  # type: ignore[arg-type]
                                               peer="s1p0"), 5)


@pytest.mark.parametrize(("status", "body", "error", "words"), [
    (503, {"error": "not_ready", "detail": "partition s1p0 is not ready (loading)", "peer": "s1p0"}, NotReadyError,
     "answered 503: partition s1p0 is not ready"),
    (422, {"error": "unexpected_piece", "detail": "s1p0 expects pieces from ['s0p1']"}, PeerError,
     "answered 422"),
    (500, None, PeerError, "answered 500: HTTP 500: oops"),
])
async def test_error_answers_keep_their_meaning(status: int, body: dict[str, str] | None, error: type[Exception],
                                                words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        content = json.dumps(body).encode() if body else b"oops"
        return httpx.Response(status, content=content)

    tensor = torch.zeros(1, 4)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(error, match=words) as caught:
            await send_frame(client, "http://peer:1", _header("r", tensor), tensor, peer="s1p0")  # type: ignore[arg-type]
    assert type(caught.value) is error
    assert caught.value.peer == "s1p0"  # type: ignore[attr-defined]
