"""execmetadata.spo.io / nodedebuggingpod.spo.io decisions: the exec request UID in env and audit log."""

from __future__ import annotations

from typing import Any

import pytest

from api.constants import EXEC_REQUEST_UID_ENV
from tests.test_decisions_support import UID, admission, container, edited, patched, pod
from webhooks.decisions import decide_exec_metadata

ASSIGNMENT = f"{EXEC_REQUEST_UID_ENV}={UID}"
TAG = {"name": EXEC_REQUEST_UID_ENV, "value": UID}
AUDIT = {EXEC_REQUEST_UID_ENV: UID}
PATCHED = "UID added to execmetadata"


def exec_options(command: Any) -> dict[str, Any]:
    return {
        "kind": "PodExecOptions",
        "apiVersion": "v1",
        "stdin": True,
        "stdout": True,
        "tty": True,
        "container": "nginx",
        "command": command,
    }


def exec_request(command: Any) -> dict[str, Any]:
    return admission(exec_options(command), operation="CONNECT", kind="PodExecOptions", sub_resource="exec")


COMMANDS = [
    pytest.param(["echo", "hello"], ["env", ASSIGNMENT, "echo", "hello"], id="prepend-env"),
    pytest.param(
        ["sh", "-c", "touch /tmp/testfile.txt"],
        ["env", ASSIGNMENT, "sh", "-c", "touch /tmp/testfile.txt"],
        id="docs-7.9.12",
    ),
    pytest.param(
        ["env", f"{EXEC_REQUEST_UID_ENV}=overwrite", "echo", "hello"],
        ["env", ASSIGNMENT, "echo", "hello"],
        id="forged-uid-replaced",
    ),
    pytest.param(
        ["env", f"{EXEC_REQUEST_UID_ENV}=x\n", "id"],
        ["env", ASSIGNMENT, "id"],
        id="our-prefix-replaced-even-with-newline",
    ),
    pytest.param(
        ["env", f"{EXEC_REQUEST_UID_ENV}=", "env", f"{EXEC_REQUEST_UID_ENV}=x", "id"],
        ["env", ASSIGNMENT, "env", f"{EXEC_REQUEST_UID_ENV}=x", "id"],
        id="only-the-leading-prefix-is-ours",
    ),
    pytest.param(
        ["grep", f"{EXEC_REQUEST_UID_ENV}=", "/proc/1/environ"],
        ["env", ASSIGNMENT, "grep", f"{EXEC_REQUEST_UID_ENV}=", "/proc/1/environ"],
        id="user-argument-untouched",
    ),
    pytest.param(
        [f"{EXEC_REQUEST_UID_ENV}=x", "id"],
        ["env", ASSIGNMENT, f"{EXEC_REQUEST_UID_ENV}=x", "id"],
        id="assignment-without-env-is-an-argument",
    ),
    pytest.param(
        ["env", f"X{EXEC_REQUEST_UID_ENV}=1", "id"],
        ["env", ASSIGNMENT, "env", f"X{EXEC_REQUEST_UID_ENV}=1", "id"],
        id="other-variable-not-mistaken",
    ),
    pytest.param([], ["env", ASSIGNMENT], id="empty-command"),
    pytest.param(
        ["sh", "-c", "id", f"{EXEC_REQUEST_UID_ENV}=forged"],
        ["env", ASSIGNMENT, "sh", "-c", "id", f"{EXEC_REQUEST_UID_ENV}=forged"],
        id="trailing-argument-untouched",
    ),
]


@pytest.mark.parametrize(("command", "expected"), COMMANDS)
def test_exec_command_gets_the_request_uid(command: list[str], expected: list[str]) -> None:
    decision = decide_exec_metadata(exec_request(command))

    assert decision.allowed
    assert decision.message == PATCHED
    assert decision.audit_annotations == AUDIT
    assert patched(exec_options(command), decision) == exec_options(expected)
    assert decision.patch == [{"op": "add", "path": "/command", "value": expected}]


def test_already_tagged_command_needs_no_patch() -> None:
    decision = decide_exec_metadata(exec_request(["env", ASSIGNMENT, "ls"]))

    assert decision.allowed
    assert decision.patch == []
    assert decision.audit_annotations == AUDIT


def debug_container(name: str, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body = container(name, "busybox") | {"targetContainerName": "nginx", "stdin": True, "tty": True}
    if env is not None:
        body["env"] = env
    return body


def with_ephemeral(*containers: dict[str, Any]) -> dict[str, Any]:
    return edited(pod([container("nginx", "nginx")]), ("/spec/ephemeralContainers", list(containers)))


# (old pod or None, new pod, changes the patch must make to the new pod)
EPHEMERAL = [
    pytest.param(
        with_ephemeral(),
        with_ephemeral(debug_container("debug-1")),
        [("/spec/ephemeralContainers/0/env", [TAG])],
        id="first-debug-container",
    ),
    pytest.param(
        with_ephemeral(debug_container("debug-1")),
        with_ephemeral(debug_container("debug-1"), debug_container("debug-2", [{"name": "A", "value": "1"}])),
        [("/spec/ephemeralContainers/1/env", [{"name": "A", "value": "1"}, TAG])],
        id="only-new-container",
    ),
    pytest.param(
        with_ephemeral(),
        with_ephemeral(
            debug_container(
                "debug-1",
                [
                    {"name": EXEC_REQUEST_UID_ENV, "value": "overwritethis"},
                    {"name": "B", "value": "2"},
                    {"name": EXEC_REQUEST_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                ],
            )
        ),
        [("/spec/ephemeralContainers/0/env", [{"name": "B", "value": "2"}, TAG])],
        id="duplicate-env-replaced",
    ),
    pytest.param(
        None,
        with_ephemeral(debug_container("debug-1"), debug_container("debug-2")),
        [("/spec/ephemeralContainers/0/env", [TAG]), ("/spec/ephemeralContainers/1/env", [TAG])],
        id="no-old-object-all-new",
    ),
    pytest.param(
        with_ephemeral(debug_container("debug-1")),
        with_ephemeral(debug_container("debug-1")),
        [],
        id="nothing-new",
    ),
]


@pytest.mark.parametrize(("old", "new", "changes"), EPHEMERAL)
def test_ephemeral_containers(old: dict[str, Any] | None, new: dict[str, Any], changes: list[Any]) -> None:
    request = admission(new, operation="UPDATE", old=old, sub_resource="ephemeralcontainers")

    decision = decide_exec_metadata(request)

    assert decision.allowed
    assert decision.audit_annotations == AUDIT
    assert patched(new, decision) == edited(new, *changes)
    assert decision.message == (PATCHED if changes else "exec request unmodified")


def test_node_debugging_pod_gets_the_uid_in_every_container() -> None:
    debug_pod = pod(
        [container("debugger", "busybox") | {"env": [{"name": "HOST", "value": "/host"}]}],
        init_containers=[container("init", "busybox")],
    )

    decision = decide_exec_metadata(admission(debug_pod))

    assert decision.allowed
    assert decision.message == PATCHED
    assert decision.audit_annotations == AUDIT
    assert patched(debug_pod, decision) == edited(
        debug_pod,
        ("/spec/initContainers/0/env", [TAG]),
        ("/spec/containers/0/env", [{"name": "HOST", "value": "/host"}, TAG]),
    )


UNCHANGED = [
    pytest.param(admission(pod([container("c", "x")]), operation="UPDATE"), id="pod-update"),
    pytest.param(admission(pod([container("c", "x")]), operation="DELETE"), id="pod-delete"),
    pytest.param(admission(pod([container("c", "x")]), sub_resource="binding"), id="other-subresource"),
    pytest.param(admission({"kind": "Deployment"}, kind="Deployment"), id="unknown-kind"),
    pytest.param(admission(pod([container("c", "x")])) | {"kind": None}, id="no-kind"),
]


@pytest.mark.parametrize("request_", UNCHANGED)
def test_other_requests_pass_unchanged_but_audited(request_: dict[str, Any]) -> None:
    decision = decide_exec_metadata(request_)

    assert decision.allowed
    assert decision.patch == []
    assert decision.warnings == []
    assert decision.audit_annotations == AUDIT


UNDECODABLE = [
    pytest.param(exec_request("echo hello"), "command must be a list of strings", id="command-not-a-list"),
    pytest.param(exec_request(["echo", 1]), "command must be a list of strings", id="command-not-strings"),
    pytest.param(exec_request(None) | {"object": None}, "request.object must be an object", id="no-object"),
    pytest.param(
        admission(pod([container("c", "x") | {"env": {"A": "1"}}])),
        "/spec/containers/0/env must be a list of objects",
        id="env-not-a-list",
    ),
    pytest.param(
        admission(with_ephemeral("debug"), operation="UPDATE", sub_resource="ephemeralcontainers"),  # type: ignore[arg-type]
        "spec.ephemeralContainers[0] must be an object",
        id="ephemeral-container-not-a-dict",
    ),
]


@pytest.mark.parametrize(("request_", "message"), UNDECODABLE)
def test_undecodable_request_is_allowed_with_warning(request_: dict[str, Any], message: str) -> None:
    decision = decide_exec_metadata(request_)

    assert decision.allowed
    assert decision.patch == []
    assert len(decision.warnings) == 1
    assert message in decision.warnings[0]
    assert decision.audit_annotations == AUDIT


@pytest.mark.parametrize("uid", [None, "", 42])
def test_request_without_uid_is_allowed_untagged(uid: Any) -> None:
    decision = decide_exec_metadata(exec_request(["ls"]) | {"uid": uid})

    assert decision.allowed
    assert decision.patch == []
    assert decision.audit_annotations == {}
    assert decision.warnings
