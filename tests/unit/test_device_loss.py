"""Which devices are lost after how long, and the deployment that remains without them (planner.device_loss)."""

from __future__ import annotations

import pytest

from edgepart.planner.device_loss import (
    DeviceWatch,
    LossSettings,
    NoDevicesLeftError,
    lost_devices,
    observe,
    remaining_spec,
)
from edgepart.spec import DeploymentSpec, deployment_from_dict

SETTINGS = LossSettings(timeout_s=5.0, recovery_s=2.0)
DEVICES = ("d0", "d1", "d2")


def _run(looks: list[tuple[float, set[str]]]) -> tuple[dict[str, DeviceWatch], float]:
    watches: dict[str, DeviceWatch] = {}
    for now, down in looks:
        watches = observe(watches, down, DEVICES, now, SETTINGS)
    return watches, looks[-1][0]


def test_a_device_down_without_a_break_is_lost_at_the_timeout_not_before() -> None:
    looks = [(t / 2, {"d2"}) for t in range(10)]  # 0 .. 4.5 s
    watches, now = _run(looks)
    assert lost_devices(watches, now, SETTINGS) == []
    watches = observe(watches, {"d2"}, DEVICES, 5.0, SETTINGS)
    assert lost_devices(watches, 5.0, SETTINGS) == ["d2"]


def test_a_crash_loop_briefly_up_between_restarts_keeps_its_clock() -> None:
    # up for 0.5 s after each restart, shorter than recovery_s: still down since 0
    looks = [(float(t), {"d1"} if t % 2 == 0 else set()) for t in range(7)]
    watches, now = _run(looks)
    assert watches["d1"].down_since == 0.0
    assert lost_devices(watches, now, SETTINGS) == ["d1"]


def test_a_device_up_for_recovery_s_starts_over() -> None:
    looks = [(0.0, {"d0"}), (3.0, set()), (5.0, set()), (6.0, {"d0"}), (10.0, {"d0"})]
    watches, now = _run(looks)
    assert watches["d0"].down_since == 6.0  # recovered at 5 s, down again from 6 s
    assert lost_devices(watches, now, SETTINGS) == []
    assert lost_devices(watches, 11.0, SETTINGS) == ["d0"]


def _spec(master: str | None = None, end: str | None = None) -> DeploymentSpec:
    devices = [{"name": n, **({"role": "end"} if n == end else {})} for n in DEVICES]
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "x"},
        "spec": {"model": {"name": "tinynet"}, "solver": "ftp-grid", "devices": devices,
                 **({"master": master} if master else {}),
                 "network": {"links": [{"from": "d0", "to": "d1", "latency": "3ms"},
                                       {"from": "d1", "to": "d2", "latency": "4ms"}]}}}).spec


def test_the_remaining_deployment_keeps_the_other_devices_their_links_and_the_solver() -> None:
    remaining = remaining_spec(_spec(), {"d2"})
    assert [d.name for d in remaining.spec.devices] == ["d0", "d1"]
    assert [(link.source, link.target) for link in remaining.spec.network.links] == [("d0", "d1")]
    assert remaining.spec.solver == "ftp-grid" and remaining.master == "d0" and remaining.moved_from is None


def test_a_lost_master_hands_the_input_to_the_first_remaining_device() -> None:
    remaining = remaining_spec(_spec(end="d1"), {"d1"})
    assert remaining.master == "d0" and remaining.moved_from == "d1"
    assert remaining.spec.cluster().master_name == "d0"
    assert [d.role for d in remaining.spec.devices] == [None, None]


def test_no_device_left_is_an_error_naming_them() -> None:
    with pytest.raises(NoDevicesLeftError, match="d0, d1, d2"):
        remaining_spec(_spec(), set(DEVICES))
