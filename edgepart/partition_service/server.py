"""Run a partition or the gateway under uvicorn (one worker), from `ServiceSettings`.

`main()` is the role entry of processes and pods (`edgepart serve-partition`,
`edgepart serve-gateway`, or `python -m edgepart.partition_service ROLE`).
A partition serves one port (internal to its deployment); the gateway two, one
app each: its clients' port and its internal port (`gateway_app`,
`gateway_internal_app`), run as two uvicorn servers on one event loop. A
process serves sockets it inherits (`EDGEPART_LISTEN_FDS`) on the endpoint
whose port they are bound to (the local runtime binds them, so there is no port
race, and gives an emulated device's gateway a client listener on the host's
loopback); an endpoint with none binds its host:port from the config. Every
connection is guarded (`lane.GuardedProtocol`: time, connection and memory
limits) before uvicorn or the app sees it.

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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from edgepart.errors import EdgepartError
from edgepart.partition_service.config import (
    ConfigError,
    ConnectionLimits,
    ServiceSettings,
    load_gateway_config,
    load_partition_config,
)
from edgepart.partition_service.gateway import GatewayService, gateway_app, gateway_internal_app
from edgepart.partition_service.lane import Guard, GuardedProtocol, guarded_protocol
from edgepart.partition_service.partition import PartitionService, partition_app
from edgepart.profiler.microbench import partition_allocator

log = logging.getLogger(__name__)

__all__ = ["Endpoint", "QuietServer", "Role", "bind", "build_endpoints", "http_protocol", "loop_factory", "main",
           "open_files_limit", "serve", "serve_all", "tune_allocator", "within_descriptors"]

Role = Literal["partition", "gateway", "dispatcher", "worker"]

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


def http_protocol(app: FastAPI) -> Any:
    """uvicorn's HTTP protocol (httptools when installed), behind the app's guard (and lane) when it has one."""
    http: type[asyncio.Protocol]
    if _installed("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        http = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        http = H11Protocol
    guard = getattr(app.state, "guard", None)
    return guarded_protocol(guard, http) if isinstance(guard, Guard) else http


class QuietServer(uvicorn.Server):
    """uvicorn's server, waking only when it must instead of ten times a second.

    uvicorn polls for shutdown every 100 ms. On an edge device each idle partition process then costs about
    2 ms of CPU a second here (a wake-up of an interpreter in a VM is ~0.2 ms), and with several partitions on a
    0.2-CPU device their ticks took a few percent of its quota away from computing. Here a signal (or setting
    `should_exit`) wakes the loop, so shutdown is as prompt as before. A guarded server (`lane.GuardedProtocol`,
    every service's) does not tick at all: the guard refreshes the Date header when it hands a request to
    uvicorn, so an idle partition sleeps until its next message (a tick a second still cost a throttled device
    ~0.3 ms of CPU per second-apart message). Others tick once a second (the Date header's resolution).
    """

    TICK_S = 1.0

    def __init__(self, config: uvicorn.Config, *, signals: bool = True):
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit = False
        super().__init__(config)
        self.signals = signals  # False: another server of the process takes the signals and stops this one
        self.partners: list[QuietServer] = []  # servers to stop with this one

    @property
    def should_exit(self) -> bool:
        return self._exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit = value
        if value:
            self.wake()  # a tickless loop notices only when woken

    def _tick_s(self) -> float | None:
        """Seconds between ticks; None: no tick (the guard keeps the Date header, nothing else needs one)."""
        config = self.config
        guarded = isinstance(config.http, type) and issubclass(config.http, GuardedProtocol)
        needs_tick = config.limit_max_requests is not None or config.callback_notify is not None
        return None if guarded and not needs_tick else self.TICK_S

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        if not self.signals:
            yield
            return
        with super().capture_signals():
            yield

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        tick_s = self._tick_s()
        should_exit = await self.on_tick(0)
        while not should_exit:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._wake.wait()
            self._wake.clear()
            should_exit = await self.on_tick(0)  # tick 0: uvicorn refreshes the Date header

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        for partner in self.partners:
            partner.should_exit = True
        self.wake()

    def wake(self) -> None:
        # through the loop's self-pipe: a signal handler may run while the loop blocks in epoll
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)


@dataclass(frozen=True)
class Endpoint:
    """One app on its own listening sockets; the first endpoint of a process runs the lifespan."""

    app: FastAPI
    host: str
    port: int
    sockets: tuple[socket.socket, ...] = ()


def _config(app: FastAPI, log_level: str, lifespan: bool) -> uvicorn.Config:
    guard = getattr(app.state, "guard", None)
    keep_alive = guard.limits.keep_alive_s if isinstance(guard, Guard) else 120.0
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on" if lifespan else "off",
                          workers=1, http=http_protocol(app), timeout_keep_alive=int(max(1, keep_alive)),
                          timeout_graceful_shutdown=5)


async def serve(app: FastAPI, sockets: Sequence[socket.socket], log_level: str = "warning") -> None:
    """Serve one app on `sockets` until a signal stops it."""
    await QuietServer(_config(app, log_level, True)).serve(sockets=list(sockets))


@contextlib.asynccontextmanager
async def on_loopback(app: FastAPI) -> AsyncIterator[uvicorn.Server]:
    """Serve `app` on a free loopback port with the protocol the services serve with, on this loop, without
    its lifespan (benchmarks and tests drive the service themselves); its URL is `loopback_url(server)`."""
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http=http_protocol(app),
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.config.port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def loopback_url(server: uvicorn.Server) -> str:
    return f"http://127.0.0.1:{server.config.port}"


async def serve_all(endpoints: Sequence[Endpoint], log_level: str = "warning") -> None:
    """Serve every endpoint on one loop: the first takes the signals (and stops the others) and runs the
    lifespan, which starts the service they share."""
    servers = [QuietServer(_config(e.app, log_level, i == 0), signals=i == 0) for i, e in enumerate(endpoints)]
    servers[0].partners = servers[1:]
    await asyncio.gather(*(server.serve(sockets=list(e.sockets)) for server, e in zip(servers, endpoints, strict=True)))


RESERVED_FDS = 256  # descriptors kept for what is not a client connection: peers, files, the event loop


def open_files_limit() -> int:
    """The process's descriptor limit, raised to its hard limit (the soft default is often 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def within_descriptors(limits: ConnectionLimits, ports: int, files: int) -> ConnectionLimits:
    """`limits` with a connection cap the process can honour: `ports` listeners sharing `files` descriptors
    (a flood must meet the cap's 503, not an exhausted descriptor table)."""
    room = max(1, (files - RESERVED_FDS) // max(1, ports))
    if limits.max_connections <= room:
        return limits
    log.warning("max_connections %d per port is over what %d descriptors allow; %d instead",
                limits.max_connections, files, room)
    return limits.model_copy(update={"max_connections": room})


def build_endpoints(role: Role, settings: ServiceSettings, files: int | None = None) -> list[Endpoint]:
    text = settings.config_text()
    files = files if files is not None else open_files_limit()
    if role in ("dispatcher", "worker"):  # accuracy-aware data partitioning (variant_server.py)
        from edgepart.partition_service.variant_server import variant_app

        app, host, port = variant_app(role, text)
        return [Endpoint(app, host, port)]
    if role == "partition":
        pconfig = load_partition_config(text)
        pconfig = pconfig.model_copy(update={"connection": within_descriptors(pconfig.connection, 1, files)})
        return [Endpoint(partition_app(PartitionService(pconfig)), pconfig.host, pconfig.port)]
    gconfig = load_gateway_config(text)
    gconfig = gconfig.model_copy(update={"connection": within_descriptors(gconfig.connection, 2, files)})
    service = GatewayService(gconfig)
    return [Endpoint(gateway_app(service), gconfig.host, gconfig.port),
            Endpoint(gateway_internal_app(service), gconfig.internal_host, gconfig.internal_port)]


def with_sockets(endpoints: Sequence[Endpoint], inherited: Sequence[socket.socket]) -> list[Endpoint]:
    """Each endpoint with the inherited sockets bound to its port, or else a socket bound to its host:port."""
    claimed: set[int] = set()
    result = []
    for endpoint in endpoints:
        mine = tuple(s for s in inherited if s.getsockname()[1] == endpoint.port)
        claimed.update(s.fileno() for s in mine)
        result.append(Endpoint(endpoint.app, endpoint.host, endpoint.port, mine or (bind(endpoint.host, endpoint.port),)))
    stray = [s.getsockname() for s in inherited if s.fileno() not in claimed]
    if stray:
        raise ConfigError(f"EDGEPART_LISTEN_FDS: sockets {stray} are bound to none of the config's ports "
                          f"{[e.port for e in endpoints]}")
    return result


def main(role: Role, settings: ServiceSettings | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 2 on a bad config, with the reason on stderr."""
    try:
        settings = settings or ServiceSettings()
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        inherited = [socket.socket(fileno=fd) for fd in settings.listen_fds]
        endpoints = with_sockets(build_endpoints(role, settings), inherited)
    except (EdgepartError, ValueError, OSError) as err:
        print(f"edgepart {role}: {err}", file=sys.stderr)
        return 2
    tune_allocator()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvicorn's `loop` only counts in uvicorn.run
        runner.run(serve_all(endpoints, settings.log_level))
    return 0
