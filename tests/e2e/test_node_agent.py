"""The agent on the real node, as the docs' user meets it: `kubectl apply` of a SeccompProfile, the node
reports it Installed, the kubelet finds `operator/<name>.json`, and the kernel enforces it on the pod and
on `kubectl exec` (denied syscalls fail with the profile's errno, allowed ones work)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from api import constants
from api.baseprofiles import BUILTIN_SYSCALLS
from tests.conftest import NodeCluster
from tests.e2e.test_agent import node_status, wait_state
from tests.e2e.test_node import _exec, _localhost, _pod, _run
from tests.e2e.test_webhooks import _docs_object
from tests.eventually import eventually
from tests.kubectl import kubectl, kubectl_json

pytestmark = [pytest.mark.e2e, pytest.mark.node]

# The docs' 7.6.2 test-pod.
DOCS_TEST_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "test-pod"},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "Localhost", "localhostProfile": "operator/profile1.json"},
        },
        "containers": [
            {
                "name": "test-container",
                "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    },
}
# What busybox's sleep, cat and sh need beyond what runc needs to start them (the base profiles).
BUSYBOX_SYSCALLS = [
    "clock_nanosleep", "rt_sigaction", "rt_sigprocmask", "sendfile", "ioctl", "lseek", "munmap",
    "getgid", "getegid", "geteuid", "readlink", "readlinkat", "dup2", "dup3", "exit", "madvise",
    "getrandom", "uname", "sysinfo", "clone", "clone3", "wait4", "pipe", "pipe2", "getpgrp", "setpgid",
    "stat", "lstat", "rseq", "poll", "ppoll", "statfs", "getpgid", "getsid",
]  # fmt: skip
EACCES = 13


def _node_name(cluster: NodeCluster) -> str:
    return cluster.node.name


def test_docs_profile1_installed_used_and_deleted(node_cluster: NodeCluster, node_namespace: str) -> None:
    """Docs 7.6.1-7.6.2 typed as a user: apply profile1, `kubectl get sp profile1 -o wide` shows it
    Installed at `operator/profile1.json`, the file is in the kubelet's seccomp directory and the docs'
    test-pod runs under it. Deleting profile1 while test-pod uses it leaves it Terminating with its
    file; deleting the pod lets the profile, its file and its node status go."""
    config, node_name = node_cluster.kubeconfig, _node_name(node_cluster)
    profile_file = node_cluster.seccomp_dir / "profile1.json"
    kubectl(config, "apply", "-f", "-", stdin=yaml.safe_dump(_docs_object("SeccompProfile", "profile1")))
    wait_state(node_cluster.kube, "profile1", node_name, "Installed")
    eventually(
        lambda: "Installed" in kubectl(config, "get", "sp", "profile1", "-o", "wide").stdout,
        timeout=120,
        what="profile1 Installed as the reconciler aggregates it",
    )
    header, row = kubectl(config, "get", "sp", "profile1", "-o", "wide").stdout.splitlines()
    assert dict(zip(header.split(), row.split(), strict=True)) == {
        "NAME": "profile1", "STATUS": "Installed", "AGE": row.split()[2],
        "LOCALHOSTPROFILE": "operator/profile1.json",
    }  # fmt: skip
    assert profile_file.read_bytes() == b'{"defaultAction":"SCMP_ACT_LOG"}'
    _run(node_cluster, node_namespace, DOCS_TEST_POD)
    pod = kubectl_json(config, "-n", node_namespace, "get", "pod", "test-pod")
    assert pod["status"]["phase"] == "Running"
    status = _exec(node_cluster, node_namespace, "test-pod", "cat", "/proc/1/status").stdout
    assert "Seccomp:\t2" in status.splitlines()

    eventually(
        lambda: (
            constants.FINALIZER_IN_USE
            in kubectl_json(config, "get", "sp", "profile1")["metadata"].get("finalizers", [])
        ),
        what="the in-use finalizer on profile1",
    )
    kubectl(config, "delete", "sp", "profile1", "--wait=false")
    eventually(
        lambda: (
            kubectl_json(config, "get", "sp", "profile1").get("status", {}).get("status") == "Terminating"
        ),
        what="profile1 Terminating",
    )
    shown = kubectl_json(config, "get", "sp", "profile1")
    assert shown["status"]["activeWorkloads"] == [f"{node_namespace}/test-pod"]
    assert profile_file.exists()
    assert "Seccomp:\t2" in _exec(node_cluster, node_namespace, "test-pod", "cat", "/proc/1/status").stdout

    kubectl(config, "-n", node_namespace, "delete", "pod", "test-pod")
    eventually(
        lambda: kubectl(config, "get", "sp", "profile1", check=False).returncode != 0,
        timeout=120,
        what="profile1 gone after its pod",
    )
    assert not profile_file.exists()
    assert node_status(node_cluster.kube, "profile1", node_name) is None


@pytest.mark.parametrize("base", ["runc-v1.0.0", "runc-v1.4.2"])
def test_errno_profile_on_a_runc_base_denies_with_its_errno(
    node_cluster: NodeCluster, node_namespace: str, base: str
) -> None:
    """An ERRNO default over a short allow list built on a runtime base profile: the pod starts (the
    base's syscalls are what runc needs), allowed commands work, mkdir fails with the profile's errnoRet
    (EACCES) and chmod, not listed, with the default action's EPERM."""
    name = f"short-{base.replace('.', '-')}"
    # On the old base, add what a current runc needs beyond it: the base still carries capset etc.
    newer = sorted(set(BUILTIN_SYSCALLS["runc-v1.4.2"]) - set(BUILTIN_SYSCALLS[base]))
    profile = {
        "apiVersion": f"{constants.GROUP}/v1beta1",
        "kind": "SeccompProfile",
        "metadata": {"name": name},
        "spec": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "baseProfileName": base,
            "syscalls": [
                {"action": "SCMP_ACT_ALLOW", "names": [*BUSYBOX_SYSCALLS, *newer]},
                {"action": "SCMP_ACT_ERRNO", "names": ["mkdir", "mkdirat"], "errnoRet": EACCES},
            ],
        },
    }
    kubectl(node_cluster.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(profile))
    wait_state(node_cluster.kube, name, _node_name(node_cluster), "Installed")
    pod = _pod(
        "confined", constants.IMAGE_TEST_BUSYBOX, command=["sleep", "3600"], securityContext=_localhost(name)
    )
    _run(node_cluster, node_namespace, pod)
    assert "Seccomp:\t2" in _exec(node_cluster, node_namespace, "confined", "cat", "/proc/1/status").stdout
    denied = _exec(node_cluster, node_namespace, "confined", "mkdir", "/tmp/x", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    refused = _exec(node_cluster, node_namespace, "confined", "chmod", "600", "/tmp", check=False)
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, refused
