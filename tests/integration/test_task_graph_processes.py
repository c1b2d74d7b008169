"""Plan v2 through real processes and real HTTP: two models deployed together both answer, concurrently, what
their whole models compute with the same (fast) kernels, within the tolerance; a hand-written VGG-16 plan whose
tiles are cut at different layers on two devices (the partial-offloading shape) deploys with `edgepart up --plan`
and passes `edgepart infer --check`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from edgepart.cli import app
from edgepart.executor import check_deployed, use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.plan import load_plan
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime, RunState
from edgepart.spec import load_deployment

ROOT = Path(__file__).parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, RunState]]:
    runtime = LocalRuntime(tmp_path_factory.mktemp("run"))
    deployment = load_deployment(ROOT / "examples" / "deployments" / "two-models.yaml")
    state = asyncio.run(runtime.up(deployment, port=0, ready_timeout_s=300))
    try:
        yield runtime, state
    finally:
        asyncio.run(runtime.down(state.name))
        assert not any(runtime.alive(p) for p in state.processes)


def whole(name: str, x: torch.Tensor) -> torch.Tensor:
    use_exact_kernels(False)  # the deployment's kernels: two-models.yaml runs the fastest
    with torch.no_grad():
        out = load_model(ModelRef(name))(x)
    assert isinstance(out, torch.Tensor)
    return out


async def test_two_models_answer_within_tolerance_and_concurrently(two_models: tuple[LocalRuntime, RunState]) -> None:
    runtime, state = two_models
    plan = runtime.plan_of(state.name)
    assert plan.model_ids == ("alexnet", "squeezenet")
    models = httpx.get(state.gateway_url + "/v1/models", timeout=10).json()["models"]
    assert [m["id"] for m in models] == ["alexnet", "squeezenet"]
    inputs = {mid: [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(k)) for k in range(3)]
              for mid in ("alexnet", "squeezenet")}
    async with httpx.AsyncClient(timeout=300) as client:
        calls = [infer(state.gateway_url, x, model_id=mid, client=client, request_id=f"{mid}-{k}")
                 for mid, xs in inputs.items() for k, x in enumerate(xs)]
        results = await asyncio.gather(*calls)
    names = {"alexnet": "alexnet", "squeezenet": "squeezenet1_1"}
    flat = [(mid, x) for mid, xs in inputs.items() for x in xs]
    for (mid, x), result in zip(flat, results, strict=True):
        assert result.request_id.startswith(mid)
        assert check_deployed(whole(names[mid], x), result.output, exact_kernels=False).passed, mid


def test_one_model_of_several_must_be_named(two_models: tuple[LocalRuntime, RunState]) -> None:
    _, state = two_models
    body = {"shape": [1, 3, 224, 224], "data": torch.zeros(1, 3, 224, 224).tolist()}
    plain = httpx.post(state.gateway_url + "/v1/infer", json=body, timeout=60)
    assert plain.status_code == 400 and "alexnet, squeezenet" in plain.json()["detail"]
    unknown = httpx.post(state.gateway_url + "/v1/models/resnet/infer", json=body, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_model"
    for mid in ("alexnet", "squeezenet"):
        result = runner.invoke(app, ["infer", state.gateway_url, "--model-id", mid, "--random", "--check",
                                     "--deployment", str(ROOT / "examples" / "deployments" / "two-models.yaml")])
        assert result.exit_code == 0, result.output
        assert "OK: the deployment's output equals the whole model's" in result.output


def test_cli_plans_and_verifies_a_deployment_file_with_two_models(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", str(ROOT / "examples" / "deployments" / "two-models.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["id"] for m in data["models"]] == ["alexnet", "squeezenet"]
    assert set(data["predicted"]["models"]) == {"alexnet", "squeezenet"}
    result = runner.invoke(app, ["verify", "--plan", str(out)])
    assert result.exit_code == 0, result.output
    assert "every model's split output equals its whole model's" in result.output


def test_vgg16_partial_offloading_plan_deploys_and_checks(tmp_path: Path) -> None:
    plan_file = ROOT / "examples" / "plans" / "vgg16-partial-offload.json"
    deployment = ROOT / "examples" / "deployments" / "vgg16-offload-2dev.yaml"
    result = runner.invoke(app, ["verify", "--plan", str(plan_file)])
    assert result.exit_code == 0, result.output
    runtime = LocalRuntime(tmp_path / "run")
    state = asyncio.run(runtime.up(load_deployment(deployment), port=0, plan=load_plan(plan_file),
                                   ready_timeout_s=300))
    try:
        assert len([p for p in state.processes if p.role == "partition"]) == 9  # 4 paths x 2 + the fusion
        result = runner.invoke(app, ["infer", state.gateway_url, "--random", "--check", "--deployment", str(deployment)])
        assert result.exit_code == 0, result.output
        assert "OK: the deployment's output equals the whole model's" in result.output
    finally:
        asyncio.run(runtime.down(state.name))
