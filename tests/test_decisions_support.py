"""Builders shared by the admission decision tests: our resources, pods and AdmissionRequests as the
apiserver sends them, and the pod a decision's patch produces."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from api import constants
from api.types import (
    ProfileBinding,
    ProfileRecording,
    SeccompProfile,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)
from webhooks.decisions import Decision

NAMESPACE = "my-namespace"
UID = "test-uid"
NGINX = "quay.io/security-profiles-operator/test-nginx-unprivileged:1.21"
REDIS = "quay.io/security-profiles-operator/redis:6.2.1"
BUSYBOX = "busybox:latest"
DELETED_AT = "2024-01-01T00:00:00Z"


def _meta(name: str, *, namespace: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if deleting:
        meta["deletionTimestamp"] = DELETED_AT
        meta["finalizers"] = ["keep"]
    return meta


def _api_version(model: type[Any]) -> str:
    return f"{constants.GROUP}/{model.VERSION}"


def seccomp_profile(
    name: str, *, localhost: str | None = None, disabled: bool = False, deleting: bool = False
) -> SeccompProfile:
    obj: dict[str, Any] = {
        "apiVersion": _api_version(SeccompProfile),
        "kind": SeccompProfile.KIND,
        "metadata": _meta(name, deleting=deleting),
        "spec": {"defaultAction": "SCMP_ACT_ERRNO", "disabled": disabled},
    }
    if localhost is not None:
        obj["status"] = {"status": "Installed", "localhostProfile": localhost}
    return SeccompProfile.model_validate(obj)


def selinux_profile(
    name: str, *, usage: str | None = None, disabled: bool = False, deleting: bool = False
) -> SelinuxProfile:
    obj: dict[str, Any] = {
        "apiVersion": _api_version(SelinuxProfile),
        "kind": SelinuxProfile.KIND,
        "metadata": _meta(name, deleting=deleting),
        "spec": {"disabled": disabled},
    }
    if usage is not None:
        obj["status"] = {"status": "Installed", "usage": usage}
    return SelinuxProfile.model_validate(obj)


def binding(name: str, kind: str, profile: str, image: str, namespace: str = NAMESPACE) -> ProfileBinding:
    return ProfileBinding.model_validate(
        {
            "apiVersion": _api_version(ProfileBinding),
            "kind": ProfileBinding.KIND,
            "metadata": _meta(name, namespace=namespace),
            "spec": {"profileRef": {"kind": kind, "name": profile}, "image": image},
        }
    )


def recording(
    name: str,
    kind: str = "SeccompProfile",
    recorder: str = "logs",
    *,
    match_labels: dict[str, str] | None = None,
    containers: list[str] | None = None,
    namespace: str = NAMESPACE,
) -> ProfileRecording:
    spec: dict[str, Any] = {
        "kind": kind,
        "recorder": recorder,
        "podSelector": {"matchLabels": {"app": "my-app"} if match_labels is None else match_labels},
    }
    if containers is not None:
        spec["containers"] = containers
    return ProfileRecording.model_validate(
        {
            "apiVersion": _api_version(ProfileRecording),
            "kind": ProfileRecording.KIND,
            "metadata": _meta(name, namespace=namespace),
            "spec": spec,
        }
    )


def spod(allowed_system_profiles: list[str] | None) -> SecurityProfilesOperatorDaemon:
    spec: dict[str, Any] = {}
    if allowed_system_profiles is not None:
        spec["selinuxOptions"] = {"allowedSystemProfiles": allowed_system_profiles}
    return SecurityProfilesOperatorDaemon.model_validate(
        {
            "apiVersion": _api_version(SecurityProfilesOperatorDaemon),
            "kind": SecurityProfilesOperatorDaemon.KIND,
            "metadata": _meta(constants.SPOD_NAME, namespace=constants.DEFAULT_NAMESPACE),
            "spec": spec,
        }
    )


def container(name: str, image: str, security_context: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": image}
    if security_context is not None:
        body["securityContext"] = security_context
    return body


def pod(
    containers: list[dict[str, Any]],
    *,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    security_context: dict[str, Any] | None = None,
    name: str = "test-pod",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": containers}
    if init_containers is not None:
        spec["initContainers"] = init_containers
    if security_context is not None:
        spec["securityContext"] = security_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def admission(
    obj: Any,
    *,
    operation: str = "CREATE",
    kind: str = "Pod",
    old: Any = None,
    sub_resource: str | None = None,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionRequest for obj."""
    request: dict[str, Any] = {
        "uid": UID,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "kube:admin"},
        "object": obj,
    }
    if old is not None:
        request["oldObject"] = old
    if sub_resource is not None:
        request["subResource"] = sub_resource
    return request


def patched(obj: Any, decision: Decision) -> Any:
    """obj after the decision's patch, which must apply cleanly (obj itself is left as it was)."""
    return jsonpatch.apply_patch(obj, decision.patch)


def edited(obj: dict[str, Any], *changes: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy of obj with ('/json/pointer', value) set, creating missing objects on the way."""
    result = copy.deepcopy(obj)
    for pointer, value in changes:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    return result
