"""A small keep-alive HTTP/1.1 client for the tensor hop (POST a frame, read the short answer).

httpx costs about a millisecond per request, more than a whole small tensor takes on the wire. This client
speaks plain HTTP/1.1 over the event loop's transports (one protocol object per connection): a pool of
connections per host:port (opened lazily, TCP_NODELAY, reused while the peer keeps them alive, closed on any
error or cancellation), the request head and frame header in one write, then the tensor straight from its own
memory (no copy). The answer is parsed by status line, headers and a Content-Length (or chunked) body.

Failures are typed errors naming the peer, as `transport.peer_error` words them for httpx: a refused or
timed-out connect and a lost connection are `PeerUnreachableError` (503), a slow answer
`RequestTimeoutError` (504). An error *answer* is returned as it is; the caller maps it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from edgepart.partition_service.errors import PeerUnreachableError, RequestTimeoutError

__all__ = ["Answer", "HopClient"]

MAX_ANSWER_HEAD = 64 * 1024
MAX_ANSWER_BODY = 4 * 1024 * 1024
COALESCE = 64 * 1024  # a payload up to this size goes out in the same write as the head


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes


class _ProtocolError(Exception):
    """The peer closed the connection or answered something that is not HTTP/1.x."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    authority: str
    path: str


class _Connection(asyncio.Protocol):
    """One kept-alive connection, driven by the event loop's transport.

    The socket stays registered with the loop for its whole life, so an answer costs one wake-up (the loop's
    `sock_recv` registers and unregisters the socket every call). Writes go out at once when the socket takes
    them; the write-buffer limit of 0 makes `drained` wait until the kernel has all of the body.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.closed = False
        self._arrived: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake_reader(None)

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake_reader(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_reader(None)
        self._wake_writer(exc or ConnectionResetError("the peer closed the connection"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer(None)

    def _wake_reader(self, _: None) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    def _wake_writer(self, exc: BaseException | None) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    async def drained(self) -> None:
        """Until the kernel holds everything written (the body has left this process)."""
        while self._paused:
            if self.closed:
                raise ConnectionResetError("the connection is closed")
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None

    async def more(self) -> bool:
        """Wait for more answer bytes; False when the peer has closed its side and nothing more will come."""
        if self.closed:
            return False
        size = len(self.buffer)
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            await self._arrived
        finally:
            self._arrived = None
        return len(self.buffer) > size or not self.closed

    def alive(self) -> bool:
        """False when an idle connection was closed by the peer (or has unexpected bytes waiting)."""
        return not self.closed and not self.buffer and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: the tensor hop speaks plain http://host:port")
    port = parts.port or 80
    host = parts.hostname
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(host, port, authority, path)


class Lease:
    """A connection held for one POST; returned to the pool (or closed) if the POST never takes it."""

    def __init__(self, client: HopClient, key: tuple[str, int], conn: _Connection):
        self._client = client
        self._key = key
        self._conn: _Connection | None = conn

    def take(self) -> tuple[tuple[str, int], _Connection]:
        if self._conn is None:
            raise RuntimeError("a lease is used once")
        conn, self._conn = self._conn, None
        return self._key, conn

    def release(self) -> None:
        """Give the connection back unused (a no-op once a POST took it)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._client._checkin(self._key, conn)


class HopClient:
    """Keep-alive HTTP/1.1 POSTs of tensor frames; one per process, shared by every peer."""

    def __init__(self, timeout_s: float, *, connect_timeout_s: float = 5.0, max_idle_per_peer: int = 32,
                 keepalive_expiry_s: float = 30.0, headers: dict[str, str] | None = None):
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})  # sent with every request (the deployment's Authorization)
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        self.max_idle_per_peer = max_idle_per_peer
        self.keepalive_expiry_s = keepalive_expiry_s  # shorter than the servers' keep-alive: no reuse races
        self.opened = 0  # connections opened so far (keep-alive shows as few)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith("http://")

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def __aenter__(self) -> HopClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ pool

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if now - conn.idle_since < self.keepalive_expiry_s and conn.alive():
                return conn
            conn.close()
        return None

    def _checkin(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or conn.buffer or len(idle) >= self.max_idle_per_peer:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, host: str, port: int) -> _Connection:
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return conn

    # ------------------------------------------------------------ one exchange

    def _target_of(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        return target

    async def lease(self, url: str, *, peer: str, what: str, peer_url: str | None = None,
                    timeout_s: float | None = None) -> Lease:
        """A connection to `url`'s peer, kept-alive or newly opened, for one `post(..., lease=)`.

        Opening it is the part that waits on a dead or slow peer (up to the connect timeout), so a sender
        takes its lease before it queues for its link: one unreachable peer does not stall the others."""
        target = self._target_of(url)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        key = (target.host, target.port)
        conn = self._checkout(key)
        if conn is not None:
            return Lease(self, key, conn)
        where = f"{peer} at {peer_url or url}"
        try:
            async with asyncio.timeout(min(timeout, self.connect_timeout_s)):
                conn = await self._connect(target.host, target.port)
        except TimeoutError:
            raise PeerUnreachableError(f"{where} is unreachable ({what}): ConnectTimeout", peer=peer) from None
        except OSError as err:
            raise PeerUnreachableError(f"{where} is unreachable ({what}): {err}", peer=peer) from None
        return Lease(self, key, conn)

    async def post(self, url: str, parts: Sequence[bytes | memoryview], headers: dict[str, str], *, peer: str,
                   what: str, peer_url: str | None = None, timeout_s: float | None = None,
                   sent: Callable[[], None] | None = None, lease: Lease | None = None) -> Answer:
        """POST `parts` (the body, in order) to `url`; the answer, whatever its status.

        `sent` is called once the whole body is in the socket; `lease` (from `lease()`) is the connection to
        use, taken over by this call. Raises `PeerUnreachableError` or `RequestTimeoutError` naming `peer`
        (at `peer_url`, default `url`).
        """
        target = self._target_of(url)
        where = f"{peer} at {peer_url or url}"
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if lease is None:
            lease = await self.lease(url, peer=peer, what=what, peer_url=peer_url, timeout_s=timeout_s)
        key, conn = lease.take()
        if not conn.alive():  # the peer hung up while the lease waited for its turn on the link
            conn.close()
            key, conn = (await self.lease(url, peer=peer, what=what, peer_url=peer_url, timeout_s=timeout_s)).take()
        try:
            async with asyncio.timeout(timeout):
                await self._send(conn, target, parts, headers)
                if sent is not None:
                    sent()
                answer, keep = await self._answer(conn)
        except TimeoutError:
            conn.close()
            raise RequestTimeoutError(f"{where} did not answer in time ({what}): ReadTimeout", peer=peer) from None
        except (OSError, _ProtocolError) as err:
            conn.close()
            text = str(err) or type(err).__name__
            raise PeerUnreachableError(f"lost the connection to {where} ({what}): {text}", peer=peer) from None
        except BaseException:
            conn.close()
            raise
        if keep:
            self._checkin(key, conn)
        else:
            conn.close()
        return answer

    async def _send(self, conn: _Connection, target: _Target, parts: Sequence[bytes | memoryview],
                    headers: dict[str, str]) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        size = sum(v.nbytes for v in views)
        lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.authority}", f"Content-Length: {size}"]
        for name, value in {**self.headers, **headers}.items():
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} has a line break")
            lines.append(f"{name}: {value}")
        head = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        while views and len(head) + views[0].nbytes <= COALESCE:  # small pieces ride with the head
            head += views.pop(0)
        conn.write(head)
        for view in views:
            if view.nbytes:
                conn.write(view)  # the transport sends from the tensor's own memory
        await conn.drained()

    async def _fill(self, conn: _Connection, why: str) -> None:
        if not await conn.more():
            raise _ProtocolError(f"the peer closed the connection {why}")

    async def _line(self, conn: _Connection) -> bytes:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_ANSWER_HEAD:
                raise _ProtocolError("answer line too long")
            await self._fill(conn, "in the middle of its answer")
        line = bytes(conn.buffer[:end])
        del conn.buffer[:end + 2]
        return line

    async def _exact(self, conn: _Connection, size: int) -> bytes:
        while len(conn.buffer) < size:
            await self._fill(conn, f"in the middle of its answer ({len(conn.buffer)} of {size} body bytes)")
        data = bytes(conn.buffer[:size])
        del conn.buffer[:size]
        return data

    async def _answer(self, conn: _Connection) -> tuple[Answer, bool]:
        """Read one answer; (it, whether the connection can be reused)."""
        while True:
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                if len(conn.buffer) > MAX_ANSWER_HEAD:
                    raise _ProtocolError(f"answer head over {MAX_ANSWER_HEAD} bytes")
                await self._fill(conn, "before answering" if not conn.buffer else "in the middle of its answer")
            lines = bytes(conn.buffer[:end]).decode("latin-1").split("\r\n")
            del conn.buffer[:end + 4]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise _ProtocolError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
            status = int(code)
            if status >= 200:
                break  # 1xx answers (100 Continue) come before the real one
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"malformed answer header {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            return Answer(status, headers, b""), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Answer(status, headers, await self._chunked(conn)), keep
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_ANSWER_BODY:
                raise _ProtocolError(f"answer Content-Length {length[:40]!r} is not a number up to {MAX_ANSWER_BODY}")
            return Answer(status, headers, await self._exact(conn, int(length))), keep
        while True:  # no length: the body runs to the end of the connection
            try:
                await self._fill(conn, "")
            except _ProtocolError:
                break
            if len(conn.buffer) > MAX_ANSWER_BODY:
                raise _ProtocolError(f"answer body over {MAX_ANSWER_BODY} bytes")
        body = bytes(conn.buffer)
        conn.buffer.clear()
        return Answer(status, headers, body), False

    async def _chunked(self, conn: _Connection) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self._line(conn)).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                break
            if len(body) + size > MAX_ANSWER_BODY:
                raise _ProtocolError(f"answer body over {MAX_ANSWER_BODY} bytes")
            body += await self._exact(conn, size)
            if await self._line(conn):
                raise _ProtocolError("chunk not followed by CRLF")
        while await self._line(conn):  # trailers
            pass
        return bytes(body)
