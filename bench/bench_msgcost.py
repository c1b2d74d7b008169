"""CPU seconds one tensor hop costs its sender and its receiver, through the real data plane.

The sender is `Sender.send` (the keep-alive hop client, the frame encoder); the receiver the frame sink
served like a partition (uvicorn with the tensor lane), in its own process; both on the services' event loop. Each side's CPU time
(`time.process_time`, so it does not depend on how many cores the host has) over N sequential frames,
divided by N, is the per-message cost on one core; a line through sizes gives the per-byte part.

Two regimes: back to back (a stream of frames, every cache warm) and after an idle gap (each frame
follows 30 ms of silence on both ends, as in a pipeline where a partition waits for its input between
requests). On this VM the second costs about ten times the first: a process woken from idle runs its
first milliseconds cold. The planner's links carry the idle-gap figure, since that is the message a
single request's latency pays: the reference profile's `messageOverheadS`
(`edgepart/planner/reference_profile.json`) is the two sides' idle-gap per-message cost halved (the
planner charges it once on each end of a hop).

As root a third regime runs both ends as the emulated testbed's devices run: each under a 0.2-CPU
quota (the testbed's cgroup), each frame after 1 s of idle while another process keeps a core busy
(as the other devices' compute does). This one is reported, not used by the planner: it shows what a
message costs a throttled device with cold caches.

    python -m bench msgcost [--quick]        # prints the table and the fitted line
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import torch

from bench._servers import BENCH_SECRET, run_on_service_loop, start_server
from edgepart.geometry import Region
from edgepart.partition_service.transport import (
    Sender,
    internal_headers,
    make_client,
    make_hop_client,
)
from edgepart.partition_service.wire import make_header
from edgepart.runtime.calibrate import BUSY_LOOP
from edgepart.runtime.emulate import cpu_capped, support_problems

SIZES = (1 << 10, 64 << 10, 1 << 20, 4 << 20)
IDLE_SIZES = (1 << 10, 64 << 10)
IDLE_GAP_S = 0.03
CAPPED_CPUS = 0.2
CAPPED_GAP_S = 1.0
CAPPED_SIZES = (1 << 10, 64 << 10)


async def _measure(port: int, reps: int, gap_s: float = 0.0, sizes: tuple[int, ...] = SIZES,
                   count: int | None = None) -> list[tuple[int, float, float]]:
    rows = []
    url = f"http://127.0.0.1:{port}"
    hop = make_hop_client(60.0, secret=BENCH_SECRET)  # the tensor hop the partitions use
    async with make_client(60.0) as client:
        sender = Sender(client, hop, internal_headers(BENCH_SECRET))
        for size in sizes:
            tensor = torch.randn(1, max(1, size // 4 // 64), 8, 8)
            header = make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench")
            n = reps if size <= (64 << 10) else max(20, reps // 10)
            if gap_s:
                n = max(20, reps // 5)
            n = count or n
            for _ in range(5):
                await sender.send(url, header, tensor, peer="sink")
            server0 = (await client.get(f"{url}/cpu")).json()["cpu_s"]
            client0 = time.process_time()
            for _ in range(n):
                if gap_s:
                    await asyncio.sleep(gap_s)  # both ends go idle (the sink's CPU counts only its work)
                await sender.send(url, header, tensor, peer="sink")
            client1 = time.process_time()
            server1 = (await client.get(f"{url}/cpu")).json()["cpu_s"]
            rows.append((tensor.numel() * 4, (client1 - client0) / n, (server1 - server0) / n))
    await hop.aclose()
    return rows


def _capped(quick: bool) -> list[tuple[int, float, float]]:
    """The third regime: both ends under the testbed's quota, 1 s apart, another core busy."""
    proc, port = start_server("bench._servers", "--cpus", str(CAPPED_CPUS))
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        with cpu_capped(CAPPED_CPUS):
            return run_on_service_loop(_measure(port, 0, CAPPED_GAP_S, CAPPED_SIZES, 5 if quick else 15))
    finally:
        for p in (busy, proc):
            p.terminate()
            p.wait(10)


def main(quick: bool = False) -> None:
    reps = 100 if quick else 400
    torch.set_num_threads(1)
    proc, port = start_server("bench._servers")
    try:
        rows = run_on_service_loop(_measure(port, reps))
        idle = run_on_service_loop(_measure(port, reps, IDLE_GAP_S, IDLE_SIZES))
    finally:
        proc.terminate()
        proc.wait(10)
    regimes = [("back to back", rows), (f"after {IDLE_GAP_S * 1e3:g} ms idle", idle)]
    capped: list[tuple[int, float, float]] = []
    problems = support_problems()
    if problems:
        print("skipped the capped regime (needs root and the cgroup v1 cpu controller): " + "; ".join(problems))
    else:
        capped = _capped(quick)
        regimes.append((f"{CAPPED_CPUS:g} CPU, {CAPPED_GAP_S:g} s idle", capped))
    print(f"{'bytes':>9} {'regime':>20} {'sender ms':>10} {'receiver ms':>11}")
    for regime, table in regimes:
        for nbytes, snd, rcv in table:
            print(f"{nbytes:>9} {regime:>20} {snd * 1e3:>10.3f} {rcv * 1e3:>11.3f}")
    sizes = np.array([r[0] for r in rows], dtype=float)
    total = np.array([r[1] + r[2] for r in rows])
    slope, intercept = np.polyfit(sizes, total, 1)
    small = rows[0][1] + rows[0][2]
    after_idle = idle[0][1] + idle[0][2]
    print(json.dumps({"per_message_both_ends_s": small, "per_end_s": small / 2,
                      "per_end_after_idle_s": after_idle / 2, "idle_gap_s": IDLE_GAP_S,
                      "fit_intercept_s": float(intercept), "per_byte_both_ends_s": float(slope),
                      **({"per_end_capped_s": (capped[0][1] + capped[0][2]) / 2, "capped_cpus": CAPPED_CPUS}
                         if capped else {})}))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
