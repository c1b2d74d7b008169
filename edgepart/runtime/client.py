"""Talk to a gateway: send inputs, read outputs, check them against the whole model run locally."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from edgepart.errors import EdgepartError
from edgepart.executor import DEPLOYED_RTOL, DeployedCheck, check_deployed, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.config import GATEWAY
from edgepart.partition_service.errors import error_from_response
from edgepart.partition_service.transport import peer_error
from edgepart.partition_service.wire import (
    CONTENT_TYPE,
    decode_frame,
    encode_frame,
    frame_size,
    make_header,
)

__all__ = ["ClientResult", "check", "fetch_model", "fetch_trace", "infer", "reference_output", "served_model"]


@dataclass(frozen=True)
class ClientResult:
    request_id: str
    output: torch.Tensor
    latency_s: float  # seen by the client
    server_latency_s: float | None  # the gateway's own measurement (request in to answer out)


def _url(base: str) -> str:
    return base.rstrip("/")


async def _get_json(url: str, path: str, client: httpx.AsyncClient | None) -> dict[str, Any]:
    """GET a gateway's JSON resource; its typed error (or the peer's unreachability) on failure."""
    async with _maybe_client(client) as c:
        try:
            response = await c.get(_url(url) + path)
        except httpx.HTTPError as err:
            raise peer_error(err, "gateway", url, f"GET {path}") from err
        if response.status_code != 200:
            raise error_from_response(response.status_code, response.content, GATEWAY)
        result: dict[str, Any] = response.json()
        return result


async def fetch_model(url: str, *, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """What the gateway serves: model reference, shapes, partitions, predicted costs (GET /v1/model)."""
    return await _get_json(url, "/v1/model", client)


async def fetch_trace(url: str, request_id: str, *, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """One recent request's timeline at the gateway and every partition (GET /v1/trace/{id})."""
    return await _get_json(url, f"/v1/trace/{request_id}", client)


async def infer(url: str, x: torch.Tensor, *, request_id: str | None = None, timeout_s: float = 120.0,
                client: httpx.AsyncClient | None = None, model_id: str | None = None) -> ClientResult:
    """POST one input frame to the gateway's /v1/infer (/v1/models/{model_id}/infer for one model of several);
    raises the gateway's typed error on failure."""
    path = "/v1/infer" if model_id is None else f"/v1/models/{model_id}/infer"
    header = make_header(request_id or "client", x, Region.full(x.shape[1:]), -1, GATEWAY)
    parts = encode_frame(header, x.contiguous())
    headers = {"content-type": CONTENT_TYPE, "content-length": str(frame_size(parts)), "accept": CONTENT_TYPE}
    if request_id:
        headers["x-request-id"] = request_id
    body = b"".join(parts)
    async with _maybe_client(client, timeout_s) as c:
        started = time.perf_counter()
        try:
            response = await c.post(_url(url) + path, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as err:
            raise peer_error(err, "gateway", url, f"POST {path}") from err
        latency = time.perf_counter() - started
    if response.status_code != 200:
        raise error_from_response(response.status_code, response.content, GATEWAY)
    frame = decode_frame(response.content)
    server = response.headers.get("x-edgepart-latency-ms")
    return ClientResult(response.headers.get("x-request-id", frame.header.request_id), frame.tensor, latency,
                        float(server) / 1000 if server else None)


@contextlib.asynccontextmanager
async def _maybe_client(client: httpx.AsyncClient | None, timeout_s: float = 30.0
                        ) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(trust_env=False, timeout=timeout_s) as own:
        yield own


def _whole(ref: ModelRef, x: torch.Tensor, exact_kernels: bool) -> torch.Tensor:
    use_exact_kernels(exact_kernels)
    model = load_model(ref)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    return out


async def reference_output(ref: ModelRef, x: torch.Tensor, *, exact_kernels: bool = True) -> torch.Tensor:
    """The whole model's output for `x`, computed here from the model the *user* names, with native kernels
    (`exact_kernels`) or the fastest (oneDNN).

    Never from what a gateway reports: building a model runs its code, and a gateway is only a peer on the
    network (a fake one could name any file to execute).
    """
    return await asyncio.to_thread(_whole, ref, x, exact_kernels)


def served_model(info: dict[str, Any], model_id: str | None) -> dict[str, Any]:
    """The entry of `GET /v1/model`'s models for `model_id`, or the only one."""
    models: list[dict[str, Any]] = info.get("models") or []
    ids = [m["id"] for m in models]
    if model_id is None:
        if len(models) != 1:
            raise EdgepartError(f"the deployment serves {len(models)} models ({', '.join(ids)}); name one with "
                                "--model-id")
        return models[0]
    for entry in models:
        if entry["id"] == model_id:
            return entry
    raise EdgepartError(f"--model-id: the deployment serves {', '.join(ids)}, not {model_id!r}")


async def check(ref: ModelRef, x: torch.Tensor, output: torch.Tensor, *, exact_kernels: bool,
                rtol: float = DEPLOYED_RTOL) -> DeployedCheck:
    """Compare a deployment's `output` for `x` with the whole model `ref` run here with the deployment's
    kernels: bit for bit with exact kernels, within `rtol` of max|reference| with the fastest."""
    expected = await reference_output(ref, x, exact_kernels=exact_kernels)
    return check_deployed(expected, output, exact_kernels=exact_kernels, rtol=rtol)
