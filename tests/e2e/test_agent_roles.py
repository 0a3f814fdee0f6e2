"""`spo agent --role` against the real apiserver, as the spod DaemonSet's containers run it: each role
starts, becomes healthy on its own port and does its own part only. No node runs here, so the enricher
roles have no audit lines to enrich; what they produce is covered by tests/test_audit_pipeline.py."""

from __future__ import annotations

import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants
from api.types import heartbeat_lease_name, node_finalizer
from spo import localcluster
from spo.processes import stop_process
from tests.e2e.test_agent import apply, get_profile, node_status, release_node, seccomp_profile, wait_state

pytestmark = pytest.mark.e2e

ROLES = (constants.AGENT_ROLE_PROFILES, constants.AGENT_ROLE_LOG_ENRICHER, constants.AGENT_ROLE_JSON_ENRICHER)
# Families only one part registers: the profile operations (profiles) and the audit counters (log enricher).
OPERATIONS_FAMILY = "security_profiles_operator_seccomp_profile_total"
AUDIT_FAMILY = "security_profiles_operator_seccomp_profile_audit_total"


@dataclass
class RoleAgent:
    role: str
    node: str
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def seccomp_dir(self) -> Path:
        return self.root / "kubelet" / "seccomp"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return str(response.read().decode())

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(line.split()[1]) / 1024


def start(cluster: localcluster.ControlPlane, role: str, root: Path, port: int, *extra: str) -> RoleAgent:
    """The agent as the DaemonSet's container for `role` runs it, its host paths below `root`."""
    node = f"{role}-{uuid.uuid4().hex[:8]}"
    argv = localcluster.python_module(
        "spo.cli", "agent",
        f"--role={role}",
        f"--node-name={node}",
        f"--kubeconfig={cluster.kubeconfig}",
        f"--namespace={constants.DEFAULT_NAMESPACE}",
        "--host=127.0.0.1",
        f"--metrics-port={port}",
        f"--kubelet-dir={root / 'kubelet'}",
        f"--audit-log={root / 'audit' / 'audit.log'}",
        f"--state-dir={root / 'recordings'}",
        "--no-selinux",
        *extra,
    )  # fmt: skip
    process = cluster.spawn(f"agent-{node}", argv)
    cluster.wait_until(
        lambda: localcluster.http_ok(f"http://127.0.0.1:{port}{constants.PATH_HEALTHZ}"), f"{role} /healthz"
    )
    return RoleAgent(role, node, root, port, process)


@pytest.fixture
def agents(
    control_plane: localcluster.ControlPlane, kube: client.ApiClient, tmp_path: Path
) -> Iterator[dict[str, RoleAgent]]:
    running: dict[str, RoleAgent] = {}
    ports = {role: localcluster.free_port() for role in ROLES}
    # As in the spod pod: the profiles container serves the log enricher's families too.
    log_enricher = f"http://127.0.0.1:{ports[constants.AGENT_ROLE_LOG_ENRICHER]}"
    extra = {constants.AGENT_ROLE_PROFILES: [f"--metrics-from={log_enricher}"]}
    try:
        for role in ROLES:
            running[role] = start(control_plane, role, tmp_path / role, ports[role], *extra.get(role, []))
        yield running
    finally:
        for agent in running.values():
            stop_process(agent.process.pid, agent.process)
            control_plane.processes.pop(f"agent-{agent.node}", None)
            release_node(kube, agent.node)
            print(control_plane.log_file(f"agent-{agent.node}").read_text(errors="replace")[-3000:])


def lease_exists(kube: client.ApiClient, node: str) -> bool:
    try:
        client.CoordinationV1Api(kube).read_namespaced_lease(
            heartbeat_lease_name(node), constants.DEFAULT_NAMESPACE
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_each_role_does_its_own_part_only(
    control_plane: localcluster.ControlPlane, kube: client.ApiClient, agents: dict[str, RoleAgent]
) -> None:
    profiles = agents[constants.AGENT_ROLE_PROFILES]
    enrichers = [agents[constants.AGENT_ROLE_LOG_ENRICHER], agents[constants.AGENT_ROLE_JSON_ENRICHER]]
    name = f"roles-{uuid.uuid4().hex[:8]}"
    apply(control_plane.kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"}))

    # The profiles role installs it and reports this node's status; its heartbeat counts the node.
    wait_state(kube, name, profiles.node, "Installed")
    assert (profiles.seccomp_dir / constants.SECCOMP_OPERATOR_DIR / f"{name}.json").is_file()
    assert lease_exists(kube, profiles.node)
    profile = get_profile(kube, name)
    assert profile is not None
    finalizers = profile["metadata"]["finalizers"]
    assert node_finalizer(profiles.node) in finalizers

    # The enrichers, healthy all along, touch none of it.
    for enricher in enrichers:
        assert enricher.get(constants.PATH_HEALTHZ) == "ok"
        assert not enricher.seccomp_dir.exists()
        assert node_status(kube, name, enricher.node) is None
        assert node_finalizer(enricher.node) not in finalizers
        assert not lease_exists(kube, enricher.node)

    # Each serves its own part's metrics: the audit counters are the log enricher's alone, and the
    # profiles role (the metrics Service's) serves them too, from the log enricher.
    metrics = {agent.role: agent.get(constants.PATH_METRICS_SPOD) for agent in agents.values()}
    assert [OPERATIONS_FAMILY in metrics[role] for role in ROLES] == [True, False, False]
    assert [AUDIT_FAMILY in metrics[role] for role in ROLES] == [True, True, False]
    assert metrics[constants.AGENT_ROLE_PROFILES].count(f"# TYPE {AUDIT_FAMILY.removesuffix('_total')}") == 1
    for agent in agents.values():
        print(f"{agent.role}: RSS {agent.rss_mib():.0f} MiB")
