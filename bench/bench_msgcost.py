"""CPU seconds one tensor hop costs its sender and its receiver, through the real data plane.

The sender is `Sender.send` (httpx, the frame encoder); the receiver a FastAPI app on uvicorn whose
handler is `receive_frame` (as a partition's ingest), in its own process. Each side's CPU time
(`time.process_time`, so it does not depend on how many cores the host has) over N sequential frames,
divided by N, is the per-message cost on one core; a line through sizes gives the per-byte part.
The reference profile's `messageOverheadS` (`edgepart/planner/reference_profile.json`) is the sum of
the two sides' per-message cost halved (the planner charges it once on each end of a hop).

    python -m bench msgcost [--quick]        # prints the table and the fitted line
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request, Response

from edgepart.geometry import Region
from edgepart.partition_service.server import bind, loop_factory, serve, tune_allocator
from edgepart.partition_service.transport import (
    TENSOR_PATH,
    Sender,
    make_client,
    make_hop_client,
    receive_frame,
)
from edgepart.partition_service.wire import Limits, make_header

SIZES = (1 << 10, 64 << 10, 1 << 20, 4 << 20)


def _serve(port: int) -> None:
    app = FastAPI()
    limits = Limits()

    @app.post(TENSOR_PATH)
    async def tensor(request: Request) -> Response:
        frame = await receive_frame(request, limits)
        assert frame.tensor.numel() > 0
        return Response(status_code=204)

    @app.get("/cpu")
    async def cpu() -> dict[str, float]:
        return {"cpu_s": time.process_time()}

    # the services' own server set-up: allocator tuning, uvloop, httptools
    tune_allocator()
    factory = loop_factory()
    runner = asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner()
    with runner:
        runner.run(serve(app, [bind("127.0.0.1", port)]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(port: int, reps: int) -> list[tuple[int, float, float]]:
    rows = []
    url = f"http://127.0.0.1:{port}"
    hop = make_hop_client(60.0)  # the tensor hop the partitions use
    async with make_client(60.0) as client:
        sender = Sender(client, hop)
        for size in SIZES:
            tensor = torch.randn(1, max(1, size // 4 // 64), 8, 8)
            header = make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench")
            count = reps if size <= (64 << 10) else max(20, reps // 10)
            for _ in range(5):
                await sender.send(url, header, tensor, peer="sink")
            server0 = (await client.get(f"{url}/cpu")).json()["cpu_s"]
            client0 = time.process_time()
            for _ in range(count):
                await sender.send(url, header, tensor, peer="sink")
            client1 = time.process_time()
            server1 = (await client.get(f"{url}/cpu")).json()["cpu_s"]
            rows.append((tensor.numel() * 4, (client1 - client0) / count, (server1 - server0) / count))
    await hop.aclose()
    return rows


def main(quick: bool = False) -> None:
    reps = 100 if quick else 400
    torch.set_num_threads(1)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_msgcost", "serve", str(port)],
                            cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("receiver did not start") from None
                time.sleep(0.1)
        rows = asyncio.run(_measure(port, reps))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{'bytes':>9} {'sender ms':>10} {'receiver ms':>11}")
    for nbytes, snd, rcv in rows:
        print(f"{nbytes:>9} {snd * 1e3:>10.3f} {rcv * 1e3:>11.3f}")
    sizes = np.array([r[0] for r in rows], dtype=float)
    total = np.array([r[1] + r[2] for r in rows])
    slope, intercept = np.polyfit(sizes, total, 1)
    small = rows[0][1] + rows[0][2]
    print(json.dumps({"per_message_both_ends_s": small, "per_end_s": small / 2,
                      "fit_intercept_s": float(intercept), "per_byte_both_ends_s": float(slope)}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(int(sys.argv[2]))
    else:
        main()
