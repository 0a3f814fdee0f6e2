"""binding.spo.io: set the security profiles that ProfileBindings select on a pod being created.

Unlike upstream, a binding whose profile is missing, disabled or being deleted denies the pod: the
binding is a security policy, and admitting the pod without it would run the workload unconfined.
Container-level values replace different existing ones (an `Unconfined` set by the pod author must not
bypass the binding); `image: "*"` only fills the pod level where the pod sets nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from api.types import (
    ProfileBinding,
    SeccompProfile,
    SelinuxProfile,
    seccomp_localhost_profile,
    selinux_usage,
)
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny
from webhooks.decisions.pods import (
    OP_CREATE,
    SECCOMP_PROFILE_PATH,
    SELINUX_TYPE_PATH,
    SPEC_POINTER,
    Container,
    FieldPath,
    Op,
    UndecodableRequestError,
    get_path,
    localhost_seccomp,
    pod_containers,
    pod_spec,
    request_namespace,
    request_object,
    set_values,
)
from webhooks.snapshot import Snapshot

# (value to set, why the profile cannot be used or None)
_Resolved = tuple[Any, str | None]


@dataclass(frozen=True)
class _ProfileKind:
    path: FieldPath
    resolve: Callable[[Snapshot, str], _Resolved]


def decide_binding(request: Mapping[str, Any], snapshot: Snapshot) -> Decision:
    if request.get("operation") != OP_CREATE:
        # Pod security contexts are immutable after creation: there is nothing to bind.
        return Decision(message="not a pod creation: nothing to bind")
    try:
        return _bind(request, snapshot)
    except UndecodableRequestError as error:
        return deny(f"cannot decode the pod: {error}", code=STATUS_BAD_REQUEST)


def _bind(request: Mapping[str, Any], snapshot: Snapshot) -> Decision:
    namespace = request_namespace(request)
    spec = pod_spec(request_object(request))
    by_image: dict[str, list[Container]] = {}
    for container in pod_containers(spec):
        if container.image is not None:
            by_image.setdefault(container.image, []).append(container)

    resolved: dict[tuple[str, str], _Resolved] = {}
    container_values: dict[str, tuple[Container, dict[FieldPath, Any]]] = {}
    pod_values: dict[FieldPath, Any] = {}
    problems: list[str] = []
    for binding in snapshot.binding_index(namespace).applicable(by_image):
        ref = binding.spec.profile_ref
        kind = _PROFILE_KINDS.get(ref.kind)
        if kind is None:
            continue
        wildcard = binding.spec.image == ProfileBinding.WILDCARD_IMAGE
        targets = by_image.get(binding.spec.image, ())
        key = (ref.kind, ref.name)
        if key not in resolved:
            resolved[key] = kind.resolve(snapshot, ref.name)
        value, problem = resolved[key]
        if problem is not None:
            problems.append(
                f"ProfileBinding {namespace}/{binding.metadata.name} cannot be applied: "
                f'{ref.kind} "{ref.name}" {problem}'
            )
        elif wildcard:
            pod_values[kind.path] = value
        else:
            for container in targets:
                container_values.setdefault(container.pointer, (container, {}))[1][kind.path] = value
    if problems:
        return deny("; ".join(problems))

    patch: list[Op] = []
    for container, values in container_values.values():
        patch.extend(set_values(container.body, container.pointer, values))
    unset_at_pod_level = {path: value for path, value in pod_values.items() if get_path(spec, path) is None}
    patch.extend(set_values(spec, SPEC_POINTER, unset_at_pod_level))
    return Decision(patch=patch, message="security profiles bound" if patch else "pod unchanged")


def _unusable(profile: SeccompProfile | SelinuxProfile | None) -> str | None:
    if profile is None:
        return "does not exist"
    if profile.metadata.deletion_timestamp is not None:
        return "is being deleted"
    if profile.spec.disabled:
        return "is disabled"
    return None


def _resolve_seccomp(snapshot: Snapshot, name: str) -> _Resolved:
    profile = snapshot.seccomp_profile(name)
    installed_as = profile.status.localhost_profile if profile and profile.status else None
    return localhost_seccomp(installed_as or seccomp_localhost_profile(name)), _unusable(profile)


def _resolve_selinux(snapshot: Snapshot, name: str) -> _Resolved:
    profile = snapshot.selinux_profile(name)
    usage = profile.status.usage if profile and profile.status else None
    return usage or selinux_usage(name), _unusable(profile)


_PROFILE_KINDS: Mapping[str, _ProfileKind] = {
    SeccompProfile.KIND: _ProfileKind(SECCOMP_PROFILE_PATH, _resolve_seccomp),
    SelinuxProfile.KIND: _ProfileKind(SELINUX_TYPE_PATH, _resolve_selinux),
}
