"""Helpers the transport benchmarks share: a frame sink served like the services, their event loop, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response

from edgepart.partition_service.auth import Secret
from edgepart.partition_service.config import ConnectionLimits
from edgepart.partition_service.lane import Guard, TensorLane
from edgepart.partition_service.server import bind, loop_factory, serve, tune_allocator
from edgepart.partition_service.transport import TENSOR_PATH, receive_frame
from edgepart.partition_service.wire import Frame, Limits
from edgepart.runtime.emulate import cpu_capped

T = TypeVar("T")
# the sink checks a secret as the services' internal ports do, so a hop costs what it costs in a deployment
BENCH_SECRET = Secret("bench-secret-" + "0" * 40)


def run_on_service_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark's client on the event loop the services run on (uvloop when installed)."""
    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner() as runner:
        return runner.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_frame_sink(port: int, cpus: float | None = None, *, lane: bool = True) -> None:
    """Decode every POSTed frame with the partitions' own `receive_frame`; GET /cpu reports CPU time.

    Served with the services' own set-up: tuned allocator, uvloop, httptools; with `cpus` (root), under
    the CPU quota an emulated device with `cpus` gets. `lane=False` serves frames through the plain FastAPI
    route instead of the tensor lane (what the lane replaces; the secret is still checked by the guard).
    """
    app = FastAPI()
    limits = Limits()

    async def ingest(frame: Frame) -> None:
        assert frame.tensor.numel() > 0

    @app.post(TENSOR_PATH)
    async def tensor(request: Request) -> Response:
        await ingest(await receive_frame(request, limits))
        return Response(status_code=204)

    # as the services serve frames: guarded, the secret checked from the head, then the lane
    app.state.guard = Guard(ConnectionLimits(), TensorLane(TENSOR_PATH, limits, ingest) if lane else None,
                            secret=BENCH_SECRET, open_paths=frozenset({"/cpu"}))

    @app.get("/cpu")
    async def cpu() -> dict[str, float]:
        return {"cpu_s": time.process_time()}

    tune_allocator()
    factory = loop_factory()
    capped = cpu_capped(cpus) if cpus is not None else contextlib.nullcontext()
    with capped, asyncio.Runner(loop_factory=factory) if factory else asyncio.Runner() as runner:
        runner.run(serve(app, [bind("127.0.0.1", port)]))


def start_server(module: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run `python -m module *args PORT` and wait until it accepts connections."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, *args, str(port)], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{module} {' '.join(args)} did not start")


if __name__ == "__main__":
    if sys.argv[1] == "--cpus":
        serve_frame_sink(int(sys.argv[3]), float(sys.argv[2]))
    elif sys.argv[1] == "--plain-route":
        serve_frame_sink(int(sys.argv[2]), lane=False)
    else:
        serve_frame_sink(int(sys.argv[1]))
