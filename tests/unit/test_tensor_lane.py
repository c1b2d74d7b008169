"""The tensor lane (POST /v1/tensor below ASGI) against a real uvicorn server: what it serves itself, what it
answers for bad frames, and what it hands to the FastAPI app behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request, Response

from edgepart.geometry import Region
from edgepart.partition_service.auth import Secret
from edgepart.partition_service.config import ConnectionLimits
from edgepart.partition_service.errors import (
    AdmissionError,
    ServiceError,
    UnexpectedPieceError,
    install_error_handlers,
)
from edgepart.partition_service.hop import HopClient
from edgepart.partition_service.lane import Guard, GuardedProtocol, TensorLane
from edgepart.partition_service.server import http_protocol, loopback_url, on_loopback
from edgepart.partition_service.transport import TENSOR_PATH, receive_frame, send_frame
from edgepart.partition_service.wire import CONTENT_TYPE, Frame, Limits, frame_bytes, make_header

LIMITS = Limits(max_header_bytes=4096, max_tensor_bytes=64 << 20)


@dataclass
class Sink:
    url: str
    port: int
    server: uvicorn.Server
    lane: list[str] = field(default_factory=list)  # request ids the lane ingested
    route: list[str] = field(default_factory=list)  # request ids the FastAPI route ingested
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    app = FastAPI()
    install_error_handlers(app)
    holder: list[Sink] = []

    async def ingest(frame: Frame, via: str) -> None:
        rid = frame.header.request_id
        if rid.startswith("reject"):
            raise UnexpectedPieceError("s1p0 expects pieces from ['s0p1']", peer="s1p0", request_id=rid)
        if rid.startswith("crash"):
            raise RuntimeError("boom")
        if rid.startswith("slow"):
            await asyncio.sleep(0.5)
        getattr(holder[0], via).append(rid)
        holder[0].tensors[rid] = frame.tensor

    @app.post(TENSOR_PATH, status_code=204)
    async def tensor(request: Request) -> Response:
        await ingest(await receive_frame(request, LIMITS), "route")
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def lane_ingest(frame: Frame) -> None:
        await ingest(frame, "lane")

    app.state.guard = Guard(ConnectionLimits(), TensorLane(TENSOR_PATH, LIMITS, lane_ingest,
                                                           on_error=lambda err: holder[0].errors.append(err.reason)))
    async with on_loopback(app) as server:
        holder.append(Sink(loopback_url(server), server.config.port, server))
        yield holder[0]


def _frame(rid: str, tensor: torch.Tensor) -> bytes:
    return frame_bytes(make_header(rid, tensor, Region.full(tensor.shape[1:]), 0, "s0p0"), tensor)


def _post(body: bytes, *, length: int | None = None, media: str = CONTENT_TYPE, extra: str = "") -> bytes:
    size = len(body) if length is None else length
    return (f"POST {TENSOR_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: {media}\r\ncontent-length: {size}\r\n{extra}\r\n"
            .encode() + body)


class Conn:
    """A raw client connection that reads whole HTTP answers (Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(head[0].split(" ")[1]), headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_frames_of_every_size_are_received_by_the_lane_intact(sink: Sink) -> None:
    tensors = {"tiny": torch.randn(1, 4), "empty": torch.zeros(1, 0, 4, 5), "int": torch.arange(60).reshape(1, 3, 4, 5),
               "big": torch.randn(1, 64, 128, 96), "half": torch.randn(1, 3, 33, 7).half()}  # big: 3 MiB
    async with HopClient(10.0) as hop:
        for rid, tensor in tensors.items():
            await send_frame(hop, sink.url, make_header(rid, tensor, Region.full(tensor.shape[1:]), 0, "s0p0"),
                             tensor, peer="sink")
        assert hop.opened == 1  # one kept-alive connection
    assert sink.lane == list(tensors) and sink.route == []
    for rid, tensor in tensors.items():
        assert sink.tensors[rid].dtype == tensor.dtype and torch.equal(sink.tensors[rid], tensor)


async def test_pipelined_requests_and_byte_by_byte_delivery(sink: Sink) -> None:
    conn = await Conn.open(sink.port)
    a, b = torch.randn(1, 2, 3, 4), torch.randn(1, 5, 7, 2)
    await conn.send(_post(_frame("p1", a)) + _post(_frame("p2", b)))  # two requests in one write
    assert (await conn.answer())[0] == 204 and (await conn.answer())[0] == 204
    for byte in _post(_frame("p3", a)):  # and one dribbled a byte at a time
        await conn.send(bytes([byte]))
    assert (await conn.answer())[0] == 204
    await conn.close()
    assert sink.lane == ["p1", "p2", "p3"] and torch.equal(sink.tensors["p2"], b)


async def test_a_pipelined_request_larger_than_the_scratch_waits_for_the_answer(sink: Sink) -> None:
    conn = await Conn.open(sink.port)
    a, b = torch.randn(1, 8, 64, 64), torch.randn(1, 8, 64, 64)  # 128 KiB each: more than the 64 KiB scratch
    await conn.send(_post(_frame("slow-a", a)) + _post(_frame("b", b)))  # the first answer takes 0.5 s
    assert (await conn.answer())[0] == 204 and (await conn.answer())[0] == 204
    await conn.close()
    assert sink.lane == ["slow-a", "b"] and torch.equal(sink.tensors["b"], b)


@pytest.mark.parametrize(("mangle", "status", "words"), [
    (lambda f: struct.pack(">I", 5) + b"{oops" + f[struct.unpack(">I", f[:4])[0] + 4:], 400, "not valid JSON"),
    (lambda f: f.replace(b'"float32"', b'"float99"'), 400, "dtype"),
    (lambda f: f.replace(b'"shape":[1,2,3,4]', b'"shape":[1,2,3,5]'), 400, "region"),
    (lambda f: f + b"\x00" * 8, 400, "trailing bytes"),
    (lambda f: f[:-4], 400, "truncated"),
    (lambda f: struct.pack(">I", 99999) + f[4:], 413, "header length 99999"),
])
async def test_bad_frames_get_a_4xx_naming_the_problem_and_the_connection_stays_usable(
        sink: Sink, mangle: object, status: int, words: str) -> None:
    assert callable(mangle)
    conn = await Conn.open(sink.port)
    bad = mangle(_frame("bad", torch.randn(1, 2, 3, 4)))
    await conn.send(_post(bad))
    code, headers, body = await conn.answer()
    assert code == status and headers["content-type"] == "application/json"
    assert words in json.loads(body)["detail"]
    await conn.send(_post(_frame("after", torch.randn(1, 2, 3, 4))))
    assert (await conn.answer())[0] == 204
    await conn.close()
    assert sink.lane == ["after"] and len(sink.errors) == 1


async def test_an_oversized_body_is_refused_before_it_is_read_and_the_connection_closed(sink: Sink) -> None:
    conn = await Conn.open(sink.port)
    await conn.send(_post(b"", length=LIMITS.max_frame_bytes + 1))
    code, headers, body = await conn.answer()
    assert code == 413 and headers.get("connection") == "close"
    assert "over the limit" in json.loads(body)["detail"]
    assert await conn.closed()
    await conn.close()
    assert sink.errors == ["frame_too_large"]


async def test_service_errors_answer_like_the_route(sink: Sink) -> None:
    conn = await Conn.open(sink.port)
    await conn.send(_post(_frame("reject-1", torch.randn(1, 2))))
    code, _, body = await conn.answer()
    assert code == 422
    assert json.loads(body) == {"error": "unexpected_piece", "detail": "s1p0 expects pieces from ['s0p1']",
                                "peer": "s1p0", "request_id": "reject-1"}
    await conn.send(_post(_frame("crash-1", torch.randn(1, 2))))
    code, _, body = await conn.answer()
    assert code == 500 and "RuntimeError: boom" in json.loads(body)["detail"]
    await conn.send(_post(_frame("fine", torch.randn(1, 2))))
    assert (await conn.answer())[0] == 204
    await conn.close()
    assert sink.errors == ["unexpected_piece", "internal"]


async def test_other_requests_are_handed_to_the_app_for_one_request_then_the_connection_closes(sink: Sink) -> None:
    conn = await Conn.open(sink.port)
    await conn.send(_post(_frame("lane-1", torch.randn(1, 3))))
    assert (await conn.answer())[0] == 204
    await conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
    code, headers, body = await conn.answer()
    assert code == 200 and json.loads(body) == {"status": "ok"}
    # uvicorn serves that one request: the next head comes on a new connection, where the guard reads it
    assert headers.get("connection") == "close" and await conn.closed()
    await conn.close()
    conn = await Conn.open(sink.port)
    await conn.send(_post(_frame("x", torch.randn(1, 3)), media="text/plain"))
    code, _, body = await conn.answer()
    assert code == 415 and "text/plain" in json.loads(body)["detail"]
    await conn.close()
    assert sink.lane == ["lane-1"] and sink.route == []


async def test_chunked_and_expect_continue_bodies_go_to_the_app(sink: Sink) -> None:
    tensor = torch.randn(1, 8, 16, 4)
    body = _frame("chunked", tensor)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    async with httpx.AsyncClient() as client:
        answer = await client.post(sink.url + TENSOR_PATH, content=chunks(), headers={"content-type": CONTENT_TYPE})
        assert answer.status_code == 204
        answer = await client.post(sink.url + TENSOR_PATH, content=_frame("expect", tensor),
                                   headers={"content-type": CONTENT_TYPE, "expect": "100-continue"})
        assert answer.status_code == 204
    assert sink.route == ["chunked", "expect"] and torch.equal(sink.tensors["chunked"], tensor)


async def test_a_client_vanishing_mid_body_does_not_disturb_others(sink: Sink) -> None:
    gone = await Conn.open(sink.port)
    frame = _frame("gone", torch.randn(1, 4, 256, 256))
    await gone.send(_post(frame)[:len(frame) // 2])
    await gone.close()
    async with HopClient(10.0) as hop:
        tensor = torch.randn(1, 4)
        await send_frame(hop, sink.url, make_header("ok", tensor, Region.full((4,)), 0, "s0p0"), tensor, peer="sink")
    assert sink.lane == ["ok"]


async def test_connection_close_and_http_1_0_close_after_the_answer(sink: Sink) -> None:
    for extra, version in (("connection: close\r\n", "HTTP/1.1"), ("", "HTTP/1.0")):
        conn = await Conn.open(sink.port)
        await conn.send(_post(_frame("c", torch.randn(1, 2)), extra=extra).replace(b"HTTP/1.1", version.encode(), 1))
        code, headers, _ = await conn.answer()
        assert code == 204 and headers.get("connection") == "close"
        assert await conn.closed()
        await conn.close()


async def test_graceful_shutdown_waits_for_an_answer_in_progress(sink: Sink) -> None:
    idle = await Conn.open(sink.port)
    busy = await Conn.open(sink.port)
    await busy.send(_post(_frame("slow-1", torch.randn(1, 2))))
    await asyncio.sleep(0.01)
    assert any(isinstance(c, GuardedProtocol) for c in sink.server.server_state.connections)
    sink.server.should_exit = True
    code, headers, _ = await busy.answer()
    assert code == 204 and headers.get("connection") == "close"
    assert await idle.closed() and await busy.closed()
    await idle.close()
    await busy.close()
    assert sink.lane == ["slow-1"]


def test_the_guarded_protocol_is_what_services_serve_with() -> None:
    app = FastAPI()
    assert not issubclass(http_protocol(app), GuardedProtocol)

    async def ingest(frame: Frame) -> None:
        raise ServiceError("unused")

    app.state.guard = Guard(ConnectionLimits(), TensorLane(TENSOR_PATH, LIMITS, ingest))
    protocol = http_protocol(app)
    assert issubclass(protocol, GuardedProtocol) and protocol.guard.lane is not None
    assert protocol.guard.lane.path == TENSOR_PATH


async def test_a_streamed_payload_wakes_the_loop_in_large_steps_then_heads_are_read_at_once(sink: Sink) -> None:
    """While a payload streams in, SO_RCVLOWAT holds wake-ups back to large steps; after it, a small request head
    must still be answered at once (a threshold left behind would stall the connection)."""
    conn = await Conn.open(sink.port)
    big = torch.randn(1, 3 << 20 >> 2)  # 3 MiB: several RCV_LOWAT steps
    frame = _post(_frame("big", big))
    await conn.send(frame[:len(frame) // 2])
    await asyncio.sleep(0.05)
    lane = next(c for c in sink.server.server_state.connections if isinstance(c, GuardedProtocol))
    assert lane.sock is not None and lane.lowat > 1  # mid-payload: waiting for a large step
    assert lane.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == lane.lowat
    await conn.send(frame[len(frame) // 2:])
    assert (await conn.answer())[0] == 204
    for i in range(3):  # tiny frames right after: each head wakes the loop
        await conn.send(_post(_frame(f"tiny-{i}", torch.randn(1, 2))))
        assert (await asyncio.wait_for(conn.answer(), 2))[0] == 204
    assert lane.lowat == 1 and lane.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    assert torch.equal(sink.tensors["big"], big) and sink.lane == ["big", "tiny-0", "tiny-1", "tiny-2"]
    await conn.close()


def _count_ticks(server: uvicorn.Server) -> list[int]:
    """Record each tick of uvicorn's main loop (one entry per tick) while it keeps ticking as before."""
    ticks: list[int] = []
    tick = server.on_tick

    async def counting(counter: int) -> bool:
        ticks.append(counter)
        return await tick(counter)

    server.on_tick = counting  # type: ignore[method-assign]
    return ticks


async def test_the_services_server_ticks_once_a_second_and_a_signal_stops_it_at_once() -> None:
    import signal
    import time

    from edgepart.partition_service.server import QuietServer

    app = FastAPI()
    sock = socket.create_server(("127.0.0.1", 0))
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    ticks = _count_ticks(server)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)
    assert 1 <= len(ticks) <= 3  # uvicorn's own loop ticks 15 times in 1.5 s
    started = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
    server._captured_signals.clear()  # uvicorn would re-raise SIGTERM at exit: not in the test process
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 0.5
    sock.close()


async def test_a_guarded_server_does_not_tick_while_idle_yet_stops_at_once_and_dates_its_answers() -> None:
    """Idle, the services' server sleeps until a message comes (a tick a second cost a throttled device ~0.3 ms
    per message); `should_exit` still stops it at once, and the guard keeps uvicorn's Date header current."""
    import time
    from email.utils import parsedate_to_datetime

    from edgepart.partition_service.server import QuietServer

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.state.guard = Guard(ConnectionLimits())
    sock = socket.create_server(("127.0.0.1", 0))
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off", http=http_protocol(app)))
    ticks = _count_ticks(server)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    await asyncio.sleep(2.2)
    assert len(ticks) == 1  # the first, at start: none while idle
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{sock.getsockname()[1]}/healthz")
    assert answer.status_code == 200
    assert abs(parsedate_to_datetime(answer.headers["date"]).timestamp() - time.time()) < 1.5  # not the start's
    started = time.monotonic()
    server.should_exit = True
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 0.5
    sock.close()


# ---------------------------------------------------------------- the guard's limits (issue 10, item 5)

SHORT = ConnectionLimits(head_timeout_s=5.0, keep_alive_s=0.6, body_timeout_s=0.3, min_body_rate=1 << 30,
                         max_connections=4)
SECRET = Secret("s" * 40)


@pytest.fixture
async def guarded() -> AsyncIterator[Sink]:
    """A sink behind a guard with short limits, a connection cap of 4 and a secret."""
    app = FastAPI()
    install_error_handlers(app)
    holder: list[Sink] = []

    async def ingest(frame: Frame) -> None:
        holder[0].lane.append(frame.header.request_id)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def count(err: ServiceError) -> None:
        holder[0].errors.append(err.reason)

    app.state.guard = Guard(SHORT, TensorLane(TENSOR_PATH, LIMITS, ingest, on_error=count), on_error=count,
                            secret=SECRET)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", http=http_protocol(app)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    holder.append(Sink(f"http://127.0.0.1:{sock.getsockname()[1]}", sock.getsockname()[1], server))
    try:
        yield holder[0]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


AUTH = f"authorization: {SECRET.header}\r\n"


async def test_an_idle_connection_and_a_partial_head_are_dropped_at_the_keep_alive_timeout(guarded: Sink) -> None:
    idle, partial = await Conn.open(guarded.port), await Conn.open(guarded.port)
    await partial.send(b"P")  # one byte, then nothing: the head timeout (5 s) is longer than keep-alive
    assert await idle.closed()  # closed, nothing answered
    code, _headers, body = await partial.answer()
    assert code == 408 and "not complete after 0.6 s" in json.loads(body)["detail"] and await partial.closed()
    assert guarded.errors == ["slow_request"]
    await idle.close()
    await partial.close()


async def test_a_slow_body_is_cut_off_and_never_ingested(guarded: Sink) -> None:
    conn = await Conn.open(guarded.port)
    frame = _frame("slow", torch.randn(1, 4, 64, 64))
    await conn.send(_post(frame, extra=AUTH)[:-1000])  # all but the last 1000 bytes
    code, headers, body = await conn.answer()
    assert code == 408 and headers.get("connection") == "close" and "request body" in json.loads(body)["detail"]
    assert await conn.closed()
    await conn.close()
    assert guarded.lane == [] and guarded.errors == ["slow_request"]


async def test_connections_over_the_cap_get_503_and_are_closed_at_once(guarded: Sink) -> None:
    held = [await Conn.open(guarded.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    extra = await Conn.open(guarded.port)
    code, _, body = await extra.answer()
    assert code == 503 and "4 connections" in json.loads(body)["detail"] and await extra.closed()
    assert len(guarded.server.server_state.connections) == 4
    await held[0].send(_post(_frame("ok", torch.randn(1, 2)), extra=AUTH))  # the held ones still serve
    assert (await held[0].answer())[0] == 204
    for conn in (*held, extra):
        await conn.close()
    await asyncio.sleep(0.05)
    again = await Conn.open(guarded.port)  # room again
    await again.send(_post(_frame("again", torch.randn(1, 2)), extra=AUTH))
    assert (await again.answer())[0] == 204
    await again.close()
    assert guarded.lane == ["ok", "again"] and guarded.errors == ["too_many_connections"]


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\r\nx: " + b"y" * (20 * 1024), 431),  # over 16 KiB and no end in sight
    (b"\x16\x03\x01\x02\x00\r\n\r\n", 400),  # not HTTP (a TLS hello)
    (b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n", 401),  # not the lane, still internal
    (b"GET /healthz?x=1 HTTP/1.1\r\nhost: x\r\n\r\n", 200),  # probes need no secret
])
async def test_heads_are_judged_before_anything_else(guarded: Sink, data: bytes, status: int) -> None:
    conn = await Conn.open(guarded.port)
    await conn.send(data)
    code, headers, _ = await conn.answer()
    assert code == status and headers.get("connection") == "close" and await conn.closed()
    await conn.close()


async def test_without_the_secret_the_answer_comes_from_the_head_and_survives_the_unread_body(guarded: Sink) -> None:
    """401 before the body is read; the connection lingers, dropping the body, so the answer is not lost to a
    reset."""
    frame = _frame("forged", torch.randn(1, 16, 256, 256))  # 4 MiB the server never reads
    for auth in ("", "authorization: Bearer wrong\r\n", f"authorization: {SECRET.token}\r\n"):
        conn = await Conn.open(guarded.port)
        await conn.send(_post(frame, extra=auth))
        code, _headers, body = await conn.answer()
        assert code == 401 and json.loads(body)["error"] == "unauthorized" and await conn.closed()
        await conn.close()
    assert guarded.lane == [] and guarded.errors == ["unauthorized"] * 3


def test_the_connection_cap_stays_within_the_descriptors_the_process_has() -> None:
    from edgepart.partition_service.server import RESERVED_FDS, open_files_limit, within_descriptors

    limits = ConnectionLimits(max_connections=1024)
    assert within_descriptors(limits, 2, 1024 * 4).max_connections == 1024  # room: unchanged
    assert within_descriptors(limits, 2, RESERVED_FDS + 200).max_connections == 100  # two ports share 200
    assert within_descriptors(limits, 1, 10).max_connections == 1
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert open_files_limit() >= soft  # raised towards the hard limit, never lowered


async def test_a_refusal_from_the_head_answers_before_the_body_and_survives_it() -> None:
    """The gateway's admission: a request it refuses is answered 503 from its head, with the refusal's
    Retry-After; the body it never reads is dropped while the connection lingers. Others reach the app."""
    app = FastAPI()
    install_error_handlers(app)
    served: list[int] = []
    full = [True]

    @app.post("/v1/infer")
    async def infer(request: Request) -> dict[str, int]:
        served.append(len(await request.body()))
        return {"ok": 1}

    errors: list[str] = []

    def refuse(method: str, path: str) -> ServiceError | None:
        if method == "POST" and path == "/v1/infer" and full[0]:
            return AdmissionError("overloaded: 9 requests in flight", retry_after_s=3)
        return None

    app.state.guard = Guard(ConnectionLimits(), None, on_error=lambda err: errors.append(err.reason), refuse=refuse)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", http=http_protocol(app)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    body = b"x" * (4 << 20)
    head = f"POST /v1/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: {len(body)}"
    try:
        conn = await Conn.open(sock.getsockname()[1])
        await conn.send((head + "\r\n\r\n").encode() + body)
        code, headers, answer = await conn.answer()
        assert code == 503 and headers["retry-after"] == "3" and json.loads(answer)["error"] == "admission_limit"
        assert await conn.closed()
        await conn.close()
        full[0] = False
        conn = await Conn.open(sock.getsockname()[1])
        await conn.send((head + "\r\n\r\n").encode() + body)
        code, _, _ = await conn.answer()
        assert code == 200 and served == [len(body)]
        await conn.close()
        assert errors == ["admission_limit"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
