"""Plan JSON: round trip, validation errors that name the field, semantic checks against the model."""

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
    load_plan,
    plan_from_dict,
    plan_from_json,
    save_plan,
)
from edgepart.planner.builders import PlanBuildError, build_ftp_grid, build_layerwise, build_single

REF = ModelRef("tiny", (1, 3, 16, 16))


@pytest.fixture(scope="module")
def graph() -> LayerGraph:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    return trace(model, REF.input_shape or (), "tiny")[1]


def _plan_dict(graph: LayerGraph) -> dict[str, Any]:
    return build_ftp_grid(graph, REF, ["a", "b"], (2, 2)).to_dict()


def test_round_trip_is_lossless(graph: LayerGraph, tmp_path: Any) -> None:
    for plan in (build_single(graph, REF, ["a"]), build_layerwise(graph, REF, ["a", "b", "c"]),
                 build_ftp_grid(graph, REF, ["a", "b"], (3, 2))):
        save_plan(plan, tmp_path / "plan.json")
        loaded = load_plan(tmp_path / "plan.json")
        assert loaded == plan
        assert json.loads(loaded.to_json())["schemaVersion"] == 1
        check_plan(loaded, graph)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("stages"), r"stages: Field required"),
    (lambda d: d.update(schemaVersion=7), r"schemaVersion: expected 1, got 7"),
    (lambda d: d["stages"][0]["partitions"][1].pop("device"), r"stages\[0\]\.partitions\[1\]\.device: Field required"),
    (lambda d: d["stages"][0]["partitions"][0]["output_region"].update(h=[5, 2]),
     r"stages\[0\]\.partitions\[0\]\.output_region: .*h: need 0 <= start < stop"),
    (lambda d: d["stages"][0].update(kind="diagonal"), r"stages\[0\]\.kind: Input should be"),
    (lambda d: d["stages"][0]["partitions"][0].update(colour="red"), r"partitions\[0\]\.colour: Unexpected"),
    (lambda d: d["stages"][0]["partitions"][0]["input_region"].update(x=[0, 1]), r"unknown axes \['x'\]"),
])
def test_malformed_plans_name_the_field(graph: LayerGraph, mutate: Any, message: str) -> None:
    data = _plan_dict(graph)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data)


def test_not_json_names_the_position() -> None:
    with pytest.raises(PlanError, match=r"not valid JSON.*line 1 column 2"):
        plan_from_json("{oops")


def test_missing_file_is_a_plan_error(tmp_path: Any) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "absent.json")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["stages"][0]["partitions"][0]["output_region"].update(h=[0, 3]), "must tile the stage output"),
    (lambda d: d["stages"][0]["partitions"][0]["input_region"].update(h=[0, 15]), r"input_region: plan has .* need"),
    (lambda d: d["stages"][0]["partitions"][0].update(device="zz"), r"device: 'zz' is not in devices"),
    (lambda d: d["stages"][1].update(start=5), r"stages\[1\]\.start: expected"),
    (lambda d: d["stages"][0].update(first_layer="conv9"), r"first_layer: plan says 'conv9'"),
    (lambda d: d["stages"][0]["partitions"][1].update(id="s0p0"), "duplicate id"),
    (lambda d: d.update(stages=d["stages"][:1]), "cover layers"),
])
def test_plans_that_do_not_fit_the_model_are_rejected(graph: LayerGraph, mutate: Any, message: str) -> None:
    data = _plan_dict(graph)
    mutate(data)
    with pytest.raises(PlanError, match=message):
        check_plan(plan_from_dict(data), graph)


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
