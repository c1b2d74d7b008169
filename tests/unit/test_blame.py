"""Blame: which requests wait on a dead partition, and which partition holds a late piece."""

from __future__ import annotations

from edgepart.partition_service.blame import PendingAnswer, RequestView, late_holders, waits_on
from edgepart.partition_service.errors import (
    PeerUnreachableError,
    RequestTimeoutError,
    ServiceError,
)


def answer(task: str, inputs: tuple[str, ...], **views: RequestView) -> PendingAnswer:
    return PendingAnswer(partition=task, inputs=inputs, requests=dict(views))


def test_the_walk_passes_the_blame_up_to_the_partition_that_holds_the_piece() -> None:
    # gateway <- t (tail) <- a, b (tiles) <- gateway; t has a's piece and waits for b, which computes
    answers: dict[str, PendingAnswer | ServiceError] = {
        "t": answer("t", ("a", "b"), r=RequestView(state="waiting", missing=("b",))),
        "a": answer("a", ("gateway",), r=RequestView(state="sent")),
        "b": answer("b", ("gateway",), r=RequestView(state="holding")),
    }
    holders = late_holders("r", ["t"], answers)
    assert [(h.task, h.why) for h in holders] == [("b", "has all its pieces and has not sent its result yet")]


def test_a_partition_that_does_not_answer_is_the_holder_and_a_diamond_names_it_once() -> None:
    stopped = RequestTimeoutError("m at http://m did not answer in time", peer="m")
    answers: dict[str, PendingAnswer | ServiceError] = {
        "x": answer("x", ("m",), r=RequestView(state="unseen")),
        "y": answer("y", ("m",), r=RequestView(state="expired", missing=("m",))),
        "m": stopped,
    }
    holders = late_holders("r", ["x", "y"], answers)
    assert [(h.task, h.error) for h in holders] == [("m", stopped)]
    # every upstream partition delivered: the waiting one holds it up itself
    answers = {"x": answer("x", ("gateway",), r=RequestView(state="unseen"))}
    assert [h.task for h in late_holders("r", ["x"], answers)] == ["x"]


def test_a_request_waits_on_a_dead_partition_only_where_its_piece_is_still_needed() -> None:
    down = PeerUnreachableError("t at http://t is unreachable", peer="t")
    answers: dict[str, PendingAnswer | ServiceError] = {
        "t": down,  # a consumer that cannot answer proves nothing
        "c": answer("c", ("d", "e"), seen=RequestView(state="waiting", missing=("e",)),
                    needs=RequestView(state="waiting", missing=("d", "e")), done=RequestView(state="holding")),
        "other": answer("other", ("e",)),  # does not read from d
    }
    assert waits_on("d", "unseen", answers)  # c has no piece of it: d still holds it
    assert waits_on("d", "needs", answers)
    assert not waits_on("d", "seen", answers)  # c has d's piece already
    assert not waits_on("d", "done", answers)
