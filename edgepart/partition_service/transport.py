"""Moving frames over HTTP: send with the keep-alive `HopClient` (or any httpx.AsyncClient), receive from ASGI.

Transport failures become typed errors that name the peer: a refused or
lost connection is `PeerUnreachableError` (503), a slow peer `RequestTimeoutError`
(504), an error answer keeps its own class when it is a 503/504 and becomes
`PeerError` (502) otherwise (a 4xx from a peer is our bug, not the client's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import httpx
import torch
from starlette.requests import Request

from edgepart.partition_service.auth import Secret
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.errors import (
    ExpiredError,
    FrameError,
    PeerError,
    PeerUnreachableError,
    RequestTimeoutError,
    ServiceError,
    UnsupportedMediaTypeError,
    error_from_response,
)
from edgepart.partition_service.hop import HopClient, Lease
from edgepart.partition_service.wire import (
    CONTENT_TYPE,
    Admit,
    Frame,
    FrameHeader,
    FrameReader,
    Limits,
    encode_frame,
    frame_size,
    read_frame,
)

__all__ = ["TENSOR_PATH", "HopClient", "Sender", "content_length", "internal_headers", "make_client",
           "make_hop_client", "peer_error", "receive_frame", "received_frame", "send_frame"]

TENSOR_PATH = "/v1/tensor"
SEND_CHUNK = 1024 * 1024


def internal_headers(secret: Secret) -> dict[str, str]:
    """What every request to another process of the deployment carries."""
    return {"authorization": secret.header}


def make_client(timeout_s: float, max_connections: int = 256, *, secret: Secret | None = None) -> httpx.AsyncClient:
    """The one persistent client of a process, for its internal requests (each carries the secret).

    The services' ports answer one app request per connection (the lane hands each over with Connection:
    close), so nothing is kept alive for long."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64, keepalive_expiry=30.0),
        trust_env=False, headers=internal_headers(secret) if secret is not None else None,
    )


def make_hop_client(timeout_s: float, *, secret: Secret | None = None) -> HopClient:
    """The process's client for the tensor hop (POST /v1/tensor), much cheaper per request than httpx."""
    return HopClient(timeout_s, connect_timeout_s=5.0, headers=internal_headers(secret) if secret else None)


def peer_error(err: Exception, peer: str, url: str, what: str) -> ServiceError:
    """Translate an httpx transport exception into a typed error naming the peer."""
    if isinstance(err, ServiceError):
        return err
    kind = type(err).__name__
    text = str(err) or kind
    if isinstance(err, httpx.ConnectTimeout | httpx.ConnectError):
        return PeerUnreachableError(f"{peer} at {url} is unreachable ({what}): {text}", peer=peer)
    if isinstance(err, httpx.TimeoutException):
        return RequestTimeoutError(f"{peer} at {url} did not answer in time ({what}): {kind}", peer=peer)
    if isinstance(err, httpx.TransportError):
        return PeerUnreachableError(f"lost the connection to {peer} at {url} ({what}): {text}", peer=peer)
    return PeerError(f"{what} to {peer} at {url} failed: {kind}: {text}", peer=peer)


def _answer_error(status: int, content: bytes, peer: str, url: str) -> ServiceError:
    err = error_from_response(status, content, peer)
    detail = f"{peer} at {url} answered {status}: {err.detail}"
    if err.status in (503, 504):
        return type(err)(detail, peer=err.peer or peer, request_id=err.request_id)
    return PeerError(detail, peer=peer, request_id=err.request_id)


async def _chunks(parts: Sequence[bytes | memoryview], sent: Callable[[], None] | None = None
                  ) -> AsyncIterator[bytes]:
    for part in parts:
        view = memoryview(part)
        # slices of the tensor's own memory: the HTTP stack copies each small slice into a reused buffer
        # and the socket takes it at once, instead of copying (and page-faulting) the whole tensor twice
        for offset in range(0, max(view.nbytes, 1), SEND_CHUNK):
            yield view[offset:offset + SEND_CHUNK]  # type: ignore[misc]
    if sent is not None:  # httpx asks for more only once the last chunk is written
        sent()


async def send_frame(client: httpx.AsyncClient | HopClient, url: str, header: FrameHeader, tensor: torch.Tensor, *,
                     peer: str, timeout_s: float | None = None, sent: Callable[[], None] | None = None,
                     headers: Mapping[str, str] | None = None, lease: Lease | None = None) -> int:
    """POST one frame to `url`/v1/tensor; the number of bytes sent. Raises a typed error naming `peer`.

    `sent` is called once the whole body has been handed to the socket (before the answer); `headers` go with
    the request (the deployment's Authorization).
    """
    parts = encode_frame(header, tensor)
    size = frame_size(parts)
    headers = {**(headers or {}), "content-type": CONTENT_TYPE, "content-length": str(size),
               "x-request-id": header.request_id}
    target = url + TENSOR_PATH
    if isinstance(client, HopClient):
        answer = await client.post(target, parts, headers, peer=peer, peer_url=url, timeout_s=timeout_s, sent=sent,
                                   what=f"sending request {header.request_id}", lease=lease)
        if answer.status >= 300:
            raise _answer_error(answer.status, answer.content, peer, url)
        return size
    try:
        response = await client.post(target, content=_chunks(parts, sent), headers=headers,
                                     timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT)
    except httpx.HTTPError as err:
        raise peer_error(err, peer, url, f"sending request {header.request_id}") from err
    if response.status_code >= 300:
        raise _answer_error(response.status_code, response.content, peer, url)
    return size


class Sender:
    """A process's outgoing link: frames leave one at a time in the order they were queued (a NIC's FIFO,
    as the planner's evaluator assumes), each body after its emulated latency; answers overlap.

    Frames to http:// peers go through `hop` when given (the fast path), otherwise through `client`."""

    def __init__(self, client: httpx.AsyncClient, hop: HopClient | None = None,
                 headers: Mapping[str, str] | None = None):
        self.client = client
        self.hop = hop
        self.headers = dict(headers or {})  # on every frame (the deployment's Authorization)
        self._fifo = asyncio.Lock()
        self._peer_order: dict[str, asyncio.Lock] = {}

    async def send(self, url: str, header: FrameHeader, tensor: torch.Tensor, *, peer: str,
                   delay_s: float = 0.0, deadline: float | None = None) -> int:
        """Send one frame in its turn. With `deadline` (time.monotonic()), a frame whose deadline passed while
        it waited for the link is dropped (ExpiredError) and the one sent carries the budget left then."""
        client: httpx.AsyncClient | HopClient = self.client
        lease: Lease | None = None
        if self.hop is not None and self.hop.supports(url):
            client = self.hop
            # Connect before queueing for the link, so a dead or slow peer holds up only the frames to it.
            # Frames to one peer still take the link in the order they were sent (its own lock, fair).
            order = self._peer_order.get(url)
            if order is None:  # one lock per peer, made once (not a fresh one per frame)
                order = self._peer_order[url] = asyncio.Lock()
            async with order:
                lease = await self.hop.lease(url + TENSOR_PATH, peer=peer, peer_url=url,
                                             what=f"sending request {header.request_id}")
                try:
                    await self._fifo.acquire()
                except BaseException:
                    lease.release()
                    raise
        else:
            await self._fifo.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._fifo.release()

        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpiredError(f"request {header.request_id}: its deadline passed {-left:.3f} s before "
                                       f"its frame to {peer} could leave", request_id=header.request_id)
                header = header.model_copy(update={"budget_s": left})
            return await send_frame(client, url, header, tensor, peer=peer, sent=release, headers=self.headers,
                                    lease=lease)
        finally:
            release()
            if lease is not None:
                lease.release()


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise FrameError(f"Content-Length {value!r} is not a number")
    return int(value)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def receive_frame(request: Request, limits: Limits) -> Frame:
    """Read a tensor frame from the request body, checking limits before reading it all."""
    kind = media_type(request)
    if kind not in (CONTENT_TYPE, "application/octet-stream"):
        raise UnsupportedMediaTypeError(f"expected Content-Type {CONTENT_TYPE}, got {kind or 'none'}")
    return await read_frame(request.stream(), limits, content_length(request))


@contextlib.asynccontextmanager
async def received_frame(request: Request, limits: Limits, *, admit: Admit | None = None,
                         budget: PayloadBudget | None = None) -> AsyncIterator[Frame]:
    """The request body's tensor frame, checked as the lane checks one: limits, then `admit(header)`, then
    the payload budget, before the payload is allocated; its budget is held until the block ends."""
    kind = media_type(request)
    if kind not in (CONTENT_TYPE, "application/octet-stream"):
        raise UnsupportedMediaTypeError(f"expected Content-Type {CONTENT_TYPE}, got {kind or 'none'}")
    reader = FrameReader(limits, content_length(request), admit=admit, budget=budget)
    try:
        async for chunk in request.stream():
            if chunk:
                reader.feed(chunk)
        yield reader.finish()
    finally:
        reader.release()
