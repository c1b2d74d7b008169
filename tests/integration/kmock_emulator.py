"""kmock's Kubernetes emulator with the gaps of kmock 0.8 filled (see shared/KMOCK.md).

- Create fills server-side metadata (uid, resourceVersion, creationTimestamp,
  generation, namespace) and answers 201.
- Every write bumps resourceVersion; a spec change bumps generation (but not
  for pods, whose spec is immutable: changing it is a 422, as on a real server).
- Patches are applied here, then handed to kmock as a JSON merge patch from
  the old object to the new one: JSON-patch `test` failures answer 422;
  server-side apply (`application/apply-patch+yaml`) creates a missing object
  and replaces the fields of an existing one (one field manager: the operator);
  the status subresource is isolated (a write to /status changes only status,
  a write to the object never changes status).
- Watches subscribe before they snapshot, skip objects at or below the
  requested resourceVersion, and lists report the real current version.

Still not emulated (tests assert around them): label and field selectors,
garbage collection, schema validation, controllers (no pod ever runs: tests
set pod and deployment status themselves).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, rendering

from edgepart.operator.names import LABEL_DEVICE_CLASS, LABEL_PROFILE
from edgepart.operator.render import PROFILE_KEY
from edgepart.planner.cluster import reference_profile

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, Mapping) and isinstance(old[key], Mapping):
            sub = merge_diff(old[key], value)
            if sub:
                patch[key] = sub
        elif value != old[key]:
            patch[key] = value
    return patch


def _rewritten(request: rendering.Request, **changes: Any) -> rendering.Request:
    """The same request object with some fields changed (kmock matches requests by identity)."""
    for key, value in changes.items():
        object.__setattr__(request, key, value)
    return request


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define(kw_only=True)
class EdgepartEmulator(kmock.KubernetesEmulator):
    _counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _version: int = attrs.field(default=0, init=False)

    def next_version(self) -> str:
        self._version = next(self._counter)
        return str(self._version)

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        try:
            return "status" in self.resources[resource].subresources
        except KeyError:
            return False

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    # ------------------------------------------------------------ writes

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                self._fill_create(request, request.data)
            elif request.action == enums.action.UPDATE and request.name is not None:
                request = self._rewrite_update(request)
            elif request.action == enums.action.DELETE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    self.objects[key].patch({"metadata": {"resourceVersion": self.next_version()}})
        return await super()._handle(request)

    def _fill_create(self, request: rendering.Request, obj: dict[str, Any]) -> None:
        meta = obj.setdefault("metadata", {})
        if request.namespace is not None:
            meta.setdefault("namespace", request.namespace)
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self.next_version()
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if request.resource is not None and request.resource.plural == "pods":
            obj.setdefault("status", {"phase": "Pending"})

    def _rewrite_update(self, request: rendering.Request) -> rendering.Request:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        old = self._current(request)
        if old is None:
            if content_type == APPLY and isinstance(request.data, dict):
                obj = copy.deepcopy(request.data)
                self._fill_create(request, obj)
                return _rewritten(request, action=enums.action.CREATE, method=enums.method.POST, data=obj)
            return request  # kmock answers 404
        if isinstance(request.data, list):
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"json patch: {err}") from None
        elif isinstance(request.data, dict) and content_type == APPLY:
            applied = copy.deepcopy(request.data)
            meta = dicts.merge_patch_dict(old.get("metadata", {}), applied.pop("metadata", {}))
            new = {**applied, "metadata": dict(meta)}
            if "status" in old:
                new["status"] = old["status"]
        elif isinstance(request.data, dict):
            new = dict(dicts.merge_patch_dict(old, request.data))
        else:
            return request
        new = copy.deepcopy(new)  # merge_patch_dict shares unchanged sub-dicts with `old`
        # the status subresource: /status writes only status, the object never does
        if request.resource is not None and self._has_status_subresource(request.resource):
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
            elif "status" in old or "status" in new:
                new["status"] = old.get("status")
                if new["status"] is None:
                    del new["status"]
        if request.subresource != "status" and new.get("spec") != old.get("spec"):
            if request.resource is not None and request.resource.plural == "pods":
                raise kmock.KubernetesError(status=422, reason="Invalid",
                                            message="Pod updates may not change fields other than image")
            new.setdefault("metadata", {})["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new.setdefault("metadata", {})["resourceVersion"] = self.next_version()
        for key in ("uid", "creationTimestamp", "namespace", "name"):
            if key in old["metadata"]:
                new["metadata"][key] = old["metadata"][key]
        return _rewritten(request, data=merge_diff(old, new))

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_create(request)
        return rendering.Response(status=201, payload=payload)

    # ------------------------------------------------------------ reads

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result = await super()._serve_list(request)
        assert isinstance(result, dict)
        result["metadata"] = {"resourceVersion": str(self._version)}
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        since_text = request.params.get("resourceVersion") or "0"
        since = int(since_text) if since_text.isdigit() else 0
        async with self._lock:  # no write can slip between the subscription and the snapshot
            marker = await bus.mark()
            snapshot = [copy.deepcopy(obj.raw) for (resource, namespace, _), obj in self.objects.items()
                        if resource == request.resource and not obj.deleted
                        and (request.namespace is None or namespace == request.namespace)]
        try:
            for raw in snapshot:
                version = str(raw.get("metadata", {}).get("resourceVersion", "0"))
                if not version.isdigit() or int(version) > since:
                    yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if request.namespace is None or meta.get("namespace") == request.namespace:
                    yield event
        finally:
            await bus.unmark(marker)


# ---------------------------------------------------------------- objects and polling for the tests

NAMESPACE = "default"
CR_PATH = f"/apis/edgepart.io/v1alpha1/namespaces/{NAMESPACE}/dnndeployments"


def node_object(name: str, *, device_class: str = "edge-small", cpu: str = "4", memory: str = "8Gi",
                labels: dict[str, str] | None = None, ready: bool = True, version: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-node-{name}", "resourceVersion": str(version),
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "arm64",
                                LABEL_DEVICE_CLASS: device_class, **(labels or {})}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "nodeInfo": {"architecture": "arm64"}},
    }


def profile_json(name: str = "edge-small") -> str:
    """What `edgepart profile` would print on a node of class `name`: the reference profile, renamed."""
    return reference_profile().scaled(1.0, name).to_json()


def profile_config_map(device_class: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"edgepart-profile-{device_class}", "namespace": NAMESPACE,
                         "labels": {LABEL_PROFILE: "true", LABEL_DEVICE_CLASS: device_class}},
            "data": {PROFILE_KEY: profile_json(device_class)}}


def objects(server: kmock.KubernetesEmulator, plural: str) -> list[dict[str, Any]]:
    """Live objects of one resource, as the emulator holds them."""
    return [obj.raw for (resource, _, _), obj in list(server.objects.items())
            if resource.plural == plural and not obj.deleted]


def get(server: kmock.KubernetesEmulator, plural: str, name: str) -> dict[str, Any] | None:
    return next((o for o in objects(server, plural) if o["metadata"]["name"] == name), None)


async def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (without blocking the emulator's loop)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, IndexError, TypeError, AssertionError) as err:
            last = err
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
