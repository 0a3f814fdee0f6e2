"""binding.spo.io: set the security profiles that ProfileBindings select on a pod's containers.

Unlike upstream, a binding whose profile is missing, disabled or being deleted denies the pod: the
binding is a security policy, and admitting the pod without it would run the workload unconfined.
Container-level values replace different existing ones (an `Unconfined` set by the pod author must not
bypass the binding); `image: "*"` only fills the pod level where the pod sets nothing.

A container's image can change after creation (`kubectl set image`) and ephemeral containers can be
added (`kubectl debug`), so updates are decided too: a new ephemeral container with a bound image gets
the profile, while a changed image that is bound is refused unless the container already runs under the
profile, since security contexts cannot change once the pod exists. Every other update passes unchanged.

The answer never depends on the order of the bindings: two bindings of one profile kind for the same
image (which the ProfileBinding validator refuses, but which may exist anyway) deny the pod naming both,
and a stored binding the model rejects denies every pod of its namespace, naming the binding: its
intent cannot be read, and acting as if it were absent would leave its pods unprotected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from api.types import (
    ProfileBinding,
    SeccompProfile,
    SelinuxProfile,
    seccomp_localhost_profile,
    selinux_usage,
)
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny, deny_invalid
from webhooks.decisions.pods import (
    OP_CREATE,
    OP_UPDATE,
    SECCOMP_PROFILE_PATH,
    SELINUX_TYPE_PATH,
    SPEC_POINTER,
    Container,
    FieldPath,
    Op,
    UndecodableRequestError,
    containers,
    get_path,
    localhost_seccomp,
    pod_containers,
    pod_spec,
    request_namespace,
    request_object,
    request_old_object,
    set_values,
)
from webhooks.snapshot import Snapshot

_EPHEMERAL: Final = "ephemeralContainers"

# (value to set, why the profile cannot be used or None)
_Resolved = tuple[Any, str | None]


@dataclass(frozen=True)
class _ProfileKind:
    path: FieldPath
    resolve: Callable[[Snapshot, str], _Resolved]


@dataclass(frozen=True)
class _Targets:
    """The containers a request asks to start with some image: those to patch, and those that can no
    longer be patched and must already run under their profile."""

    patchable: list[Container]
    fixed: list[Container]
    pod_level: bool  # whether `image: "*"` bindings apply (the pod is being created)

    def all(self) -> list[Container]:
        return [*self.patchable, *self.fixed]


def decide_binding(request: Mapping[str, Any], snapshot: Snapshot) -> Decision:
    operation = request.get("operation")
    if operation not in (OP_CREATE, OP_UPDATE):
        return Decision(message="not a pod creation or update: nothing to bind")
    try:
        return _bind(request, snapshot, _targets(request, creating=operation == OP_CREATE))
    except UndecodableRequestError as error:
        return deny(f"cannot decode the pod: {error}", code=STATUS_BAD_REQUEST)


def _targets(request: Mapping[str, Any], *, creating: bool) -> _Targets:
    spec = pod_spec(request_object(request))
    if creating:
        return _Targets(patchable=list(pod_containers(spec)), fixed=[], pod_level=True)
    old_spec = pod_spec(request_old_object(request))
    changed = _with_new_images(pod_containers(spec), pod_containers(old_spec))
    added = _with_new_images(containers(spec, _EPHEMERAL), containers(old_spec, _EPHEMERAL))
    return _Targets(patchable=added, fixed=changed, pod_level=False)


def _with_new_images(current: Iterable[Container], old: Iterable[Container]) -> list[Container]:
    """The containers whose image differs from the one their place had before (or that are new)."""
    before = {(c.pointer.rpartition("/")[0], c.name): c.image for c in old}
    return [c for c in current if before.get((c.pointer.rpartition("/")[0], c.name), "") != c.image]


def _bind(request: Mapping[str, Any], snapshot: Snapshot, targets: _Targets) -> Decision:
    namespace = request_namespace(request)
    if not targets.all() and not targets.pod_level:
        # Checked first, so that nothing below can hold up an update that starts no new image.
        return Decision(message="no container starts with a new image: pod unchanged")
    invalid = snapshot.invalid_objects(ProfileBinding.KIND, namespace)
    if invalid:
        return deny_invalid(invalid, "the bindings of this namespace cannot be enforced")
    by_image: dict[str, list[Container]] = {}
    for container in targets.all():
        if container.image is not None:
            by_image.setdefault(container.image, []).append(container)

    applicable = [
        b
        for b in snapshot.binding_index(namespace).applicable(by_image)
        if b.spec.profile_ref.kind in _PROFILE_KINDS
        and (targets.pod_level or b.spec.image != ProfileBinding.WILDCARD_IMAGE)
    ]
    problems = _conflicts(namespace, applicable)
    resolved: dict[tuple[str, str], _Resolved] = {}
    container_values: dict[str, tuple[Container, dict[FieldPath, Any], list[ProfileBinding]]] = {}
    pod_values: dict[FieldPath, Any] = {}
    for binding in applicable:
        ref = binding.spec.profile_ref
        kind = _PROFILE_KINDS[ref.kind]
        key = (ref.kind, ref.name)
        if key not in resolved:
            resolved[key] = kind.resolve(snapshot, ref.name)
        value, problem = resolved[key]
        if problem is not None:
            problems.append(
                f'{_named(namespace, binding)} cannot be applied: {ref.kind} "{ref.name}" {problem}'
            )
        elif binding.spec.image == ProfileBinding.WILDCARD_IMAGE:
            pod_values[kind.path] = value
        else:
            for container in by_image[binding.spec.image]:
                entry = container_values.setdefault(container.pointer, (container, {}, []))
                entry[1][kind.path] = value
                entry[2].append(binding)
    if problems:
        return deny("; ".join(problems))

    fixed = {container.pointer for container in targets.fixed}
    patch: list[Op] = []
    for container, values, bindings in container_values.values():
        ops = set_values(container.body, container.pointer, values)
        if ops and container.pointer in fixed:
            return deny(_unbound_update(namespace, container, bindings))
        patch.extend(ops)
    if pod_values:
        spec = pod_spec(request_object(request))
        unset_at_pod_level = {path: v for path, v in pod_values.items() if get_path(spec, path) is None}
        patch.extend(set_values(spec, SPEC_POINTER, unset_at_pod_level))
    return Decision(patch=patch, message="security profiles bound" if patch else "pod unchanged")


def _conflicts(namespace: str, bindings: Iterable[ProfileBinding]) -> list[str]:
    """Bindings of one profile kind for one image: which one wins would depend on their order."""
    grouped: dict[tuple[str, str], list[ProfileBinding]] = {}
    for binding in bindings:
        grouped.setdefault((binding.spec.image, binding.spec.profile_ref.kind), []).append(binding)
    return [
        f"{' and '.join(_named(namespace, b) for b in group)} each bind a {kind} to image {image}: "
        "delete all but one of them"
        for (image, kind), group in grouped.items()
        if len(group) > 1
    ]


def _unbound_update(namespace: str, container: Container, bindings: list[ProfileBinding]) -> str:
    profiles = ", ".join(
        f"{b.spec.profile_ref.kind} {b.spec.profile_ref.name} ({_named(namespace, b)})" for b in bindings
    )
    return (
        f"container {container.name} would run image {container.image} without {profiles}; a running pod's "
        "security context cannot change: re-create the pod to run this image"
    )


def _named(namespace: str, binding: ProfileBinding) -> str:
    return f"ProfileBinding {namespace}/{binding.metadata.name}"


def _unusable(
    snapshot: Snapshot, profile: SeccompProfile | SelinuxProfile | None, kind: str, name: str
) -> str | None:
    if profile is None:
        stored = [o for o in snapshot.invalid_objects(kind, "") if o.name == name]
        return f"is stored but not valid ({stored[0].reason})" if stored else "does not exist"
    if profile.metadata.deletion_timestamp is not None:
        return "is being deleted"
    if profile.spec.disabled:
        return "is disabled"
    return None


def _resolve_seccomp(snapshot: Snapshot, name: str) -> _Resolved:
    profile = snapshot.seccomp_profile(name)
    installed_as = profile.status.localhost_profile if profile and profile.status else None
    value = localhost_seccomp(installed_as or seccomp_localhost_profile(name))
    return value, _unusable(snapshot, profile, SeccompProfile.KIND, name)


def _resolve_selinux(snapshot: Snapshot, name: str) -> _Resolved:
    profile = snapshot.selinux_profile(name)
    usage = profile.status.usage if profile and profile.status else None
    return usage or selinux_usage(name), _unusable(snapshot, profile, SelinuxProfile.KIND, name)


_PROFILE_KINDS: Mapping[str, _ProfileKind] = {
    SeccompProfile.KIND: _ProfileKind(SECCOMP_PROFILE_PATH, _resolve_seccomp),
    SelinuxProfile.KIND: _ProfileKind(SELINUX_TYPE_PATH, _resolve_selinux),
}
