"""Fixtures for running the real kopf operator against kmock's Kubernetes emulator.

The emulator serves from the test's event loop; the operator runs in its own
thread with its own loop (so stopping it cancels only its own tasks). Tests
never block their loop: they poll `kmock.objects` with `eventually`, and talk
to the API through kmock's own aiohttp client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock_emulator import CR_PATH, NAMESPACE, EdgepartEmulator, node_object

from edgepart.cli import data_plane_configs
from edgepart.operator.settings import OperatorSettings


class OperatorThread:
    """The real operator (kopf + edgepart.operator.handlers) in its own thread and event loop."""

    def __init__(self, settings: OperatorSettings) -> None:
        import kopf

        import edgepart.operator.handlers  # noqa: F401 - registers the handlers

        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._memo = kopf.Memo(config_renderer=data_plane_configs, operator_settings=settings)
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)

    def _run(self) -> None:
        import kopf

        try:
            asyncio.run(kopf.operator(standalone=True, namespaces=[NAMESPACE], ready_flag=self.ready,
                                      stop_flag=self.stop, memo=self._memo))
        except BaseException as err:  # reported by the fixture
            self.error = err

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(timeout=60):
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the operator did not stop"


@pytest.fixture()
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """Every test here gets the emulator with kmock's gaps filled."""
    return {**kmock_options, "cls": EdgepartEmulator}


@pytest.fixture()
def kubeconfig(tmp_path: Path, kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NAMESPACE}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture()
def k8s(kmock: EdgepartEmulator, kubeconfig: Path) -> EdgepartEmulator:
    """The emulator with the built-in resources, the CRD's resource, and four ready nodes."""
    kmock.resources.load_bundled()
    kmock.resources["edgepart.io/v1alpha1/dnndeployments"] = kmock.ResourceInfo(
        kind="DNNDeployment", singular="dnndeployment", namespaced=True, shortnames={"dnn"},
        verbs={"list", "watch", "get", "create", "patch", "update", "delete"}, subresources={"status"})
    for i in range(4):
        kmock.objects["v1/nodes", None, f"edge-{i}"] = node_object(f"edge-{i}", labels={"pool": "edge"},
                                                                 version=i + 1)
    kmock.objects["v1/nodes", None, "control"] = node_object("control", device_class="server")
    return kmock


@pytest.fixture()
def operator_settings() -> OperatorSettings:
    return OperatorSettings(image="registry.example/edgepart:test", resync_seconds=2.0)


@pytest.fixture()
async def kopf_operator(k8s: EdgepartEmulator, operator_settings: OperatorSettings) -> AsyncIterator[OperatorThread]:
    thread = OperatorThread(operator_settings)
    await asyncio.to_thread(thread.start)
    try:
        yield thread
    finally:
        await asyncio.to_thread(thread.close)


@pytest.fixture()
def create_object(k8s: EdgepartEmulator) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def post(body: dict[str, Any]) -> dict[str, Any]:
        kind = body["kind"]
        path = CR_PATH if kind == "DNNDeployment" else {
            "ConfigMap": f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        }[kind]
        async with k8s.post(path, json=body) as response:
            assert response.status == 201, await response.text()
            result: dict[str, Any] = await response.json()
            return result
    return post


@pytest.fixture()
def merge_patch(k8s: EdgepartEmulator) -> Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def merge(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with k8s.patch(path, json=body,
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result
    return merge
