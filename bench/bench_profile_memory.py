"""Peak memory of the profiling Job's profile against the Job's memory limit (a 1 GiB device).

`edgepart profile` with the Job's settings (every default model; one timed run per tile, since repeats change
how long it runs, not what it holds) in a fresh interpreter; its VmHWM against the limit the operator gives
the Job. The unit test measures vgg16 alone (the heaviest model, which bounds the rest: the profiler holds one
model or one weight slice at a time); this measures the whole profile, about 10 minutes on 2 cores.

    python -m bench profile_memory [--quick]     # --quick: the quick profile's models
"""

from __future__ import annotations

import json
import time

from bench._testbed import RESULTS
from edgepart.operator.render import profile_job
from edgepart.operator.settings import OperatorSettings
from edgepart.profiler.peak import profile_peak_bytes
from edgepart.spec import parse_memory


def main(quick: bool) -> None:
    settings = OperatorSettings(image="edgepart:bench")
    resources = profile_job("dev", "node", "1", "dev", settings)["spec"]["template"]["spec"]["containers"][0][
        "resources"]
    limit = parse_memory(resources["limits"]["memory"])
    started = time.perf_counter()
    peak = profile_peak_bytes(quick or settings.profile_quick)
    seconds = time.perf_counter() - started
    mib = 1 << 20
    print(f"{'profile':8} {'peak MiB':>9} {'limit MiB':>10} {'peak/limit':>10} {'seconds':>8}")
    print(f"{'quick' if quick else 'job':8} {peak / mib:>9.0f} {limit / mib:>10.0f} {peak / limit:>10.2f} "
          f"{seconds:>8.0f}")
    out = RESULTS / "profile_memory.json"
    out.write_text(json.dumps({"quick": quick, "peak_bytes": peak, "limit_bytes": limit, "seconds": seconds},
                              indent=2))
    print(f"wrote {out}")
