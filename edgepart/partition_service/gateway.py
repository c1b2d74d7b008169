"""The gateway: the client's entry point and the pipeline's sink.

`POST /v1/infer` (or `POST /v1/models/{id}/infer` when the deployment runs
several models) takes a tensor frame (or JSON ``{"shape": [...], "data": [...]}``
for small inputs), cuts the first stage's input regions and streams them to
their partitions, then waits for the last stage's pieces (`POST /v1/tensor`)
and answers with the assembled output: a frame, or JSON when the client asks
for it (``Accept: application/json``). Partitions report failures they see to
`POST /v1/failures`. The gateway holds an idle connection to every partition
(`watch.py`): when a partition's process ends, every request that still waits on
it is answered at once with 503 `peer_unreachable` naming it, and the partitions
that wait for its pieces give those requests up; one that answers no ping of the watch for
`peer_timeout_s` (a host gone silent, a stopped process) is treated the same. A request the gateway fails or
abandons is cancelled at the partitions (`POST /v1/cancel`, cancel.py). A request that times out is
answered with 504 naming the partition that holds its late piece, found by
walking up the task graph from the pieces the gateway misses (`blame.py`).

Two ports, two apps (`gateway_apps`): the client port serves /v1/infer and the read-only views (model,
plan, status, trace, probes, metrics), none of which names an internal URL or file path; the internal port
serves the partitions only (`/v1/tensor`, `/v1/failures`), each request carrying the deployment's secret.
A client input is checked against the model's input shape before its payload is allocated.

Overload: the gateway admits only as many requests as the deployment can answer within the request timeout
(`admission.py`: a bound from the measured service time, Little's law); beyond it a request is answered
503 `admission_limit` at once, with Retry-After, before its body is read. Every frame it sends carries the
request's remaining budget, so partitions drop the work of requests whose client has had its 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgepart.geometry import Region
from edgepart.partition_service.access import BodyDeadline, InternalOnly
from edgepart.partition_service.admission import AdmissionController, AdmissionSettings
from edgepart.partition_service.assembly import Assembler
from edgepart.partition_service.auth import Secret, load_secret
from edgepart.partition_service.blame import (
    PENDING_PATH,
    PendingAnswer,
    PendingQuery,
    late_holders,
    waits_on,
)
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.cancel import CANCEL_PATH, Canceller, CancelNotice
from edgepart.partition_service.config import (
    GATEWAY,
    ConfigError,
    Endpoint,
    GatewayConfig,
    GatewayModel,
    Route,
)
from edgepart.partition_service.errors import (
    AdmissionError,
    BadRequestError,
    ClientGoneError,
    DuplicatePieceError,
    FrameTooLargeError,
    NotReadyError,
    OverloadedError,
    PeerError,
    PeerUnreachableError,
    RequestTimeoutError,
    ServiceError,
    UnexpectedPieceError,
    UnknownModelError,
    UnsupportedMediaTypeError,
    error_from_response,
    install_error_handlers,
    redact,
)
from edgepart.partition_service.lane import Guard, TensorLane
from edgepart.partition_service.lifecycle import service_lifespan
from edgepart.partition_service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from edgepart.partition_service.partition import FAILURES_PATH
from edgepart.partition_service.timeline import Timeline
from edgepart.partition_service.transport import (
    TENSOR_PATH,
    HopClient,
    Sender,
    content_length,
    internal_headers,
    make_client,
    make_hop_client,
    media_type,
    peer_error,
    received_frame,
)
from edgepart.partition_service.watch import PeerWatch, WatchSettings
from edgepart.partition_service.wire import (
    CONTENT_TYPE,
    Frame,
    FrameHeader,
    encode_frame,
    frame_size,
    make_header,
)

__all__ = ["GatewayService", "InferResult", "gateway_app", "gateway_internal_app"]

log = logging.getLogger("edgepart.gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_INFER_PATH = re.compile(r"^/v1/(models/[^/]+/)?infer$")
PROBE_BUDGET_S = 1.0  # part of the request timeout kept for naming a dead partition
CLIENT_GONE = "the client closed its connection"  # the message of the cancel of a request whose client left


@dataclass(frozen=True)
class InferResult:
    request_id: str
    output: torch.Tensor
    latency_s: float


class FailureReport(BaseModel):
    """What a partition posts to /v1/failures."""

    model_config = ConfigDict(extra="ignore")
    request_id: str
    partition: str
    error: str
    detail: str
    peer: str | None = None


class JsonInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(min_length=1, max_length=5)
    data: list[Any]
    request_id: str | None = None


class GatewayService:
    """The gateway's core; `gateway_app` wraps it in HTTP."""

    def __init__(self, config: GatewayConfig, *, client: httpx.AsyncClient | None = None,
                 metrics: ServiceMetrics | None = None, secret: Secret | None = None):
        self.config = config
        self.secret = secret or load_secret(config.secret_file)
        self.budget = PayloadBudget(config.connection.max_payload_bytes)  # client inputs and output pieces
        self._internal = internal_headers(self.secret)  # on every request to a partition
        self.metrics = metrics or ServiceMetrics(config.deployment, GATEWAY, GATEWAY)
        self._client = client
        self._own_client = client is None
        self._assemblers = {m.id: Assembler(GATEWAY, Region.full(m.output_shape[1:]), m.output_shape[0], m.inputs)
                            for m in config.models}
        self._request_model: dict[str, str] = {}  # pipeline id -> model id, while pending
        self._waiters: dict[str, asyncio.Future[torch.Tensor]] = {}
        self._slots = asyncio.Semaphore(config.max_inflight)
        self._queued = 0
        # the measured bound; max_inflight + max_queue stays the hard cap (answered 503 `overloaded`)
        self.admission = AdmissionController(AdmissionSettings(timeout_s=config.request_timeout_s,
                                                               mode=config.admission))
        self.metrics.admission_bound.set(self.admission_bound)
        self._ready_cache: tuple[float, list[str]] | None = None
        self._sender: Sender | None = None
        self._hop: HopClient | None = None
        self.timeline = Timeline()  # wall-clock events of recent requests, by pipeline id
        self._pipeline_ids: dict[str, str] = {}  # a client's id -> the pipeline id of its latest request
        self._endpoints = {e.id: e for e in config.partitions}
        self.watch: PeerWatch | None = None  # idle connections to the partitions: their deaths, at once
        self.canceller = Canceller(self._send_cancel)  # failed requests: the partitions drop their work

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client(self.config.request_timeout_s, secret=self.secret)
        if self._own_client:  # with an injected client (tests, in-process wiring) frames go through it too
            self._hop = make_hop_client(self.config.request_timeout_s, secret=self.secret)
            pings = WatchSettings(peer_timeout_s=self.config.peer_timeout_s or None)
            self.watch = PeerWatch({e.id: e.url for e in self.config.partitions}, self.partition_died, pings)
            self.watch.start()
        self._sender = Sender(self._client, self._hop, internal_headers(self.secret))

    async def aclose(self) -> None:
        if self.watch is not None:
            await self.watch.aclose()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(NotReadyError("the gateway is shutting down"))
        await asyncio.sleep(0)  # the failed requests' cancels are queued
        await self.canceller.aclose()
        if self._client is not None and self._own_client:
            await self._client.aclose()
        if self._hop is not None:
            await self._hop.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise NotReadyError("the gateway has not started")
        return self._client

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise NotReadyError("the gateway has not started")
        return self._sender

    # ------------------------------------------------------------ inference

    def served(self, model_id: str | None) -> GatewayModel:
        """The model `model_id` serves (the only one when None); 404 / 400 naming the choices otherwise."""
        try:
            return self.config.served(model_id)
        except ConfigError as err:
            raise (UnknownModelError if model_id is not None else BadRequestError)(str(err)) from None

    def input_admitter(self, model_id: str | None) -> Callable[[FrameHeader], None]:
        """A check that a client's input frame is model `model_id`'s input (shape, float32), run before the
        payload is allocated."""
        expected = self.served(model_id).input_shape

        def admit_input(header: FrameHeader) -> None:
            if tuple(header.shape) != expected:
                raise UnexpectedPieceError(f"input has shape {list(header.shape)}, the model expects "
                                           f"{list(expected)}")
            if header.dtype != "float32":
                raise UnexpectedPieceError(f"input has dtype {header.dtype}, expected float32")
        return admit_input

    def _assembler_for(self, header: FrameHeader) -> Assembler:
        """The assembler of the request's model; for a request not pending here, the first that knows the
        sender (so a malformed piece is still refused as such)."""
        model = self._request_model.get(header.request_id)
        if model is not None:
            return self._assemblers[model]
        for assembler in self._assemblers.values():
            if header.sender in assembler.senders:
                return assembler
        return next(iter(self._assemblers.values()))

    def admit(self, header: FrameHeader) -> None:
        """A piece of an output must be one the gateway expects, of a request it waits for."""
        assembler = self._assembler_for(header)
        assembler.check(header)
        waiter = self._waiters.get(header.request_id)
        if waiter is None or waiter.done():
            raise RequestTimeoutError(f"request {header.request_id} is not pending at the gateway (timed out, failed "
                                      "or unknown)", request_id=header.request_id)
        if assembler.received(header.request_id, header.sender, header.region):
            raise DuplicatePieceError(f"request {header.request_id} already has its piece from {header.sender}",
                                      request_id=header.request_id)

    def check_input(self, tensor: torch.Tensor, model_id: str | None = None) -> None:
        served = self.served(model_id)
        expected = served.input_shape
        if tuple(tensor.shape) != expected:
            raise UnexpectedPieceError(f"input has shape {list(tensor.shape)}, the model "
                                       f"{redact(served.model.name)} expects {list(expected)}")
        if tensor.dtype != torch.float32:
            raise UnexpectedPieceError(f"input has dtype {str(tensor.dtype).removeprefix('torch.')}, expected float32")

    def new_request_id(self, proposed: str | None) -> tuple[str, str]:
        """(the client's id, the pipeline's id): every hop carries a fresh id that starts with the client's,
        so a client may reuse its ids and still be traced end to end."""
        if proposed is None:
            rid = uuid.uuid4().hex
            return rid, rid
        if not _REQUEST_ID.match(proposed) or len(proposed) > 100:
            raise BadRequestError(f"request id {proposed[:140]!r} must match [A-Za-z0-9._:-]{{1,100}}")
        return proposed, f"{proposed}.{uuid.uuid4().hex[:12]}"

    def refuse_if_full(self) -> None:
        """Raise AdmissionError when a request arriving now would be refused (checked before reading its body)."""
        refusal = self.admission.refusal()
        if refusal is not None:
            self.admission.rejected += 1
            self.metrics.admission("rejected")
            raise AdmissionError(refusal.detail(self.config.request_timeout_s), retry_after_s=refusal.retry_after_s)

    @property
    def admission_bound(self) -> int:
        """Requests admitted at once now: the measured bound, or the hard cap (slots + queue) below it."""
        return min(self.admission.bound, self.config.max_inflight + self.config.max_queue)

    def _admission_changed(self) -> None:
        self.metrics.admission_inflight.set(self.admission.inflight)
        self.metrics.admission_bound.set(self.admission_bound)

    async def infer(self, tensor: torch.Tensor, request_id: str | None = None,
                    model_id: str | None = None) -> InferResult:
        """Run one request of model `model_id` (default: the only one) through its tasks; the assembled output.

        Refused at once (AdmissionError, 503) when the deployment cannot answer it within the timeout."""
        refusal = self.admission.try_admit()
        if refusal is not None:
            self.metrics.admission("rejected")
            raise AdmissionError(refusal.detail(self.config.request_timeout_s), retry_after_s=refusal.retry_after_s)
        self.metrics.admission("admitted")
        self._admission_changed()
        answered = False
        try:
            result = await self._infer(tensor, request_id, model_id)
            answered = True
            return result
        finally:
            self.admission.done(answered)
            self._admission_changed()

    async def _infer(self, tensor: torch.Tensor, request_id: str | None, model_id: str | None) -> InferResult:
        started = time.monotonic()
        received = time.time()
        served = self.served(model_id)
        self.check_input(tensor, served.id)
        client_id, rid = self.new_request_id(request_id)
        self.timeline.mark(rid, "received", received)
        self._pipeline_ids[client_id] = rid
        while len(self._pipeline_ids) > self.timeline.capacity:
            del self._pipeline_ids[next(iter(self._pipeline_ids))]
        self._refuse_if_silent(served, rid)
        timeout = self.config.request_timeout_s
        deadline = started + timeout
        if self._slots.locked() and self._queued >= self.config.max_queue:
            self.metrics.error("overloaded")
            raise OverloadedError(f"overloaded: {self.config.max_inflight} requests in flight and "
                                  f"{self._queued} waiting; try again later", request_id=rid)
        self._queued += 1
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.metrics.error("timeout")
            raise RequestTimeoutError(f"request {rid} waited {timeout:g} s for one of the {self.config.max_inflight} "
                                      "pipeline slots", request_id=rid) from None
        finally:
            self._queued -= 1
        self.metrics.queue.observe(time.monotonic() - started)
        self.metrics.inflight.inc()
        waiter: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = waiter
        assembler = self._assemblers[served.id]
        self._request_model[rid] = served.id
        assembler.open(rid)
        try:
            # the pieces' budget ends when the gateway stops waiting (it keeps a little to name a late partition)
            answer_by = deadline - min(PROBE_BUDGET_S, timeout / 4)
            await self._scatter(rid, tensor, deadline, served, waiter, answer_by)
            self.timeline.mark(rid, "scattered")
            output = await self._wait(rid, waiter, deadline, assembler)
            self.timeline.mark(rid, "output")
        except ServiceError as err:
            err.request_id = rid
            self.metrics.error(err.reason)
            self._cancel(rid, err.reason)
            raise
        except asyncio.CancelledError as err:  # the client went away (`until_client_gone`), or the gateway stops
            self._cancel(rid, ClientGoneError.reason if CLIENT_GONE in err.args else "abandoned")
            raise
        except Exception:
            self._cancel(rid, "internal")
            raise
        finally:
            self._waiters.pop(rid, None)
            self._request_model.pop(rid, None)
            assembler.discard(rid)
            self._slots.release()
            self.metrics.inflight.dec()
        latency = time.monotonic() - started
        self.metrics.request.observe(latency)
        return InferResult(client_id, output, latency)

    def _refuse_if_silent(self, served: GatewayModel, rid: str) -> None:
        """A request that needs a partition the watch found silent would wait for the timeout: 503 now."""
        if self.watch is None:
            return
        for e in self.config.partitions:
            if e.model in ("", served.id) and self.watch.silent(e.id):
                self.metrics.error(PeerUnreachableError.reason)
                raise PeerUnreachableError(f"partition {e.id} (device {e.device}) is unreachable: "
                                           f"{self.watch.down.get(e.id, 'it answers no ping')}; request {rid} "
                                           "cannot finish", peer=e.id, request_id=rid)

    async def _scatter(self, rid: str, tensor: torch.Tensor, deadline: float, served: GatewayModel,
                       waiter: asyncio.Future[torch.Tensor], answer_by: float) -> None:
        """Send the input regions to every task that reads the input, concurrently; the first failure aborts
        the rest, and so does a failure of the request meanwhile (a partition died: `_wait` raises it)."""
        tasks = [asyncio.create_task(self._send(rid, route, tensor, answer_by)) for route in served.routes]
        watched: list[asyncio.Future[Any]] = [*tasks, waiter]
        try:
            _, pending = await asyncio.wait(watched, timeout=max(deadline - time.monotonic(), 0.0),
                                            return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            return
        failures = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, asyncio.CancelledError)]
        if failures:
            first = failures[0]
            raise first if isinstance(first, ServiceError) else PeerError(f"sending request {rid}: {first}")
        if any(task in pending for task in tasks):
            raise RequestTimeoutError(f"sending request {rid} to the first stage took over "
                                      f"{self.config.request_timeout_s:g} s")

    async def _send(self, rid: str, route: Route, tensor: torch.Tensor, answer_by: float) -> None:
        started = time.perf_counter()
        piece = tensor[route.region.slices()].contiguous()
        header = make_header(rid, piece, route.region, -1, GATEWAY, wire=route.wire)
        size = await self.sender.send(route.url, header, piece, peer=route.target, delay_s=route.delay_s,
                                      deadline=answer_by)
        self.metrics.send.observe(time.perf_counter() - started)
        self.metrics.bytes_out.inc(size)

    async def _wait(self, rid: str, waiter: asyncio.Future[torch.Tensor], deadline: float,
                    assembler: Assembler) -> torch.Tensor:
        timeout = self.config.request_timeout_s
        budget = max(deadline - time.monotonic() - min(PROBE_BUDGET_S, timeout / 4), 0.0)
        reported: RequestTimeoutError | None = None
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), budget)
        except TimeoutError:
            pass
        except RequestTimeoutError as err:  # a partition gave up waiting: maybe because a peer died
            reported = err
        missing = assembler.missing(rid)
        answers = await self.ask_partitions(PendingQuery(requests=[rid]), min(PROBE_BUDGET_S, timeout / 4) * 0.9)
        holders = late_holders(rid, missing, answers)
        for holder in holders:
            if isinstance(holder.error, PeerUnreachableError):
                endpoint = self._endpoints[holder.task]
                raise PeerUnreachableError(f"partition {endpoint.id} (device {endpoint.device}, {endpoint.url}) is "
                                           f"unreachable: {holder.why}; request {rid} cannot finish",
                                           peer=endpoint.id)
        if not holders and reported is not None:
            raise reported
        late = "; ".join(f"{h.task} {h.why}" for h in holders) or "no partition answered"
        raise RequestTimeoutError(f"request {rid} timed out after {timeout:g} s waiting for pieces from "
                                  f"{', '.join(missing)}; the late piece is held by {late}",
                                  peer=holders[0].task if holders else (missing[0] if len(missing) == 1 else None))

    async def ingest(self, frame: Frame) -> None:
        """A piece of some request's output, from a task that delivers it."""
        header = frame.header
        self.admit(header)
        waiter = self._waiters[header.request_id]
        self.metrics.bytes_in.inc(frame.nbytes)
        output = self._assemblers[self._request_model[header.request_id]].add(header, frame.tensor)
        if output is not None:
            waiter.set_result(output)

    def fail(self, report: FailureReport) -> bool:
        """A partition says a request cannot finish; the waiting client gets that error."""
        waiter = self._waiters.get(report.request_id)
        if waiter is None or waiter.done():
            return False
        body = {"error": report.error, "detail": f"{report.detail} (reported by {report.partition})",
                "peer": report.peer or report.partition}
        err = error_from_response(502, json.dumps(body).encode(), report.peer or report.partition)
        if not isinstance(err, PeerUnreachableError | RequestTimeoutError | NotReadyError | OverloadedError):
            err = PeerError(err.detail, peer=err.peer)
        err.request_id = report.request_id
        waiter.set_exception(err)
        return True

    def _cancel(self, rid: str, reason: str) -> None:
        self.metrics.cancelled(reason)
        self.canceller.cancel(rid, reason)

    async def _send_cancel(self, notice: CancelNotice) -> None:
        """Post `notice` to every partition not known down (each within the probe budget, concurrently)."""
        down = self.watch.down if self.watch is not None else {}

        async def one(e: Endpoint) -> None:
            try:
                response = await self.client.post(e.url + CANCEL_PATH, content=notice.model_dump_json(),
                                                  timeout=PROBE_BUDGET_S,
                                                  headers={**self._internal, "content-type": "application/json"})
            except httpx.HTTPError as err:
                log.info("cannot cancel %d requests at %s: %s", len(notice.requests), e.id,
                         peer_error(err, e.id, e.url, f"POST {CANCEL_PATH}").detail)
                return
            if response.status_code >= 300:
                log.warning("partition %s refused a cancel: %s", e.id, response.text[:200])

        await asyncio.gather(*(one(e) for e in self.config.partitions if e.id not in down))

    # ------------------------------------------------------------ partitions' health

    async def ask(self, endpoint: Endpoint, query: PendingQuery, timeout: float) -> PendingAnswer | ServiceError:
        """Partition `endpoint`'s answer to `query` (POST /v1/pending), or the error that took its place."""
        e = endpoint
        try:
            response = await self.client.post(e.url + PENDING_PATH, json=query.model_dump(), timeout=timeout,
                                              headers=self._internal)
        except httpx.HTTPError as err:
            return peer_error(err, e.id, e.url, f"POST {PENDING_PATH}")
        if response.status_code != 200:
            return error_from_response(response.status_code, response.content, e.id)
        try:
            return PendingAnswer.model_validate_json(response.content)
        except ValidationError as err:
            return PeerError(f"{e.id} answered {PENDING_PATH} with {err.error_count()} errors", peer=e.id)

    async def ask_partitions(self, query: PendingQuery, timeout: float) -> dict[str, PendingAnswer | ServiceError]:
        """Every partition's answer to `query`, or the error that took its place."""
        chosen = self.config.partitions
        answers = await asyncio.gather(*(self.ask(e, query, timeout) for e in chosen))
        return {e.id: a for e, a in zip(chosen, answers, strict=True)}

    async def partition_died(self, peer: str, why: str) -> None:
        """Partition `peer`'s process ended: fail every pending request that still waits on it (the gateway
        misses its piece, or a consumer of it has not seen the request or misses its piece), and have its
        consumers give up theirs. Each answer is used as it comes: a stopped partition delays no other."""
        endpoint = self._endpoints.get(peer)
        if endpoint is None:
            return
        pending = [rid for rid, model in self._request_model.items()
                   if endpoint.model in ("", model) and rid in self._waiters and not self._waiters[rid].done()]

        def fail(rid: str) -> bool:
            waiter = self._waiters.get(rid)
            if waiter is None or waiter.done():
                return False
            waiter.set_exception(PeerUnreachableError(
                f"partition {peer} (device {endpoint.device}) died while request {rid} waited on it: {why}",
                peer=peer, request_id=rid))
            return True

        failed = sum(fail(rid) for rid in pending
                     if rid in self._request_model and peer in self._assemblers[self._request_model[rid]].missing(rid))
        query = PendingQuery(requests=pending, dead=peer, detail=why[:1000])

        async def consumer(e: Endpoint) -> int:
            answer = await self.ask(e, query, PROBE_BUDGET_S)
            return sum(fail(rid) for rid in pending if waits_on(peer, rid, {e.id: answer}))

        failed += sum(await asyncio.gather(*(consumer(e) for e in self.config.partitions if e.id != peer)))
        log.warning("partition %s died (%s): %d of %d pending requests waited on it", peer, why, failed, len(pending))

    async def _probe(self, endpoint: Endpoint, path: str, timeout: float) -> str | None:
        """None when `endpoint` answers `path` with 200, else why not."""
        try:
            response = await self.client.get(endpoint.url + path, timeout=timeout, headers=self._internal)
        except httpx.HTTPError as err:
            return peer_error(err, endpoint.id, endpoint.url, f"GET {path}").detail
        if response.status_code != 200:
            return error_from_response(response.status_code, response.content, endpoint.id).detail
        return None

    async def unreachable(self, timeout: float = 1.0) -> list[tuple[Endpoint, str]]:
        """Partitions that do not answer /healthz."""
        answers = await asyncio.gather(*(self._probe(e, "/healthz", timeout) for e in self.config.partitions))
        return [(e, why) for e, why in zip(self.config.partitions, answers, strict=True) if why is not None]

    async def not_ready(self) -> list[str]:
        """Partitions whose /readyz is not 200 (cached for one second)."""
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < 1.0:
            return self._ready_cache[1]
        answers = await asyncio.gather(*(self._probe(e, "/readyz", 2.0) for e in self.config.partitions))
        result = [f"{e.id}: {why}" for e, why in zip(self.config.partitions, answers, strict=True) if why is not None]
        self._ready_cache = (now, result)
        return result

    async def partition_status(self) -> list[dict[str, Any]]:
        """Liveness and readiness of every partition, as the gateway sees them, with how many requests each
        has computed and their mean compute time."""
        async def one(e: Endpoint) -> dict[str, Any]:
            public = {"id": e.id, "device": e.device, "stage": e.stage}  # its URL is internal
            try:
                response = await self.client.get(e.url + "/readyz", timeout=2.0, headers=self._internal)
            except httpx.HTTPError as err:
                why = f"partition {e.id} is unreachable: {type(err).__name__}"
                return {**public, "live": False, "ready": False, "state": None, "detail": why}
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            detail = None if response.status_code == 200 else str(body.get("detail") or f"HTTP {response.status_code}")
            if body.get("failure"):
                detail = f"{detail}: {body['failure']}"
            computed, mean = None, None
            with contextlib.suppress(httpx.HTTPError, ValueError):
                info = (await self.client.get(e.url + "/v1/info", timeout=2.0, headers=self._internal)).json()
                computed, mean = info.get("computed"), info.get("compute_mean_s")
            return {**public, "live": True, "ready": response.status_code == 200,
                    "state": body.get("state", "ready" if response.status_code == 200 else None),
                    "detail": redact(detail) if detail else None, "computed": computed, "compute_mean_s": mean}

        return list(await asyncio.gather(*(one(e) for e in self.config.partitions)))

    async def trace(self, request_id: str) -> dict[str, Any] | None:
        """One recent request, by the id its client knows, followed through every partition: each one's events
        in seconds after the gateway received the request (None when the gateway has no record of it).

        The pipeline's own id (what pieces carry) is not revealed: it names a request on the internal hops."""
        rid = self._pipeline_ids.get(request_id)
        if rid is None:
            return None
        events = self.timeline.get(rid)
        if events is None:
            return None
        origin = events["received"]

        async def one(e: Endpoint) -> dict[str, Any]:
            base: dict[str, Any] = {"partition": e.id, "device": e.device, "stage": e.stage, "events": {}}
            try:
                response = await self.client.get(f"{e.url}/v1/timeline/{rid}", timeout=2.0, headers=self._internal)
            except httpx.HTTPError as err:
                return {**base, "detail": f"partition {e.id} is unreachable: {type(err).__name__}"}
            body = response.json() if response.status_code in (200, 404) else {}
            if response.status_code != 200:
                detail = str(body.get("detail") or f"HTTP {response.status_code}").replace(rid, request_id)
                return {**base, "detail": redact(detail)}
            return {**base, "events": {k: v - origin for k, v in body["events"].items()}}

        parts = await asyncio.gather(*(one(e) for e in self.config.partitions))
        return {"request_id": request_id,
                "gateway": {k: v - origin for k, v in events.items()},
                "partitions": sorted(parts, key=lambda p: (p["stage"], p["partition"]))}

    def model_info(self) -> dict[str, Any]:
        """What clients may know of the model: its name (a file reference without its directories), shapes,
        the number of stages and partitions, the predicted costs. No URL, no path."""
        c = self.config
        models = [{"id": m.id,
                   "model": {"name": redact(m.model.name), "input_shape": list(m.model.input_shape),
                             "weights": redact(m.model.weights) if m.model.weights else None, "seed": m.model.seed},
                   "input_shape": list(m.input_shape), "output_shape": list(m.output_shape),
                   "predicted_latency_s": m.predicted_latency_s} for m in c.models]
        one = models[0] if len(models) == 1 else None
        return {
            "deployment": c.deployment,
            "model": one["model"] if one else None,
            "input_shape": one["input_shape"] if one else None,
            "output_shape": one["output_shape"] if one else None,
            "models": models,
            "stages": c.stages,
            "partitions": len(c.partitions),
            "predicted": {"latency_s": c.predicted_latency_s, "throughput_per_s": c.predicted_throughput_per_s},
        }

    def plan_info(self) -> dict[str, Any]:
        """The plan, with every string redacted (the model's reference and weights are file paths locally)."""
        result: dict[str, Any] = _redacted(self.config.plan or {})
        return result


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _loop_time(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def _read_json(request: Request, limit: int) -> tuple[JsonInput, int]:
    length = content_length(request)
    if length is not None and length > limit:
        raise FrameTooLargeError(f"JSON body of {length} bytes is over the limit of {limit} bytes; send a tensor frame")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FrameTooLargeError(f"JSON body is over the limit of {limit} bytes; send a tensor frame")
    try:
        return JsonInput.model_validate_json(bytes(body)), len(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequestError(f"JSON input: {where}: {first['msg']} (expected {{\"shape\": [...], \"data\": [...]}})"
                         ) from None


async def until_client_gone(request: Request, work: Awaitable[InferResult]) -> InferResult:
    """`work`'s result; when the client closes its connection first, `work` is cancelled (the gateway then
    cancels the request at the partitions) and ClientGoneError raised."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this handler is cancelled (the server stops): so is its work
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel(CLIENT_GONE)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # this handler itself is cancelled
            raise
        raise ClientGoneError(f"the client closed its connection before its answer; {CLIENT_GONE}") from None


async def _disconnected(request: Request) -> None:
    """Return once the client has closed its connection (the body is read: only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _discard_body(request: Request) -> None:
    """Read and drop a request's body (no allocation beyond one chunk)."""
    async for _ in request.stream():
        pass


def _tensor_from_json(body: JsonInput) -> torch.Tensor:
    if any(d <= 0 for d in body.shape):
        raise BadRequestError(f"JSON input: shape {body.shape} must be positive integers")
    try:
        array = np.asarray(body.data, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise BadRequestError(f"JSON input: data is not a (nested) list of numbers: {err}") from None
    if array.size != math.prod(body.shape):
        raise UnexpectedPieceError(f"JSON input: data has {array.size} numbers, shape {body.shape} needs "
                                   f"{math.prod(body.shape)}")
    return torch.from_numpy(array.reshape(body.shape))


# JSON has no NaN or infinities: they travel as these strings, both ways (numpy reads them back).
NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_values(tensor: torch.Tensor) -> list[float | str]:
    """The tensor's values, flattened, as JSON can carry them: non-finite values as "NaN", "Infinity", "-Infinity"."""
    flat = tensor.detach().reshape(-1)
    values: list[float | str] = flat.tolist()
    if bool(torch.isfinite(flat).all()):
        return values
    for i in torch.nonzero(~torch.isfinite(flat)).reshape(-1).tolist():
        values[i] = NON_FINITE_JSON[str(values[i])]
    return values


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept or request.query_params.get("format") == "json"


def _frame_response(result: InferResult) -> Response:
    region = Region.full(result.output.shape[1:])
    header: FrameHeader = make_header(result.request_id, result.output, region, -1, GATEWAY)
    parts = encode_frame(header, result.output)
    return Response(b"".join(parts), media_type=CONTENT_TYPE, headers=_result_headers(result, frame_size(parts)))


def _result_headers(result: InferResult, size: int | None = None) -> dict[str, str]:
    headers = {"x-request-id": result.request_id, "x-edgepart-latency-ms": f"{result.latency_s * 1000:.3f}"}
    if size is not None:
        headers["content-length"] = str(size)
    return headers


def gateway_app(service: GatewayService) -> FastAPI:
    """The gateway's client port (one uvicorn worker): inference and read-only views, nothing internal.

    It starts and stops the service (its lifespan); `gateway_internal_app` serves the same service to the
    partitions on the internal port."""

    app = FastAPI(title=f"edgepart gateway {service.config.deployment}", lifespan=service_lifespan(service),
                  docs_url=None, redoc_url=None)

    def count(err: ServiceError) -> None:
        service.metrics.error(err.reason)

    install_error_handlers(app, on_error=count, redacted=True)
    connection = service.config.connection
    app.add_middleware(BodyDeadline, limits=connection)

    def refuse_from_head(method: str, path: str) -> ServiceError | None:
        """Admission answered from the request head (below ASGI): the refusal does not wait for the body."""
        if method != "POST" or not _INFER_PATH.match(path):
            return None
        try:
            service.refuse_if_full()
        except AdmissionError as err:
            return err
        return None

    app.state.guard = Guard(connection, None, on_error=count, refuse=refuse_from_head)

    async def run(request: Request, model_id: str | None) -> Response:
        admit_input = service.input_admitter(model_id)  # an unknown model is refused before the body is read
        try:
            service.refuse_if_full()  # and so is a request beyond admission: its refusal must be fast
        except AdmissionError:
            await _discard_body(request)  # a client still sending its body would see a reset, not the 503
            raise
        kind = media_type(request)
        proposed = request.headers.get("x-request-id")
        if kind == "application/json":
            length = content_length(request) or service.config.max_json_bytes
            with service.budget.reserve(min(length, service.config.max_json_bytes) * 2, "a JSON input"):
                body, size = await _read_json(request, service.config.max_json_bytes)
                tensor = _tensor_from_json(body)
            proposed = body.request_id or proposed
            service.metrics.bytes_in.inc(size)
            result = await until_client_gone(request, service.infer(tensor, proposed, model_id))
        elif kind in (CONTENT_TYPE, "application/octet-stream"):
            async with received_frame(request, service.config.limits, admit=admit_input,
                                      budget=service.budget) as frame:
                service.metrics.bytes_in.inc(frame.nbytes)
                result = await until_client_gone(request, service.infer(frame.tensor, proposed, model_id))
        else:
            raise UnsupportedMediaTypeError(f"POST /v1/infer takes {CONTENT_TYPE} (a tensor frame) or "
                                            f"application/json, not {kind or 'no Content-Type'}")
        if _wants_json(request):
            return JSONResponse({"request_id": result.request_id, "shape": list(result.output.shape),
                                 "data": json_values(result.output),
                                 "latency_ms": result.latency_s * 1000}, headers=_result_headers(result))
        return _frame_response(result)

    @app.post("/v1/infer", summary="Run the model (a one-model deployment): a tensor frame or JSON {shape, data} "
                                   "in; frame or JSON out.")
    async def infer(request: Request) -> Response:
        return await run(request, None)

    @app.post("/v1/models/{model_id}/infer", summary="Run model `model_id` of the deployment.")
    async def infer_model(model_id: str, request: Request) -> Response:
        return await run(request, model_id)

    @app.get("/v1/models", summary="The models this deployment serves.")
    async def models() -> dict[str, Any]:
        return {"models": service.model_info()["models"]}

    @app.get("/healthz", summary="Liveness.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready when every partition is ready.")
    async def readyz() -> JSONResponse:
        waiting = await service.not_ready()
        if waiting:
            return JSONResponse({"error": "not_ready", "detail": redact("partitions not ready: " + "; ".join(waiting))},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics.")
    async def metrics() -> Response:
        service.metrics.payload.set(service.budget.in_flight)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", summary="The model's name, shapes, number of partitions and predicted costs.")
    async def model() -> dict[str, Any]:
        return service.model_info()

    @app.get("/v1/status", summary="Every partition's liveness and readiness, probed from the gateway.")
    async def status() -> dict[str, Any]:
        parts = await service.partition_status()
        return {"deployment": service.config.deployment, "ready": all(p["ready"] for p in parts),
                "partitions": parts}

    @app.get("/v1/trace/{request_id}", summary="One recent request's timeline at the gateway and every partition.")
    async def trace(request_id: str) -> JSONResponse:
        found = await service.trace(request_id)
        if found is None:
            return JSONResponse({"error": "not_found", "detail": f"the gateway has no record of request "
                                 f"{request_id[:140]!r} (unknown, or older than its last "
                                 f"{service.timeline.capacity})"}, status_code=404)
        return JSONResponse(found)

    @app.get("/v1/plan", summary="The plan this deployment runs.")
    async def plan() -> dict[str, Any]:
        return service.plan_info()

    return app


def gateway_internal_app(service: GatewayService) -> FastAPI:
    """The gateway's internal port: the last stage's pieces and the partitions' failure reports, each
    request carrying the deployment's secret (401 otherwise)."""

    app = FastAPI(title=f"edgepart gateway {service.config.deployment} (internal)", docs_url=None,
                  redoc_url=None, openapi_url=None)

    def count(err: ServiceError) -> None:
        service.metrics.error(err.reason)

    install_error_handlers(app, on_error=count)
    connection = service.config.connection
    app.add_middleware(BodyDeadline, limits=connection)
    app.add_middleware(InternalOnly, secret=service.secret, on_error=count)
    lane = TensorLane(TENSOR_PATH, service.config.limits, service.ingest, on_error=count, admit=service.admit,
                      budget=service.budget)
    app.state.guard = Guard(connection, lane, on_error=count, secret=service.secret)

    @app.post(TENSOR_PATH, status_code=204, summary="Receive a piece of a request's output from the last stage.")
    async def tensor(request: Request) -> Response:
        async with received_frame(request, service.config.limits, admit=service.admit,
                                  budget=service.budget) as frame:
            await service.ingest(frame)
        return Response(status_code=204)

    @app.post(FAILURES_PATH, summary="A partition reports that a request cannot finish.")
    async def failures(report: FailureReport) -> dict[str, bool]:
        return {"delivered": service.fail(report)}

    @app.get("/healthz", summary="Liveness.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
