"""A joint plan through real processes and real HTTP: examples/deployments/three-models.yaml (AlexNet,
SqueezeNet and ResNet-50 on four devices, solver mgp-memetic) deployed with the local runtime, on small
inputs (SqueezeNet and ResNet-50 at 64x64; AlexNet's classifier needs 224x224) and two pieces per unit so
that it stays quick (few processes); requests of every model issued together each answer exactly what
the whole model computes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import torch

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime
from edgepart.spec import DNNDeployment, load_deployment

ROOT = Path(__file__).parents[2]
NAMES = {"alexnet": "alexnet", "squeezenet": "squeezenet1_1", "resnet50": "resnet50"}
SHAPES = {"alexnet": [1, 3, 224, 224], "squeezenet": [1, 3, 64, 64], "resnet50": [1, 3, 64, 64]}


def small(deployment: DNNDeployment) -> DNNDeployment:
    spec = deployment.spec
    models = [m.model_copy(update={"input_shape": SHAPES[m.id or ""]}) for m in spec.models]
    # two row pieces per unit, one block per piece index: every model is two tiled stripes and its head
    options = {**spec.solver_options, "K": 2, "blocksPerModel": 2}
    return deployment.model_copy(update={"spec": spec.model_copy(update={"models": models, "solver_options": options,
                                                                         "exact_kernels": True})})


def whole(mid: str, x: torch.Tensor) -> torch.Tensor:
    use_exact_kernels(True)
    with torch.no_grad():
        out = load_model(ModelRef(NAMES[mid], tuple(SHAPES[mid])))(x)
    assert isinstance(out, torch.Tensor)
    return out


async def test_three_models_planned_jointly_answer_exactly_together(tmp_path: Path) -> None:
    deployment = small(load_deployment(ROOT / "examples" / "deployments" / "three-models.yaml"))
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(deployment, port=0, ready_timeout_s=300)
    try:
        plan = runtime.plan_of(state.name)
        assert plan.solver == "mgp-memetic" and plan.model_ids == tuple(NAMES)
        assert plan.meta["method"] == "MO"
        assert len({t.device for t in plan.tasks}) > 1  # the blocks went to several devices
        inputs = {mid: torch.randn(*SHAPES[mid], generator=torch.Generator().manual_seed(k))
                  for k, mid in enumerate(NAMES)}
        async with httpx.AsyncClient(timeout=120) as client:
            results = await asyncio.gather(*(infer(state.gateway_url, x, model_id=mid, client=client,
                                                   request_id=f"{mid}-0") for mid, x in inputs.items()))
        for (mid, x), result in zip(inputs.items(), results, strict=True):
            assert result.request_id == f"{mid}-0"
            torch.testing.assert_close(result.output, whole(mid, x), atol=1e-5, rtol=1e-4)
    finally:
        await runtime.down(state.name)
        assert not any(runtime.alive(p) for p in state.processes)
