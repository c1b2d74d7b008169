"""Metrics scraped for real: Debian's Prometheus against a running local deployment.

The test starts `prometheus` on 127.0.0.1 with a generated config (every process's /metrics, the
chart's recording rules), sends requests through the gateway, and reads through Prometheus' HTTP API
that every partition's histograms arrived and that the rules give per-stage p50 / p99.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from test_dataplane_processes import deployment
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.spec import deployment_from_dict

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "edgepart" / "files" / "recording-rules.yml"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (scripts/apt-deps.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, RunState]]:
    model = write_tiny_cnn(tmp_path_factory.mktemp("model"), "tiny_cnn.py")
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    state = asyncio.run(runtime.up(deployment_from_dict(deployment("tiny-prom", model, devices=3)), port=0,
                                   ready_timeout_s=120))
    try:
        yield runtime, state
    finally:
        asyncio.run(runtime.down(state.name))


@pytest.fixture(scope="module")
def prometheus(running: tuple[LocalRuntime, RunState], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS is not None
    _, state = running
    directory = tmp_path_factory.mktemp("prometheus")
    targets = [p.url.removeprefix("http://") for p in state.processes if p.role == "partition"]
    targets.append(state.gateway_url.removeprefix("http://"))
    shutil.copy(RULES, directory / "rules.yml")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
              "scrape_configs": [{"job_name": "edgepart", "static_configs": [{"targets": targets}]}]}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    with open(directory / "log", "wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={url.removeprefix('http://')}",
             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (directory / "log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def eventually(url: str, expr: str, want: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(url, expr)
        if len(result) >= want:
            return result
        assert time.monotonic() < deadline, f"{expr}: {len(result)} series, want {want}: {result}"
        time.sleep(0.5)


def test_the_rules_file_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_partitions_histograms_arrive_and_the_rules_give_stage_quantiles(
        running: tuple[LocalRuntime, RunState], prometheus: str) -> None:
    _, state = running
    partitions = {p.id for p in state.processes if p.role == "partition"}

    async def send() -> None:
        for seed in range(8):
            await infer(state.gateway_url, torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)))

    eventually(prometheus, 'up{job="edgepart"} == 1', len(partitions) + 1)
    asyncio.run(send())
    for histogram in ("edgepart_compute_seconds", "edgepart_request_seconds", "edgepart_queue_seconds"):
        series = eventually(prometheus, f'{histogram}_count{{deployment="tiny-prom", stage!="gateway"}} > 0',
                            len(partitions))
        assert {s["metric"]["partition"] for s in series} == partitions, histogram
        buckets = query(prometheus, f'{histogram}_bucket{{deployment="tiny-prom", le="+Inf"}}')
        assert {s["metric"]["partition"] for s in buckets} >= partitions
    gateway = eventually(prometheus, 'edgepart_request_seconds_count{partition="gateway"} >= 8', 1)
    assert gateway[0]["metric"]["stage"] == "gateway"
    stages = {str(p["stage"]) for p in httpx.get(state.gateway_url + "/v1/status", timeout=10).json()["partitions"]}
    for rule in ("deployment_stage:edgepart_compute_seconds:p50", "deployment_stage:edgepart_compute_seconds:p99"):
        series = eventually(prometheus, f'{rule}{{deployment="tiny-prom"}} > 0', len(stages))
        p = {s["metric"]["stage"]: float(s["value"][1]) for s in series}
        assert set(p) == stages and all(0 < v < 60 for v in p.values()), (p, stages)
    p50 = {s["metric"]["stage"]: float(s["value"][1])
           for s in query(prometheus, 'deployment_stage:edgepart_compute_seconds:p50{deployment="tiny-prom"}')}
    p99 = {s["metric"]["stage"]: float(s["value"][1])
           for s in query(prometheus, 'deployment_stage:edgepart_compute_seconds:p99{deployment="tiny-prom"}')}
    assert set(p50) == set(p99) and all(p50[s] <= p99[s] for s in p50), (p50, p99)
    request = eventually(prometheus, 'deployment_stage:edgepart_request_seconds:p99{stage="gateway"} > 0', 1)
    assert float(request[0]["value"][1]) > 0
