"""Render Kubernetes objects from the jinja2 templates in `edgepart/templates/`.

Templates hold the structure; every value goes in through `tojson`, so no
value can break the YAML. `StrictUndefined` turns a missing value into an
error instead of an empty string. Each function here returns one object as a
plain dict, with the `edgepart.io/spec-hash` annotation that `apply` compares
to skip writes that would change nothing.
"""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml

from edgepart.operator import names
from edgepart.operator.settings import OperatorSettings
from edgepart.spec import WEIGHTS_DIR

CONFIG_DIR = "/etc/edgepart"
SECRET_DIR = "/var/run/secrets/edgepart"  # the deployment's Secret, mounted read-only into its pods
SECRET_KEY = "token"
SECRET_FILE = f"{SECRET_DIR}/{SECRET_KEY}"
PLAN_KEY = "plan.json"
GATEWAY_KEY = "gateway.json"
PROFILE_KEY = "profile.json"
PROFILE_BEGIN = "----- BEGIN EDGEPART PROFILE -----"
PROFILE_END = "----- END EDGEPART PROFILE -----"
GRAPH_KEY = "graph.json"


def partition_key(partition_id: str) -> str:
    return f"partition-{partition_id}.json"


@dataclass(frozen=True)
class Owner:
    """The DNNDeployment that owns what is rendered for it."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    api_version: str = "edgepart.io/v1alpha1"
    kind: str = "DNNDeployment"

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def _tojson(value: Any) -> str:
    """JSON (valid YAML flow style) of a value; a missing value is an error, as everywhere else."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return json.dumps(value, ensure_ascii=False)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgepart", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["tojson"] = _tojson
    return env


def render_template(template: str, **context: Any) -> dict[str, Any]:
    text = environment().get_template(template).render(**context)
    obj = yaml.safe_load(text)
    if not isinstance(obj, dict):
        raise ValueError(f"template {template} did not render one object")
    return obj


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object with a digest of its own content (before the stamp)."""
    annotations = obj.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(names.ANNOTATION_HASH, None)
    annotations[names.ANNOTATION_HASH] = names.digest(obj, 16)
    return obj


def metadata(name: str, owner: Owner | None, namespace: str, labels: Mapping[str, str],
             annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None and owner.uid:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def scrape_annotations(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def deployment_secret(owner: Owner) -> dict[str, Any]:
    """The deployment's Secret, without its value: the operator fills it in once, when it creates the Secret,
    and never reads it back (its RBAC allows `create` on Secrets, nothing else)."""
    return with_hash(render_template(
        "secret.yaml.j2",
        metadata=metadata(names.secret_name(owner.name), owner, owner.namespace,
                          names.base_labels(owner.name, "secret")),
    ))


def plan_config_map(owner: Owner, data: Mapping[str, str], plan_hash: str, name: str | None = None) -> dict[str, Any]:
    """`name`: a plan-scoped name (`names.plan_config_map_name`); default the deployment's one ConfigMap."""
    labels = names.base_labels(owner.name, "config") | {names.LABEL_PLAN: plan_hash}
    return with_hash(render_template(
        "plan-configmap.yaml.j2",
        metadata=metadata(name or names.config_map_name(owner.name), owner, owner.namespace, labels),
        data=dict(sorted(data.items())),
    ))


def service_account(owner: Owner) -> dict[str, Any]:
    return with_hash(render_template(
        "serviceaccount.yaml.j2",
        metadata=metadata(names.service_account_name(owner.name), owner, owner.namespace,
                          names.base_labels(owner.name, "partition")),
    ))


@dataclass(frozen=True)
class PartitionPod:
    partition_id: str
    node: str
    cpu: str
    memory_request: str
    memory_limit: str
    weights_volume: Mapping[str, Any] | None = None  # the model's volume source, mounted read-only at WEIGHTS_DIR


def partition_labels(owner: Owner, partition_id: str, plan_hash: str) -> dict[str, str]:
    return names.base_labels(owner.name, "partition") | {
        names.LABEL_PARTITION: partition_id, names.LABEL_PLAN: plan_hash}


def partition_pod(owner: Owner, pod: PartitionPod, plan_hash: str, settings: OperatorSettings,
                  args: tuple[str, ...] = ("serve-partition",), config_map: str | None = None) -> dict[str, Any]:
    """A partition pod (`args`: a variant worker's are serve-worker). Pods are immutable, so the name carries a
    digest of the content: a change (new plan, new image) is a new pod, and the old one is pruned."""
    annotations = scrape_annotations(settings.internal_port) | {names.ANNOTATION_PLAN_HASH: plan_hash}
    obj = render_template(
        "partition-pod.yaml.j2",
        metadata=metadata("", owner, owner.namespace, partition_labels(owner, pod.partition_id, plan_hash),
                          annotations),
        service_account=names.service_account_name(owner.name),
        node=pod.node,
        partition_id=pod.partition_id,
        config_path=f"{CONFIG_DIR}/{partition_key(pod.partition_id)}",
        config_map=config_map or names.config_map_name(owner.name),
        secret=names.secret_name(owner.name),
        secret_dir=SECRET_DIR,
        cpu=pod.cpu,
        memory_request=pod.memory_request,
        memory_limit=pod.memory_limit,
        weights_volume=pod.weights_volume,
        weights_dir=WEIGHTS_DIR,
        settings=settings,
        args=list(args),
    )
    obj["metadata"]["name"] = names.partition_pod_name(owner.name, pod.partition_id, names.digest(obj, 10))
    return with_hash(obj)


def partition_service(owner: Owner, partition_id: str, plan_hash: str,
                      settings: OperatorSettings, name: str | None = None) -> dict[str, Any]:
    """`name`: a plan-scoped name (`names.plan_service_name`), labelled with its plan so that a rollout
    keeps it until the next plan serves."""
    selector = {names.LABEL_DEPLOYMENT: names.sanitize_label_value(owner.name),
                names.LABEL_PARTITION: partition_id, names.LABEL_PLAN: plan_hash}
    labels = names.base_labels(owner.name, "partition") | {names.LABEL_PARTITION: partition_id}
    if name is not None:
        labels[names.LABEL_PLAN] = plan_hash
    return with_hash(render_template(
        "partition-service.yaml.j2",
        metadata=metadata(name or names.partition_service_name(owner.name, partition_id), owner, owner.namespace,
                          labels),
        selector=selector,
        settings=settings,
    ))


def gateway_selector(owner: Owner) -> dict[str, str]:
    return {names.LABEL_DEPLOYMENT: names.sanitize_label_value(owner.name),
            names.LABEL_COMPONENT: "gateway"}


def gateway_deployment(owner: Owner, node: str, plan_hash: str, settings: OperatorSettings,
                       args: tuple[str, ...] = ("serve-gateway",), config_map: str | None = None) -> dict[str, Any]:
    """The gateway (`args`: a variants deployment's dispatcher is serve-dispatcher)."""
    labels = names.base_labels(owner.name, "gateway")
    return with_hash(render_template(
        "gateway-deployment.yaml.j2",
        metadata=metadata(names.gateway_name(owner.name), owner, owner.namespace, labels),
        selector=gateway_selector(owner),
        pod_labels=labels | {names.LABEL_PLAN: plan_hash},
        pod_annotations=scrape_annotations(settings.port) | {names.ANNOTATION_PLAN_HASH: plan_hash},
        service_account=names.service_account_name(owner.name),
        node=node,
        config_path=f"{CONFIG_DIR}/{GATEWAY_KEY}",
        config_map=config_map or names.config_map_name(owner.name),
        secret=names.secret_name(owner.name),
        secret_dir=SECRET_DIR,
        settings=settings,
        args=list(args),
    ))


def gateway_service(owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    return with_hash(render_template(
        "gateway-service.yaml.j2",
        metadata=metadata(names.gateway_name(owner.name), owner, owner.namespace,
                          names.base_labels(owner.name, "gateway")),
        selector=gateway_selector(owner),
        settings=settings,
    ))


def gateway_plan_service(owner: Owner, plan_hash: str, settings: OperatorSettings) -> dict[str, Any]:
    """The internal address one plan's partitions answer to: while the gateway rolls over to a new plan,
    each plan's outputs reach only the gateway pod that routes to it."""
    selector = gateway_selector(owner) | {names.LABEL_PLAN: plan_hash}
    return with_hash(render_template(
        "partition-service.yaml.j2",
        metadata=metadata(names.gateway_plan_service_name(owner.name, plan_hash), owner, owner.namespace,
                          names.base_labels(owner.name, "gateway") | {names.LABEL_PLAN: plan_hash}),
        selector=selector,
        settings=settings,
    ))


def network_policies(owner: Owner, settings: OperatorSettings) -> list[dict[str, Any]]:
    deployment = names.sanitize_label_value(owner.name)
    partitions = with_hash(render_template(
        "networkpolicy-partitions.yaml.j2",
        metadata=metadata(names.network_policy_name(owner.name, "partitions"), owner, owner.namespace,
                          names.base_labels(owner.name, "partition")),
        partition_selector={names.LABEL_DEPLOYMENT: deployment, names.LABEL_COMPONENT: "partition"},
        deployment_selector=names.selector_labels(owner.name),
        settings=settings,
    ))
    gateway = with_hash(render_template(
        "networkpolicy-gateway.yaml.j2",
        metadata=metadata(names.network_policy_name(owner.name, "gateway"), owner, owner.namespace,
                          names.base_labels(owner.name, "gateway")),
        gateway_selector=gateway_selector(owner),
        deployment_selector=names.selector_labels(owner.name),
        settings=settings,
    ))
    return [partitions, gateway]


def profile_labels(device_class: str) -> dict[str, str]:
    return {names.LABEL_NAME: "edgepart", names.LABEL_COMPONENT: "profiler",
            names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_PROFILE: "true",
            names.LABEL_DEVICE_CLASS: names.sanitize_label_value(device_class)}


def profile_script(device_class: str, quick: bool) -> str:
    """Profile, then print the profile between markers (stderr noise stays outside them)."""
    options = f"--name {shlex.quote(device_class)}" + (" --quick" if quick else "")
    return (f'set -e; edgepart profile {options} -o "$TMPDIR/profile.json"; '
            f'echo "{PROFILE_BEGIN}"; cat "$TMPDIR/profile.json"; echo; echo "{PROFILE_END}"')


def profile_job(device_class: str, node: str, cpu: str, namespace: str,
                settings: OperatorSettings) -> dict[str, Any]:
    labels = profile_labels(device_class)
    return with_hash(render_template(
        "profile-job.yaml.j2",
        metadata=metadata(names.profile_job_name(device_class), None, namespace, labels),
        pod_labels=labels,
        node=node,
        cpu=cpu,
        script=profile_script(device_class, settings.profile_quick),
        settings=settings,
    ))


def profile_config_map(device_class: str, profile_json: str, namespace: str,
                       source: Mapping[str, str] | None = None) -> dict[str, Any]:
    return with_hash(render_template(
        "profile-configmap.yaml.j2",
        metadata=metadata(names.profile_config_map_name(device_class), None, namespace,
                          profile_labels(device_class), source),
        data={PROFILE_KEY: profile_json},
    ))


def graph_labels(key: str) -> dict[str, str]:
    return {names.LABEL_NAME: "edgepart", names.LABEL_COMPONENT: "tracer",
            names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_GRAPH: "true", names.LABEL_GRAPH_KEY: key}


def trace_job(key: str, model: str, input_shape: Sequence[int], namespace: str,
              settings: OperatorSettings, weights_volume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Job that traces a model outside the zoo in the image (the user's code runs there, not in the
    operator) and prints its layer graph between marker lines; the operator copies it into a ConfigMap.

    No shell: the model reference is an argument after `--`, so no name can become a command or an option.
    """
    labels = graph_labels(key)
    shape = ",".join(str(int(d)) for d in input_shape)
    return with_hash(render_template(
        "trace-job.yaml.j2",
        metadata=metadata(names.trace_job_name(key), None, namespace, labels, {names.ANNOTATION_MODEL: model}),
        pod_labels=labels,
        args=["trace", "--input-shape", shape, "--markers", "--", model],
        weights_volume=weights_volume,
        weights_dir=WEIGHTS_DIR,
        settings=settings,
    ))


def graph_config_map(key: str, model: str, graph_json: str, namespace: str,
                     source: Mapping[str, str] | None = None) -> dict[str, Any]:
    return with_hash(render_template(
        "graph-configmap.yaml.j2",
        metadata=metadata(names.graph_config_map_name(key), None, namespace, graph_labels(key),
                          {names.ANNOTATION_MODEL: model, **(source or {})}),
        data={GRAPH_KEY: graph_json},
    ))


def sorted_objects(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply order: what others refer to first (account, config, services), then workloads."""
    order = {"ServiceAccount": 0, "Secret": 1, "ConfigMap": 1, "NetworkPolicy": 2, "Service": 3, "Pod": 4,
             "Deployment": 5, "Job": 6}
    return sorted(objects, key=lambda o: (order.get(o["kind"], 9), o["metadata"]["name"]))
