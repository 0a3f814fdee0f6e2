"""Typed models of the operator's custom resources, at the API level the product docs use
(SeccompProfile v1beta1, SelinuxProfile/RawSelinuxProfile v1alpha2, the rest v1alpha1, flat spod spec).

The CRD schemas in manifests/ are generated from these models (see manifests.crds), so a field, enum,
default or pattern is declared once, here.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from api import constants, validation

# --- shared building blocks ---------------------------------------------------------------------

SyscallName = Annotated[
    str,
    AfterValidator(validation.syscall_name),
    WithJsonSchema({"type": "string", "pattern": validation.SYSCALL_NAME_PATTERN}),
]
# The pattern admits neither '/' nor '.' or '..' alone, so the CRD refuses names that profile_name does.
_PROFILE_NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": validation.DNS1123_SUBDOMAIN_PATTERN,
    "maxLength": validation.DNS1123_SUBDOMAIN_MAX_LENGTH,
}
ProfileName = Annotated[str, AfterValidator(validation.profile_name), WithJsonSchema(_PROFILE_NAME_SCHEMA)]
SelinuxIdentifier = Annotated[
    str,
    AfterValidator(validation.selinux_identifier),
    WithJsonSchema({"type": "string", "pattern": validation.SELINUX_IDENTIFIER_PATTERN}),
]
# Kubernetes core types we pass through untouched (tolerations, affinity, resources, volumes):
# the apiserver keeps them as given, the reconciler copies them into the DaemonSet.
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The subset of metadata the operator reads; everything else the apiserver sets is kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    # Accepted on cluster-scoped kinds too (docs 7.9.9 sets it); the apiserver ignores it there.
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Model):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    last_transition_time: str | None = None
    reason: str | None = None
    message: str | None = None


class ProfileState(enum.StrEnum):
    """Node and aggregate profile states. The aggregate of several nodes is the lowest one."""

    ERROR = "Error"
    TERMINATING = "Terminating"
    PARTIAL = "Partial"
    DISABLED = "Disabled"
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    INSTALLED = "Installed"

    @property
    def rank(self) -> int:
        return _STATE_ORDER.index(self)


_STATE_ORDER = list(ProfileState)


class ProfileStatus(Model):
    status: ProfileState | None = None
    conditions: list[Condition] | None = None
    active_workloads: list[str] | None = None


class Resource(Model):
    """A top-level object of one of our kinds."""

    KIND: ClassVar[str]
    VERSION: ClassVar[str]
    # The schema of metadata.name in the CRD, where the model checks the name beyond the apiserver.
    NAME_SCHEMA: ClassVar[dict[str, Any] | None] = None

    api_version: str
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="after")
    def _check_type_meta(self) -> Resource:
        expected = f"{constants.GROUP}/{self.VERSION}"
        if self.api_version != expected:
            raise ValueError(f"apiVersion must be {expected!r}, got {self.api_version!r}")
        if self.kind != self.KIND:
            raise ValueError(f"kind must be {self.KIND!r}, got {self.kind!r}")
        return self


class KubernetesObject(BaseModel):
    """Any other Kubernetes object the operator watches (DaemonSets, webhook configurations, Leases):
    metadata parsed, the rest kept as it came."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    # Items of a built-in kind's list come without their type.
    api_version: str = ""
    kind: str = ""
    metadata: ObjectMeta


class ProfileResource(Resource):
    """Profiles become node files named after them, so their names are checked strictly."""

    NAME_SCHEMA: ClassVar[dict[str, Any] | None] = _PROFILE_NAME_SCHEMA

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        if metadata.name is not None:
            validation.profile_name(metadata.name)
        return metadata


# --- SeccompProfile v1beta1 -----------------------------------------------------------------------

SeccompAction = Literal[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
]
SeccompArch = Literal[
    "SCMP_ARCH_NATIVE",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
]
SeccompFlag = Literal[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
]
SeccompOperator = Literal[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
]
BASE_PROFILE_PATTERN = r"^(oci://\S+|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$"


class SyscallArg(Model):
    index: int = Field(ge=0)
    value: int | None = Field(default=None, ge=0)
    value_two: int | None = Field(default=None, ge=0)
    op: SeccompOperator


class Syscall(Model):
    names: list[SyscallName] = Field(min_length=1, json_schema_extra={"x-kubernetes-list-type": "set"})
    action: SeccompAction
    errno_ret: int | None = Field(default=None, ge=0)
    args: list[SyscallArg] | None = Field(default=None, max_length=6)


class SeccompProfileSpec(Model):
    disabled: bool = False
    base_profile_name: str | None = Field(default=None, pattern=BASE_PROFILE_PATTERN)
    default_action: SeccompAction
    architectures: list[SeccompArch] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    listener_path: str | None = Field(
        default=None, pattern=r"^/var/run/security-profiles-operator/[a-zA-Z0-9_\-\.]+$"
    )
    listener_metadata: str | None = None
    syscalls: list[Syscall] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-list-type": "atomic"}
    )
    flags: list[SeccompFlag] | None = Field(default=None, json_schema_extra={"x-kubernetes-list-type": "set"})


class SeccompProfileStatus(ProfileStatus):
    path: str | None = None
    localhost_profile: str | None = None


class SeccompProfile(ProfileResource):
    KIND: ClassVar[str] = "SeccompProfile"
    VERSION: ClassVar[str] = "v1beta1"

    spec: SeccompProfileSpec
    status: SeccompProfileStatus | None = None


# --- SelinuxProfile / RawSelinuxProfile v1alpha2 ---------------------------------------------------


class PolicyRef(Model):
    kind: Literal["System", "SelinuxProfile"] = "System"
    name: SelinuxIdentifier


SelinuxTypeLabel = Annotated[
    str,
    AfterValidator(validation.selinux_type_or_self),
    WithJsonSchema({"type": "string", "pattern": validation.SELINUX_TYPE_OR_SELF_PATTERN}),
]
# The bounds keep the CRD's CEL checks of the map keys within the apiserver's cost budget.
MAX_ALLOW_ENTRIES = 128
SelinuxPermissions = Annotated[list[SelinuxIdentifier], Field(max_length=MAX_ALLOW_ENTRIES)]
SelinuxClasses = Annotated[dict[SelinuxIdentifier, SelinuxPermissions], Field(max_length=MAX_ALLOW_ENTRIES)]


class SelinuxProfileSpec(Model):
    disabled: bool = False
    inherit: list[PolicyRef] = Field(
        default_factory=lambda: [PolicyRef(kind="System", name="container")],
        json_schema_extra={"default": [{"kind": "System", "name": "container"}]},
    )
    permissive: bool = False
    allow: dict[SelinuxTypeLabel, SelinuxClasses] | None = Field(default=None, max_length=MAX_ALLOW_ENTRIES)


class SelinuxProfileStatus(ProfileStatus):
    usage: str | None = None


class SelinuxProfile(ProfileResource):
    KIND: ClassVar[str] = "SelinuxProfile"
    VERSION: ClassVar[str] = "v1alpha2"

    spec: SelinuxProfileSpec = Field(default_factory=SelinuxProfileSpec)
    status: SelinuxProfileStatus | None = None


class RawSelinuxProfileSpec(Model):
    disabled: bool = False
    policy: str = Field(min_length=1, max_length=500000)


class RawSelinuxProfile(ProfileResource):
    KIND: ClassVar[str] = "RawSelinuxProfile"
    VERSION: ClassVar[str] = "v1alpha2"

    spec: RawSelinuxProfileSpec
    status: SelinuxProfileStatus | None = None


# --- ProfileBinding v1alpha1 -------------------------------------------------------------------------


class ProfileReference(Model):
    kind: Literal["SeccompProfile", "SelinuxProfile"]
    name: ProfileName


class ProfileBindingSpec(Model):
    profile_ref: ProfileReference
    image: str = Field(min_length=1)


class WorkloadStatus(Model):
    active_workloads: list[str] | None = None


class ProfileBinding(Resource):
    KIND: ClassVar[str] = "ProfileBinding"
    VERSION: ClassVar[str] = "v1alpha1"
    WILDCARD_IMAGE: ClassVar[str] = "*"

    spec: ProfileBindingSpec
    status: WorkloadStatus | None = None


# --- ProfileRecording v1alpha1 -----------------------------------------------------------------------

RecordingKind = Literal["SeccompProfile", "SelinuxProfile", "ApparmorProfile"]
Recorder = Literal["bpf", "logs"]
# Which recorders can produce which kind: SELinux is only recorded from AVC logs, AppArmor only by eBPF.
VALID_RECORDERS: dict[str, frozenset[str]] = {
    "SeccompProfile": frozenset({"logs", "bpf"}),
    "SelinuxProfile": frozenset({"logs"}),
    "ApparmorProfile": frozenset({"bpf"}),
}


class ProfileRecordingSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind != 'SelinuxProfile' || self.recorder == 'logs'",
                    "message": "kind SelinuxProfile can only be recorded with recorder: logs",
                },
                {
                    "rule": "self.kind != 'ApparmorProfile' || self.recorder == 'bpf'",
                    "message": "kind ApparmorProfile can only be recorded with recorder: bpf",
                },
            ]
        }
    )

    kind: RecordingKind
    recorder: Recorder
    merge_strategy: Literal["none", "containers"] = "none"
    pod_selector: LabelSelector
    containers: list[str] | None = Field(default=None, json_schema_extra={"x-kubernetes-list-type": "set"})
    disable_profile_after_recording: bool = False

    @model_validator(mode="after")
    def _check_kind_recorder(self) -> ProfileRecordingSpec:
        if self.recorder not in VALID_RECORDERS[self.kind]:
            allowed = " or ".join(sorted(VALID_RECORDERS[self.kind]))
            raise ValueError(
                f"recorder: {self.recorder} cannot record kind {self.kind} (use recorder: {allowed})"
            )
        return self


class ProfileRecording(Resource):
    KIND: ClassVar[str] = "ProfileRecording"
    VERSION: ClassVar[str] = "v1alpha1"

    spec: ProfileRecordingSpec
    status: WorkloadStatus | None = None


# --- SecurityProfilesOperatorDaemon v1alpha1 (flat spec) ---------------------------------------------


class SelinuxOptions(Model):
    allowed_system_profiles: list[SelinuxIdentifier] = Field(
        default_factory=lambda: ["container"], json_schema_extra={"default": ["container"]}
    )


class JsonEnricherOptions(Model):
    # 0 means "the enricher's default" (60 s, 100 MB, keep all, no age limit): docs 7.9.18 resets them to 0.
    audit_log_interval_seconds: int | None = Field(default=None, ge=0)
    audit_log_path: str | None = None
    audit_log_max_size: int | None = Field(default=None, ge=0)
    audit_log_max_backups: int | None = Field(default=None, ge=0)
    audit_log_max_age: int | None = Field(default=None, ge=0)


class WebhookOptions(Model):
    name: str = Field(min_length=1)
    failure_policy: Literal["Fail", "Ignore"] | None = None
    namespace_selector: LabelSelector | None = None
    object_selector: LabelSelector | None = None


class SPODSpec(Model):
    verbosity: int = Field(default=0, ge=0)
    enable_profiling: bool | None = None
    enable_memory_optimization: bool | None = None
    enable_selinux: bool | None = None
    selinux_type_tag: str = Field(default="spc_t", pattern=validation.SELINUX_IDENTIFIER_PATTERN)
    selinux_options: SelinuxOptions | None = None
    enable_log_enricher: bool | None = None
    log_enricher_filters: str | None = None
    log_enricher_source: Literal["auditd", "bpf"] | None = None
    enable_json_enricher: bool | None = None
    json_enricher_filters: str | None = None
    json_enricher_options: JsonEnricherOptions | None = None
    enable_bpf_recorder: bool | None = None
    enable_app_armor: bool | None = None
    tolerations: list[KubeObject] | None = None
    affinity: KubeObject | None = None
    priority_class_name: str = "system-node-critical"
    image_pull_secrets: list[KubeObject] | None = None
    daemon_resource_requirements: KubeObject | None = None
    host_proc_volume_path: str = Field(default="/proc", pattern=r"^/proc(/.*)?$")
    static_webhook_config: bool | None = None
    webhook_options: list[WebhookOptions] | None = None
    allowed_syscalls: list[SyscallName] | None = None
    allowed_seccomp_actions: list[SeccompAction] | None = None
    disable_oci_artifact_signature_verification: bool | None = None


class SPODStatus(Model):
    state: Literal["PENDING", "CREATING", "UPDATING", "RUNNING", "ERROR"] | None = None
    conditions: list[Condition] | None = None


class SecurityProfilesOperatorDaemon(Resource):
    KIND: ClassVar[str] = "SecurityProfilesOperatorDaemon"
    VERSION: ClassVar[str] = "v1alpha1"

    spec: SPODSpec = Field(default_factory=SPODSpec)
    status: SPODStatus | None = None


# --- SecurityProfileNodeStatus v1alpha1 ----------------------------------------------------------------


class SecurityProfileNodeStatus(Resource):
    """At v1alpha1 the node name and the state are top-level fields, and there is no status subresource."""

    KIND: ClassVar[str] = "SecurityProfileNodeStatus"
    VERSION: ClassVar[str] = "v1alpha1"

    node_name: str = Field(min_length=1)
    status: ProfileState | None = None
    # Ours: why the node could not install the profile (with `status: Error`), e.g. the syscall the
    # spod's allowedSyscalls refuse, so the reason is on an object and not only in the agent's log.
    message: str | None = None


DEFAULT_TOLERATIONS: list[dict[str, Any]] = [
    {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
]


def default_spod(namespace: str = constants.DEFAULT_NAMESPACE) -> SecurityProfilesOperatorDaemon:
    """The spod the reconciler creates when none exists (upstream's defaults, flat schema)."""
    return SecurityProfilesOperatorDaemon(
        api_version=f"{constants.GROUP}/{SecurityProfilesOperatorDaemon.VERSION}",
        kind=SecurityProfilesOperatorDaemon.KIND,
        metadata=ObjectMeta(
            name=constants.SPOD_NAME,
            namespace=namespace,
            labels={constants.LABEL_APP: constants.APP_LABEL_VALUE},
        ),
        spec=SPODSpec(
            enable_selinux=None,
            selinux_options=SelinuxOptions(),
            log_enricher_source="auditd",
            tolerations=DEFAULT_TOLERATIONS,
        ),
    )


def log_enricher_trace_profile() -> SeccompProfile:
    """The profile the recording webhook gives containers recorded from logs: everything allowed and
    logged, so the audit log holds each syscall the container makes."""
    return SeccompProfile(
        api_version=f"{constants.GROUP}/{SeccompProfile.VERSION}",
        kind=SeccompProfile.KIND,
        metadata=ObjectMeta(
            name=constants.LOG_ENRICHER_TRACE_PROFILE, labels={constants.LABEL_APP: constants.APP_LABEL_VALUE}
        ),
        spec=SeccompProfileSpec(default_action="SCMP_ACT_LOG"),
    )


def seccomp_localhost_profile(profile_name: str) -> str:
    """The `localhostProfile` (relative to <kubelet>/seccomp) under which a node installs the profile."""
    file_name = profile_name if profile_name.endswith(".json") else f"{profile_name}.json"
    return f"{constants.SECCOMP_OPERATOR_DIR}/{file_name}"


def profile_id(kind: str, name: str) -> str:
    """The `spo.x-k8s.io/profile-id` label value: `<Kind>-<name>`, hashed when it would not fit a label."""
    plain = f"{kind}-{name}"
    if len(plain) < constants.LABEL_VALUE_MAX_LENGTH:
        return plain
    digest = hashlib.sha256(plain.encode()).hexdigest()
    return f"{kind}-{digest[: constants.LABEL_VALUE_MAX_LENGTH - len(kind) - 1]}"


def node_finalizer(node_name: str) -> str:
    """The finalizer by which a node's agent holds a profile until its file is gone from that node."""
    return f"{node_name[: constants.NODE_FINALIZER_MAX_NODE_CHARS]}{constants.FINALIZER_NODE_DELETED_SUFFIX}"


def node_status_name(profile_name: str, node_name: str) -> str:
    return f"{profile_name}-{node_name}"


def heartbeat_lease_name(node_name: str) -> str:
    return f"{constants.HEARTBEAT_LEASE_PREFIX}{node_name}"


def selinux_usage(profile_name: str) -> str:
    """The SELinux type a workload sets in seLinuxOptions.type to run under the profile."""
    return f"{profile_name}{constants.SELINUX_TYPE_SUFFIX}"


# --- stored objects the models reject ------------------------------------------------------------------

_SHOWN_ERRORS = 3


@dataclass(frozen=True)
class InvalidObject:
    """A stored object that the models reject, e.g. one written under an older, laxer CRD.

    Readers keep it instead of dropping it, so that whoever relies on such objects (a namespace's
    bindings, say) can fail closed and say which object to fix, rather than act as if it were absent.
    """

    kind: str
    namespace: str
    name: str
    reason: str

    @classmethod
    def of(cls, kind: str, raw: dict[str, Any], error: ValidationError) -> InvalidObject:
        metadata = raw.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        problems = [
            f"{'.'.join(str(part) for part in e['loc']) or 'object'}: {e['msg']}"
            for e in error.errors()[:_SHOWN_ERRORS]
        ]
        more = error.error_count() - _SHOWN_ERRORS
        if more > 0:
            problems.append(f"and {more} more")
        return cls(kind, str(metadata.get("namespace") or ""), str(metadata.get("name")), "; ".join(problems))

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where} is stored but not valid ({self.reason})"
