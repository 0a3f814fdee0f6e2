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
from tests.docs_examples import DOCS_RECORDED_POD
from tests.docs_examples import docs_objects as _docs_objects
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
    # usually before its line is read (then attributed through its parent; tests/test_lineage.py).
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

    # A process has a record per interval; the one holding its exec names the program it became.
    eventually(
        lambda: any(r["executable"] == constants.BUSYBOX_PATH for r in records()),
        timeout=WAIT_SECONDS,
        what=f"a JSON record with requestUID {uid}",
    )
    for record in records():
        assert record["resource"] == {"container": container, "namespace": node_namespace, "pod": "my-pod"}
        assert record["node"] == {"name": node_cluster.node.name}
        assert record["syscalls"] and record["version"] == constants.JSON_AUDIT_VERSION


def _seccomp_profile(cluster: NodeCluster, name: str) -> dict[str, Any] | None:
    found = kubectl(cluster.kubeconfig, "get", "sp", name, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _allowed(profile: dict[str, Any]) -> set[str]:
    return {n for entry in profile["spec"].get("syscalls") or [] for n in entry["names"]}


def _record_as_the_docs(cluster: NodeCluster, namespace: str, merge_strategy: str | None) -> None:
    """Docs 7.6.3 steps 1-3 (7.6.3.1 step 1 with a merge strategy): the trace profile on the node, the
    namespace labelled, the docs' seccomp ProfileRecording in it (the docs' my-namespace is ours)."""
    wait_state(cluster.kube, constants.LOG_ENRICHER_TRACE_PROFILE, cluster.node.name, "Installed")
    kubectl(cluster.kubeconfig, "label", "ns", namespace, f"{constants.LABEL_ENABLE_RECORDING}=true")
    recording = next(
        o
        for o in _docs_objects()
        if o["kind"] == "ProfileRecording"
        and o["spec"]["kind"] == "SeccompProfile"
        and o["spec"].get("mergeStrategy") == merge_strategy
    )
    recording["metadata"]["namespace"] = namespace
    kubectl(cluster.kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(recording))


def test_docs_recording_from_logs_makes_a_profile_that_runs_the_program(
    node_cluster: NodeCluster, node_namespace: str, log_enricher: None
) -> None:
    """Docs 7.6.3: the namespace labelled, the ProfileRecording for `app: my-app`, the docs' two-container
    pod, a command run in it, the pod deleted: one SeccompProfile per container holding the syscalls
    its processes really made. The nginx profile then runs the same command; without mkdir, mkdir fails."""
    config = node_cluster.kubeconfig
    _record_as_the_docs(node_cluster, node_namespace, merge_strategy=None)
    _run(node_cluster, node_namespace, DOCS_RECORDED_POD)
    kubectl(
        config,
        "-n",
        node_namespace,
        "exec",
        "my-pod",
        "-c",
        "nginx",
        "--",
        "sh",
        "-c",
        "mkdir /tmp/made; sleep 2",
    )
    # The recorder has what the log enricher has printed: wait for the mkdir before ending the pod.
    made = f'namespace="{node_namespace}" pod="my-pod" container="nginx"'
    eventually(
        lambda: any(made in line and 'syscallName="mkdir"' in line for line in _agent_log(node_cluster)),
        timeout=WAIT_SECONDS,
        what="the exec'd mkdir seen by the agent",
    )
    kubectl(config, "-n", node_namespace, "delete", "pod", "my-pod")

    eventually(
        lambda: all(_seccomp_profile(node_cluster, f"test-recording-{c}") for c in ("nginx", "redis")),
        timeout=WAIT_SECONDS,
        what="the recorded profiles test-recording-nginx and test-recording-redis",
    )
    nginx = _seccomp_profile(node_cluster, "test-recording-nginx") or {}
    redis = _seccomp_profile(node_cluster, "test-recording-redis") or {}
    for profile in (nginx, redis):
        assert profile["metadata"]["labels"][constants.LABEL_RECORDING_ID] == "test-recording"
        assert profile["spec"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {"mkdir", "execve"} <= _allowed(nginx)
    assert "execve" in _allowed(redis)

    # The recorded profile runs the program; the same without mkdir makes mkdir fail with EPERM.
    without = {
        "apiVersion": nginx["apiVersion"],
        "kind": "SeccompProfile",
        "metadata": {"name": "recorded-without-mkdir"},
        "spec": {
            **{k: v for k, v in nginx["spec"].items() if k != "syscalls"},
            "syscalls": [
                {**entry, "names": [n for n in entry["names"] if n not in {"mkdir", "mkdirat"}]}
                for entry in nginx["spec"]["syscalls"]
            ],
        },
    }
    kubectl(config, "apply", "-f", "-", stdin=yaml.safe_dump(without))
    for name in ("test-recording-nginx", "recorded-without-mkdir"):
        wait_state(node_cluster.kube, name, node_cluster.node.name, "Installed")
    kubectl(config, "label", "ns", node_namespace, f"{constants.LABEL_ENABLE_RECORDING}-")
    for pod, profile_name in (("replay", "test-recording-nginx"), ("denied", "recorded-without-mkdir")):
        replay = {
            **DOCS_RECORDED_POD,
            "metadata": {"name": pod},
            "spec": {
                **DOCS_RECORDED_POD["spec"],
                "securityContext": {"runAsNonRoot": True, **_localhost(profile_name)},
                "containers": DOCS_RECORDED_POD["spec"]["containers"][:1],
            },
        }
        _run(node_cluster, node_namespace, replay)
    _exec(node_cluster, node_namespace, "replay", "sh", "-c", "mkdir /tmp/made; sleep 2")
    denied = _exec(node_cluster, node_namespace, "denied", "sh", "-c", "mkdir /tmp/made", check=False)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied


def test_docs_merged_recording_of_a_deployment(
    node_cluster: NodeCluster, node_namespace: str, log_enricher: None
) -> None:
    """Docs 7.6.3.1: three replicas recorded with `mergeStrategy: containers`; deleting the Deployment
    leaves one partial profile per replica, deleting the recording one merged profile, Installed, with
    the union of their syscalls."""
    config = node_cluster.kubeconfig
    _record_as_the_docs(node_cluster, node_namespace, merge_strategy="containers")
    kubectl(config, "-n", node_namespace, "create", "serviceaccount", "spo-record-sa")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx-deploy"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "sp-record"}},
            "template": {
                "metadata": {"labels": {"app": "sp-record"}},
                "spec": {
                    "serviceAccountName": "spo-record-sa",
                    "containers": [
                        {
                            "name": "nginx-record",
                            "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED,
                            "ports": [{"containerPort": 8080}],
                        }
                    ],
                },
            },
        },
    }
    kubectl(config, "-n", node_namespace, "apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    kubectl(config, "-n", node_namespace, "rollout", "status", "deployment/nginx-deploy", "--timeout=120s")
    # The docs select by recording id; the namespace too keeps other tests' test-recording out.
    by_namespace = f"{constants.LABEL_RECORDING_NAMESPACE}={node_namespace}"
    recorded = f"{constants.LABEL_RECORDING_ID}=test-recording,{by_namespace}"

    def profiles() -> list[dict[str, Any]]:
        listing = kubectl(config, "get", "seccompprofiles", "-l", recorded, "-o", "json").stdout
        found: list[dict[str, Any]] = json.loads(listing)["items"]
        return found

    # Each replica's processes must have been seen before its pod ends.
    eventually(
        lambda: sum('container="nginx-record"' in line for line in _agent_log(node_cluster)) >= 3,
        timeout=WAIT_SECONDS,
        what="lines of the replicas",
    )
    kubectl(config, "-n", node_namespace, "delete", "deployment", "nginx-deploy")
    eventually(lambda: len(profiles()) == 3, timeout=WAIT_SECONDS, what="three partial profiles")
    partials = profiles()
    assert all(p["metadata"]["labels"].get(constants.LABEL_PARTIAL) for p in partials)
    assert all(p["metadata"]["name"].startswith("test-recording-nginx-record-") for p in partials)
    union = set().union(*(_allowed(p) for p in partials))

    kubectl(config, "-n", node_namespace, "delete", "profilerecording", "test-recording")
    eventually(
        lambda: [p["metadata"]["name"] for p in profiles()] == ["test-recording-nginx-record"],
        timeout=WAIT_SECONDS,
        what="one merged profile",
    )
    # As the docs show it: `kubectl get seccompprofiles -l spo.x-k8s.io/recording-id=test-recording`.
    eventually(
        lambda: "Installed" in kubectl(config, "get", "seccompprofiles", "-l", recorded).stdout,
        timeout=WAIT_SECONDS,
        what="the merged profile Installed",
    )
    (merged,) = profiles()
    assert _allowed(merged) == union
