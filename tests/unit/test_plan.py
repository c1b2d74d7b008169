"""Plan JSON (v2 task graphs, v1 staged plans converted on load): round trip, validation errors that name the
task and field, semantic checks against the model, and random task graphs that must verify exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from torch import nn

from edgepart.geometry import Region
from edgepart.graph import trace
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef
from edgepart.plan import (
    PlanError,
    check_plan,
    check_stages,
    load_plan,
    plan_from_dict,
    plan_from_json,
    save_plan,
    staged_from_dict,
)
from edgepart.planner.builders import PlanBuildError, build_ftp_grid, build_layerwise, build_single

REF = ModelRef("tiny", (1, 3, 16, 16))


@pytest.fixture(scope="module")
def graph() -> LayerGraph:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    return trace(model, REF.input_shape or (), "tiny")[1]


def _staged_dict(graph: LayerGraph) -> dict[str, Any]:
    return build_ftp_grid(graph, REF, ["a", "b"], (2, 2)).to_dict()


def _plan_dict(graph: LayerGraph) -> dict[str, Any]:
    """An ftp-grid plan as a v2 task graph: four tiles read the input, a tail task reads the four tiles."""
    return build_ftp_grid(graph, REF, ["a", "b"], (2, 2)).to_plan("a").to_dict()


def test_round_trip_is_lossless(graph: LayerGraph, tmp_path: Any) -> None:
    for staged in (build_single(graph, REF, ["a"]), build_layerwise(graph, REF, ["a", "b", "c"]),
                   build_ftp_grid(graph, REF, ["a", "b"], (3, 2))):
        plan = staged.to_plan("a")
        save_plan(plan, tmp_path / "plan.json")
        loaded = load_plan(tmp_path / "plan.json")
        assert loaded == plan
        assert json.loads(loaded.to_json())["schemaVersion"] == 2
        check_plan(loaded, graph)


def test_version_1_files_load_as_the_same_task_graph(graph: LayerGraph, tmp_path: Any) -> None:
    staged = build_layerwise(graph, REF, ["a", "b", "c"])
    data = {**staged.to_dict(), "meta": {"master": "b"}}
    (tmp_path / "v1.json").write_text(json.dumps(data))
    loaded = load_plan(tmp_path / "v1.json")
    assert loaded == staged_from_dict(data).to_plan()
    assert loaded.master == "b"
    assert [t.id for t in loaded.tasks if t.relay] == [f"s{s.index}r" for s in staged.stages[1:]
                                                      if len(s.partitions) > 1]
    assert {t.id for t in loaded.compute_tasks} == {p.id for p in staged.partitions}
    check_plan(loaded, graph)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("tasks"), r"tasks: Field required"),
    (lambda d: d.update(schemaVersion=7), r"schemaVersion: expected 2 \(or 1\), got 7"),
    (lambda d: d["tasks"][1].pop("device"), r"tasks\[1\]\.device: Field required"),
    (lambda d: d["tasks"][0]["output"].update(h=[5, 2]), r"tasks\[0\]\.output: .*h: need 0 <= start < stop"),
    (lambda d: d["tasks"][0].update(colour="red"), r"tasks\[0\]\.colour: Unexpected"),
    (lambda d: d["tasks"][0]["inputs"][0]["region"].update(x=[0, 1]), r"unknown axes \['x'\]"),
    (lambda d: d["tasks"][4]["inputs"][0].update({"from": "nobody"}), r"task 's1p0'\.inputs\[0\]\.from: unknown "
                                                                      r"producer task 'nobody'"),
    (lambda d: d["tasks"][4]["inputs"][0]["region"].update(h=[0, 8]), r"task 's1p0'\.inputs\[0\]\.region: .* is "
                                                                      r"not inside what task 's0p0' computes"),
    (lambda d: d["tasks"][1].update(device="zz"), r"task 's0p1'\.device: 'zz' is not in devices"),
    (lambda d: d["tasks"][1].update(id="s0p0"), r"task 's0p0': duplicate task id"),
    (lambda d: d["outputs"].update(tiny=["s0p0"]), r"task 's1p0': no task reads its output"),
    (lambda d: d["tasks"][0]["inputs"].append({"from": "s1p0", "region": {"c": [0, 10]}}),
     r"task 's0p0'\.inputs\[1\]\.from: task 's1p0' stops at cut"),
])
def test_malformed_plans_name_the_task_and_field(graph: LayerGraph, mutate: Any, message: str) -> None:
    data = _plan_dict(graph)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data)


def test_a_cycle_is_rejected_naming_a_task(graph: LayerGraph) -> None:
    """Two relays at one cut reading each other: the only way producers can loop (ranges only move forward)."""
    data = _plan_dict(graph)
    tail = data["tasks"][4]
    region = {"c": [0, 8], "h": [0, 8], "w": [0, 8]}
    data["tasks"] += [
        {"id": "r1", "model": "tiny", "device": "a", "start": tail["start"], "stop": tail["start"], "output": region,
         "inputs": [{"from": "r2", "region": region}]},
        {"id": "r2", "model": "tiny", "device": "a", "start": tail["start"], "stop": tail["start"], "output": region,
         "inputs": [{"from": "r1", "region": region}]},
    ]
    tail["inputs"] = [{"from": "r1", "region": region}]
    with pytest.raises(PlanError, match=r"task 'r[12]': the task graph has a cycle: r[12] -> r[12] -> r[12]"):
        plan_from_dict(data)


def test_not_json_names_the_position() -> None:
    with pytest.raises(PlanError, match=r"not valid JSON.*line 1 column 2"):
        plan_from_json("{oops")


def test_missing_file_is_a_plan_error(tmp_path: Any) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "absent.json")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["tasks"][0]["inputs"][0]["region"].update(h=[0, 3]),
     r"task 's0p0'\.inputs: they do not cover the region .* the layers need"),
    (lambda d: d["tasks"][1].update(first_layer="conv9"), r"task 's0p1'\.first_layer: plan says 'conv9'"),
    (lambda d: d["tasks"][4].update(start=2, first_layer=None), r"task 's1p0'\.inputs\[0\]\.from: task 's0p0' stops at "
                                                               r"cut 4, this task starts at cut 2"),
    (lambda d: d["tasks"][0]["output"].update(h=[0, 99]), r"task 's0p0'\.output: .* is not inside the tensor"),
    (lambda d: d["outputs"].update(tiny=["s1p0", "s0p0"]), r"outputs\.tiny: task 's0p0' stops at cut 4"),
    (lambda d: d["tasks"][4]["output"].update(c=[0, 5]), r"outputs\.tiny: the output regions .* do not cover"),
    (lambda d: d["models"][0].update(input_shape=[1, 3, 8, 8]), r"models\[tiny\]\.input_shape: plan has"),
])
def test_plans_that_do_not_fit_the_model_are_rejected(graph: LayerGraph, mutate: Any, message: str) -> None:
    data = _plan_dict(graph)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        check_plan(plan_from_dict(data), graph)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["stages"][0]["partitions"][0]["output_region"].update(h=[0, 3]), "must tile the stage output"),
    (lambda d: d["stages"][0]["partitions"][0]["input_region"].update(h=[0, 15]), r"input_region: plan has .* need"),
    (lambda d: d["stages"][1].update(start=5), r"stages\[1\]\.start: expected"),
    (lambda d: d.update(stages=d["stages"][:1]), "cover layers"),
])
def test_staged_plans_that_do_not_fit_the_model_are_rejected(graph: LayerGraph, mutate: Any, message: str) -> None:
    data = _staged_dict(graph)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        check_stages(staged_from_dict(data), graph)


def test_impossible_grids_and_fusions_are_clear(graph: LayerGraph) -> None:
    with pytest.raises(PlanBuildError, match=r"grid 9x1: layer .* outputs only 8x8"):
        build_ftp_grid(graph, REF, ["a"], (9, 1))
    with pytest.raises(PlanBuildError, match="fused layers: 9 requested but only the first 3 can be fused"):
        build_ftp_grid(graph, REF, ["a"], (2, 2), 9)
    with pytest.raises(PlanBuildError, match="names must be unique"):
        build_single(graph, REF, ["a", "a"])


def test_layerwise_splits_conv_by_channels_and_fc_by_features(graph: LayerGraph) -> None:
    plan = build_layerwise(graph, REF, ["a", "b", "c"])
    splits = [(s.kind, s.split, len(s.partitions)) for s in plan.stages]
    assert splits == [("layerwise", "channels", 3), ("layerwise", "rows", 3), ("layerwise", "channels", 3),
                      ("single", "none", 1), ("layerwise", "channels", 3)]
    assert plan.stages[0].partitions[0].output_region == Region.of((0, 3), (0, 16), (0, 16))
