"""render_configs: every piece a task waits for is sent by exactly one peer, with the right region."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from edgepart.geometry import Region, tiles_partition
from edgepart.graph.layer_graph import LayerGraph, trace
from edgepart.graph.loader import ModelRef, load_graph
from edgepart.partition_service.config import (
    GATEWAY,
    ConfigError,
    DeploymentConfigs,
    GatewayConfig,
    PartitionConfig,
    ServiceSettings,
    load_gateway_config,
    load_partition_config,
    render_configs,
)
from edgepart.plan import Plan, make_plan, needed_input
from edgepart.planner.builders import (
    build_ftp_grid,
    build_layerwise,
    build_single,
    make_stage,
    single_stage,
)

_GRAPHS: dict[str, LayerGraph] = {}


def graph_of(name: str) -> LayerGraph:
    if name not in _GRAPHS:
        _GRAPHS[name] = load_graph(ModelRef(name))
    return _GRAPHS[name]


def _plans() -> dict[str, Callable[[], Plan]]:
    def ftp(name: str, grid: tuple[int, int], devices: int) -> Callable[[], Plan]:
        return lambda: build_ftp_grid(graph_of(name), ModelRef(name), [f"d{i}" for i in range(devices)],
                                      grid).to_plan("d0")

    def lw(name: str, devices: int) -> Callable[[], Plan]:
        return lambda: build_layerwise(graph_of(name), ModelRef(name), [f"d{i}" for i in range(devices)]).to_plan("d0")

    return {
        "vgg16-ftp-2x2": ftp("vgg16", (2, 2), 3),
        "yolov2-ftp-3x3": ftp("yolov2", (3, 3), 4),
        "googlenet-ftp-2x1": ftp("googlenet", (2, 1), 2),
        "vgg16-layerwise-3": lw("vgg16", 3),
        "resnet50-layerwise-2": lw("resnet50", 2),
        "yolov2-layerwise-2": lw("yolov2", 2),
        "alexnet-single": lambda: build_single(graph_of("alexnet"), ModelRef("alexnet"), ["d0"]).to_plan("d0"),
    }


PLANS = _plans()


def render(plan: Plan, delay: Callable[[str, str], float] | None = None) -> DeploymentConfigs:
    addresses = {t.id: f"http://{t.id}.svc:8000" for t in plan.tasks}
    return render_configs(plan, "demo", addresses, "http://gateway.svc:8081", client_port=8080,
                          secret_file="/var/run/secrets/edgepart/token", link_delay=delay,
                          input_shape=graph_of(plan.model.name).input_shape)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_piece_is_sent_by_exactly_one_peer(name: str) -> None:
    plan = PLANS[name]()
    configs = render(plan)
    by_id = {c.partition: c for c in configs.partitions}
    assert set(by_id) == {t.id for t in plan.tasks}
    sent = {(c.partition, r.target, r.region) for c in configs.partitions for r in c.outputs}
    sent |= {(GATEWAY, r.target, r.region) for r in configs.gateway.routes}
    expected = {(p.sender, c.partition, p.region) for c in configs.partitions for p in c.inputs}
    expected |= {(p.sender, GATEWAY, p.region) for p in configs.gateway.inputs}
    assert sent == expected
    graph = graph_of(plan.model.name)
    for config in configs.partitions:
        # chain plans read whole regions: the pieces tile the input buffer, which holds what the layers need
        relative = [p.region.relative_to(config.input_region) for p in config.inputs]
        assert tiles_partition(relative, config.input_region.shape) is None
        assert config.input_region.contains(needed_input(graph, plan.task(config.partition)))
        for route in config.outputs:
            need = (Region.full(configs.gateway.output_shape[1:]) if route.target == GATEWAY
                    else by_id[route.target].input_region)
            assert route.region == config.output_region.intersect(need)
            assert route.url.endswith(":8081" if route.target == GATEWAY else ":8000")


@pytest.mark.parametrize("name", sorted(PLANS))
def test_the_gateway_cuts_the_first_stage_and_assembles_the_last(name: str) -> None:
    plan = PLANS[name]()
    gateway = render(plan).gateway
    readers = [t for t in plan.tasks if t.reads_input]
    assert [(r.target, r.region) for r in gateway.routes] == [(t.id, t.inputs[0].region) for t in readers]
    last = [plan.task(t) for t in plan.outputs[plan.models[0].id]]
    assert [(p.sender, p.region) for p in gateway.inputs] == [(t.id, t.output) for t in last]
    graph = graph_of(plan.model.name)
    assert gateway.input_shape == graph.input_shape
    assert gateway.output_shape == (graph.batch, *graph.output_shape)
    assert gateway.stages == len(plan.stage_view())
    assert gateway.plan == plan.to_dict()


def test_layer_ranges_regions_and_listen_addresses() -> None:
    plan = PLANS["vgg16-ftp-2x2"]()
    addresses = {t.id: f"http://10.0.0.{i + 2}:{9100 + i}" for i, t in enumerate(plan.tasks)}
    configs = render_configs(plan, "demo", addresses, "http://10.0.0.1:9000", client_port=8080, secret_file="s",
                             hosts={"s0p0": "10.0.0.2"},
                             bind_host="127.0.0.1", threads={"d0": 2}, request_timeout_s=7.5)
    for i, task in enumerate(plan.tasks):
        config = configs.partition(task.id)
        assert (config.start, config.stop, config.first_layer, config.last_layer) == (
            task.start, task.stop, task.first_layer, task.last_layer)
        assert config.output_region == task.output
        assert config.port == 9100 + i
        assert config.host == ("10.0.0.2" if task.id == "s0p0" else "127.0.0.1")
        assert config.threads == (2 if task.device == "d0" else 1)
        assert config.request_timeout_s == 7.5
        assert config.model.name == "vgg16" and config.model.input_shape == (1, 3, 224, 224)
    assert (configs.gateway.port, configs.gateway.internal_port) == (8080, 9000)
    assert {c.secret_file for c in configs.partitions} == {configs.gateway.secret_file} == {"s"}


def test_emulated_latency_only_between_devices() -> None:
    plan = PLANS["vgg16-ftp-2x2"]()  # tiles on d0, d1, d2, d0; the tail on d0 (the master)
    configs = render(plan, delay=lambda a, b: 0.004 if {a, b} == {"d0", "d2"} else 0.002)
    device = {t.id: t.device for t in plan.tasks}
    for config in configs.partitions:
        for route in config.outputs:
            to = "d0" if route.target == GATEWAY else device[route.target]
            expected = 0.0 if to == config.device else (0.004 if {to, config.device} == {"d0", "d2"} else 0.002)
            assert route.delay_s == expected
    assert [r.delay_s for r in configs.gateway.routes] == [0.0, 0.002, 0.004, 0.0]


@pytest.mark.parametrize("name", ["vgg16-ftp-2x2", "resnet50-layerwise-2"])
def test_configs_round_trip_as_json(name: str) -> None:
    configs = render(PLANS[name]())
    for config in configs.partitions:
        assert load_partition_config(config.model_dump_json()) == config
    assert load_gateway_config(configs.gateway.model_dump_json()) == configs.gateway


def test_settings_read_a_file_or_inline_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = render(PLANS["vgg16-ftp-2x2"]()).partitions[1]
    path = tmp_path / "s0p1.json"
    path.write_text(config.model_dump_json())
    monkeypatch.setenv("EDGEPART_CONFIG", str(path))
    monkeypatch.setenv("EDGEPART_LISTEN_FDS", "3, 4")
    settings = ServiceSettings()
    assert settings.listen_fds == (3, 4)
    assert load_partition_config(settings.config_text()) == config
    monkeypatch.setenv("EDGEPART_CONFIG", config.model_dump_json())
    monkeypatch.delenv("EDGEPART_LISTEN_FDS")
    settings = ServiceSettings()
    assert settings.listen_fds == ()
    assert load_partition_config(settings.config_text()) == config
    monkeypatch.setenv("EDGEPART_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot read"):
        ServiceSettings().config_text()


def test_bad_configs_name_the_field() -> None:
    configs = render(PLANS["vgg16-ftp-2x2"]())
    data = json.loads(configs.partitions[0].model_dump_json())
    with pytest.raises(ConfigError, match="kind: expected 'partition', got 'gateway'"):
        load_partition_config(json.dumps({**data, "kind": "gateway"}))
    with pytest.raises(ConfigError, match="threads"):
        load_partition_config(json.dumps({**data, "threads": 0}))
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_partition_config("{oops")
    with pytest.raises(ConfigError, match="inputs: two pieces from the same sender"):
        load_partition_config(json.dumps({**data, "inputs": data["inputs"] * 2}))
    with pytest.raises(ConfigError, match="outputs"):
        bad_route = {**data["outputs"][0], "region": {"c": [0, 999], "h": [0, 1], "w": [0, 1]}}
        load_partition_config(json.dumps({**data, "outputs": [bad_route]}))
    gateway = json.loads(configs.gateway.model_dump_json())
    served = gateway["models"][0]
    with pytest.raises(ConfigError, match="inputs"):
        short = served["inputs"][:-1] or [{"sender": "x", "stage": 0, "region": {"c": [0, 1]}}]
        load_gateway_config(json.dumps({**gateway, "models": [{**served, "inputs": short}]}))
    assert isinstance(load_gateway_config(json.dumps(gateway)), GatewayConfig)
    assert isinstance(load_partition_config(json.dumps(data)), PartitionConfig)


def test_render_refuses_missing_or_portless_addresses() -> None:
    plan = PLANS["vgg16-ftp-2x2"]()
    addresses = {t.id: f"http://{t.id}:8000" for t in plan.tasks}
    with pytest.raises(ConfigError, match=r"no base URL for tasks \['s1p0'\]"):
        render_configs(plan, "demo", {k: v for k, v in addresses.items() if k != "s1p0"}, "http://gw:1",
                       client_port=2, secret_file="s")
    with pytest.raises(ConfigError, match="must name a port"):
        render_configs(plan, "demo", {**addresses, "s0p2": "http://s0p2"}, "http://gw:1", client_port=2,
                       secret_file="s")


class _PadWider(nn.Module):
    """A 1x1 conv padded by 2: the border rows of its output come from padding alone."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 4, 1, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(self.head(x))


def test_a_tile_in_padding_gets_a_trigger_piece() -> None:
    _, graph = trace(_PadWider(), (1, 3, 8, 8), "padwider")
    ref = ModelRef("padwider", (1, 3, 8, 8))
    rows = [Region.of((0, 4), (0, 2), (0, 12)), Region.of((0, 4), (2, 12), (0, 12))]
    stages = (single_stage(graph, 0, 0, 1, "d0"),
              make_stage(graph, 1, "layerwise", "rows", 1, 2, [("d0", rows[0]), ("d1", rows[1])]))
    staged = make_plan(ref, "manual", "latency", ("d0", "d1"), stages)
    assert staged.stages[1].partitions[0].input_region.empty
    plan = staged.to_plan("d0")  # the split stage reads from a relay on the master, s1r
    configs = render_configs(plan, "t", {t.id: f"http://{t.id}:1" for t in plan.tasks}, "http://gw:2",
                             client_port=3, secret_file="s")
    padded = configs.partition("s1p0")
    assert padded.input_region.empty
    assert [(p.sender, p.region) for p in padded.inputs] == [("s1r", padded.input_region)]
    triggers = [r for r in configs.partition("s1r").outputs if r.target == "s1p0"]
    assert len(triggers) == 1 and triggers[0].region.empty
