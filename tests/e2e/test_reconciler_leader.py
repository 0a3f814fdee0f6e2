"""Two `spo reconciler --leader-elect` processes: only the lease holder writes; when it is killed the
other takes over (within the lease duration, waited for with a generous timeout) and acts on the next
spod change. Both serve /healthz, /readyz and /metrics."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from api import constants
from spo import localcluster
from tests.conftest import WebhookServer
from tests.docs_examples import spod_patches
from tests.e2e.leftovers import hand_back_session
from tests.eventually import eventually
from tests.kubectl import kubectl, kubectl_json

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 4


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    def metric(self, metric: str, **labels: str) -> float:
        _, text = self.get("/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def answers(self, path: str) -> bool:
        return self.get(path)[0] == 200


def _start(cluster: localcluster.ControlPlane, namespace: str, url: str, log: Any) -> Replica:
    port = localcluster.free_port()
    argv = [
        sys.executable, "-m", "spo.cli", "reconciler",
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
        "--webhook-url", url,
        "--ca-file", str(cluster.pki.ca_cert),
        "--no-daemonset",
        "--leader-elect",
        "--lease-duration", str(LEASE_SECONDS),
        "--health-host", "127.0.0.1",
        "--health-port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Replica(process, port)


@pytest.fixture
def replicas(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    namespace: str,
    webhook_server: WebhookServer,
    tmp_path: Any,
) -> Iterator[list[Replica]]:
    with (tmp_path / "reconcilers.log").open("ab") as log:
        started = [_start(control_plane, namespace, webhook_server.url, log) for _ in range(2)]
        try:
            yield started
        finally:
            for replica in started:
                if replica.process.poll() is None:
                    replica.process.terminate()
                    replica.process.wait(30)
            hand_back_session(control_plane, kube, webhook_server.url)


def _holder(kube: client.ApiClient, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(constants.LEADER_LEASE, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity if lease.spec else None


def test_only_the_leader_writes_and_the_other_takes_over(
    replicas: list[Replica], kube: client.ApiClient, namespace: str, control_plane: localcluster.ControlPlane
) -> None:
    for replica in replicas:
        eventually(functools.partial(replica.answers, "/healthz"), timeout=60, what="/healthz")
        eventually(functools.partial(replica.answers, "/readyz"), timeout=60, what="/readyz")
    eventually(lambda: _holder(kube, namespace), timeout=60, what="a leader")
    by_pid = {r.process.pid: r for r in replicas}
    holder = _holder(kube, namespace) or ""
    leader = by_pid[int(holder.split("_")[1])]
    (standby,) = [r for r in replicas if r is not leader]
    kubeconfig = control_plane.kubeconfig
    eventually(
        lambda: kubectl(kubeconfig, "-n", namespace, "get", "spod", "spod", check=False).returncode == 0
    )
    eventually(lambda: leader.metric("controller_runtime_reconcile_total") > 0, what="the leader reconciles")
    assert standby.metric("controller_runtime_reconcile_total") == 0
    assert (
        leader.metric("leader_election_master_status"),
        standby.metric("leader_election_master_status"),
    ) == (
        1,
        0,
    )
    assert leader.metric("workqueue_depth", name="spod") >= 0

    os.kill(leader.process.pid, signal.SIGKILL)
    leader.process.wait(30)
    patch = next(e["patch"] for e in spod_patches() if e["section"] == "7.8.8")
    kubectl(kubeconfig, "-n", namespace, "patch", "spod", "spod", "--type=merge", "-p", json.dumps(patch))

    def recording_selector() -> Any:
        configuration = kubectl_json(
            kubeconfig, "get", "mutatingwebhookconfiguration", "spo-mutating-webhook-configuration"
        )
        return next(w for w in configuration["webhooks"] if w["name"] == "recording.spo.io")["objectSelector"]

    selector = {"matchExpressions": [{"key": "spo-record", "operator": "In", "values": ["true"]}]}
    eventually(lambda: recording_selector() == selector, timeout=LEASE_SECONDS * 10, what="the standby acts")
    assert (_holder(kube, namespace) or "").split("_")[1] == str(standby.process.pid)
    assert standby.metric("leader_election_master_status") == 1
