"""Admission at the gateway: take a request only when the deployment can answer it within its deadline.

Pure and synchronous (a clock is injected). Little's law: with `n` requests admitted and not answered and
the pipeline completing one every `b` seconds (its bottleneck's service time), a new request waits about
`(n + 1) * b` before its answer. The controller admits while that fits `target_fraction` of the request
timeout, so answered requests keep a margin below the timeout, and refuses the rest at once (503 with
Retry-After) instead of queueing work its client will have given up on.

`b` is an EWMA of the intervals between successive answers measured while the pipeline stayed busy (another
request still in flight at the previous answer): then answers leave at the bottleneck's pace. Until the first
such interval is measured, nothing but the hard cap limits admission.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AdmissionController", "AdmissionMode", "AdmissionSettings", "Refusal"]

AdmissionMode = Literal["auto", "off"]


@dataclass(frozen=True)
class AdmissionSettings:
    timeout_s: float
    """The request timeout: an answer later than this is worthless to the client."""
    target_fraction: float = 0.5
    """Share of the timeout a request admitted now is predicted to take, at most (margin for jitter)."""
    ewma_alpha: float = 0.2
    """Weight of the newest service-time sample."""
    hard_cap: int = 1 << 30
    """Never more than this many admitted at once, measured or not (the gateway's slots + queue)."""
    mode: AdmissionMode = "auto"
    """auto: the measured bound (and the hard cap); off: never refuse here (the caller's own limits apply)."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: {self.timeout_s} must be positive")
        if not 0 < self.target_fraction <= 1:
            raise ValueError(f"target_fraction: {self.target_fraction} must be in (0, 1]")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha: {self.ewma_alpha} must be in (0, 1]")
        if self.hard_cap < 1:
            raise ValueError(f"hard_cap: {self.hard_cap} must be at least 1")
        if self.mode not in ("auto", "off"):
            raise ValueError(f"mode: {self.mode!r} must be 'auto' or 'off'")


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, and when to try again."""

    inflight: int
    bound: int
    service_s: float | None
    retry_after_s: int

    def detail(self, timeout_s: float) -> str:
        if self.service_s is None:
            return (f"overloaded: {self.inflight} requests in flight, the limit is {self.bound}; retry in "
                    f"{self.retry_after_s} s")
        return (f"overloaded: {self.inflight} requests in flight, the deployment answers one every "
                f"{self.service_s * 1000:.0f} ms, so it can finish at most {self.bound} within the {timeout_s:g} s "
                f"timeout; retry in {self.retry_after_s} s")


@dataclass
class AdmissionController:
    """Counts admitted requests and decides on each new one."""

    settings: AdmissionSettings
    clock: Callable[[], float] = time.monotonic
    inflight: int = 0
    admitted: int = 0
    rejected: int = 0
    service_s: float | None = None
    _last_answer: float | None = field(default=None, repr=False)
    _busy_at_last_answer: bool = field(default=False, repr=False)

    @property
    def bound(self) -> int:
        """How many requests may be admitted at once now."""
        s = self.settings
        if s.mode == "off" or self.service_s is None or self.service_s <= 0:
            return s.hard_cap
        return max(1, min(s.hard_cap, math.floor(s.target_fraction * s.timeout_s / self.service_s)))

    def try_admit(self) -> Refusal | None:
        """Admit one request (None) or say why not; an admitted request must end with `done`."""
        refusal = self.refusal()
        if refusal is not None:
            self.rejected += 1
            return refusal
        self.inflight += 1
        self.admitted += 1
        return None

    def refusal(self) -> Refusal | None:
        """What `try_admit` would answer now, without admitting (a check before reading a body)."""
        bound = self.bound
        if self.settings.mode == "off" or self.inflight < bound:
            return None
        service = self.service_s
        wait = (self.inflight - bound + 1) * service if service else 1.0  # until enough answers leave
        return Refusal(self.inflight, bound, service, max(1, math.ceil(wait)))

    def done(self, answered: bool) -> None:
        """An admitted request ended; `answered`: with its output (a service-time sample when busy)."""
        self.inflight -= 1
        if not answered:
            return
        now = self.clock()
        if self._last_answer is not None and self._busy_at_last_answer:
            sample = now - self._last_answer
            alpha = self.settings.ewma_alpha
            self.service_s = sample if self.service_s is None else alpha * sample + (1 - alpha) * self.service_s
        self._last_answer = now
        self._busy_at_last_answer = self.inflight > 0
