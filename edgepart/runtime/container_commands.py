"""What `edgepart up --runtime docker`, `status` and `down` do with containers; cli.py parses options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgepart.runtime.containers import (
    ContainerRun,
    ContainerRuntime,
    ContainerSettings,
    engine_configured,
)
from edgepart.spec import load_deployment

__all__ = ["down", "status", "up"]

Echo = Callable[[str], None]


async def up(path: Path, *, port: int, plan_path: Path | None, timeout_s: float, echo: Echo,
             image: str | None = None) -> ContainerRun:
    from edgepart.plan import load_plan
    from edgepart.runtime.commands import plan_table

    deployment = load_deployment(path)
    plan = load_plan(plan_path) if plan_path is not None else None
    settings = ContainerSettings(image=image) if image else ContainerSettings()
    runtime = ContainerRuntime(settings, echo=echo)
    run = await runtime.up(deployment, port=port, plan=plan, ready_timeout_s=timeout_s, base=Path.cwd())
    if run.plan is not None:
        echo(plan_table(run.plan))
    echo(f"{run.name}: {len(run.containers) - 1} partition containers ready (image {settings.image})")
    echo(f"gateway: {run.gateway_url}")
    echo(f"try:     edgepart infer {run.gateway_url} --random --check --deployment {path}")
    echo(f"stop:    edgepart down {run.name}")
    return run


async def status(name: str | None, echo: Echo) -> bool:
    """Container deployments on the engine DOCKER_HOST names (nothing when none is configured)."""
    from edgepart.runtime.commands import table

    if not engine_configured():
        return True
    runs = await ContainerRuntime(echo=echo).status(name)
    for run in runs:
        ready = sum(1 for p in run.partitions if p["ready"])
        echo(f"{run.name}: {'ready' if run.ready else 'NOT READY'} (containers), gateway {run.gateway_url}, "
             f"{ready}/{len(run.partitions)} partitions ready" + (f"; {run.detail}" if run.detail else ""))
        by_id = {p["id"]: p for p in run.partitions}
        rows = [[ident, by_id.get(ident, {}).get("device", ""), state, run.restarts.get(ident, 0),
                 "yes" if by_id.get(ident, {}).get("ready") or (ident == "gateway" and run.ready) else "NO",
                 by_id.get(ident, {}).get("computed") or 0]
                for ident, state in sorted(run.containers.items())]
        echo(table(["partition", "device", "container", "restarts", "ready", "requests"], rows))
    return all(r.ready for r in runs)


async def down(name: str | None, echo: Echo) -> list[str]:
    stopped = await ContainerRuntime(echo=echo).down(name)
    echo(f"removed the containers, network and volume of {', '.join(stopped)}" if stopped else "nothing to stop")
    return stopped
