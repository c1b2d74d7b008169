"""The front of every connection: limits on time, connections and memory, and the tensor lane.

Every connection a service accepts, on any of its ports, starts here (`GuardedProtocol`, a protocol uvicorn
creates like its own). It reads each request head itself, so it can bound what a connection may take:

- a head must be complete within `head_timeout_s` of its first byte, and an idle connection (a partial
  head included) closes after `keep_alive_s`: a head dribbled a byte at a time gets 408 and the connection
  closes;
- a body gets `body_timeout_s`, and one more second for every `min_body_rate` bytes that arrive;
- a port holds at most `max_connections`; one more gets 503 and is closed at once (its descriptor freed);
- a head over `MAX_HEAD` bytes gets 431, a head that is not HTTP/1.x gets 400, and the connection closes;
- on an internal port, a request without the deployment's secret gets 401 from its head alone (probes and
  /metrics excepted): no body is read, nothing reaches the app.

A connection closed after an error answer lingers a moment, reading and dropping what the client still
sends, so that the answer is read before the connection resets.

Any request that is not the lane's is handed, untouched but for a ``Connection: close``, to uvicorn's own
HTTP protocol, which serves the FastAPI app for that one request: the next request comes on a new
connection, whose head is read here again (uvicorn alone would let a client dribble the next head forever).

The tensor lane: `POST /v1/tensor` served at the protocol level, below ASGI, straight into the tensor's
memory. Through uvicorn and FastAPI a frame's bytes are copied three times before they reach the tensor (the
event loop's read buffer, the HTTP parser's body chunk, the app's reader) and the request costs a few hundred
microseconds of routing; with a stage sending megabytes per request to each peer, that decided the hop's
throughput. Here the lane validates the frame header (limits, shape, dtype), asks the service whether it expects that piece
(`admit`), reserves its bytes against the process's payload budget (503 beyond) and only then allocates the
payload and has the socket `recv_into` it: the kernel's copy is the only one. The frame goes to the same
`ingest` the app's route calls and the answer is the route's: 204, or the error's status with the same JSON
body. Only the plain case takes the lane: `POST <path>` over HTTP/1.x with a Content-Length and a
tensor-frame Content-Type; a chunked body or `Expect: 100-continue` goes to the app's route, which checks the
same things.

Notices: small POSTs that only tell the service something (a partition's turn, `turnstile`), listed in
`Guard.notices` by path, are served here too: their body (at most `MAX_NOTICE` bytes, with a Content-Length)
is read into the scratch, handed to the notice's handler, and answered 204 (or the handler's error) on the same
kept-alive connection. Through the app each one was a new connection and a FastAPI request (tens of
milliseconds on a device with a fifth of a core); the secret check is the same, from the head.
"""

from __future__ import annotations

import asyncio
import enum
import http
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, ClassVar, cast

from edgepart.partition_service.auth import Secret
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.config import ConnectionLimits
from edgepart.partition_service.errors import (
    AdmissionError,
    BadRequestError,
    FrameTooLargeError,
    HeadTooLargeError,
    ServiceError,
    SlowRequestError,
    TooManyConnectionsError,
    UnauthorizedError,
    error_body,
)
from edgepart.partition_service.wire import CONTENT_TYPE, Frame, FrameHeader, FrameReader, Limits

__all__ = ["Guard", "GuardedProtocol", "TensorLane", "guarded_protocol"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a longer request head is answered 431
MAX_NOTICE = 4096  # a notice's body; a longer one goes to the app's route (which refuses or serves it)
_SCRATCH = 64 * 1024  # heads, frame headers and small payload pieces land here first
# While a payload streams in, the socket wakes the loop only once this many of its bytes are there (SO_RCVLOWAT):
# over a slow link a frame otherwise arrives one wake-up per packet, and on a device with a fifth of a core
# those wake-ups cost more than the transfer (a 100 kB piece at 100 Mbit/s: ~70 wake-ups, 5-10 ms of CPU).
RCV_LOWAT = 256 * 1024
_MEDIA_TYPES = (CONTENT_TYPE, "application/octet-stream")
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
_NO_CONTENT_CLOSE = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
_HOP_HEADERS = ("connection", "keep-alive")
_BAD_NAME = re.compile(r"[ \t\r\n]")  # a header name with white space is not HTTP
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # kubelet probes and Prometheus: no secret
LINGER_S = 2.0  # after an error answer, read and drop the client's bytes this long before closing
LINGER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorLane:
    """What the lane needs from a service: where frames go, what it expects, who may send."""

    path: str
    limits: Limits
    ingest: Callable[[Frame], Awaitable[None]]
    on_error: Callable[[ServiceError], None] | None = None
    admit: Callable[[FrameHeader], None] | None = None  # raises for a piece the receiver does not expect
    budget: PayloadBudget | None = None


@dataclass(frozen=True)
class Guard:
    """The rules of one listening port: connection limits, its tensor lane if it has one, and on an internal
    port the deployment's secret, which every request but `open_paths` must carry."""

    limits: ConnectionLimits
    lane: TensorLane | None = None
    on_error: Callable[[ServiceError], None] | None = None
    secret: Secret | None = None  # the services set it on internal ports; None: a public port (or a bench sink)
    open_paths: frozenset[str] = OPEN_PATHS
    # (method, path) -> an error to answer from the head, before the body is read (the gateway's admission)
    refuse: Callable[[str, str], ServiceError | None] | None = None
    # path -> the handler of a notice POSTed there (its body; raises a ServiceError to refuse it)
    notices: Mapping[str, Callable[[bytes], None]] = field(default_factory=dict)


class _State(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    FRAME = "frame"  # reading the body into a frame
    DISCARD = "discard"  # the frame failed: read and drop the rest of its (small) body, then answer
    NOTICE = "notice"  # reading a notice's small body into the scratch
    ANSWERING = "answering"  # body complete: reading paused until the answer is written
    HANDED_OFF = "handed_off"  # uvicorn's protocol owns the connection now
    LINGERING = "lingering"  # answered and half-closed: dropping what still comes, then closing
    CLOSED = "closed"


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # as sent, in order
    fields: dict[str, str]  # lower-case name -> value (the last one)
    duplicates: frozenset[str]

    def get(self, name: str) -> str | None:
        return self.fields.get(name)


def _parse_head(raw: bytes) -> _Head | None:
    """An HTTP/1.x request head, or None when it is not one."""
    lines = raw.decode("latin-1").split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or not request[0].isalpha() or not request[1] or request[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    headers: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    duplicates: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or _BAD_NAME.search(name):
            return None
        key = name.lower()
        if key in fields:
            duplicates.add(key)
        fields[key] = value.strip()
        headers.append((name, value.strip()))
    return _Head(request[0], request[1], request[2], headers, fields, frozenset(duplicates))


class GuardedProtocol(asyncio.BufferedProtocol):
    """One connection of a service's port; uvicorn creates it like its own HTTP protocols."""

    guard: ClassVar[Guard]
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
        self.idle: asyncio.TimerHandle | None = None  # keep-alive: no complete head for this long closes
        self.deadline: asyncio.TimerHandle | None = None  # the head or body in progress must be done by then
        self.sock: Any = None  # the connection's socket, while SO_RCVLOWAT can be set on it
        self.lowat = 1
        self.dropped = 0  # bytes read and dropped while lingering
        self.body_started = 0.0  # when the current body's first byte could come (loop time)
        self.body_length = 0
        self.notice: Callable[[bytes], None] | None = None  # the handler of the notice being read

    @property
    def lane(self) -> TensorLane | None:
        return self.guard.lane

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        limit = self.guard.limits.max_connections
        if len(self.server_state.connections) >= limit:
            # answered and closed at once: a connection over the cap must not hold its descriptor (no linger)
            self.keep_alive = False
            self.state = _State.CLOSED
            err = TooManyConnectionsError(f"{limit} connections are open on this port; try again later")
            self._count(err)
            self.transport.write(self._error_bytes(err))
            self.transport.close()
            return
        self.sock = transport.get_extra_info("socket")
        self.server_state.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _State.CLOSED
        self.server_state.connections.discard(self)
        self._disarm_idle()
        self._disarm_deadline()
        self._drop_reader()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def pause_writing(self) -> None:  # answers are a few bytes: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state is _State.LINGERING:
            return memoryview(self.scratch)
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
        if self.state is _State.CLOSED:
            return
        if self.state is _State.LINGERING:
            self.start = self.end = 0
            self.dropped += nbytes
            if self.dropped > LINGER_BYTES and self.transport is not None:
                self._close_now()
            return
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
        while self.start < self.end or (self.state in (_State.FRAME, _State.DISCARD, _State.NOTICE)
                                             and not self.remaining):
            if self.state is _State.HEAD:
                if not self._read_head():
                    return
            elif self.state is _State.NOTICE:
                if self.end - self.start < self.remaining:
                    return  # the body fits the scratch: wait for all of it
                self._notice_done()
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
                if self.state is _State.DISCARD and self.remaining > _SCRATCH:
                    self.keep_alive = False  # a large body we will not use: answer now, do not read it
                    self.remaining = 0
                if not self.remaining:
                    self._body_done()
            else:
                return
        if self.start == self.end:
            self.start = self.end = 0

    def _read_head(self) -> bool:
        """Parse one request head; False when it is incomplete, refused or handed off."""
        cut = self.scratch.find(b"\r\n\r\n", self.start, self.end)
        if cut < 0:
            if self.end - self.start > MAX_HEAD:
                self._refuse(HeadTooLargeError(f"request head over {MAX_HEAD} bytes"))
            elif self.deadline is None:
                self._arm_deadline(self.guard.limits.head_timeout_s, "request head")
            return False
        self._disarm_deadline()
        self._disarm_idle()
        raw = bytes(self.scratch[self.start:cut])
        head = _parse_head(raw)
        if head is None:
            self._refuse(BadRequestError("not an HTTP/1.x request head"))
            return False
        self.start = cut + 4
        secret = self.guard.secret
        path = head.target.split("?", 1)[0]
        if secret is not None and path not in self.guard.open_paths and not secret.admits(head.get("authorization")):
            self._refuse(UnauthorizedError(f"{path[:100]} is internal to the deployment: the request does not "
                                           "carry its secret"))
            return False
        refusal = self.guard.refuse(head.method, path) if self.guard.refuse is not None else None
        if refusal is not None:  # answered from the head; the body is dropped while the connection lingers
            self._refuse(refusal)
            return False
        notice = self._notice_request(head)
        if notice is not None:
            self._keep_alive_of(head)
            self.notice, self.remaining = notice
            self.state = _State.NOTICE
            self._arm_deadline(self.guard.limits.body_allowance_s(0), "request body")
            return True
        length = self._lane_request(head)
        if length is None:
            self._hand_off(head)
            return False
        lane = self.lane
        assert lane is not None
        self._keep_alive_of(head)
        self.remaining = length
        self.error = None
        self.state = _State.FRAME
        try:
            self.reader = FrameReader(lane.limits, length, admit=lane.admit, budget=lane.budget)
        except FrameTooLargeError as err:  # do not read a body over the limit: answer and close
            self.keep_alive = False
            self.state = _State.ANSWERING
            self._answer_error(err)
            return False
        self.body_started = self.loop.time()
        self.body_length = length
        self._arm_deadline(self.guard.limits.body_allowance_s(0), "request body")
        return True

    def _keep_alive_of(self, head: _Head) -> None:
        tokens = {t.strip().lower() for t in (head.get("connection") or "").split(",")}
        self.keep_alive = "close" not in tokens if head.version == "HTTP/1.1" else "keep-alive" in tokens

    def _plain_post(self, head: _Head) -> int | None:
        """The Content-Length of a POST with a plain body (no chunks, no Expect, no Upgrade), else None."""
        if head.method != "POST":
            return None
        if head.duplicates & {"content-length", "content-type", "authorization", "transfer-encoding"}:
            return None
        if any(name in head.fields for name in ("transfer-encoding", "expect", "upgrade")):
            return None
        length = head.get("content-length") or ""
        if not (length.isascii() and length.isdigit()):
            return None
        return int(length)

    def _notice_request(self, head: _Head) -> tuple[Callable[[bytes], None], int] | None:
        """(handler, body length) of a notice served here, or None."""
        handler = self.guard.notices.get(head.target)
        if handler is None:
            return None
        length = self._plain_post(head)
        if length is None or length > MAX_NOTICE:
            return None
        return handler, length

    def _notice_done(self) -> None:
        """The notice's body is in the scratch: hand it over and answer."""
        handler = self.notice
        assert handler is not None
        body = bytes(self.scratch[self.start:self.start + self.remaining])
        self.start += self.remaining
        self.remaining = 0
        self.notice = None
        self._disarm_deadline()
        self.state = _State.ANSWERING
        try:
            handler(body)
        except ServiceError as err:
            self._count(err)
            answer = self._error_bytes(err)
        except Exception as err:
            log.exception("serving a notice failed")
            failure = ServiceError(f"internal error: {type(err).__name__}: {err}")
            self._count(failure)
            answer = self._error_bytes(failure)
        else:
            answer = _NO_CONTENT if self.keep_alive and not self.closing else _NO_CONTENT_CLOSE
        # answered within `_process`: its loop goes on to a pipelined request (no recursion per notice)
        self._answer(answer, resume=False)

    def _lane_request(self, head: _Head) -> int | None:
        """The body length of a request the lane serves, or None for anything else (the app takes it)."""
        lane = self.lane
        if lane is None or head.target != lane.path:
            return None
        length = self._plain_post(head)
        if length is None or (head.get("content-type") or "").split(";")[0].strip().lower() not in _MEDIA_TYPES:
            return None
        return length

    def _fail(self, err: ServiceError) -> None:
        """The frame is bad: drop the rest of its body (a small one: the connection stays usable), then answer."""
        self.error = err
        self.state = _State.DISCARD
        self._drop_reader()

    # ------------------------------------------------------------ answering

    def _body_done(self) -> None:
        self._disarm_deadline()
        self.state = _State.ANSWERING  # bytes that come meanwhile wait in the scratch (a pipelined request)
        if self.error is not None:
            self._answer_error(self.error)
            return
        assert self.reader is not None and self.lane is not None
        try:
            frame = self.reader.finish()
        except ServiceError as err:
            self._answer_error(err)
            return
        task = self.loop.create_task(self._ingest(self.lane, frame))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _ingest(self, lane: TensorLane, frame: Frame) -> None:
        try:
            await lane.ingest(frame)
        except ServiceError as err:
            self._answer_error(err)
            return
        except Exception as err:
            log.exception("ingesting a frame failed")
            self._answer_error(ServiceError(f"internal error: {type(err).__name__}: {err}"))
            return
        self._answer(_NO_CONTENT if self.keep_alive and not self.closing else _NO_CONTENT_CLOSE)

    def _refuse(self, err: ServiceError) -> None:
        """Answer `err` and close: the connection is not worth reading further."""
        self.keep_alive = False
        self.state = _State.ANSWERING
        self._answer_error(err)

    def _count(self, err: ServiceError) -> None:
        on_error = self.lane.on_error if self.lane is not None and self.lane.on_error else self.guard.on_error
        if on_error is not None:
            on_error(err)

    def _error_bytes(self, err: ServiceError) -> bytes:
        body = json.dumps(error_body(err)).encode()
        lines = [f"HTTP/1.1 {err.status} {http.HTTPStatus(err.status).phrase}", "content-type: application/json",
                 f"content-length: {len(body)}"]
        if err.status == 503:
            lines.append(f"retry-after: {err.retry_after_s if isinstance(err, AdmissionError) else 1}")
        if not self.keep_alive or self.closing:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _answer_error(self, err: ServiceError) -> None:
        self._count(err)
        self._answer(self._error_bytes(err))

    def _answer(self, data: bytes, *, resume: bool = True) -> None:
        self._drop_reader()
        self.error = None
        self.server_state.total_requests += 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not self.keep_alive or self.closing:
            self._disarm_idle()
            self._disarm_deadline()
            self._linger()
            return
        self.state = _State.HEAD
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if resume:
            self._process()  # a pipelined request may already be here
        if self.state is _State.HEAD and self.start == self.end:
            self._arm_idle()

    def _linger(self) -> None:
        """Half-close after the answer, drop what the client still sends for a moment, then close: closing
        with unread bytes would reset the connection, and the client could lose the answer."""
        transport = self.transport
        assert transport is not None
        self.state = _State.LINGERING
        self.start = self.end = 0
        if self.paused:
            self.paused = False
            transport.resume_reading()
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            self._close_now()
            return
        self.deadline = self.loop.call_later(LINGER_S, self._close_now)

    def _close_now(self) -> None:
        self._disarm_deadline()
        self.state = _State.CLOSED
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _drop_reader(self) -> None:
        if self.reader is not None:
            self.reader.release()
            self.reader = None

    # ------------------------------------------------------------ time limits and hand-off

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self.idle = self.loop.call_later(self.guard.limits.keep_alive_s, self._idle_timeout)

    def _disarm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def _idle_timeout(self) -> None:
        self.idle = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.state is _State.HEAD and self.start < self.end:  # a partial head, idle all this time
            self._refuse(SlowRequestError(f"request head not complete after {self.guard.limits.keep_alive_s:g} s"))
            return
        self._close_now()

    def _arm_deadline(self, seconds: float, what: str) -> None:
        self._disarm_deadline()
        self.deadline = self.loop.call_later(seconds, self._deadline_passed, seconds, what)

    def _disarm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self, seconds: float, what: str) -> None:
        self.deadline = None
        if self.transport is None or self.transport.is_closing() or self.state in (_State.CLOSED,
                                                                                   _State.LINGERING):
            return
        if self.state in (_State.FRAME, _State.DISCARD):  # a body: what has arrived buys it more time
            received = self.body_length - self.remaining
            allowed = self.guard.limits.body_allowance_s(received)
            left = self.body_started + allowed - self.loop.time()
            if left > 0:
                self.deadline = self.loop.call_later(left, self._deadline_passed, allowed, what)
                return
            seconds = allowed
        self._drop_reader()  # its buffer and its share of the payload budget go now
        self.remaining = 0
        self._refuse(SlowRequestError(f"{what} not complete after {seconds:g} s"))

    def _hand_off(self, head: _Head) -> None:
        """Give the connection to uvicorn's HTTP protocol (which serves the app) for this one request."""
        assert self.transport is not None
        self._disarm_idle()
        self._disarm_deadline()
        self.state = _State.HANDED_OFF
        lines = [f"{head.method} {head.target} {head.version}"]
        lines += [f"{name}: {value}" for name, value in head.headers if name.lower() not in _HOP_HEADERS]
        lines.append("connection: close")  # the next request comes on a new connection, whose head we read
        pending = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + bytes(self.scratch[self.start:self.end])
        self.start = self.end = 0
        _refresh_date(self.config, self.server_state)
        inner = self.fallback(config=self.config, server_state=self.server_state, app_state=self.app_state,
                              _loop=self.loop)
        self.server_state.connections.discard(self)
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        inner.data_received(pending)


def _refresh_date(config: Any, server_state: Any) -> None:
    """Bring uvicorn's Date header up to this second: the services' server does not tick while idle
    (`server.QuietServer`), so the guard keeps it, on the requests that reach uvicorn."""
    now = int(time.time())
    if getattr(server_state, "date_second", None) == now or not getattr(config, "date_header", False):
        return
    server_state.date_second = now
    date = [(b"date", formatdate(now, usegmt=True).encode())]
    server_state.default_headers = date + list(getattr(config, "encoded_headers", []))


def guarded_protocol(guard: Guard, fallback: Callable[..., asyncio.Protocol]) -> type[GuardedProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that guards every connection, serves `guard.lane` when
    there is one, and hands the rest to `fallback`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"guard": guard, "fallback": staticmethod(fallback)})
