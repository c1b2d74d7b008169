"""The tensor lane: `POST /v1/tensor` served at the protocol level, below ASGI, straight into the tensor's memory.

Why: through uvicorn and FastAPI a frame's bytes are copied three times before they reach the tensor (the event
loop's read buffer, the HTTP parser's body chunk, the app's reader) and the request costs a few hundred
microseconds of routing; with a stage sending megabytes per request to each peer, that decided the hop's
throughput. Here the connection's protocol parses the request head itself, validates the frame header (limits,
shape, dtype) before allocating anything, and then has the socket `recv_into` the tensor's payload buffer: the
kernel's copy is the only one. The frame goes to the same `ingest` the app's route calls and the answer is the
route's: 204, or the error's status with the same JSON body.

Only the plain case takes the lane: `POST <path>` over HTTP/1.x with a Content-Length and a tensor-frame
Content-Type. Any other request (another path, a chunked body, `Expect: 100-continue`, a wrong media type, a head
that does not parse) hands the connection, untouched bytes included, to uvicorn's own HTTP protocol, which serves
the FastAPI app (whose /v1/tensor route answers exactly like the lane) for the rest of the connection.
"""

from __future__ import annotations

import asyncio
import enum
import http
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from edgepart.partition_service.errors import FrameTooLargeError, ServiceError, error_body
from edgepart.partition_service.wire import CONTENT_TYPE, Frame, FrameReader, Limits

__all__ = ["LaneProtocol", "TensorLane", "lane_protocol"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a longer request head goes to uvicorn, which answers it
_SCRATCH = 64 * 1024  # heads, frame headers and small payload pieces land here first
# While a payload streams in, the socket wakes the loop only once this many of its bytes are there (SO_RCVLOWAT):
# over a slow link a frame otherwise arrives one wake-up per packet, and on a device with a fifth of a core
# those wake-ups cost more than the transfer (a 100 kB piece at 100 Mbit/s: ~70 wake-ups, 5-10 ms of CPU).
RCV_LOWAT = 256 * 1024
_MEDIA_TYPES = (CONTENT_TYPE, "application/octet-stream")
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
_NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class TensorLane:
    """What the lane needs from a service: where frames go and how errors are counted."""

    path: str
    limits: Limits
    ingest: Callable[[Frame], Awaitable[None]]
    on_error: Callable[[ServiceError], None] | None = None


class _State(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    FRAME = "frame"  # reading the body into a frame
    DISCARD = "discard"  # the frame failed: read and drop the rest of its body, then answer
    ANSWERING = "answering"  # body complete: reading paused until the answer is written
    HANDED_OFF = "handed_off"  # uvicorn's protocol owns the connection now


@dataclass
class _Head:
    content_length: int
    keep_alive: bool


class LaneProtocol(asyncio.BufferedProtocol):
    """One connection of a server with a tensor lane; uvicorn creates it like its own HTTP protocols."""

    lane: ClassVar[TensorLane]
    fallback: ClassVar[Callable[..., asyncio.Protocol]]

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.state = _State.HEAD
        # unread bytes are scratch[start:end]; the buffer is never resized (the transport may hold a view of it)
        self.scratch = bytearray(_SCRATCH)
        self.start = 0
        self.end = 0
        self.reader: FrameReader | None = None
        self.remaining = 0  # body bytes of the current request still to come
        self.keep_alive = True
        self.error: ServiceError | None = None
        self.into_payload = False  # the last get_buffer handed out the frame's payload window
        self.closing = False
        self.paused = False  # reading paused: a pipelined request filled the scratch while answering
        self.idle: asyncio.TimerHandle | None = None
        self.sock: Any = None  # the connection's socket, while SO_RCVLOWAT can be set on it
        self.lowat = 1

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.sock = transport.get_extra_info("socket")
        self.server_state.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._disarm_idle()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def pause_writing(self) -> None:  # answers are a few bytes: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state is _State.FRAME and self.reader is not None:
            window = self.reader.payload_window()
            if window is not None and window.nbytes:
                self.into_payload = True
                self._set_lowat(min(window.nbytes, self.remaining))
                return window[:self.remaining]
        self._set_lowat(1)
        if self.end == len(self.scratch):
            self._compact()
        return memoryview(self.scratch)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._disarm_idle()
        if self.into_payload:
            self.into_payload = False
            assert self.reader is not None
            self.reader.advance(nbytes)
            self.remaining -= nbytes
            if not self.remaining:
                self._set_lowat(1)  # the next request's head must wake us
                self._body_done()
            else:
                self._set_lowat(self.remaining)
            return
        self.end += nbytes
        if self.state is _State.ANSWERING and self.end == len(self.scratch) and self.transport is not None:
            self.transport.pause_reading()  # the next request fills the scratch: wait for the answer
            self.paused = True
            return
        self._process()

    # ------------------------------------------------------------ uvicorn's server calls these

    def shutdown(self) -> None:
        """Graceful shutdown: close now when idle, else after the answer in progress."""
        if self.transport is None:
            return
        if self.state is _State.HEAD and self.start == self.end:
            self.transport.close()
        else:
            self.closing = True

    # ------------------------------------------------------------ parsing

    def _set_lowat(self, nbytes: int) -> None:
        """Wake the loop when min(`nbytes`, RCV_LOWAT) bytes are readable (or the peer closes)."""
        want = max(1, min(nbytes, RCV_LOWAT))
        if want == self.lowat or self.sock is None:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        except (OSError, AttributeError):  # not a socket that has it: read as data comes
            self.sock = None
            return
        self.lowat = want

    def _compact(self) -> None:
        size = self.end - self.start
        self.scratch[:size] = self.scratch[self.start:self.end]  # same length: no resize
        self.start, self.end = 0, size

    def _process(self) -> None:
        while self.start < self.end or (self.state in (_State.FRAME, _State.DISCARD) and not self.remaining):
            if self.state is _State.HEAD:
                if not self._read_head():
                    return
            elif self.state in (_State.FRAME, _State.DISCARD):
                take = min(self.end - self.start, self.remaining)
                if self.state is _State.FRAME and take:
                    assert self.reader is not None
                    try:
                        self.reader.feed(memoryview(self.scratch)[self.start:self.start + take])
                    except ServiceError as err:
                        self._fail(err)
                self.start += take
                self.remaining -= take
                if not self.remaining:
                    self._body_done()
            else:
                return
        if self.start == self.end:
            self.start = self.end = 0

    def _read_head(self) -> bool:
        """Parse one request head; False when it is incomplete or the connection was handed off."""
        cut = self.scratch.find(b"\r\n\r\n", self.start, self.end)
        if cut < 0:
            if self.end - self.start > MAX_HEAD:
                self._hand_off()
            return False
        head = self._parse_head(bytes(self.scratch[self.start:cut]))
        if head is None:
            self._hand_off()
            return False
        self.start = cut + 4
        self.keep_alive = head.keep_alive
        self.remaining = head.content_length
        self.error = None
        self.state = _State.FRAME
        try:
            self.reader = FrameReader(self.lane.limits, head.content_length)
        except FrameTooLargeError as err:  # do not read a body over the limit: answer and close
            self.keep_alive = False
            self.state = _State.ANSWERING
            self._answer_error(err)
            return False
        return True

    def _parse_head(self, raw: bytes) -> _Head | None:
        """The head of a request the lane serves, or None for anything else (uvicorn takes it)."""
        lines = raw.decode("latin-1").split("\r\n")
        request = lines[0].split(" ")
        if len(request) != 3 or request[0] != "POST" or request[1] != self.lane.path \
                or request[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return None
            key = name.lower()
            if key in headers and key in ("content-length", "content-type"):
                return None
            headers[key] = value.strip()
        if any(name in headers for name in ("transfer-encoding", "expect", "upgrade")):
            return None
        length = headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            return None
        if headers.get("content-type", "").split(";")[0].strip().lower() not in _MEDIA_TYPES:
            return None
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "close" not in tokens if request[2] == "HTTP/1.1" else "keep-alive" in tokens
        return _Head(int(length), keep)

    def _fail(self, err: ServiceError) -> None:
        """The frame is bad: drop the rest of its body (the connection stays usable), then answer `err`."""
        self.error = err
        self.state = _State.DISCARD
        self.reader = None

    # ------------------------------------------------------------ answering

    def _body_done(self) -> None:
        self.state = _State.ANSWERING  # bytes that come meanwhile wait in the scratch (a pipelined request)
        if self.error is not None:
            self._answer_error(self.error)
            return
        assert self.reader is not None
        try:
            frame = self.reader.finish()
        except ServiceError as err:
            self._answer_error(err)
            return
        task = self.loop.create_task(self._ingest(frame))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _ingest(self, frame: Frame) -> None:
        try:
            await self.lane.ingest(frame)
        except ServiceError as err:
            self._answer_error(err)
            return
        except Exception as err:
            log.exception("ingesting a frame failed")
            self._answer_error(ServiceError(f"internal error: {type(err).__name__}: {err}"))
            return
        self._answer(_NO_CONTENT if self.keep_alive and not self.closing else _NO_CONTENT_CLOSE)

    def _answer_error(self, err: ServiceError) -> None:
        if self.lane.on_error is not None:
            self.lane.on_error(err)
        body = json.dumps(error_body(err)).encode()
        lines = [f"HTTP/1.1 {err.status} {http.HTTPStatus(err.status).phrase}", "content-type: application/json",
                 f"content-length: {len(body)}"]
        if err.status == 503:
            lines.append("retry-after: 1")
        if not self.keep_alive or self.closing:
            lines.append("connection: close")
        self._answer(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _answer(self, data: bytes) -> None:
        self.reader = None
        self.error = None
        self.server_state.total_requests += 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not self.keep_alive or self.closing:
            transport.close()
            return
        self.state = _State.HEAD
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._process()  # a pipelined request may already be here
        if self.state is _State.HEAD and self.start == self.end:
            self._arm_idle()

    # ------------------------------------------------------------ keep-alive and hand-off

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self.idle = self.loop.call_later(self.config.timeout_keep_alive, self._idle_timeout)

    def _disarm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def _idle_timeout(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _hand_off(self) -> None:
        """Give the connection, from this request on, to uvicorn's HTTP protocol (which serves the app)."""
        assert self.transport is not None
        self._disarm_idle()
        self.state = _State.HANDED_OFF
        pending = bytes(self.scratch[self.start:self.end])
        self.start = self.end = 0
        inner = self.fallback(config=self.config, server_state=self.server_state, app_state=self.app_state,
                              _loop=self.loop)
        self.server_state.connections.discard(self)
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        if pending:
            inner.data_received(pending)


def lane_protocol(lane: TensorLane, fallback: Callable[..., asyncio.Protocol]) -> type[LaneProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that serves `lane` and hands the rest to `fallback`."""
    return type("TensorLaneProtocol", (LaneProtocol,), {"lane": lane, "fallback": staticmethod(fallback)})
