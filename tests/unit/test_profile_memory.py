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
    models = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else QUICK_MODELS if quick else DEFAULT_MODELS
    profile_device(ProfileConfig(name="ci", models=models, quick=quick, warmup=1, repeats=1, passes=1))
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_jobs_profile_of_the_heaviest_model_peaks_below_the_jobs_memory_limit() -> None:
    """The Job's profile restricted to vgg16 stays under the Job's limit. It bounds the whole profile: the
    profiler times one tile at a time and holds one model's partitions (or one weight slice) at a time,
    trimming the heap between them (test_profiler: one model at a time, one slice at a time), so the peak
    is the process's base plus the largest single model's working set, and vgg16 has the zoo's largest
    weights (528 MB) and largest layer (fc6, 411 MB). The exact full-profile peak is a benchmark:
    `python -m bench profile_memory`."""
    limit = job_memory(SETTINGS)[1]
    script = profile_job("rpi4", "edge-0", "1", "edge", SETTINGS)["spec"]["template"]["spec"]["containers"][0][
        "args"][0]
    assert "edgepart profile --name" in script and ("--quick" in script) == SETTINGS.profile_quick
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # the image sets none either
    done = subprocess.run([sys.executable, "-c", CHILD, "quick" if SETTINGS.profile_quick else "full", "vgg16"],
                          capture_output=True, text=True, env=env, check=True)
    peak = int(done.stdout.split()[-1]) * 1024
    print(f"profile peak RSS {peak / 2**20:.0f} MiB, Job limit {limit / 2**20:.0f} MiB")
    assert peak < limit
