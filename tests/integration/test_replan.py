"""The embedded runtime re-plans without a device whose partitions cannot be kept running, as the operator does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime import commands
from edgepart.runtime.client import infer
from edgepart.runtime.local import DEPLOYMENT_FILE, LocalRuntime, RunState
from edgepart.spec import DNNDeployment, deployment_from_dict


def _deployment(directory: Path, name: str, devices: tuple[str, ...]) -> DNNDeployment:
    model = write_tiny_cnn(directory)
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)}, "solver": "ftp-grid",
                 "solverOptions": {"grid": f"{len(devices)}x1"}, "devices": [{"name": d} for d in devices],
                 "network": {"bandwidth": "100Mbps", "latency": "1ms"}, "requestTimeout": "10s",
                 "exactKernels": True}})


async def test_a_device_whose_partition_cannot_start_is_left_out_and_the_deployment_replanned(
        tmp_path: Path) -> None:
    root = tmp_path / "run"
    runtime = LocalRuntime(root)
    state = await runtime.up(_deployment(tmp_path, "heal3", ("d0", "d1", "d2")), port=0, ready_timeout_s=180,
                             device_timeout_s=3.0)
    assert {p.device for p in state.processes if p.role == "partition"} == {"d0", "d1", "d2"}
    runtime.start_supervisor(state)  # as `edgepart up` does
    use_exact_kernels(True)
    reference = load_model(ModelRef(f"{tmp_path / 'tiny_cnn.py'}:tiny", SHAPE))
    x = torch.randn(SHAPE)
    try:
        # d2 breaks: its partition can no longer start (a config it cannot read), so every restart fails
        victim = next(p for p in state.processes if p.device == "d2")
        Path(victim.config).write_text('{"threads": 1}')  # valid JSON, not a partition config
        await runtime.kill("heal3", victim.id)
        deadline = time.monotonic() + 180
        while True:
            current = runtime.load("heal3")
            assert current is not None
            if current.generation == 2 and current.status == "ready" and (await runtime.status("heal3"))[0].ready:
                break
            assert time.monotonic() < deadline, (root / "heal3" / "logs" / "supervisor.log").read_text()
            await asyncio.sleep(0.3)
        assert [e.name for e in current.excluded] == ["d2"] and current.replan is not None
        assert current.replan.feasible and current.replan.lost == ["d2"]
        assert set(runtime.plan_of("heal3").devices) == {"d0", "d1"}
        assert {p.device for p in current.processes if p.role == "partition"} == {"d0", "d1"}
        assert current.plan_hash != state.plan_hash and current.gateway_url == state.gateway_url
        result = await infer(state.gateway_url, x)
        with torch.no_grad():
            torch.testing.assert_close(result.output, reference(x), atol=0, rtol=0)
        printed: list[str] = []
        assert await commands.status("heal3", printed.append, root=root)
        text = "\n".join(printed)
        assert "re-planned: generation 2" in text and "on d0, d1" in text
        assert "excluded device d2 (DeviceUnreachable)" in text
    finally:
        await runtime.down("heal3")
    assert not (root / "heal3").exists()


async def test_without_a_feasible_plan_status_says_why_and_the_old_plan_stays(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "alone"
    (directory / "logs").mkdir(parents=True)
    deployment = _deployment(tmp_path, "alone", ("d0",))
    (directory / DEPLOYMENT_FILE).write_text(deployment.model_dump_json(by_alias=True, exclude_none=True))
    state = RunState(name="alone", directory=str(directory), cwd=str(tmp_path), started_at=0, gateway_url="",
                     port=0, emulated=False, model="tiny", solver="ftp-grid", how="h", device_timeout_s=1.0)
    runtime = LocalRuntime(tmp_path / "run")
    assert runtime.can_replan(state)
    after = await runtime.replan(state, {"d0": "the partitions on d0 did not stay up for 1 s"})
    assert after.generation == 1 and [e.name for e in after.excluded] == ["d0"]
    assert after.replan is not None and not after.replan.feasible
    assert "no feasible plan without d0" in after.replan.reason and "every device (d0) is lost" in after.replan.reason
    saved = runtime.load("alone")
    assert saved is not None and saved.replan == after.replan
    run = (await runtime.status("alone"))[0]
    lines = commands.replan_lines(run)
    assert lines[0].startswith("RE-PLAN FAILED: no feasible plan without d0")
    assert "generation 1 still runs" in lines[0]
