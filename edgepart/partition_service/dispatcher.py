"""The dispatcher: the gateway's role in accuracy-aware data partitioning.

Clients POST frames of images to `/v1/infer`. Each request goes to the
resource manager (`edgepart.policy.manager.step`, the same finite-state
machine the simulator drives), and the dispatcher carries out its actions
against the variant workers (`variant_worker.py`):

- `LoadVariant` -> POST /v1/load on the worker, then `VariantLoaded`;
- `Profile` -> POST /v1/profile, then `Profiled`;
- `Dispatch` -> the part's images to POST /v1/run with the part's variant,
  the answers copied into the request's output, then `PartDone`;
- `Reply` -> the client's answer (with the expected accuracy of its answers
  and which variant answered which images);
- `Selected`, `Stalled` -> recorded for `/v1/status` and the metrics.

A worker that cannot be reached (a part, a load or a heartbeat fails) leaves:
`NodeLeft` makes the manager dispatch its unfinished images again over the
workers that remain, so no request is lost; when it answers heartbeats again
it joins (`NodeJoined`) and is profiled. A worker computes each part with the
variant the part names, so a variant swap loses nothing in flight either.

Damping [R]: a part's measured throughput (images / compute seconds) is noisy
for parts of milliseconds on a busy CPU. Before it reaches the manager, which
re-plans when one part deviates more than 10% from its prediction, it is
smoothed per (worker, variant): θ ← (1 − d)·θ + d·measured, starting from the
prediction (`damping` d = 0.3), and a smoothed θ outside the 10% band is
reported as such only when it has stayed outside on the same side for
`patience` (3) parts in a row; until then it is reported held just inside the
band, so the estimate learns and nothing re-plans. A lasting change re-plans
after three parts; noise that flips sides never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from edgepart.errors import EdgepartError
from edgepart.partition_service.auth import Secret
from edgepart.partition_service.variant_worker import (
    FLOAT_BYTES,
    HEAD_ROOM,
    BodyError,
    decode_images,
    frame_body,
    read_body,
)
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame
from edgepart.policy.manager import (
    Action,
    Dispatch,
    Event,
    LoadVariant,
    ManagerSettings,
    ManagerState,
    NodeJoined,
    NodeLeft,
    PartDone,
    Phase,
    Profile,
    Profiled,
    Reply,
    RequestArrived,
    Selected,
    Stalled,
    VariantLoaded,
    step,
)

__all__ = ["Answer", "DispatcherConfig", "HttpWorkers", "VariantDispatcher", "WorkerUnavailableError", "Workers",
           "dispatcher_app"]

PROFILE_IMAGES = 256


class WorkerUnavailableError(EdgepartError, RuntimeError):
    """A worker did not answer (or answered an error): it is treated as gone."""


class Workers(Protocol):
    """How the dispatcher reaches its workers (HTTP in the data plane, in-memory fakes in tests)."""

    async def load(self, node: str, variant: str) -> None: ...

    async def run(self, node: str, variant: str, request: str, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The answers of `images` and the worker's compute seconds."""
        ...

    async def profile(self, node: str, variant: str, images: int) -> float: ...

    async def alive(self, node: str) -> bool: ...


@dataclass(frozen=True)
class Answer:
    request: str
    output: torch.Tensor
    accuracy: float  # expected: the answering variants' measured accuracies, weighted by their images
    parts: tuple[tuple[int, int, str, str], ...]  # (start, stop, node, variant), by start


@dataclass
class _Pending:
    request: str
    images: torch.Tensor
    future: asyncio.Future[Answer]
    output: torch.Tensor | None = None
    parts: list[tuple[int, int, str, str]] = field(default_factory=list)


class _Metrics:
    def __init__(self, deployment: str):
        self.registry = CollectorRegistry(auto_describe=True)
        r, d = self.registry, ("deployment",)
        self.phase = Gauge("edgepart_dispatch_phase", "1 for the resource manager's current phase",
                           (*d, "phase"), registry=r)
        self.replans = Counter("edgepart_dispatch_replans", "Configurations chosen, by trigger", (*d, "trigger"),
                               registry=r)
        self.images = Counter("edgepart_dispatch_images", "Images answered, per worker and variant",
                              (*d, "node", "variant"), registry=r)
        self.redispatched = Counter("edgepart_dispatch_redispatched_images",
                                    "Images dispatched again after their worker left", d, registry=r)
        self.requests = Counter("edgepart_dispatch_requests", "Requests answered", d, registry=r)
        self.predicted_throughput = Gauge("edgepart_dispatch_predicted_throughput",
                                          "Images/s the chosen configuration is predicted to sustain", d, registry=r)
        self.predicted_accuracy = Gauge("edgepart_dispatch_predicted_accuracy",
                                        "Expected accuracy of the chosen configuration", d, registry=r)
        self.measured_throughput = Gauge("edgepart_dispatch_measured_throughput",
                                         "Images/s answered over the last seconds", d, registry=r)
        self.target_met = Gauge("edgepart_dispatch_target_met", "1 when the chosen configuration meets the target",
                                d, registry=r)
        self.workers_alive = Gauge("edgepart_dispatch_workers_alive", "Workers taking parts", d, registry=r)
        self.deployment = deployment


def trigger_kind(reason: str) -> str:
    """A bounded label for a re-plan's reason."""
    for kind in ("left", "joined", "throughput", "profiled"):
        if kind in reason:
            return {"left": "node_left", "joined": "node_joined", "throughput": "deviation"}.get(kind, kind)
    return "request"


class VariantDispatcher:
    """Carries out the resource manager's actions against `workers`; one per process, on one event loop."""

    def __init__(self, settings: ManagerSettings, state: ManagerState, workers: Workers, *, deployment: str = "",
                 damping: float = 0.3, patience: int = 3, heartbeat_s: float = 0.5, request_timeout_s: float = 30.0,
                 rate_window_s: float = 5.0):
        if not 0 < damping <= 1:
            raise EdgepartError(f"damping must be in (0, 1], got {damping}")
        if patience < 1:
            raise EdgepartError(f"patience must be >= 1, got {patience}")
        self.settings = settings
        self.state = state
        self.workers = workers
        self.damping = damping
        self.heartbeat_s = heartbeat_s
        self.request_timeout_s = request_timeout_s
        self.rate_window_s = rate_window_s
        self.all_nodes = tuple(state.nodes)
        self.gone: set[str] = set()
        self.seen: set[str] = set()  # workers that answered at least once
        self.pending: dict[str, _Pending] = {}
        self.smoothed: dict[tuple[str, str], float] = {}
        self.streaks: dict[tuple[str, str], tuple[int, int]] = {}  # (side of the band, parts in a row there)
        self.patience = patience
        self.replans: list[str] = []
        self.stalled: str | None = None
        self.redispatched = 0
        self.computed: dict[str, tuple[int, int, float]] = {}  # node -> (parts, images, compute seconds) answered
        self.images_by: dict[tuple[str, str], int] = {}  # (node, variant) -> images answered
        self.answered: deque[tuple[float, int]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = 0
        self.metrics = _Metrics(deployment)
        self._heartbeat: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the manager

    def apply(self, event: Event) -> None:
        result = step(self.settings, self.state, event)
        self.state = result.state
        for action in result.actions:
            self._carry(action)
        for phase in Phase:
            self.metrics.phase.labels(self.metrics.deployment, str(phase)).set(int(phase is self.state.phase))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _carry(self, action: Action) -> None:
        if isinstance(action, Dispatch):
            self._spawn(self._run_part(action))
        elif isinstance(action, LoadVariant):
            self._spawn(self._load(action))
        elif isinstance(action, Profile):
            self._spawn(self._profile(action))
        elif isinstance(action, Reply):
            self._reply(action)
        elif isinstance(action, Selected):
            self.stalled = None
            self.replans.append(action.reason)
            m, d = self.metrics, self.metrics.deployment
            m.replans.labels(d, trigger_kind(action.reason)).inc()
            m.predicted_throughput.labels(d).set(action.selection.throughput)
            m.predicted_accuracy.labels(d).set(action.selection.accuracy)
            m.target_met.labels(d).set(int(action.selection.feasible))
        elif isinstance(action, Stalled):
            self.stalled = action.reason

    def _node_failed(self, node: str) -> None:
        if node in self.gone:
            return
        self.gone.add(node)
        self.smoothed = {k: v for k, v in self.smoothed.items() if k[0] != node}
        lost = sum(p.images for r in self.state.active for p in r.running if p.node == node)
        self.redispatched += lost
        self.metrics.redispatched.labels(self.metrics.deployment).inc(lost)
        self.apply(NodeLeft(node))
        self.metrics.workers_alive.labels(self.metrics.deployment).set(len(self.all_nodes) - len(self.gone))

    async def _load(self, action: LoadVariant) -> None:
        try:
            await self.workers.load(action.node, action.variant)
        except WorkerUnavailableError:
            self._node_failed(action.node)
            return
        self.apply(VariantLoaded(action.node, action.variant))

    async def _profile(self, action: Profile) -> None:
        try:
            seconds = await self.workers.profile(action.node, action.variant, PROFILE_IMAGES)
        except WorkerUnavailableError:
            self._node_failed(action.node)
            return
        self.apply(Profiled(action.node, action.variant, PROFILE_IMAGES, max(seconds, 1e-9)))

    async def _run_part(self, action: Dispatch) -> None:
        pending = self.pending.get(action.request)
        if pending is None:
            return
        progress = self.state.request(action.request)
        part = None if progress is None else next((p for p in progress.running if p.id == action.part), None)
        predicted = part.predicted if part is not None else None
        try:
            out, seconds = await self.workers.run(action.node, action.variant, action.request,
                                                  pending.images[action.start:action.stop])
        except WorkerUnavailableError:
            self._node_failed(action.node)
            return
        progress = self.state.request(action.request)
        if progress is None or not any(p.id == action.part for p in progress.running):
            return  # dispatched again meanwhile (its worker was taken for gone): the other copy answers
        if pending.output is None:
            pending.output = torch.empty((pending.images.shape[0], *out.shape[1:]), dtype=out.dtype)
        pending.output[action.start:action.stop] = out
        pending.parts.append((action.start, action.stop, action.node, action.variant))
        done, count, spent = self.computed.get(action.node, (0, 0, 0.0))
        self.computed[action.node] = (done + 1, count + action.stop - action.start, spent + seconds)
        key = (action.node, action.variant)
        self.images_by[key] = self.images_by.get(key, 0) + action.stop - action.start
        self.metrics.images.labels(self.metrics.deployment, action.node, action.variant).inc(action.stop - action.start)
        images = action.stop - action.start
        self.apply(PartDone(action.request, action.part, action.node, images,
                            self._damped(action.node, action.variant, images, seconds, predicted)))

    def _damped(self, node: str, variant: str, images: int, seconds: float, predicted: float | None) -> float:
        """The seconds to report for a part (module docstring): those of the smoothed throughput once it has
        deviated beyond the manager's band for `patience` parts in a row on the same side, else those of the
        smoothed throughput held just inside the band (the estimate still learns; no re-plan)."""
        measured = images / max(seconds, 1e-9)
        key = (node, variant)
        previous = self.smoothed.get(key, predicted if predicted is not None else measured)
        theta = (1 - self.damping) * previous + self.damping * measured
        self.smoothed[key] = theta
        if predicted is None:
            return images / theta
        band = self.settings.deviation
        side = 0 if abs(theta - predicted) <= band * predicted else (1 if theta > predicted else -1)
        streak = self.streaks.get(key, (0, 0))
        self.streaks[key] = (side, streak[1] + 1) if side and side == streak[0] else (side, 1 if side else 0)
        if side and self.streaks[key][1] >= self.patience:
            self.streaks[key] = (0, 0)
            return images / theta
        held = min(max(theta, predicted * (1 - 0.9 * band)), predicted * (1 + 0.9 * band))
        return images / held

    def _reply(self, action: Reply) -> None:
        pending = self.pending.pop(action.request, None)
        now = time.monotonic()
        self.answered.append((now, action.images))
        while self.answered and self.answered[0][0] < now - self.rate_window_s:
            self.answered.popleft()
        self.metrics.requests.labels(self.metrics.deployment).inc()
        self.metrics.measured_throughput.labels(self.metrics.deployment).set(self.measured_throughput())
        if pending is None or pending.future.done():
            return
        assert pending.output is not None
        pending.future.set_result(Answer(action.request, pending.output, action.accuracy,
                                         tuple(sorted(pending.parts))))

    def measured_throughput(self) -> float:
        if len(self.answered) < 2:
            return 0.0
        span = self.answered[-1][0] - self.answered[0][0]
        return sum(n for _, n in list(self.answered)[1:]) / span if span > 0 else 0.0

    # ------------------------------------------------------------ requests

    async def infer(self, images: torch.Tensor, request: str | None = None) -> Answer:
        self._counter += 1
        ident = f"{request or 'r'}-{self._counter}"
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[ident] = _Pending(ident, images, future)
        self.apply(RequestArrived(ident, int(images.shape[0])))
        # a request that times out stays with the manager until it is answered (its parts still count, and
        # the window frees only then); its answer is dropped
        return await asyncio.wait_for(asyncio.shield(future), self.request_timeout_s)

    # ------------------------------------------------------------ workers coming and going

    async def check_workers(self) -> None:
        """One heartbeat round: workers that stopped answering leave, workers answering again join."""
        results = await asyncio.gather(*(self.workers.alive(n) for n in self.all_nodes))
        for node, ok in zip(self.all_nodes, results, strict=True):
            if ok:
                self.seen.add(node)
            if not ok and node not in self.gone:
                self._node_failed(node)
            elif ok and node in self.gone:
                self.gone.discard(node)
                self.apply(NodeJoined(node))
        self.metrics.workers_alive.labels(self.metrics.deployment).set(len(self.all_nodes) - len(self.gone))

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check_workers()
            await asyncio.sleep(self.heartbeat_s)

    def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        tasks = [t for t in (self._heartbeat, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def ready(self) -> bool:
        return self.seen >= set(self.all_nodes) and not self.gone

    def describe(self) -> dict[str, Any]:
        """The resource manager's state and every worker's, for `/v1/status` and `edgepart status`."""
        manager = self.state.describe()
        estimates: dict[str, dict[str, float]] = {}
        for (node, variant), value in self.state.estimates.values.items():
            estimates.setdefault(node, {})[variant] = value
        manager.update(replans=len(self.replans), lastReplan=self.replans[-1] if self.replans else None,
                       estimates=estimates,
                       measuredThroughput=self.measured_throughput(), stalled=self.stalled,
                       redispatchedImages=self.redispatched)
        configuration = manager.get("configuration") or {}
        assert isinstance(configuration, dict)
        workers = [{"id": f"worker-{n}", "device": n, "stage": 0, "alive": n not in self.gone,
                    "ready": n in self.seen and n not in self.gone, "state": "gone" if n in self.gone else "ready",
                    "variant": configuration.get(n), "loaded": self.state.loaded.get(n),
                    "parts": self.computed.get(n, (0, 0, 0.0))[0], "images": self.computed.get(n, (0, 0, 0.0))[1],
                    "computeSeconds": self.computed.get(n, (0, 0, 0.0))[2],
                    "imagesByVariant": {v: c for (m, v), c in self.images_by.items() if m == n},
                    "detail": "unreachable; its images were dispatched again" if n in self.gone else ""}
                   for n in self.all_nodes]
        return {"ready": self.ready, "mode": "variants", "partitions": workers, "manager": manager}


# ---------------------------------------------------------------- HTTP workers


class HttpWorkers:
    """Workers over HTTP with the deployment's secret on every call."""

    def __init__(self, urls: Mapping[str, str], secret: Secret, timeout_s: float = 30.0):
        self.urls = dict(urls)
        self.secret = secret
        self.client = httpx.AsyncClient(trust_env=False, timeout=timeout_s,
                                        limits=httpx.Limits(max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _post(self, node: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": self.secret.header, **kwargs.pop("headers", {})}
        try:
            response = await self.client.post(self.urls[node] + path, headers=headers, **kwargs)
        except httpx.HTTPError as err:
            raise WorkerUnavailableError(f"worker {node}: {type(err).__name__}") from None
        if response.status_code != 200:
            raise WorkerUnavailableError(f"worker {node}: {path} answered {response.status_code} "
                                    f"{response.text[:200]}")
        return response

    async def load(self, node: str, variant: str) -> None:
        await self._post(node, "/v1/load", json={"variant": variant})

    async def run(self, node: str, variant: str, request: str, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        body = frame_body(request, images, "dispatcher")
        response = await self._post(node, "/v1/run", params={"variant": variant}, content=body,
                                    headers={"content-type": CONTENT_TYPE})
        try:
            frame = decode_frame(response.content)
            seconds = float(response.headers["x-edgepart-compute-s"])
        except (EdgepartError, KeyError, ValueError) as err:
            raise WorkerUnavailableError(f"worker {node}: a malformed answer ({err})") from None
        if frame.tensor.shape[0] != images.shape[0]:
            raise WorkerUnavailableError(f"worker {node}: {frame.tensor.shape[0]} answers for {images.shape[0]} images")
        return frame.tensor, seconds

    async def profile(self, node: str, variant: str, images: int) -> float:
        response = await self._post(node, "/v1/profile", json={"variant": variant, "images": images})
        return float(response.json()["seconds"])

    async def alive(self, node: str) -> bool:
        try:
            response = await self.client.get(self.urls[node] + "/healthz", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


# ---------------------------------------------------------------- the process


class DispatcherConfig(BaseModel):
    """Everything the dispatcher process needs (EDGEPART_CONFIG)."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(default="dispatcher", pattern="^dispatcher$")
    deployment: str
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    spec: dict[str, Any] = Field(description="The DNNDeployment's spec (camelCase, as applied).")
    base: str = Field(description="Directory relative paths of the spec resolve against.")
    workers: dict[str, str] = Field(description="Device name -> worker URL.")
    theta: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Device -> variant -> images/s to start from (the operator's prediction, "
                                          "made with its device profiles); default: the cost model's here.")
    secret_file: str
    request_timeout_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=0.5, gt=0)
    damping: float = Field(default=0.3, gt=0, le=1, description="Weight of a new measurement in the smoothed θ.")
    patience: int = Field(default=3, ge=1, le=100, description="Parts in a row outside the band before a re-plan.")
    window: int = Field(default=2, ge=1, le=64, description="Requests the manager keeps in flight.")
    max_images: int = Field(default=65536, ge=1, le=1 << 20, description="Most images in one request.")


def dispatcher_app(dispatcher: VariantDispatcher, *, input_shape: tuple[int, ...], max_images: int,
                   model: Mapping[str, Any], on_close: Any = None) -> FastAPI:
    """The client port: /v1/infer, /v1/model, /v1/status, /healthz, /readyz, /metrics."""
    limit = HEAD_ROOM + max_images * math.prod(input_shape) * FLOAT_BYTES

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            if on_close is not None:
                await on_close()

    app = FastAPI(title="edgepart dispatcher", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        return JSONResponse({"ready": dispatcher.ready}, status_code=200 if dispatcher.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(dispatcher.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def describe_model() -> dict[str, Any]:
        return dict(model)

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return dispatcher.describe()

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        try:
            request_id, images = decode_images(await read_body(request, limit), input_shape, max_images)
        except BodyError as err:
            return JSONResponse({"error": "bad_request", "detail": str(err)}, status_code=err.status)
        try:
            answer = await dispatcher.infer(images, request_id)
        except TimeoutError:
            return JSONResponse({"error": "timeout", "detail": f"not answered within {dispatcher.request_timeout_s} s"},
                                status_code=504)
        parts = [list(p) for p in answer.parts]
        return Response(frame_body(request_id, answer.output, "dispatcher"), media_type=CONTENT_TYPE, headers={
            "x-request-id": request_id, "x-edgepart-accuracy": f"{answer.accuracy:.6f}",
            "x-edgepart-parts": json.dumps(parts, separators=(",", ":")),
            "x-edgepart-latency-ms": f"{(time.perf_counter() - started) * 1e3:.3f}"})

    return app
