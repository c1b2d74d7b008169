"""PeerWatch: a watched process that ends is reported once, from its connection; one that is back is up; one
that keeps its connection open but answers no ping (a vanished host, a stopped process) is reported too."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edgepart.partition_service.watch import PeerWatch, WatchSettings


class Peer:
    """A listening port whose 'process' can end (listener and connections closed) and start again, and that
    answers each ping while `answering` is set (cleared: a host gone silent, its connections open)."""

    def __init__(self, close_after_answer: bool = False) -> None:
        self.close_after_answer = close_after_answer  # as uvicorn does behind the lane's guard
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: list[asyncio.StreamWriter] = []
        self.answering = asyncio.Event()
        self.answering.set()
        self.pings = 0

    async def start(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    self.pings += 1
                    await self.answering.wait()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    if self.close_after_answer:
                        writer.close()
                        return

        self.server = await asyncio.start_server(accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def end(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.connections:
            writer.close()
        self.connections.clear()
        await self.server.wait_closed()


async def _up(watch: PeerWatch, peer: str) -> None:
    while not watch.up(peer):
        await asyncio.sleep(0.01)


async def test_a_peer_that_ends_is_reported_once_and_seen_back() -> None:
    peer = Peer()
    await peer.start()
    died: list[tuple[str, str]] = []
    reported = asyncio.Event()

    async def on_down(name: str, why: str) -> None:
        died.append((name, why))
        reported.set()

    watch = PeerWatch({"p": f"http://127.0.0.1:{peer.port}", "other": "https://ignored:1"}, on_down,
                      WatchSettings(retry_s=0.05))
    watch.start()
    try:
        await asyncio.wait_for(_up(watch, "p"), 10)
        await peer.end()
        await asyncio.wait_for(reported.wait(), 10)
        assert died[0][0] == "p" and "refused" in died[0][1] and watch.down.keys() == {"p"}
        assert not watch.silent("p")  # ended, not silent: a send to it is refused at once anyway
        await peer.start()  # a restart on the same port
        await asyncio.wait_for(_up(watch, "p"), 10)
        assert watch.down == {} and watch.deaths == 1 and len(died) == 1
    finally:
        await watch.aclose()
        await peer.end()


@pytest.mark.parametrize("close_after_answer", [False, True])
async def test_a_peer_that_answers_no_ping_is_reported_though_its_connection_stays_open(
        close_after_answer: bool) -> None:
    peer = Peer(close_after_answer)
    await peer.start()
    died: list[tuple[str, str]] = []
    reported = asyncio.Event()

    async def on_down(name: str, why: str) -> None:
        died.append((name, why))
        reported.set()

    watch = PeerWatch({"p": f"http://127.0.0.1:{peer.port}"}, on_down,
                      WatchSettings(retry_s=0.05, peer_timeout_s=0.3, ping_interval_s=0.05))
    watch.start()
    try:
        await asyncio.wait_for(_up(watch, "p"), 10)
        peer.answering.clear()  # silent, nothing closed: only the pings can tell
        await asyncio.wait_for(reported.wait(), 10)
        assert died == [("p", died[0][1])] and "answered no ping for 0.3 s" in died[0][1]
        assert not watch.up("p") and watch.down.keys() == {"p"} and watch.deaths == 1 and watch.silent("p")
        peer.answering.set()  # it answers again (SIGCONT, the cable back): up, reported only once
        await asyncio.wait_for(_up(watch, "p"), 10)
        assert watch.down == {} and len(died) == 1 and peer.pings > 2 and not watch.silent("p")
    finally:
        await watch.aclose()
        await peer.end()


async def test_without_pings_a_silent_peer_stays_up() -> None:
    peer = Peer()
    peer.answering.clear()
    await peer.start()

    async def on_down(name: str, why: str) -> None:
        raise AssertionError(f"{name} reported: {why}")

    watch = PeerWatch({"p": f"http://127.0.0.1:{peer.port}"}, on_down, WatchSettings(peer_timeout_s=None))
    watch.start()
    try:
        await asyncio.wait_for(_up(watch, "p"), 10)
        assert peer.pings == 0 and watch.deaths == 0
    finally:
        await watch.aclose()
        await peer.end()
