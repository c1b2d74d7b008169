"""Per-request timelines: when each piece arrived, each compute ran and each send finished, in wall-clock time.

Every partition (and the gateway) keeps the events of its most recent requests in a bounded map;
`GET /v1/timeline/{request_id}` returns one partition's, and the gateway's `GET /v1/trace/{request_id}`
collects them all, so one request can be followed across processes (or pods on one node: the clocks
must agree, which they do on one host and to NTP accuracy across hosts).
"""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["GATEWAY_EVENTS", "PARTITION_EVENTS", "Timeline"]

# in the order they happen
PARTITION_EVENTS = ("first_piece", "assembled", "compute_start", "compute_end", "sent")
GATEWAY_EVENTS = ("received", "scattered", "output")


class Timeline:
    """Wall-clock events (seconds since the epoch) of the last `capacity` requests."""

    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._events: OrderedDict[str, dict[str, float]] = OrderedDict()

    def mark(self, request_id: str, event: str, at: float | None = None) -> None:
        """Record `event` (the first time only: a retried send does not move it)."""
        events = self._events.get(request_id)
        if events is None:
            events = self._events[request_id] = {}
            while len(self._events) > self.capacity:
                self._events.popitem(last=False)
        events.setdefault(event, time.time() if at is None else at)

    def get(self, request_id: str) -> dict[str, float] | None:
        events = self._events.get(request_id)
        return dict(events) if events is not None else None

    def __len__(self) -> int:
        return len(self._events)
