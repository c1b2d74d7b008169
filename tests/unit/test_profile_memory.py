"""The profiling Job fits its memory limit (a 1 GiB device): the profile it runs, measured in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from edgepart.operator.render import profile_job
from edgepart.operator.settings import OperatorSettings
from edgepart.spec import parse_memory

SETTINGS = OperatorSettings(image="edgepart:1")

# The Job's profile (`edgepart profile --name ...`: every default model, --quick only with profileQuick) with
# one timed run per tile: repeats change how long it runs, not what it holds. VmHWM is the child's own peak
# RSS (ru_maxrss of a forked child starts from the parent's).
CHILD = textwrap.dedent("""
    import sys
    from edgepart.profiler.run import DEFAULT_MODELS, QUICK_MODELS, ProfileConfig, profile_device

    quick = sys.argv[1] == "quick"
    profile_device(ProfileConfig(name="ci", models=QUICK_MODELS if quick else DEFAULT_MODELS, quick=quick,
                                 warmup=1, repeats=1, passes=1))
    with open("/proc/self/status") as f:
        print(next(line for line in f if line.startswith("VmHWM:")).split()[1])
""")


def job_memory(settings: OperatorSettings) -> tuple[int, int]:
    resources = profile_job("rpi4", "edge-0", "1", "edge", settings)["spec"]["template"]["spec"]["containers"][0][
        "resources"]
    return parse_memory(resources["requests"]["memory"]), parse_memory(resources["limits"]["memory"])


def test_the_profiling_job_requests_768mi_and_is_limited_to_1gi() -> None:
    assert job_memory(SETTINGS) == (768 << 20, 1 << 30)
    assert job_memory(SETTINGS.model_copy(update={"profile_memory_limit": "3Gi"}))[1] == 3 << 30


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_jobs_profile_peaks_below_the_jobs_memory_limit() -> None:
    limit = job_memory(SETTINGS)[1]
    script = profile_job("rpi4", "edge-0", "1", "edge", SETTINGS)["spec"]["template"]["spec"]["containers"][0][
        "args"][0]
    assert "edgepart profile --name" in script and ("--quick" in script) == SETTINGS.profile_quick
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # the image sets none either
    done = subprocess.run([sys.executable, "-c", CHILD, "quick" if SETTINGS.profile_quick else "full"],
                          capture_output=True, text=True, env=env, check=True)
    peak = int(done.stdout.split()[-1]) * 1024
    print(f"profile peak RSS {peak / 2**20:.0f} MiB, Job limit {limit / 2**20:.0f} MiB")
    assert peak < limit
