"""Payload memory under hostile connections, on real processes: nothing is allocated for a piece the receiver
does not expect or that lacks the secret, payload memory in flight is capped (503 beyond), a stalled body is
cut off (408) and its memory returns to the kernel.

Before: a 200-byte frame header declaring 256 MiB made the receiver allocate (and touch) 256 MiB at once; six
such connections took a partition from 408 to 1,945 MiB and the gateway from 322 to 1,844 MiB, which they
still held 24 minutes later.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from edgepart.partition_service.config import ConnectionLimits, load_partition_config
from edgepart.partition_service.wire import CONTENT_TYPE
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.spec import deployment_from_dict

MODEL = '''
from torch import nn

def wide():
    return nn.Sequential(nn.Conv2d(8, 8, 1))
'''
SHAPE = (1, 8, 1024, 1024)  # a 32 MiB piece: over the size the services map on their own (16 MiB)
PIECE = 32 * 2**20
MiB = 2**20
LIMITS = ConnectionLimits(head_timeout_s=2.0, keep_alive_s=5.0, body_timeout_s=2.0, min_body_rate=1 << 30,
                          max_connections=64, max_payload_bytes=100 * MiB)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunState]:
    model = tmp_path_factory.mktemp("model") / "wide_model.py"
    model.write_text(MODEL)
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    spec = {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "wide"},
            "spec": {"model": {"name": f"{model}:wide", "inputShape": list(SHAPE)}, "solver": "single",
                     "devices": [{"name": "d0", "cpus": 1, "memory": "8Gi"}], "requestTimeout": "60s"}}
    state = asyncio.run(runtime.up(deployment_from_dict(spec), port=0, ready_timeout_s=180, connection=LIMITS))
    try:
        asyncio.run(infer(state.gateway_url, torch.zeros(SHAPE), timeout_s=120))  # warm every path once
        yield state
    finally:
        asyncio.run(runtime.down(state.name))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric(url: str, name: str, reason: str | None = None) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and (reason is None or s.labels.get("reason") == reason))


def frame_start(header: dict[str, object]) -> tuple[bytes, int]:
    """The prefix and JSON header of a frame, and the frame's whole length."""
    raw = json.dumps(header).encode()
    nbytes = 4
    for d in header["shape"]:  # type: ignore[attr-defined]
        nbytes *= int(d)
    return len(raw).to_bytes(4, "big") + raw, 4 + len(raw) + nbytes


def post_head(port: int, path: str, length: int, authorization: str | None) -> bytes:
    auth = f"authorization: Bearer {authorization}\r\n" if authorization else ""
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {length}\r\n"
            f"{auth}\r\n").encode()


def answer_of(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


def settle(pid: int, below: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while rss(pid) > below and time.monotonic() < deadline:
        time.sleep(0.2)
    return rss(pid)


def test_hostile_pieces_pin_no_memory_at_the_partition(deployed: RunState) -> None:
    state = deployed
    part = state.process("s0p0")
    port = int(part.url.rsplit(":", 1)[1])
    secret = (Path(state.directory) / "secret").read_text().strip()
    config = load_partition_config(Path(part.config).read_text())
    piece = config.inputs[0]
    expected = {"request_id": "hostile", "dtype": "float32", "shape": [1, *piece.region.shape],
                "region": {k: list(v) for k, v in zip("chw", piece.region.dims, strict=True)}, "stage": -1,
                "sender": piece.sender}
    huge = {**expected, "shape": [1, 64, 1024, 1024], "region": {"c": [0, 64], "h": [0, 1024], "w": [0, 1024]}}
    baseline = rss(part.pid)

    # 1. the old attack: ~200 bytes declaring 256 MiB, without the secret (401) or not a piece it expects (422)
    sockets = []
    for authorization, header, status in ((None, huge, b"401"), (secret, huge, b"422")):
        prefix, length = frame_start(header)
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(post_head(port, "/v1/tensor", length, authorization) + prefix)
            sockets.append((sock, status))
    for sock, status in sockets:
        assert answer_of(sock).startswith(b"HTTP/1.1 " + status)
        sock.close()
    assert rss(part.pid) < baseline + 16 * MiB, "a refused piece allocated memory"

    # 2. expected pieces whose senders stall: at most the budget is held (3 x 32 MiB), the rest get 503 at
    # once; memory only as bytes arrive (each sent 1 MiB); the stalled bodies are cut off at their deadline
    refused_before = metric(part.url, "edgepart_errors_total", "memory_budget")
    stalled = []
    for i in range(6):
        prefix, length = frame_start({**expected, "request_id": f"stall-{i}"})
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(post_head(port, "/v1/tensor", length, secret) + prefix + b"\x00" * MiB)
        stalled.append(sock)
    time.sleep(0.5)
    held = metric(part.url, "edgepart_payload_bytes_in_flight")
    assert held == 3 * PIECE, held
    assert metric(part.url, "edgepart_errors_total", "memory_budget") - refused_before == 3
    assert rss(part.pid) < baseline + 3 * PIECE // 2, "buffers were touched before their bytes arrived"
    answers = [answer_of(sock) for sock in stalled]
    assert sorted(a[:12] for a in answers) == [b"HTTP/1.1 408"] * 3 + [b"HTTP/1.1 503"] * 3, answers
    for sock in stalled:
        sock.close()
    assert metric(part.url, "edgepart_payload_bytes_in_flight") == 0
    after = settle(part.pid, baseline + 16 * MiB)
    assert after < baseline + 16 * MiB, (baseline // MiB, after // MiB)  # the memory went back

    # the partition still serves
    result = asyncio.run(infer(state.gateway_url, torch.ones(SHAPE), timeout_s=120))
    assert result.output.shape == SHAPE


def test_hostile_inputs_pin_no_memory_at_the_gateway(deployed: RunState) -> None:
    state = deployed
    gateway = state.process("gateway")
    port = int(state.gateway_url.rsplit(":", 1)[1])
    baseline = rss(gateway.pid)
    wrong = {"request_id": "x", "dtype": "float32", "shape": [1, 64, 1024, 1024],
             "region": {"c": [0, 64], "h": [0, 1024], "w": [0, 1024]}, "stage": -1, "sender": "gateway"}
    right = {**wrong, "shape": list(SHAPE), "region": {"c": [0, 8], "h": [0, 1024], "w": [0, 1024]}}
    sockets = []
    for path, header, status in (("/v1/tensor", wrong, b"404"), ("/v1/infer", wrong, b"422")):
        prefix, length = frame_start(header)
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(post_head(port, path, length, None) + prefix)
            sockets.append((sock, status))
    for sock, status in sockets:
        assert answer_of(sock).startswith(b"HTTP/1.1 " + status)
        sock.close()
    assert rss(gateway.pid) < baseline + 16 * MiB
    # inputs of the right shape, stalled: capped, cut off, given back
    stalled = []
    for _ in range(5):
        prefix, length = frame_start(right)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(post_head(port, "/v1/infer", length, None) + prefix + b"\x00" * MiB)
        stalled.append(sock)
    time.sleep(0.5)
    assert metric(state.gateway_url, "edgepart_payload_bytes_in_flight") == 3 * PIECE
    answers = [answer_of(sock) for sock in stalled]
    assert sorted(a[:12] for a in answers) == [b"HTTP/1.1 408"] * 3 + [b"HTTP/1.1 503"] * 2, answers
    for sock in stalled:
        sock.close()
    assert metric(state.gateway_url, "edgepart_payload_bytes_in_flight") == 0
    after = settle(gateway.pid, baseline + 16 * MiB)
    assert after < baseline + 16 * MiB, (baseline // MiB, after // MiB)
    assert asyncio.run(infer(state.gateway_url, torch.ones(SHAPE), timeout_s=120)).output.shape == SHAPE
