"""PeerWatch: a watched process that ends is reported once, from its connection; one that is back is up."""

from __future__ import annotations

import asyncio

from edgepart.partition_service.watch import PeerWatch, WatchSettings


class Peer:
    """A listening port whose 'process' can end (listener and connections closed) and start again."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.append(writer)

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
        await peer.start()  # a restart on the same port
        await asyncio.wait_for(_up(watch, "p"), 10)
        assert watch.down == {} and watch.deaths == 1 and len(died) == 1
    finally:
        await watch.aclose()
        await peer.end()
