"""`up --emulate`'s device calibration: the cache (keys, hits, misses, corrupt files, atomic writes) and the
deployment the planner then sees (a fake measurement stands in for the real, root-only one)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from edgepart.graph.loader import ModelRef
from edgepart.runtime import calibration_cache
from edgepart.runtime.calibration_cache import (
    CacheKey,
    CalibrationCache,
    HostIdentity,
    default_cache_path,
)
from edgepart.runtime.device_calibration import CalibrationSettings, calibrate_devices
from edgepart.runtime.planning import plan_deployment, with_cpu_speeds
from edgepart.spec import DNNDeployment, deployment_from_dict

HOST = HostIdentity("edge-host", "Example CPU @ 2.0GHz", 2, "2.5.0")
TINY = str(Path(__file__).parents[2] / "examples" / "models" / "tinynet.py") + ":build"


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


class FakeMeasure:
    """Speeds and message costs by quota, counting what it was asked to measure."""

    def __init__(self, speeds: dict[float, float], messages: dict[float, float]) -> None:
        self.speeds, self.messages = speeds, messages
        self.calls: list[tuple[str, float]] = []

    def speed(self, ref: ModelRef, cpus: float) -> float:
        self.calls.append(("speed", cpus))
        return self.speeds[cpus]

    async def message(self, cpus: float) -> float:
        self.calls.append(("message", cpus))
        return self.messages[cpus]


def _deployment(devices: list[dict[str, object]], solver: str = "ftp-grid") -> DNNDeployment:
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "cal"},
        "spec": {"model": {"name": TINY, "inputShape": [1, 3, 64, 64]}, "solver": solver,
                 "solverOptions": {"grid": "2x1"} if solver == "ftp-grid" else {}, "devices": devices,
                 "network": {"bandwidth": "100Mbps", "latency": "2ms"}},
    })


def test_an_entry_is_found_by_host_quota_and_model_and_by_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    cache = CalibrationCache(path)
    key = CacheKey(HOST, 0.5, "speed", "vgg16 1x3x224x224")
    cache.put(key, 0.62, measured_at=100.0)
    again = CalibrationCache(path)  # a later `up` reads it from disk
    entry = again.get(key)
    assert entry is not None and entry.value == 0.62 and entry.measured_at == 100.0
    assert again.get(replace(key, cpus=0.2)) is None  # another quota
    assert again.get(replace(key, model="yolov2 1x3x608x608")) is None  # another model
    assert again.get(replace(key, host=replace(HOST, cores=4))) is None  # another host
    assert again.get(replace(key, host=replace(HOST, torch_version="2.6.0"))) is None  # another torch
    assert again.get(CacheKey(HOST, 0.5, "message")) is None  # a speed is not a message cost
    assert json.loads(path.read_text())["version"] == calibration_cache.CACHE_VERSION


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "entries": {}}',
                                     '{"version": 1, "entries": {"k": {"key": {}, "value": -1, "measured_at": 0}}}'])
def test_a_corrupt_cache_is_reported_measured_over_and_rewritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(content)
    notes = Notes()
    cache = CalibrationCache(path, notes)
    key = CacheKey(HOST, 0.5, "message")
    assert cache.get(key) is None
    assert len(notes.lines) == 1 and str(path) in notes.lines[0] and "corrupt" in notes.lines[0]
    cache.put(key, 1.5e-3)
    entry = CalibrationCache(path, notes).get(key)
    assert entry is not None and entry.value == 1.5e-3 and len(notes.lines) == 1


def test_a_write_replaces_the_file_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "cal.json"  # the folder is created
    key = CacheKey(HOST, 0.5, "speed", "m")
    CalibrationCache(path).put(key, 0.5)
    before = path.read_text()
    assert os.listdir(path.parent) == ["cal.json"]  # no temporary file left behind

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(calibration_cache.os, "replace", crash)
    notes = Notes()
    cache = CalibrationCache(path, notes)
    entry = cache.put(replace(key, cpus=0.2), 0.4)
    assert entry.value == 0.4  # still used by this `up`
    assert path.read_text() == before and os.listdir(path.parent) == ["cal.json"]
    assert "cannot be written" in notes.lines[0] and "disk full" in notes.lines[0]


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGEPART_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "edgepart" / "calibration.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "edgepart" / "calibration.json"
    monkeypatch.setenv("EDGEPART_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "calibration.json"


async def test_devices_get_the_measured_speed_and_message_cost_of_their_quota(tmp_path: Path) -> None:
    deployment = _deployment([{"name": "a", "cpus": 0.5}, {"name": "b", "cpus": 0.25},
                              {"name": "c", "cpus": 0.5, "speed": 3.0}, {"name": "d"}])
    measure = FakeMeasure({0.5: 0.6, 0.25: 0.4}, {0.5: 1e-3, 0.25: 1.5e-3})
    settings = CalibrationSettings(cache_path=tmp_path / "cal.json")
    notes = Notes()
    tuned, calibration = await calibrate_devices(deployment, settings, echo=notes, measure=measure, host=HOST)
    devices = {d.name: d for d in tuned.spec.devices}
    assert [devices[n].speed for n in "abcd"] == [0.3, 0.1, 3.0, None]  # cpus x speed per core; own speed kept
    assert [devices[n].message_cost for n in "abcd"] == ["2ms", "6ms", "2ms", None]  # message CPU / cpus
    assert sorted(measure.calls) == [("message", 0.25), ("message", 0.5), ("speed", 0.25), ("speed", 0.5)]
    assert calibration is not None and not any(q.cached for q in calibration.quotas)
    assert "a (0.5 CPU): speed 0.3, 2ms/message" in notes.lines[-1] and "measured now" in notes.lines[-1]

    measure.calls.clear()  # the next `up` on this host reads the cache
    again, cached = await calibrate_devices(deployment, settings, echo=notes, measure=measure, host=HOST)
    assert measure.calls == [] and again == tuned
    assert cached is not None and all(q.cached for q in cached.quotas) and "cached from" in cached.summary()

    other = _deployment([{"name": "a", "cpus": 0.5}, {"name": "b", "cpus": 0.2}])  # a new quota: only it is measured
    measure.speeds[0.2], measure.messages[0.2] = 0.35, 2e-3
    await calibrate_devices(other, settings, echo=notes, measure=measure, host=HOST)
    assert sorted(measure.calls) == [("message", 0.2), ("speed", 0.2)]

    measure.calls.clear()
    await calibrate_devices(deployment, replace(settings, mode="recalibrate"), echo=notes, measure=measure, host=HOST)
    assert len(measure.calls) == 4
    measure.calls.clear()
    off, none = await calibrate_devices(deployment, replace(settings, mode="off"), echo=notes, measure=measure,
                                        host=HOST)
    assert off == deployment and none is None and measure.calls == []


async def test_planning_after_calibration_costs_the_devices_as_measured(tmp_path: Path) -> None:
    deployment = _deployment([{"name": "a", "cpus": 0.5}, {"name": "b", "cpus": 0.5}])
    measure = FakeMeasure({0.5: 0.25}, {0.5: 2e-3})
    tuned, _ = await calibrate_devices(deployment, CalibrationSettings(cache_path=tmp_path / "c.json"),
                                       echo=Notes(), measure=measure, host=HOST)
    calibrated = plan_deployment(tuned.spec).plan.predicted
    expected = plan_deployment(with_cpu_speeds(deployment, 0.25, 2e-3).spec).plan.predicted
    uncalibrated = plan_deployment(with_cpu_speeds(deployment).spec).plan.predicted
    assert calibrated is not None and expected is not None and uncalibrated is not None
    assert calibrated.latency_s == expected.latency_s
    # a quarter of the reference per core and 4 ms per message end: twice the time `cpus` x the reference gives
    assert calibrated.latency_s > 2 * uncalibrated.latency_s


def test_the_speed_of_a_model_that_leaves_input_rows_unread_is_measured(tmp_path: Path) -> None:
    from torch import nn

    from edgepart.graph.loader import load_model
    from edgepart.runtime.calibrate import per_core_speed

    source = tmp_path / "odd.py"  # a 2x2 stride-2 convolution of 33 rows reads 32 (as squeezenet's 224 reads 223)
    source.write_text("from torch import nn\n\ndef odd():\n    return nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), "
                      "nn.ReLU())\n")
    ref = ModelRef(f"{source}:odd", (1, 3, 33, 33))
    model = load_model(ref)
    assert isinstance(model, nn.Module)
    assert per_core_speed(ref, model, repeats=1) > 0


def test_the_speed_is_timed_with_the_kernels_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from edgepart.executor import SliceRunner
    from edgepart.graph.loader import load_model
    from edgepart.runtime.calibrate import per_core_speed

    seen: list[bool] = []
    real = SliceRunner.__call__

    def recording(self: SliceRunner, tile: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.mkldnn.enabled)
        return real(self, tile)

    monkeypatch.setattr(SliceRunner, "__call__", recording)
    ref = ModelRef(TINY, (1, 3, 32, 32))
    model = load_model(ref)
    per_core_speed(ref, model, repeats=1, exact_kernels=False)
    assert seen and all(seen)  # oneDNN on: the fast kernels
    seen.clear()
    per_core_speed(ref, model, repeats=1, exact_kernels=True)
    assert seen and not any(seen)


async def test_a_speed_is_cached_per_kernel_choice(tmp_path: Path) -> None:
    fast = _deployment([{"name": "a", "cpus": 0.5}])
    exact = fast.model_copy(update={"spec": fast.spec.model_copy(update={"exact_kernels": True})})
    measure = FakeMeasure({0.5: 0.6}, {0.5: 1e-3})
    settings = CalibrationSettings(cache_path=tmp_path / "cal.json")
    await calibrate_devices(fast, settings, echo=Notes(), measure=measure, host=HOST)
    measure.calls.clear()
    notes = Notes()
    await calibrate_devices(exact, settings, echo=notes, measure=measure, host=HOST)
    assert measure.calls == [("speed", 0.5)]  # the fast kernels' speed is not the exact ones'
    assert "with exact kernels" in notes.lines[0]
    keys = [entry["key"] for entry in json.loads((tmp_path / "cal.json").read_text())["entries"].values()]
    assert sorted(str(k.get("kernels")) for k in keys if k["what"] == "speed") == ["exact", "fast"]
