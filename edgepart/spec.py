"""The user-facing documents: a cluster description and the DNNDeployment resource.

One pydantic model serves the CLI (`--cluster cluster.yaml`, `edgepart up
deployment.yaml`), the operator (the custom resource's spec) and the CRD's
OpenAPI schema, which is generated from it. Field descriptions are the user
documentation. YAML keys are camelCase, as in Kubernetes; Python attributes
are snake_case.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from edgepart.errors import EdgepartError, explain_validation
from edgepart.naming import default_model_id

API_GROUP = "edgepart.io"
API_VERSION = "v1alpha1"
KIND = "DNNDeployment"
PLURAL = "dnndeployments"


class SpecError(EdgepartError, ValueError):
    """A cluster or deployment document that is malformed; the message names the field."""


# ---------------------------------------------------------------- quantities

# Bandwidth units are case-sensitive: `b` is a bit and `B` a byte (100Mbps = 100Mb/s = 100Mbit/s = 12.5MB/s).
# Prefixes: k or K (10^3), M, G, T; bytes also take the binary Ki, Mi, Gi, Ti. Anything else, in particular
# a lower-case m or g (`100mbps`: milli-bits? megabytes?), is refused rather than guessed.
_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
BANDWIDTH_UNITS: dict[str, float] = {  # unit -> bytes per second of one unit
    **{f"{p}{bits}": scale / 8 for p, scale in _SI.items() for bits in ("bps", "b/s", "bit/s")},
    **{f"{p}{by}": scale for p, scale in (_SI | _BINARY).items() for by in ("B/s", "Bps")},
}
TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
# Memory is a Kubernetes quantity (parsed by the Kubernetes client's own parser); suffixes below a byte
# (n, u, m: `512m` is 0.512 bytes in Kubernetes) are refused, so only these can name a size.
MEMORY_SUFFIXES = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E")
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def parse_bandwidth(value: str | float | int) -> float:
    """'100Mbps', '100Mb/s', '1Gbit/s' (bits), '12.5MB/s', '50MiB/s' (bytes) -> bytes per second (> 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"bandwidth {value!r} needs a unit, e.g. '100Mbps' or '12.5MB/s'")
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z/]+)", str(value).strip())
    unit = match.group(2) if match else ""
    if not match or unit not in BANDWIDTH_UNITS:
        near = sorted(u for u in BANDWIDTH_UNITS if u.lower() == unit.lower())
        if match and near:
            number = match.group(1)
            raise ValueError(f"bandwidth {value!r} is ambiguous: units are case-sensitive (b: bits, B: bytes; "
                             f"k, M, G, T prefixes); write e.g. {number}Mbps for megabits or {number}MB/s for "
                             "megabytes per second")
        raise ValueError(f"bandwidth {value!r}: expected a number and a unit: bits as bps, Kbps, Mbps, Gbps "
                         "(or Mb/s, Mbit/s), bytes as B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s")
    result = float(match.group(1)) * BANDWIDTH_UNITS[unit]
    if result <= 0:
        raise ValueError(f"bandwidth {value!r} must be greater than zero")
    return result


def _quantity(value: str | int | float, what: str) -> Decimal:
    """A Kubernetes quantity, read by the Kubernetes client's parser (the API server's grammar)."""
    # lazy: the pure core must not import the Kubernetes client at start-up (import-linter allows this one)
    from kubernetes.utils.quantity import parse_quantity

    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} {value!r}: expected a number or a Kubernetes quantity")
    text = value.strip() if isinstance(value, str) else value
    try:
        if isinstance(text, str) and any(c.isspace() for c in text):
            raise ValueError("spaces inside")  # the API server refuses them; the client's parser does not
        return Decimal(parse_quantity(text))  # type: ignore[no-untyped-call]
    except (ValueError, ArithmeticError):
        raise ValueError(f"{what} {value!r}: expected a Kubernetes quantity like "
                         + ("512Mi, 2Gi or 1G" if what == "memory" else "500m, 2 or 1.5")) from None


def parse_memory(value: str | int) -> int:
    """Kubernetes quantities: '512Mi', '2Gi', '1G', 1048576 -> bytes (> 0, whole bytes)."""
    amount = _quantity(value, "memory")
    if amount != amount.to_integral_value():
        hint = (" (m is milli in a Kubernetes quantity: write Mi for mebibytes or M for megabytes)"
                if isinstance(value, str) and value.strip().endswith("m") else "")
        raise ValueError(f"memory {value!r} is {amount.normalize():f} bytes, not a whole number of bytes{hint}")
    if amount <= 0:
        raise ValueError(f"memory {value!r} must be greater than zero")
    return int(amount)


def parse_cpu(value: str | int | float) -> float:
    """Kubernetes CPU quantities: '500m', '2', 1.5 -> cores (> 0)."""
    amount = _quantity(value, "cpu")
    if amount <= 0:
        raise ValueError(f"cpu {value!r} must be greater than zero")
    return float(amount)


def parse_duration(value: str | float | int) -> float:
    """'2ms', '500us', '0.1s' -> seconds (>= 0). A bare number is seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(_NUMBER + r"\s*([a-zµ]+)", str(value).strip())
        if not match or match.group(2) not in TIME_UNITS:
            raise ValueError(f"duration {value!r}: expected a number and a unit (ns, us, ms, s)")
        seconds = float(match.group(1)) * TIME_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return seconds


def check_bandwidth(value: str) -> str:
    parse_bandwidth(value)
    return value


def check_duration(value: str) -> str:
    parse_duration(value)
    return value


def check_memory(value: str) -> str:
    parse_memory(value)
    return value


Bandwidth = Annotated[str, AfterValidator(check_bandwidth)]
Duration = Annotated[str, AfterValidator(check_duration)]
Memory = Annotated[str, AfterValidator(check_memory)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# ---------------------------------------------------------------- cluster


class DeviceSpec(_Model):
    name: Name = Field(description="Device name (for Kubernetes, the node name).")
    profile: str | None = Field(default=None, description="Path to a device profile JSON written by `edgepart profile`.")
    speed: float | None = Field(default=None, gt=0, le=1000,
                                description="Speed relative to the built-in reference profile (1.0 = reference); "
                                            "used when no profile is given.")
    memory: Memory = Field(default="4Gi", description="Memory available to partitions, e.g. 1Gi.")
    cpus: float | None = Field(default=None, gt=0, le=256,
                               description="CPU cores for emulation (cgroup quota) and pod resources.")
    message_cost: Duration | None = Field(
        default=None,
        description="Software time one message costs this device at each end (sending or receiving), e.g. 4ms; "
                    "default: its profile's messageOverheadS divided by its speed. The demo and the testbed "
                    "benchmark measure it for emulated devices.")
    arch: str | None = Field(default=None, description="CPU architecture, e.g. arm64 or amd64 (informational).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels (device class etc.).")
    role: Literal["end", "edge-server"] | None = Field(
        default=None, description="Partial offloading (solvers mw, nfl, offload-bf): `end` is the device that "
                                  "holds the input (and so the master), `edge-server` a server it may offload to.")


class LinkSpec(_Model):
    source: Name = Field(alias="from", description="Sending device.")
    target: Name = Field(alias="to", description="Receiving device.")
    bandwidth: Bandwidth | None = Field(default=None, description="Overrides network.bandwidth for this pair.")
    latency: Duration | None = Field(default=None, description="Overrides network.latency for this pair.")


class NetworkSpec(_Model):
    bandwidth: Bandwidth = Field(default="100Mbps", description="Link bandwidth, e.g. 100Mbps or 12.5MB/s.")
    latency: Duration = Field(default="2ms", description="Per-message latency, e.g. 2ms.")
    medium: Literal["shared", "switched"] = Field(
        default="switched", description="shared: one medium for all transfers (Wi-Fi); switched: per-NIC.")
    links: list[LinkSpec] = Field(default_factory=list, description="Per-pair overrides.")


class ClusterSpec(_Model):
    devices: list[DeviceSpec] = Field(min_length=1, description="The devices, inline.")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    master: Name | None = Field(default=None, description="Device that holds the input and receives the output "
                                                          "(default: the first device).")

    @model_validator(mode="after")
    def _names_known(self) -> ClusterSpec:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"devices: duplicate device names {dupes}")
        if self.master is not None and self.master not in names:
            raise ValueError(f"master: {self.master!r} is not one of the devices {names}")
        ends = [d.name for d in self.devices if d.role == "end"]
        if len(ends) > 1:
            raise ValueError(f"devices: only one device may have role end, got {ends}")
        if ends and self.master is not None and self.master != ends[0]:
            raise ValueError(f"master: {self.master!r} differs from the device with role end ({ends[0]!r}), "
                             "which holds the input")
        for i, link in enumerate(self.network.links):
            for end in (link.source, link.target):
                if end not in names:
                    raise ValueError(f"network.links[{i}]: device {end!r} is not one of the devices {names}")
        return self

    @property
    def master_name(self) -> str:
        """The master: as given, else the device with role end, else the first device."""
        ends = [d.name for d in self.devices if d.role == "end"]
        return self.master or (ends[0] if ends else self.devices[0].name)


# ---------------------------------------------------------------- deployment


WEIGHTS_DIR = "/weights"  # where a model's volume is mounted, read-only, in its pods


class ClaimSource(_Model):
    claim_name: Name = Field(description="A PersistentVolumeClaim in the deployment's namespace.")


class HostPathSource(_Model):
    path: str = Field(pattern=r"^/", description="A directory on every node that may run a partition.")


class ImageSource(_Model):
    reference: str = Field(min_length=1, description="An OCI image whose files are mounted (Kubernetes image "
                                                     "volumes, 1.31+ with the ImageVolume feature gate).")


class ModelVolume(_Model):
    """Where a model's files (weights, path/to/file.py) come from on Kubernetes: exactly one source, mounted
    read-only at /weights in the partition pods and the tracing Job; relative paths resolve under it."""

    persistent_volume_claim: ClaimSource | None = None
    host_path: HostPathSource | None = None
    image: ImageSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelVolume:
        sources = (("persistentVolumeClaim", self.persistent_volume_claim), ("hostPath", self.host_path),
                   ("image", self.image))
        given = [name for name, value in sources if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of persistentVolumeClaim, hostPath, image (got {given or 'none'})")
        return self

    def source(self) -> dict[str, Any]:
        """The Kubernetes volume source, read-only."""
        if self.persistent_volume_claim is not None:
            return {"persistentVolumeClaim": {"claimName": self.persistent_volume_claim.claim_name, "readOnly": True}}
        if self.host_path is not None:
            return {"hostPath": {"path": self.host_path.path, "type": "Directory"}}
        assert self.image is not None
        return {"image": {"reference": self.image.reference, "pullPolicy": "IfNotPresent"}}


class ModelSpec(_Model):
    id: Name | None = Field(default=None, description="The model's id in the plan and at the gateway "
                                                      "(POST /v1/models/{id}/infer); default: from the name.")
    name: str = Field(min_length=1, description="Zoo name (see `edgepart models`), package.module:factory, "
                                                "or path/to/file.py:factory.")
    input_shape: list[Annotated[int, Field(gt=0)]] | None = Field(
        default=None, min_length=4, max_length=4, description="N,C,H,W; required outside the zoo.")
    weights: str | None = Field(default=None, description="Path to a safetensors file (default: seeded weights).")
    seed: int = Field(default=0, ge=0, description="Seed of the deterministic weights when no file is given.")
    volume: ModelVolume | None = Field(
        default=None, description="Kubernetes only: the volume holding `weights` and a path/to/file.py model, "
                                  "mounted read-only at /weights (relative paths resolve under it).")


class AccuracySpec(_Model):
    value: float = Field(ge=0, le=1, description="Top-1 accuracy as a fraction, e.g. 0.9861.")
    kind: Literal["measured", "declared"] = Field(
        description="measured: evaluated on held-out data with these weights (count and correct say how); "
                    "declared: a published figure for the reference architecture (source says where).")
    source: str = Field(min_length=1, description="measured: the dataset and split; declared: the publication "
                                                  "or model card the figure comes from.")
    count: int | None = Field(default=None, gt=0, description="Held-out images evaluated (measured).")
    correct: int | None = Field(default=None, ge=0, description="Held-out images answered right (measured).")
    seed: int | None = Field(default=None, ge=0, description="Seed of the held-out split (measured).")

    @model_validator(mode="after")
    def _measured_says_how(self) -> AccuracySpec:
        if self.kind == "measured":
            if self.count is None or self.correct is None:
                raise ValueError("a measured accuracy needs count and correct (the held-out images and how many "
                                 "were answered right)")
            if self.correct > self.count:
                raise ValueError(f"correct ({self.correct}) exceeds count ({self.count})")
            if abs(self.value - self.correct / self.count) > 5e-7:
                raise ValueError(f"value {self.value} is not correct/count = {self.correct}/{self.count}")
        return self


class VariantSpec(_Model):
    name: Name = Field(description="Variant name, unique in its family.")
    model: ModelSpec = Field(description="The variant's network and weights.")
    accuracy: AccuracySpec = Field(description="Its accuracy, measured or declared.")


class VariantFamilySpec(_Model):
    name: Name = Field(description="Family name.")
    task: str = Field(min_length=1, description="What every variant answers (same inputs, same classes), "
                                                "e.g. 'digits 8x8, 10 classes'.")
    variants: list[VariantSpec] = Field(min_length=1, description="Variants of one model at different "
                                                                  "accuracy and cost.")

    @model_validator(mode="after")
    def _names_unique(self) -> VariantFamilySpec:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variants: duplicate variant names {dupes}")
        return self

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise SpecError(f"family {self.name!r} has no variant {name!r}; it has {[v.name for v in self.variants]}")


class VariantsTargetSpec(_Model):
    throughput: float | None = Field(default=None, gt=0, le=1e9,
                                     description="Images per second the stream must sustain: the most accurate "
                                                 "configuration that reaches it is chosen.")
    accuracy: float | None = Field(default=None, ge=0, le=1,
                                   description="Accuracy the answers must reach: the configuration that answers "
                                               "a request soonest among those reaching it is chosen.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VariantsTargetSpec:
        if (self.throughput is None) == (self.accuracy is None):
            raise ValueError("give exactly one of target.throughput (images/s) or target.accuracy (a fraction)")
        return self


class VariantsSpec(_Model):
    family: str | None = Field(default=None, max_length=512,
                               description="`digits` (the family edgepart ships, trained and measured by it), or "
                                           "(local runtime only) the path of a family document (YAML or JSON).")
    custom: VariantFamilySpec | None = Field(default=None, description="A family given inline: variants with "
                                                                       "model, weights and accuracy.")
    target: VariantsTargetSpec = Field(description="What the configuration must reach: throughput or accuracy.")
    batch: int = Field(default=32, ge=1, le=4096, description="Images a worker computes at once; θ (images/s of "
                                                              "a variant on a device) is predicted at this batch.")
    power: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict, description="Watts each device draws while it runs a variant (optional; breaks "
                                          "ties towards lower power).")

    @model_validator(mode="after")
    def _one_family(self) -> VariantsSpec:
        if (self.family is None) == (self.custom is None):
            raise ValueError("give exactly one of variants.family (digits, or a family document) or "
                             "variants.custom (the family inline)")
        return self


class SourceSpec(_Model):
    device: Name = Field(description="A device that produces images (it must be on the ring).")
    rate: float | None = Field(default=None, gt=0, le=100000,
                               description="Images per second, Poisson arrivals (what `edgepart load` and the "
                                           "simulator drive the source with).")
    count: int | None = Field(default=None, ge=1, le=10_000_000, description="Images the source produces in all.")


# ---------------------------------------------------------------- pod scheduling (Kubernetes shapes)


class LocalObjectReference(_Model):
    name: Name = Field(description="Name of a Secret in the deployment's namespace.")


class TolerationSpec(_Model):
    """A Kubernetes toleration: lets the deployment's pods onto nodes with a matching taint."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty with Exists: every taint.")
    operator: Literal["Equal", "Exists"] = Field(default="Equal")
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect matched; empty: every effect.")
    toleration_seconds: int | None = Field(default=None, description="NoExecute only: how long the pod stays.")

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> TolerationSpec:
        if self.operator == "Exists" and self.value:
            raise ValueError("value: must be empty when operator is Exists")
        if self.operator == "Equal" and not self.key:
            raise ValueError("key: required when operator is Equal")
        return self


class NodeSelectorRequirementSpec(_Model):
    key: str = Field(min_length=1, max_length=316)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> NodeSelectorRequirementSpec:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: required with operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: must be empty with operator {self.operator}")
        if self.operator in ("Gt", "Lt") and (len(self.values) != 1 or not self.values[0].lstrip("-").isdigit()):
            raise ValueError(f"values: one integer with operator {self.operator}")
        return self


class NodeSelectorTermSpec(_Model):
    match_expressions: list[NodeSelectorRequirementSpec] = Field(default_factory=list)
    match_fields: list[NodeSelectorRequirementSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _only_the_name_field(self) -> NodeSelectorTermSpec:
        for i, field in enumerate(self.match_fields):
            if field.key != "metadata.name":
                raise ValueError(f"matchFields[{i}].key: only metadata.name is supported, got {field.key!r}")
        return self


class NodeSelectorSpec(_Model):
    node_selector_terms: list[NodeSelectorTermSpec] = Field(min_length=1)


class PreferredTermSpec(_Model):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTermSpec


class NodeAffinitySpec(_Model):
    """A Kubernetes node affinity. Required terms also choose the devices: a node they rule out is left out of
    the plan (status.excludedNodes, reason NodeAffinity)."""

    required_during_scheduling_ignored_during_execution: NodeSelectorSpec | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredTermSpec] = Field(default_factory=list)


class DeploymentSpec(_Model):
    model: ModelSpec | None = Field(default=None, description="The network to run (or `models` for several).")
    models: list[ModelSpec] = Field(default_factory=list, max_length=16,
                                    description="Several networks deployed together on the same devices, "
                                                "planned jointly (instead of `model`).")
    objective: Literal["latency", "throughput"] = Field(
        default="latency", description="latency: answer one request fast; throughput: pipeline many.")
    solver: str = Field(default="auto", description="Solver name (see `edgepart plan --help`), or auto.")
    solver_options: dict[str, Any] = Field(default_factory=dict, description="Options passed to the solver.")
    compression: Literal["auto", "off", "lz4", "zstd"] = Field(
        default="off", description="Lossless compression of activations between devices: auto lets the planner "
                                   "choose per link from each codec's measured CPU cost and ratio; lz4 or zstd: "
                                   "that codec wherever it pays; off: raw.")
    wire_dtype: Literal["float32", "float16"] = Field(
        default="float32", description="float16: float32 activations travel between devices as float16 (lossy; "
                                       "`edgepart verify` reports the error).")
    devices: list[DeviceSpec] = Field(default_factory=list,
                                      description="Inline devices (local runtime, simulation). On Kubernetes, "
                                                  "leave empty and use nodeSelector.")
    node_selector: dict[str, str] = Field(default_factory=dict,
                                          description="Kubernetes: nodes with these labels are the devices.")
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="Links between the devices.")
    master: Name | None = Field(default=None, description="Device holding the input (default: the first).")
    request_timeout: Duration = Field(default="30s", description="Per-request timeout in the data plane.")
    exact_kernels: bool = Field(
        default=False, description="Partitions run PyTorch's native kernels with oneDNN off: every tile is "
                                   "bit-identical to the whole model, but convolutions are slower. Default: the "
                                   "fastest kernels (oneDNN), within a relative tolerance of the whole model.")
    peer_timeout: Duration = Field(
        default="2s", description="The gateway pings every partition on an idle connection; one that answers no "
                                  "ping for this long (its host lost power or its network, its process is "
                                  "stopped) is declared unreachable and the requests waiting on it are answered "
                                  "503 peer_unreachable at once. 0s: no pings (only ended processes are seen).")
    admission: Literal["auto", "off"] = Field(
        default="auto", description="Gateway admission: auto admits only the requests the deployment can answer "
                                    "within requestTimeout (a bound measured from its service time) and answers "
                                    "503 with Retry-After beyond; off queues up to the fixed limits only.")
    variants: VariantsSpec | None = Field(
        default=None, description="Accuracy-aware data partitioning: a family of variants of one model instead of "
                                  "`model`; each device runs one variant (or none) on a share of the images.")
    sources: list[SourceSpec] = Field(
        default_factory=list, max_length=64,
        description="Several data sources (MS-MDI): devices that produce images. With sources the deployment "
                    "runs one ring worker per device instead of a static plan; each source answers its own "
                    "images (POST /v1/ring/images).")
    scheduler: Literal["ms-mdi", "ar-mdi", "local"] = Field(
        default="ms-mdi", description="With sources: ms-mdi (backpressure between local and distributed work), "
                                      "ar-mdi (every image along the ring) or local (each source alone).")
    ring: list[Name] = Field(default_factory=list, description="With sources: ring order of the workers "
                                                               "(default: the devices in order).")
    queue_bound: int = Field(default=16, ge=1, le=65536, description="With sources: images per queue; an "
                                                                     "image beyond is refused with 503.")
    heartbeat: Duration = Field(default="500ms", description="With sources: period of the workers' queue-length "
                                                             "reports to each other.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16,
        description="Kubernetes: Secrets to pull the image with, on every pod and Job of the deployment.")
    tolerations: list[TolerationSpec] = Field(
        default_factory=list, max_length=64,
        description="Kubernetes: tolerations of every pod and Job of the deployment. A node with a NoSchedule or "
                    "NoExecute taint they do not tolerate is left out of the plan (reason NodeTainted).")
    node_affinity: NodeAffinitySpec | None = Field(
        default=None, description="Kubernetes: node affinity of every pod, combined with the pin to its planned "
                                  "node; required terms also narrow the devices.")
    progress_deadline_seconds: int = Field(
        default=600, ge=1, le=86400,
        description="Kubernetes: seconds a new plan may take to get every partition ready; past them the rollout "
                    "is reported (Progressing False, ProgressDeadlineExceeded) and the old plan keeps serving.")
    replan_gain: float = Field(
        default=0.10, ge=0, le=10,
        description="Kubernetes: when a node becomes usable again, re-plan only if the new plan's predicted "
                    "latency (throughput with objective throughput) beats the serving plan's by more than this "
                    "fraction; else the serving plan stays.")

    @model_validator(mode="after")
    def _one_kind_of_model(self) -> DeploymentSpec:
        if self.variants is not None:
            if self.model is not None or self.models:
                raise ValueError("variants: give either `variants` (a family) or `model`/`models`, not both")
            if self.sources:
                raise ValueError("variants: a deployment with variants takes no sources")
            return self
        if (self.model is None) == (not self.models):
            raise ValueError("model: give either `model` (one network), `models` (several) or `variants` (a "
                             "family), not both or neither")
        ids = [i for i, _ in self.model_specs()]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model ids {dupes}; give each an `id`")
        return self

    @model_validator(mode="after")
    def _sources_on_the_ring(self) -> DeploymentSpec:
        if not self.sources:
            return self
        if self.models:
            raise ValueError("sources: a deployment with sources runs one `model`, not `models`")
        names = [s.device for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: each device may be one source, got {dupes} twice")
        if len(set(self.ring)) != len(self.ring):
            raise ValueError(f"ring: workers must be distinct, got {self.ring}")
        devices = [d.name for d in self.devices]
        for i, name in enumerate(self.ring):
            if devices and name not in devices:
                raise ValueError(f"ring[{i}]: {name!r} is not one of the devices {devices}")
        ring = self.ring or devices
        for i, name in enumerate(names):
            if ring and name not in ring:
                raise ValueError(f"sources[{i}].device: {name!r} is not on the ring {ring}")
        return self

    def ring_order(self) -> list[str]:
        """The ring of a deployment with sources: `ring`, or the devices in order."""
        return list(self.ring) or [d.name for d in self.devices]

    def model_specs(self) -> list[tuple[str, ModelSpec]]:
        """(id, spec) of every model, ids filled in from the names where not given."""
        specs = [self.model] if self.model is not None else list(self.models)
        return [(m.id or default_model_id(m.name), m) for m in specs]

    @property
    def first_model(self) -> ModelSpec:
        return self.model_specs()[0][1]

    def cluster(self) -> ClusterSpec:
        if not self.devices:
            raise SpecError("spec.devices: no inline devices (on Kubernetes they come from nodes)")
        try:
            return ClusterSpec(devices=self.devices, network=self.network, master=self.master)
        except ValidationError as err:
            raise SpecError("spec." + explain_validation(err)) from None


class Metadata(_Model):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    name: Name
    namespace: str = "default"


class DNNDeployment(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["edgepart.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["DNNDeployment"]
    metadata: Metadata
    spec: DeploymentSpec


# ---------------------------------------------------------------- loading


def _read_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None


def cluster_from_dict(data: Any, source: str = "cluster") -> ClusterSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with devices, network and master")
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {explain_validation(err)}") from None


def load_cluster(path: str | Path) -> ClusterSpec:
    return cluster_from_dict(_read_yaml(path), str(path))


def deployment_from_dict(data: Any, source: str = "deployment") -> DNNDeployment:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a DNNDeployment mapping")
    try:
        return DNNDeployment.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {explain_validation(err)}") from None


def load_deployment(path: str | Path) -> DNNDeployment:
    return deployment_from_dict(_read_yaml(path), str(path))
