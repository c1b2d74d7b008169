"""Ring workers in one process, wired over HTTP in memory (ASGI): decisions, queues, conservation, auth.

Each worker is the real `ring_app` around a real `RingService` with the real slices of a small CNN; the
workers reach each other through an httpx client whose transports are the other workers' apps, so every
frame crosses the same routes, checks and secret as between processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import torch
from tiny_cnn import SOURCE

from edgepart.geometry import Region
from edgepart.graph.loader import load_model
from edgepart.partition_service.auth import Secret
from edgepart.partition_service.config import ConfigError, ModelSource
from edgepart.partition_service.ring import (
    IMAGES_PATH,
    HttpLink,
    RingService,
    ring_app,
)
from edgepart.partition_service.ring_config import RingPeer, RingWorkerConfig, load_ring_config
from edgepart.partition_service.wire import CONTENT_TYPE, decode_frame, frame_bytes, make_header

SHAPE = (1, 3, 16, 16)
SECRET = Secret("s" * 40)
WORKERS = ("w0", "w1", "w2")


@pytest.fixture(scope="module")
def model_source(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    path = tmp_path_factory.mktemp("model") / "tiny_ring.py"
    path.write_text(SOURCE)
    return ModelSource(name=f"{path}:tiny", input_shape=SHAPE)


def config(model: ModelSource, worker: str, *, scheduler: str = "ms-mdi", sources: Sequence[str] = ("w0", "w1"),
           queue_bound: int = 16, gamma: dict[str, float] | None = None) -> RingWorkerConfig:
    return RingWorkerConfig(
        deployment="ring-test", worker=worker, model=model,
        ring=tuple(RingPeer(name=w, url=f"http://{w}") for w in WORKERS), sources=tuple(sources),
        scheduler=scheduler,  # type: ignore[arg-type]
        gamma=gamma or dict.fromkeys(WORKERS, 1e-6), queue_bound=queue_bound, heartbeat_s=0.05, port=0,
        secret_file="unused", request_timeout_s=60.0)


class Switch(httpx.AsyncBaseTransport):
    """Requests to http://<worker> go to that worker's app."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.apps[request.url.host].handle_async_request(request)


class Ring:
    def __init__(self, services: dict[str, RingService], client: httpx.AsyncClient):
        self.services = services
        self.client = client

    async def image(self, source: str, x: torch.Tensor, rid: str) -> httpx.Response:
        body = frame_bytes(make_header(rid, x, Region.full(x.shape[1:]), -1, "client"), x)
        return await self.client.post(f"http://{source}{IMAGES_PATH}", content=body,
                                      headers={"content-type": CONTENT_TYPE, **auth()})


def auth() -> dict[str, str]:
    return {"authorization": SECRET.header}


@pytest.fixture
async def ring_factory(model_source: ModelSource) -> AsyncIterator[object]:
    started: list[tuple[list[RingService], httpx.AsyncClient]] = []

    async def make(**options: object) -> Ring:
        configs = {w: config(model_source, w, **options) for w in WORKERS}  # type: ignore[arg-type]
        switch = Switch()
        client = httpx.AsyncClient(transport=switch, timeout=60.0)
        services = {w: RingService(c, link=HttpLink(c, SECRET, client), secret=SECRET)
                    for w, c in configs.items()}
        switch.apps = {w: httpx.ASGITransport(app=ring_app(s)) for w, s in services.items()}
        for s in services.values():
            await s.start()
        for _ in range(600):
            if all(s.state == "ready" for s in services.values()):
                break
            assert all(s.state != "failed" for s in services.values()), [s.failure for s in services.values()]
            await asyncio.sleep(0.01)
        started.append((list(services.values()), client))
        return Ring(services, client)

    yield make
    for services, client in started:
        for s in services:
            await s.aclose()
        await client.aclose()


def whole(model: ModelSource, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(model.ref())(x)  # type: ignore[no-any-return]


def test_every_source_allocation_covers_every_layer_once(model_source: ModelSource) -> None:
    from edgepart.graph.loader import trace_ref

    graph = trace_ref(model_source.ref())[1]
    c = config(model_source, "w2", gamma={"w0": 1e-6, "w1": 2e-6, "w2": 4e-6})
    for source, allocation in c.allocations(graph).items():
        assert allocation.shares[0].worker == source
        covered = [layer for share in allocation.shares for layer in range(share.start, share.stop)]
        assert covered == list(range(len(graph)))


@pytest.mark.parametrize("scheduler", ["ms-mdi", "ar-mdi", "local"])
async def test_every_image_is_answered_once_with_the_whole_models_output(ring_factory, model_source: ModelSource,
                                                                         scheduler: str) -> None:
    ring = await ring_factory(scheduler=scheduler)
    torch.manual_seed(0)
    images = {(s, i): torch.randn(SHAPE) for s in ("w0", "w1") for i in range(8)}
    answers = await asyncio.gather(*(ring.image(s, x, f"img-{s}-{i}") for (s, i), x in images.items()))
    local = 0
    for ((source, i), x), answer in zip(images.items(), answers, strict=True):
        assert answer.status_code == 200, answer.text
        frame = decode_frame(answer.content)
        assert frame.header.request_id == f"img-{source}-{i}"
        assert torch.allclose(frame.tensor, whole(model_source, x), atol=1e-5, rtol=1e-4)
        local += answer.headers["x-edgepart-local"] == "1"
    if scheduler == "local":
        assert local == len(images)
    if scheduler == "ar-mdi":
        assert local == 0
    for name, service in ring.services.items():
        info = service.info()
        assert sum(info["held"].values()) == 0, info
        for counts in info["sources"].values():  # conservation: arrived = done + queued + rejected
            assert counts["arrived"] == counts["done"] + counts["in_flight"] + counts["rejected"]
            assert counts == {**counts, "arrived": 8, "done": 8, "rejected": 0, "in_flight": 0}
        if scheduler == "local" and name == "w2":
            assert sum(info["tasks"].values()) == 0  # not a source: idle under Local


async def test_ms_mdi_decisions_read_reported_queues_and_measure_their_age(ring_factory) -> None:
    ring = await ring_factory(scheduler="ms-mdi")
    await asyncio.sleep(0.2)  # a few heartbeats
    w0 = ring.services["w0"]
    assert set(w0.known) == {"w1", "w2"}
    answers = await asyncio.gather(*(ring.image("w0", torch.randn(SHAPE), f"a{i}") for i in range(12)))
    assert all(a.status_code == 200 for a in answers)
    reports = sum(s.info()["staleness"]["reports"] for s in ring.services.values())
    done_elsewhere = sum(ring.services[w].tasks_done["w0"] for w in ("w1", "w2"))
    assert done_elsewhere == 0 or reports > 0
    metrics = w0.metrics.render().decode()
    assert 'edgepart_ring_queue_length{deployment="ring-test",source="local",worker="w0"}' in metrics


async def test_a_worker_decides_with_the_policy_function(ring_factory) -> None:
    ring = await ring_factory(scheduler="ms-mdi")
    w1 = ring.services["w1"]
    # w1 holds layers of w0's images; the next holder w2 reported a long queue for w0: local work wins
    from edgepart.partition_service.ring import QueueReport

    w1.take_report(QueueReport(worker="w2", queues={"w0": 9, "w1": 0}))
    view = w1.view()
    assert view.local == 0 and [q.source for q in view.queues] == ["w0", "w1"]
    assert w1.policy.pick(view) is None  # nothing queued


async def test_overload_gives_503_and_loses_nothing(ring_factory) -> None:
    ring = await ring_factory(scheduler="local", queue_bound=2)
    answers = await asyncio.gather(*(ring.image("w0", torch.randn(SHAPE), f"o{i}") for i in range(20)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 2
    info = ring.services["w0"].info()["sources"]["w0"]
    assert info["arrived"] == 20 and info["rejected"] == codes.count(503) and info["done"] == codes.count(200)
    assert info["in_flight"] == 0


async def test_every_path_but_probes_needs_the_secret(ring_factory) -> None:
    ring = await ring_factory()
    x = torch.randn(SHAPE)
    body = frame_bytes(make_header("w0:1", x, Region.full(x.shape[1:]), 0, "w0"), x)
    for path in (IMAGES_PATH, "/v1/ring/activations", "/v1/ring/results", "/v1/ring/heartbeat"):
        answer = await ring.client.post(f"http://w1{path}", content=body, headers={"content-type": CONTENT_TYPE})
        assert answer.status_code == 401, path
    assert (await ring.client.get("http://w1/v1/ring/state")).status_code == 401
    assert (await ring.client.get("http://w1/readyz")).status_code == 200
    assert ring.services["w1"].info()["queues"] == {"local": 0, "w0": 0, "w1": 0}


async def test_frames_are_checked_from_their_header(ring_factory) -> None:
    ring = await ring_factory()
    wrong = torch.randn(1, 3, 8, 8)
    answer = await ring.image("w0", wrong, "bad")
    assert answer.status_code == 422 and "expected float32 of shape [1, 3, 16, 16]" in answer.json()["detail"]
    assert (await ring.image("w2", torch.randn(SHAPE), "x")).status_code == 422  # not a source
    x = torch.randn(SHAPE)
    body = frame_bytes(make_header("nobody:1", x, Region.full(x.shape[1:]), 0, "w0"), x)
    answer = await ring.client.post("http://w1/v1/ring/activations", content=body,
                                    headers={"content-type": CONTENT_TYPE, **auth()})
    assert answer.status_code == 422 and "request_id" in answer.json()["detail"]
    assert ring.services["w0"].info()["sources"]["w0"]["arrived"] == 0


def test_configs_name_the_bad_field(model_source: ModelSource) -> None:
    good = config(model_source, "w0")
    data = good.model_dump()
    data["sources"] = ["w9"]
    import json

    with pytest.raises(ConfigError, match="sources"):
        load_ring_config(json.dumps(data))
    with pytest.raises(ConfigError, match="kind"):
        load_ring_config(json.dumps({**data, "kind": "partition"}))
    assert load_ring_config(good.model_dump_json()) == good


async def test_a_source_with_an_empty_share_of_its_own_images_passes_them_on(ring_factory,
                                                                            model_source: ModelSource) -> None:
    ring = await ring_factory(scheduler="ar-mdi", gamma={"w0": 1.0, "w1": 1e-9, "w2": 1e-9})
    assert ring.services["w0"].describe()["w0"] == [0, 0]  # w0 is far slower: it runs none of its layers
    x = torch.randn(SHAPE)
    answer = await ring.image("w0", x, "slow-source")
    assert answer.status_code == 200, answer.text
    assert torch.allclose(decode_frame(answer.content).tensor, whole(model_source, x), atol=1e-5, rtol=1e-4)
