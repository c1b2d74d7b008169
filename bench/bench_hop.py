"""One tensor hop over loopback: edgepart's HTTP frame path against a raw TCP socket, side by side.

HTTP hop: the data plane's own sender (`Sender` with its keep-alive `HopClient`, as the
services run it) POSTs a frame to a uvicorn server (one worker) served like a partition: its tensor
lane (`partition_service/lane.py`) receives the frame straight into a tensor and answers 204.
Raw hop: a blocking socket sends the same frame bytes to a server that reads
them with recv_into into one preallocated buffer, builds the tensor and
answers one byte. A third column does the same raw exchange through asyncio
streams (the event-loop machinery the HTTP path also pays, without HTTP). Clients and
servers run on the services' event loop (uvloop when installed). Every
server runs in its own process; sizes alternate between the three so all see
the same machine state. Every process (servers and client) gets the allocator tuning the services
run with (`server.tune_allocator`), so no side pays fresh pages for its buffers.

Two measures per size:
- latency: median round trip of one frame (send, decode into a tensor, acknowledge);
- throughput: a stream of frames with at most WINDOW unacknowledged (as a stage streams
  pieces to a peer: the sender's FIFO lets the next body go while answers are pending),
  bytes / time. Target: HTTP >= 80 % of raw throughput at 1 MB and above.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

import torch

from bench._servers import BENCH_SECRET, run_on_service_loop, start_server
from edgepart.geometry import Region
from edgepart.partition_service.server import tune_allocator
from edgepart.partition_service.transport import (
    Sender,
    internal_headers,
    make_client,
    make_hop_client,
)
from edgepart.partition_service.wire import encode_frame, make_header

RESULTS = Path(__file__).parent / "results"
SIZES = (1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
WINDOW = 4  # frames in flight in the throughput runs


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _serve_raw(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port))
    while True:  # one connection at a time (the readiness probe, then the benchmark's)
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _serve_raw_connection(conn)
        except ConnectionError:
            conn.close()


def _serve_raw_connection(conn: socket.socket) -> None:
    prefix = bytearray(4)
    while True:
        _recv_exact(conn, memoryview(prefix))
        (length,) = struct.unpack(">I", prefix)
        head = bytearray(length)
        _recv_exact(conn, memoryview(head))
        header = json.loads(head)
        count = 1
        for d in header["shape"]:
            count *= d
        payload = bytearray(count * 4)
        _recv_exact(conn, memoryview(payload))
        tensor = torch.frombuffer(payload, dtype=torch.float32).reshape(header["shape"])
        assert tensor.numel() == count
        conn.sendall(b"k")


def _serve_async_raw(port: int) -> None:
    """Raw TCP through asyncio streams: the event-loop machinery of the HTTP path, without HTTP."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                header = json.loads(await reader.readexactly(length))
                count = 1
                for d in header["shape"]:
                    count *= d
                payload = bytearray(await reader.readexactly(count * 4))
                tensor = torch.frombuffer(payload, dtype=torch.float32).reshape(header["shape"])
                assert tensor.numel() == count
                writer.write(b"k")
        except asyncio.IncompleteReadError:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    run_on_service_loop(serve())


def _tensor(nbytes: int) -> torch.Tensor:
    return torch.randn(1, max(1, nbytes // 4 // 64), 8, 8)


async def _http_times(port: int, tensor: torch.Tensor, reps: int) -> list[float]:
    header = make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench")
    times = []
    async with make_client(60.0) as client, make_hop_client(60.0, secret=BENCH_SECRET) as hop:
        sender = Sender(client, hop, internal_headers(BENCH_SECRET))
        url = f"http://127.0.0.1:{port}"
        for i in range(reps + 2):
            started = time.perf_counter()
            await sender.send(url, header, tensor, peer="sink")
            if i >= 2:
                times.append(time.perf_counter() - started)
    return times


def _raw_times(conn: socket.socket, tensor: torch.Tensor, reps: int) -> list[float]:
    parts = encode_frame(make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench"), tensor)
    ack = bytearray(1)
    times = []
    for i in range(reps + 2):
        started = time.perf_counter()
        for part in parts:
            conn.sendall(part)
        _recv_exact(conn, memoryview(ack))
        if i >= 2:
            times.append(time.perf_counter() - started)
    return times


async def _async_raw_times(port: int, tensor: torch.Tensor, reps: int) -> list[float]:
    parts = encode_frame(make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench"), tensor)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    try:
        for i in range(reps + 2):
            started = time.perf_counter()
            for part in parts:
                writer.write(part)
            await writer.drain()
            await reader.readexactly(1)
            if i >= 2:
                times.append(time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()
    return times


async def _http_stream(port: int, tensor: torch.Tensor, frames: int, rounds: int) -> list[float]:
    """Seconds to stream `frames` frames with at most WINDOW unanswered, as a stage streams to a peer."""
    header = make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench")
    window = asyncio.Semaphore(WINDOW)
    url = f"http://127.0.0.1:{port}"
    async with make_client(60.0) as client, make_hop_client(60.0, secret=BENCH_SECRET) as hop:
        sender = Sender(client, hop, internal_headers(BENCH_SECRET))

        async def one() -> None:
            async with window:
                await sender.send(url, header, tensor, peer="sink")

        times = []
        for i in range(rounds + 1):  # the first round opens the window's connections
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(frames)))
            if i:
                times.append(time.perf_counter() - started)
    return times


def _raw_stream(port: int, tensor: torch.Tensor, frames: int, rounds: int) -> list[float]:
    """The same stream over one blocking socket: a sender thread, acknowledgements read by another."""
    parts = encode_frame(make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench"), tensor)
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    window = threading.Semaphore(WINDOW)

    def acks() -> None:
        ack = bytearray(1)
        for _ in range(frames):
            _recv_exact(conn, memoryview(ack))
            window.release()

    times = []
    try:
        for i in range(rounds + 1):
            reader = threading.Thread(target=acks)
            started = time.perf_counter()
            reader.start()
            for _ in range(frames):
                window.acquire()
                for part in parts:
                    conn.sendall(part)
            reader.join()
            if i:
                times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return times


async def _async_raw_stream(port: int, tensor: torch.Tensor, frames: int, rounds: int) -> list[float]:
    parts = encode_frame(make_header("bench", tensor, Region.full(tensor.shape[1:]), 0, "bench"), tensor)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    window = asyncio.Semaphore(WINDOW)

    async def acks() -> None:
        for _ in range(frames):
            await reader.readexactly(1)
            window.release()

    times = []
    try:
        for i in range(rounds + 1):
            started = time.perf_counter()
            acking = asyncio.create_task(acks())
            for _ in range(frames):
                await window.acquire()
                for part in parts:
                    writer.write(part)
                await writer.drain()
            await acking
            if i:
                times.append(time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()
    return times


def _label(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB" if nbytes >= 1 << 20 else f"{nbytes / 1024:.0f} KiB"


def main(quick: bool) -> None:
    tune_allocator()  # the client process too
    http, http_port = start_server("bench._servers")
    plain, plain_port = start_server("bench._servers", "--plain-route")  # the route the lane replaces
    raw, raw_port = start_server("bench.bench_hop", "serve-raw")
    araw, araw_port = start_server("bench.bench_hop", "serve-async-raw")
    rows: list[dict[str, float]] = []
    try:
        conn = socket.create_connection(("127.0.0.1", raw_port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for size in SIZES:
            tensor = _tensor(size)
            nbytes = tensor.numel() * 4
            reps = (30 if quick else 200) if nbytes <= 256 << 10 else (6 if quick else 30)
            frames = max(16, min(400, (32 << 20) // nbytes)) // (4 if quick else 1)
            http_t: list[float] = []
            raw_t: list[float] = []
            araw_t: list[float] = []
            http_s: list[float] = []
            raw_s: list[float] = []
            araw_s: list[float] = []
            plain_t: list[float] = []
            plain_s: list[float] = []
            for _ in range(3):  # interleave: all three see the same machine state
                raw_t += _raw_times(conn, tensor, reps // 3 + 1)
                http_t += run_on_service_loop(_http_times(http_port, tensor, reps // 3 + 1))
                araw_t += run_on_service_loop(_async_raw_times(araw_port, tensor, reps // 3 + 1))
                plain_t += run_on_service_loop(_http_times(plain_port, tensor, reps // 3 + 1))
                conn.close()  # the raw server serves one connection at a time
                raw_s += _raw_stream(raw_port, tensor, frames, 1 if quick else 2)
                http_s += run_on_service_loop(_http_stream(http_port, tensor, frames, 1 if quick else 2))
                araw_s += run_on_service_loop(_async_raw_stream(araw_port, tensor, frames, 1 if quick else 2))
                plain_s += run_on_service_loop(_http_stream(plain_port, tensor, frames, 1 if quick else 2))
                conn = socket.create_connection(("127.0.0.1", raw_port))
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            h, r, a = statistics.median(http_t), statistics.median(raw_t), statistics.median(araw_t)
            p = statistics.median(plain_t)
            hs, rs, as_, ps = (frames * nbytes / statistics.median(t) / 1e6 for t in (http_s, raw_s, araw_s, plain_s))
            rows.append({"bytes": nbytes, "http_ms": h * 1e3, "raw_ms": r * 1e3, "async_raw_ms": a * 1e3,
                         "plain_route_ms": p * 1e3, "frames": frames, "http_MBps": hs, "raw_MBps": rs,
                         "async_raw_MBps": as_, "plain_route_MBps": ps, "ratio": hs / rs, "ratio_async": hs / as_,
                         "latency_ratio": r / h, "lane_over_route": hs / ps, "route_over_lane_ms": p / h})
        conn.close()
    finally:
        for proc in (http, plain, raw, araw):
            proc.terminate()
            proc.wait(10)
    print("latency: median round trip of one tensor (send, decode into a tensor, acknowledge)")
    print("(HTTP hop: the tensor lane, as the services run; plain route: the FastAPI route the lane replaces)")
    print(f"{'tensor':>9}  {'HTTP hop':>10}  {'plain route':>11}  {'raw TCP':>10}  {'asyncio TCP':>11}  "
          f"{'raw/HTTP':>8}  {'route/lane':>10}")
    for row in rows:
        print(f"{_label(int(row['bytes'])):>9}  {row['http_ms']:>8.3f}ms  {row['plain_route_ms']:>9.3f}ms  "
              f"{row['raw_ms']:>8.3f}ms  {row['async_raw_ms']:>9.3f}ms  {row['latency_ratio']:>8.2f}  "
              f"{row['route_over_lane_ms']:>10.2f}")
    print(f"\nthroughput: a stream of frames, at most {WINDOW} unacknowledged, MB/s")
    print(f"{'tensor':>9}  {'frames':>6}  {'HTTP hop':>10}  {'plain route':>11}  {'raw TCP':>10}  "
          f"{'asyncio TCP':>11}  {'HTTP/raw':>8}  {'HTTP/asyncio':>12}  {'lane/route':>10}")
    for row in rows:
        target = "  (target HTTP/raw >= 0.80)" if row["bytes"] >= 1 << 20 else ""
        print(f"{_label(int(row['bytes'])):>9}  {int(row['frames']):>6}  {row['http_MBps']:>10.1f}  "
              f"{row['plain_route_MBps']:>11.1f}  {row['raw_MBps']:>10.1f}  {row['async_raw_MBps']:>11.1f}  "
              f"{row['ratio']:>8.2f}  {row['ratio_async']:>12.2f}  {row['lane_over_route']:>10.2f}{target}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "hop.json"
    out.write_text(json.dumps({"quick": quick, "window": WINDOW, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    tune_allocator()
    if len(sys.argv) == 3 and sys.argv[1] == "serve-raw":
        _serve_raw(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "serve-async-raw":
        _serve_async_raw(int(sys.argv[2]))
    else:
        main(quick="--quick" in sys.argv)
