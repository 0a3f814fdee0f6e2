"""How each custom resource is served: names, scope, printer columns, subresources.

The CRDs (manifests.crds) and the Kubernetes access layer (api.kube) both read this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api import constants
from api.types import (
    ProfileBinding,
    ProfileRecording,
    RawSelinuxProfile,
    Resource,
    SeccompProfile,
    SecurityProfileNodeStatus,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            column["priority"] = self.priority
        if self.description:
            column["description"] = self.description
        return column


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class ResourceKind:
    model: type[Resource]
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    columns: tuple[PrinterColumn, ...] = ()
    status_subresource: bool = True
    categories: tuple[str, ...] = field(default=("security",))

    @property
    def kind(self) -> str:
        return self.model.KIND

    @property
    def version(self) -> str:
        return self.model.VERSION

    @property
    def singular(self) -> str:
        return self.model.KIND.lower()

    @property
    def group(self) -> str:
        return constants.GROUP

    @property
    def api_version(self) -> str:
        return f"{constants.GROUP}/{self.model.VERSION}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{constants.GROUP}"


@dataclass(frozen=True)
class BuiltinKind:
    """A Kubernetes kind outside the core group that the operator watches or writes."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


DAEMON_SET = BuiltinKind("apps", "v1", "daemonsets", "DaemonSet", namespaced=True)
MUTATING_WEBHOOK_CONFIGURATION = BuiltinKind(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
)
VALIDATING_WEBHOOK_CONFIGURATION = BuiltinKind(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)
LEASE = BuiltinKind("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
# The core group is "" (served under /api/v1); api.kube lists it through the core client.
POD = BuiltinKind("", "v1", "pods", "Pod", namespaced=True)
SECRET = BuiltinKind("", "v1", "secrets", "Secret", namespaced=True)
CONFIG_MAP = BuiltinKind("", "v1", "configmaps", "ConfigMap", namespaced=True)
EVENT = BuiltinKind("", "v1", "events", "Event", namespaced=True)


_SELINUX_COLUMNS = (
    PrinterColumn("Usage", ".status.usage"),
    PrinterColumn("State", ".status.status"),
)

SECCOMP_PROFILE = ResourceKind(
    SeccompProfile,
    "seccompprofiles",
    namespaced=False,
    short_names=("sp",),
    columns=(
        PrinterColumn("Status", ".status.status"),
        AGE,
        PrinterColumn(
            "LocalhostProfile",
            ".status.localhostProfile",
            priority=10,
            description="path to use as securityContext.seccompProfile.localhostProfile",
        ),
    ),
)
SELINUX_PROFILE = ResourceKind(SelinuxProfile, "selinuxprofiles", namespaced=False, columns=_SELINUX_COLUMNS)
RAW_SELINUX_PROFILE = ResourceKind(
    RawSelinuxProfile, "rawselinuxprofiles", namespaced=False, columns=_SELINUX_COLUMNS
)
PROFILE_BINDING = ResourceKind(ProfileBinding, "profilebindings", namespaced=True)
PROFILE_RECORDING = ResourceKind(
    ProfileRecording,
    "profilerecordings",
    namespaced=True,
    columns=(PrinterColumn("PodSelector", ".spec.podSelector", priority=10),),
)
SPOD = ResourceKind(
    SecurityProfilesOperatorDaemon,
    "securityprofilesoperatordaemons",
    namespaced=True,
    short_names=("spod",),
    columns=(PrinterColumn("State", ".status.state"),),
)
NODE_STATUS = ResourceKind(
    SecurityProfileNodeStatus,
    "securityprofilenodestatuses",
    namespaced=False,
    short_names=("spns",),
    columns=(
        PrinterColumn("Status", ".status"),
        AGE,
        PrinterColumn("Node", ".nodeName", priority=10),
    ),
    status_subresource=False,
)

ALL_KINDS: tuple[ResourceKind, ...] = (
    SECCOMP_PROFILE,
    SELINUX_PROFILE,
    RAW_SELINUX_PROFILE,
    PROFILE_BINDING,
    PROFILE_RECORDING,
    SPOD,
    NODE_STATUS,
)
BY_KIND: dict[str, ResourceKind] = {k.kind: k for k in ALL_KINDS}


def parse(obj: dict[str, Any]) -> Resource:
    """Validate an object of any of our kinds; raises pydantic.ValidationError naming the field."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in BY_KIND:
        raise ValueError(f"kind {kind!r} is not one of {sorted(BY_KIND)}")
    return BY_KIND[kind].model.model_validate(obj)
