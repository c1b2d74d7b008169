"""Watching peers' processes through their connections: a process that ends is noticed at once.

`PeerWatch` holds one idle TCP connection to each watched peer's port. The connection carries no request:
while the peer's process lives it stays open (or the peer closes it once idle for its keep-alive, and the
watch opens another). When the process ends (crash, SIGKILL, shutdown), its kernel closes the connection
(EOF or reset) and the next connect is refused: the watch then calls `on_down(peer, why)`, once, and marks
the peer up again when it accepts connections again (a restart).

What it does not see: a peer whose host vanishes without closing its connections (power, network), or a
stopped process (its kernel still accepts). Requests waiting on such a peer time out, and the timeout names
the partition that holds the late piece (`blame.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["PeerWatch", "WatchSettings"]

log = logging.getLogger("edgepart.watch")

OnDown = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class WatchSettings:
    retry_s: float = 0.5
    """Pause between connects while a peer is down (or not started yet)."""
    connect_timeout_s: float = 1.0
    """A connect that takes longer proves nothing (a slow or unreachable host): the watch tries again."""


class _Held(asyncio.Protocol):
    """An idle connection that only waits for its end."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:  # the peer has nothing to say on it; ignore what it says
        pass

    def eof_received(self) -> bool:
        self._end("the peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the connection was lost: {exc}" if exc else "the connection closed")

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class PeerWatch:
    """Watches each peer (`id -> http://host:port`) of a process; `down` names those whose process ended and
    that refuse connections now."""

    def __init__(self, peers: Mapping[str, str], on_down: OnDown, settings: WatchSettings | None = None):
        self.settings = settings or WatchSettings()
        self.down: dict[str, str] = {}  # peer -> why, until it accepts connections again
        self.deaths = 0  # ends of watched processes seen so far
        self._peers = {peer: url for peer, url in peers.items() if urlsplit(url).scheme == "http"}
        self._on_down = on_down
        self._up: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for peer, url in self._peers.items():
            parts = urlsplit(url)
            if parts.hostname:
                self._tasks.append(asyncio.create_task(self._watch(peer, parts.hostname, parts.port or 80),
                                                       name=f"watch-{peer}"))

    def up(self, peer: str) -> bool:
        """True while the watch holds a connection to `peer`."""
        return peer in self._up

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self, peer: str, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        last = "the connection closed"
        while True:
            try:
                async with asyncio.timeout(self.settings.connect_timeout_s):
                    transport, held = await loop.create_connection(_Held, host, port)
            except TimeoutError:
                await asyncio.sleep(self.settings.retry_s)
                continue
            except OSError as err:
                if peer in self._up:  # it was up: its process ended
                    self._up.discard(peer)
                    await self._died(peer, f"its process ended ({last}; a new connection is refused: "
                                           f"{err.strerror or type(err).__name__})")
                await asyncio.sleep(self.settings.retry_s)
                continue
            if peer not in self._up:
                self._up.add(peer)
                if self.down.pop(peer, None) is not None:
                    log.info("partition %s accepts connections again", peer)
            try:
                last = await held.ended
            finally:
                transport.close()

    async def _died(self, peer: str, why: str) -> None:
        self.down[peer] = why
        self.deaths += 1
        log.warning("partition %s died: %s", peer, why)
        try:
            await self._on_down(peer, why)
        except Exception:
            log.exception("failing the requests that waited on partition %s", peer)
