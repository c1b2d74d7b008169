"""CPU and memory caps for emulated devices on both cgroup layouts, against fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepart.runtime import cgroups


def v1_tree(root: Path) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cgroup.procs").write_text("")
    (root / "unified").mkdir()  # a hybrid host: v1 controllers beside an empty v2 mount
    return root


def v2_tree(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v1_is_chosen_where_the_cpu_hierarchy_is(tmp_path: Path) -> None:
    root = v1_tree(tmp_path / "cg")
    layout = cgroups.detect(root)
    assert layout == cgroups.CgroupLayout(1, root / "cpu", memory=False)
    group = cgroups.create_group(layout, Path("edgepart/run/edge-0"), 0.25, 10_000, memory_bytes=2**30)
    assert group == root / "cpu" / "edgepart" / "run" / "edge-0"
    assert (group / "cpu.cfs_period_us").read_text() == "10000"
    assert (group / "cpu.cfs_quota_us").read_text() == "2500"
    assert not (group / "memory.max").exists() and not (group / "cpu.max").exists()
    assert cgroups.layout_problems(root) == []


def test_v2_enables_the_controllers_down_the_path_and_sets_cpu_max_and_memory_max(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    layout = cgroups.detect(root)
    assert layout == cgroups.CgroupLayout(2, root, memory=True)
    group = cgroups.create_group(layout, Path("edgepart/run/edge-0"), 0.4, 10_000, memory_bytes=512 * 2**20)
    assert group == root / "edgepart" / "run" / "edge-0"
    assert (group / "cpu.max").read_text() == "4000 10000"
    assert (group / "memory.max").read_text() == str(512 * 2**20)
    for ancestor in (root, root / "edgepart", root / "edgepart" / "run"):
        assert (ancestor / "cgroup.subtree_control").read_text() == "+cpu +memory", ancestor
    assert not (group / "cpu.cfs_quota_us").exists()


def test_v2_without_the_memory_controller_caps_cpu_only(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg", "cpu pids")
    layout = cgroups.detect(root)
    assert layout is not None and layout.version == 2 and not layout.memory
    group = cgroups.create_group(layout, Path("edgepart/r/d"), 0.05, 10_000, memory_bytes=2**30)
    assert (group / "cpu.max").read_text() == "1000 10000"  # at least 1 ms per period
    assert not (group / "memory.max").exists()
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"


def test_a_clear_message_where_neither_layout_caps_cpu(tmp_path: Path) -> None:
    for root in (tmp_path / "empty", v2_tree(tmp_path / "nocpu", "io memory pids")):
        root.mkdir(exist_ok=True)
        assert cgroups.detect(root) is None
        (problem,) = cgroups.layout_problems(root)
        assert "neither cgroup v1" in problem and "cgroup v2" in problem and str(root) in problem


@pytest.mark.skipif(not Path("/sys/fs/cgroup").exists(), reason="no /sys/fs/cgroup here")
def test_this_host_is_detected() -> None:
    layout = cgroups.detect()
    if layout is not None:
        assert (layout.root / "cgroup.procs").exists()
