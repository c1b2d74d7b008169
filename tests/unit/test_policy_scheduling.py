"""The MS-MDI, AR-MDI and Local decisions: routing of arrivals, the backpressure pick, ties, strict mode, stale views."""

from __future__ import annotations

import math

import pytest

from edgepart.policy.errors import PolicyError
from edgepart.policy.scheduling import (
    ArMdi,
    ArrivalView,
    Decision,
    DecisionSettings,
    Local,
    MsMdi,
    Report,
    SourceQueue,
    WorkerView,
    make_policy,
)


def queue(source: str, length: int, down: int | None = 0, age: float = 0.0, wait: float = 0.0,
          blocked: bool = False, task_s: float | None = None) -> SourceQueue:
    return SourceQueue(source, length, wait, None if down is None else Report(down, age), blocked, task_s)


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize(("local", "first_hop", "route"), [(0, 0, "local"), (3, 3, "local"), (2, 1, "mdi"),
                                                            (1, 2, "local")])
def test_ms_mdi_routes_an_arrival_to_the_shorter_queue_ties_local(local: int, first_hop: int, route: str) -> None:
    assert MsMdi().route(ArrivalView(local, Report(first_hop))) == route


def test_baselines_route_one_way() -> None:
    view = ArrivalView(100, Report(0))
    assert ArMdi().route(view) == "mdi"
    assert Local().route(ArrivalView(0, Report(100))) == "local"


# ------------------------------------------------------------------ the backpressure pick


def test_picks_the_largest_backpressure_weight() -> None:
    view = WorkerView(local=3, queues=(queue("a", 9, down=4), queue("b", 6, down=0)))
    assert MsMdi().pick(view) == Decision("b", 6.0)  # 9 − 4 = 5 < 6 − 0 = 6 > LOCAL 3


def test_the_downstream_term_is_zero_where_the_worker_runs_the_last_layers() -> None:
    view = WorkerView(local=None, queues=(queue("a", 2, down=None), queue("b", 5, down=4)))
    assert MsMdi().pick(view) == Decision("a", 2.0)


def test_ties_go_to_local_first_then_the_longer_wait_then_source_order() -> None:
    assert MsMdi().pick(WorkerView(4, (queue("a", 4, down=0),))) == Decision(None, 4.0)
    waits = WorkerView(None, (queue("a", 3, down=1, wait=0.1), queue("b", 2, down=0, wait=0.5)))
    assert MsMdi().pick(waits) == Decision("b", 2.0)
    same = WorkerView(None, (queue("a", 3, down=1, wait=0.5), queue("b", 2, down=0, wait=0.5)))
    assert MsMdi().pick(same) == Decision("a", 2.0)


def test_a_worker_that_is_not_a_source_has_no_local_option() -> None:
    assert MsMdi().pick(WorkerView(None, (queue("a", 0),))) is None
    assert Local().pick(WorkerView(None, ())) is None


def test_without_strict_backpressure_negative_weights_are_served() -> None:
    view = WorkerView(None, (queue("a", 1, down=5),))
    assert MsMdi().pick(view) == Decision("a", -4.0)


def test_strict_backpressure_serves_only_positive_weights() -> None:
    strict = MsMdi(DecisionSettings(strict=True))
    assert strict.pick(WorkerView(None, (queue("a", 2, down=2),))) is None  # weight 0
    assert strict.pick(WorkerView(None, (queue("a", 3, down=2),))) == Decision("a", 1.0)
    assert strict.pick(WorkerView(1, (queue("a", 2, down=5),))) == Decision(None, 1.0)


def test_stale_reports_rank_below_fresh_ones() -> None:
    fresh_only = DecisionSettings(max_report_age_s=1.0)
    # a's neighbour reported 0 two seconds ago: not trusted, so b (weight 1) goes first
    view = WorkerView(None, (queue("a", 8, down=0, age=2.0), queue("b", 3, down=2, age=0.2)))
    assert MsMdi(fresh_only).pick(view) == Decision("b", 1.0)
    assert MsMdi().pick(view) == Decision("a", 8.0)  # without a limit the old report counts
    only_stale = WorkerView(None, (queue("a", 8, down=0, age=2.0),))
    assert MsMdi(fresh_only).pick(only_stale) == Decision("a", -math.inf)  # nothing else to do
    assert MsMdi(DecisionSettings(strict=True, max_report_age_s=1.0)).pick(only_stale) is None


def test_a_blocked_queue_is_not_served() -> None:
    view = WorkerView(None, (queue("a", 9, down=0, blocked=True), queue("b", 1, down=0)))
    assert MsMdi().pick(view) == Decision("b", 1.0)
    assert ArMdi().pick(WorkerView(None, (queue("a", 9, blocked=True),))) is None


def test_rate_weights_divide_by_the_seconds_each_task_takes_here() -> None:
    rate = MsMdi(DecisionSettings(weights="rate"))
    # LOCAL: 4 images of 2 s (weight 2/s); a: (5 − 1) images of 0.5 s here (8/s)
    view = WorkerView(4, (queue("a", 5, down=1, task_s=0.5),), local_task_s=2.0)
    assert rate.pick(view) == Decision("a", 8.0)
    assert MsMdi().pick(view) == Decision(None, 4.0)


# ------------------------------------------------------------------ baselines


def test_ar_mdi_serves_first_come_first_served_across_sources() -> None:
    view = WorkerView(None, (queue("a", 9, wait=0.1), queue("b", 1, wait=0.7), queue("c", 0, wait=0.0)))
    assert ArMdi().pick(view) == Decision("b", 1.0)
    assert ArMdi().pick(WorkerView(None, (queue("a", 0),))) is None


def test_local_serves_only_the_local_queue() -> None:
    assert Local().pick(WorkerView(2, (queue("a", 9),))) == Decision(None, 2.0)
    assert Local().pick(WorkerView(0, (queue("a", 9),))) is None


def test_make_policy_names_the_known_schedulers() -> None:
    assert make_policy("ms-mdi", DecisionSettings(strict=True)) == MsMdi(DecisionSettings(strict=True))
    assert make_policy("ar-mdi").name == "ar-mdi"
    assert make_policy("local").name == "local"
    with pytest.raises(PolicyError, match=r"scheduler: expected one of \['ms-mdi', 'ar-mdi', 'local'\], got 'fifo'"):
        make_policy("fifo")
    with pytest.raises(PolicyError, match="max_report_age_s"):
        DecisionSettings(max_report_age_s=0.0)
