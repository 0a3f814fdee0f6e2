"""The audit pipeline on the real node, as the docs' user meets it: the node's audit daemon holds the
kernel's seccomp lines of containers running under a logging profile, and the agent follows it.

- Log enricher (docs 7.8.7): after `enableLogEnricher: true` the agent prints one enriched line per
  seccomp event of a container, naming its namespace, pod, container, executable and syscall, and
  counts them in `security_profiles_operator_seccomp_profile_audit_total`.
- Advanced audit logging (docs 7.9): after `enableJsonEnricher: true`, a `kubectl exec` into a pod under
  a logging profile (or a `kubectl debug` container) becomes a JSON record whose `requestUID` is the one
  the apiserver's audit log holds for that exec - the correlation loop of docs 7.9.13.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from api import constants
from tests.conftest import NodeCluster
from tests.e2e.test_agent import wait_state
from tests.e2e.test_node import _exec, _localhost, _pod, _run
from tests.e2e.test_webhooks import _audit_annotation, _docs_object
from tests.eventually import eventually
from tests.kubectl import kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.node]

WAIT_SECONDS = 120.0
EXEC_UID_ANNOTATION = f"{constants.WEBHOOK_EXEC_METADATA}/{constants.EXEC_REQUEST_UID_ENV}"


def _patch_spod(cluster: NodeCluster, spec: dict[str, Any]) -> None:
    kubectl(
        cluster.kubeconfig,
        "-n", constants.DEFAULT_NAMESPACE,
        "patch", "spod", constants.SPOD_NAME, "--type=merge", "-p", json.dumps({"spec": spec}),
    )  # fmt: skip


@pytest.fixture
def log_enricher(node_cluster: NodeCluster) -> Iterator[None]:
    _patch_spod(node_cluster, {"enableLogEnricher": True})
    yield
    _patch_spod(node_cluster, {"enableLogEnricher": False})


@pytest.fixture
def json_enricher(node_cluster: NodeCluster) -> Iterator[None]:
    # Records every 5 s rather than every minute, so the test need not wait long.
    _patch_spod(
        node_cluster, {"enableJsonEnricher": True, "jsonEnricherOptions": {"auditLogIntervalSeconds": 5}}
    )
    yield
    _patch_spod(node_cluster, {"enableJsonEnricher": False, "jsonEnricherOptions": None})


def _agent_log(cluster: NodeCluster) -> list[str]:
    return cluster.cluster.log_file("agent").read_text(errors="replace").splitlines()


def _metrics(cluster: NodeCluster) -> str:
    url = f"http://127.0.0.1:{cluster.agent_port}{constants.PATH_METRICS_SPOD}"
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def test_docs_log_enricher_names_the_pod_and_the_syscalls(
    node_cluster: NodeCluster, node_namespace: str, log_enricher: None
) -> None:
    trace = constants.LOG_ENRICHER_TRACE_PROFILE
    wait_state(node_cluster.kube, trace, node_cluster.node.name, "Installed")
    # The shell stays and waits for its children (wait4); each mkdir is a child gone within a millisecond,
    # long before its line is read: it is attributed through its parent, the shell.
    pod = _pod(
        "traced",
        constants.IMAGE_TEST_BUSYBOX,
        command=["sh", "-c", "while true; do mkdir -p /tmp/d; sleep 1; done"],
        securityContext=_localhost(trace),
    )
    _run(node_cluster, node_namespace, pod)
    wanted = f'namespace="{node_namespace}" pod="traced" container="traced"'

    def enriched() -> list[str]:
        return [line for line in _agent_log(node_cluster) if wanted in line and 'type="seccomp"' in line]

    eventually(
        lambda: any('syscallName="wait4"' in line for line in enriched()),
        timeout=WAIT_SECONDS,
        what="an enriched wait4 line of the traced pod",
    )
    eventually(
        lambda: any('syscallName="mkdir"' in line for line in enriched()),
        timeout=WAIT_SECONDS,
        what="an enriched line of a short-lived child's mkdir",
    )
    line = next(line for line in enriched() if 'syscallName="wait4"' in line)
    assert '"audit" logger="log-enricher"' in line and f'node="{node_cluster.node.name}"' in line
    assert f'executable="{constants.BUSYBOX_PATH}"' in line, line
    counter = (
        "security_profiles_operator_seccomp_profile_audit_total{"
        f'container="traced",namespace="{node_namespace}",node="{node_cluster.node.name}",'
        'pod="traced",syscall="wait4"}'
    )
    eventually(lambda: counter in _metrics(node_cluster), what="the audit counter")


@pytest.mark.parametrize("how", ["exec", "debug"])
def test_docs_exec_and_debug_are_correlated_with_the_apiserver_audit_log(
    node_cluster: NodeCluster, node_namespace: str, json_enricher: None, how: str
) -> None:
    """Docs 7.9.9-7.9.13: profile1 (SCMP_ACT_LOG) on the pod, `kubectl exec` (or `kubectl debug`, an
    ephemeral container under the pod's profile), then the JSON record and the apiserver's audit event
    carry the same request uid."""
    config = node_cluster.kubeconfig
    kubectl(config, "apply", "-f", "-", stdin=yaml.safe_dump(_docs_object("SeccompProfile", "profile1")))
    wait_state(node_cluster.kube, "profile1", node_cluster.node.name, "Installed")
    pod = _pod("my-pod", constants.IMAGE_TEST_BUSYBOX, command=["sleep", "3600"])
    pod["spec"]["securityContext"] = _localhost("profile1")
    _run(node_cluster, node_namespace, pod)
    # The docs' command, with a pause at the end so the shell outlives the reading of its first line.
    command = ["sh", "-c", "touch /tmp/testfile.txt; sleep 3"]
    if how == "exec":
        _exec(node_cluster, node_namespace, "my-pod", *command)
        container, subresource = "my-pod", "exec"
    else:
        image = f"--image={constants.IMAGE_TEST_BUSYBOX}"
        kubectl(config, "-n", node_namespace, "debug", "my-pod", image, "--container=dbg", "--", *command)
        container, subresource = "dbg", "ephemeralcontainers"
    audit_log = node_cluster.cluster.audit_log
    uid = _audit_annotation(audit_log, node_namespace, "my-pod", EXEC_UID_ANNOTATION, subresource)

    def records() -> list[dict[str, Any]]:
        found = []
        for line in _agent_log(node_cluster):
            if line.startswith("{") and constants.JSON_AUDIT_VERSION in line:
                record = json.loads(line)
                if record.get("requestUID") == uid:
                    found.append(record)
        return found

    eventually(records, timeout=WAIT_SECONDS, what=f"a JSON record with requestUID {uid}")
    record = records()[0]
    assert record["resource"] == {"container": container, "namespace": node_namespace, "pod": "my-pod"}
    assert record["node"] == {"name": node_cluster.node.name}
    assert record["syscalls"] and record["version"] == constants.JSON_AUDIT_VERSION
    assert record["executable"] == constants.BUSYBOX_PATH
