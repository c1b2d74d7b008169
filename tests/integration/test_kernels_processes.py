"""Kernels through real processes: a default deployment's partitions compute with the fastest kernels and answer
what the whole model computes with them, within the tolerance; an `exactKernels: true` deployment's compute with
the native kernels and answer bit for bit. `infer --check` compares each with the whole model run with its
kernels."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import DEPLOYED_RTOL, check_deployed, use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime.client import infer
from edgepart.runtime.commands import infer_command
from edgepart.runtime.local import SECRET_FILE, LocalRuntime
from edgepart.spec import deployment_from_dict


def _deployment(name: str, model: Path, exact: bool | None) -> dict[str, object]:
    spec: dict[str, object] = {
        "model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)}, "solver": "ftp-grid",
        "solverOptions": {"grid": "2x1"}, "devices": [{"name": "d0"}, {"name": "d1"}], "requestTimeout": "30s"}
    if exact is not None:
        spec["exactKernels"] = exact
    return {"apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name}, "spec": spec}


def _whole(ref: ModelRef, x: torch.Tensor, exact: bool) -> torch.Tensor:
    use_exact_kernels(exact)
    with torch.no_grad():
        out = load_model(ref)(x)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize("exact", [None, True], ids=["default", "exactKernels"])
async def test_partitions_run_the_deployments_kernels_and_answer_accordingly(tmp_path: Path,
                                                                             exact: bool | None) -> None:
    model = write_tiny_cnn(tmp_path, "tiny_kernels.py")
    ref = ModelRef(f"{model}:tiny", SHAPE)
    runtime = LocalRuntime(tmp_path / "run")
    state = await runtime.up(deployment_from_dict(_deployment("kernels", model, exact)), port=0,
                             ready_timeout_s=120)
    try:
        partitions = [p for p in state.processes if p.role == "partition"]
        assert len(partitions) >= 2  # two tiles and the head
        secret = (Path(state.directory) / SECRET_FILE).read_text().strip()
        async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {secret}"}) as client:
            for proc in partitions:  # what the process computes with, as torch reports it there
                info = (await client.get(f"{proc.url}/v1/info")).json()
                assert info["kernels"] == ("exact" if exact else "fast"), proc.id
            x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
            answer = (await infer(state.gateway_url, x, client=client)).output
        if exact:
            assert torch.equal(answer, _whole(ref, x, exact=True))
        else:
            result = check_deployed(_whole(ref, x, exact=False), answer, exact_kernels=False)
            assert result.passed and result.rtol == DEPLOYED_RTOL
        lines: list[str] = []
        code = await infer_command(state.gateway_url, random=True, input_path=None, check_output=True, seed=0,
                                   requests=1, output_path=None, echo=lines.append, reference=ref,
                                   exact_kernels=bool(exact))
        assert code == 0, lines
        assert ("bit for bit" if exact else "within the tolerance (relative error") in lines[-1]
        assert f"({'exact' if exact else 'fast'} kernels, as the deployment)" in lines[-2]
        assert ("must be 0" if exact else "rtol 0.0001") in lines[-2]  # the rule applied, stated
    finally:
        await runtime.down(state.name)
        assert not any(runtime.alive(p) for p in state.processes)

