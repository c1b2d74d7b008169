"""A ring worker: one process per device serving several data sources (seed 001, SOLVERS.md §7).

Queues: at a source a local queue q_l (whole model here); at every worker a queue q^j per source j (its
AR-MDI share of j's images). What runs next is the policy package's decision (`Policy.route` at arrival,
`Policy.pick` when the compute thread is idle), the same code the simulator calls; the view it decides on
holds this worker's queue lengths exactly and the next holder's as last reported: piggy-backed on the
answer to every frame sent to it, and on a heartbeat every `heartbeat_s`. How old each report was when a
decision used it is measured (`/v1/ring/state`, and a histogram).

Paths (every one but /healthz, /readyz, /metrics needs the deployment's secret: 401 from the head):

- ``POST /v1/ring/images`` at a source: one image (tensor frame, the model's input shape); the answer is
  the result frame once it came home (``x-edgepart-local: 1`` when run whole here). A full queue: 503.
- ``POST /v1/ring/activations``: worker to worker, the tensor crossing the receiver's first layer for a
  source (``request_id`` = ``<source>:<n>``, ``stage`` = that layer). A full queue: 503, and the sender
  keeps the activation and resends it (nothing accepted is lost). The answer carries the receiver's queue
  lengths.
- ``POST /v1/ring/results``: the last holder sends the output home to its source.
- ``POST /v1/ring/heartbeat``: a worker's queue lengths.
- ``GET /v1/ring/state``: counts per source (arrived, rejected, done, in flight), queues, staleness, γ.

Every frame is checked from its header (sender, source, layer, shape, dtype: hence its size) and against
the queue's bound before its payload is allocated. [R] An activation goes straight to the next worker that
holds layers (a worker with an empty share is skipped, not used as a relay). The allocation is fixed for a
run: γ is measured (EWMA of the shares' compute) and exported, not fed back into the ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from edgepart.executor import SliceRunner, kernels_in_use, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import load_model, trace_ref
from edgepart.partition_service.access import BodyDeadline, InternalOnly
from edgepart.partition_service.auth import Secret, load_secret
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.errors import (
    NotReadyError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
    UnexpectedPieceError,
    error_from_response,
    install_error_handlers,
)
from edgepart.partition_service.lane import Guard
from edgepart.partition_service.lifecycle import service_lifespan
from edgepart.partition_service.metrics import CONTENT_TYPE_LATEST
from edgepart.partition_service.ring_config import RingWorkerConfig
from edgepart.partition_service.transport import (
    internal_headers,
    make_client,
    make_hop_client,
    peer_error,
    received_frame,
)
from edgepart.partition_service.wire import (
    CONTENT_TYPE,
    FrameHeader,
    encode_frame,
    frame_bytes,
    frame_size,
    make_header,
)
from edgepart.policy.allocation import RingAllocation
from edgepart.policy.gamma import GammaEstimator
from edgepart.policy.scheduling import (
    ArrivalView,
    Decision,
    DecisionSettings,
    Report,
    SourceQueue,
    WorkerView,
    make_policy,
)

__all__ = ["IMAGES_PATH", "HttpLink", "QueueReport", "RingLink", "RingService", "load_ring_runners", "ring_app",
           "serve_main"]

log = logging.getLogger("edgepart.ring")

IMAGES_PATH = "/v1/ring/images"
ACTIVATIONS_PATH = "/v1/ring/activations"
RESULTS_PATH = "/v1/ring/results"
HEARTBEAT_PATH = "/v1/ring/heartbeat"
STATE_PATH = "/v1/ring/state"
LOCAL = "local"
Runner = Callable[[torch.Tensor], torch.Tensor]
# torch.fx patches Module.__call__ while it traces: one load (trace, then warm-up) at a time in a process
_LOADING = threading.Lock()


# ---------------------------------------------------------------------------------------------- slices


@dataclass(frozen=True)
class Runners:
    """What a worker can compute: its share of each source's images, and the whole model at a source."""

    graph: LayerGraph
    allocations: Mapping[str, RingAllocation]  # every source's, computed from the config's γ
    shares: Mapping[str, Runner]  # by source, for the sources whose share here is not empty
    whole: Runner | None


RunnerLoader = Callable[[RingWorkerConfig], Runners]


def load_ring_runners(config: RingWorkerConfig) -> Runners:
    """The model with only the layers this worker may run kept in memory (its shares, and all of it at a
    source that may run images locally)."""
    ref = config.model.ref()
    model = load_model(ref)
    gm, graph = trace_ref(ref, model)
    allocations = config.allocations(graph)
    ranges = [(a.share_of(config.worker).start, a.share_of(config.worker).stop) for a in allocations.values()
              if not a.share_of(config.worker).empty]
    whole = config.is_source and config.scheduler != "ar-mdi"
    if whole:
        ranges.append((0, len(graph)))
    keep = {name for start, stop in ranges for name in graph.param_names(start, stop)}
    release = {k: torch.empty_like(v, device="meta") for k, v in gm.state_dict(keep_vars=True).items()
               if k not in keep}
    gm.load_state_dict(release, strict=False, assign=True)

    def runner(start: int, stop: int) -> Runner:
        return SliceRunner(gm, graph, start, stop, Region.full(graph.shape_at(stop)))

    shares = {s: runner(a.share_of(config.worker).start, a.share_of(config.worker).stop)
              for s, a in allocations.items() if not a.share_of(config.worker).empty}
    return Runners(graph, allocations, shares, runner(0, len(graph)) if whole else None)


# ---------------------------------------------------------------------------------------------- links


class QueueReport(BaseModel):
    """A worker's queue lengths (images waiting or in service, per source), as it reports them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    worker: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    queues: dict[str, int] = Field(max_length=256)


class RingLink(Protocol):
    """How a worker reaches the others (HTTP in processes; in-process wiring in tests)."""

    async def send(self, peer: str, path: str, header: FrameHeader, tensor: torch.Tensor) -> QueueReport: ...

    async def heartbeat(self, peer: str, report: QueueReport) -> None: ...

    async def aclose(self) -> None: ...


class HttpLink:
    """Frames and heartbeats over HTTP, each carrying the deployment's secret; one FIFO for frames (a NIC)."""

    def __init__(self, config: RingWorkerConfig, secret: Secret, client: httpx.AsyncClient | None = None):
        self.config = config
        self.client = client or make_client(config.request_timeout_s, secret=secret)
        self.headers = internal_headers(secret)
        self._own = client is None
        # frames go through the keep-alive hop client (much cheaper per request than httpx on a small CPU
        # share); an injected client (tests, in-process wiring) carries them too
        self.hop = make_hop_client(config.request_timeout_s, secret=secret) if client is None else None
        self._fifo = asyncio.Lock()

    async def send(self, peer: str, path: str, header: FrameHeader, tensor: torch.Tensor) -> QueueReport:
        target = self.config.peer(peer)
        parts = encode_frame(header, tensor)
        headers = {**self.headers, "content-type": CONTENT_TYPE, "content-length": str(frame_size(parts)),
                   "x-request-id": header.request_id}
        what = f"sending {header.request_id}"
        async with self._fifo:
            if target.delay_s:
                await asyncio.sleep(target.delay_s)
            if self.hop is not None and self.hop.supports(target.url):
                answer = await self.hop.post(target.url + path, parts, headers, peer=peer, peer_url=target.url,
                                             what=what)
                status, content = answer.status, answer.content
            else:
                try:
                    response = await self.client.post(target.url + path, content=b"".join(parts), headers=headers)
                except httpx.HTTPError as err:
                    raise peer_error(err, peer, target.url, what) from err
                status, content = response.status_code, response.content
        if status >= 300:
            raise error_from_response(status, content, peer)
        return QueueReport.model_validate_json(content)

    async def heartbeat(self, peer: str, report: QueueReport) -> None:
        target = self.config.peer(peer)
        try:
            response = await self.client.post(target.url + HEARTBEAT_PATH, content=report.model_dump_json(),
                                              headers={**self.headers, "content-type": "application/json"},
                                              timeout=max(self.config.heartbeat_s, 1.0))
        except httpx.HTTPError as err:
            raise peer_error(err, peer, target.url, "heartbeat") from err
        if response.status_code >= 300:
            raise error_from_response(response.status_code, response.content, peer)

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()
        if self.hop is not None:
            await self.hop.aclose()


# ---------------------------------------------------------------------------------------------- metrics


class RingMetrics:
    """The worker's Prometheus series (own registry), queue lengths labelled by source."""

    def __init__(self, deployment: str, worker: str):
        r = self.registry = CollectorRegistry(auto_describe=True)
        labels = {"deployment": deployment, "worker": worker}
        names = ("deployment", "worker", "source")
        self._queue = Gauge("edgepart_ring_queue_length", "Images in a queue (waiting or in service); source "
                            "'local' is a source's local queue.", names, registry=r)
        self._done = Counter("edgepart_ring_tasks", "Tasks computed, by source ('local': whole images).",
                             names, registry=r)
        self._rejected = Counter("edgepart_ring_rejected", "Images and activations refused with 503 (queue "
                                 "full), by source.", names, registry=r)
        self._gamma = Gauge("edgepart_ring_gamma_seconds_per_parameter", "Measured per-parameter compute "
                            "delay (EWMA), by source share.", names, registry=r)
        self.compute = Histogram("edgepart_ring_compute_seconds", "Compute time of one task.",
                                 ("deployment", "worker"), registry=r).labels(**labels)
        self.report_age = Histogram("edgepart_ring_report_age_seconds", "Age of the downstream queue report a "
                                    "decision used.", ("deployment", "worker"),
                                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
                                    registry=r).labels(**labels)
        self._labels = labels

    def queue(self, source: str, length: int) -> None:
        self._queue.labels(**self._labels, source=source).set(length)

    def task(self, source: str) -> None:
        self._done.labels(**self._labels, source=source).inc()

    def rejected(self, source: str) -> None:
        self._rejected.labels(**self._labels, source=source).inc()

    def gamma(self, source: str, value: float) -> None:
        self._gamma.labels(**self._labels, source=source).set(value)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


# ---------------------------------------------------------------------------------------------- the worker


@dataclass(eq=False)
class _Item:
    source: str
    number: int
    tensor: torch.Tensor
    enqueued: float
    local: bool = False


@dataclass
class _SourceCounts:
    arrived: int = 0
    rejected: int = 0
    done: int = 0
    done_locally: int = 0


@dataclass
class _Known:
    queues: Mapping[str, int]
    at: float  # monotonic time of receipt


State = Literal["created", "loading", "ready", "failed", "stopped"]


@dataclass
class _Outbox:
    items: deque[tuple[_Item, torch.Tensor, str, str]] = field(default_factory=deque)  # item, out, peer, path
    task: asyncio.Task[None] | None = None
    blocked: bool = False
    room: asyncio.Event = field(default_factory=asyncio.Event)  # the peer reported room in its queue


class RingService:
    """One ring worker's core; `ring_app` wraps it in HTTP."""

    def __init__(self, config: RingWorkerConfig, *, loader: RunnerLoader = load_ring_runners,
                 link: RingLink | None = None, secret: Secret | None = None):
        self.config = config
        self.name = config.worker
        self.secret = secret or load_secret(config.secret_file)
        self.metrics = RingMetrics(config.deployment, config.worker)
        self.budget = PayloadBudget(config.connection.max_payload_bytes)
        self.policy = make_policy(config.scheduler, DecisionSettings(strict=config.strict,
                                                                     max_report_age_s=config.max_report_age_s))
        self.state: State = "created"
        self.failure: str | None = None
        self.link: RingLink = link or HttpLink(config, self.secret)
        self._loader = loader
        self.allocations: dict[str, RingAllocation] = {}
        self.runners: Runners | None = None
        self.local: deque[_Item] = deque()
        self.queues: dict[str, deque[_Item]] = {s: deque() for s in config.sources}
        self.reserved: dict[str, int] = dict.fromkeys((LOCAL, *config.sources), 0)
        self.outboxes: dict[str, _Outbox] = {s: _Outbox() for s in config.sources}
        self.in_service: _Item | None = None
        self.known: dict[str, _Known] = {}
        self.counts = {s: _SourceCounts() for s in config.sources}
        self.tasks_done: dict[str, int] = dict.fromkeys((LOCAL, *config.sources), 0)
        self.report_ages: deque[float] = deque(maxlen=4096)
        self.gamma: dict[str, GammaEstimator] = {}
        self._waiting: dict[int, asyncio.Future[tuple[torch.Tensor, bool]]] = {}
        self._numbers = itertools.count()
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        torch.set_num_threads(self.config.threads)
        use_exact_kernels(self.config.exact_kernels)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ring-{self.name}")
        self.state = "loading"
        self._tasks.append(asyncio.create_task(self._load(), name=f"load-{self.name}"))

    async def aclose(self) -> None:
        self.state = "stopped"
        tasks = [*self._tasks, *(o.task for o in self.outboxes.values() if o.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NotReadyError(f"ring worker {self.name} is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        await self.link.aclose()

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.runners = await loop.run_in_executor(self._executor, self._load_and_warm)
        except Exception as err:
            self.state = "failed"
            self.failure = f"{type(err).__name__}: {err}"
            log.error("ring worker %s: loading failed: %s", self.name, self.failure)
            return
        total = max(sum(layer.params for layer in self.runners.graph), 1)
        self.gamma = {s: GammaEstimator(self.config.gamma[self.name] if total else 1.0) for s in self.config.sources}
        self.state = "ready"
        serving = asyncio.create_task(self._serve(), name=f"serve-{self.name}")
        serving.add_done_callback(self._stopped_serving)
        self._tasks.append(serving)
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"heartbeat-{self.name}"))
        log.info("ring worker %s ready: %s", self.name, self.describe())

    def _stopped_serving(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.state = "failed"
        self.failure = f"the compute loop stopped: {type(task.exception()).__name__}: {task.exception()}"
        log.error("ring worker %s: %s", self.name, self.failure)

    def _load_and_warm(self) -> Runners:
        with _LOADING:
            return self._load_and_warm_now()

    def _load_and_warm_now(self) -> Runners:
        runners = self._loader(self.config)
        self.allocations = dict(runners.allocations)
        for source, run in runners.shares.items():
            share = self.allocations[source].share_of(self.name)
            run(torch.zeros((self.config.model.input_shape[0], *runners.graph.shape_at(share.start))))
        if runners.whole is not None:
            runners.whole(torch.zeros(self.config.model.input_shape))
        return runners

    def describe(self) -> dict[str, list[int]]:
        """This worker's layer range [start, stop) for each source."""
        return {s: [a.share_of(self.name).start, a.share_of(self.name).stop] for s, a in self.allocations.items()}

    # ------------------------------------------------------------ queues

    def in_system(self, source: str) -> int:
        """Images in the local queue (source LOCAL) or the queue for `source`, the one in service included."""
        queue = self.local if source == LOCAL else self.queues[source]
        item = self.in_service
        running = item is not None and (item.local if source == LOCAL else not item.local and item.source == source)
        return len(queue) + running

    def lengths(self) -> dict[str, int]:
        return {s: self.in_system(s) for s in self.config.sources}

    def report(self) -> QueueReport:
        return QueueReport(worker=self.name, queues=self.lengths())

    def _room(self, source: str) -> bool:
        queue = self.local if source == LOCAL else self.queues[source]
        return len(queue) + self.reserved[source] < self.config.queue_bound

    def _gauges(self) -> None:
        if self.config.is_source:
            self.metrics.queue(LOCAL, self.in_system(LOCAL))
        for s in self.config.sources:
            self.metrics.queue(s, self.in_system(s))

    def held(self) -> dict[str, int]:
        """Images of each source held here: queued, in service, or computed and waiting to be sent."""
        count = {s: len(self.queues[s]) + len(self.outboxes[s].items) for s in self.config.sources}
        for item in self.local:
            count[item.source] += 1
        if self.in_service is not None:
            count[self.in_service.source] += 1
        return count

    def _require_ready(self) -> None:
        if self.state != "ready":
            reason = f": {self.failure}" if self.failure else ""
            raise NotReadyError(f"ring worker {self.name} is not ready ({self.state}{reason})", peer=self.name)

    # ------------------------------------------------------------ arrivals at a source

    def admit_image(self, header: FrameHeader) -> str:
        """Check an image's header and reserve a slot in the queue it goes to (LOCAL or this source's):
        which queue, or an error (503 when full) before anything is allocated."""
        self._require_ready()
        if not self.config.is_source:
            raise UnexpectedPieceError(f"{self.name} is not a source of this ring (sources: "
                                       f"{list(self.config.sources)})")
        shape = tuple(self.config.model.input_shape)
        if tuple(header.shape) != shape or header.dtype != "float32":
            raise UnexpectedPieceError(f"image: expected float32 of shape {list(shape)}, got {header.dtype} "
                                       f"{list(header.shape)}")
        me = self.name
        route = self.policy.route(ArrivalView(self.in_system(LOCAL), Report(self.in_system(me))))
        queue = LOCAL if route == "local" else me
        self.counts[me].arrived += 1
        if not self._room(queue):
            self.counts[me].rejected += 1
            self.metrics.rejected(me)
            raise OverloadedError(f"ring worker {me}: its {'local' if queue == LOCAL else 'distributed'} queue "
                                  f"holds {self.config.queue_bound} images", request_id=header.request_id)
        self.reserved[queue] += 1
        return queue

    async def infer(self, queue: str, tensor: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Put an admitted image in `queue` and wait until its result is home: (output, run locally)."""
        me = self.name
        self.reserved[queue] -= 1
        item = _Item(me, next(self._numbers), tensor, time.monotonic(), local=queue == LOCAL)
        future: asyncio.Future[tuple[torch.Tensor, bool]] = asyncio.get_running_loop().create_future()
        self._waiting[item.number] = future
        (self.local if item.local else self.queues[me]).append(item)
        self._changed()
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise RequestTimeoutError(f"ring worker {me}: image {me}:{item.number} not done within "
                                      f"{self.config.request_timeout_s:g} s") from None

    def cancel_reservation(self, queue: str) -> None:
        """An admitted image whose body never arrived whole: free its slot, count it as refused."""
        self.reserved[queue] -= 1
        self.counts[self.name].rejected += 1

    # ------------------------------------------------------------ frames from other workers

    def _parse_id(self, header: FrameHeader) -> tuple[str, int]:
        source, sep, number = header.request_id.rpartition(":")
        if not sep or source not in self.config.sources or not number.isdigit():
            raise UnexpectedPieceError(f"request_id: expected <source>:<n> with a source of {list(self.config.sources)}, "
                                       f"got {header.request_id!r}", request_id=header.request_id)
        if header.sender not in self.config.names:
            raise UnexpectedPieceError(f"sender: {header.sender!r} is not on the ring", request_id=header.request_id)
        return source, int(number)

    def _check_tensor(self, header: FrameHeader, layer: int) -> None:
        assert self.runners is not None
        shape = (self.config.model.input_shape[0], *self.runners.graph.shape_at(layer))
        if header.stage != layer or tuple(header.shape) != shape or header.dtype != "float32":
            raise UnexpectedPieceError(f"{self.name} expects float32 {list(shape)} crossing layer {layer}, got "
                                       f"{header.dtype} {list(header.shape)} at layer {header.stage}",
                                       request_id=header.request_id)

    def admit_activation(self, header: FrameHeader) -> str:
        self._require_ready()
        source, _ = self._parse_id(header)
        share = self.allocations[source].share_of(self.name)
        if share.empty:
            raise UnexpectedPieceError(f"{self.name} runs no layers of {source}'s images",
                                       request_id=header.request_id)
        self._check_tensor(header, share.start)
        if not self._room(source):
            self.metrics.rejected(source)
            raise OverloadedError(f"ring worker {self.name}: its queue for {source} holds "
                                  f"{self.config.queue_bound} images", request_id=header.request_id)
        self.reserved[source] += 1
        return source

    def take_activation(self, header: FrameHeader, tensor: torch.Tensor) -> QueueReport:
        source, number = self._parse_id(header)
        self.reserved[source] -= 1
        self.queues[source].append(_Item(source, number, tensor, time.monotonic()))
        self._changed()
        return self.report()

    def release_activation(self, source: str) -> None:
        self.reserved[source] -= 1

    def admit_result(self, header: FrameHeader) -> None:
        self._require_ready()
        source, number = self._parse_id(header)
        if source != self.name or number not in self._waiting:
            raise UnexpectedPieceError(f"{self.name} awaits no result {header.request_id}",
                                       request_id=header.request_id)
        assert self.runners is not None
        self._check_tensor(header, len(self.runners.graph))

    def take_result(self, header: FrameHeader, tensor: torch.Tensor) -> QueueReport:
        _, number = self._parse_id(header)
        self._complete(number, tensor, local=False)
        return self.report()

    def take_report(self, report: QueueReport) -> None:
        if report.worker in self.config.names and report.worker != self.name:
            self.known[report.worker] = _Known(dict(report.queues), time.monotonic())
            for source, outbox in self.outboxes.items():
                if outbox.blocked and report.queues.get(source, self.config.queue_bound) < self.config.queue_bound:
                    outbox.room.set()
            self._changed()

    def _complete(self, number: int, tensor: torch.Tensor, local: bool) -> None:
        future = self._waiting.pop(number, None)
        if future is None:
            raise AssertionError(f"image {self.name}:{number} answered twice")
        counts = self.counts[self.name]
        counts.done += 1
        counts.done_locally += local
        if not future.done():
            future.set_result((tensor, local))

    def _changed(self) -> None:
        self._gauges()
        self._wake.set()

    # ------------------------------------------------------------ deciding and computing

    def view(self) -> WorkerView:
        now = time.monotonic()
        queues = []
        for s in self.config.sources:
            queue = self.queues[s]
            downstream = None
            if queue:
                after = self.allocations[s].next_holder(self.name)
                if after is not None:
                    known = self.known.get(after)
                    downstream = Report(known.queues.get(s, 0), now - known.at) if known else Report(0, now)
            queues.append(SourceQueue(s, self.in_system(s), now - queue[0].enqueued if queue else 0.0, downstream,
                                      self.outboxes[s].blocked))
        local = self.in_system(LOCAL) if self.config.is_source else None
        head = now - self.local[0].enqueued if self.local else 0.0
        return WorkerView(local, tuple(queues), head)

    def pick(self) -> tuple[Decision, _Item] | None:
        """The policy's decision over this worker's queues, and the item it takes (None: nothing to do)."""
        if not self.local and not any(self.queues.values()):
            return None
        view = self.view()
        decision = self.policy.pick(view)
        if decision is None:
            return None
        if decision.local:
            if not self.local:  # the only local image is the one in service
                return None
            return decision, self.local.popleft()
        assert decision.source is not None
        queue = self.queues[decision.source]
        if not queue:
            return None
        chosen = next(q for q in view.queues if q.source == decision.source)
        if chosen.downstream is not None:
            self.report_ages.append(chosen.downstream.age_s)
            self.metrics.report_age.observe(chosen.downstream.age_s)
        return decision, queue.popleft()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.runners is not None
        while True:
            self._wake.clear()
            picked = self.pick()
            if picked is None:
                await self._wake.wait()
                continue
            _, item = picked
            run = self.runners.whole if item.local else self.runners.shares.get(item.source, _forward_only)
            assert run is not None
            self.in_service = item
            self._gauges()
            try:
                out, seconds = await loop.run_in_executor(self._executor, _timed, run, item.tensor)
            except Exception as err:  # a compute error is a bug: the image's client gets a 500
                self.in_service = None
                log.error("ring worker %s: computing %s:%d failed: %s", self.name, item.source, item.number, err)
                if item.source == self.name and item.number in self._waiting:
                    self._waiting.pop(item.number).set_exception(err)
                continue
            self.in_service = None
            self.metrics.compute.observe(seconds)
            key = LOCAL if item.local else item.source
            self.tasks_done[key] += 1
            self.metrics.task(key)
            if item.local:
                self._complete(item.number, out, local=True)
            else:
                share = self.allocations[item.source].share_of(self.name)
                self.gamma[item.source] = self.gamma[item.source].observed(seconds, share.params)
                self.metrics.gamma(item.source, self.gamma[item.source].value)
                self._forward(item, out)
            self._changed()

    def _forward(self, item: _Item, out: torch.Tensor) -> None:
        allocation = self.allocations[item.source]
        after = allocation.next_holder(self.name)
        if after is None:
            if item.source == self.name:
                self._complete(item.number, out, local=False)
                return
            self._queue_send(item, out, item.source, RESULTS_PATH)
            return
        self._queue_send(item, out, after, ACTIVATIONS_PATH)

    def _queue_send(self, item: _Item, out: torch.Tensor, peer: str, path: str) -> None:
        outbox = self.outboxes[item.source]
        outbox.items.append((item, out, peer, path))
        if outbox.task is None or outbox.task.done():
            outbox.task = asyncio.create_task(self._flush(item.source), name=f"send-{self.name}-{item.source}")

    async def _flush(self, source: str) -> None:
        """Send this source's computed items in order; a refused one (queue full, peer away) is kept and
        resent, and until it goes this worker serves that source no more (`blocked`)."""
        outbox = self.outboxes[source]
        wait = self.config.retry_s
        while outbox.items:
            item, out, peer, path = outbox.items[0]
            layer = self.allocations[source].share_of(self.name).stop
            header = make_header(f"{item.source}:{item.number}", out, Region.full(out.shape[1:]), layer, self.name)
            try:
                report = await self.link.send(peer, path, header, out)
            except ServiceError as err:
                if not outbox.blocked:
                    log.info("ring worker %s: %s refused %s (%s); keeping it", self.name, peer, header.request_id,
                             err.reason)
                    wait = self.config.retry_s
                outbox.blocked = True
                # resend when the peer reports room (a heartbeat), or after a wait that doubles up to the
                # heartbeat's period: a full queue is not polled at a rate that eats a small CPU share
                outbox.room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await outbox.room.wait()
                wait = min(2 * wait, max(self.config.heartbeat_s, self.config.retry_s))
                continue
            outbox.items.popleft()
            outbox.blocked = False
            self.take_report(report)
            self._changed()

    async def _heartbeats(self) -> None:
        others = [n for n in self.config.names if n != self.name]
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            if self.config.scheduler != "ms-mdi":
                continue
            report = self.report()
            results = await asyncio.gather(*(self.link.heartbeat(p, report) for p in others), return_exceptions=True)
            for peer, result in zip(others, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    log.debug("ring worker %s: heartbeat to %s failed: %s", self.name, peer, result)

    # ------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        ages = sorted(self.report_ages)
        return {
            "worker": self.name, "state": self.state, "failure": self.failure, "scheduler": self.config.scheduler,
            "kernels": kernels_in_use(),
            "source": self.config.is_source, "layers": self.describe(),
            "queues": {**({LOCAL: self.in_system(LOCAL)} if self.config.is_source else {}), **self.lengths()},
            "held": self.held(),
            "sources": {s: {"arrived": c.arrived, "rejected": c.rejected, "done": c.done,
                            "done_locally": c.done_locally, "in_flight": c.arrived - c.rejected - c.done}
                        for s, c in self.counts.items() if s == self.name},
            "tasks": self.tasks_done,
            "staleness": {"reports": len(ages), "mean_age_s": statistics.fmean(ages) if ages else 0.0,
                          "max_age_s": ages[-1] if ages else 0.0},
            "gamma": {s: g.value for s, g in self.gamma.items()},
            "input_shape": list(self.config.model.input_shape),
        }


def _forward_only(tensor: torch.Tensor) -> torch.Tensor:
    """A source whose own share of its images is empty: the image goes on as it came."""
    return tensor


def _timed(run: Runner, tensor: torch.Tensor) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    with torch.no_grad():
        out = run(tensor)
    return out, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- HTTP


def _frame_response(header: FrameHeader, tensor: torch.Tensor, local: bool) -> Response:
    return Response(frame_bytes(header, tensor), media_type=CONTENT_TYPE,
                    headers={"x-edgepart-local": "1" if local else "0"})


async def _with_slot(admit: Callable[[FrameHeader], str], request: Request, service: RingService,
                     use: Callable[[str, FrameHeader, torch.Tensor], Awaitable[Response]],
                     release: Callable[[str], None]) -> Response:
    """Read a frame whose header `admit` checked and reserved a slot for; release the slot if it fails."""
    slot: list[str] = []

    def admitted(header: FrameHeader) -> None:
        slot.append(admit(header))

    try:
        async with received_frame(request, service.config.limits, admit=admitted, budget=service.budget) as frame:
            tensor = frame.tensor.clone()  # the payload buffer goes back with the frame's budget
            header = frame.header
    except BaseException:
        if slot:
            release(slot[0])
        raise
    return await use(slot[0], header, tensor)


def ring_app(service: RingService) -> FastAPI:
    """The HTTP face of one ring worker (one uvicorn worker)."""
    app = FastAPI(title=f"edgepart ring worker {service.name}", lifespan=service_lifespan(service),
                  docs_url=None, redoc_url=None, openapi_url=None)
    connection = service.config.connection
    install_error_handlers(app)
    app.add_middleware(BodyDeadline, limits=connection)
    app.add_middleware(InternalOnly, secret=service.secret)
    app.state.guard = Guard(connection, None, secret=service.secret)

    @app.post(IMAGES_PATH, summary="One image from this source's device; answered with its result.")
    async def images(request: Request) -> Response:
        async def use(queue: str, header: FrameHeader, tensor: torch.Tensor) -> Response:
            out, local = await service.infer(queue, tensor)
            return _frame_response(make_header(header.request_id, out, Region.full(out.shape[1:]),
                                               len(service.runners.graph) if service.runners else 0,
                                               service.name), out, local)

        return await _with_slot(service.admit_image, request, service, use, service.cancel_reservation)

    @app.post(ACTIVATIONS_PATH, summary="An activation for this worker's share of a source's image.")
    async def activations(request: Request) -> JSONResponse:
        async def use(source: str, header: FrameHeader, tensor: torch.Tensor) -> Response:
            return JSONResponse(service.take_activation(header, tensor).model_dump())

        return await _with_slot(service.admit_activation, request, service, use,  # type: ignore[return-value]
                                service.release_activation)

    @app.post(RESULTS_PATH, summary="The output of one of this source's images.")
    async def results(request: Request) -> JSONResponse:
        def admit(header: FrameHeader) -> str:
            service.admit_result(header)
            return ""

        async def use(_: str, header: FrameHeader, tensor: torch.Tensor) -> Response:
            return JSONResponse(service.take_result(header, tensor).model_dump())

        return await _with_slot(admit, request, service, use, lambda _: None)  # type: ignore[return-value]

    @app.post(HEARTBEAT_PATH, status_code=204, summary="Another worker's queue lengths.")
    async def heartbeat(report: QueueReport) -> Response:
        service.take_report(report)
        return Response(status_code=204)

    @app.get(STATE_PATH, summary="Counts, queues, staleness and γ of this worker.")
    async def state() -> dict[str, Any]:
        return service.info()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        code = 500 if service.state == "failed" else 200
        return JSONResponse({"state": service.state, "failure": service.failure}, status_code=code)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"state": service.state, "failure": service.failure},
                            status_code=200 if service.state == "ready" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_main() -> int:
    """`python -m edgepart.partition_service ring` (config in EDGEPART_CONFIG): serve until a signal."""
    import socket
    import sys

    from edgepart.errors import EdgepartError
    from edgepart.partition_service.config import ServiceSettings
    from edgepart.partition_service.ring_config import load_ring_config
    from edgepart.partition_service.server import (
        Endpoint,
        loop_factory,
        serve_all,
        tune_allocator,
        with_sockets,
    )

    try:
        settings = ServiceSettings()
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        config = load_ring_config(settings.config_text())
        inherited = [socket.socket(fileno=fd) for fd in settings.listen_fds]
        app = ring_app(RingService(config))
        wanted = [Endpoint(app, config.host, config.port)]
        if config.client_port is not None:
            wanted.append(Endpoint(app, "127.0.0.1", config.client_port))
        endpoints = with_sockets(wanted, inherited)
    except (EdgepartError, ValueError, OSError) as err:
        print(f"edgepart ring worker: {err}", file=sys.stderr)
        return 2
    tune_allocator()
    with asyncio.Runner(loop_factory=loop_factory()) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(serve_all(endpoints, settings.log_level))
    return 0

