"""A variant worker: one device's process in accuracy-aware data partitioning.

It holds variants of one family (loaded on the dispatcher's request) and
computes whole images with the variant each part names:

    POST /v1/load      {"variant": NAME}          load it (kept: a swap back costs nothing)
    POST /v1/run       ?variant=NAME, a frame     the answers (logits) of those images, as a frame;
                                                  X-Edgepart-Compute-S is the compute time
    POST /v1/profile   {"variant", "images"}      compute that many images, answer the seconds
    GET  /healthz, /readyz, /metrics, /v1/info

Every POST carries the deployment's secret (checked from the head, before the
body is read); a body's declared length is checked against the limit before it
is read, and a frame's header (shape, dtype) before its payload is allocated.
A part is computed with the variant it names even while another is being
loaded, so swapping a variant loses no part in flight.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from edgepart.errors import EdgepartError
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.auth import Secret, load_secret
from edgepart.partition_service.wire import (
    CONTENT_TYPE,
    Limits,
    decode_frame,
    encode_frame,
    make_header,
)
from edgepart.spec import VariantFamilySpec

__all__ = ["BodyError", "WorkerConfig", "WorkerService", "frame_body", "read_body", "worker_app"]

FLOAT_BYTES = 4
HEAD_ROOM = 4 + 16 * 1024  # a frame's length prefix and its largest header


class WorkerConfig(BaseModel):
    """Everything one worker process needs (EDGEPART_CONFIG: a JSON path or the JSON)."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(default="worker", pattern="^worker$")
    deployment: str
    device: str
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    family: VariantFamilySpec = Field(description="The family, weights paths absolute.")
    input_shape: tuple[int, ...] = Field(description="One image (C, H, W).")
    batch: int = Field(default=32, ge=1, le=4096, description="Images computed at once.")
    max_images: int = Field(default=65536, ge=1, le=1 << 20, description="Most images in one part.")
    secret_file: str
    threads: int = Field(default=1, ge=1, le=256)


class BodyError(EdgepartError, ValueError):
    """A request body refused before (or while) it is read; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused unless its declared length is within `limit` (checked before reading a byte)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise BodyError(411, "a Content-Length is required")
    if int(declared) > limit:
        raise BodyError(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > int(declared):
            raise BodyError(400, "body longer than its Content-Length")
    return bytes(chunks)


def frame_body(request_id: str, tensor: torch.Tensor, sender: str) -> bytes:
    header = make_header(request_id, tensor, Region.full(tensor.shape[1:]), -1, sender)
    return b"".join(encode_frame(header, tensor.contiguous()))


def decode_images(body: bytes, per_image: tuple[int, ...], max_images: int) -> tuple[str, torch.Tensor]:
    """A frame of float32 images (N, *per_image), N <= max_images: its request id and tensor."""
    limits = Limits(max_tensor_bytes=max_images * math.prod(per_image) * FLOAT_BYTES)
    try:
        frame = decode_frame(body, limits)
    except EdgepartError as err:
        raise BodyError(413 if "over the limit" in str(err) else 400, str(err)) from None
    shape = tuple(frame.header.shape)
    if frame.header.dtype != "float32" or shape[1:] != per_image or not 1 <= shape[0] <= max_images:
        raise BodyError(422, f"expected float32 images of shape [N, {', '.join(map(str, per_image))}] with "
                             f"1 <= N <= {max_images}, got {frame.header.dtype} {list(shape)}")
    return frame.header.request_id, frame.tensor


class WorkerService:
    """The variants a worker holds, and their computation (blocking torch work runs in threads)."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.secret: Secret = load_secret(config.secret_file)
        self._variants = {v.name: v for v in config.family.variants}
        self._models: dict[str, torch.nn.Module] = {}
        self._loading = threading.Lock()
        self._computing = threading.Lock()  # one part at a time: its compute time is its own
        self.current: str | None = None
        self.computed = 0
        self.parts = 0
        self.compute_s = 0.0
        torch.set_num_threads(config.threads)
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("deployment", "device", "variant")
        self._images = Counter("edgepart_worker_images", "Images computed", labels, registry=self.registry)
        self._compute = Histogram("edgepart_worker_compute_seconds", "Compute time of one part", labels,
                                  registry=self.registry)
        self._loaded = Gauge("edgepart_worker_variant_loaded", "1 for the variant this worker runs now",
                             labels, registry=self.registry)

    def _model(self, variant: str) -> torch.nn.Module:
        spec = self._variants.get(variant)
        if spec is None:
            raise BodyError(404, f"unknown variant {variant!r}; the family has {list(self._variants)}")
        with self._loading:
            model = self._models.get(variant)
            if model is None:
                m = spec.model
                ref = ModelRef(m.name, (1, *self.config.input_shape), m.weights, m.seed)
                model = load_model(ref)
                self._models[variant] = model
            return model

    def load(self, variant: str) -> float:
        started = time.perf_counter()
        self._model(variant)
        if self.current is not None:
            self._loaded.labels(self.config.deployment, self.config.device, self.current).set(0)
        self.current = variant
        self._loaded.labels(self.config.deployment, self.config.device, variant).set(1)
        return time.perf_counter() - started

    def run(self, variant: str, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        if variant not in self._models:
            raise BodyError(409, f"variant {variant!r} is not loaded here (POST /v1/load first)")
        model = self._models[variant]
        with self._computing, torch.no_grad():
            started = time.perf_counter()
            outs = [model(images[i:i + self.config.batch]) for i in range(0, images.shape[0], self.config.batch)]
            out = torch.cat(outs)
            seconds = time.perf_counter() - started
        self.computed += images.shape[0]
        self.parts += 1
        self.compute_s += seconds
        labels = (self.config.deployment, self.config.device, variant)
        self._images.labels(*labels).inc(images.shape[0])
        self._compute.labels(*labels).observe(seconds)
        return out, seconds

    def profile(self, variant: str, images: int) -> float:
        self._model(variant)
        x = torch.rand((images, *self.config.input_shape), generator=torch.Generator().manual_seed(0))
        self._models[variant](x[: self.config.batch])  # warm
        return self.run(variant, x)[1]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": "refused" if status < 500 else "failed", "detail": message}, status_code=status)


class _LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: str = Field(min_length=1, max_length=63)


class _ProfileBody(_LoadBody):
    images: int = Field(ge=1, le=65536)


def worker_app(service: WorkerService) -> FastAPI:
    app = FastAPI(title="edgepart variant worker", docs_url=None, redoc_url=None, openapi_url=None)
    per_image = tuple(service.config.input_shape)
    body_limit = HEAD_ROOM + service.config.max_images * math.prod(per_image) * FLOAT_BYTES

    def authorized(request: Request) -> bool:
        return service.secret.admits(request.headers.get("authorization"))

    async def small_json(request: Request, model: type[BaseModel]) -> Any:
        body = await read_body(request, 4096)
        try:
            return model.model_validate_json(body)
        except ValueError as err:
            raise BodyError(400, f"bad body: {err}") from None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, object]:
        return {"ready": True, "variant": service.current}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info")
    async def info(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong deployment secret")
        return JSONResponse({"device": service.config.device, "variant": service.current,
                             "computed": service.computed, "parts": service.parts,
                             "computeSeconds": service.compute_s})

    @app.post("/v1/load")
    async def load(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong deployment secret")
        try:
            body = await small_json(request, _LoadBody)
            seconds = await asyncio.to_thread(service.load, body.variant)
        except BodyError as err:
            return _error(err.status, str(err))
        return JSONResponse({"variant": body.variant, "seconds": seconds})

    @app.post("/v1/profile")
    async def profile(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong deployment secret")
        try:
            body = await small_json(request, _ProfileBody)
            seconds = await asyncio.to_thread(service.profile, body.variant, body.images)
        except BodyError as err:
            return _error(err.status, str(err))
        return JSONResponse({"variant": body.variant, "images": body.images, "seconds": seconds})

    @app.post("/v1/run")
    async def run(request: Request, variant: Annotated[str, Query(min_length=1, max_length=63)]) -> Response:
        if not authorized(request):
            return _error(401, "missing or wrong deployment secret")
        try:
            request_id, images = decode_images(await read_body(request, body_limit), per_image,
                                               service.config.max_images)
            out, seconds = await asyncio.to_thread(service.run, variant, images)
        except BodyError as err:
            return _error(err.status, str(err))
        return Response(frame_body(request_id, out, service.config.device), media_type=CONTENT_TYPE,
                        headers={"x-edgepart-compute-s": f"{seconds:.9f}"})

    return app
