"""Payload memory: a per-process cap on bytes in flight, and buffers that give their memory back.

A frame's payload is allocated once its header is validated (and, on a partition, known to be a piece it
expects), before its bytes arrive. Without a cap, a few connections that each declare a large piece and
then stall hold that memory for as long as they are open. Every payload buffer is reserved here first;
beyond the cap the receiver answers 503 before allocating.

Where the memory comes from matters too. The services keep the C heap warm for compute
(`profiler.microbench.partition_allocator`: no mmap'ed chunks, no trimming below 1 GiB), so a freed heap
buffer stays mapped for good. Payloads of `MMAP_PAYLOAD_BYTES` and more are therefore their own anonymous
mappings (unmapped when the tensor is freed; pages appear only as bytes arrive), and after a burst of
payload memory the heap is trimmed once the burst is over.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys
from dataclasses import dataclass, field

from edgepart.partition_service.errors import MemoryBudgetError

__all__ = ["MMAP_PAYLOAD_BYTES", "PayloadBudget", "Reservation", "payload_buffer"]

MMAP_PAYLOAD_BYTES = 16 * 1024 * 1024  # smaller payloads come from the warm heap (bounded by the budget)
TRIM_AFTER_BYTES = 64 * 1024 * 1024  # a burst this large is handed back to the kernel once it is over


def payload_buffer(nbytes: int) -> bytearray | mmap.mmap:
    """A zeroed, writable buffer for a payload: its own mapping when large, so freeing it unmaps it."""
    if nbytes >= MMAP_PAYLOAD_BYTES:
        return mmap.mmap(-1, nbytes)
    return bytearray(nbytes)


def _malloc_trim() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


@dataclass
class Reservation:
    """Bytes held against a budget until `release()` (idempotent)."""

    budget: PayloadBudget | None
    nbytes: int

    def release(self) -> None:
        if self.budget is not None:
            budget, self.budget = self.budget, None
            budget.release(self.nbytes)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class PayloadBudget:
    """Payload bytes a process may hold at once, received but not yet handed on (one per process)."""

    limit: int
    in_flight: int = 0
    peak: int = 0  # since the last trim
    refused: int = 0
    trims: int = 0
    _trim_after: int = field(default=TRIM_AFTER_BYTES, repr=False)

    def reserve(self, nbytes: int, what: str = "a payload") -> Reservation:
        if self.in_flight + nbytes > self.limit:
            self.refused += 1
            raise MemoryBudgetError(f"{what} of {nbytes} bytes would take the payload memory in flight over its "
                                    f"cap of {self.limit} bytes ({self.in_flight} held); try again later")
        self.in_flight += nbytes
        self.peak = max(self.peak, self.in_flight)
        return Reservation(self, nbytes)

    def release(self, nbytes: int) -> None:
        self.in_flight -= nbytes
        if self.in_flight == 0 and self.peak >= self._trim_after:
            self.peak = 0
            self.trims += 1
            _malloc_trim()
