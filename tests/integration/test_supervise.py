"""The embedded runtime heals: a supervisor restarts processes that exit, with backoff, counted in status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import torch
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.executor import use_exact_kernels
from edgepart.graph.loader import ModelRef, load_model
from edgepart.runtime import commands, supervise
from edgepart.runtime.client import infer
from edgepart.runtime.local import LocalRuntime, ProcessState, RunState
from edgepart.runtime.supervise import SuperviseSettings, Supervisor
from edgepart.spec import DNNDeployment, deployment_from_dict


def _deployment(directory: Path, name: str) -> DNNDeployment:
    model = write_tiny_cnn(directory)
    return deployment_from_dict({
        "apiVersion": "edgepart.io/v1alpha1", "kind": "DNNDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": f"{model}:tiny", "inputShape": list(SHAPE)}, "solver": "ftp-grid",
                 "solverOptions": {"grid": "2x1"}, "devices": [{"name": "d0"}, {"name": "d1"}],
                 "network": {"bandwidth": "100Mbps", "latency": "1ms"}, "requestTimeout": "10s",
                 "exactKernels": True}})


async def _until(check: Callable[[], Awaitable[bool]], what: str, logs: Path, limit_s: float = 180.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            tails = {p.name: p.read_text(errors="replace")[-1500:] for p in sorted(logs.glob("*.log"))}
            raise AssertionError(f"{what}: not after {limit_s:g} s; logs: {tails}")
        await asyncio.sleep(0.2)


async def test_a_killed_partition_and_gateway_are_restarted_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "run"
    runtime = LocalRuntime(root)
    state = await runtime.up(_deployment(tmp_path, "heal"), port=0, ready_timeout_s=180)
    runtime.start_supervisor(state)  # as `edgepart up` does
    use_exact_kernels(True)
    reference = load_model(ModelRef(f"{tmp_path / 'tiny_cnn.py'}:tiny", SHAPE))
    x = torch.randn(SHAPE)
    try:
        assert state.supervisor_pid is not None
        for victim in ("s0p1", "gateway"):
            old = runtime.load("heal").process(victim).pid  # type: ignore[union-attr]
            await runtime.kill("heal", victim)

            async def healed(victim: str = victim, old: int = old) -> bool:
                run = (await runtime.status("heal"))[0]
                current = runtime.load("heal")
                return bool(run.ready and current and current.process(victim).pid != old)

            await _until(healed, f"{victim} restarted", root / "heal" / "logs")
            result = await infer(state.gateway_url, x)
            with torch.no_grad():
                torch.testing.assert_close(result.output, reference(x), atol=1e-5, rtol=1e-4)
        run = (await runtime.status("heal"))[0]
        assert run.supervised and run.restarts["s0p1"] == 1 and run.restarts["gateway"] == 1
        assert run.restarts["s0p0"] == 0
        printed: list[str] = []
        assert await commands.status("heal", printed.append, root=root)
        assert "supervised" in printed[0] and "2 restarts" in printed[0]
    finally:
        await runtime.down("heal")
    assert not (root / "heal").exists()


async def test_without_a_gateway_status_still_lists_the_partitions(tmp_path: Path) -> None:
    root = tmp_path / "run"
    runtime = LocalRuntime(root)
    state = await runtime.up(_deployment(tmp_path, "headless"), port=0, ready_timeout_s=180)
    try:
        await runtime.kill("headless", "gateway")
        run = (await runtime.status("headless"))[0]
        assert not run.ready and not run.supervised and "does not answer" in (run.detail or "")
        assert {p["id"]: run.alive[p["id"]] for p in run.partitions} == {"s0p0": True, "s0p1": True, "s1p0": True}
        assert all(p["pid"] and p["url"] for p in run.partitions)
        new = await runtime.restart("headless", "gateway")  # what `edgepart restart headless gateway` runs
        assert new.restarts == 1
        assert (await runtime.status("headless"))[0].ready
        await infer(state.gateway_url, torch.randn(SHAPE))
    finally:
        await runtime.down("headless")


class _Dead:
    """A runtime whose one process never stays up: every respawn is recorded, none lives."""

    def __init__(self) -> None:
        self.state = RunState(name="d", directory="/nonexistent", cwd="/", started_at=0, gateway_url="", port=0,
                              emulated=False, model="m", solver="s", how="h",
                              processes=[ProcessState(id="s0p0", role="partition", device="d0", pid=1, url="",
                                                      config="", log="")])
        self.respawned: list[float] = []

    def load(self, name: str) -> RunState:
        return self.state

    def alive(self, proc: ProcessState) -> bool:
        return False

    async def respawn(self, state: RunState, ident: str) -> ProcessState:
        self.respawned.append(clock[0])
        return state.process(ident)


clock = [0.0]


async def test_a_crash_loop_backs_off_exponentially_up_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise.time, "monotonic", lambda: clock[0])
    runtime = _Dead()
    supervisor = Supervisor(runtime, "d", SuperviseSettings(backoff_initial_s=1, backoff_max_s=8))  # type: ignore[arg-type]
    for tick in range(0, 400):  # 40 s in steps of 0.1 s
        clock[0] = tick / 10
        await supervisor.step()
    gaps = [round(b - a, 1) for a, b in zip(runtime.respawned, runtime.respawned[1:], strict=False)]
    assert runtime.respawned[0] == 0.0  # the first restart is at once
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0] and set(gaps[4:]) == {8.0}
