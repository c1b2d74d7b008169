"""Operator settings: one frozen value, read once from the environment (EDGEPART_OPERATOR_*).

The Helm chart sets these from values.yaml; `edgepart render` uses the defaults
or flags. Reconcile and render receive the value; nothing reads the
environment after start-up.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgepart import __version__

DEFAULT_IMAGE = f"ghcr.io/edgepart/edgepart:{__version__}"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEPART_OPERATOR_", frozen=True, extra="ignore")

    image: str = Field(default=DEFAULT_IMAGE, min_length=1,
                       description="Image of partition, gateway and profiling pods (the operator's own image).")
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$",
                                   description="imagePullPolicy of the pods the operator creates.")
    port: int = Field(default=8080, ge=1, le=65535, description="The gateway's HTTP port for its clients.")
    internal_port: int = Field(default=8081, ge=1, le=65535,
                               description="Port of the traffic inside a deployment (partitions, and the gateway's "
                                           "port for them); only the deployment's own pods may reach it.")
    run_as_user: int = Field(default=65532, ge=1, description="Numeric non-root user of every pod.")
    tmp_size: str = Field(default="1Gi", description="Size limit of the /tmp emptyDir of every pod.")
    cpu_share: float = Field(default=0.8, gt=0, le=1,
                             description="Share of a node's allocatable CPU requested by its partitions.")
    gateway_cpu: str = Field(default="250m", description="CPU request of the gateway.")
    gateway_memory: str = Field(default="512Mi", description="Memory request of the gateway.")
    gateway_memory_limit: str = Field(default="1Gi", description="Memory limit of the gateway.")
    gateway_service_type: str = Field(default="ClusterIP", pattern="^(ClusterIP|NodePort|LoadBalancer)$",
                                      description="Service type of the gateway.")
    metrics_namespace: str = Field(default="", description="Namespace whose pods (Prometheus) may scrape "
                                                           "partitions; empty: none.")
    profile_memory: str = Field(default="768Mi", description="Memory request of a profiling Job (it holds one model at a time: vgg16's 528 MB of weights at most).")
    profile_memory_limit: str = Field(default="1Gi", description="Memory limit of a profiling Job (fits a 1 GiB device; tests/unit/test_profile_memory.py checks the profile's peak against it).")
    profile_timeout_seconds: int = Field(default=1800, ge=60, description="Deadline of a profiling Job.")
    profile_quick: bool = Field(default=False, description="Profile with `edgepart profile --quick` "
                                                           "(about a minute, fewer sizes).")
    trace_memory: str = Field(default="2Gi", description="Memory of a tracing Job (traces a model outside the "
                                                          "zoo on the meta device: no weights).")
    trace_timeout_seconds: int = Field(default=600, ge=30, description="Deadline of a tracing Job.")
    trusted_models: list[str] = Field(
        default_factory=list,
        description="Model references (package.module:factory) the cluster admin trusts the operator to import "
                    "and trace in its own process; every other model outside the zoo is traced by a Job.")
    max_restarts: int = Field(default=3, ge=1, description="A partition container restarted this often has "
                                                          "failed: its node is left out and the model re-planned.")
    exclusion_seconds: float = Field(default=300.0, gt=0, description="A node whose partition failed is left "
                                     "out this long, doubling with each new failure.")
    max_exclusion_seconds: float = Field(default=3600.0, gt=0, description="The longest a node is left out "
                                         "for a failed partition.")
    resync_seconds: float = Field(default=30.0, gt=0, description="Reconcile at least this often.")
    namespaces: list[str] = Field(default_factory=list,
                                  description="Namespaces to watch; empty: the operator's own namespace.")
