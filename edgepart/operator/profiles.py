"""Device profiles on Kubernetes: one ConfigMap per device class, measured by a Job.

A profile ConfigMap is named `edgepart-profile-<class>`, labelled
`edgepart.io/profile=true` and `edgepart.io/device-class=<class>`, and holds
the JSON `edgepart profile` writes under the key `profile.json`. When a class
has none, the operator runs a profiling Job on one node of that class; the Job
prints the profile between two marker lines, and the operator copies it from
the Job's log into the ConfigMap. A profile can also be made by hand:

    edgepart profile -o profile.json
    kubectl create configmap edgepart-profile-rpi4 --from-file=profile.json
    kubectl label configmap edgepart-profile-rpi4 edgepart.io/profile=true edgepart.io/device-class=rpi4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgepart.operator.job_output import between_markers, parse_config_maps
from edgepart.operator.names import LABEL_DEVICE_CLASS, LABEL_PROFILE
from edgepart.operator.render import PROFILE_BEGIN, PROFILE_END, PROFILE_KEY
from edgepart.planner.costmodel import DeviceProfile, ProfileError, profile_from_json


@dataclass(frozen=True)
class ProfileSet:
    """Profiles by device class, and the classes whose ConfigMap could not be read (with why)."""

    profiles: Mapping[str, DeviceProfile]
    errors: Mapping[str, str]


def is_profile_config_map(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_PROFILE) == "true" and bool(labels.get(LABEL_DEVICE_CLASS))


def _device_class_of(obj: Mapping[str, Any]) -> str | None:
    return str(obj["metadata"]["labels"][LABEL_DEVICE_CLASS]) if is_profile_config_map(obj) else None


def profiles_from_config_maps(objects: Sequence[Mapping[str, Any]]) -> ProfileSet:
    ordered = sorted(objects, key=lambda o: str((o.get("metadata") or {}).get("name", "")))
    return ProfileSet(*parse_config_maps(ordered, _device_class_of, PROFILE_KEY, profile_from_json, ProfileError))


def profile_from_log(log: str, source: str = "profiling job log") -> DeviceProfile:
    """The profile a profiling Job printed between the marker lines of its log."""
    return profile_from_json(between_markers(log, PROFILE_BEGIN, PROFILE_END, "profile", source, ProfileError),
                             source)


@dataclass(frozen=True)
class JobState:
    """A profiling Job as the operator sees it."""

    name: str
    device_class: str
    active: bool
    succeeded: bool
    failed: bool
    message: str = ""

    @staticmethod
    def from_object(obj: Mapping[str, Any]) -> JobState:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or () if isinstance(c, Mapping)}
        failed_condition = conditions.get("Failed") or {}
        failed = failed_condition.get("status") == "True"
        complete = (conditions.get("Complete") or {}).get("status") == "True"
        return JobState(
            name=str(meta.get("name", "")),
            device_class=str((meta.get("labels") or {}).get(LABEL_DEVICE_CLASS, "")),
            active=bool(status.get("active")),
            succeeded=complete or bool(status.get("succeeded")),
            failed=failed,
            message=str(failed_condition.get("message") or failed_condition.get("reason") or ""),
        )
