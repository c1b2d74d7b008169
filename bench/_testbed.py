"""What the emulated-testbed benchmarks share: where results go, the skip on a host that cannot emulate
devices, the host-wide lock that keeps two emulations off the same cores at once, and how their devices are
calibrated (`calibrate`)."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepart.graph.loader import ModelRef
from edgepart.runtime.calibrate import HostCalibration, calibrate_host
from edgepart.runtime.emulate import support_problems

RESULTS = Path(__file__).parent / "results"
LOCK = Path("/tmp/edgepart-emulate.lock")


def cannot_emulate(out: Path) -> bool:
    """Whether this host cannot emulate devices; if so, say why and write the reason to `out`."""
    RESULTS.mkdir(exist_ok=True)
    problems = support_problems()
    if not problems:
        return False
    print("skipped: the emulated testbed needs root, iproute2 (ip, tc) and the cgroup v1 cpu controller: "
          + "; ".join(problems))
    out.write_text(json.dumps({"skipped": problems}, indent=2))
    return True


@contextmanager
def emulate_lock() -> Iterator[None]:
    """Hold the host's emulation lock (tests and other benchmarks emulating at once would share the cores)."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def calibrate(models: Sequence[str], quotas: Iterable[float], scratch: Path, quick: bool) -> HostCalibration:
    """Calibrate the devices of a testbed benchmark: this host's profile for `models` (the first one times the
    quotas), each quota's share of a free core and its message cost (`calibrate_host`); prints them, and a
    warning when the host is loaded (it is in the results JSON too: `HostCalibration.summary`)."""
    calibration = await calibrate_host([ModelRef(m) for m in models], quotas, scratch / "calibration",
                                       repeats=3 if quick else 5, message_requests=6 if quick else 12)
    print(calibration_note(calibration.summary()), flush=True)
    return calibration


def calibration_note(summary: dict[str, Any]) -> str:
    """One line on a calibration (`HostCalibration.summary`, as the results JSON keeps it), with its warning."""
    # the factor before the clamp, where the clamp changed it
    factors = ", ".join(f"{c} CPU {f:.3f}" + (f" (measured {summary['measured_factor'][c]:.2f})"
                                              if summary["measured_factor"].get(c, f) != f else "")
                        for c, f in summary["quota_factor"].items())
    messages = ", ".join(f"{c} CPU {m * 1e3:.2f} ms" for c, m in summary["message_cpu_s"].items())
    note = (f"Calibrated: this host's profile; per-core speed under the quota / a free core's: {factors}; a "
            f"message's CPU at each end: {messages}; load average {summary['load_average']:.1f} on "
            f"{summary['cores']} cores.")
    return note if summary["warning"] is None else f"{note}\nWARNING: {summary['warning']}."
