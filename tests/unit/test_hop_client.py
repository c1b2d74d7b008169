"""The tensor hop's own HTTP/1.1 client against real local servers: uvicorn, and raw sockets that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request, Response

from edgepart.geometry import Region
from edgepart.partition_service.errors import (
    NotReadyError,
    PeerError,
    PeerUnreachableError,
    RequestTimeoutError,
    UnexpectedPieceError,
    install_error_handlers,
)
from edgepart.partition_service.hop import HopClient
from edgepart.partition_service.server import loop_factory, tune_allocator
from edgepart.partition_service.transport import (
    TENSOR_PATH,
    Sender,
    make_client,
    receive_frame,
    send_frame,
)
from edgepart.partition_service.wire import FrameHeader, Limits, make_header

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _header(rid: str, tensor: torch.Tensor) -> FrameHeader:
    return make_header(rid, tensor, Region.full(tensor.shape[1:]), 0, "s0p0")


@pytest.fixture
async def uvicorn_url() -> AsyncIterator[tuple[str, list[tuple[str, torch.Tensor, int]]]]:
    """A uvicorn server whose /v1/tensor decodes frames like a partition; yields (url, what it received)."""
    received: list[tuple[str, torch.Tensor, int]] = []
    app = FastAPI()
    install_error_handlers(app)

    @app.post(TENSOR_PATH, status_code=204)
    async def tensor(request: Request) -> Response:
        frame = await receive_frame(request, Limits())
        if frame.header.request_id.startswith("reject"):
            raise UnexpectedPieceError("s1p0 expects pieces from ['s0p1']", peer="s1p0")
        port = request.client.port if request.client else 0
        received.append((frame.header.request_id, frame.tensor, port))
        return Response(status_code=204)

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", received
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start an asyncio server with a given connection handler; the URL to reach it."""
    servers: list[asyncio.Server] = []
    connections: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def start(handler: Handler) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.append((task, writer))
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await handler(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
    for task, writer in connections:
        task.cancel()
        writer.close()
    await asyncio.gather(*(task for task, _ in connections), return_exceptions=True)
    for server in servers:
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_frames_arrive_whole_over_one_kept_alive_connection(
        uvicorn_url: tuple[str, list[tuple[str, torch.Tensor, int]]]) -> None:
    url, received = uvicorn_url
    tensors = [torch.randn(1, 4), torch.randn(1, 48, 128, 96), torch.randn(1, 3, 5, 7)]  # one of 2.25 MiB
    async with HopClient(10.0) as hop:
        for i, tensor in enumerate(tensors):
            size = await send_frame(hop, url, _header(f"r{i}", tensor), tensor, peer="s1p0")
            assert size > tensor.numel() * 4
        assert hop.opened == 1  # every request reused the first connection
    assert [rid for rid, _, _ in received] == ["r0", "r1", "r2"]
    assert all(torch.equal(got, sent) for (_, got, _), sent in zip(received, tensors, strict=True))
    assert len({port for _, _, port in received}) == 1


async def test_concurrent_answers_use_a_pool_and_the_sender_keeps_fifo_order(
        uvicorn_url: tuple[str, list[tuple[str, torch.Tensor, int]]]) -> None:
    url, received = uvicorn_url
    tensor = torch.randn(1, 64, 32, 32)
    async with make_client(10.0) as client, HopClient(10.0) as hop:
        sender = Sender(client, hop)
        await asyncio.gather(*(sender.send(url, _header(f"r{i}", tensor), tensor, peer="s1p0", delay_s=0.01)
                               for i in range(6)))
        opened = hop.opened
        await sender.send(url, _header("again", tensor), tensor, peer="s1p0")
        assert hop.opened == opened  # an idle pooled connection was reused
    assert [rid for rid, _, _ in received] == [f"r{i}" for i in range(6)] + ["again"]


async def test_error_answers_map_like_httpx(uvicorn_url: tuple[str, list[tuple[str, torch.Tensor, int]]]) -> None:
    url, _ = uvicorn_url
    tensor = torch.zeros(1, 4)
    async with HopClient(10.0) as hop:
        with pytest.raises(PeerError, match=r"s1p0 at http://127\.0\.0\.1:\d+ answered 422: s1p0 expects") as caught:
            await send_frame(hop, url, _header("reject-1", tensor), tensor, peer="s1p0")
        assert type(caught.value) is PeerError and caught.value.peer == "s1p0"
        await send_frame(hop, url, _header("fine", tensor), tensor, peer="s1p0")  # still usable after an error
        assert hop.opened == 1


@pytest.mark.parametrize(("status", "body", "error", "words"), [
    (503, b'{"error": "not_ready", "detail": "partition s1p0 is not ready (loading)", "peer": "s1p0"}',
     NotReadyError, "answered 503: partition s1p0 is not ready"),
    (500, b"oops", PeerError, "answered 500: HTTP 500: oops"),
])
async def test_chunked_and_close_delimited_error_answers(raw_server: Callable[[Handler], Awaitable[str]],
                                                         status: int, body: bytes, error: type[Exception],
                                                         words: str) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        half = len(body) // 2
        writer.write(f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + f"{half:x}\r\n".encode() + body[:half] + b"\r\n"
                     + f"{len(body) - half:x};ext=1\r\n".encode() + body[half:] + b"\r\n0\r\n\r\n")
        await writer.drain()

    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(f"HTTP/1.0 {status} X\r\n\r\n".encode() + body)
        writer.close()

    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        for handler in (chunked, close_delimited):
            url = await raw_server(handler)
            with pytest.raises(error, match=words) as caught:
                await send_frame(hop, url, _header("r", tensor), tensor, peer="s1p0")
            assert type(caught.value) is error and caught.value.peer == "s1p0"  # type: ignore[attr-defined]


async def test_a_peer_closing_mid_answer_is_a_lost_connection(
        raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    url = await raw_server(hang_up)
    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        with pytest.raises(PeerUnreachableError, match="lost the connection to s1p0 at .* closed the connection "
                                                       r"in the middle of its answer \(7 of 100") as caught:
            await send_frame(hop, url, _header("r", tensor), tensor, peer="s1p0")
        assert caught.value.peer == "s1p0"
        assert not hop._idle.get(("127.0.0.1", int(url.rsplit(":", 1)[1])))  # the broken connection is gone


async def test_a_peer_that_hangs_up_on_a_kept_alive_connection_is_not_reused(
        raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()  # no "Connection: close": the client only learns when it looks again

    url = await raw_server(once)
    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        await send_frame(hop, url, _header("r1", tensor), tensor, peer="s1p0")
        await asyncio.sleep(0.05)
        await send_frame(hop, url, _header("r2", tensor), tensor, peer="s1p0")
        assert hop.opened == 2


async def test_a_slow_peer_times_out_as_504(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    url = await raw_server(silent)
    tensor = torch.zeros(1, 4)
    async with make_client(0.2) as client, HopClient(0.2) as hop:
        sender = Sender(client, hop)
        with pytest.raises(RequestTimeoutError, match=r"s1p0 at .* did not answer in time") as caught:
            await sender.send(url, _header("r", tensor), tensor, peer="s1p0")
        assert caught.value.status == 504 and caught.value.peer == "s1p0"
        with pytest.raises(RequestTimeoutError):  # the FIFO was released
            await asyncio.wait_for(sender.send(url, _header("r2", tensor), tensor, peer="s1p0"), 5)


async def test_an_unreachable_peer_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        with pytest.raises(PeerUnreachableError, match=re.escape(f"s1p0 at http://127.0.0.1:{port} is unreachable")) as caught:
            await send_frame(hop, f"http://127.0.0.1:{port}", _header("r", tensor), tensor, peer="s1p0")
    assert caught.value.status == 503 and caught.value.peer == "s1p0"


async def test_garbage_answers_are_a_lost_connection(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    url = await raw_server(garbage)
    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        with pytest.raises(PeerUnreachableError, match=r"not an HTTP/1\.x answer"):
            await send_frame(hop, url, _header("r", tensor), tensor, peer="s1p0")


async def test_the_request_is_plain_http(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    url = await raw_server(record)
    tensor = torch.zeros(1, 4)
    async with HopClient(5.0) as hop:
        await send_frame(hop, url, _header("r7", tensor), tensor, peer="s1p0")
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "POST /v1/tensor HTTP/1.1"
    names = {line.split(":")[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:] if line}
    assert names["host"] == url.removeprefix("http://")
    assert names["content-type"] == "application/x-edgepart-tensor" and names["x-request-id"] == "r7"


def test_services_run_on_uvloop_with_a_warm_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert tune_allocator() is False  # the operator's own setting wins
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_allocator() is True  # glibc


class _BlackholeHop(HopClient):
    """Connections to host `blackhole` never complete (a peer whose SYNs are dropped)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.connecting = asyncio.Event()

    async def _connect(self, host: str, port: int) -> Any:
        if host == "blackhole":
            self.connecting.set()
            await asyncio.Event().wait()
        return await super()._connect(host, port)


async def test_a_peer_that_cannot_be_reached_holds_up_only_its_own_frames(
        uvicorn_url: tuple[str, list[tuple[str, torch.Tensor, int]]]) -> None:
    url, received = uvicorn_url
    tensor = torch.randn(1, 8, 4, 4)
    async with make_client(10.0) as client, _BlackholeHop(10.0) as hop:
        sender = Sender(client, hop)
        stuck = asyncio.create_task(sender.send("http://blackhole:9", _header("lost", tensor), tensor, peer="dead"))
        await hop.connecting.wait()
        for i in range(3):  # the link is free while the dead peer's connection is pending
            await sender.send(url, _header(f"r{i}", tensor), tensor, peer="s1p0")
        assert not stuck.done()
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
        await sender.send(url, _header("after", tensor), tensor, peer="s1p0")  # the link was not left locked
    assert [rid for rid, _, _ in received] == ["r0", "r1", "r2", "after"]
