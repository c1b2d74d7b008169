"""ASGI guards of the apps behind the lane: the deployment's secret on internal ports, and body deadlines.

The guard (`lane.py`) reads every request head, refuses requests without the secret on internal ports and
serves tensor frames itself; every other request reaches a FastAPI app through these two wrappers, which act
before any route reads a body:

- `InternalOnly`: on an internal port, every path but the probes' (/healthz, /readyz) and Prometheus'
  (/metrics) needs ``Authorization: Bearer <secret>``; otherwise 401, the body never read, no effect. (The
  guard already refused such requests; this keeps an app served without it, in-process, just as closed.)
- `BodyDeadline`: a body gets `body_timeout_s`, and one more second for every `min_body_rate` bytes that
  arrive; a slower one gets 408 (the lane hands requests over with ``Connection: close``, so the connection
  ends). What a body declares buys it nothing: a chunked dribble is cut off as surely as a declared one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edgepart.partition_service.auth import Secret
from edgepart.partition_service.config import ConnectionLimits
from edgepart.partition_service.errors import (
    ServiceError,
    SlowRequestError,
    UnauthorizedError,
    error_body,
)
from edgepart.partition_service.lane import OPEN_PATHS

__all__ = ["BodyDeadline", "InternalOnly"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]



async def _send_error(send: Send, err: ServiceError) -> None:
    body = json.dumps(error_body(err)).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class InternalOnly:
    """Every request but the open paths must carry the deployment's secret."""

    def __init__(self, app: ASGIApp, secret: Secret, on_error: Callable[[ServiceError], None] | None = None,
                 open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.secret = secret
        self.on_error = on_error
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in self.open_paths:
            headers = dict(scope.get("headers") or ())
            authorization = headers.get(b"authorization")
            if not self.secret.admits(authorization.decode("latin-1") if authorization is not None else None):
                err = UnauthorizedError(f"{str(scope.get('path'))[:100]} is internal to the deployment: the "
                                        "request does not carry its secret")
                if self.on_error is not None:
                    self.on_error(err)
                await _send_error(send, err)
                return
        await self.app(scope, receive, send)


class BodyDeadline:
    """Request bodies must keep coming: `limits.body_allowance_s(bytes received)` from the first read."""

    def __init__(self, app: ASGIApp, limits: ConnectionLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: float | None = None
        received = 0
        complete = False

        async def timed_receive() -> Message:
            nonlocal started, received, complete
            if complete:  # the body is in: later reads wait for a disconnect, which has no deadline
                return await receive()
            if started is None:
                started = time.monotonic()
            allowed = self.limits.body_allowance_s(received)
            try:
                async with asyncio.timeout(max(started + allowed - time.monotonic(), 0.0)):
                    message = await receive()
            except TimeoutError:
                raise SlowRequestError(f"request body too slow: {received} bytes after {allowed:g} s") from None
            received += len(message.get("body", b""))
            complete = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
