"""Real processes over real HTTP on 127.0.0.1: the local runtime, the gateway and partitions, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import check_deployed, use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.timeline import GATEWAY_EVENTS, PARTITION_EVENTS
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame, frame_bytes, make_header
from edgepart.runtime.client import fetch_trace, infer
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.spec import deployment_from_dict


def deployment(name: str, model: Path, devices: int = 2, timeout: str = "10s") -> dict[str, object]:
    return {
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)},
            "solver": "ftp-grid", "solverOptions": {"grid": f"{devices}x1"},
            "devices": [{"name": f"d{i}", "cpus": 1} for i in range(devices)],
            "network": {"bandwidth": "100Mbps", "latency": "2ms"},
            "requestTimeout": timeout,
        },
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cnn(tmp_path_factory.mktemp("model"), "tiny_cnn.py")


@pytest.fixture(scope="module")
def reference(model_file: Path) -> torch.nn.Module:
    return load_model(ModelRef(f"{model_file}:tiny", SHAPE))


@pytest.fixture(scope="module")
def running(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, RunState]]:
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    state = asyncio.run(runtime.up(deployment_from_dict(deployment("tiny-shared", model_file)), port=0,
                                   ready_timeout_s=120))
    try:
        yield runtime, state
    finally:
        asyncio.run(runtime.down(state.name))
        assert not any(runtime.alive(p) for p in state.processes)


def expected(reference: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The whole model with the kernels the deployment runs (the fastest: it does not set exactKernels)."""
    use_exact_kernels(False)
    with torch.no_grad():
        out = reference(x)
    assert isinstance(out, torch.Tensor)
    return out


def metrics(url: str) -> dict[tuple[str, str], float]:
    """(sample name, partition label) -> value, summed over other labels."""
    text = httpx.get(url + "/metrics", timeout=10).text
    result: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("partition", ""))
            result[key] = result.get(key, 0.0) + sample.value
    return result


async def test_fifty_concurrent_requests_are_all_answered_correctly(
        running: tuple[LocalRuntime, RunState], reference: torch.nn.Module) -> None:
    _, state = running
    assert len([p for p in state.processes if p.role == "partition"]) == 3  # 2 tiles + the tail
    xs = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(50)]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
        results = await asyncio.gather(*(infer(state.gateway_url, x, request_id=f"c{i}", client=client)
                                         for i, x in enumerate(xs)))
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        assert result.request_id == f"c{i}"
        assert check_deployed(expected(reference, x), result.output, exact_kernels=False).passed


def test_metrics_parse_and_histograms_count_the_requests(running: tuple[LocalRuntime, RunState]) -> None:
    _, state = running
    partitions = [p for p in state.processes if p.role == "partition"]
    before = {p.id: metrics(p.url) for p in partitions}
    gateway_before = metrics(state.gateway_url)
    n = 7
    for _ in range(n):
        asyncio.run(infer(state.gateway_url, torch.randn(SHAPE)))
    gateway = metrics(state.gateway_url)
    for name in ("edgepart_request_seconds_count", "edgepart_queue_seconds_count"):
        assert gateway[(name, "gateway")] - gateway_before.get((name, "gateway"), 0) == n
    assert gateway[("edgepart_send_seconds_count", "gateway")] - gateway_before.get(
        ("edgepart_send_seconds_count", "gateway"), 0) == 2 * n
    assert gateway[("edgepart_inflight_requests", "gateway")] == 0
    # admission (spec.admission defaults to auto) took every one of them; none was dropped for its deadline
    assert gateway[("edgepart_admission_total", "gateway")] - gateway_before.get(
        ("edgepart_admission_total", "gateway"), 0) == n
    assert gateway[("edgepart_admission_inflight", "gateway")] == 0
    assert gateway[("edgepart_admission_bound", "gateway")] >= 1
    for proc in partitions:
        assert metrics(proc.url).get(("edgepart_dropped_total", proc.id), 0) == 0
        after = metrics(proc.url)
        for name in ("edgepart_compute_seconds_count", "edgepart_request_seconds_count",
                     "edgepart_assemble_seconds_count", "edgepart_queue_seconds_count"):
            assert after[(name, proc.id)] - before[proc.id].get((name, proc.id), 0) == n, (proc.id, name)
        assert after[("edgepart_received_bytes_total", proc.id)] > before[proc.id].get(
            ("edgepart_received_bytes_total", proc.id), 0)
        assert after[("edgepart_sent_bytes_total", proc.id)] > 0


async def test_a_request_is_traced_through_every_partition(running: tuple[LocalRuntime, RunState]) -> None:
    _, state = running
    async with httpx.AsyncClient(timeout=60) as client:
        await infer(state.gateway_url, torch.randn(SHAPE), request_id="traced", client=client)
        trace = await fetch_trace(state.gateway_url, "traced", client=client)
        missing = await client.get(state.gateway_url + "/v1/trace/never-sent")
    assert trace["request_id"] == "traced" and "pipeline_id" not in trace  # what pieces carry stays inside
    gateway = trace["gateway"]
    assert gateway["received"] == 0.0 and 0.0 <= gateway["scattered"] <= gateway["output"]
    assert set(gateway) == set(GATEWAY_EVENTS)
    parts = trace["partitions"]
    assert [p["stage"] for p in parts] == [0, 0, 1] and all("detail" not in p for p in parts)
    # each partition's events in the order they happen, within the request's lifetime; "sent" is marked once
    # the receiver has acknowledged, so only what happens before a send is ordered against the receiver's
    # events (one host, one wall clock: no tolerance is needed for causal order)
    for part in parts:
        events = part["events"]
        order = [events[k] for k in PARTITION_EVENTS]
        assert order == sorted(order) and order[0] >= 0.0 and events["compute_end"] <= gateway["output"], part
    tail = parts[2]["events"]
    assert tail["assembled"] >= max(p["events"]["compute_end"] for p in parts[:2])  # it waited for both tiles
    assert missing.status_code == 404 and "no record of request 'never-sent'" in missing.json()["detail"]


def _post_raw(port: int, head: bytes, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_frames_get_4xx_and_the_service_keeps_serving(running: tuple[LocalRuntime, RunState],
                                                          reference: torch.nn.Module) -> None:
    _, state = running
    url = state.gateway_url + "/v1/infer"
    x = torch.randn(SHAPE)
    good = frame_bytes(make_header("c", x, Region.full(x.shape[1:]), -1, "gateway"), x)
    wrong = torch.randn(1, 3, 8, 8)
    huge_header = json.dumps({"request_id": "h", "dtype": "float32", "shape": [1, 1 << 20, 1 << 10, 1 << 10],
                              "region": {"c": [0, 1 << 20], "h": [0, 1 << 10], "w": [0, 1 << 10]}, "stage": -1,
                              "sender": "gateway"}).encode()
    cases = [
        (b"\x00\x00\x00\x09not json!" + b"\x00" * 16, 400, "not valid JSON"),
        (good[:-100], 400, "truncated"),
        (good[:7], 400, "header bytes"),
        (good + b"\x00" * 8, 400, "trailing bytes"),
        (len(huge_header).to_bytes(4, "big") + huge_header, 413, "over the limit"),
        (frame_bytes(make_header("c", wrong, Region.full(wrong.shape[1:]), -1, "gateway"), wrong), 422,
         "expects [1, 3, 32, 32]"),
    ]
    with httpx.Client(timeout=30) as client:
        for body, status, words in cases:
            response = client.post(url, content=body, headers={"content-type": CONTENT_TYPE})
            assert response.status_code == status, (words, response.text)
            assert words in response.json()["detail"], response.text
        port = int(state.gateway_url.rsplit(":", 1)[1])
        answer = _post_raw(port, f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
                                 f"Content-Length: {1 << 40}\r\n\r\n".encode(), b"\x00" * 64)
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer, answer[:300]
        # a client that vanishes in the middle of its body
        _post_raw(port, f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
                        f"Content-Length: {len(good)}\r\n\r\n".encode(), good[:500])
        # a partition refuses a piece from anyone without the deployment's secret; with it, from a stranger
        tile = next(p for p in state.processes if p.id == "s1p0")
        piece = torch.zeros(1, 8, 8, 8)
        forged = frame_bytes(make_header("r", piece, Region.full(piece.shape[1:]), 0, "mallory"), piece)
        response = client.post(tile.url + "/v1/tensor", content=forged, headers={"content-type": CONTENT_TYPE})
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
        secret = (Path(state.directory) / "secret").read_text().strip()
        response = client.post(tile.url + "/v1/tensor", content=forged, headers={
            "content-type": CONTENT_TYPE, "authorization": f"Bearer {secret}"})
        assert response.status_code == 422 and "mallory" in response.json()["detail"]
        response = client.post(url, content=good, headers={"content-type": CONTENT_TYPE})
        assert response.status_code == 200
        assert check_deployed(expected(reference, x), decode_frame(response.content).tensor,
                              exact_kernels=False).passed
    errors = metrics(state.gateway_url)
    assert errors[("edgepart_errors_total", "gateway")] >= len(cases)


async def test_a_killed_partition_is_named_then_restarted(model_file: Path, tmp_path: Path,
                                                          reference: torch.nn.Module) -> None:
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(deployment_from_dict(deployment("tiny-kill", model_file, timeout="4s")), port=0,
                             ready_timeout_s=120)
    try:
        x = torch.randn(SHAPE)
        await infer(state.gateway_url, x)
        for victim in ("s1p0", "s0p1"):  # the last stage (reported by its sender), a first-stage partition
            await runtime.kill(state.name, victim)
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(state.gateway_url + "/v1/infer", json={
                    "shape": list(SHAPE), "data": x.tolist()})
            # 503 naming the victim: detected from its connection, not the 4 s timeout (which answers 504)
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["peer"] == victim and victim in body["detail"], body
            statuses = {s.name: s for s in await runtime.status(state.name)}
            assert not statuses[state.name].ready and not statuses[state.name].alive[victim]
            await runtime.restart(state.name, victim)
            result = await infer(state.gateway_url, x)
            assert check_deployed(expected(reference, x), result.output, exact_kernels=False).passed
    finally:
        await runtime.down(state.name)
    assert not (tmp_path / "run" / "tiny-kill").exists()


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgepart.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def test_the_cli_runs_a_deployment_from_another_shell(model_file: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(json.dumps(deployment("tiny-cli", model_file)))  # JSON is YAML
    env = {**os.environ, "EDGEPART_RUN_DIR": str(tmp_path / "run")}
    up = _cli("up", str(manifest), "--port", "0", env=env)
    assert up.returncode == 0, up.stderr + up.stdout
    url = next(line.split()[-1] for line in up.stdout.splitlines() if line.startswith("gateway:"))
    try:
        status = _cli("status", env=env)
        assert status.returncode == 0, status.stdout
        assert "tiny-cli: ready" in status.stdout and "s1p0" in status.stdout
        check = _cli("infer", url, "--random", "--check", "--deployment", str(manifest), "--trace", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "output 1x10" in check.stdout and "OK" in check.stdout and "latency" in check.stdout
        assert "compute start" in check.stdout and "s1p0" in check.stdout and "scattered at" in check.stdout
        array = tmp_path / "x.npy"
        np.save(array, np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
        out = tmp_path / "y.npy"
        given = _cli("infer", url, "--input", str(array), "--check", "--model", f"{model_file}:tiny", "--input-shape",
                     "1,3,32,32", "--output", str(out), env=env)
        assert given.returncode == 0, given.stdout + given.stderr
        assert np.load(out).shape == (1, 10)
        np.save(array, np.zeros((1, 3, 8, 8), dtype=np.float32))
        bad = _cli("infer", url, "--input", str(array), env=env)
        assert bad.returncode != 0 and "expects [1, 3, 32, 32]" in bad.stderr
        again = _cli("up", str(manifest), "--port", "0", env=env)
        assert again.returncode != 0 and "already up" in again.stderr
    finally:
        down = _cli("down", "tiny-cli", env=env)
    assert down.returncode == 0 and "stopped tiny-cli" in down.stdout
    assert "no deployments are up" in _cli("status", env=env).stdout
    unreachable = _cli("infer", url, "--random", env=env)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr
