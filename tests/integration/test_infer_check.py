"""`edgepart infer --check` runs only the model the user names, never one a gateway names (a fake one here)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Response

from edgepart.errors import EdgepartError
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model
from edgepart.partition_service.wire import CONTENT_TYPE, frame_bytes, make_header
from edgepart.runtime.commands import infer_command, reference_model

SHAPE = (1, 3, 8, 8)
EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("the client ran code the gateway named")
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
'''
GOOD = '''
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
'''


async def _serve(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_model.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    good = tmp_path / "good_model.py"
    good.write_text(GOOD)
    return marker, evil, good


@pytest.fixture
async def fake_gateway(files: tuple[Path, Path, Path]) -> AsyncIterator[tuple[str, torch.Tensor]]:
    """A gateway that says it serves the evil file, and answers the good model's output for every input."""
    _, evil, good = files
    app = FastAPI()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))  # the CLI's --random --seed 0 input
    with torch.no_grad():
        output = load_model(ModelRef(f"{good}:build", SHAPE))(x)

    @app.get("/v1/model")
    async def model() -> dict[str, object]:
        described = {"name": f"{evil}:build", "input_shape": list(SHAPE)}
        return {"deployment": "fake", "model": described, "input_shape": list(SHAPE),
                "output_shape": list(output.shape), "stages": 1, "partitions": 1,
                "models": [{"id": "fake", "model": described, "input_shape": list(SHAPE),
                            "output_shape": list(output.shape)}]}

    @app.post("/v1/infer")
    async def infer() -> Response:
        header = make_header("fake", output, Region.full(output.shape[1:]), -1, "gateway")
        return Response(frame_bytes(header, output), media_type=CONTENT_TYPE)

    server, task, url = await _serve(app)
    try:
        yield url, output
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_check_compares_with_the_model_the_user_names_and_never_imports_the_gateways(
        files: tuple[Path, Path, Path], fake_gateway: tuple[str, torch.Tensor]) -> None:
    marker, _, good = files
    url, _ = fake_gateway
    lines: list[str] = []
    with pytest.raises(EdgepartError, match="--check needs the model to compare with"):
        await infer_command(url, random=True, input_path=None, check_output=True, seed=0, requests=1,
                            output_path=None, echo=lines.append)
    assert not marker.exists()

    reference = reference_model(f"{good}:build", "1,3,8,8", None, 0, None)
    code = await infer_command(url, random=True, input_path=None, check_output=True, seed=0, requests=1,
                               output_path=None, echo=lines.append, reference=reference)
    assert code == 0 and "OK" in lines[-1] and f"{good}:build" in lines[-2]
    assert not marker.exists(), "the client imported the file the gateway named"

    other = reference_model("alexnet", None, None, 0, None)  # the user's model disagrees with the gateway
    with pytest.raises(EdgepartError, match=r"takes inputs of shape \[1, 3, 8, 8\].*alexnet"):
        await infer_command(url, random=True, input_path=None, check_output=True, seed=0, requests=1,
                            output_path=None, echo=lines.append, reference=other)
    assert not marker.exists()


async def test_the_cli_refuses_check_without_a_model_and_imports_nothing(
        files: tuple[Path, Path, Path], fake_gateway: tuple[str, torch.Tensor], tmp_path: Path) -> None:
    marker, _, good = files
    url, _ = fake_gateway
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgepart.cli", "infer", url, *args,
                                                    cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await cli("--random", "--check")
    assert code == 2 and "--check needs the model" in out, out
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(f"""apiVersion: edgepart.io/v1alpha1
kind: DNNDeployment
metadata: {{name: mine}}
spec:
  model: {{name: "{good}:build", inputShape: [1, 3, 8, 8]}}
  devices: [{{name: a}}]
""")
    code, out = await cli("--random", "--check", "--deployment", str(deployment))
    assert code == 0 and "OK: the deployment's output equals the whole model's" in out, out
    assert not marker.exists()
