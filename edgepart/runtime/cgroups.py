"""CPU (and memory) caps for emulated devices on either cgroup layout, chosen by what the host has.

- cgroup v1 (a `cpu` controller hierarchy at ROOT/cpu): a group with `cpu.cfs_period_us` and
  `cpu.cfs_quota_us` (memory is not capped: v1 would need a second group in another hierarchy).
- cgroup v2 (the unified hierarchy at ROOT, `cgroup.controllers` listing `cpu`): the controllers are
  enabled down the path (`+cpu`, `+memory` in each ancestor's `cgroup.subtree_control`), then the
  group gets `cpu.max` ("QUOTA PERIOD") and, for a device with `memory`, `memory.max`.

A process joins a group by writing its pid to the group's `cgroup.procs` (both layouts). Everything
takes the root as a parameter, so tests run against a fake tree of either layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["CgroupLayout", "create_group", "detect", "layout_problems"]

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupLayout:
    version: Literal[1, 2]
    root: Path  # where groups are made: ROOT/cpu (v1) or ROOT (v2)
    memory: bool  # whether groups can cap memory too (v2 with the memory controller)

    def describe(self) -> str:
        return "cgroup v1 CPU quotas" if self.version == 1 else (
            "cgroup v2 CPU" + (" and memory" if self.memory else "") + " limits")


def detect(root: Path = ROOT) -> CgroupLayout | None:
    """The layout this host gives CPU caps with, v1 first where both exist (hybrid hosts); None: neither."""
    if (root / "cpu" / "cpu.cfs_quota_us").exists():
        return CgroupLayout(1, root / "cpu", memory=False)
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        available = controllers.read_text().split()
        if "cpu" in available:
            return CgroupLayout(2, root, memory="memory" in available)
    return None


def layout_problems(root: Path = ROOT) -> list[str]:
    """Why CPU caps cannot be set here (empty when they can)."""
    layout = detect(root)
    if layout is None:
        return [f"no cgroup CPU controller to cap emulated devices with: neither cgroup v1 ({root / 'cpu'}/"
                f"cpu.cfs_quota_us) nor cgroup v2 with the cpu controller ({root}/cgroup.controllers)"]
    if not os.access(layout.root, os.W_OK):
        return [f"{layout.root} is not writable ({layout.describe()}): run as root with cgroups mounted "
                "read-write"]
    return []


def create_group(layout: CgroupLayout, relative: Path, cpus: float, period_us: int,
                 memory_bytes: int | None = None) -> Path:
    """Make the group `relative` under the layout's root with a quota of `cpus` cores per `period_us`
    (and `memory_bytes` where the layout caps memory); returns its path."""
    quota = max(1000, round(cpus * period_us))
    path = layout.root / relative
    if layout.version == 1:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(period_us))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
        return path
    controllers = "+cpu" + (" +memory" if layout.memory and memory_bytes else "")
    parent = layout.root
    for part in relative.parts:  # each ancestor hands the controllers down to its children
        (parent / "cgroup.subtree_control").write_text(controllers)
        parent = parent / part
        parent.mkdir(exist_ok=True)
    (path / "cpu.max").write_text(f"{quota} {period_us}")
    if layout.memory and memory_bytes:
        (path / "memory.max").write_text(str(memory_bytes))
    return path
