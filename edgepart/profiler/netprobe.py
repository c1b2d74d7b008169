"""Network probe: per-message latency and bandwidth between two endpoints over plain HTTP (SOLVERS.md §2 A.2).

One side serves `echo_app` (a dependency-free ASGI app: `POST /sink` reads
the body and answers its length; `GET /healthz`). The other side posts bodies
of 1 KB ... 16 MB and times each round trip; a least-squares line through the
medians gives t(n) = alpha + n / bandwidth, the cost model's link (the answer
is a few bytes, so the round trip carries n bytes one way).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_SIZES = tuple(2**k for k in range(10, 25, 2))  # 1 KiB ... 16 MiB
MAX_BODY = 64 * 2**20


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI app: POST /sink -> {"bytes": n}; GET /healthz -> {"ok": true}."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    status = 404
    payload: dict[str, object] = {"error": f"no route {scope.get('method')} {scope.get('path')}"}
    if scope["method"] == "GET" and scope["path"] == "/healthz":
        status, payload = 200, {"ok": True}
    elif scope["method"] == "POST" and scope["path"] == "/sink":
        total = 0
        more = True
        while more:
            message = await receive()
            total += len(message.get("body", b""))
            more = bool(message.get("more_body"))
            if total > MAX_BODY:
                status, payload = 413, {"error": f"body larger than {MAX_BODY} bytes"}
                break
        else:
            status, payload = 200, {"bytes": total}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class LinkFit:
    """t(n) = alpha_s + n / bandwidth_Bps, fitted on median round trips."""

    alpha_s: float
    bandwidth_Bps: float  # noqa: N815 - the unit is part of the name
    sizes: tuple[int, ...]
    medians_s: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"alphaS": self.alpha_s, "bandwidthBps": self.bandwidth_Bps, "bandwidthMbps": self.bandwidth_Bps * 8e-6,
                "sizes": list(self.sizes), "mediansS": list(self.medians_s)}


def fit_link(sizes: Sequence[int], seconds: Sequence[float]) -> LinkFit:
    """Least squares with alpha >= 0 and bandwidth > 0 (clamped when the data disagree)."""
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if len(n) < 2:
        raise ValueError("need at least two message sizes to fit a link")
    slope, intercept = np.polyfit(n, t, 1)
    if slope <= 0:
        slope = max(float(t.max() - t.min()) / max(float(n.max() - n.min()), 1.0), 1e-15)
    alpha = max(0.0, float(intercept))
    return LinkFit(alpha, 1.0 / float(slope), tuple(int(s) for s in sizes), tuple(float(x) for x in t))


async def probe(url: str, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5, warmup: int = 1,
                transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 60.0) -> LinkFit:
    """Time POSTs of each size to `url`/sink; fit alpha and bandwidth."""
    base = url.rstrip("/")
    medians = []
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        health = await client.get(f"{base}/healthz")
        health.raise_for_status()
        for size in sizes:
            body = b"\0" * size
            samples = []
            for i in range(warmup + repeats):
                start = time.perf_counter()
                response = await client.post(f"{base}/sink", content=body)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                if response.json().get("bytes") != size:
                    raise RuntimeError(f"probe: the echo endpoint counted {response.json()} for {size} bytes")
                if i >= warmup:
                    samples.append(elapsed)
            medians.append(statistics.median(samples))
    return fit_link(sizes, medians)


def probe_sync(url: str, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5) -> LinkFit:
    return asyncio.run(probe(url, sizes, repeats))


def serve_echo(host: str, port: int) -> None:
    """Serve `echo_app` until interrupted (the other end runs `probe`)."""
    import uvicorn

    uvicorn.run(echo_app, host=host, port=port, log_level="warning")
