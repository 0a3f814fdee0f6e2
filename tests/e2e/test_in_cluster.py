"""The operator installed as in a user's cluster, on the real node (`spo up --in-cluster`): the image built
offline and imported, `spo manifests render` applied, the agent in the spod DaemonSet. Then the docs'
7.6.1-7.6.2.1 flow and the 7.8.8 webhook option, the Deployments surviving their pods' deletion and a
rollout without one failed admission, and `spo uninstall` leaving nothing that blocks pods and no file of
ours on the node. The tests share one cluster and run in this order."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from api import constants
from spo.nodeconfig import NodePaths
from tests.conftest import NodeSlot
from tests.docs_examples import spod_patches
from tests.e2e.test_spo_up import _spo
from tests.e2e.test_webhooks import TEST_POD, _audit_annotation, _docs_object
from tests.eventually import eventually
from tests.kubectl import dry_run_create, kubectl, kubectl_json

pytestmark = [pytest.mark.e2e, pytest.mark.node]

NAMESPACE = constants.DEFAULT_NAMESPACE
APP_NAMESPACE = "my-namespace"


@dataclass
class InCluster:
    state: Path
    kubeconfig: Path
    seccomp_dir: Path

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        return kubectl(self.kubeconfig, *args, stdin=stdin, check=check)

    def json(self, *args: str) -> Any:
        return kubectl_json(self.kubeconfig, *args)

    def wait_for_agent_container(self, container: str) -> None:
        """Until the node's spod pod runs `container`, ready. The reconciler updates the DaemonSet some
        time after the spod changes, so `kubectl rollout status` right after the patch may still see the
        old one rolled out."""

        def ready() -> bool:
            selector = f"{constants.LABEL_NAME}={constants.SPOD_NAME_LABEL_VALUE}"
            pods = self.json("-n", NAMESPACE, "get", "pods", "-l", selector)["items"]
            return any(
                status["name"] == container and status.get("ready")
                for pod in pods
                if not pod["metadata"].get("deletionTimestamp")
                for status in pod.get("status", {}).get("containerStatuses", [])
            )

        eventually(ready, timeout=180, what=f"the spod pod's {container} container ready")

    def pods(self, component: str) -> list[str]:
        listed = self.json("-n", NAMESPACE, "get", "pods", "-l", f"{constants.LABEL_NAME}={component}")
        return [p["metadata"]["name"] for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


@pytest.fixture(scope="module")
def in_cluster(tmp_path_factory: pytest.TempPathFactory, node_slot: NodeSlot) -> Iterator[InCluster]:
    node_slot.stop()  # the session's node gives the machine up
    state = tmp_path_factory.mktemp("in-cluster") / "state"
    up = _spo("up", "--in-cluster", "--detach", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield InCluster(state, state / "kubeconfig", NodePaths(state / "node").seccomp_dir)
    finally:
        down = _spo("down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr


def test_the_agent_pod_installs_profile1_and_binds_it_to_test_pod(in_cluster: InCluster) -> None:
    """Docs 7.6.1, 7.6.2.1, typed as a user: the DaemonSet's agent writes the profile where the kubelet
    reads it, the binding webhook, reached through its Service, puts it on test-pod, which runs under it."""
    spod_pods = in_cluster.pods(constants.SPOD_NAME_LABEL_VALUE)
    assert len(spod_pods) == 1, spod_pods
    in_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_docs_object("SeccompProfile", "profile1")))
    eventually(
        lambda: in_cluster.json("get", "sp", "profile1").get("status", {}).get("status") == "Installed",
        timeout=120,
        what="profile1 Installed",
    )
    assert (in_cluster.seccomp_dir / "profile1.json").read_bytes() == b'{"defaultAction":"SCMP_ACT_LOG"}'
    logs = in_cluster.kubectl(
        "-n", NAMESPACE, "logs", spod_pods[0], "-c", "security-profiles-operator"
    ).stdout
    assert "profile1" in logs

    in_cluster.kubectl("create", "namespace", APP_NAMESPACE)
    binding = _docs_object("ProfileBinding", "nginx-binding", "SeccompProfile")
    binding["metadata"]["namespace"] = APP_NAMESPACE
    binding["spec"]["profileRef"]["name"] = "profile1"
    in_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding))
    in_cluster.kubectl("label", "ns", APP_NAMESPACE, f"{constants.LABEL_ENABLE_BINDING}=true")
    test_pod = yaml.safe_dump(TEST_POD)
    eventually(
        lambda: (
            "operator/profile1.json"
            in dry_run_create(in_cluster.kubeconfig, test_pod, "-o", "json", namespace=APP_NAMESPACE).stdout
        ),
        timeout=60,
        what="the webhook binding profile1 (its cache has the binding)",
    )
    in_cluster.kubectl("-n", APP_NAMESPACE, "create", "-f", "-", stdin=test_pod)
    in_cluster.kubectl("-n", APP_NAMESPACE, "wait", "--for=condition=Ready", "pod/test-pod", "--timeout=90s")
    container = in_cluster.json("-n", APP_NAMESPACE, "get", "pod", "test-pod")["spec"]["containers"][0]
    assert container["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "operator/profile1.json",
    }
    status = in_cluster.kubectl("-n", APP_NAMESPACE, "exec", "test-pod", "--", "cat", "/proc/1/status").stdout
    assert "Seccomp:\t2" in status.splitlines()


def test_docs_webhook_option_patch_reaches_the_configuration(in_cluster: InCluster) -> None:
    """Docs 7.8.8: the recording webhook restricted to pods labelled spo-record=true."""
    patch = next(p["patch"] for p in spod_patches() if p["section"] == "7.8.8")
    in_cluster.kubectl(
        "-n", NAMESPACE, "patch", "spod", constants.SPOD_NAME, "--type=merge", "-p", yaml.safe_dump(patch)
    )

    def recording_selector() -> Any:
        configuration = in_cluster.json(
            "get", "MutatingWebhookConfiguration", constants.MUTATING_WEBHOOK_CONFIGURATION
        )
        recording = next(w for w in configuration["webhooks"] if w["name"] == "recording.spo.io")
        return recording["objectSelector"]

    expected = patch["spec"]["webhookOptions"][0]["objectSelector"]
    eventually(
        lambda: recording_selector() == expected, timeout=60, what="the recording webhook's objectSelector"
    )


def test_docs_log_enricher_lines_in_the_log_enricher_container(in_cluster: InCluster) -> None:
    """Docs 7.8.7 as written: the spod patched, the DaemonSet rolls with a `log-enricher` container, and
    `kubectl logs --selector name=spod -c log-enricher` shows the traced pod's syscalls."""
    patch = next(p["patch"] for p in spod_patches() if p["section"] == "7.8.7")
    in_cluster.kubectl(
        "-n", NAMESPACE, "patch", "spod", constants.SPOD_NAME, "--type=merge", "-p", yaml.safe_dump(patch)
    )
    trace = constants.LOG_ENRICHER_TRACE_PROFILE
    eventually(
        lambda: in_cluster.json("get", "sp", trace).get("status", {}).get("status") == "Installed",
        timeout=180,
        what=f"{trace} Installed",
    )
    in_cluster.wait_for_agent_container("log-enricher")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "traced"},
        "spec": {
            "containers": [
                {
                    "name": "traced",
                    "image": constants.IMAGE_TEST_BUSYBOX,
                    "command": ["sh", "-c", "while true; do mkdir -p /tmp/d; sleep 1; done"],
                    "securityContext": {
                        "seccompProfile": {"type": "Localhost", "localhostProfile": f"operator/{trace}.json"}
                    },
                }
            ]
        },
    }
    in_cluster.kubectl("-n", APP_NAMESPACE, "create", "-f", "-", stdin=yaml.safe_dump(pod))
    in_cluster.kubectl("-n", APP_NAMESPACE, "wait", "--for=condition=Ready", "pod/traced", "--timeout=90s")
    wanted = f'namespace="{APP_NAMESPACE}" pod="traced" container="traced"'

    def enriched() -> list[str]:
        # The docs' command; with a selector kubectl shows the last 10 lines unless told otherwise.
        selector = f"{constants.LABEL_NAME}={constants.SPOD_NAME_LABEL_VALUE}"
        logs = in_cluster.kubectl(
            "-n", NAMESPACE, "logs", "--since=10m", "--tail=-1", "--selector", selector, "-c", "log-enricher"
        ).stdout
        return [line for line in logs.splitlines() if wanted in line and 'type="seccomp"' in line]

    eventually(
        lambda: any('syscallName="mkdir"' in line for line in enriched()),
        timeout=180,
        what="an enriched mkdir line of the traced pod in the log-enricher container's log",
    )


def test_docs_json_enricher_records_in_the_json_enricher_container(in_cluster: InCluster) -> None:
    """Docs 7.9.6, 7.9.9-7.9.15 as written: the JSON enricher on, `kubectl exec` into a pod under profile1,
    and the record in `kubectl logs -c json-enricher` carries the request uid of the apiserver's audit log."""
    patch = next(p["patch"] for p in spod_patches() if p["section"] == "7.9.6")
    in_cluster.kubectl(
        "-n", NAMESPACE, "patch", "spod", constants.SPOD_NAME, "--type=merge", "-p", yaml.safe_dump(patch)
    )
    in_cluster.wait_for_agent_container("json-enricher")
    eventually(
        lambda: any(
            w["name"] == constants.WEBHOOK_EXEC_METADATA
            for w in in_cluster.json(
                "get", "MutatingWebhookConfiguration", constants.MUTATING_WEBHOOK_CONFIGURATION
            )["webhooks"]
        ),
        timeout=60,
        what="the exec webhook registered",
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "my-pod"},
        "spec": {
            "securityContext": {
                "seccompProfile": {"type": "Localhost", "localhostProfile": "operator/profile1.json"}
            },
            "containers": [
                {"name": "my-pod", "image": constants.IMAGE_TEST_BUSYBOX, "command": ["sleep", "3600"]}
            ],
        },
    }
    in_cluster.kubectl("-n", APP_NAMESPACE, "create", "-f", "-", stdin=yaml.safe_dump(pod))
    in_cluster.kubectl("-n", APP_NAMESPACE, "wait", "--for=condition=Ready", "pod/my-pod", "--timeout=90s")
    in_cluster.kubectl(
        "-n", APP_NAMESPACE, "exec", "my-pod", "--", "sh", "-c", "touch /tmp/testfile.txt; sleep 3"
    )
    audit_log = in_cluster.state / "logs" / "audit.log"
    key = f"{constants.WEBHOOK_EXEC_METADATA}/{constants.EXEC_REQUEST_UID_ENV}"
    uid = _audit_annotation(audit_log, APP_NAMESPACE, "my-pod", key, "exec")

    def records() -> list[dict[str, Any]]:
        selector = f"{constants.LABEL_NAME}={constants.SPOD_NAME_LABEL_VALUE}"
        logs = in_cluster.kubectl(
            "-n", NAMESPACE, "logs", "--since=10m", "--tail=-1", "--selector", selector, "-c", "json-enricher"
        ).stdout
        parsed = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        return [record for record in parsed if record.get("requestUID") == uid]

    eventually(
        lambda: any(r["executable"] == constants.BUSYBOX_PATH for r in records()),
        timeout=180,
        what=f"a JSON record with requestUID {uid} in the json-enricher container's log",
    )
    for record in records():
        assert record["resource"] == {"container": "my-pod", "namespace": APP_NAMESPACE, "pod": "my-pod"}


@dataclass
class AdmissionLoop:
    """Pod creations (server-side dry runs, through every admission webhook) in a loop until stopped."""

    cluster: InCluster
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AdmissionLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _run(self) -> None:
        pod = yaml.safe_dump({**TEST_POD, "metadata": {"name": "admission-probe"}})
        while not self._stop.is_set():
            done = dry_run_create(self.cluster.kubeconfig, pod, namespace=APP_NAMESPACE)
            self.attempts += 1
            if done.returncode != 0:
                self.failures.append(done.stderr.strip())


def test_deployments_survive_their_pods_deletion_and_a_rollout_fails_no_admission(
    in_cluster: InCluster,
) -> None:
    def leader() -> str:
        lease = in_cluster.json("-n", NAMESPACE, "get", "lease", constants.LEADER_LEASE)
        return str(lease["spec"].get("holderIdentity") or "")

    (reconciler,) = in_cluster.pods(constants.RECONCILER_NAME_LABEL_VALUE)
    assert leader().startswith(reconciler), (leader(), reconciler)
    with AdmissionLoop(in_cluster) as loop:
        in_cluster.kubectl("-n", NAMESPACE, "delete", "pod", reconciler, "--wait=false")
        eventually(
            lambda: any(
                leader().startswith(p)
                for p in in_cluster.pods(constants.RECONCILER_NAME_LABEL_VALUE)
                if p != reconciler
            ),
            timeout=120,
            what="the replacement reconciler leading",
        )
        first_webhook = in_cluster.pods(constants.WEBHOOK_NAME_LABEL_VALUE)[0]
        in_cluster.kubectl("-n", NAMESPACE, "delete", "pod", first_webhook)
        in_cluster.kubectl(
            "-n", NAMESPACE, "rollout", "restart", f"deployment/{constants.WEBHOOK_DEPLOYMENT}"
        )
        in_cluster.kubectl(
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            f"deployment/{constants.WEBHOOK_DEPLOYMENT}",
            "--timeout=180s",
        )
        in_cluster.kubectl(
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            f"deployment/{constants.RECONCILER_DEPLOYMENT}",
            "--timeout=180s",
        )
    assert loop.attempts > 0
    assert loop.failures == [], loop.failures
    # The new leader reconciles: a profile made now is Installed.
    profile = _docs_object("SeccompProfile", "profile1")
    profile["metadata"]["name"] = "after-restart"
    in_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(profile))
    eventually(
        lambda: in_cluster.json("get", "sp", "after-restart").get("status", {}).get("status") == "Installed",
        timeout=120,
        what="a profile Installed under the new leader",
    )


def test_uninstall_leaves_no_webhook_no_node_file_and_pods_are_created(in_cluster: InCluster) -> None:
    # Ours, and the built-in base profiles the reconciler creates.
    assert {"after-restart.json", "profile1.json"} <= {p.name for p in in_cluster.seccomp_dir.iterdir()}
    with AdmissionLoop(in_cluster) as loop:
        done = _spo("uninstall", "--kubeconfig", str(in_cluster.kubeconfig), "--namespace", NAMESPACE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert loop.attempts > 0
    assert loop.failures == [], loop.failures
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert in_cluster.json("get", kind)["items"] == []
    assert list(in_cluster.seccomp_dir.iterdir()) == []
    # The namespace labelled for binding, with its binding still there, gets pods as they are.
    probe = {**TEST_POD, "metadata": {"name": "after-uninstall"}}
    in_cluster.kubectl("-n", APP_NAMESPACE, "create", "-f", "-", stdin=yaml.safe_dump(probe))
    in_cluster.kubectl(
        "-n", APP_NAMESPACE, "wait", "--for=condition=Ready", "pod/after-uninstall", "--timeout=90s"
    )
    created = in_cluster.json("-n", APP_NAMESPACE, "get", "pod", "after-uninstall")
    assert "securityContext" not in created["spec"]["containers"][0]
