"""execmetadata.spo.io / nodedebuggingpod.spo.io: tag exec sessions and debug containers with the request UID.

The UID goes into the process environment (where the JSON enricher reads it from /proc/<pid>/environ)
and into the apiserver audit event (as an audit annotation), which makes the two logs joinable. It is
observability only, so this webhook never denies: an odd request is let through untagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from api.constants import EXEC_REQUEST_UID_ENV
from webhooks.decisions.decision import Decision
from webhooks.decisions.pods import (
    OP_CREATE,
    Container,
    Op,
    UndecodableRequestError,
    admission_kind,
    containers,
    pod_containers,
    pod_spec,
    request_object,
)

PATCHED_MESSAGE: Final = "UID added to execmetadata"
_EPHEMERAL_CONTAINERS: Final = "ephemeralContainers"
_EPHEMERAL_SUBRESOURCE: Final = "ephemeralcontainers"
# Upstream matches the regex ^<env>=.*$, where '.' stops at a newline: a leading "env <env>=x\n" would
# survive next to ours. A prefix test has no such gap.
_ASSIGNMENT_PREFIX: Final = f"{EXEC_REQUEST_UID_ENV}="
_ENV: Final = "env"


def decide_exec_metadata(request: Mapping[str, Any]) -> Decision:
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        warning = "request.uid must be a non-empty string: exec request not tagged"
        return Decision(message=warning, warnings=[warning])
    audit = {EXEC_REQUEST_UID_ENV: uid}
    try:
        patch = _patch(request, uid)
    except UndecodableRequestError as error:
        warning = f"exec request not tagged with its UID: {error}"
        return Decision(message=warning, warnings=[warning], audit_annotations=audit)
    if not patch:
        return Decision(message="exec request unmodified", audit_annotations=audit)
    return Decision(patch=patch, message=PATCHED_MESSAGE, audit_annotations=audit)


def _patch(request: Mapping[str, Any], uid: str) -> list[Op]:
    kind = admission_kind(request)
    if kind == "PodExecOptions":
        return _command_patch(request_object(request), uid)
    if kind != "Pod":
        return []
    subresource = request.get("subResource")
    if subresource == _EPHEMERAL_SUBRESOURCE:
        return _env_patch(_new_ephemeral_containers(request), uid)
    if not subresource and request.get("operation") == OP_CREATE:
        # A node debugging pod (the webhook's objectSelector picks kubectl/oc debug pods).
        return _env_patch(pod_containers(pod_spec(request_object(request))), uid)
    return []


def _command_patch(options: Mapping[str, Any], uid: str) -> list[Op]:
    command = options.get("command")
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise UndecodableRequestError("request.object.command must be a list of strings")
    assignment = f"{_ASSIGNMENT_PREFIX}{uid}"
    # Only the first two words can be our prefix (a retried or replayed request carries one with another
    # UID): they are replaced. Every other word is the user's, and rewriting it would change what the
    # command means (`grep <variable>= file`), so ours is prepended instead.
    if len(command) >= 2 and command[0] == _ENV and command[1].startswith(_ASSIGNMENT_PREFIX):
        tagged = [_ENV, assignment, *command[2:]]
    else:
        tagged = [_ENV, assignment, *command]
    return [] if tagged == command else [{"op": "add", "path": "/command", "value": tagged}]


def _new_ephemeral_containers(request: Mapping[str, Any]) -> list[Container]:
    """The ephemeral containers this request adds; the ones already running have their own sessions."""
    current = containers(pod_spec(request_object(request)), _EPHEMERAL_CONTAINERS)
    old_pod = request.get("oldObject")
    old = containers(pod_spec(old_pod), _EPHEMERAL_CONTAINERS) if isinstance(old_pod, dict) else []
    existing = {container.name for container in old}
    return [container for container in current if container.name not in existing]


def _env_patch(targets: Iterable[Container], uid: str) -> list[Op]:
    patch = []
    for container in targets:
        env = container.body.get("env") or []
        if not isinstance(env, list) or not all(isinstance(var, dict) for var in env):
            raise UndecodableRequestError(f"{container.pointer}/env must be a list of objects")
        tagged = [var for var in env if var.get("name") != EXEC_REQUEST_UID_ENV]
        tagged.append({"name": EXEC_REQUEST_UID_ENV, "value": uid})
        if tagged != env:
            # add, not replace: it works whether or not the container has an env list yet.
            patch.append({"op": "add", "path": f"{container.pointer}/env", "value": tagged})
    return patch
