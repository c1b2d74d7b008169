"""Watching peers' processes through their connections: a process that ends is noticed at once.

`PeerWatch` holds one idle TCP connection to each watched peer's port. The connection carries no request:
while the peer's process lives it stays open (or the peer closes it once idle for its keep-alive, and the
watch opens another). When the process ends (crash, SIGKILL, shutdown), its kernel closes the connection
(EOF or reset) and the next connect is refused: the watch then calls `on_down(peer, why)`, once, and marks
the peer up again when it accepts connections again (a restart).

A peer whose host vanishes without closing its connections (power loss, cable pulled: no FIN, no reset), or
whose process is stopped (its kernel still accepts and acknowledges), is found by pings: the watch sends a
`GET /healthz` on its connection every `ping_interval_s` and declares the peer unreachable when one goes
unanswered for `peer_timeout_s` (default 2 s). The peer counts as up again once it answers a ping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PeerWatch", "WatchSettings"]

log = logging.getLogger("edgepart.watch")

OnDown = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class WatchSettings:
    retry_s: float = 0.5
    """Pause between connects while a peer is down (or not started yet)."""
    connect_timeout_s: float = 1.0
    """Without pings, a connect that takes longer proves nothing (a slow or unreachable host): the watch tries
    again. With pings, a connect that takes `peer_timeout_s` is a ping unanswered."""
    peer_timeout_s: float | None = 2.0
    """A ping unanswered this long declares the peer unreachable; None: no pings (only ends are seen)."""
    ping_interval_s: float = 0.5
    """Pause between an answered ping and the next."""


PING = b"GET /healthz HTTP/1.1\r\nHost: edgepart-watch\r\n\r\n"


class _Held(asyncio.Protocol):
    """An idle connection that waits for its end; whatever the peer sends answers the ping in flight."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.answered = asyncio.Event()

    def data_received(self, data: bytes) -> None:  # any bytes prove that the process runs; no need to parse
        self.answered.set()

    def eof_received(self) -> bool:
        self._end("the peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the connection was lost: {exc}" if exc else "the connection closed")

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class PeerWatch:
    """Watches each peer (`id -> http://host:port`) of a process; `down` names those whose process ended, or
    that answer no ping, until they answer again."""

    def __init__(self, peers: Mapping[str, str], on_down: OnDown, settings: WatchSettings | None = None):
        self.settings = settings or WatchSettings()
        self.down: dict[str, str] = {}  # peer -> why, until it accepts connections again
        self.deaths = 0  # ends of watched processes seen so far
        self._peers = {peer: url for peer, url in peers.items() if urlsplit(url).scheme == "http"}
        self._on_down = on_down
        self._up: set[str] = set()
        self._silent: set[str] = set()  # down for want of an answer, though it may still accept connections
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for peer, url in self._peers.items():
            parts = urlsplit(url)
            if parts.hostname:
                self._tasks.append(asyncio.create_task(self._watch(peer, parts.hostname, parts.port or 80),
                                                       name=f"watch-{peer}"))

    def up(self, peer: str) -> bool:
        """True while the watch holds a connection to `peer` (that answers its pings)."""
        return peer in self._up

    def silent(self, peer: str) -> bool:
        """True while `peer` is down because it answered no ping (its connections may still open)."""
        return peer in self._silent

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
                async with asyncio.timeout(self._connect_timeout_s):
                    transport, held = await loop.create_connection(_Held, host, port)
            except TimeoutError:
                if self.settings.peer_timeout_s is not None and peer in self._up:  # a ping that could not go
                    self._up.discard(peer)
                    self._silent.add(peer)
                    await self._died(peer, f"it accepted no connection for {self._connect_timeout_s:g} s (its "
                                           "host is down or cut off, or its process is stopped)")
                await asyncio.sleep(self.settings.retry_s)
                continue
            except OSError as err:
                self._silent.discard(peer)  # refused: its process ended (a send finds that out at once)
                if peer in self._up:  # it was up: its process ended
                    self._up.discard(peer)
                    await self._died(peer, f"its process ended ({last}; a new connection is refused: "
                                           f"{err.strerror or type(err).__name__})")
                await asyncio.sleep(self.settings.retry_s)
                continue
            try:
                last = await self._hold(peer, transport, held)
            except Exception:  # a watch that ended would hide every later death: log it and carry on
                log.exception("watching partition %s", peer)
                last = "the watch failed"
                await asyncio.sleep(self.settings.retry_s)
            finally:
                transport.close()

    @property
    def _connect_timeout_s(self) -> float:
        """With pings, each ping may need a new connection (our peers close after each answer): a connect
        gets the ping's time."""
        if self.settings.peer_timeout_s is None:
            return self.settings.connect_timeout_s
        return self.settings.peer_timeout_s

    async def _hold(self, peer: str, transport: asyncio.Transport, held: _Held) -> str:
        """Hold a connection until it ends (why) or a ping goes unanswered (the peer is then reported)."""
        if self.settings.peer_timeout_s is None:
            self._back(peer)
            return await held.ended
        while True:
            if transport.is_closing():  # closed since its last answer (its end not seen yet): connect again
                return "the connection closed"
            held.answered.clear()
            transport.write(PING)
            answer = asyncio.ensure_future(held.answered.wait())
            watched: list[asyncio.Future[Any]] = [answer, held.ended]
            done, _ = await asyncio.wait(watched, timeout=self.settings.peer_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            answer.cancel()
            if held.answered.is_set():
                self._back(peer)
            if held.ended.done():
                if held.answered.is_set():  # a peer may answer and close (ours do): the next connection pings on
                    await asyncio.sleep(self.settings.ping_interval_s)
                return held.ended.result()
            if not done:
                if peer in self._up:  # it was up: its host or process no longer answers
                    self._up.discard(peer)
                    self._silent.add(peer)
                    await self._died(peer, f"it answered no ping for {self.settings.peer_timeout_s:g} s (its host "
                                           "is down or cut off, or its process is stopped)")
                await asyncio.sleep(self.settings.retry_s)  # a stopped peer's kernel still accepts: go easy
                return "a ping went unanswered"
            await asyncio.sleep(self.settings.ping_interval_s)

    def _back(self, peer: str) -> None:
        self._silent.discard(peer)
        if peer not in self._up:
            self._up.add(peer)
            if self.down.pop(peer, None) is not None:
                log.info("partition %s answers again", peer)

    async def _died(self, peer: str, why: str) -> None:
        self.down[peer] = why
        self.deaths += 1
        log.warning("partition %s died: %s", peer, why)
        try:
            await self._on_down(peer, why)
        except Exception:
            log.exception("failing the requests that waited on partition %s", peer)
