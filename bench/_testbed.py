"""What the emulated-testbed benchmarks share: where results go, the skip on a host that cannot emulate
devices, and the host-wide lock that keeps two emulations off the same cores at once."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
