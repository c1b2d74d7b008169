"""Turns: the partitions of one device compute one after another, in the plan's priority order.

A plan whose `meta.turns` is ``"priority"`` (the partial-offloading solvers `mw`, `nfl`, `offload-bf`)
describes a device that runs its tasks one at a time, in priority order: the end device computes its
paths one after another in the order S and sends each cut activation as soon as it is ready, while the
uplink and the server work on the paths before it. Partitions are separate processes, so left alone
they would all compute at once and share the device's CPU, every path finishing late. So each device's
compute tasks form a chain (`device_turns`), and a partition computes a request only once the partition
before it in the chain has computed that request:

- when a partition has computed a request (or failed to), it tells the next one in its chain:
  ``POST /v1/turn`` ``{"request_id": ..., "sender": <its id>}`` on the next partition's port, with the
  deployment's secret like every internal request (401 without it; 422 from a sender that is not the
  partition before it). The call goes over the process's kept-alive hop client and the receiver serves it
  on its tensor lane, below ASGI (`lane.Guard.notices`): a turn costs about what a small local message does
  (the cost model charges it so), not a new connection and a FastAPI request each (40-60 ms on a device
  with a fifth of a core);
- a partition with a predecessor waits for that call before computing the request, at most `wait_s`
  (min(2 s, a quarter of the request timeout)): then it computes anyway, so a lost call, or a request
  its predecessor never sees, delays it by at most that much and never deadlocks the device.

Calls that arrive before the request's pieces are remembered (the last `capacity` request ids).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgepart.plan import TURNS_PRIORITY, Plan, device_turns

__all__ = ["TURNS_PRIORITY", "TURN_PATH", "TurnConfig", "TurnNotice", "Turnstile", "device_turns", "turn_wait_s"]

TURN_PATH = "/v1/turn"
MAX_WAIT_S = 2.0

PartId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class TurnConfig(BaseModel):
    """Where a partition stands in its device's chain of turns (partition config field `turn`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: PartId | None = Field(default=None, description="The partition that computes each request before "
                                                           "this one on the device (None: the first).")
    next: PartId | None = Field(default=None, description="The partition to tell when this one has computed "
                                                          "a request (None: the last).")
    next_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$",
                                 description="Base URL of `next`.")
    wait_s: float = Field(default=MAX_WAIT_S, gt=0, le=60, description="Longest wait for the turn; then the "
                                                                       "partition computes anyway.")


class TurnNotice(BaseModel):
    """The body of POST /v1/turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=128)
    sender: PartId


def turn_wait_s(request_timeout_s: float) -> float:
    return min(MAX_WAIT_S, request_timeout_s / 4)


def turn_configs(plan: Plan, urls: Mapping[str, str], request_timeout_s: float) -> dict[str, TurnConfig]:
    """The `turn` field of every partition config of `plan` (tasks with no turns to take get none)."""
    wait = turn_wait_s(request_timeout_s)
    return {tid: TurnConfig(after=before, next=after, next_url=urls[after].rstrip("/") if after else None,
                            wait_s=wait)
            for tid, (before, after) in device_turns(plan).items()}


class Turnstile:
    """A partition's side of the chain: the requests whose turn has come (its predecessor told it)."""

    def __init__(self, config: TurnConfig, capacity: int = 4096):
        self.config = config
        self.capacity = capacity
        self._turns: OrderedDict[str, asyncio.Event] = OrderedDict()
        self.waited_out = 0  # turns that never came within wait_s
        self.received = 0  # turn notices from the predecessor

    def _event(self, request_id: str) -> asyncio.Event:
        event = self._turns.get(request_id)
        if event is None:
            event = self._turns[request_id] = asyncio.Event()
            while len(self._turns) > self.capacity:
                self._turns.popitem(last=False)
        return event

    def passed(self, request_id: str) -> None:
        """The predecessor has computed `request_id`: its turn has come here."""
        self.received += 1
        self._event(request_id).set()

    async def wait(self, request_id: str) -> float:
        """Until `request_id`'s turn has come (at most `wait_s`); the seconds waited."""
        if self.config.after is None:
            return 0.0
        started = time.monotonic()
        event = self._event(request_id)
        try:
            await asyncio.wait_for(event.wait(), self.config.wait_s)
        except TimeoutError:
            self.waited_out += 1
        self._turns.pop(request_id, None)
        return time.monotonic() - started
