"""Run a partition or the gateway under uvicorn (one worker), from `ServiceSettings`.

`main()` is the role entry of processes and pods (`edgepart serve-partition`,
`edgepart serve-gateway`, or `python -m edgepart.partition_service ROLE`).
Besides host:port from its config, a process serves sockets it inherits
(`EDGEPART_LISTEN_FDS`), which the local runtime uses to give an emulated
device's gateway a listener on the host's loopback.

Speed: the process runs on uvloop with uvicorn's httptools parser when they are installed, serves tensor frames
on the app's tensor lane (`lane.py`: below ASGI, received straight into the tensor), and keeps
frame-sized buffers in the C heap (`tune_allocator`) so that a hop does not pay fresh pages for every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from edgepart.partition_service.config import (
    ConfigError,
    ServiceSettings,
    load_gateway_config,
    load_partition_config,
)
from edgepart.partition_service.gateway import GatewayService, gateway_app
from edgepart.partition_service.lane import TensorLane, lane_protocol
from edgepart.partition_service.partition import PartitionService, partition_app
from edgepart.profiler.microbench import partition_allocator

__all__ = ["QuietServer", "Role", "bind", "http_protocol", "loop_factory", "main", "serve", "tune_allocator"]

Role = Literal["partition", "gateway"]

def tune_allocator() -> bool:
    """Keep freed C-heap memory mapped for reuse: received frames, activations and convolution scratch then
    land on warm pages instead of fresh ones (with glibc's defaults, reading a 1 MiB frame took about four
    times as long, and a large convolution paid its scratch buffer's page faults on every call). These are
    the settings the profiler times layers with (`profiler.microbench.partition_allocator`), so partitions
    run as they were profiled. True when applied (glibc, and no MALLOC_* variable set by the operator)."""
    return partition_allocator()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (None: asyncio's own)."""
    if sys.platform == "win32" or not _installed("uvloop"):
        return None
    import uvloop

    return uvloop.new_event_loop


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def _listens_on(sock: socket.socket, host: str, port: int) -> bool:
    """True when an inherited socket already is the config's host:port (the runtime bound it for us)."""
    address = sock.getsockname()
    return bool(address[1] == port and address[0] == host)


def http_protocol(app: FastAPI) -> Any:
    """uvicorn's HTTP protocol (httptools when installed), behind the app's tensor lane when it has one."""
    http: type[asyncio.Protocol]
    if _installed("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        http = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        http = H11Protocol
    lane = getattr(app.state, "tensor_lane", None)
    return lane_protocol(lane, http) if isinstance(lane, TensorLane) else http


class QuietServer(uvicorn.Server):
    """uvicorn's server, waking once a second instead of ten times.

    uvicorn polls for shutdown every 100 ms. On an edge device each idle partition process then costs about
    2 ms of CPU a second here (a wake-up of an interpreter in a VM is ~0.2 ms), and with several partitions on a
    0.2-CPU device their ticks took a few percent of its quota away from computing. Here the loop sleeps a second
    (the Date header's resolution) and a signal wakes it at once, so shutdown is as prompt as before.
    """

    TICK_S = 1.0

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        should_exit = await self.on_tick(0)
        while not should_exit:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.TICK_S):
                    await self._wake.wait()
            should_exit = await self.on_tick(0)  # tick 0: uvicorn refreshes the Date header

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)


async def serve(app: FastAPI, sockets: Sequence[socket.socket], log_level: str = "warning") -> None:
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", workers=1,
                            http=http_protocol(app), timeout_keep_alive=120, timeout_graceful_shutdown=5)
    await QuietServer(config).serve(sockets=list(sockets))


def build_app(role: Role, settings: ServiceSettings) -> tuple[FastAPI, str, int]:
    text = settings.config_text()
    if role == "partition":
        pconfig = load_partition_config(text)
        return partition_app(PartitionService(pconfig)), pconfig.host, pconfig.port
    gconfig = load_gateway_config(text)
    return gateway_app(GatewayService(gconfig)), gconfig.host, gconfig.port


def main(role: Role, settings: ServiceSettings | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 2 on a bad config, with the reason on stderr."""
    try:
        settings = settings or ServiceSettings()
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app, host, port = build_app(role, settings)
        sockets = [socket.socket(fileno=fd) for fd in settings.listen_fds]
        if not any(_listens_on(s, host, port) for s in sockets):
            sockets.append(bind(host, port))
    except (ConfigError, ValueError, OSError) as err:
        print(f"edgepart {role}: {err}", file=sys.stderr)
        return 2
    tune_allocator()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvicorn's `loop` only counts in uvicorn.run
        runner.run(serve(app, sockets, settings.log_level))
    return 0
