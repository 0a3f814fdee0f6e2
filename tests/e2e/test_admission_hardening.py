"""The ways around a binding, tried as a user would against the real apiserver, and what stops them:
a label on the pod, a malformed binding, a changed image, an ephemeral container, conflicting bindings
answered by replicas of different ages, forged recording annotations, and the debug-pod audit key."""

from __future__ import annotations

import base64
import copy
import json
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

import manifests.crds
from api import constants, kinds
from api.types import ProfileBinding, SPODSpec
from spo import localcluster
from tests.conftest import (
    E2E_SPOD_SPEC,
    WebhookServer,
    register_webhooks,
    start_webhook_server,
    webhook_down,
)
from tests.docs_examples import merge_patch, spod_patches
from tests.e2e.test_webhooks import (
    NGINX,
    _apply,
    _audit_annotation,
    _create_pod,
    _docs_object,
    _env,
    _pod_review,
    _profile,
    _wait_for_cache,
)
from tests.kubectl import dry_run_create, kubectl, kubectl_json
from tests.test_docs_examples import INVALID

pytestmark = pytest.mark.e2e

BUSYBOX = "busybox:1.36"
OTHER = "quay.io/security-profiles-operator/redis:6.2.1"
BOUND = {"type": "Localhost", "localhostProfile": "operator/profile.json"}


def _bound_namespace(kubeconfig: Path, namespace: str, image: str = NGINX) -> None:
    """The docs' 7.6.2.1 set-up: a SeccompProfile `profile`, a binding of it to `image`, the label."""
    _apply(kubeconfig, _profile("SeccompProfile", "profile"))
    binding = _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile")
    binding["spec"]["image"] = image
    _apply(kubeconfig, binding, namespace)
    kubectl(kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_BINDING}=true")
    _wait_for_cache(kubeconfig, namespace, "operator/profile.json", _pod(image))


def _pod(image: str, name: str = "test-pod", labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The docs' test-pod, with another image (and labels)."""
    metadata: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    containers = [{"name": "test-container", "image": image}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": containers}}


def _binding(name: str, profile: str, image: str = NGINX) -> dict[str, Any]:
    return {
        "apiVersion": kinds.PROFILE_BINDING.api_version,
        "kind": ProfileBinding.KIND,
        "metadata": {"name": name},
        "spec": {"profileRef": {"kind": "SeccompProfile", "name": profile}, "image": image},
    }


@contextmanager
def _validators_unregistered(
    cluster: localcluster.ControlPlane, kube: client.ApiClient, server: WebhookServer
) -> Iterator[None]:
    """Objects written meanwhile bypass the validating webhooks, as if written before they existed."""
    client.AdmissionregistrationV1Api(kube).delete_validating_webhook_configuration(
        constants.VALIDATING_WEBHOOK_CONFIGURATION
    )
    try:
        yield
    finally:
        register_webhooks(cluster, kube, server.url)


# --- 1. label escape ------------------------------------------------------------------------------------


def test_our_pod_label_does_not_escape_the_binding(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _bound_namespace(kubeconfig, namespace)
    disguised = _pod(NGINX, labels={constants.LABEL_NAME: constants.SPOD_NAME_LABEL_VALUE})

    assert _create_pod(kubeconfig, namespace, disguised).returncode == 0

    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")
    assert pod["spec"]["containers"][0]["securityContext"]["seccompProfile"] == BOUND


def test_operator_namespace_pods_are_not_bound(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    """Labelled for binding and holding a binding to a missing profile, the operator namespace still
    admits its pods: the webhook never stands between the operator and its own pods."""
    kubeconfig = control_plane.kubeconfig
    operator_namespace = constants.DEFAULT_NAMESPACE
    _apply(kubeconfig, _binding("missing-binding", "no-such-profile"), operator_namespace)
    label = f"{constants.LABEL_ENABLE_BINDING}=true"
    kubectl(kubeconfig, "label", "--overwrite", "ns", operator_namespace, label)
    try:
        # Watch events arrive in order: once this later binding shows, the cache has the first one too.
        _apply(kubeconfig, _binding("missing-binding", "no-such-profile"), namespace)
        kubectl(kubeconfig, "label", "ns", namespace, label)
        _wait_for_cache(kubeconfig, namespace, "no-such-profile", _pod(NGINX))
        name = f"own-{time.monotonic_ns()}"
        created = _create_pod(kubeconfig, operator_namespace, _pod(NGINX, name=name))
        assert created.returncode == 0, created.stderr
        kubectl(kubeconfig, "-n", operator_namespace, "delete", "pod", name, "--wait=false")
    finally:
        kubectl(kubeconfig, "label", "ns", operator_namespace, f"{constants.LABEL_ENABLE_BINDING}-")
        kubectl(kubeconfig, "-n", operator_namespace, "delete", "profilebinding", "missing-binding")


# --- 2. malformed binding -------------------------------------------------------------------------------


def test_every_rule_of_the_models_is_enforced_by_the_apiserver(
    control_plane: localcluster.ControlPlane, namespace: str
) -> None:
    malformed = _binding("bad", "MyProfile")
    objects: list[dict[str, Any]] = [copy.deepcopy(dict(param.values[0])) for param in INVALID]  # type: ignore[call-overload]
    objects.append(malformed)
    for obj in objects:
        if obj["kind"] in ("ProfileRecording", "ProfileBinding"):
            obj["metadata"]["namespace"] = namespace
        result = dry_run_create(control_plane.kubeconfig, json.dumps(obj))
        assert result.returncode != 0, obj
        assert "is invalid" in result.stderr, result.stderr


def _permissive(crd: dict[str, Any]) -> dict[str, Any]:
    """The ProfileBinding CRD as an older release could have had it: any profile name."""
    permissive = copy.deepcopy(crd)
    schema = permissive["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["profileRef"]["properties"]["name"] = {"type": "string"}
    return permissive


def test_binding_stored_under_a_permissive_crd_denies_the_pods_of_its_namespace(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    webhook_server: WebhookServer,
    namespace: str,
) -> None:
    kubeconfig = control_plane.kubeconfig
    strict = manifests.crds.crd(kinds.PROFILE_BINDING)
    localcluster.install_crds(kube, [_permissive(strict)])
    try:
        with _validators_unregistered(control_plane, kube, webhook_server):
            _apply(kubeconfig, _binding("legacy-binding", "MyProfile"), namespace)
    finally:
        localcluster.install_crds(kube, [strict])
    kubectl(kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_BINDING}=true")

    output = _wait_for_cache(kubeconfig, namespace, "legacy-binding")

    assert f"ProfileBinding {namespace}/legacy-binding is stored but not valid" in output
    assert "spec.profileRef.name" in output
    assert _create_pod(kubeconfig, namespace, _pod(NGINX)).returncode != 0


# --- 3. image changes and ephemeral containers ----------------------------------------------------------


def test_set_image_to_a_bound_image_is_refused_naming_the_binding(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _bound_namespace(kubeconfig, namespace)
    assert _create_pod(kubeconfig, namespace, _pod(BUSYBOX)).returncode == 0

    refused = kubectl(
        kubeconfig, "-n", namespace, "set", "image", "pod/test-pod", f"test-container={NGINX}", check=False
    )
    allowed = kubectl(
        kubeconfig, "-n", namespace, "set", "image", "pod/test-pod", f"test-container={OTHER}", check=False
    )

    assert refused.returncode != 0
    assert f"ProfileBinding {namespace}/nginx-binding" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")
    assert pod["spec"]["containers"][0]["image"] == OTHER


def test_ephemeral_container_with_a_bound_image_gets_the_profile(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _bound_namespace(kubeconfig, namespace)
    assert _create_pod(kubeconfig, namespace, _pod(BUSYBOX)).returncode == 0

    kubectl(
        kubeconfig, "-n", namespace, "debug", "test-pod", f"--image={NGINX}", "--container=dbg", "--", "sh"
    )

    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")
    (debugger,) = pod["spec"]["ephemeralContainers"]
    assert debugger["securityContext"]["seccompProfile"] == BOUND


def test_ephemeral_container_with_a_bound_image_and_no_profile_is_refused(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _apply(kubeconfig, _binding("missing-binding", "no-such-profile"), namespace)
    kubectl(kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_BINDING}=true")
    _wait_for_cache(kubeconfig, namespace, "no-such-profile", _pod(NGINX))
    assert _create_pod(kubeconfig, namespace, _pod(BUSYBOX)).returncode == 0

    result = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "debug",
        "test-pod",
        f"--image={NGINX}",
        "--container=dbg",
        "--",
        "sh",
        check=False,
    )

    assert result.returncode != 0
    assert "missing-binding" in result.stderr
    assert (
        "ephemeralContainers"
        not in kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")["spec"]
    )


def test_with_the_webhook_down_only_image_changes_wait_for_it(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    webhook_server: WebhookServer,
    namespace: str,
) -> None:
    kubeconfig = control_plane.kubeconfig
    _bound_namespace(kubeconfig, namespace)
    kubectl(kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_RECORDING}=true")
    assert _create_pod(kubeconfig, namespace, _pod(NGINX)).returncode == 0
    with webhook_down(control_plane, kube, webhook_server):
        pod = ["-n", namespace, "pod/test-pod"]
        kubectl(kubeconfig, "label", *pod, "tier=web")
        kubectl(
            kubeconfig,
            "patch",
            *pod,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":["example.com/keep"]}}',
        )
        kubectl(kubeconfig, "patch", *pod, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        refused = kubectl(kubeconfig, "set", "image", *pod, f"test-container={BUSYBOX}", check=False)
        kubectl(kubeconfig, "delete", *pod, "--wait=false")
    assert refused.returncode != 0
    assert "failed calling webhook" in refused.stderr and constants.WEBHOOK_BINDING in refused.stderr


# --- 4. conflicting bindings ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", [("a-first", "b-second"), ("b-second", "a-first")])
def test_second_conflicting_binding_is_refused_naming_the_first(
    control_plane: localcluster.ControlPlane,
    webhook_server: WebhookServer,
    namespace: str,
    order: tuple[str, str],
) -> None:
    kubeconfig = control_plane.kubeconfig
    first, second = order
    _apply(kubeconfig, _binding(first, "profile"), namespace)
    conflicting = yaml.safe_dump(
        _binding(second, "other") | {"metadata": {"name": second, "namespace": namespace}}
    )
    deadline = time.monotonic() + 15
    while True:
        result = dry_run_create(kubeconfig, conflicting, namespace=namespace)
        if result.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert (
        f"ProfileBinding {namespace}/{first} already binds a SeccompProfile to image {NGINX}" in result.stderr
    )
    assert (
        kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=conflicting, check=False).returncode
        != 0
    )


def _sees_a_first(answer: dict[str, Any]) -> bool:
    """Whether the answer shows the binding created last (named, or its profile patched in)."""
    response = answer["response"]
    patch = base64.b64decode(response.get("patch", "")).decode()
    return "a-first" in response.get("status", {}).get("message", "") or "p-a.json" in patch


def test_replicas_of_different_ages_answer_conflicting_bindings_alike(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    webhook_server: WebhookServer,
    namespace: str,
) -> None:
    """The session's replica saw the bindings arrive (b, then a); the new one lists them (a, b)."""
    kubeconfig = control_plane.kubeconfig
    for name in ("p-a", "p-b"):
        _apply(kubeconfig, _profile("SeccompProfile", name))
    with _validators_unregistered(control_plane, kube, webhook_server):
        _apply(kubeconfig, _binding("b-second", "p-b"), namespace)
        _apply(kubeconfig, _binding("a-first", "p-a"), namespace)
    review = _pod_review(namespace, _pod(NGINX))
    context = ssl.create_default_context(cafile=str(control_plane.pki.ca_cert))
    with httpx.Client(verify=context) as http:
        path = f"{webhook_server.url}{constants.PATH_BINDING}"
        deadline = time.monotonic() + 15
        while not _sees_a_first(old := http.post(path, json=review).json()):
            assert time.monotonic() < deadline, old
            time.sleep(0.2)
        late = start_webhook_server(control_plane, localcluster.free_port())
        try:
            new = http.post(f"{late.url}{constants.PATH_BINDING}", json=review).json()
        finally:
            late.stop()

    assert new == old
    assert old["response"]["allowed"] is False
    message = old["response"]["status"]["message"]
    assert f"ProfileBinding {namespace}/a-first and ProfileBinding {namespace}/b-second" in message


# --- 5. forged recording annotations --------------------------------------------------------------------


def test_forged_recording_annotations_are_removed(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    kubectl(kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_RECORDING}=true")
    recording = _docs_object("ProfileRecording", "test-recording", "SeccompProfile")
    recording["spec"]["containers"] = ["nginx"]
    _apply(kubeconfig, recording, namespace)
    forged_key = f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}redis"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "my-pod",
            "labels": {"app": "my-app"},
            "annotations": {forged_key: "test-recording_redis_bbbbb_1", "team": "a"},
        },
        "spec": {
            "containers": [
                {"name": "nginx", "image": NGINX},
                {"name": "redis", "image": OTHER},
            ]
        },
    }
    _wait_for_cache(kubeconfig, namespace, f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}nginx", pod)

    assert _create_pod(kubeconfig, namespace, pod).returncode == 0

    annotations = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "my-pod")["metadata"]["annotations"]
    assert forged_key not in annotations
    assert annotations["team"] == "a"
    assert annotations[f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}nginx"].startswith("test-recording_nginx_")

    # Annotations are mutable: forging one later is an update, which the webhook sees too.
    kubectl(
        kubeconfig, "-n", namespace, "annotate", "pod", "my-pod", f"{forged_key}=test-recording_redis_bbbbb_2"
    )
    annotated = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "my-pod")["metadata"]["annotations"]
    assert forged_key not in annotated
    assert annotated == annotations


# --- the debug-pod audit key of docs 7.9.17.1 -----------------------------------------------------------


def test_docs_extra_debug_selector_is_audited_under_the_documented_key(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    webhook_server: WebhookServer,
    namespace: str,
) -> None:
    patch = next(e["patch"] for e in spod_patches() if e["section"] == "7.9.17.1")
    spec = SPODSpec.model_validate(merge_patch(E2E_SPOD_SPEC.to_dict(), patch["spec"]))
    register_webhooks(control_plane, kube, webhook_server.url, spec)
    kubeconfig = control_plane.kubeconfig
    try:
        labels = {constants.LABEL_OC_DEBUG: constants.OC_DEBUG_VALUE}
        assert _create_pod(kubeconfig, namespace, _pod(BUSYBOX, "node-debug", labels)).returncode == 0
        assert _create_pod(kubeconfig, namespace, _pod(BUSYBOX, "plain", {"app": "x"})).returncode == 0
    finally:
        register_webhooks(control_plane, kube, webhook_server.url)

    plain = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "plain")
    assert "env" not in plain["spec"]["containers"][0]
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "node-debug")
    uid = _env(pod["spec"]["containers"][0])[constants.EXEC_REQUEST_UID_ENV]
    key = f"{constants.WEBHOOK_NODE_DEBUGGING_POD}/{constants.EXEC_REQUEST_UID_ENV}"
    assert _audit_annotation(control_plane.audit_log, namespace, "node-debug", key, None) == uid
