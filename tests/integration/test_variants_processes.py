"""Accuracy-aware data partitioning with real processes: a dispatcher and three variant workers over HTTP.

The shipped digits family on three devices; the held-out digits are answered,
every answer equals its variant's own output computed here, and a worker
killed mid-stream loses no request (its images are dispatched again).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import load_model
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.runtime.variants_local import infer_parts, worker_id
from edgepart.spec import deployment_from_dict
from edgepart.variants import model_ref, shipped_family
from edgepart.variants.train import load_split

BATCH = 32  # the images a worker computes at once (spec.variants.batch)


def deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
            "spec": {"variants": {"family": "digits", "target": {"throughput": 20000}, "batch": BATCH},
                     "devices": [{"name": "fast", "speed": 0.25}, {"name": "mid", "speed": 0.15},
                                 {"name": "slow", "speed": 0.1}],
                     "requestTimeout": "60s"}}


@pytest.fixture()
async def running(tmp_path: Path) -> AsyncIterator[tuple[LocalRuntime, RunState]]:
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(deployment_from_dict(deployment("digits-proc")), port=0, ready_timeout_s=120,
                             base=Path.cwd())
    try:
        yield runtime, state
    finally:
        await runtime.down(state.name)


def own_outputs() -> dict[str, torch.nn.Module]:
    return {v.name: load_model(model_ref(v)) for v in shipped_family().family.variants}


def check_answers(x: torch.Tensor, out: torch.Tensor, parts: list[tuple[int, int, str, str]],
                  models: dict[str, torch.nn.Module]) -> None:
    assert parts[0][0] == 0 and parts[-1][1] == x.shape[0]
    assert all(p[1] == q[0] for p, q in itertools.pairwise(parts)), parts
    # as a worker computes them: oneDNN kernels (whatever an earlier test chose here), batches of BATCH
    use_exact_kernels(False)  # tests/conftest.py gives the next test its own choice back
    with torch.no_grad():
        for a, b, _node, variant in parts:
            own = torch.cat([models[variant](x[i:min(i + BATCH, b)]) for i in range(a, b, BATCH)])
            assert torch.allclose(out[a:b], own, atol=1e-5, rtol=1e-4), (a, b, variant)


async def test_held_out_answers_equal_each_variants_own_and_a_killed_worker_loses_nothing(
        running: tuple[LocalRuntime, RunState]) -> None:
    runtime, state = running
    models = own_outputs()
    split = load_split()
    xs, ys = split.test_x, split.test_y
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        right = 0
        used: set[str] = set()
        for k, start in enumerate(range(0, 360, 120)):
            x = xs[start:start + 120].contiguous()
            out, parts, accuracy = await infer_parts(state.gateway_url, x, f"held-{k}", client)
            check_answers(x, out, parts, models)
            right += int((out.argmax(dim=1) == ys[start:start + 120]).sum())
            used.update(v for *_, v in parts)
            assert 0.85 < accuracy <= 0.99
        assert right / 360 > 0.9  # the family's variants measure 0.900 to 0.986 on these images
        status = (await client.get(state.gateway_url + "/v1/status")).json()
        assert status["ready"] and status["manager"]["configuration"] is not None
        assert {p["id"] for p in status["partitions"]} == {worker_id(d) for d in ("fast", "mid", "slow")}
        metrics = (await client.get(state.gateway_url + "/metrics")).text
        assert 'edgepart_dispatch_requests_total{deployment="digits-proc"} 3.0' in metrics

        # a stream of requests; one worker is killed while they are in flight
        stream = [torch.rand((200, 1, 8, 8), generator=torch.Generator().manual_seed(s)) for s in range(10)]
        tasks = [asyncio.create_task(infer_parts(state.gateway_url, x, f"s-{i}", client))
                 for i, x in enumerate(stream)]
        await asyncio.sleep(0.05)
        victim = next(d for d in ("fast", "mid", "slow")
                      if status["manager"]["configuration"].get(d) is not None)
        await runtime.kill(state.name, worker_id(victim))
        assert not all(t.done() for t in tasks)  # killed mid-stream
        results = await asyncio.gather(*tasks)
        for x, (out, parts, _) in zip(stream, results, strict=True):
            check_answers(x, out, parts, models)
        after = (await client.get(state.gateway_url + "/v1/status")).json()
        gone = next(p for p in after["partitions"] if p["device"] == victim)
        assert gone["state"] == "gone"
        assert victim not in after["manager"]["nodes"]
        # later requests go only to the workers that remain
        out, parts, _ = await infer_parts(state.gateway_url, stream[0], "after", client)
        check_answers(stream[0], out, parts, models)
        assert victim not in {n for _, _, n, _ in parts}
