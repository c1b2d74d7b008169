"""The testbed benchmarks' host calibration: quota factors (free core at its fastest, clamped at 1), the
load warning, and the devices it costs (fakes stand in for the root-only measurements)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgepart.errors import EdgepartError
from edgepart.graph.loader import ModelRef
from edgepart.runtime import calibrate
from edgepart.runtime.calibrate import HostCalibration, calibrate_host, with_host_calibration
from edgepart.spec import DNNDeployment, deployment_from_dict


def _deployment(devices: list[dict[str, Any]]) -> DNNDeployment:
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "cal"},
        "spec": {"model": {"name": "alexnet"}, "devices": devices},
    })


def _calibration(tmp_path: Path, load: float = 0.5) -> HostCalibration:
    return HostCalibration(tmp_path / "host.json", {0.2: 0.5, 1.0: 1.0}, {0.2: 0.002, 1.0: 0.001}, load, 2)


def test_devices_get_the_host_profile_at_their_quotas_share(tmp_path: Path) -> None:
    deployment = with_host_calibration(_deployment([
        {"name": "end", "cpus": 0.2}, {"name": "server", "cpus": 1.0},
        {"name": "own", "cpus": 0.2, "speed": 3.0, "messageCost": "1ms"}, {"name": "bare"},
    ]), _calibration(tmp_path))
    end, server, own, bare = deployment.spec.devices
    assert (end.profile, end.speed, end.message_cost) == (str(tmp_path / "host.json"), 0.1, "10ms")
    assert (server.profile, server.speed, server.message_cost) == (str(tmp_path / "host.json"), 1.0, "1ms")
    assert (own.profile, own.speed, own.message_cost) == (None, 3.0, "1ms")  # its own figures stay
    assert (bare.profile, bare.speed, bare.message_cost) == (None, None, None)  # no quota: not emulated


def test_a_quota_not_calibrated_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgepartError, match=r"0\.3 CPU was not calibrated"):
        with_host_calibration(_deployment([{"name": "d", "cpus": 0.3}]), _calibration(tmp_path))


def test_a_loaded_host_is_named_in_the_summary(tmp_path: Path) -> None:
    assert _calibration(tmp_path, load=1.5).summary()["warning"] is None
    loaded = _calibration(tmp_path, load=6.0).summary()
    assert loaded["load_average"] == 6.0 and "6.0 exceeds its 2 cores" in loaded["warning"]


def test_the_free_core_is_timed_at_its_fastest_and_the_factor_clamped(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float | None, bool]] = []

    def speed(ref: ModelRef, model: object, repeats: int = 5, cpus: float | None = None, *,
              exact_kernels: bool = False, fastest: bool = False) -> float:
        calls.append((cpus, fastest))
        return {None: 1.0, 0.2: 0.6, 0.8: 2.9}[cpus]  # 0.8: a free core timed under load looked slower

    async def message(cpus: float, *, requests: int = 12, gap_s: float = 0.5, root: Path | None = None) -> float:
        return cpus / 100

    monkeypatch.setattr(calibrate, "host_profile", lambda models, path: path)
    monkeypatch.setattr(calibrate, "load_model", lambda ref: object())
    monkeypatch.setattr(calibrate, "per_core_speed", speed)
    monkeypatch.setattr(calibrate, "message_cpu", message)
    monkeypatch.setattr(calibrate.os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    monkeypatch.setattr(calibrate.os, "cpu_count", lambda: 2)
    result = asyncio.run(calibrate_host([ModelRef("alexnet")], [0.8, 0.2, 0.2], tmp_path, repeats=3))
    assert calls == [(None, True), (0.2, False), (0.8, False)]
    assert result.quota_factor == {0.2: 0.6, 0.8: 1.0}
    assert result.summary()["measured_factor"] == {"0.2": 0.6, "0.8": 2.9}
    assert result.message_cpu_s == {0.2: 0.002, 0.8: 0.008}
    assert result.load_average == 6.0 and result.warning is not None
