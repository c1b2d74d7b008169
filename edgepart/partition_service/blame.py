"""Who holds a request up: what each partition says of its requests, and the walk that names the culprit.

Every partition answers `POST /v1/pending` with the state of the requests it is asked about
(`RequestView`): `unseen` (no piece yet), `waiting` (some pieces in, `missing` the rest), `holding` (all
pieces in: queued, computing or sending), `sent` (its pieces delivered) or `expired` (it gave up, `missing`
what it still waited for). Given `dead`, it first gives up the requests that wait for pieces from that
partition (its process ended: they will not come).

The gateway uses the answers twice:

- a partition died (`watch.py`): a request waits on it when the gateway misses its piece, or when one of
  its consumers has not seen the request or still misses its piece (`waits_on`);
- a request timed out: starting from the pieces the gateway misses, walk up the task graph through the
  partitions that still wait, to the ones that hold the late piece (`late_holders`): those the 504 names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepart.partition_service.config import GATEWAY
from edgepart.partition_service.errors import ServiceError

__all__ = ["PENDING_PATH", "Holder", "PendingAnswer", "PendingQuery", "RequestView", "late_holders", "waits_on"]

PENDING_PATH = "/v1/pending"

RequestState = Literal["unseen", "waiting", "holding", "sent", "expired"]


class RequestView(BaseModel):
    """One request at one partition."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    state: RequestState
    missing: tuple[str, ...] = Field(default=(), description="Senders whose pieces it waits for (waiting, "
                                                             "expired).")


class PendingQuery(BaseModel):
    """What the gateway asks a partition (POST /v1/pending)."""

    model_config = ConfigDict(extra="forbid")
    requests: list[str] = Field(max_length=4096, description="Pipeline request ids to describe.")
    dead: str | None = Field(default=None, description="A partition whose process ended: give up the requests "
                                                       "that wait for its pieces.")
    detail: str = Field(default="", max_length=1000, description="Why it is dead (for the log and the metrics).")


class PendingAnswer(BaseModel):
    """A partition's answer: its input senders, the requests asked about, those it gave up for `dead`."""

    model_config = ConfigDict(extra="ignore")
    partition: str
    inputs: tuple[str, ...]
    requests: dict[str, RequestView]
    failed: list[str] = Field(default_factory=list)


def waits_on(dead: str, request_id: str, answers: Mapping[str, PendingAnswer | ServiceError]) -> bool:
    """True when one of `dead`'s consumers still needs its piece of the request (it has not seen the request,
    or misses that piece); the gateway's own pieces are checked by the gateway."""
    for answer in answers.values():
        if isinstance(answer, ServiceError) or dead not in answer.inputs:
            continue
        view = answer.requests.get(request_id, RequestView(state="unseen"))
        if view.state == "unseen" or (view.state in ("waiting", "expired") and dead in view.missing):
            return True
    return False


@dataclass(frozen=True)
class Holder:
    """A partition that holds a late piece: `why` says what it does; `error` when it did not answer."""

    task: str
    why: str
    error: ServiceError | None = None


_DOING = {"holding": "has all its pieces and has not sent its result yet",
          "sent": "sent its result, which has not arrived"}


def late_holders(request_id: str, missing: Sequence[str],
                 answers: Mapping[str, PendingAnswer | ServiceError]) -> list[Holder]:
    """The partitions that hold up request `request_id`, whose output misses the pieces of `missing`.

    A partition that waits for pieces passes the blame to the senders it waits for; one that has its pieces
    (or did not answer) is a holder. A partition whose upstream all delivered is a holder itself."""
    holders: list[Holder] = []
    seen: set[str] = set()

    def visit(task: str) -> None:
        if task == GATEWAY or task in seen:
            return
        seen.add(task)
        answer = answers.get(task)
        if answer is None:
            holders.append(Holder(task, "not asked"))
            return
        if isinstance(answer, ServiceError):
            holders.append(Holder(task, answer.detail, answer))
            return
        view = answer.requests.get(request_id, RequestView(state="unseen"))
        if view.state in _DOING:
            holders.append(Holder(task, _DOING[view.state]))
            return
        upstream = view.missing if view.state in ("waiting", "expired") else answer.inputs
        before = len(holders)
        shared = any(sender in seen for sender in upstream)  # visited already: it holds, or passed the blame on
        for sender in upstream:
            visit(sender)
        if len(holders) == before and not shared:
            senders = [s for s in upstream if s != GATEWAY]
            what = f"waits for pieces from {', '.join(senders)}" if senders else "has not received its input"
            holders.append(Holder(task, what))

    for task in missing:
        visit(task)
    return holders
