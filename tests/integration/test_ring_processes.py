"""Several data sources as real processes: `edgepart up` with sources, three ring workers over HTTP.

Two sources and a worker that is not one, each scheduler: every image the load generator sends is
answered exactly once (done, or refused with 503), none lost, and every answer equals the whole model's
output for that image. Under overload the bounded queues refuse with 503 and lose nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.auth import load_secret
from edgepart.runtime.load import LoadSettings, drive
from edgepart.runtime.local import LocalRuntime
from edgepart.spec import deployment_from_dict


def deployment(name: str, model: Path, scheduler: str, queue_bound: int) -> dict[str, object]:
    return {
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)},
            "devices": [{"name": f"d{i}", "cpus": 1} for i in range(3)],
            "sources": [{"device": "d0", "rate": 20}, {"device": "d1", "rate": 20}],
            "scheduler": scheduler, "queueBound": queue_bound, "heartbeat": "100ms", "requestTimeout": "60s",
            "exactKernels": True,  # every answer bit for bit the whole model's
        },
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cnn(tmp_path_factory.mktemp("model"), "tiny_ring.py")


@pytest.mark.parametrize("scheduler", ["ms-mdi", "ar-mdi", "local"])
def test_every_image_is_answered_once_and_equals_the_whole_model(model_file: Path, tmp_path: Path,
                                                                 scheduler: str) -> None:
    use_exact_kernels(True)
    reference = load_model(ModelRef(f"{model_file}:tiny", SHAPE))
    runtime = LocalRuntime(tmp_path / "run")
    spec = deployment_from_dict(deployment(f"ring-{scheduler}", model_file, scheduler, 8))
    state = asyncio.run(runtime.up(spec, ready_timeout_s=120))
    try:
        secret = load_secret(Path(state.directory) / "secret")
        sources = [state.ring["d0"], state.ring["d1"]]
        report = asyncio.run(drive(sources, secret, LoadSettings(rate=20, count=10, keep_outputs=True)))
        for source in report.sources:
            assert source.lost == 0, source.failures
            assert source.sent == source.done + source.rejected == 10
            assert source.done >= 5
            for x, out in source.outputs:
                with torch.no_grad():
                    assert torch.equal(out, reference(x))
        if scheduler == "local":
            assert all(s.done_locally == s.done for s in report.sources)
        if scheduler == "ar-mdi":
            assert all(s.done_locally == 0 for s in report.sources)
        with httpx.Client(trust_env=False, timeout=10, headers={"authorization": secret.header}) as client:
            states = {w: client.get(url + "/v1/ring/state").json() for w, url in state.ring.items()}
            assert httpx.post(state.ring["d2"] + "/v1/ring/heartbeat", json={}).status_code == 401
            metrics = httpx.get(state.ring["d1"] + "/metrics").text
        for w, info in states.items():
            assert sum(info["held"].values()) == 0, (w, info)
            for counts in info["sources"].values():  # at the source: arrived = done + queued + rejected
                assert counts["arrived"] == counts["done"] + counts["in_flight"] + counts["rejected"]
                assert counts["in_flight"] == 0
        # MS-MDI keeps a light load at home (backpressure): only AR-MDI must use d2 at 20 img/s
        if scheduler == "local":
            assert sum(states["d2"]["tasks"].values()) == 0
        if scheduler == "ar-mdi":
            assert sum(states["d2"]["tasks"].values()) > 0
        assert 'edgepart_ring_queue_length{deployment="ring-' in metrics and 'source="d0"' in metrics

        if scheduler == "ms-mdi":  # overload: 40 images at once per source, queues of 8
            burst = asyncio.run(drive(sources, secret, LoadSettings(rate=None, count=40, seed=1)))
            for source in burst.sources:
                assert source.lost == 0, source.failures
                assert source.rejected > 0 and source.done + source.rejected == 40
            with httpx.Client(trust_env=False, timeout=10, headers={"authorization": secret.header}) as client:
                spread = client.get(state.ring["d2"] + "/v1/ring/state").json()
            assert sum(spread["tasks"].values()) > 0, spread  # full queues at the sources push work to d2
    finally:
        asyncio.run(runtime.down(state.name))
        assert not any(runtime.alive(p) for p in state.processes)
