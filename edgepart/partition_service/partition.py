"""One partition: receive input pieces, assemble the tile, compute the slice, stream pieces to the next stage.

Pipeline per request id::

    POST /v1/tensor -> admit (bounded, waits up to the deadline: backpressure)
                    -> assemble (per-request deadline) -> compute queue
    compute worker  -> one thread runs the slice (torch threads from the config)
                    -> send tasks: each downstream piece to its peer, concurrently

Every frame carries what is left of its request's deadline (`budget_s`, set by the gateway); the first
piece of a request fixes the deadline on this host's clock. Work whose deadline passed is dropped wherever
it waits, never computed or sent: a piece that arrives expired, a request waiting for room or for its
other pieces, a tile in the compute queue, a piece waiting for the link. `edgepart_dropped_total` counts
each by where it waited; the gateway has answered its client 504 already.

Failures that the gateway cannot see itself (a peer that refuses a piece, a
request whose pieces never all arrived, a compute error) are reported to the
gateway's /v1/failures so the client gets an answer naming the problem. The
gateway asks `POST /v1/pending` what a partition holds of some requests (see
blame.py): when another partition died, or when a request timed out. When the
gateway fails or abandons a request it posts `POST /v1/cancel` (cancel.py): the
partition drops whatever it holds of it at once instead of at its deadline.

Everything a partition serves is internal to its deployment: a piece, a read of its info or of a
timeline must carry the deployment's secret (401 otherwise), except the probes and /metrics. A piece is
checked against the ones the partition expects (sender, stage, region, shape: hence its exact size)
before its payload is allocated, and its bytes count against the process's payload budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edgepart.executor import kernels_in_use, use_exact_kernels
from edgepart.geometry import Region
from edgepart.partition_service.access import BodyDeadline, InternalOnly
from edgepart.partition_service.assembly import Assembler
from edgepart.partition_service.auth import Secret, load_secret
from edgepart.partition_service.blame import PENDING_PATH, PendingAnswer, PendingQuery, RequestView
from edgepart.partition_service.budget import PayloadBudget
from edgepart.partition_service.cancel import CANCEL_PATH, CancelNotice
from edgepart.partition_service.config import GATEWAY, PartitionConfig, Route
from edgepart.partition_service.errors import (
    BadRequestError,
    ComputeFailedError,
    DuplicatePieceError,
    ExpiredError,
    NotReadyError,
    OverloadedError,
    PeerUnreachableError,
    RequestTimeoutError,
    ServiceError,
    UnexpectedPieceError,
    error_body,
    install_error_handlers,
)
from edgepart.partition_service.lane import Guard, TensorLane
from edgepart.partition_service.lifecycle import service_lifespan
from edgepart.partition_service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from edgepart.partition_service.slicing import TaskRunner, load_slice
from edgepart.partition_service.timeline import Timeline
from edgepart.partition_service.transport import (
    TENSOR_PATH,
    HopClient,
    Sender,
    internal_headers,
    make_client,
    make_hop_client,
    peer_error,
    received_frame,
)
from edgepart.partition_service.turnstile import TURN_PATH, TurnNotice, Turnstile
from edgepart.partition_service.wire import Frame, FrameHeader, make_header

__all__ = ["PartitionService", "partition_app"]

log = logging.getLogger("edgepart.partition")

State = Literal["created", "loading", "ready", "failed", "stopped"]
SliceLoader = Callable[[PartitionConfig], TaskRunner]
FAILURES_PATH = "/v1/failures"
_MEMORY = 4096  # request ids remembered as expired or complete
TURN_TIMEOUT_S = 5.0  # a turn notice not answered by then is lost: the next partition computes after its wait


@dataclass
class _Job:
    request_id: str
    tile: torch.Tensor
    first_piece_at: float
    ready_at: float
    admission_wait: float
    deadline: float | None = None  # time.monotonic() after which its output is worthless
    cancelled: str | None = None  # why the gateway gave it up: not computed, or its result not sent


class PartitionService:
    """The partition's core; `partition_app` wraps it in HTTP."""

    def __init__(self, config: PartitionConfig, *, loader: SliceLoader = load_slice,
                 client: httpx.AsyncClient | None = None, metrics: ServiceMetrics | None = None,
                 secret: Secret | None = None):
        self.config = config
        self.id = config.partition
        self.secret = secret or load_secret(config.secret_file)
        self.budget = PayloadBudget(config.connection.max_payload_bytes)
        self.metrics = metrics or ServiceMetrics(config.deployment, str(config.stage), config.partition)
        self.computed = 0  # requests computed, and their total compute time (for /v1/info)
        self.compute_total_s = 0.0
        self.timeline = Timeline()  # wall-clock events of recent requests (GET /v1/timeline/{id})
        self.state: State = "created"
        self.failure: str | None = None
        self._loader = loader
        self._client = client
        self._own_client = client is None
        self._assembler = Assembler(self.id, config.input_region, config.batch, config.inputs)
        self._slots = asyncio.Semaphore(config.max_inflight)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waits: dict[str, float] = {}
        self._deadlines: dict[str, float] = {}  # request id -> its deadline on this host's monotonic clock
        self.dropped = 0  # requests dropped because their deadline passed
        self._expired: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # -> the senders it still waited for
        # requests cancelled before any of their pieces came: their first piece counts the cancel (-> reason)
        self._cancelled_unseen: OrderedDict[str, str] = OrderedDict()
        self._completed: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs: dict[str, _Job] = {}  # queued or computing, by request id
        self._computing: str | None = None  # the request whose tile the worker computes now
        self._sending: dict[str, asyncio.Task[None]] = {}  # results being sent, by request id
        self.cancelled = 0  # requests whose work was dropped for the gateway's cancel
        self._runner: TaskRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._sender: Sender | None = None
        self._hop: HopClient | None = None
        # partitions of one device that take turns (plans with meta.turns): see turnstile.py
        self.turns = Turnstile(config.turn) if config.turn is not None else None
        self.turns_passed = 0  # turn notices the next partition accepted

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start loading the slice in the worker thread; serving can begin at once (/readyz says when)."""
        torch.set_num_threads(self.config.threads)
        use_exact_kernels(self.config.exact_kernels)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slice-{self.id}")
        if self._client is None:
            self._client = make_client(self.config.request_timeout_s, secret=self.secret)
        if self._own_client:  # with an injected client (tests, in-process wiring) frames go through it too
            self._hop = make_hop_client(self.config.request_timeout_s, secret=self.secret)
        self._sender = Sender(self._client, self._hop, internal_headers(self.secret))
        self.state = "loading"
        self._spawn(self._load())
        self._worker = asyncio.create_task(self._compute_loop(), name=f"compute-{self.id}")

    async def aclose(self) -> None:
        self.state = "stopped"
        tasks = [t for t in (self._worker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None and self._own_client:
            await self._client.aclose()
        if self._hop is not None:
            await self._hop.aclose()

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            self._runner = await loop.run_in_executor(self._executor, self._load_and_warm)
        except Exception as err:
            self.state = "failed"
            self.failure = f"{type(err).__name__}: {err}"
            self.metrics.error("load_failed")
            log.error("partition %s: loading the slice failed: %s", self.id, self.failure)
            return
        self.state = "ready"
        log.info("partition %s ready in %.1f s", self.id, time.perf_counter() - started)

    def _load_and_warm(self) -> TaskRunner:
        runner = self._loader(self.config)
        runner(torch.zeros((self.config.batch, *self.config.input_region.shape)))
        return runner

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ ingest

    def _require_ready(self) -> None:
        if self.state != "ready":
            reason = f": {self.failure}" if self.failure else ""
            raise NotReadyError(f"partition {self.id} is not ready ({self.state}{reason})", peer=self.id)

    def admit(self, header: FrameHeader) -> None:
        """Raise unless this is a piece the partition expects now: checked from the frame header alone, before
        its payload is allocated."""
        self._require_ready()
        rid = header.request_id
        self._assembler.check(header)
        if rid in self._expired:
            reason = self._cancelled_unseen.pop(rid, None)
            if reason is not None:  # its work is dropped here, on arrival, for the gateway's cancel
                self._count_cancel(None, "assembly", reason)
                raise RequestTimeoutError(f"partition {self.id}: request {rid} was cancelled by the gateway "
                                          f"({reason})", request_id=rid)
            raise RequestTimeoutError(f"partition {self.id}: request {rid} already timed out", request_id=rid)
        if header.budget_s is not None and header.budget_s <= 0:
            self._drop("admission")
            raise ExpiredError(f"partition {self.id}: request {rid} arrived {-header.budget_s:.3f} s after its "
                               "deadline", request_id=rid)
        if rid in self._completed or self._assembler.received(rid, header.sender, header.region):
            raise DuplicatePieceError(f"partition {self.id}: request {rid} already has its piece from "
                                      f"{header.sender}", request_id=rid)

    async def ingest(self, frame: Frame) -> None:
        """Take one piece; when it completes a request's input, queue the request for compute."""
        header = frame.header
        rid = header.request_id
        self.admit(header)
        self.metrics.bytes_in.inc(frame.nbytes)
        if rid not in self._assembler:
            await self._admit(rid, header.budget_s)
        first = self._assembler.started(rid) or time.monotonic()
        self.timeline.mark(rid, "first_piece")
        tile = self._assembler.add(header, frame.tensor)
        if tile is None:
            return
        self.timeline.mark(rid, "assembled")
        now = time.monotonic()
        timer = self._timers.pop(rid, None)
        if timer is not None:
            timer.cancel()
        self.metrics.assemble.observe(now - first)
        self._remember(self._completed, rid, ())
        job = _Job(rid, tile, first, now, self._waits.pop(rid, 0.0), self._deadlines.pop(rid, None))
        self._jobs[rid] = job
        self._queue.put_nowait(job)

    def _drop(self, where: str) -> None:
        self.dropped += 1
        self.metrics.dropped(where)

    async def _admit(self, rid: str, budget_s: float | None) -> None:
        waited = time.monotonic()
        timeout = self.config.request_timeout_s
        deadline = waited + budget_s if budget_s is not None else None
        wait = min(timeout, budget_s) if budget_s is not None else timeout
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            if rid in self._assembler:  # another piece of the request found room: this one joins it
                return
            if deadline is not None and wait < timeout:
                self._drop("admission")
                raise ExpiredError(f"partition {self.id}: request {rid} reached its deadline waiting for room "
                                   f"({self.config.max_inflight} requests in flight)", request_id=rid) from None
            raise OverloadedError(f"partition {self.id}: {self.config.max_inflight} requests in flight, no room for "
                                  f"request {rid} within {timeout:g} s", request_id=rid) from None
        if rid in self._assembler:  # another piece of the same request was admitted meanwhile
            self._slots.release()
            return
        self._assembler.open(rid)
        self._waits[rid] = time.monotonic() - waited
        self.metrics.inflight.inc()
        loop = asyncio.get_running_loop()
        expires_in = timeout
        if deadline is not None:
            self._deadlines[rid] = deadline
            expires_in = min(timeout, deadline - time.monotonic())
        self._timers[rid] = loop.call_later(max(expires_in, 0.0), self._expire, rid)

    def _finish(self, rid: str) -> None:
        self._slots.release()
        self.metrics.inflight.dec()

    @staticmethod
    def _remember(memory: OrderedDict[str, tuple[str, ...]], rid: str, missing: tuple[str, ...]) -> None:
        memory[rid] = missing
        while len(memory) > _MEMORY:
            memory.popitem(last=False)

    def _give_up(self, rid: str, reason: str | None) -> tuple[str, ...]:
        """Stop waiting for the pieces of request `rid` (its late pieces are refused); the senders it missed."""
        timer = self._timers.pop(rid, None)
        if timer is not None:
            timer.cancel()
        self._waits.pop(rid, None)
        self._deadlines.pop(rid, None)
        missing = self._assembler.missing(rid)
        self._assembler.discard(rid)
        self._remember(self._expired, rid, missing)
        self._finish(rid)
        if reason is not None:
            self.metrics.error(reason)
        return missing

    def _expire(self, rid: str) -> None:
        self._timers.pop(rid, None)
        if rid not in self._assembler:
            return
        deadline = self._deadlines.get(rid)
        if deadline is not None and deadline <= time.monotonic():
            # the gateway has answered its client already: no report, only the count
            self._drop("assembly")
            self._give_up(rid, ExpiredError.reason)
            return
        missing = self._give_up(rid, "timeout")
        err = RequestTimeoutError(f"partition {self.id} timed out after {self.config.request_timeout_s:g} s waiting "
                                  f"for pieces of request {rid} from {', '.join(missing)}",
                             peer=missing[0] if len(missing) == 1 else None, request_id=rid)
        log.warning("%s", err)
        self._spawn(self._report(rid, err))

    # ------------------------------------------------------------ compute and send

    async def _compute_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if self.turns is not None:
                await self.turns.wait(job.request_id)
            if job.cancelled is not None:  # counted when the cancel came
                self._jobs.pop(job.request_id, None)
                self._pass_turn(job.request_id)
                self._finish(job.request_id)
                continue
            if job.deadline is not None and job.deadline <= time.monotonic():
                self._jobs.pop(job.request_id, None)
                self._pass_turn(job.request_id)
                self._drop("compute_queue")
                self._remember(self._expired, job.request_id, ())
                self._finish(job.request_id)
                continue
            self.metrics.queue.observe(job.admission_wait + time.monotonic() - job.ready_at)
            self._computing = job.request_id
            try:
                pieces, began, seconds = await loop.run_in_executor(self._executor, self._compute, job.tile)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._computing = None
                self._jobs.pop(job.request_id, None)
                self._pass_turn(job.request_id)
                self.metrics.error("compute_failed")
                self._finish(job.request_id)
                failure = ComputeFailedError(f"partition {self.id} failed computing request {job.request_id}: "
                                             f"{type(err).__name__}: {err}", peer=self.id, request_id=job.request_id)
                log.error("%s", failure)
                self._spawn(self._report(job.request_id, failure))
                continue
            self._pass_turn(job.request_id)
            self.metrics.compute.observe(seconds)
            self.timeline.mark(job.request_id, "compute_start", began)
            self.timeline.mark(job.request_id, "compute_end", began + seconds)
            self.computed += 1
            self.compute_total_s += seconds
            self._computing = None
            self._jobs.pop(job.request_id, None)
            if job.cancelled is not None:  # cancelled while it computed: its result goes nowhere
                self._count_cancel(job.deadline, "send", job.cancelled)
                self._finish(job.request_id)
                continue
            sending = asyncio.create_task(self._send_all(job, pieces))
            self._sending[job.request_id] = sending
            self._tasks.add(sending)
            sending.add_done_callback(self._tasks.discard)

    def _compute(self, tile: torch.Tensor) -> tuple[list[tuple[Route, torch.Tensor]], float, float]:
        """The pieces to send, the wall-clock start and the duration of the compute."""
        assert self._runner is not None
        began = time.time()
        started = time.perf_counter()
        out = self._runner(tile)
        whole = self.config.output_region
        pieces = [(route, self._cut(out, whole, route.region)) for route in self.config.outputs]
        return pieces, began, time.perf_counter() - started

    def _cut(self, out: torch.Tensor, whole: Region, region: Region) -> torch.Tensor:
        if region == whole:
            return out
        if region.empty:  # a trigger for a partition whose tile lies in padding
            return out.new_empty((out.shape[0], *region.shape))
        return out[region.relative_to(whole).slices()].contiguous()

    async def _send_all(self, job: _Job, pieces: list[tuple[Route, torch.Tensor]]) -> None:
        try:
            results = await asyncio.gather(*(self._send(job.request_id, route, tensor, job.deadline)
                                             for route, tensor in pieces), return_exceptions=True)
            failures = [(route, r) for (route, _), r in zip(pieces, results, strict=True)
                        if isinstance(r, BaseException)]
            for route, failure in failures:
                if isinstance(failure, asyncio.CancelledError):
                    raise failure
                if isinstance(failure, ExpiredError):  # its deadline passed while it waited for the link
                    self._drop("send")
                    continue
                err = failure if isinstance(failure, ServiceError) else ComputeFailedError(
                    f"partition {self.id}: {type(failure).__name__}: {failure}", peer=self.id)
                err.request_id = job.request_id
                self.metrics.error(err.reason)
                log.warning("partition %s, request %s: %s", self.id, job.request_id, err)
                if route.target != GATEWAY:  # the gateway already knows: it refused the piece or is gone
                    await self._report(job.request_id, err)
            if not failures:
                self.timeline.mark(job.request_id, "sent")
                self.metrics.request.observe(time.monotonic() - job.first_piece_at)
        finally:
            self._sending.pop(job.request_id, None)
            self._finish(job.request_id)

    async def _send(self, rid: str, route: Route, tensor: torch.Tensor, deadline: float | None) -> None:
        assert self._sender is not None
        started = time.perf_counter()
        header = make_header(rid, tensor, route.region, self.config.stage, self.id, wire=route.wire)
        size = await self._sender.send(route.url, header, tensor, peer=route.target, delay_s=route.delay_s,
                                       deadline=deadline)
        self.metrics.send.observe(time.perf_counter() - started)
        self.metrics.bytes_out.inc(size)

    # ------------------------------------------------------------ turns

    def take_turn(self, notice: TurnNotice) -> None:
        """POST /v1/turn: the partition before this one on the device has computed a request."""
        if self.turns is None or notice.sender != self.turns.config.after:
            before = self.turns.config.after if self.turns is not None else None
            raise UnexpectedPieceError(f"partition {self.id}: {notice.sender} does not compute before it on its "
                                       f"device ({before or 'no partition does'})", peer=notice.sender)
        self.turns.passed(notice.request_id)

    def take_turn_body(self, body: bytes) -> None:
        """POST /v1/turn served on the tensor lane (`lane.Guard.notices`): the body is a `TurnNotice`."""
        try:
            notice = TurnNotice.model_validate_json(body)
        except ValidationError as err:
            raise BadRequestError(f"partition {self.id}: not a turn notice: {err.errors()[0]['msg']}") from None
        self.take_turn(notice)

    def _pass_turn(self, rid: str) -> None:
        """Tell the next partition of the device that its turn for request `rid` has come."""
        turn = self.turns.config if self.turns is not None else None
        if turn is not None and turn.next_url is not None:
            self._spawn(self._notify_turn(turn.next_url, str(turn.next), rid))

    async def _notify_turn(self, url: str, target: str, rid: str) -> None:
        if self._hop is not None:  # a kept-alive connection, served on the peer's tensor lane
            await self._notify_turn_hop(self._hop, url, target, rid)
            return
        if self._client is None:
            return
        try:
            response = await self._client.post(url + TURN_PATH, json={"request_id": rid, "sender": self.id},
                                               timeout=TURN_TIMEOUT_S, headers=internal_headers(self.secret))
            if response.status_code >= 300:
                log.warning("partition %s: %s refused its turn for request %s: %s", self.id, target, rid,
                            response.text[:200])
            else:
                self.turns_passed += 1
        except httpx.HTTPError as err:  # it computes anyway after its wait limit
            log.warning("partition %s: cannot pass the turn to %s: %s", self.id, target,
                        peer_error(err, target, url, "turn"))

    async def _notify_turn_hop(self, hop: HopClient, url: str, target: str, rid: str) -> None:
        body = TurnNotice(request_id=rid, sender=self.id).model_dump_json().encode()
        try:
            answer = await hop.post(url + TURN_PATH, [body], {"Content-Type": "application/json"}, peer=target,
                                    what="turn", peer_url=url, timeout_s=TURN_TIMEOUT_S)
        except ServiceError as err:  # it computes anyway after its wait limit
            log.warning("partition %s: cannot pass the turn to %s: %s", self.id, target, err)
            return
        if answer.status >= 300:
            log.warning("partition %s: %s refused its turn for request %s: %s", self.id, target, rid,
                        answer.content[:200].decode("utf-8", "replace"))
        else:
            self.turns_passed += 1

    async def _report(self, rid: str, err: ServiceError) -> None:
        """Tell the gateway why a request cannot finish (best effort)."""
        if self._client is None:
            return
        body = {**error_body(err), "request_id": rid, "partition": self.id}
        url = self.config.gateway_url + FAILURES_PATH
        try:
            response = await self._client.post(url, json=body, timeout=5.0, headers=internal_headers(self.secret))
            if response.status_code >= 300:
                log.warning("partition %s: the gateway refused a failure report: %s", self.id, response.text[:200])
        except httpx.HTTPError as report_err:
            log.warning("partition %s: cannot report a failure to the gateway: %s", self.id,
                        peer_error(report_err, "gateway", self.config.gateway_url, "failure report"))

    # ------------------------------------------------------------ cancels

    def cancel(self, notice: CancelNotice) -> list[str]:
        """POST /v1/cancel: the gateway gave these requests up; drop what this partition holds of them (the
        ids of those it held) and refuse their late pieces."""
        dropped = [rid for rid in notice.requests if self._cancel(rid, notice.reason)]
        if dropped:
            log.info("partition %s: dropped %d requests the gateway cancelled (%s)", self.id, len(dropped),
                     notice.reason)
        return dropped

    def _cancel(self, rid: str, reason: str) -> bool:
        """Drop request `rid`'s work wherever it is; False when nothing of it was held here."""
        if rid in self._assembler:
            self._count_cancel(self._deadlines.get(rid), "assembly", reason)
            self._give_up(rid, None)
            return True
        job = self._jobs.get(rid)
        if job is not None and job.cancelled is None:
            job.cancelled = reason
            if rid == self._computing:  # the compute runs on; its result, not sent, is counted then
                return True
            self._count_cancel(job.deadline, "compute_queue", reason)
            job.tile = job.tile.new_empty(0)  # its memory goes now, not when the worker reaches it
            return True
        sending = self._sending.get(rid)
        if sending is not None and not sending.done():
            self._count_cancel(None, "send", reason)
            sending.cancel()
            return True
        if rid not in self._completed and rid not in self._expired:  # unseen: its pieces may still come
            self._remember(self._expired, rid, ())
            self._cancelled_unseen[rid] = reason
            while len(self._cancelled_unseen) > _MEMORY:
                self._cancelled_unseen.popitem(last=False)
        return False

    def _count_cancel(self, deadline: float | None, where: str, reason: str) -> None:
        """Work dropped for a cancel counts as cancelled, unless its deadline had passed (then it is dropped)."""
        if deadline is not None and deadline <= time.monotonic():
            self._drop(where)
            return
        self.cancelled += 1
        self.metrics.cancelled(reason)

    # ------------------------------------------------------------ what it holds

    def pending(self, query: PendingQuery) -> PendingAnswer:
        """POST /v1/pending: the state of each request asked about; with `dead`, first give up the requests
        that wait for that partition's pieces (its process ended: they will not come)."""
        failed: list[str] = []
        dead = query.dead
        if dead is not None and dead != self.id and dead in self._assembler.senders:
            for rid in self._assembler.requests():
                if dead in self._assembler.missing(rid):
                    self._give_up(rid, PeerUnreachableError.reason)
                    failed.append(rid)
            if failed:
                log.warning("partition %s: gave up %d requests waiting for pieces from %s, which died: %s", self.id,
                            len(failed), dead, query.detail)
        return PendingAnswer(partition=self.id, inputs=tuple(sorted(self._assembler.senders)),
                             requests={rid: self._view(rid) for rid in query.requests}, failed=failed)

    def _view(self, rid: str) -> RequestView:
        if rid in self._assembler:
            return RequestView(state="waiting", missing=self._assembler.missing(rid))
        if rid in self._expired:
            return RequestView(state="expired", missing=self._expired[rid])
        if rid in self._completed:
            events = self.timeline.get(rid) or {}
            return RequestView(state="sent" if "sent" in events else "holding")
        return RequestView(state="unseen")

    # ------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "deployment": c.deployment, "partition": c.partition, "stage": c.stage, "device": c.device,
            "model": c.model.name, "layers": [c.start, c.stop], "first_layer": c.first_layer,
            "last_layer": c.last_layer, "input_region": str(c.input_region), "output_region": str(c.output_region),
            "inputs": [p.sender for p in c.inputs], "outputs": [r.target for r in c.outputs],
            "state": self.state, "failure": self.failure, "threads": c.threads, "kernels": kernels_in_use(),
            "assembling": len(self._assembler), "queued": self._queue.qsize(),
            "computed": self.computed, "dropped": self.dropped, "cancelled": self.cancelled,
            "turn": None if self.turns is None else {"after": self.turns.config.after, "next": self.turns.config.next,
                                                     "received": self.turns.received, "passed": self.turns_passed,
                                                     "waited_out": self.turns.waited_out},
            "compute_mean_s": self.compute_total_s / self.computed if self.computed else None,
        }


def partition_app(service: PartitionService) -> FastAPI:
    """The HTTP face of one partition (run it with one uvicorn worker)."""

    app = FastAPI(title=f"edgepart partition {service.id}", lifespan=service_lifespan(service), docs_url=None,
                  redoc_url=None, openapi_url=None)

    def count(err: ServiceError) -> None:
        service.metrics.error(err.reason)

    install_error_handlers(app, on_error=count)
    connection = service.config.connection
    app.add_middleware(BodyDeadline, limits=connection)
    app.add_middleware(InternalOnly, secret=service.secret, on_error=count)
    lane = TensorLane(TENSOR_PATH, service.config.limits, service.ingest, on_error=count, admit=service.admit,
                      budget=service.budget)
    app.state.guard = Guard(connection, lane, on_error=count, secret=service.secret,
                            notices={TURN_PATH: service.take_turn_body})

    @app.post(TENSOR_PATH, status_code=204, summary="Receive one piece of a request's input tile (tensor frame).")
    async def tensor(request: Request) -> Response:
        async with received_frame(request, service.config.limits, admit=service.admit,
                                  budget=service.budget) as frame:
            await service.ingest(frame)
        return Response(status_code=204)

    @app.post(TURN_PATH, status_code=204, summary="The partition before this one on its device has computed a "
                                                   "request (plans whose devices take turns).")
    async def turn(notice: TurnNotice) -> Response:
        service.take_turn(notice)
        return Response(status_code=204)

    @app.post(CANCEL_PATH, summary="The gateway gave these requests up: drop what this partition holds of them.")
    async def cancel(notice: CancelNotice) -> dict[str, Any]:
        return {"dropped": service.cancel(notice)}

    @app.post(PENDING_PATH, summary="What this partition holds of some requests (the gateway asks when a partition "
                                     "died or a request timed out); with `dead`, give up those that wait for it.")
    async def pending(query: PendingQuery) -> dict[str, Any]:
        return service.pending(query).model_dump()

    @app.get("/healthz", summary="Liveness: the process serves (500 once loading the slice failed).")
    async def healthz() -> JSONResponse:
        if service.state == "failed":
            return JSONResponse({"error": "internal", "detail": f"loading the slice failed: {service.failure}",
                                 "state": service.state}, status_code=500)
        return JSONResponse({"status": "ok", "state": service.state})

    @app.get("/readyz", summary="Readiness: the slice is loaded and warmed.")
    async def readyz() -> JSONResponse:
        if service.state != "ready":
            return JSONResponse({"error": "not_ready", "detail": f"partition {service.id} is {service.state}",
                                 "state": service.state, "failure": service.failure}, status_code=503)
        return JSONResponse({"status": "ready", "state": service.state})

    @app.get("/metrics", summary="Prometheus metrics.")
    async def metrics() -> Response:
        service.metrics.payload.set(service.budget.in_flight)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info", summary="What this partition computes and its state.")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/v1/timeline/{request_id}", summary="Wall-clock events of one recent request at this partition.")
    async def timeline(request_id: str) -> JSONResponse:
        events = service.timeline.get(request_id)
        if events is None:
            return JSONResponse({"error": "not_found", "detail": f"partition {service.id} has no record of request "
                                 f"{request_id[:140]!r} (not seen, or older than its last "
                                 f"{service.timeline.capacity})"}, status_code=404)
        c = service.config
        return JSONResponse({"partition": c.partition, "stage": c.stage, "device": c.device, "events": events})

    return app
