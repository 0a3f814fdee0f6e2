"""recording.spo.io: mark the containers that ProfileRecordings select so the node agent records them.

Each recorded container gets the annotation `<prefix><container>` = `<recording>_<container>_<nonce>_<unix
seconds>`, the key the agent files the recorded syscalls or AVCs under. Log-based recording also needs
the container to run under the trace profile / recording SELinux type that makes the kernel log events.

In a namespace that records, only this admission writes the recording annotations, since the agent
attributes what it records to the recording they name: an annotation that is already a valid value
for the same recording and container is kept (so decisions are idempotent and a pod update does not
restart the recording), any other value is overwritten, and a recording annotation for a container
(or a pod) that no recording selects is removed, so a pod author cannot forge one.

For the same reason recording fails closed, like its failurePolicy: a request it cannot decode, or a
namespace holding a stored ProfileRecording the model rejects (whose selector cannot be read), is
denied, naming what is wrong. A recording it can read but not use is skipped with a warning.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final

from api.constants import (
    ANNOTATION_TRACE_AVCS_PREFIX,
    ANNOTATION_TRACE_BPF_APPARMOR_PREFIX,
    ANNOTATION_TRACE_BPF_PREFIX,
    ANNOTATION_TRACE_LOGS_PREFIX,
    LOG_ENRICHER_TRACE_PROFILE,
    SELINUX_RECORDING_TYPE,
)
from api.selectors import matches
from api.types import ProfileRecording, SeccompProfile, SelinuxProfile, seccomp_localhost_profile
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny, deny_invalid
from webhooks.decisions.pods import (
    OP_CREATE,
    OP_UPDATE,
    PRIVILEGED_PATH,
    SECCOMP_PROFILE_PATH,
    SELINUX_TYPE_PATH,
    Container,
    FieldPath,
    Op,
    UndecodableRequestError,
    child_object,
    escape,
    get_path,
    localhost_seccomp,
    pod_containers,
    pod_spec,
    request_namespace,
    request_object,
    set_values,
    string_map,
)
from webhooks.snapshot import Snapshot

NONCE_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
NONCE_LENGTH: Final = 5
_VALUE_SUFFIX = re.compile(f"[{NONCE_ALPHABET}]{{{NONCE_LENGTH}}}_[0-9]+")
_LOGS: Final = "logs"
_BPF: Final = "bpf"
_ANNOTATIONS_PATH: Final[FieldPath] = ("metadata", "annotations")

# The valid kind/recorder combinations and the annotation prefix each one is traced under.
_PREFIXES: Final[Mapping[tuple[str, str], str]] = {
    (SeccompProfile.KIND, _LOGS): ANNOTATION_TRACE_LOGS_PREFIX,
    (SeccompProfile.KIND, _BPF): ANNOTATION_TRACE_BPF_PREFIX,
    (SelinuxProfile.KIND, _LOGS): ANNOTATION_TRACE_AVCS_PREFIX,
    ("ApparmorProfile", _BPF): ANNOTATION_TRACE_BPF_APPARMOR_PREFIX,
}


_RECORDING_PREFIXES: Final = tuple(_PREFIXES.values())


def random_nonce() -> str:
    return "".join(secrets.choice(NONCE_ALPHABET) for _ in range(NONCE_LENGTH))


def decide_recording(
    request: Mapping[str, Any], snapshot: Snapshot, *, now: int, nonce: Callable[[], str]
) -> Decision:
    operation = request.get("operation")
    if operation not in (OP_CREATE, OP_UPDATE):
        return Decision(message="pod unchanged")
    try:
        # Pod specs are immutable after creation: on update only the annotations are kept right.
        return _record(request, snapshot, now, nonce, with_spec=operation == OP_CREATE)
    except UndecodableRequestError as error:
        return deny(f"cannot decode the pod to check its recording annotations: {error}", STATUS_BAD_REQUEST)


def _record(
    request: Mapping[str, Any], snapshot: Snapshot, now: int, nonce: Callable[[], str], *, with_spec: bool
) -> Decision:
    namespace = request_namespace(request)
    invalid = snapshot.invalid_objects(ProfileRecording.KIND, namespace)
    if invalid:
        return deny_invalid(invalid, "the recordings of this namespace cannot be applied")
    pod = request_object(request)
    metadata = child_object(pod, "metadata", "object")
    labels = string_map(metadata, "labels", "metadata")
    annotations = string_map(metadata, "annotations", "metadata")
    recordable = list(pod_containers(pod_spec(pod)))

    warnings: list[str] = []
    owners: dict[str, tuple[str, str]] = {}  # annotation key -> (recording, container)
    tracing: dict[str, tuple[Container, dict[FieldPath, Any]]] = {}
    # By name, not in the cache's order, so that replicas agree on which recording wins a container.
    for recording in sorted(snapshot.recordings_in(namespace), key=lambda r: r.metadata.name or ""):
        name = recording.metadata.name or ""
        problem = _unusable(recording)
        if problem is not None:
            warnings.append(f"ProfileRecording {namespace}/{name} skipped: {problem}")
            continue
        if not matches(recording.spec.pod_selector, labels):
            continue
        kind, recorder = recording.spec.kind, recording.spec.recorder
        for container in recordable:
            if container.name is None or not _selects(recording, container.name):
                continue
            key = _PREFIXES[kind, recorder] + container.name
            previous = owners.get(key)
            if previous is not None and previous[0] != name:
                warnings.append(
                    f"container {container.name} is selected by ProfileRecordings {previous[0]} and {name} "
                    f"with the same recorder: {name} records it"
                )
            owners[key] = (name, container.name)
            traced_under = _log_tracing(kind) if with_spec and recorder == _LOGS else None
            if traced_under is not None:
                path, value = traced_under
                tracing.setdefault(container.pointer, (container, {}))[1][path] = value

    patch: list[Op] = []
    for container, values in tracing.values():
        warnings.extend(_tracing_warnings(container, values))
        patch.extend(set_values(container.body, container.pointer, values))
    stale = {
        (*_ANNOTATIONS_PATH, key): f"{owner}_{container_name}_{nonce()}_{now}"
        for key, (owner, container_name) in owners.items()
        if not _is_value_for(annotations.get(key), owner, container_name)
    }
    patch.extend(set_values(pod, "", stale))
    forged = sorted(key for key in annotations if key.startswith(_RECORDING_PREFIXES) and key not in owners)
    patch.extend({"op": "remove", "path": f"/metadata/annotations/{escape(key)}"} for key in forged)
    if forged:
        warnings.append(
            f"removed recording annotations that no ProfileRecording selects: {', '.join(forged)}"
        )
    message = "pod prepared for profile recording" if patch else "pod unchanged"
    return Decision(patch=patch, message=message, warnings=warnings)


def _log_tracing(kind: str) -> tuple[FieldPath, Any] | None:
    """Where and what a container must run under for the kernel to log the events a logs recorder reads.

    The trace profile is cluster-scoped, so it lives at operator/<name>.json (upstream's operator/<ns>/ is
    wrong). A fresh value per call: patches must not share objects with each other or with this module.
    """
    if kind == SeccompProfile.KIND:
        return SECCOMP_PROFILE_PATH, localhost_seccomp(seccomp_localhost_profile(LOG_ENRICHER_TRACE_PROFILE))
    if kind == SelinuxProfile.KIND:
        return SELINUX_TYPE_PATH, SELINUX_RECORDING_TYPE
    return None


def _unusable(recording: ProfileRecording) -> str | None:
    """Why the recording cannot be applied. The CRD rejects bad kind/recorder pairs, but a selector
    operator with(out) values gets through it, and an older CRD may have let anything through."""
    spec = recording.spec
    if (spec.kind, spec.recorder) not in _PREFIXES:
        return f"recorder {spec.recorder} cannot record kind {spec.kind}"
    for requirement in spec.pod_selector.match_expressions or []:
        needs_values = requirement.operator in ("In", "NotIn")
        if needs_values != bool(requirement.values):
            expectation = "needs values" if needs_values else "must not have values"
            return f"podSelector: operator {requirement.operator} on key {requirement.key!r} {expectation}"
    return None


def _selects(recording: ProfileRecording, container: str) -> bool:
    wanted = recording.spec.containers
    return wanted is None or container in wanted


def _is_value_for(value: str | None, recording: str, container: str) -> bool:
    prefix = f"{recording}_{container}_"
    return (
        value is not None
        and value.startswith(prefix)
        and _VALUE_SUFFIX.fullmatch(value, len(prefix)) is not None
    )


def _tracing_warnings(container: Container, values: Mapping[FieldPath, Any]) -> list[str]:
    warnings = []
    if get_path(container.body, PRIVILEGED_PATH) is True:
        warnings.append(f"container {container.name} is privileged: log-based recording cannot trace it")
    for path, value in values.items():
        existing = get_path(container.body, path)
        if existing is not None and existing != value:
            warnings.append(
                f"container {container.name} had {'.'.join(path)} set: the profile recorder overwrote it"
            )
    return warnings
