"""The only module that talks to the Kubernetes API server.

Synchronous on purpose (the official client is synchronous); the kopf handlers
call it through `asyncio.to_thread`. Responses are read as plain JSON dicts
(`_preload_content=False`), the same shape `reconcile` and the templates use.

Writes are server-side apply (`application/apply-patch+yaml`, field manager
`edgepart-operator`, forced), and only for objects that are missing or whose
`edgepart.io/spec-hash` annotation differs from the desired one, so a steady
state costs no writes. Label selectors are sent to the server and applied
again here, with an owner-reference check, so nothing the operator does not
own is ever deleted.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, ApiException

from edgepart.operator import names
from edgepart.operator.render import SECRET_KEY, Owner
from edgepart.spec import API_GROUP, API_VERSION, PLURAL

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"

# kind -> (API class, snake_case name used in the client's method names)
_KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Service": ("CoreV1Api", "service"),
    "Pod": ("CoreV1Api", "pod"),
    "Deployment": ("AppsV1Api", "deployment"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    "Job": ("BatchV1Api", "job"),
    "Secret": ("CoreV1Api", "secret"),  # created, never read: RBAC grants `create` only
}
# Kinds the operator creates for a DNNDeployment (owned; pruned when no longer desired).
OWNED_KINDS = ("Pod", "Service", "Deployment", "ConfigMap", "NetworkPolicy", "ServiceAccount")


def connect(kubeconfig: str | None = None) -> ApiClient:
    """In a pod: the service account. Elsewhere: `kubeconfig`, $KUBECONFIG, or ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path.split(os.pathsep)[0], client_configuration=configuration)
    return ApiClient(configuration)


def _json(response: Any) -> Any:
    return json.loads(response.data or b"null")


@dataclass
class Api:
    """Typed access to the handful of endpoints the operator uses."""

    client: ApiClient
    _apis: dict[str, Any] = field(default_factory=dict, repr=False)

    def _api(self, name: str) -> Any:
        if name not in self._apis:
            self._apis[name] = getattr(kubernetes.client, name)(self.client)
        return self._apis[name]

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        try:
            api, snake = _KINDS[kind]
        except KeyError:
            raise ValueError(f"the operator does not manage {kind} objects") from None
        method: Callable[..., Any] = getattr(self._api(api), f"{verb}_namespaced_{snake}")
        return method

    # ------------------------------------------------------------ reads

    def list_objects(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        data = _json(self._method("list", kind)(namespace, label_selector=selector or None,
                                                _preload_content=False))
        items = data.get("items") or []
        return [dict(item, kind=kind) for item in items
                if names.matches((item.get("metadata") or {}).get("labels") or {}, labels)]

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = _json(self._method("read", kind)(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return result

    def list_nodes(self) -> list[dict[str, Any]]:
        data = _json(self._api("CoreV1Api").list_node(_preload_content=False))
        return list(data.get("items") or [])

    def pod_log(self, namespace: str, name: str) -> str:
        response = self._api("CoreV1Api").read_namespaced_pod_log(name, namespace, _preload_content=False)
        return bytes(response.data or b"").decode("utf-8", errors="replace")

    # ------------------------------------------------------------ writes

    def apply(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self._method("patch", obj["kind"])(meta["name"], meta["namespace"], dict(obj),
                                           field_manager=names.FIELD_MANAGER, force=True,
                                           _content_type=APPLY_CONTENT_TYPE, _preload_content=False)

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create `obj`; False if it exists already."""
        meta = obj["metadata"]
        try:
            self._method("create", obj["kind"])(meta["namespace"], dict(obj), _preload_content=False)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._method("delete", kind)(name, namespace, propagation_policy="Background",
                                         _preload_content=False)
        except ApiException as err:
            if err.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._api("CustomObjectsApi").patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": dict(status)},
            _content_type=MERGE_CONTENT_TYPE, _preload_content=False)


def create_secret(api: Api, obj: Mapping[str, Any]) -> bool:
    """Create the deployment's Secret with a fresh random value; False when it exists (it keeps its value)."""
    return api.create({**obj, "stringData": {SECRET_KEY: secrets.token_urlsafe(32)}})


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in refs)


def spec_hash(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_HASH, ""))


def owned_objects(api: Api, owner: Owner, kinds: Iterable[str] = OWNED_KINDS) -> list[dict[str, Any]]:
    labels = names.selector_labels(owner.name)
    return [obj for kind in kinds for obj in api.list_objects(kind, owner.namespace, labels) if owned_by(obj, owner.uid)]


@dataclass(frozen=True)
class SyncResult:
    applied: tuple[str, ...]  # kind/name
    deleted: tuple[str, ...]


def sync(api: Api, owner: Owner, desired: Iterable[Mapping[str, Any]], prune: bool,
         keep: Collection[str] = ()) -> SyncResult:
    """Apply what is missing or changed; with `prune`, delete owned objects that are not desired, except
    those of the plans in `keep` (by their edgepart.io/plan label: the plan that serves during a rollout)."""
    existing = {(o["kind"], o["metadata"]["name"]): o for o in owned_objects(api, owner)}
    applied, deleted = [], []
    wanted = set()
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        wanted.add(key)
        current = existing.get(key)
        if current is not None and spec_hash(current) == spec_hash(obj):
            continue
        api.apply(obj)
        applied.append(f"{key[0]}/{key[1]}")
    if prune:
        for (kind, name), obj in sorted(existing.items()):
            meta = obj.get("metadata") or {}
            kept = (meta.get("labels") or {}).get(names.LABEL_PLAN) in keep
            if (kind, name) not in wanted and not kept and not meta.get("deletionTimestamp"):
                api.delete(kind, owner.namespace, name)
                deleted.append(f"{kind}/{name}")
    return SyncResult(tuple(applied), tuple(deleted))
