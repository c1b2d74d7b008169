"""Every error the data plane can raise, and the one place they map to HTTP.

Exception tree (status code in brackets)::

    ServiceError [500]
    ├── BadRequestError [400]
    │   ├── FrameError [400]                 malformed header, bad dtype/shape/region, trailing bytes
    │   │   ├── TruncatedFrameError [400]    the body ended before the header or payload did
    │   │   └── FrameTooLargeError [413]     header or tensor over the configured limits
    │   ├── UnauthorizedError [401]          an internal request without the deployment's secret
    │   ├── SlowRequestError [408]           a request head or body slower than the limits allow
    │   ├── HeadTooLargeError [431]          a request head over its limit
    │   ├── UnsupportedMediaTypeError [415]  neither a tensor frame nor JSON
    │   ├── UnknownModelError [404]          a model id the deployment does not serve
    │   ├── UnexpectedPieceError [422]       a well-formed frame this receiver does not expect
    │   ├── DuplicatePieceError [409]        the same piece of one request arrived twice
    │   └── ClientGoneError [499]            the client closed its connection before its answer (never sent)
    ├── NotReadyError [503]                  slice not loaded / warmed yet
    ├── OverloadedError [503]                no capacity within the request timeout (backpressure)
    │   ├── AdmissionError [503]             the gateway cannot finish more requests within their deadline
    │   ├── TooManyConnectionsError [503]    the process's connection cap is reached
    │   └── MemoryBudgetError [503]          payload memory in flight would exceed its cap
    ├── RequestTimeoutError [504]            pieces or results did not arrive in time
    │   └── ExpiredError [504]               the request's deadline passed before this work (dropped)
    ├── PeerError [502]                      a peer answered with an error
    │   └── PeerUnreachableError [503]       a peer cannot be reached (names the peer)
    └── ComputeFailedError [500]             the slice raised while computing

Handlers answer with a JSON body ``{"error": reason, "detail": ..., "peer": ..., "request_id": ...}``
and `error_from_response` turns such a body back into the same exception on the client side. What a client
(not a peer) reads passes through `redact`: internal URLs and file paths stay inside the deployment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgepart.errors import EdgepartError

__all__ = [
    "AdmissionError", "BadRequestError", "ClientGoneError", "ComputeFailedError", "DuplicatePieceError", "ExpiredError", "FrameError", "FrameTooLargeError",
    "HeadTooLargeError", "MemoryBudgetError", "NotReadyError", "OverloadedError", "PeerError", "PeerUnreachableError",
    "RequestTimeoutError", "ServiceError", "SlowRequestError", "TooManyConnectionsError", "TruncatedFrameError",
    "UnauthorizedError", "UnexpectedPieceError", "UnknownModelError", "UnsupportedMediaTypeError", "error_body", "error_from_response",
    "install_error_handlers", "redact",
]


class ServiceError(EdgepartError):
    """Base of every data-plane error; `status` and `reason` say how it goes over HTTP."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, peer: str | None = None, request_id: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.peer = peer
        self.request_id = request_id

    def __str__(self) -> str:
        return self.detail


class BadRequestError(ServiceError):
    status = 400
    reason = "bad_request"


class FrameError(BadRequestError):
    reason = "bad_frame"


class TruncatedFrameError(FrameError):
    reason = "truncated_frame"


class FrameTooLargeError(FrameError):
    status = 413
    reason = "frame_too_large"


class UnauthorizedError(BadRequestError):
    status = 401
    reason = "unauthorized"


class SlowRequestError(BadRequestError):
    status = 408
    reason = "slow_request"


class HeadTooLargeError(BadRequestError):
    status = 431
    reason = "head_too_large"


class UnsupportedMediaTypeError(BadRequestError):
    status = 415
    reason = "unsupported_media_type"


class UnexpectedPieceError(BadRequestError):
    status = 422
    reason = "unexpected_piece"


class DuplicatePieceError(BadRequestError):
    status = 409
    reason = "duplicate_piece"


class ClientGoneError(BadRequestError):
    status = 499  # nginx's "client closed request": nobody reads it, the metrics count it
    reason = "client_gone"


class UnknownModelError(BadRequestError):
    status = 404
    reason = "unknown_model"


class NotReadyError(ServiceError):
    status = 503
    reason = "not_ready"


class OverloadedError(ServiceError):
    status = 503
    reason = "overloaded"


class AdmissionError(OverloadedError):
    """Refused at the gateway's admission: more requests than the deployment can answer within the timeout."""

    reason = "admission_limit"

    def __init__(self, detail: str, *, retry_after_s: int = 1, peer: str | None = None,
                 request_id: str | None = None):
        super().__init__(detail, peer=peer, request_id=request_id)
        self.retry_after_s = retry_after_s


class TooManyConnectionsError(OverloadedError):
    reason = "too_many_connections"


class MemoryBudgetError(OverloadedError):
    reason = "memory_budget"


class RequestTimeoutError(ServiceError):
    status = 504
    reason = "timeout"


class ExpiredError(RequestTimeoutError):
    """The request's deadline (carried in its frames) passed: its work is dropped, not done."""

    reason = "expired"


class PeerError(ServiceError):
    status = 502
    reason = "peer_error"


class PeerUnreachableError(PeerError):
    status = 503
    reason = "peer_unreachable"


class ComputeFailedError(ServiceError):
    status = 500
    reason = "compute_failed"


_BY_REASON: dict[str, type[ServiceError]] = {}


def _register(cls: type[ServiceError]) -> None:
    _BY_REASON[cls.reason] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(ServiceError)


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s,;()'\"]+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?/(?:[^\s/:,;()'\"]+/)+(?=[^\s/:,;()'\"]*)")


def redact(text: str) -> str:
    """`text` without internal URLs (`<internal>`) and directories of file paths (the file name stays).

    For what the gateway tells its clients: peers' addresses and the deployment's files stay inside.
    """
    return _PATH.sub("", _URL.sub("<internal>", text))


def error_body(err: ServiceError, *, redacted: bool = False) -> dict[str, Any]:
    if redacted:
        body: dict[str, Any] = {"error": err.reason, "detail": redact(err.detail)}
    else:
        body = {"error": err.reason, "detail": err.detail}
    if err.peer is not None:
        body["peer"] = err.peer
    if err.request_id is not None:
        body["request_id"] = err.request_id
    return body


def error_from_response(status: int, content: bytes, peer: str | None = None) -> ServiceError:
    """Rebuild the typed error a data-plane service answered with (falls back on the status code)."""
    body: Any = None
    try:
        body = json.loads(content.decode("utf-8", "replace")) if content else None
    except json.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _BY_REASON.get(body["error"], ServiceError)
        detail = str(body.get("detail", body["error"]))
        return cls(detail, peer=body.get("peer") or peer, request_id=body.get("request_id"))
    text = content[:200].decode("utf-8", "replace").strip()
    by_status: dict[int, type[ServiceError]] = {
        400: BadRequestError, 401: UnauthorizedError, 408: SlowRequestError, 409: DuplicatePieceError,
        413: FrameTooLargeError, 415: UnsupportedMediaTypeError, 422: UnexpectedPieceError, 431: HeadTooLargeError,
        503: NotReadyError, 504: RequestTimeoutError}
    fallback = by_status.get(status, PeerError)
    return fallback(f"HTTP {status}" + (f": {text}" if text else ""), peer=peer)


def install_error_handlers(app: FastAPI, on_error: Callable[[ServiceError], None] | None = None, *,
                           redacted: bool = False) -> None:
    """Answer every `ServiceError` with its status and JSON body; `on_error` counts it. `redacted`: for the
    gateway's clients, whose answers name no internal URL or file path."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if on_error is not None:
            on_error(exc)
        retry_after = exc.retry_after_s if isinstance(exc, AdmissionError) else 1
        headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
        if exc.status in (401, 408, 431):
            headers = {"Connection": "close"}
        return JSONResponse(error_body(exc, redacted=redacted), status_code=exc.status, headers=headers)

    app.add_exception_handler(ServiceError, handle)
