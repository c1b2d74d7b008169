"""The data plane in one event loop: partitions and gateway as ASGI apps, wired by an httpx transport.

Fast and deterministic: the same services the processes run, with peers reached through
`httpx.ASGITransport` and failures injected with `httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from edgepart.executor import use_exact_kernels
from edgepart.geometry import Region
from edgepart.graph.loader import ModelRef, load_model, trace_ref
from edgepart.partition_service import (
    DeploymentConfigs,
    GatewayService,
    PartitionConfig,
    PartitionService,
    gateway_app,
    gateway_internal_app,
    partition_app,
    render_configs,
)
from edgepart.partition_service.auth import Secret, write_secret
from edgepart.partition_service.slicing import TaskRunner, load_slice, resident_bytes
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame, frame_bytes, make_header
from edgepart.plan import ModelEntry, Plan, make_plan
from edgepart.planner.builders import build_ftp_grid, build_layerwise, make_stage, single_stage

TINY = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.g = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.p(torch.relu(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = torch.relu(self.c3(x))
        return self.fc(torch.flatten(self.g(x), 1))

def tiny():
    return Tiny()

class PadWider(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 4, 1, padding=2)

    def forward(self, x):
        return self.wide(self.head(x))

def padwider():
    return PadWider()
'''

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_models.py"
    path.write_text(TINY)
    use_exact_kernels(True)
    return path


def tiny_ref(model_file: Path, factory: str = "tiny", shape: tuple[int, ...] = SHAPE) -> ModelRef:
    return ModelRef(f"{model_file}:{factory}", shape)


def whole(ref: ModelRef, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = load_model(ref)(x)
    assert isinstance(out, torch.Tensor)
    return out


class Router(httpx.AsyncBaseTransport):
    """Routes by host name to each service's ASGI app; `overrides` replace a host (failure injection)."""

    def __init__(self, apps: dict[str, Any], overrides: dict[str, httpx.AsyncBaseTransport] | None = None):
        self.transports: dict[str, httpx.AsyncBaseTransport] = {h: httpx.ASGITransport(app=a) for h, a in apps.items()}
        self.transports.update(overrides or {})

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


class Deployment:
    def __init__(self, configs: DeploymentConfigs, partitions: dict[str, PartitionService], gateway: GatewayService,
                 client: httpx.AsyncClient, secret: Secret):
        self.configs = configs
        self.partitions = partitions
        self.gateway = gateway
        self.client = client  # base URL: the gateway's client port
        self.internal = {"authorization": secret.header}  # what a request inside the deployment carries


@contextlib.asynccontextmanager
async def deploy(plan: Plan, *, timeout_s: float = 10.0, max_inflight: int = 16, max_queue: int = 256,
                 admission: Literal["auto", "off"] = "auto", loader: Callable[[PartitionConfig], Any] = load_slice,
                 overrides: dict[str, httpx.AsyncBaseTransport] | None = None,
                 start: set[str] | None = None) -> AsyncIterator[Deployment]:
    addresses = {t.id: f"http://{t.id}:8000" for t in plan.tasks}
    secret_dir = Path(tempfile.mkdtemp())
    secret = write_secret(secret_dir / "secret")
    configs = render_configs(plan, "asgi", addresses, "http://gateway-internal:8081", client_port=8080,
                             secret_file=str(secret_dir / "secret"), request_timeout_s=timeout_s,
                             max_inflight=max_inflight, max_queue=max_queue, admission=admission,
                             exact_kernels=True)
    partitions: dict[str, PartitionService] = {}
    apps: dict[str, Any] = {}
    router = Router(apps, overrides)
    client = httpx.AsyncClient(transport=router, base_url="http://gateway:8080", timeout=60)
    for config in configs.partitions:
        service = PartitionService(config, loader=loader, client=client)
        partitions[config.partition] = service
        apps[config.partition] = partition_app(service)
    gateway = GatewayService(configs.gateway, client=client)
    apps["gateway"] = gateway_app(gateway)
    apps["gateway-internal"] = gateway_internal_app(gateway)
    router.transports.update({h: httpx.ASGITransport(app=a) for h, a in apps.items() if h not in router.transports})
    await gateway.start()
    deadline = time.monotonic() + 60
    for pid, service in partitions.items():
        if start is None or pid in start:
            # one at a time: torch.fx tracing patches torch globally, so a slice must not trace while
            # another computes in the same process (each partition process loads alone)
            await service.start()
            while service.state == "loading":
                assert time.monotonic() < deadline, "slices did not load"
                await asyncio.sleep(0.01)
    try:
        yield Deployment(configs, partitions, gateway, client, secret)
    finally:
        for service in partitions.values():
            await service.aclose()
        await gateway.aclose()
        await client.aclose()
        shutil.rmtree(secret_dir)


def plans(model_file: Path) -> dict[str, Plan]:
    ref = tiny_ref(model_file)
    _, graph = trace_ref(ref)
    pad_ref = tiny_ref(model_file, "padwider", (1, 3, 8, 8))
    _, pad = trace_ref(pad_ref)
    rows = [Region.of((0, 4), (0, 2), (0, 12)), Region.of((0, 4), (2, 7), (0, 12)), Region.of((0, 4), (7, 12), (0, 12))]
    padded = make_plan(pad_ref, "manual", "latency", ("d0", "d1"), (
        single_stage(pad, 0, 0, 1, "d0"),
        make_stage(pad, 1, "layerwise", "rows", 1, 2, [("d0", rows[0]), ("d1", rows[1]), ("d0", rows[2])])))
    return {
        "fused-2x2": build_ftp_grid(graph, ref, ["d0", "d1"], (2, 2)).to_plan(),
        "layerwise-3": build_layerwise(graph, ref, ["d0", "d1", "d2"]).to_plan(),
        "layerwise-rows-2": build_layerwise(graph, ref, ["d0", "d1"], split="rows").to_plan(),
        "tile-in-padding": padded.to_plan(),
    }


@pytest.mark.parametrize("name", ["fused-2x2", "layerwise-3", "layerwise-rows-2", "tile-in-padding"])
async def test_split_outputs_equal_the_whole_model(model_file: Path, name: str) -> None:
    plan = plans(model_file)[name]
    ref = plan.model
    async with deploy(plan) as d:
        assert all(s.state == "ready" for s in d.partitions.values())
        for seed in range(3):
            x = torch.randn(ref.input_shape or SHAPE, generator=torch.Generator().manual_seed(seed))
            result = await d.gateway.infer(x)
            torch.testing.assert_close(result.output, whole(ref, x), atol=1e-5, rtol=1e-4)


async def test_http_frames_json_and_request_ids(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    x = torch.randn(SHAPE)
    expected = whole(plan.model, x)
    async with deploy(plan) as d:
        body = frame_bytes(make_header("client", x, Region.full(x.shape[1:]), -1, "gateway"), x)
        response = await d.client.post("/v1/infer", content=body,
                                       headers={"content-type": CONTENT_TYPE, "x-request-id": "req-42"})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == "req-42"
        assert float(response.headers["x-edgepart-latency-ms"]) > 0
        frame = decode_frame(response.content)
        assert frame.header.request_id == "req-42"
        torch.testing.assert_close(frame.tensor, expected, atol=1e-5, rtol=1e-4)
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": x.tolist()},
                                       headers={"accept": "application/json"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["shape"] == [1, 10]
        torch.testing.assert_close(torch.tensor(answer["data"]).reshape(1, 10), expected, atol=1e-5, rtol=1e-4)
        info = (await d.client.get("/v1/model")).json()
        # the model's file without its directory: clients learn no path inside the deployment
        assert info["model"]["name"] == "tiny_models.py:tiny" and info["input_shape"] == list(SHAPE)
        assert info["partitions"] == len(plan.tasks) and "http://" not in json.dumps(info)
        status = (await d.client.get("/v1/status")).json()
        assert status["ready"] and [p["id"] for p in status["partitions"]] == [t.id for t in plan.tasks]
        assert all(p["computed"] == 2 and p["compute_mean_s"] > 0 for p in status["partitions"])  # both requests
        assert (await d.client.get("/readyz")).status_code == 200


async def test_json_carries_nan_and_infinities_as_strings(model_file: Path) -> None:
    """JSON has no NaN: a non-finite answer is still answered (200), its values as "NaN"/"Infinity" strings,
    and the same strings (or bare NaN tokens) are read back as input."""
    plan = plans(model_file)["fused-2x2"]
    x = torch.randn(SHAPE)
    x[0, 0, 5, 5] = float("nan")
    expected = whole(plan.model, x)
    assert not bool(torch.isfinite(expected).all())
    data: list[Any] = x.reshape(-1).tolist()
    data[0], data[1] = "Infinity", "-Infinity"
    x.view(-1)[0], x.view(-1)[1] = float("inf"), float("-inf")
    expected = whole(plan.model, x)
    async with deploy(plan) as d:
        response = await d.client.post("/v1/infer", content=json.dumps({"shape": list(SHAPE), "data": data}),
                                       headers={"content-type": "application/json", "accept": "application/json"})
        assert response.status_code == 200, response.text
        values = response.json()["data"]
        assert {v for v in values if isinstance(v, str)} <= {"NaN", "Infinity", "-Infinity"}
        assert any(isinstance(v, str) for v in values)
        answer = torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(expected.shape)
        torch.testing.assert_close(answer, expected, atol=1e-5, rtol=1e-4, equal_nan=True)


async def test_bad_inputs_get_4xx_naming_the_problem(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    async with deploy(plan) as d:
        wrong = torch.randn(1, 3, 16, 16)
        body = frame_bytes(make_header("c", wrong, Region.full(wrong.shape[1:]), -1, "gateway"), wrong)
        cases = [
            (body, CONTENT_TYPE, 422, "expects [1, 3, 32, 32]"),
            (b"\x00\x00\x00\x04nope", CONTENT_TYPE, 400, "not valid JSON"),
            (body[:-10], CONTENT_TYPE, 400, "truncated"),
            (b"hello", "text/plain", 415, "application/x-edgepart-tensor"),
            (json.dumps({"shape": [1, 3, 32, 32], "data": [1.0, 2.0]}).encode(), "application/json", 422,
             "data has 2 numbers"),
            (json.dumps({"data": [1.0]}).encode(), "application/json", 400, "shape"),
        ]
        for content, kind, status, words in cases:
            response = await d.client.post("/v1/infer", content=content, headers={"content-type": kind})
            assert response.status_code == status, (words, response.text)
            assert words in response.json()["detail"]
        double = torch.randn(SHAPE, dtype=torch.float64)
        response = await d.client.post("/v1/infer", content=frame_bytes(
            make_header("c", double, Region.full(double.shape[1:]), -1, "gateway"), double),
            headers={"content-type": CONTENT_TYPE})
        assert response.status_code == 422 and "float64" in response.json()["detail"]
        x = torch.randn(SHAPE)  # still serving
        torch.testing.assert_close((await d.gateway.infer(x)).output, whole(plan.model, x), atol=1e-5, rtol=1e-4)


async def test_partitions_refuse_pieces_they_do_not_expect(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    async with deploy(plan) as d:
        config = d.configs.partition("s1p0")
        piece = config.inputs[0]
        tensor = torch.zeros((1, *piece.region.shape))

        async def post(sender: str, region: Region, stage: int = 0, rid: str = "r1",
                       data: torch.Tensor | None = None) -> httpx.Response:
            t = tensor if data is None else data
            return await d.client.post("http://s1p0:8000/v1/tensor", content=frame_bytes(
                make_header(rid, t, region, stage, sender), t), headers={"content-type": CONTENT_TYPE, **d.internal})

        response = await post("intruder", piece.region)
        assert response.status_code == 422 and "not from 'intruder'" in response.json()["detail"]
        shifted = Region.of(piece.region.dims[0], (0, piece.region.shape[1]), (1, piece.region.shape[2] + 1))
        response = await post(piece.sender, shifted)
        assert response.status_code == 422 and "expected" in response.json()["detail"]
        response = await post(piece.sender, piece.region, stage=3)
        assert response.status_code == 422 and "stage 3" in response.json()["detail"]
        assert (await post(piece.sender, piece.region)).status_code == 204
        response = await post(piece.sender, piece.region)
        assert response.status_code == 409 and "already has its piece" in response.json()["detail"]


async def test_an_unreachable_partition_is_named_at_once(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with deploy(plan, timeout_s=20, overrides={"s1p0": httpx.MockTransport(refuse)}) as d:
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})
        assert response.status_code == 503  # from the refused connection: a wait for the 20 s timeout is a 504
        body = response.json()
        assert body["error"] == "peer_unreachable" and body["peer"] == "s1p0"
        assert "s1p0" in body["detail"] and "unreachable" in body["detail"]
        status = (await d.client.get("/v1/status")).json()
        assert [p["id"] for p in status["partitions"] if not p["live"]] == ["s1p0"]

    async with deploy(plan, overrides={"s0p1": httpx.MockTransport(refuse)}) as d:  # a first-stage partition
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})
        assert response.status_code == 503 and response.json()["peer"] == "s0p1"


async def test_a_partition_that_is_not_ready_is_named(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    async with deploy(plan, start={"s0p0", "s0p1", "s0p2", "s0p3"}) as d:  # s1p0 never loads
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})
        assert response.status_code == 503
        assert response.json()["peer"] == "s1p0" and "partition s1p0 is not ready" in response.json()["detail"]
        assert (await d.client.get("/readyz")).status_code == 503


async def test_missing_pieces_time_out_naming_the_sender(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]

    def swallow(request: httpx.Request) -> httpx.Response:  # s0p2's piece is lost on the way to s1p0
        return httpx.Response(204)

    async with deploy(plan, timeout_s=1.5) as d:
        original = d.partitions["s0p2"]._sender
        assert original is not None
        lossy = httpx.AsyncClient(transport=Router({}, {"s1p0": httpx.MockTransport(swallow)}))
        original.client = lossy
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})
        await lossy.aclose()
        assert response.status_code == 504, response.text
        body = response.json()  # s1p0 waits for s0p2, which sent its piece: the late piece is s0p2's
        assert body["peer"] == "s0p2" and "held by s0p2" in body["detail"], body


async def test_a_straggler_times_out_naming_the_partition_that_holds_the_late_piece(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    release = threading.Event()

    class Stuck:  # s0p1 computes its warm-up, then its first request never ends (until released)
        def __init__(self, runner: TaskRunner):
            self.runner = runner
            self.calls = 0

        def __call__(self, tile: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 1:
                release.wait(60)
            return self.runner(tile)

    def stuck_loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        return Stuck(runner) if config.partition == "s0p1" else runner

    try:
        async with deploy(plan, timeout_s=1.5, loader=stuck_loader) as d:
            response = await d.client.post("/v1/infer", json={"shape": list(SHAPE),
                                                              "data": torch.randn(SHAPE).tolist()})
            release.set()
            # the gateway misses s1p0's piece; s1p0 is healthy and waits for s0p1, which computes: s0p1 is named
            assert response.status_code == 504, response.text
            body = response.json()
            assert body["error"] == "timeout" and body["peer"] == "s0p1", body
            assert "held by s0p1 has all its pieces" in body["detail"]
    finally:
        release.set()


async def test_backpressure_queues_then_refuses(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]

    class Slow:
        def __init__(self, runner: TaskRunner):
            self.runner = runner

        def __call__(self, tile: torch.Tensor) -> torch.Tensor:
            time.sleep(0.3)
            return self.runner(tile)

    def slow_loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        return Slow(runner) if config.partition == "s1p0" else runner

    async with deploy(plan, timeout_s=10, max_inflight=1, loader=slow_loader) as d:
        xs = [torch.randn(SHAPE) for _ in range(4)]
        results = await asyncio.gather(*(d.gateway.infer(x) for x in xs))
        for x, result in zip(xs, results, strict=True):
            torch.testing.assert_close(result.output, whole(plan.model, x), atol=1e-5, rtol=1e-4)
        assert max(r.latency_s for r in results) > 4 * 0.3  # they queued one behind the other
    async with deploy(plan, timeout_s=10, max_inflight=1, max_queue=1, loader=slow_loader) as d:
        outcomes = await asyncio.gather(*(d.client.post("/v1/infer", json={
            "shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()}) for _ in range(3)))
        assert sorted(r.status_code for r in outcomes) == [200, 200, 503]  # one runs, one waits, one refused
        overloaded = next(r for r in outcomes if r.status_code == 503)
        assert overloaded.json()["error"] == "overloaded" and "1 waiting" in overloaded.json()["detail"]
        assert overloaded.headers["retry-after"] == "1"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


async def test_metrics_count_every_request(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    async with deploy(plan) as d:
        n = 5
        for _ in range(n):
            await d.gateway.infer(torch.randn(SHAPE))
        await d.client.post("/v1/infer", content=b"\x00\x00\x00\x01x", headers={"content-type": CONTENT_TYPE})
        gateway = _samples((await d.client.get("/metrics")).text)
        assert _value(gateway, "edgepart_request_seconds_count", partition="gateway") == n
        assert _value(gateway, "edgepart_queue_seconds_count", partition="gateway") == n
        assert _value(gateway, "edgepart_send_seconds_count", partition="gateway") == n * 4
        assert _value(gateway, "edgepart_errors_total", reason="bad_frame") == 1
        assert _value(gateway, "edgepart_inflight_requests") == 0
        assert _value(gateway, "edgepart_sent_bytes_total") > 4 * n * 3 * 16 * 16 * 4
        for pid in d.partitions:
            text = (await d.client.get(f"http://{pid}:8000/metrics")).text
            samples = _samples(text)
            labels = {"deployment": "asgi", "partition": pid, "stage": pid[1]}
            for name in ("edgepart_compute_seconds_count", "edgepart_request_seconds_count",
                         "edgepart_queue_seconds_count", "edgepart_assemble_seconds_count"):
                assert _value(samples, name, **labels) == n, (pid, name)
            assert _value(samples, "edgepart_received_bytes_total", **labels) > 0


@pytest.mark.parametrize("from_file", [False, True])
def test_a_slice_holds_only_its_own_weights(model_file: Path, tmp_path: Path, from_file: bool) -> None:
    from safetensors.torch import save_file

    plan = plans(model_file)["layerwise-3"]
    model = load_model(plan.model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    ref = plan.model
    if from_file:  # other numbers than the seeded ones: the slice must read them from the file
        state = {k: (v * 3 + 1 if v.is_floating_point() else v) for k, v in state.items()}
        save_file(state, str(tmp_path / "w.safetensors"))
        ref = ModelRef(ref.name, ref.input_shape, str(tmp_path / "w.safetensors"))
        plan = plan.replace(models=(ModelEntry.of(plan.models[0].id, ref),))
    _, graph = trace_ref(ref)
    configs = render_configs(plan, "t", {t.id: f"http://{t.id}:1" for t in plan.tasks}, "http://gw:2",
                             client_port=3, secret_file="unused")
    for config in [c for c in configs.partitions if c.start < c.stop][:3]:
        runner = load_slice(config).runner
        assert runner is not None
        names = graph.param_names(config.start, config.stop)
        kept = {k: v for k, v in runner.gm.state_dict().items() if v.device.type != "meta"}
        assert set(kept) == set(names)
        assert resident_bytes(runner.gm) == sum(state[k].numel() * state[k].element_size() for k in names)
        for key in names:
            assert torch.equal(kept[key], state[key]), key


async def _metrics_of(d: Deployment, host: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = "/metrics" if host == "gateway" else f"http://{host}:8000/metrics"
    return _samples((await d.client.get(url)).text)


class Gated:
    """A slice whose computes after the warm-up wait for `gate` (and count themselves)."""

    def __init__(self, runner: TaskRunner, gate: threading.Event):
        self.runner = runner
        self.gate = gate
        self.calls = 0

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            self.gate.wait(60)
        return self.runner(tile)


async def test_expired_work_is_dropped_not_computed(model_file: Path) -> None:
    """Three requests queue behind a stuck compute; once their clients have had their 504, the partition drops
    them (the one computing is not sent on, the queued ones are not computed) and the next stage sees none."""
    plan = plans(model_file)["layerwise-3"]
    gate = threading.Event()
    gated: dict[str, Gated] = {}

    def loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        if config.partition != "s0p0":
            return runner
        gated[config.partition] = Gated(runner, gate)
        return gated[config.partition]

    try:
        async with deploy(plan, timeout_s=1.0, loader=loader) as d:
            outcomes = await asyncio.gather(*(d.client.post("/v1/infer", json={
                "shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()}) for _ in range(3)))
            assert [r.status_code for r in outcomes] == [504] * 3, [r.text for r in outcomes]
            gate.set()
            first = d.partitions["s0p0"]
            deadline = time.monotonic() + 30
            while first.dropped < 3:
                assert time.monotonic() < deadline, first.info()
                await asyncio.sleep(0.01)
            samples = await _metrics_of(d, "s0p0")
            assert _value(samples, "edgepart_dropped_total", reason="send") == 1
            assert _value(samples, "edgepart_dropped_total", reason="compute_queue") == 2
            assert gated["s0p0"].calls == 2  # the warm-up and the stuck request: the queued two never ran
            assert first.computed == 1
            second = d.partitions["s1p0"]
            assert second.computed == 0 and _value(await _metrics_of(d, "s1p0"), "edgepart_compute_seconds_count") == 0
    finally:
        gate.set()


async def test_pieces_waiting_for_siblings_are_dropped_at_the_deadline(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]

    def swallow(request: httpx.Request) -> httpx.Response:  # s0p2's piece is lost on the way to s1p0
        return httpx.Response(204)

    async with deploy(plan, timeout_s=1.5) as d:
        original = d.partitions["s0p2"]._sender
        assert original is not None
        lossy = httpx.AsyncClient(transport=Router({}, {"s1p0": httpx.MockTransport(swallow)}))
        original.client = lossy
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})
        await lossy.aclose()
        assert response.status_code == 504, response.text
        # the pieces' deadline (the gateway's, less the time it keeps to name the late partition) came first
        samples = await _metrics_of(d, "s1p0")
        assert _value(samples, "edgepart_dropped_total", reason="assembly") == 1
        assert d.partitions["s1p0"].computed == 0 and len(d.partitions["s1p0"]._assembler) == 0


async def test_a_piece_that_arrives_expired_is_refused_before_its_payload(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]
    async with deploy(plan) as d:
        config = d.configs.partition("s1p0")
        piece = config.inputs[0]
        tensor = torch.zeros((1, *piece.region.shape))
        header = make_header("late1", tensor, piece.region, 0, piece.sender, budget_s=-0.5)
        response = await d.client.post("http://s1p0:8000/v1/tensor", content=frame_bytes(header, tensor),
                                       headers={"content-type": CONTENT_TYPE, **d.internal})
        assert response.status_code == 504 and response.json()["error"] == "expired", response.text
        assert _value(await _metrics_of(d, "s1p0"), "edgepart_dropped_total", reason="admission") == 1
        assert "late1" not in d.partitions["s1p0"]._assembler


async def test_a_burst_beyond_the_measured_bound_is_refused_with_retry_after(model_file: Path) -> None:
    plan = plans(model_file)["fused-2x2"]

    class Slow:
        def __init__(self, runner: TaskRunner):
            self.runner = runner

        def __call__(self, tile: torch.Tensor) -> torch.Tensor:
            time.sleep(0.2)
            return self.runner(tile)

    def slow_loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        return Slow(runner) if config.partition == "s1p0" else runner

    def body() -> dict[str, Any]:
        return {"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()}

    async with deploy(plan, timeout_s=4.0, max_inflight=64, loader=slow_loader) as d:
        warm = await asyncio.gather(*(d.client.post("/v1/infer", json=body()) for _ in range(4)))
        assert [r.status_code for r in warm] == [200] * 4  # unmeasured: only the hard cap applies
        admission = d.gateway.admission
        assert admission.service_s is not None  # three answers left while others were in flight
        bound = admission.bound
        assert bound < 30
        burst = await asyncio.gather(*(d.client.post("/v1/infer", json=body()) for _ in range(30)))
        refused = [r for r in burst if r.status_code == 503]
        assert len(refused) >= 30 - bound
        for r in refused:
            assert r.json()["error"] == "admission_limit", r.text
            assert "within the 4 s timeout" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
        assert {r.status_code for r in burst} <= {200, 503, 504}
        samples = await _metrics_of(d, "gateway")
        assert _value(samples, "edgepart_admission_total", decision="rejected") == len(refused)
        assert _value(samples, "edgepart_admission_total", decision="admitted") == 4 + 30 - len(refused)
        assert _value(samples, "edgepart_admission_inflight") == 0
        assert _value(samples, "edgepart_admission_bound") == admission.bound
    async with deploy(plan, timeout_s=4.0, max_inflight=64, admission="off", loader=slow_loader) as d:
        await asyncio.gather(*(d.client.post("/v1/infer", json=body()) for _ in range(4)))
        burst = await asyncio.gather(*(d.client.post("/v1/infer", json=body()) for _ in range(30)))
        assert all(r.status_code != 503 for r in burst)  # the old behaviour: everything queues
        assert d.gateway.admission.rejected == 0


async def _until(check: Callable[[], bool], what: Callable[[], Any]) -> None:
    deadline = time.monotonic() + 30  # a cap on a wait for an event, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, repr(what())
        await asyncio.sleep(0.01)


async def test_a_cancel_that_comes_before_the_pieces_drops_them_on_arrival(model_file: Path) -> None:
    """The gateway may cancel a request before a partition has seen any of it: its first piece is then refused,
    naming the cancel, and counted once as cancelled (not as a timeout)."""
    async with deploy(plans(model_file)["fused-2x2"], timeout_s=30) as d:
        tail = d.partitions["s1p0"]
        cancel = await d.client.post("http://s1p0:8000/v1/cancel", headers=d.internal,
                                     json={"requests": ["early.1"], "reason": "client_gone"})
        assert cancel.status_code == 200 and cancel.json() == {"dropped": []}, cancel.text
        piece = d.configs.partition("s1p0").inputs[0]
        tensor = torch.zeros((1, *piece.region.shape))
        answers = [await d.client.post("http://s1p0:8000/v1/tensor",
                                       headers={**d.internal, "content-type": CONTENT_TYPE},
                                       content=frame_bytes(make_header("early.1", tensor, piece.region, 0,
                                                                       piece.sender), tensor))
                   for _ in range(2)]  # the second piece is refused too, not counted again
        assert [a.status_code for a in answers] == [504, 504], [a.text for a in answers]
        assert "cancelled by the gateway (client_gone)" in answers[0].text, answers[0].text
        assert tail.cancelled == 1 and len(tail._assembler) == 0
        samples = await _metrics_of(d, "s1p0")
        assert _value(samples, "edgepart_requests_cancelled_total", reason="client_gone") == 1


async def test_a_failed_request_is_cancelled_at_the_partitions_that_hold_its_pieces(model_file: Path) -> None:
    """s0p1 fails computing: the gateway answers 502 naming it and cancels the request; s1p0, which holds the pieces of
    the other tiles and waits for s0p1's, drops its assembly at once (its deadline is 30 s away)."""
    plan = plans(model_file)["fused-2x2"]
    held: dict[str, PartitionService] = {}

    class Failing:
        def __init__(self, runner: TaskRunner):
            self.runner = runner
            self.calls = 0

        def __call__(self, tile: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 1:
                # fail once the tail holds another tile's pieces, so the cancel finds them there (on its
                # compute thread: the event loop delivers those pieces meanwhile)
                deadline = time.monotonic() + 30
                while len(held["tail"]._assembler) == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                raise RuntimeError("broken tile")
            return self.runner(tile)

    def loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        return Failing(runner) if config.partition == "s0p1" else runner

    async with deploy(plan, timeout_s=30, loader=loader) as d:
        held["tail"] = d.partitions["s1p0"]
        response = await d.client.post("/v1/infer", json={"shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()},
                                        headers={"x-request-id": "doomed"})
        assert response.status_code == 502 and response.json()["peer"] == "s0p1", response.text
        tail = d.partitions["s1p0"]
        await _until(lambda: tail.cancelled == 1, tail.info)
        rid = d.gateway._pipeline_ids["doomed"]
        assert len(tail._assembler) == 0 and tail._view(rid).state == "expired"
        samples = await _metrics_of(d, "s1p0")
        assert _value(samples, "edgepart_requests_cancelled_total", reason="peer_error") == 1
        assert _value(samples, "edgepart_inflight_requests") == 0 and tail.computed == 0
        assert _value(samples, "edgepart_dropped_total") == 0  # cancelled, not left to its deadline
        gateway = await _metrics_of(d, "gateway")
        assert _value(gateway, "edgepart_requests_cancelled_total", reason="peer_error") == 1
        # a late piece of the cancelled request is refused
        piece = d.configs.partition("s1p0").inputs[0]
        tensor = torch.zeros((1, *piece.region.shape))
        late = await d.client.post("http://s1p0:8000/v1/tensor", headers={**d.internal, "content-type": CONTENT_TYPE},
                                   content=frame_bytes(make_header(rid, tensor, piece.region, 0, piece.sender), tensor))
        assert late.status_code == 504, late.text


async def test_abandoned_requests_are_not_computed_nor_sent_on(model_file: Path) -> None:
    """Three requests wait behind a stuck compute at s0p0 (one computing, two queued); their clients go away:
    the gateway cancels them, s0p0 never computes the queued two and does not send the third on."""
    plan = plans(model_file)["layerwise-3"]
    gate = threading.Event()
    gated: dict[str, Gated] = {}

    def loader(config: PartitionConfig) -> Any:
        runner = load_slice(config)
        if config.partition != "s0p0":
            return runner
        gated[config.partition] = Gated(runner, gate)
        return gated[config.partition]

    try:
        async with deploy(plan, timeout_s=30, loader=loader) as d:
            first = d.partitions["s0p0"]
            clients = [asyncio.create_task(d.client.post("/v1/infer", json={
                "shape": list(SHAPE), "data": torch.randn(SHAPE).tolist()})) for _ in range(3)]
            await _until(lambda: gated["s0p0"].calls == 2 and first.info()["queued"] == 2, first.info)
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await _until(lambda: first.cancelled == 2, first.info)  # the queued two; the third computes
            gate.set()
            await _until(lambda: first.cancelled == 3, first.info)  # computed, not sent on
            await _until(lambda: first.info()["assembling"] == 0 and not first._jobs and not first._sending
                         and first._queue.qsize() == 0, first.info)
            samples = await _metrics_of(d, "s0p0")
            assert _value(samples, "edgepart_requests_cancelled_total", reason="abandoned") == 3
            assert _value(samples, "edgepart_inflight_requests") == 0 and first.dropped == 0
            assert gated["s0p0"].calls == 2  # the warm-up and the stuck request: the queued two never ran
            assert d.partitions["s1p0"].computed == 0 and d.partitions["s1p0"].info()["assembling"] == 0
            gateway = await _metrics_of(d, "gateway")
            assert _value(gateway, "edgepart_requests_cancelled_total", reason="abandoned") == 3
    finally:
        gate.set()
