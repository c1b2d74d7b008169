"""Partial offloading through real processes and real HTTP: an `mw` deployment of AlexNet (devices with roles
end and edge-server) comes up with the local runtime, answers exactly, and its end device computes its paths
one after another in the order S (the partitions take turns over their internal port)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime.client import infer
from edgepart.runtime.local import SECRET_FILE, LocalRuntime, RunState
from edgepart.spec import deployment_from_dict

DEPLOYMENT = {
    "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": "alexnet-mw"},
    # 20 Mbps: slow enough that mw splits the input into paths although every turn costs a local message
    "spec": {"model": {"name": "alexnet"}, "solver": "mw",
             "devices": [{"name": "server", "speed": 4.0, "role": "edge-server"},
                         {"name": "camera", "speed": 0.2, "role": "end"}],
             "network": {"bandwidth": "20Mbps", "latency": "2ms"}, "exactKernels": True},
}


@pytest.fixture(scope="module")
def offload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, RunState]]:
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    state = asyncio.run(runtime.up(deployment_from_dict(DEPLOYMENT), port=0, ready_timeout_s=300))
    try:
        yield runtime, state
    finally:
        asyncio.run(runtime.down(state.name))
        assert not any(runtime.alive(p) for p in state.processes)


async def test_mw_answers_exactly_and_the_end_device_computes_its_paths_in_order(
        offload: tuple[LocalRuntime, RunState]) -> None:
    runtime, state = offload
    plan = runtime.plan_of(state.name)
    assert plan.solver == "mw" and plan.master == "camera" and plan.meta["end"] == "camera"
    local = sorted((t for t in plan.compute_tasks if t.device == "camera"), key=lambda t: t.priority)
    assert len(local) >= 2, f"the plan has one path only: {plan.meta['summary']}"
    use_exact_kernels(True)
    model = load_model(ModelRef("alexnet"))
    async with httpx.AsyncClient(timeout=300) as client:
        for k in range(3):
            x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(k))
            result = await infer(state.gateway_url, x, request_id=f"offload-{k}", client=client)
            with torch.no_grad():
                torch.testing.assert_close(result.output, model(x), atol=1e-5, rtol=1e-4)
            trace = (await client.get(f"{state.gateway_url}/v1/trace/offload-{k}")).json()
            events = {p["partition"]: p["events"] for p in trace["partitions"]}
            for before, after in itertools.pairwise(local):
                # one path after another: the next starts once the one before it has computed
                assert events[before.id]["compute_end"] <= events[after.id]["compute_start"], (before.id, after.id)
        # every turn came over the lane (one connection per pair: /v1/info counts them), none was waited out
        secret = (Path(state.directory) / SECRET_FILE).read_text().strip()
        for before, after in itertools.pairwise(local):
            urls = {p.id: p.url for p in state.processes}
            auth = {"authorization": f"Bearer {secret}"}
            sent = (await client.get(f"{urls[before.id]}/v1/info", headers=auth)).json()["turn"]
            got = (await client.get(f"{urls[after.id]}/v1/info", headers=auth)).json()["turn"]
            assert sent["next"] == after.id and sent["passed"] >= 3, sent
            assert got["after"] == before.id and got["received"] >= 3 and got["waited_out"] == 0, got
