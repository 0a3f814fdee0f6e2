"""Which pods use which profiles, bindings and recordings: `status.activeWorkloads` and the finalizers
that keep them from disappearing while pods use them.

A pod is read once, when the cache receives it, into a PodSummary of the few facts needed here, so
that neither the cache's memory nor a reconcile's time grows with the size of pod specs.

- A pod uses a SeccompProfile when a pod-level, container or init-container `seccompProfile` is
  `Localhost` with the profile's `localhostProfile` (`operator/<name>.json`), or through the legacy pod
  annotation `localhost/operator/<name>.json`; ephemeral containers come later and are not counted.
- A pod uses a SelinuxProfile or RawSelinuxProfile when a `seLinuxOptions.type` is its usage
  `<name>.process`. Upstream tracked SelinuxProfiles only; a RawSelinuxProfile in use is as worth
  protecting.
- A ProfileBinding is active for a pod of its namespace that runs its image (any image for `*`) under
  its profile: the pods the binding webhook bound. Upstream kept this list inside the webhook; here
  the webhook never writes, and the list follows the pods, deletions included.
- A ProfileRecording is active for a pod of its namespace carrying one of its recording annotations
  (`<recording>_<container>_<nonce>_<time>`). Listed by pod name, as upstream does.

Pods count in any phase, as upstream counts them: a pod that has finished still names the profile
until it is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ConfigDict, Field, model_validator

from api import constants
from api.types import (
    KubernetesObject,
    ProfileBinding,
    SeccompProfile,
    seccomp_localhost_profile,
    selinux_usage,
)

_LOCALHOST: Final = "Localhost"
_LEGACY_LOCALHOST_PREFIX: Final = "localhost/"
_RECORDING_PREFIXES: Final = (
    constants.ANNOTATION_TRACE_LOGS_PREFIX,
    constants.ANNOTATION_TRACE_BPF_PREFIX,
    constants.ANNOTATION_TRACE_AVCS_PREFIX,
    constants.ANNOTATION_TRACE_BPF_APPARMOR_PREFIX,
)
_POD_LEVEL: Final = ("initContainers", "containers")


def seccomp_reference(localhost_profile: str) -> str:
    return f"seccomp:{localhost_profile}"


def selinux_reference(selinux_type: str) -> str:
    return f"selinux:{selinux_type}"


def profile_reference(kind: str, name: str) -> str:
    """The reference a pod using the profile carries (the key of the pods-by-profile index)."""
    if kind == SeccompProfile.KIND:
        return seccomp_reference(seccomp_localhost_profile(name))
    return selinux_reference(selinux_usage(name))


def recording_reference(namespace: str, recording: str) -> str:
    return f"{namespace}/{recording}"


class PodSummary(KubernetesObject):
    """What the reconciler keeps of a pod: its identity, the profiles it references, its images and
    the recordings it is annotated for."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    references: frozenset[str] = Field(default_factory=frozenset)
    images: frozenset[str] = Field(default_factory=frozenset)
    recordings: frozenset[str] = Field(default_factory=frozenset)

    @model_validator(mode="before")
    @classmethod
    def _summarise(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or "spec" not in raw:
            return raw
        metadata = raw.get("metadata") or {}
        return {
            "apiVersion": raw.get("apiVersion"),
            "kind": raw.get("kind"),
            "metadata": {
                key: metadata.get(key)
                for key in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
            },
            "references": pod_references(raw),
            "images": pod_images(raw),
            "recordings": pod_recordings(raw),
        }

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace or ''}/{self.metadata.name}"


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _containers(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for field in _POD_LEVEL:
        items = spec.get(field)
        if isinstance(items, list):
            yield from (c for c in items if isinstance(c, Mapping))


def pod_references(pod: Mapping[str, Any]) -> frozenset[str]:
    """The profile references of a pod (see profile_reference); malformed parts are skipped."""
    spec = _dict(pod.get("spec"))
    contexts = [_dict(spec.get("securityContext"))]
    contexts += [_dict(c.get("securityContext")) for c in _containers(spec)]
    found = set()
    for context in contexts:
        seccomp = _dict(context.get("seccompProfile"))
        localhost = seccomp.get("localhostProfile")
        if seccomp.get("type") == _LOCALHOST and _operator_profile(localhost):
            found.add(seccomp_reference(str(localhost)))
        selinux_type = _dict(context.get("seLinuxOptions")).get("type")
        if isinstance(selinux_type, str) and selinux_type.endswith(constants.SELINUX_TYPE_SUFFIX):
            found.add(selinux_reference(selinux_type))
    legacy = _dict(_dict(pod.get("metadata")).get("annotations")).get(constants.ANNOTATION_LEGACY_SECCOMP_POD)
    if isinstance(legacy, str) and legacy.startswith(_LEGACY_LOCALHOST_PREFIX):
        localhost = legacy.removeprefix(_LEGACY_LOCALHOST_PREFIX)
        if _operator_profile(localhost):
            found.add(seccomp_reference(localhost))
    return frozenset(found)


def _operator_profile(localhost: object) -> bool:
    """`operator/<file>`, where our profiles are installed; deeper paths are not ours (inventory §4.6)."""
    if not isinstance(localhost, str):
        return False
    directory, _, file_name = localhost.partition("/")
    return directory == constants.SECCOMP_OPERATOR_DIR and bool(file_name) and "/" not in file_name


def pod_images(pod: Mapping[str, Any]) -> frozenset[str]:
    images = (c.get("image") for c in _containers(_dict(pod.get("spec"))))
    return frozenset(i for i in images if isinstance(i, str))


def pod_recordings(pod: Mapping[str, Any]) -> frozenset[str]:
    """The recordings (`<namespace>/<name>`) whose annotations the pod carries."""
    metadata = _dict(pod.get("metadata"))
    namespace = metadata.get("namespace") or ""
    found = set()
    for key, value in _dict(metadata.get("annotations")).items():
        if isinstance(key, str) and key.startswith(_RECORDING_PREFIXES) and isinstance(value, str):
            recording = value.split("_", 1)[0]
            if recording:
                found.add(recording_reference(str(namespace), recording))
    return frozenset(found)


def binds(binding: ProfileBinding, pod: PodSummary) -> bool:
    """Whether the binding applies to the pod: same namespace, its image, its profile in use."""
    if pod.metadata.namespace != binding.metadata.namespace:
        return False
    image = binding.spec.image
    if image != ProfileBinding.WILDCARD_IMAGE and image not in pod.images:
        return False
    return profile_reference(binding.spec.profile_ref.kind, binding.spec.profile_ref.name) in pod.references


def profile_workloads(pods: Iterable[PodSummary]) -> tuple[str, ...]:
    """`<namespace>/<pod>` of each pod, sorted, as profiles and bindings list them."""
    return tuple(sorted({p.key for p in pods}))


def recording_workloads(pods: Iterable[PodSummary]) -> tuple[str, ...]:
    """Pod names (without namespace), as recordings list them."""
    return tuple(sorted({p.metadata.name or "" for p in pods}))


@dataclass(frozen=True)
class Bookkeeping:
    """The activeWorkloads an object should list and the finalizers it should carry."""

    active_workloads: tuple[str, ...]
    finalizers: tuple[str, ...]
    # The finalizers differ from the current ones (absent ones as well as extra ones).
    finalizers_changed: bool


def bookkeeping(
    workloads: tuple[str, ...],
    lock: str,
    current_finalizers: Iterable[str],
    drop: Iterable[str] = (),
) -> Bookkeeping:
    """Hold `lock` exactly while there are workloads; `drop` lists other finalizers to take away (those
    of nodes that are gone). Order of the others is kept, so an unchanged list is not rewritten."""
    current = list(current_finalizers)
    unwanted = set(drop) | ({lock} if not workloads else set())
    wanted = [f for f in current if f not in unwanted]
    if workloads and lock not in wanted:
        wanted.append(lock)
    return Bookkeeping(workloads, tuple(wanted), wanted != current)
