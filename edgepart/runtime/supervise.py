"""Keep a local deployment's processes running, as a kubelet keeps a Pod's containers (restartPolicy: Always).

`edgepart up` starts one supervisor process per deployment (`python -m edgepart.runtime.supervise ROOT NAME`).
It watches the gateway and every partition; one that exits (crashed, killed, out of memory) is started again
on its own address, with the same config, in its emulated device when there is one. Restarts back off
exponentially per process (1 s, 2 s, 4 s, ... up to a minute) so a crash loop does not spin, and a process
that then stays up two minutes starts again from the shortest delay. Every restart is counted in the run's
state (`edgepart status` shows the counts and the last exit code). `edgepart down` stops the supervisor first.

A device whose partitions cannot be kept running (every restart fails, or its emulated namespace is gone) for
the run's `device_timeout_s` is lost: the deployment is re-planned without it over the devices that remain,
as the operator re-plans without a NotReady node (`planner.device_loss` holds the shared decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepart.errors import EdgepartError
from edgepart.planner.device_loss import DeviceWatch, LossSettings, lost_devices, observe
from edgepart.runtime.local import LocalRuntime, LocalRuntimeError, RunState

__all__ = ["SuperviseSettings", "Supervisor", "main"]


@dataclass(frozen=True)
class SuperviseSettings:
    poll_s: float = 0.5  # how often processes are checked
    backoff_initial_s: float = 1.0  # wait before the second restart of a process; doubles each time
    backoff_max_s: float = 60.0
    backoff_reset_s: float = 120.0  # a process up this long starts over at the initial backoff
    recovery_s: float = 10.0  # a down device whose partitions all stay up this long is up again
    ready_timeout_s: float = 300.0  # a re-planned deployment's start-up


@dataclass
class _Backoff:
    delay_s: float
    not_before: float = 0.0  # monotonic time of the earliest next restart
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Restarts the processes of deployment `name` that are not running; `step()` is one pass."""

    def __init__(self, runtime: LocalRuntime, name: str, settings: SuperviseSettings | None = None):
        self.runtime = runtime
        self.name = name
        self.settings = settings or SuperviseSettings()
        self._backoff: dict[str, _Backoff] = {}
        self._watches: dict[str, DeviceWatch] = {}

    async def step(self) -> list[str]:
        """Restart every process that is down and past its backoff; the ids restarted. Raises
        LocalRuntimeError when the deployment is gone (taken down)."""
        state = self.runtime.load(self.name)
        if state is None:
            raise LocalRuntimeError(f"deployment {self.name} is no longer up")
        now = time.monotonic()
        restarted = []
        # the gateway first: partitions report to it, and readiness is read from it
        for proc in sorted(state.processes, key=lambda p: p.role != "gateway"):
            backoff = self._backoff.setdefault(proc.id, _Backoff(self.settings.backoff_initial_s))
            if self.runtime.alive(proc):
                if now - backoff.started_at >= self.settings.backoff_reset_s:
                    backoff.delay_s = self.settings.backoff_initial_s
                continue
            if now < backoff.not_before:
                continue
            try:
                await self.runtime.respawn(state, proc.id)
            except (EdgepartError, OSError, ValueError, subprocess.SubprocessError) as err:  # its netns gone, config broken
                print(f"{time.strftime('%H:%M:%S')} cannot restart {proc.id}: {err}", flush=True)
            backoff.not_before = now + backoff.delay_s
            backoff.delay_s = min(backoff.delay_s * 2, self.settings.backoff_max_s)
            backoff.started_at = now
            restarted.append(proc.id)
        await self._watch_devices(state, now)
        return restarted

    async def _watch_devices(self, state: RunState, now: float) -> None:
        """Re-plan without the devices down past the run's timeout (never twice for the same ones)."""
        if state.device_timeout_s is None or not self.runtime.can_replan(state):
            return
        settings = LossSettings(timeout_s=state.device_timeout_s, recovery_s=self.settings.recovery_s)
        excluded = {e.name for e in state.excluded}
        devices = {p.device for p in state.processes if p.role == "partition"} - excluded
        self._watches = observe(self._watches, self.runtime.devices_down(state), devices, now, settings)
        lost = lost_devices(self._watches, now, settings)
        if not lost:
            return
        why = {name: f"the partitions on {name} did not stay up for {settings.timeout_s:g} s" for name in lost}
        print(f"{time.strftime('%H:%M:%S')} re-planning without {', '.join(lost)}", flush=True)
        try:
            state = await self.runtime.replan(state, why, self.settings.ready_timeout_s)
        except EdgepartError as err:  # the new plan did not come up: keep restarting its processes
            print(f"{time.strftime('%H:%M:%S')} re-plan started but not ready: {err}", flush=True)
        self._backoff, self._watches = {}, {}
        record = state.replan
        if record is not None:
            print(f"{time.strftime('%H:%M:%S')} generation {record.generation}: {record.reason}"
                  + (f" (plan {record.plan_hash} on {', '.join(record.devices)})" if record.feasible else ""),
                  flush=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until `stop` is set or the deployment is taken down."""
        while not stop.is_set():
            try:
                restarted = await self.step()
            except LocalRuntimeError:
                return
            for ident in restarted:
                print(f"{time.strftime('%H:%M:%S')} restarted {ident}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_s)


async def _main(root: Path, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Supervisor(LocalRuntime(root), name).run(stop)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edgepart.runtime.supervise RUN_ROOT DEPLOYMENT", file=sys.stderr)
        return 2
    asyncio.run(_main(Path(args[0]), args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
