"""The planner chooses a codec per link from its cost model; the evaluator costs the choice; configs carry it."""

from __future__ import annotations

import json

import pytest
from tiny_cnn import SHAPE, write_tiny_cnn

from edgepart.graph.loader import ModelRef, load_graph
from edgepart.partition_service.config import render_configs
from edgepart.plan import INPUT, Plan, plan_from_json
from edgepart.planner.cluster import Cluster
from edgepart.planner.codec_cost import CodecCost, WireSettings
from edgepart.planner.evaluate import evaluate
from edgepart.planner.registry import solve


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    return ModelRef(f"{write_tiny_cnn(tmp_path_factory.mktemp('model'))}:tiny", SHAPE, seed=1)


def _plan(ref: ModelRef, bandwidth: str, wire: WireSettings | None) -> tuple[Plan, Cluster]:
    cluster = Cluster.homogeneous(2, bandwidth=bandwidth, latency="0ms")
    return solve(load_graph(ref), ref, cluster, "latency", "layerwise", wire=wire, split="rows"), cluster


def _activation_codecs(plan: Plan) -> set[str]:
    """Codecs of the inputs that cross a link and carry activations (not the model input)."""
    by_id = {t.id: t for t in plan.tasks}
    return {i.codec for t in plan.tasks for i in t.inputs
            if i.source != INPUT and by_id[i.source].device != t.device}


def test_default_plans_stay_raw_and_old_plan_json_loads(ref: ModelRef) -> None:
    plan, _ = _plan(ref, "10Mbps", None)
    assert {i.codec for t in plan.tasks for i in t.inputs} == {"none"}
    data = plan.to_dict()
    for task in data["tasks"]:  # a plan written before codecs existed
        for item in task["inputs"]:
            del item["codec"], item["wireDtype"]
    assert plan_from_json(plan.to_json()) == plan
    assert plan_from_json(json.dumps(data)) == plan


def test_slow_links_get_a_codec_and_fast_links_stay_raw(ref: ModelRef) -> None:
    slow, _ = _plan(ref, "1Mbps", WireSettings(compression="auto"))
    fast, _ = _plan(ref, "100Gbps", WireSettings(compression="auto"))
    if not _activation_codecs(slow):
        pytest.skip("layerwise kept the whole model on one device")
    assert _activation_codecs(slow) <= {"lz4", "zstd"} and "none" not in _activation_codecs(slow)
    assert _activation_codecs(fast) == {"none"}
    # the model input (an image) is never compressed
    assert all(i.codec == "none" for t in slow.tasks for i in t.inputs if i.source == INPUT)


def test_evaluator_costs_the_codec_and_the_planner_only_picks_it_when_it_pays(ref: ModelRef) -> None:
    raw, cluster = _plan(ref, "1Mbps", None)
    graph = load_graph(ref)
    chosen, _ = _plan(ref, "1Mbps", WireSettings(compression="auto"))
    if not _activation_codecs(chosen):
        pytest.skip("layerwise kept the whole model on one device")
    assert chosen.predicted is not None and raw.predicted is not None
    assert chosen.predicted.latency_s < raw.predicted.latency_s
    assert evaluate(chosen, graph, cluster).latency_s == pytest.approx(chosen.predicted.latency_s)
    # a codec so slow it never pays is never chosen, even when asked for by name
    sluggish = {"lz4": CodecCost(ratio=0.5, compress_Bps=1e3, decompress_Bps=1e3)}
    forced, _ = _plan(ref, "1Mbps", WireSettings(compression="lz4", codecs=sluggish))
    assert _activation_codecs(forced) == {"none"}


def test_float16_halves_the_predicted_transfer_bytes(ref: ModelRef) -> None:
    raw, _ = _plan(ref, "1Mbps", None)
    half, _ = _plan(ref, "1Mbps", WireSettings(wire_dtype="float16"))
    if not _activation_codecs(half):
        pytest.skip("layerwise kept the whole model on one device")
    assert {i.wire_dtype for t in half.tasks for i in t.inputs if i.codec == "none" and i.source != INPUT} \
        >= {"float16"}
    assert half.predicted is not None and raw.predicted is not None
    assert half.predicted.latency_s < raw.predicted.latency_s


def test_configs_route_each_piece_with_its_codec(ref: ModelRef) -> None:
    plan, _ = _plan(ref, "1Mbps", WireSettings(compression="zstd", wire_dtype="float16"))
    if not _activation_codecs(plan):
        pytest.skip("layerwise kept the whole model on one device")
    addresses = {t.id: f"http://127.0.0.1:{9000 + i}" for i, t in enumerate(plan.tasks)}
    configs = render_configs(plan, "d", addresses, "http://127.0.0.1:8999", client_port=8080, secret_file="/s")
    routes = [r for c in configs.partitions for r in c.outputs if r.target != "gateway"]
    # pieces that cross a link are encoded; hand-overs on one device stay raw
    assert {(r.codec, r.wire_dtype) for r in routes} == {("zstd", "float16"), ("none", "float32")}
