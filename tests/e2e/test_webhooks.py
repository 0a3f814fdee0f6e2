"""Webhook acceptance against the real apiserver, following the docs' procedures with kubectl."""

from __future__ import annotations

import copy
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from api.types import SPODSpec
from reconciler.webhook_config import (
    Endpoint,
    desired_mutating_configuration,
    desired_validating_configuration,
)
from spo import localcluster
from tests.conftest import WebhookServer, start_webhook_server, webhook_down
from tests.docs_examples import DOCS_RECORDED_POD, docs_objects
from tests.kubectl import dry_run_create, kubectl, kubectl_json

pytestmark = pytest.mark.e2e

NGINX = "quay.io/security-profiles-operator/test-nginx-unprivileged:1.21"
TEST_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "test-pod"},
    "spec": {"containers": [{"name": "test-container", "image": NGINX}]},
}


def _docs_object(kind: str, name: str, spec_kind: str | None = None) -> dict[str, Any]:
    for obj in docs_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            inner = obj["spec"].get("profileRef", obj["spec"]).get("kind")
            if spec_kind is None or inner == spec_kind:
                return copy.deepcopy(obj)
    raise KeyError((kind, name, spec_kind))


def _apply(kubeconfig: Path, obj: dict[str, Any], namespace: str | None = None) -> None:
    args = ["-n", namespace] if namespace else []
    if namespace:
        obj["metadata"]["namespace"] = namespace
    kubectl(kubeconfig, *args, "apply", "-f", "-", stdin=yaml.safe_dump(obj))


def _create_pod(kubeconfig: Path, namespace: str, pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=yaml.safe_dump(pod), check=False)


def _profile(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"defaultAction": "SCMP_ACT_LOG"} if kind == "SeccompProfile" else {}
    version = "v1beta1" if kind == "SeccompProfile" else "v1alpha2"
    return {
        "apiVersion": f"security-profiles-operator.x-k8s.io/{version}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def _wait_for_cache(kubeconfig: Path, namespace: str, expect: str, pod: dict[str, Any] = TEST_POD) -> str:
    """The webhook's caches are eventually consistent: retry a dry-run create until `expect` shows."""
    deadline = time.monotonic() + 15
    output = ""
    while time.monotonic() < deadline:
        result = dry_run_create(kubeconfig, yaml.safe_dump(pod), "-o", "json", namespace=namespace)
        output = result.stdout + result.stderr
        if expect in output:
            return output
        time.sleep(0.2)
    raise AssertionError(f"webhook never produced {expect!r}: {output}")


@pytest.mark.parametrize(
    ("kind", "jsonpath", "expected"),
    [
        (
            "SeccompProfile",
            "{.spec.containers[*].securityContext.seccompProfile}",
            {"localhostProfile": "operator/profile.json", "type": "Localhost"},
        ),
        ("SelinuxProfile", "{.spec.containers[*].securityContext.seLinuxOptions.type}", "profile.process"),
    ],
)
def test_binding_as_in_the_docs(
    control_plane: localcluster.ControlPlane,
    webhook_server: WebhookServer,
    namespace: str,
    kind: str,
    jsonpath: str,
    expected: Any,
) -> None:
    kubeconfig = control_plane.kubeconfig
    _apply(kubeconfig, _profile(kind, "profile"))
    _apply(kubeconfig, _docs_object("ProfileBinding", "nginx-binding", kind), namespace)
    kubectl(kubeconfig, "label", "ns", namespace, "spo.x-k8s.io/enable-binding=true")
    _wait_for_cache(kubeconfig, namespace, "profile")
    assert _create_pod(kubeconfig, namespace, TEST_POD).returncode == 0
    output = kubectl(
        kubeconfig, "-n", namespace, "get", "pod", "test-pod", "-o", f"jsonpath={jsonpath}"
    ).stdout
    assert (json.loads(output) if isinstance(expected, dict) else output) == expected


def test_unlabelled_namespace_is_left_alone(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _apply(kubeconfig, _profile("SeccompProfile", "profile"))
    _apply(kubeconfig, _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile"), namespace)
    assert _create_pod(kubeconfig, namespace, TEST_POD).returncode == 0
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")
    assert "securityContext" not in pod["spec"]["containers"][0]


def test_binding_to_a_missing_profile_denies_the_pod(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    binding = _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile")
    binding["spec"]["profileRef"]["name"] = "does-not-exist"
    _apply(kubeconfig, binding, namespace)
    kubectl(kubeconfig, "label", "ns", namespace, "spo.x-k8s.io/enable-binding=true")
    output = _wait_for_cache(kubeconfig, namespace, "does-not-exist")
    assert "denied the request" in output and "nginx-binding" in output
    assert _create_pod(kubeconfig, namespace, TEST_POD).returncode != 0


def test_stopped_webhook_fails_closed_only_where_opted_in(
    control_plane: localcluster.ControlPlane, kube: client.ApiClient, webhook_server: WebhookServer
) -> None:
    kubeconfig = control_plane.kubeconfig
    labelled, plain = f"fail-{time.monotonic_ns()}", f"open-{time.monotonic_ns()}"
    localcluster.ensure_namespace(kube, labelled, {"spo.x-k8s.io/enable-binding": "true"})
    localcluster.ensure_namespace(kube, plain)
    with webhook_down(control_plane, kube, webhook_server):
        refused = _create_pod(kubeconfig, labelled, TEST_POD)
        assert refused.returncode != 0
        assert "failed calling webhook" in refused.stderr and "binding.spo.io" in refused.stderr
        assert _create_pod(kubeconfig, plain, TEST_POD).returncode == 0


def test_recording_as_in_the_docs(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    kubectl(kubeconfig, "label", "ns", namespace, "spo.x-k8s.io/enable-recording=true")
    _apply(kubeconfig, _docs_object("ProfileRecording", "test-recording", "SeccompProfile"), namespace)
    my_pod = copy.deepcopy(DOCS_RECORDED_POD)
    _wait_for_cache(kubeconfig, namespace, "io.containers.trace-logs/nginx", my_pod)
    kubectl(kubeconfig, "-n", namespace, "create", "-f", "-", stdin=yaml.safe_dump(my_pod))
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "my-pod")
    annotations = pod["metadata"]["annotations"]
    for container in pod["spec"]["containers"]:
        value = annotations[f"io.containers.trace-logs/{container['name']}"]
        assert value.startswith(f"test-recording_{container['name']}_")
        assert container["securityContext"]["seccompProfile"] == {
            "type": "Localhost",
            "localhostProfile": "operator/log-enricher-trace.json",
        }


def test_exec_request_uid_reaches_the_audit_log(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    assert _create_pod(kubeconfig, namespace, TEST_POD).returncode == 0
    # No kubelet: the apiserver runs admission for the exec, then fails to find the pod's node.
    result = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "exec",
        "test-pod",
        "--",
        "sh",
        "-c",
        "touch /tmp/testfile.txt",
        check=False,
    )
    assert "does not have a host assigned" in result.stderr
    events = _audit_events(control_plane.audit_log, namespace, "exec")
    for event in events:
        uid = event["annotations"]["execmetadata.spo.io/SPO_EXEC_REQUEST_UID"]
        patch_key = next(k for k in event["annotations"] if k.startswith("patch.webhook.admission.k8s.io/"))
        recorded = json.loads(event["annotations"][patch_key])
        patch = recorded["patch"] if isinstance(recorded["patch"], list) else json.loads(recorded["patch"])
        assert patch == [
            {
                "op": "add",
                "path": "/command",
                "value": ["env", f"SPO_EXEC_REQUEST_UID={uid}", "sh", "-c", "touch /tmp/testfile.txt"],
            }
        ]


def _audit_events(
    audit_log: Path, namespace: str, subresource: str | None, name: str | None = None
) -> list[dict[str, Any]]:
    """Completed audit events on pods of the namespace (or one pod), once the apiserver has written some."""
    deadline = time.monotonic() + 10
    while True:
        events = [
            event
            for event in map(json.loads, audit_log.read_text().splitlines())
            if event.get("stage") == "ResponseComplete"
            and (ref := event.get("objectRef", {})).get("namespace") == namespace
            and ref.get("subresource") == subresource
            and name in (None, ref.get("name"))
        ]
        if events:
            return events
        assert time.monotonic() < deadline, (
            f"no audit event for {namespace}/{name or '*'} {subresource or ''}"
        )
        time.sleep(0.2)


def _audit_annotation(audit_log: Path, namespace: str, name: str, key: str, subresource: str | None) -> str:
    events = _audit_events(audit_log, namespace, subresource, name)
    return next(str(e["annotations"][key]) for e in events if key in e.get("annotations", {}))


def test_in_cluster_service_form_configurations_are_accepted(
    control_plane: localcluster.ControlPlane,
) -> None:
    """The configurations a cluster install gets (clientConfig.service, every webhook and option on),
    validated by the real apiserver without being stored."""
    spec = SPODSpec.model_validate(
        {
            "enableJsonEnricher": True,
            "enableMemoryOptimization": True,
            "webhookOptions": [
                {"name": "nodedebuggingpodmetada.spo.io", "objectSelector": {"matchLabels": {"a": "b"}}},
                {
                    # Every operator, and values that need quoting, so that every CEL form is compiled.
                    "name": "nodedebuggingpod.spo.io",
                    "objectSelector": {
                        "matchExpressions": [
                            {"key": "x", "operator": "In", "values": ['q"uote\\', "é"]},
                            {"key": "y", "operator": "NotIn", "values": ["1"]},
                            {"key": "z", "operator": "Exists"},
                            {"key": "w", "operator": "DoesNotExist"},
                        ]
                    },
                },
                {"name": "execmetadata.spo.io", "namespaceSelector": {"matchLabels": {"audit": "on"}}},
            ],
        }
    )
    endpoint = Endpoint(service_namespace="security-profiles-operator")
    configurations = [
        desired_mutating_configuration(spec, endpoint, "Q0E="),
        desired_validating_configuration(endpoint, "Q0E="),
    ]
    for configuration in configurations:
        # Another name, so the URL-form configurations the session registered are not in the way.
        configuration["metadata"]["name"] += "-service-form"
    result = dry_run_create(control_plane.kubeconfig, yaml.safe_dump_all(configurations))
    assert result.stdout.count("(server dry run)") == 2


def _pod_review(namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview the apiserver sends the webhook for creating `pod` in `namespace`."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "same-request",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {**pod, "metadata": {"name": "test-pod", "namespace": namespace}},
        },
    }


def test_replicas_give_identical_answers(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    _apply(kubeconfig, _profile("SeccompProfile", "profile"))
    _apply(kubeconfig, _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile"), namespace)
    second = start_webhook_server(control_plane, localcluster.free_port())
    review = _pod_review(namespace, TEST_POD)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(control_plane.pki.ca_cert))) as http:
            deadline = time.monotonic() + 15
            while True:
                answers = [
                    http.post(f"{server.url}/mutate-v1-pod-binding", json=review).json()
                    for server in (webhook_server, second)
                ]
                if all("patch" in a["response"] for a in answers) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        second.stop()
    assert "patch" in answers[0]["response"]
    assert answers[0] == answers[1]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_kubectl_debug_ephemeral_container_gets_the_request_uid(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    assert _create_pod(kubeconfig, namespace, TEST_POD).returncode == 0
    kubectl(
        kubeconfig, "-n", namespace, "debug", "test-pod", "--image=busybox", "--container=dbg", "--", "sh"
    )
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", "test-pod")
    (debugger,) = pod["spec"]["ephemeralContainers"]
    uid = _env(debugger)["SPO_EXEC_REQUEST_UID"]
    audited = _audit_annotation(
        control_plane.audit_log,
        namespace,
        "test-pod",
        "execmetadata.spo.io/SPO_EXEC_REQUEST_UID",
        "ephemeralcontainers",
    )
    assert uid == audited


def test_kubectl_debug_node_pod_gets_the_request_uid(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig
    node = f"worker-{namespace}"
    kubectl(
        kubeconfig,
        "create",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    created = kubectl(kubeconfig, "-n", namespace, "debug", f"node/{node}", "--image=busybox", "--", "sh")
    pod_name = created.stdout.split("Creating debugging pod ")[1].split()[0]
    pod = kubectl_json(kubeconfig, "-n", namespace, "get", "pod", pod_name)
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-debug"
    uid = _env(pod["spec"]["containers"][0])["SPO_EXEC_REQUEST_UID"]
    audited = _audit_annotation(
        control_plane.audit_log, namespace, pod_name, "nodedebuggingpod.spo.io/SPO_EXEC_REQUEST_UID", None
    )
    assert uid == audited
