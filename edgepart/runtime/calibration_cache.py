"""The calibration cache: what emulated devices were measured to do on this host, kept on disk.

`edgepart up --emulate` costs its devices with two numbers measured here (`runtime/calibrate.py`): the speed
of one core under a device's CPU quota against the planner's reference profile (`per_core_speed`, with the
deployment's model) and the CPU one message costs such a device at each end (`message_cpu`). Both depend on
this host and on the quota, and take tens of seconds to measure, so they are kept in one JSON file:

    $XDG_CACHE_HOME/edgepart/calibration.json   (default ~/.cache/edgepart/calibration.json;
                                                  EDGEPART_CACHE_DIR names another folder)

    {"version": 1, "entries": {"<key>": {"key": {...}, "value": 0.62, "measured_at": 1733400000.0}}}

A key is the host's identity (hostname, CPU model, core count, torch version, threads the measurement used),
the CPU quota, what was measured (`speed` or `message`) and, for a speed, the model (name and input shape) and
the kernels the partitions run (`exact` or `fast`: oneDNN's are faster, so a device's speed depends on them).
Writes go to a temporary file in the same folder and replace the cache atomically, so a crash or a concurrent
`up` never leaves half a file. A file that cannot be read or parsed is reported and measured over, never fatal.
This module holds no torch or process code; `device_calibration` measures and applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["CACHE_VERSION", "CacheEntry", "CacheKey", "Calibration", "CalibrationCache", "DeviceCalibration",
           "HostIdentity", "QuotaCalibration", "default_cache_path", "host_identity"]

CACHE_VERSION = 1  # bump when what is measured, or how, changes: older entries then no longer match
CACHE_FILE = "calibration.json"


@dataclass(frozen=True)
class HostIdentity:
    """What a calibration depends on besides the quota: the machine and the torch build that measured it."""

    hostname: str
    cpu_model: str
    cores: int
    torch_version: str
    threads: int = 1  # partitions compute on one thread, and so does the measurement

    def describe(self) -> str:
        return f"{self.hostname}, {self.cpu_model} x{self.cores}, torch {self.torch_version}"


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def host_identity() -> HostIdentity:
    """This host's identity (torch's version read from its installed metadata, without importing torch)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return HostIdentity(platform.node() or "unknown", _cpu_model(), os.cpu_count() or 1, torch_version)


@dataclass(frozen=True)
class CacheKey:
    host: HostIdentity
    cpus: float
    what: Literal["speed", "message"]
    model: str | None = None  # a speed's model: name and input shape
    kernels: Literal["exact", "fast"] | None = None  # a speed's kernels (the deployment's exactKernels)

    def text(self) -> str:
        """The entry's name in the file: the key as canonical JSON."""
        return json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True, separators=(",", ":"))


class CacheEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: dict[str, object]
    value: float = Field(gt=0)
    measured_at: float


class _CacheFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    entries: dict[str, CacheEntry] = {}


def default_cache_path() -> Path:
    folder = os.environ.get("EDGEPART_CACHE_DIR")
    if folder:
        return Path(folder) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgepart" / CACHE_FILE


class CalibrationCache:
    """The cache file at `path` (default `default_cache_path()`); problems are told to `echo`, never raised."""

    def __init__(self, path: Path | None = None, echo: Callable[[str], None] = print) -> None:
        self.path = path or default_cache_path()
        self._echo = echo
        self._entries: dict[str, CacheEntry] | None = None

    def _load(self) -> dict[str, CacheEntry]:
        if self._entries is None:
            self._entries = {}
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return self._entries
            except OSError as err:
                self._echo(f"calibration cache {self.path} cannot be read ({err}); measuring again")
                return self._entries
            try:
                self._entries = dict(_CacheFile.model_validate_json(text).entries)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "the file"
                self._echo(f"calibration cache {self.path} is corrupt or from another edgepart ({where}: "
                           f"{first['msg']}); measuring again and rewriting it")
        return self._entries

    def get(self, key: CacheKey) -> CacheEntry | None:
        return self._load().get(key.text())

    def put(self, key: CacheKey, value: float, measured_at: float | None = None) -> CacheEntry:
        """Record `value` and write the whole file atomically (a failed write is reported; the value still counts)."""
        entry = CacheEntry(key=json.loads(key.text()), value=value,
                           measured_at=time.time() if measured_at is None else measured_at)
        entries = self._load()
        entries[key.text()] = entry
        try:
            self._write(_CacheFile(version=CACHE_VERSION, entries=entries))
        except OSError as err:
            self._echo(f"calibration cache {self.path} cannot be written ({err}); this calibration is not kept")
        return entry

    def _write(self, content: _CacheFile) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(content.model_dump_json(indent=1))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# ------------------------------------------------------------------ what a deployment was costed with


class QuotaCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(description="The CPU quota the devices run under.")
    speed_per_core: float | None = Field(
        default=None, description="One core of this host under the quota against the reference profile "
                                  "(a device's speed = cpus x this).")
    message_cpu_s: float | None = Field(default=None, description="CPU seconds one message costs such a device "
                                                                  "at each end (messageCost = this / cpus).")
    cached: bool = Field(description="Read from the cache (false: measured by this `up`).")
    measured_at: float = Field(description="When it was measured (Unix time; the older of the two figures).")


class DeviceCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    cpus: float
    speed: float | None = None  # None: the device had its own speed or profile
    message_cost: str | None = None  # None: the device had its own messageCost


class Calibration(BaseModel):
    """What `up --emulate` planned with: per quota the measured figures, per device what it was given."""

    model_config = ConfigDict(extra="forbid")

    host: str
    model: str
    cache: str
    quotas: list[QuotaCalibration]
    devices: list[DeviceCalibration]

    def summary(self) -> str:
        """One line for `up` and `status`: the devices' speeds and message costs, and where they come from."""
        cached = all(q.cached for q in self.quotas)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(q.measured_at for q in self.quotas)))
        source = f"cached from {when}, `--recalibrate` measures again" if cached else "measured now, cached"
        devices = ", ".join(
            f"{d.name} ({d.cpus:g} CPU): speed {'own' if d.speed is None else f'{d.speed:.3g}'}, "
            f"{'own messageCost' if d.message_cost is None else f'{d.message_cost}/message'}" for d in self.devices)
        return f"devices calibrated on this host under their CPU quotas ({source}): {devices}"
