"""The profiling Job fits its memory limit (a 1 GiB device): the profile it runs, measured in a child process."""

from __future__ import annotations

import sys

import pytest

from edgepart.operator.render import profile_job
from edgepart.operator.settings import OperatorSettings
from edgepart.profiler.peak import profile_peak_bytes
from edgepart.spec import parse_memory

SETTINGS = OperatorSettings(image="edgepart:1")

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
    peak = profile_peak_bytes(SETTINGS.profile_quick, ["vgg16"])
    print(f"profile peak RSS {peak / 2**20:.0f} MiB, Job limit {limit / 2**20:.0f} MiB")
    assert peak < limit
