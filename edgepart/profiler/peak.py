"""The peak memory of a profile run, measured in a child process (what a profiling Job's pod must fit)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence

# One timed run per tile: repeats change how long the profile runs, not what it holds. VmHWM is the child's own
# peak RSS (ru_maxrss of a forked child starts from the parent's).
_CHILD = textwrap.dedent("""
    import sys
    from edgepart.profiler.run import DEFAULT_MODELS, QUICK_MODELS, ProfileConfig, profile_device

    quick = sys.argv[1] == "quick"
    models = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else QUICK_MODELS if quick else DEFAULT_MODELS
    profile_device(ProfileConfig(name="peak", models=models, quick=quick, warmup=1, repeats=1, passes=1))
    with open("/proc/self/status") as f:
        print(next(line for line in f if line.startswith("VmHWM:")).split()[1])
""")


def profile_peak_bytes(quick: bool, models: Sequence[str] = ()) -> int:
    """Peak RSS of `edgepart profile` (the default models, or `models`) in a fresh interpreter, in bytes.

    MALLOC_* variables are dropped: the image sets none, and they would override the profiler's own allocator
    settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    args = [sys.executable, "-c", _CHILD, "quick" if quick else "full", *([",".join(models)] if models else [])]
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.split()[-1]) * 1024
