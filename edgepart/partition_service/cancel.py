"""Cancelling requests the gateway has failed or abandoned, so the partitions stop spending on them.

When the gateway answers a request with an error (a timeout, a dead or silent partition, a failure a
partition reported) or abandons it (its handler is cancelled: the client went away, the gateway stops),
it posts `POST /v1/cancel` (`CancelNotice`, secret-checked like every internal route) to every partition it
believes up. Cancels raised in one burst go out in one notice per partition (`Canceller`).

A partition that gets a notice drops what it holds of each request: a partial assembly (its slot is freed),
a tile waiting for compute (never computed), the result of a compute in progress (never sent), pieces being
sent (the sends are cancelled); and it refuses the request's late pieces. `edgepart_requests_cancelled_total
{reason}` counts, on the gateway, the requests it cancelled and, on a partition, the requests whose work it
dropped for a cancel; work whose deadline had passed already counts as `edgepart_dropped_total` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CANCEL_PATH", "CancelNotice", "Canceller"]

log = logging.getLogger("edgepart.cancel")

CANCEL_PATH = "/v1/cancel"
_BATCH = 4096  # request ids in one notice


class CancelNotice(BaseModel):
    """What the gateway posts to a partition's /v1/cancel."""

    model_config = ConfigDict(extra="forbid")
    requests: list[str] = Field(min_length=1, max_length=_BATCH, description="Pipeline request ids to drop.")
    reason: str = Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$",
                        description="Why the gateway gave them up (the error's reason, or `abandoned`).")


Send = Callable[[CancelNotice], Awaitable[None]]


class Canceller:
    """Gathers the cancels of one burst (one loop turn) into one notice per reason, sent by `send`."""

    def __init__(self, send: Send):
        self._send = send
        self._waiting: dict[str, list[str]] = {}  # reason -> request ids
        self._tasks: set[asyncio.Task[None]] = set()

    def cancel(self, request_id: str, reason: str) -> None:
        batch = self._waiting.setdefault(reason, [])
        batch.append(request_id)
        if len(self._waiting) == 1 and len(batch) == 1:  # the first of a burst: flush after this loop turn
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        await asyncio.sleep(0)
        waiting, self._waiting = self._waiting, {}
        notices = [CancelNotice(requests=ids[i:i + _BATCH], reason=reason)
                   for reason, ids in waiting.items() for i in range(0, len(ids), _BATCH)]
        for notice in notices:
            try:
                await self._send(notice)
            except Exception:  # best effort: the partitions' own deadlines drop the work anyway
                log.exception("cancelling %d requests", len(notice.requests))

    async def aclose(self) -> None:
        """Wait for the notices in flight (each send has its own short timeout)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
