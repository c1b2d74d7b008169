"""The attacks of issue 10 against a real deployment (local processes on 127.0.0.1), and a bounded fuzz run.

An attacker here is anyone who can reach the gateway's client port and the deployment's internal ports but
does not hold the deployment's secret: another client, another pod. Each attack worked before the internal
port and the secret existed (a client forged another client's output, failed another's request, fed
partitions pieces and took their assembly slots); each now gets 401 (or 404 on the client port) and has no
effect on the victim.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.config import (
    ConnectionLimits,
    load_gateway_config,
    load_partition_config,
)
from edgepart.partition_service.wire import CONTENT_TYPE, frame_bytes, make_header
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime, ProcessState, RunState
from edgepart.spec import deployment_from_dict

LIMITS = ConnectionLimits(head_timeout_s=1.0, keep_alive_s=2.0, body_timeout_s=1.0, min_body_rate=1 << 20,
                          max_connections=64)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cnn(tmp_path_factory.mktemp("model"), "tiny_secure.py")


@pytest.fixture(scope="module")
def deployed(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunState]:
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    spec = {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "secure"},
            "spec": {"model": {"name": f"{model_file}:tiny", "inputShape": list(SHAPE)},
                     "solver": "ftp-grid", "solverOptions": {"grid": "2x1"},
                     "devices": [{"name": "d0", "cpus": 1}, {"name": "d1", "cpus": 1}],
                     "network": {"bandwidth": "100Mbps", "latency": "2ms"}, "requestTimeout": "20s",
                     # a test stops the tail (SIGSTOP) to hold a request: no pings, or it is found silent
                     "peerTimeout": "0s", "exactKernels": True}}
    state = asyncio.run(runtime.up(deployment_from_dict(spec), port=0, ready_timeout_s=120, connection=LIMITS))
    try:
        yield state
    finally:
        asyncio.run(runtime.down(state.name))


def reference(model_file: Path, x: torch.Tensor) -> torch.Tensor:
    use_exact_kernels(True)
    with torch.no_grad():
        out = load_model(ModelRef(f"{model_file}:tiny", SHAPE))(x)
    assert isinstance(out, torch.Tensor)
    return out


def secret_of(state: RunState) -> str:
    return (Path(state.directory) / "secret").read_text().strip()


def internal_url(state: RunState) -> str:
    config = load_gateway_config((Path(state.directory) / "configs" / "gateway.json").read_text())
    return f"http://127.0.0.1:{config.internal_port}"


def partition(state: RunState, ident: str) -> ProcessState:
    return state.process(ident)


def errors(url: str, reason: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "edgepart_errors_total" and s.labels.get("reason") == reason)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0, half_close: bool = True) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- item 3: the attacks, which now fail


async def test_forging_another_clients_output_or_failing_its_request_is_refused(deployed: RunState,
                                                                                model_file: Path) -> None:
    state = deployed
    internal = internal_url(state)
    gateway_config = load_gateway_config((Path(state.directory) / "configs" / "gateway.json").read_text())
    piece = gateway_config.inputs[0]  # the output piece the gateway waits for from the last stage
    forged_output = torch.full((1, *piece.region.shape), 42.0)
    before = errors(state.gateway_url, "unauthorized")
    tail = partition(state, "s1p0")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    os.kill(tail.pid, signal.SIGSTOP)  # the victim's request waits at the gateway for the last stage
    try:
        victim = asyncio.create_task(infer(state.gateway_url, x, request_id="victim", timeout_s=60))
        await asyncio.sleep(1.0)
        assert not victim.done()
        trace = httpx.get(f"{state.gateway_url}/v1/trace/victim", timeout=10).json()
        assert "pipeline_id" not in json.dumps(trace) and "victim." not in json.dumps(trace)
        async with httpx.AsyncClient(timeout=10) as client:
            for rid in ("victim", "victim.000000000000"):
                body = frame_bytes(make_header(rid, forged_output, piece.region, piece.stage, piece.sender),
                                   forged_output)
                report = {"request_id": rid, "partition": "s1p0", "error": "peer_error", "detail": "forged"}
                headers = {"content-type": CONTENT_TYPE}
                # the client port serves no internal path
                assert (await client.post(state.gateway_url + "/v1/tensor", content=body,
                                          headers=headers)).status_code == 404
                assert (await client.post(state.gateway_url + "/v1/failures", json=report)).status_code == 404
                # the internal port wants the deployment's secret: the lane, the app's routes, a chunked body
                for auth in ({}, {"authorization": "Bearer " + "x" * 43}, {"authorization": secret_of(state)}):
                    answer = await client.post(internal + "/v1/tensor", content=body, headers={**headers, **auth})
                    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
                    answer = await client.post(internal + "/v1/failures", json=report, headers=auth)
                    assert answer.status_code == 401

                async def chunks(data: bytes = body) -> Any:
                    yield data[:10]
                    yield data[10:]

                answer = await client.post(internal + "/v1/tensor", content=chunks(), headers=headers)
                assert answer.status_code == 401
        # from the head alone: the body is never read, the connection closed
        head = (f"POST /v1/tensor HTTP/1.1\r\nhost: x\r\ncontent-type: {CONTENT_TYPE}\r\n"
                f"content-length: {1 << 28}\r\n\r\n").encode()
        answer = raw_exchange(port_of(internal), head + b"\x00" * 1000, half_close=False)
        assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower()
    finally:
        os.kill(tail.pid, signal.SIGCONT)
    result = await victim  # its own, untouched answer
    assert not torch.any(result.output == 42.0)
    torch.testing.assert_close(result.output, reference(model_file, x), atol=1e-5, rtol=1e-4)
    assert errors(state.gateway_url, "unauthorized") - before >= 2 * 3 * 2 + 2


async def test_pieces_without_the_secret_take_no_assembly_slot(deployed: RunState) -> None:
    """32 forged half-requests used to take a partition's slots, and the next real request failed after 19 s."""
    state = deployed
    secret = {"authorization": f"Bearer {secret_of(state)}"}
    tail = partition(state, "s1p0")
    config = load_partition_config((Path(state.directory) / "configs" / "s1p0.json").read_text())
    first = config.inputs[0]  # one of the two pieces s1p0 waits for: a half-request
    tensor = torch.zeros((1, *first.region.shape))
    before = errors(tail.url, "unauthorized")
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(*(client.post(tail.url + "/v1/tensor", content=frame_bytes(
            make_header(f"forged-{i}", tensor, first.region, first.stage, first.sender), tensor),
            headers={"content-type": CONTENT_TYPE}) for i in range(32)))
        assert [a.status_code for a in answers] == [401] * 32
        info = (await client.get(tail.url + "/v1/info", headers=secret)).json()
        assert info["assembling"] == 0
        assert (await client.get(tail.url + "/v1/info")).status_code == 401  # its config is internal too
        assert (await client.get(tail.url + "/v1/timeline/x")).status_code == 401
        assert (await client.get(tail.url + "/healthz")).status_code == 200  # probes need no secret
        started = time.monotonic()
        await infer(state.gateway_url, torch.randn(SHAPE), client=client)
        assert time.monotonic() - started < 10  # not stuck behind forged requests
    assert errors(tail.url, "unauthorized") - before == 32 + 2  # the pieces, the info and the timeline


def test_the_client_port_names_no_internal_url_or_file_path(deployed: RunState, model_file: Path) -> None:
    state = deployed
    asyncio.run(infer(state.gateway_url, torch.randn(SHAPE), request_id="seen"))
    secrets_and_places = [secret_of(state), str(model_file.parent), state.directory, internal_url(state),
                          *(p.url for p in state.processes if p.role == "partition")]
    with httpx.Client(timeout=10) as client:
        for path in ("/v1/status", "/v1/plan", "/openapi.json", "/v1/model", "/v1/trace/seen", "/readyz"):
            answer = client.get(state.gateway_url + path)
            assert answer.status_code == 200, (path, answer.text)
            text = answer.text
            assert "http://" not in text and "/tmp/" not in text, (path, text[:500])
            for place in secrets_and_places:
                assert place not in text, (path, place)
        paths = set(client.get(state.gateway_url + "/openapi.json").json()["paths"])
        assert paths == {"/v1/infer", "/v1/models/{model_id}/infer", "/v1/models", "/healthz", "/readyz",
                         "/metrics", "/v1/model", "/v1/status", "/v1/trace/{request_id}", "/v1/plan"}
        assert client.get(internal_url(state) + "/openapi.json").status_code == 401
        assert client.get(partition(state, "s0p0").url + "/openapi.json").status_code == 401
    assert "tiny_secure.py:tiny" in httpx.get(state.gateway_url + "/v1/model").text  # the file's name only


# ---------------------------------------------------------------- item 5: time limits on real processes


def test_a_dribbled_head_and_a_stalled_partial_head_are_cut_off(deployed: RunState) -> None:
    state = deployed
    gateway = next(p for p in state.processes if p.role == "gateway")
    before = errors(state.gateway_url, "slow_request")
    with socket.create_connection(("127.0.0.1", port_of(state.gateway_url)), timeout=10) as sock:
        sock.sendall(b"G")  # a 1-byte partial head, then nothing: cut at the head timeout (1 s here)
        assert sock.recv(4096).startswith(b"HTTP/1.1 408") and sock.recv(4096) == b""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(internal_url(state))), timeout=10) as sock:
        for byte in b"POST /v1/tensor HTTP/1.1\r\nhost: x\r\n" * 10:  # a byte every 0.1 s, never finishing
            if select.select([sock], [], [], 0.1)[0]:
                break  # answered
            sock.sendall(bytes([byte]))
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 8  # cut off, not held for the 37 s the dribble would take
    assert errors(state.gateway_url, "slow_request") - before == 2
    assert gateway.pid and open_fds(gateway.pid) < 100


def test_connections_beyond_the_cap_are_answered_503_and_closed(deployed: RunState) -> None:
    state = deployed
    gateway = next(p for p in state.processes if p.role == "gateway")
    fds = open_fds(gateway.pid)
    held = [socket.create_connection(("127.0.0.1", port_of(state.gateway_url)), timeout=10)
            for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.3)
        for _ in range(5):
            answer = raw_exchange(port_of(state.gateway_url), b"", half_close=False, timeout=5)
            assert answer.startswith(b"HTTP/1.1 503") and b"connections are open" in answer, answer[:200]
        assert open_fds(gateway.pid) <= fds + LIMITS.max_connections + 2
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while open_fds(gateway.pid) > fds + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(gateway.pid) <= fds + 2
    assert asyncio.run(infer(state.gateway_url, torch.randn(SHAPE))).output.shape == (1, 10)


# ---------------------------------------------------------------- fuzz: frame headers and heads


HEAD_PARTS = st.sampled_from([
    b"POST /v1/tensor HTTP/1.1", b"POST /v1/infer HTTP/1.1", b"GET /v1/status HTTP/1.1", b"POST / HTTP/1.0",
    b"GET /healthz HTTP/1.1", b"PUT /v1/tensor HTTP/9.9", b"\x00\xff", b"POST /v1/tensor", b"",
])
HEADERS = st.lists(st.sampled_from([
    b"content-type: " + CONTENT_TYPE.encode(), b"content-type: application/json", b"content-length: 0",
    b"content-length: 100", b"content-length: 99999999999", b"content-length: -1", b"transfer-encoding: chunked",
    b"expect: 100-continue", b"connection: close", b"authorization: Bearer nope", b"x: " + b"y" * 300,
    b"bad header", b": empty", b"content-length: 10", b"content-length: 12",
]), max_size=6)


def _frame_prefix(header: dict[str, Any] | bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(4, "big") + raw


FRAME_HEADERS = st.one_of(
    st.fixed_dictionaries({
        "request_id": st.text(max_size=20), "dtype": st.sampled_from(["float32", "int8", "float99", 3]),
        "shape": st.lists(st.integers(-2, 1 << 33), max_size=6),
        "region": st.dictionaries(st.sampled_from(["c", "h", "w", "x"]), st.lists(st.integers(-5, 1 << 31),
                                                                                   max_size=3), max_size=4),
        "stage": st.integers(-3, 5000), "sender": st.sampled_from(["gateway", "s0p0", "s0p1", "x" * 70]),
    }),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def baseline(deployed: RunState) -> dict[str, tuple[int, int]]:
    return {p.id: (open_fds(p.pid), rss_bytes(p.pid)) for p in deployed.processes}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["client", "internal", "partition"]), line=HEAD_PARTS, headers=HEADERS,
       frame=FRAME_HEADERS, tail=st.binary(max_size=256), authorized=st.booleans())
def test_fuzzed_heads_and_frame_headers_get_answers_not_crashes(
        deployed: RunState, baseline: dict[str, tuple[int, int]], target: str, line: bytes, headers: list[bytes],
        frame: dict[str, Any] | bytes, tail: bytes, authorized: bool) -> None:
    state = deployed
    url = {"client": state.gateway_url, "internal": internal_url(state),
           "partition": partition(state, "s0p1").url}[target]
    extra = [f"authorization: Bearer {secret_of(state)}".encode()] if authorized else []
    body = _frame_prefix(frame) + tail
    request = b"\r\n".join([line, b"host: x", *headers, *extra]) + b"\r\n\r\n" + body
    answer = raw_exchange(port_of(url), request, timeout=10)
    if answer:  # every answer is HTTP, and none is an internal error
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        assert int(answer[9:12]) != 500, answer[:300]


def test_after_the_fuzz_no_process_died_leaked_connections_or_kept_memory(
        deployed: RunState, baseline: dict[str, tuple[int, int]], model_file: Path) -> None:
    state = deployed
    time.sleep(LIMITS.keep_alive_s + 0.5)  # anything left half-open times out
    for proc in state.processes:
        fds, rss = baseline[proc.id]
        assert os.path.exists(f"/proc/{proc.pid}"), f"{proc.id} died"
        assert open_fds(proc.pid) <= fds + 4, (proc.id, fds, open_fds(proc.pid))
        assert rss_bytes(proc.pid) < rss + 64 * 2**20, (proc.id, rss, rss_bytes(proc.pid))
        assert errors(proc.url if proc.role == "partition" else state.gateway_url, "internal") == 0
    x = torch.randn(SHAPE)
    result = asyncio.run(infer(state.gateway_url, x))
    torch.testing.assert_close(result.output, reference(model_file, x), atol=1e-5, rtol=1e-4)
