"""The real node, as a user of the docs meets it: pods run, `kubectl logs` and `exec` work, workloads roll
out, and seccomp profiles in the kubelet's directory are enforced by the kernel."""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api import constants
from tests.conftest import NodeCluster
from tests.e2e.test_webhooks import TEST_POD, _docs_object, _wait_for_cache
from tests.eventually import eventually
from tests.kubectl import kubectl, kubectl_json

pytestmark = [pytest.mark.e2e, pytest.mark.node]

DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}
# What the kernel logs for a syscall a SCMP_ACT_LOG filter let through (SECCOMP_RET_LOG).
SECCOMP_LOG_CODE = "code=0x7ffc0000"


def _pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": name, "image": image, **container}]},
    }


def _localhost(profile: str) -> dict[str, Any]:
    return {"seccompProfile": {"type": "Localhost", "localhostProfile": f"operator/{profile}.json"}}


def _run(cluster: NodeCluster, namespace: str, pod: dict[str, Any]) -> None:
    kubectl(cluster.kubeconfig, "-n", namespace, "create", "-f", "-", stdin=yaml.safe_dump(pod))
    _wait_ready(cluster, namespace, f"pod/{pod['metadata']['name']}")


def _wait_ready(cluster: NodeCluster, namespace: str, target: str) -> None:
    kubectl(cluster.kubeconfig, "-n", namespace, "wait", "--for=condition=Ready", target, "--timeout=50s")


def _exec(cluster: NodeCluster, namespace: str, pod: str, *command: str, check: bool = True) -> Any:
    return kubectl(cluster.kubeconfig, "-n", namespace, "exec", pod, "--", *command, check=check)


def _install_profile(cluster: NodeCluster, name: str, profile: dict[str, Any]) -> None:
    """Where the agent will write it once it exists: <kubelet root>/seccomp/operator/<name>.json."""
    (cluster.seccomp_dir / f"{name}.json").write_text(json.dumps(profile))


def test_docs_test_pod_runs_serves_and_execs(node_cluster: NodeCluster, node_namespace: str) -> None:
    _run(node_cluster, node_namespace, TEST_POD)
    pod = kubectl_json(node_cluster.kubeconfig, "-n", node_namespace, "get", "pod", "test-pod")
    assert pod["status"]["phase"] == "Running"
    assert _exec(node_cluster, node_namespace, "test-pod", "id", "-u").stdout.strip() == "101"
    # The pod is on the node's bridge, reachable from the host.
    address = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=10) as response:
        assert response.status == 200


def test_kubectl_logs_shows_the_container_output(node_cluster: NodeCluster, node_namespace: str) -> None:
    command = ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"]
    _run(node_cluster, node_namespace, _pod("talker", constants.IMAGE_TEST_BUSYBOX, command=command))
    logs = kubectl(node_cluster.kubeconfig, "-n", node_namespace, "logs", "talker").stdout
    assert logs.strip() == "hello from talker"


def test_untagged_image_is_pulled_from_the_node_registry(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """An untagged image defaults to pull policy Always: the pull reaches the node's loopback registry."""
    pod = _pod("puller", constants.IMAGE_UBUNTU, command=["sleep", "3600"])
    _run(node_cluster, node_namespace, pod)
    spec = kubectl_json(node_cluster.kubeconfig, "-n", node_namespace, "get", "pod", "puller")["spec"]
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    events = kubectl(node_cluster.kubeconfig, "-n", node_namespace, "get", "events").stdout
    assert "Successfully pulled image" in events


def test_deployment_and_daemonset_roll_out(node_cluster: NodeCluster, node_namespace: str) -> None:
    config, image = node_cluster.kubeconfig, constants.IMAGE_TEST_NGINX_UNPRIVILEGED
    kubectl(config, "-n", node_namespace, "create", "deployment", "web", f"--image={image}", "--replicas=2")
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "everywhere"},
        "spec": {
            "selector": {"matchLabels": {"app": "everywhere"}},
            "template": {
                "metadata": {"labels": {"app": "everywhere"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }
    kubectl(config, "-n", node_namespace, "apply", "-f", "-", stdin=yaml.safe_dump(daemonset))
    for workload in ("deployment/web", "daemonset/everywhere"):
        kubectl(config, "-n", node_namespace, "rollout", "status", workload, "--timeout=60s")
    assert (
        kubectl_json(config, "-n", node_namespace, "get", "deployment", "web")["status"]["readyReplicas"] == 2
    )
    assert (
        kubectl_json(config, "-n", node_namespace, "get", "daemonset", "everywhere")["status"]["numberReady"]
        == 1
    )


def test_localhost_profile_is_enforced(node_cluster: NodeCluster, node_namespace: str) -> None:
    _install_profile(node_cluster, "deny-mkdir", DENY_MKDIR)
    pod = _pod("confined", constants.IMAGE_TEST_NGINX_UNPRIVILEGED, securityContext=_localhost("deny-mkdir"))
    _run(node_cluster, node_namespace, pod)
    status = _exec(node_cluster, node_namespace, "confined", "cat", "/proc/1/status").stdout
    assert "Seccomp:\t2" in status.splitlines()
    denied = _exec(node_cluster, node_namespace, "confined", "mkdir", "/tmp/x", check=False)
    assert denied.returncode == 1
    assert "Operation not permitted" in denied.stderr


@contextlib.contextmanager
def _audit_lines(log: Path) -> Iterator[list[str]]:
    """The lines appended to the node's audit log during the block, collected on exit."""
    lines: list[str] = []
    start = log.stat().st_size
    yield lines
    with log.open("rb") as stream:
        stream.seek(start)
        lines.extend(stream.read().decode(errors="replace").splitlines())


def test_log_profile_produces_seccomp_audit_lines(node_cluster: NodeCluster, node_namespace: str) -> None:
    """SCMP_ACT_LOG on the node: the node's audit daemon gets the container's seccomp lines, every one
    (the kernel log would rate-limit them), among them the exec'd mkdir."""
    _install_profile(node_cluster, "log-all", {"defaultAction": "SCMP_ACT_LOG"})
    pod = _pod("logged", constants.IMAGE_TEST_NGINX_UNPRIVILEGED, securityContext=_localhost("log-all"))
    log = node_cluster.node.audit_log
    with _audit_lines(log) as lines:
        _run(node_cluster, node_namespace, pod)
        _exec(node_cluster, node_namespace, "logged", "mkdir", "/tmp/x")
        eventually(
            lambda: b'comm="mkdir"' in log.read_bytes(), what="the mkdir's seccomp line in the audit log"
        )
    # The container's first process keeps its host pid from runc's init (which installs the filter) on.
    (container,) = node_cluster.node.crictl("ps", "--name", "logged", "--quiet").stdout.split()
    pid = json.loads(node_cluster.node.crictl("inspect", container).stdout)["info"]["pid"]
    seccomp = [line for line in lines if line.startswith("type=SECCOMP ") and SECCOMP_LOG_CODE in line]
    assert any(f" pid={pid} " in line for line in seccomp), f"no seccomp line of pid {pid} in {log}"
    assert any('comm="mkdir"' in line for line in seccomp), seccomp[-5:]


def test_docs_binding_flow_runs_the_pod_under_the_profile(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """Docs 7.6.1 and 7.6.2.1: profile1, a binding for the test image, the namespace opted in, test-pod."""
    config = node_cluster.kubeconfig
    profile1 = _docs_object("SeccompProfile", "profile1")
    kubectl(config, "apply", "-f", "-", stdin=yaml.safe_dump(profile1))
    binding = _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile")
    binding["metadata"]["namespace"] = node_namespace
    binding["spec"]["profileRef"]["name"] = "profile1"  # the docs' binding names the profile made before
    kubectl(config, "apply", "-f", "-", stdin=yaml.safe_dump(binding))
    kubectl(config, "label", "ns", node_namespace, f"{constants.LABEL_ENABLE_BINDING}=true")
    _wait_for_cache(config, node_namespace, "operator/profile1.json")
    _run(node_cluster, node_namespace, TEST_POD)
    pod = kubectl_json(config, "-n", node_namespace, "get", "pod", "test-pod")
    assert pod["spec"]["containers"][0]["securityContext"] == _localhost("profile1")
    status = _exec(node_cluster, node_namespace, "test-pod", "cat", "/proc/1/status").stdout
    assert "Seccomp:\t2" in status.splitlines()


def test_kubelet_api_refuses_anonymous_callers(node_cluster: NodeCluster) -> None:
    """Anonymous authentication is off: only the apiserver's kubelet client (and the node) get in."""
    context = ssl.create_default_context(cafile=str(node_cluster.cluster.pki.ca_cert))
    url = f"https://127.0.0.1:{constants.KUBELET_PORT}/pods"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert refused.value.code == 401
