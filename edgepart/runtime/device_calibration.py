"""Calibrating the devices `edgepart up --emulate` plans for, as `make demo` and the testbed do.

Without it an emulated device is costed at `cpus` times the reference profile, which can be several times
off (a throttled process runs slower than its share of a free core, and pays more per message). So before
planning, for each CPU quota among the devices:

- the speed of one core under that quota, the deployment's (first) model run whole through the executor
  (`calibrate.per_core_speed`), and
- the CPU one message costs such a device at each end (`calibrate.message_cpu`),

read from the calibration cache (`calibration_cache`) or measured and stored there. Devices with `cpus` and
neither `speed` nor `profile` get speed = cpus x that speed per core; those without `messageCost` get the
message CPU / cpus. The planner sees plain numbers in the deployment, as with `calibrate.calibrated`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from edgepart.runtime.calibration_cache import (
    CacheKey,
    Calibration,
    CalibrationCache,
    DeviceCalibration,
    HostIdentity,
    QuotaCalibration,
    host_identity,
)
from edgepart.spec import DeviceSpec, DNNDeployment

if TYPE_CHECKING:
    import torch

    from edgepart.graph.loader import ModelRef

__all__ = ["CalibrationSettings", "HostMeasure", "Measure", "calibrate_devices", "needs_calibration"]

Echo = Callable[[str], None]


@dataclass(frozen=True)
class CalibrationSettings:
    """How `up --emulate` calibrates its devices."""

    mode: Literal["cached", "recalibrate", "off"] = "cached"
    """cached: use the cache, measure what it lacks; recalibrate: measure and overwrite; off: cost devices at
    `cpus` x the reference profile, as before calibration existed."""
    cache_path: Path | None = None
    """The cache file (default `calibration_cache.default_cache_path()`)."""
    speed_repeats: int = 3
    """Timed runs of the whole model under the quota (after one warm-up); the median counts."""
    message_requests: int = 8
    """Requests through the message probe's chain of partitions."""


class Measure(Protocol):
    """What measures a quota (the real one is `HostMeasure`; tests inject fakes)."""

    def speed(self, ref: ModelRef, cpus: float) -> float:
        """One core under a `cpus` quota against the reference profile (blocking: run in a thread)."""
        ...

    async def message(self, cpus: float) -> float:
        """CPU seconds one message costs a device with `cpus` at each end."""
        ...


class HostMeasure:
    """Measures on this host, under real CPU quotas (root, like `up --emulate` itself)."""

    def __init__(self, settings: CalibrationSettings, *, exact_kernels: bool = False) -> None:
        self._settings = settings
        self._exact_kernels = exact_kernels  # time the kernels the deployment's partitions run
        self._models: dict[str, torch.nn.Module] = {}

    @staticmethod
    def _check() -> None:
        from edgepart.runtime.emulate import EmulationError, support_problems

        problems = support_problems()
        if problems:
            raise EmulationError("calibrating emulated devices: " + "; ".join(problems))

    def speed(self, ref: ModelRef, cpus: float) -> float:
        from edgepart.graph.loader import load_model
        from edgepart.runtime.calibrate import per_core_speed

        self._check()
        if ref.name not in self._models:
            self._models[ref.name] = load_model(ref)
        return per_core_speed(ref, self._models[ref.name], self._settings.speed_repeats, cpus,
                              exact_kernels=self._exact_kernels)

    async def message(self, cpus: float) -> float:
        from edgepart.runtime.calibrate import message_cpu

        self._check()
        return await message_cpu(cpus, requests=self._settings.message_requests)


def _wants_speed(d: DeviceSpec) -> bool:
    return d.cpus is not None and d.speed is None and d.profile is None


def _wants_message(d: DeviceSpec) -> bool:
    return d.cpus is not None and d.message_cost is None


def needs_calibration(deployment: DNNDeployment) -> bool:
    """Whether any device would be costed from its quota (a plan's devices; variants deployments plan otherwise)."""
    return deployment.spec.variants is None and any(
        _wants_speed(d) or _wants_message(d) for d in deployment.spec.devices)


def _model_key(ref: ModelRef) -> str:
    shape = "x".join(str(n) for n in ref.input_shape) if ref.input_shape else "default"
    return f"{ref.name} {shape}"


async def calibrate_devices(deployment: DNNDeployment, settings: CalibrationSettings, *, echo: Echo,
                            measure: Measure | None = None, host: HostIdentity | None = None,
                            base: Path | None = None) -> tuple[DNNDeployment, Calibration | None]:
    """The deployment with its quota-costed devices calibrated, and what they were given (None: nothing to do)."""
    if settings.mode == "off" or not needs_calibration(deployment):
        return deployment, None
    from edgepart.runtime.planning import model_ref

    devices = deployment.spec.devices
    ref = model_ref(deployment.spec.first_model, base)
    host = host or host_identity()
    exact = deployment.spec.exact_kernels
    measure = measure or HostMeasure(settings, exact_kernels=exact)
    cache = CalibrationCache(settings.cache_path, echo)
    speed_quotas = sorted({d.cpus for d in devices if d.cpus is not None and _wants_speed(d)})
    message_quotas = sorted({d.cpus for d in devices if d.cpus is not None and _wants_message(d)})
    quotas: list[QuotaCalibration] = []
    speeds: dict[float, float] = {}
    messages: dict[float, float] = {}
    for cpus in sorted({*speed_quotas, *message_quotas}):
        cached, when = True, time.time()
        if cpus in speed_quotas:
            key = CacheKey(host, cpus, "speed", _model_key(ref), "exact" if exact else "fast")
            entry = cache.get(key) if settings.mode == "cached" else None
            if entry is None:
                echo(f"calibrating: {ref.name} under a {cpus:g}-CPU quota with {key.kernels} kernels (the "
                     "emulated devices' speed; once per host, quota, model and kernels)")
                entry = cache.put(key, await asyncio.to_thread(measure.speed, ref, cpus))
                cached = False
            speeds[cpus], when = entry.value, min(when, entry.measured_at)
        if cpus in message_quotas:
            key = CacheKey(host, cpus, "message")
            entry = cache.get(key) if settings.mode == "cached" else None
            if entry is None:
                echo(f"calibrating: what a message costs a {cpus:g}-CPU device (once per host and quota)")
                entry = cache.put(key, await measure.message(cpus))
                cached = False
            messages[cpus], when = entry.value, min(when, entry.measured_at)
        quotas.append(QuotaCalibration(cpus=cpus, speed_per_core=speeds.get(cpus), message_cpu_s=messages.get(cpus),
                                       cached=cached, measured_at=when))
    tuned, record = [], []
    for d in devices:
        if d.cpus is None:
            tuned.append(d)
            continue
        speed = round(d.cpus * speeds[d.cpus], 4) if _wants_speed(d) else None
        cost = f"{messages[d.cpus] / d.cpus * 1e3:.4g}ms" if _wants_message(d) else None
        update = {k: v for k, v in (("speed", speed), ("message_cost", cost)) if v is not None}
        tuned.append(d.model_copy(update=update))
        record.append(DeviceCalibration(name=d.name, cpus=d.cpus, speed=speed, message_cost=cost))
    calibrated = deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"devices": tuned})})
    calibration = Calibration(host=host.describe(), model=_model_key(ref), cache=str(cache.path), quotas=quotas,
                              devices=record)
    echo(calibration.summary())
    return calibrated, calibration
