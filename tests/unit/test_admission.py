"""Admission at the gateway: a bound from the measured service time (Little's law), on a fake clock."""

from __future__ import annotations

import pytest
import torch

from edgepart.geometry import Region
from edgepart.partition_service.admission import AdmissionController, AdmissionSettings
from edgepart.partition_service.errors import AdmissionError
from edgepart.partition_service.wire import decode_frame, frame_bytes, make_header
from edgepart.spec import SpecError, deployment_from_dict


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def busy_answers(controller: AdmissionController, clock: FakeClock, interval_s: float, count: int) -> None:
    """`count` answers `interval_s` apart while others stay in flight (the pipeline is busy)."""
    for _ in range(count + 1):
        assert controller.try_admit() is None
    for _ in range(count):
        clock.now += interval_s
        controller.done(answered=True)
    clock.now += interval_s
    controller.done(answered=True)


def test_unmeasured_the_hard_cap_alone_bounds_admission() -> None:
    controller = AdmissionController(AdmissionSettings(timeout_s=20.0, hard_cap=3), clock=FakeClock())
    assert [controller.try_admit() is None for _ in range(4)] == [True, True, True, False]
    assert controller.service_s is None and controller.bound == 3
    assert (controller.admitted, controller.rejected, controller.inflight) == (3, 1, 3)


def test_the_bound_is_what_finishes_within_the_timeout() -> None:
    clock = FakeClock()
    controller = AdmissionController(AdmissionSettings(timeout_s=20.0, target_fraction=0.5), clock=clock)
    busy_answers(controller, clock, 0.25, 5)
    assert controller.service_s == pytest.approx(0.25)
    assert controller.bound == 40  # 0.5 * 20 s / 0.25 s
    admitted = sum(controller.try_admit() is None for _ in range(50))
    assert admitted == 40 and controller.rejected == 10
    refusal = controller.try_admit()
    assert refusal is not None and refusal.bound == 40 and refusal.inflight == 40
    assert refusal.retry_after_s == 1  # one answer (0.25 s) frees a place; never less than 1 s
    assert "answers one every 250 ms" in refusal.detail(20.0) and "at most 40" in refusal.detail(20.0)


def test_idle_gaps_are_not_service_time_samples() -> None:
    clock = FakeClock()
    controller = AdmissionController(AdmissionSettings(timeout_s=10.0), clock=clock)
    for _ in range(5):  # one request at a time, 3 s apart: the pipeline idles between them
        assert controller.try_admit() is None
        clock.now += 3.0
        controller.done(answered=True)
    assert controller.service_s is None
    busy_answers(controller, clock, 0.5, 3)
    assert controller.service_s == pytest.approx(0.5) and controller.bound == 10


def test_failed_requests_free_their_place_but_measure_nothing() -> None:
    clock = FakeClock()
    controller = AdmissionController(AdmissionSettings(timeout_s=10.0, hard_cap=2), clock=clock)
    assert controller.try_admit() is None and controller.try_admit() is None
    clock.now += 5.0
    controller.done(answered=False)
    controller.done(answered=False)
    assert controller.inflight == 0 and controller.service_s is None
    assert controller.try_admit() is None


def test_the_estimate_follows_a_slower_pipeline_and_retry_after_grows() -> None:
    clock = FakeClock()
    controller = AdmissionController(AdmissionSettings(timeout_s=10.0, ewma_alpha=0.5), clock=clock)
    busy_answers(controller, clock, 0.1, 3)
    fast = controller.bound
    busy_answers(controller, clock, 2.0, 6)
    assert controller.bound < fast and controller.bound == 2  # 0.5 * 10 s / ~2 s
    assert controller.try_admit() is None and controller.try_admit() is None
    refusal = controller.try_admit()
    assert refusal is not None and refusal.retry_after_s == 2


def test_off_never_refuses() -> None:
    controller = AdmissionController(AdmissionSettings(timeout_s=1.0, hard_cap=1, mode="off"), clock=FakeClock())
    assert all(controller.try_admit() is None for _ in range(5)) and controller.rejected == 0


@pytest.mark.parametrize(("field", "kwargs"), [
    ("timeout_s", {"timeout_s": 0.0}), ("target_fraction", {"target_fraction": 1.5}),
    ("ewma_alpha", {"ewma_alpha": 0.0}), ("hard_cap", {"hard_cap": 0}), ("mode", {"mode": "sometimes"}),
])
def test_bad_settings_name_the_field(field: str, kwargs: dict[str, object]) -> None:
    settings = {"timeout_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match=field):
        AdmissionSettings(**settings)  # type: ignore[arg-type]


def test_admission_error_carries_retry_after() -> None:
    err = AdmissionError("full", retry_after_s=7)
    assert err.status == 503 and err.reason == "admission_limit" and err.retry_after_s == 7


def test_frames_carry_the_remaining_budget() -> None:
    tensor = torch.zeros((1, 2, 3, 3))
    header = make_header("r1", tensor, Region.full((2, 3, 3)), 0, "s0p0", budget_s=1.25)
    decoded = decode_frame(frame_bytes(header, tensor))
    assert decoded.header.budget_s == 1.25
    assert decode_frame(frame_bytes(make_header("r1", tensor, Region.full((2, 3, 3)), 0, "s0p0"),
                                    tensor)).header.budget_s is None


def test_spec_admission_is_auto_or_off() -> None:
    def spec(admission: str | None) -> dict[str, object]:
        body: dict[str, object] = {"model": {"name": "squeezenet1_1"}, "devices": [{"name": "d0"}]}
        if admission is not None:
            body["admission"] = admission
        return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "x"},
                "spec": body}

    assert deployment_from_dict(spec(None)).spec.admission == "auto"
    assert deployment_from_dict(spec("off")).spec.admission == "off"
    with pytest.raises(SpecError, match=r"spec\.admission"):
        deployment_from_dict(spec("sometimes"))
