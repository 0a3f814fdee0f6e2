"""Fixtures: a real etcd + kube-apiserver per pytest session, a fresh namespace per test, and the
webhook server registered with the apiserver by URL on 127.0.0.1; for tests marked `node`, a real node
(kubelet, containerd, scheduler, controller-manager), one per machine, with the operator as `spo up`
runs it."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from kubernetes import client

import certs
import manifests.crds
from api import constants
from api.kube import api_client
from api.types import SPODSpec
from reconciler.webhook_config import (
    Endpoint,
    apply_webhook_configurations,
    desired_mutating_configuration,
    desired_validating_configuration,
)
from spo import localcluster, node
from spo.bringup import start_agent, start_reconciler, start_webhook, stop_all
from spo.processes import stop_process

# The machines tests run on are shared and loaded: how long an example takes says nothing about the code,
# so neither a deadline nor the too_slow health check may fail a property test.
settings.register_profile("loaded-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loaded-machine")

# The spod the e2e webhook registration is computed from: exec auditing on, so every webhook is live.
E2E_SPOD_SPEC = SPODSpec(enable_json_enricher=True)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localcluster.ControlPlane]:
    cluster = localcluster.ControlPlane(
        tmp_path_factory.mktemp("controlplane"),
        localcluster.binaries_dir(),
        webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, constants.DEFAULT_NAMESPACE),
    )
    try:
        cluster.start()
        api = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(api, manifests.crds.all_crds())
        localcluster.ensure_namespace(api, constants.DEFAULT_NAMESPACE)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def kube(control_plane: localcluster.ControlPlane) -> client.ApiClient:
    return api_client(str(control_plane.kubeconfig))


@pytest.fixture
def namespace(kube: client.ApiClient) -> str:
    """A namespace of its own per test (a bare apiserver cannot delete namespaces, so none is reused)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    localcluster.ensure_namespace(kube, name)
    return name


@dataclass
class WebhookServer:
    cluster: localcluster.ControlPlane
    name: str
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        """Stop it and forget it, so the control plane does not report it as a crashed process."""
        stop_process(self.process.pid, self.process)
        self.cluster.processes.pop(self.name, None)


def start_webhook_server(cluster: localcluster.ControlPlane, port: int) -> WebhookServer:
    name = f"webhook-{port}"
    process = start_webhook(cluster, constants.DEFAULT_NAMESPACE, port, name)
    return WebhookServer(cluster, name, process, f"https://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def webhook_server(
    control_plane: localcluster.ControlPlane, kube: client.ApiClient
) -> Iterator[WebhookServer]:
    """The webhook process, registered for the whole session by `clientConfig.url`."""
    server = start_webhook_server(control_plane, localcluster.free_port())
    register_webhooks(control_plane, kube, server.url)
    yield server
    server.stop()


def register_webhooks(
    cluster: localcluster.ControlPlane, kube: client.ApiClient, url: str, spec: SPODSpec = E2E_SPOD_SPEC
) -> None:
    bundle = certs.ca_bundle(certs.load_pair(cluster.pki.directory, "ca.crt", "ca.key"))
    endpoint = Endpoint(url=url)
    apply_webhook_configurations(
        kube,
        desired_mutating_configuration(spec, endpoint, bundle),
        desired_validating_configuration(endpoint, bundle),
    )


@contextmanager
def webhook_down(
    cluster: localcluster.ControlPlane, kube: client.ApiClient, serving: WebhookServer
) -> Iterator[None]:
    """The webhooks registered at a URL where nothing answers, as during an outage; `serving` after."""
    doomed = start_webhook_server(cluster, localcluster.free_port())
    register_webhooks(cluster, kube, doomed.url)
    doomed.stop()
    try:
        yield
    finally:
        register_webhooks(cluster, kube, serving.url)


# Another test run (or a user's `spo up`) may hold the machine's node: wait for it rather than fail.
NODE_LOCK_WAIT_SECONDS = 3600.0


@dataclass
class NodeCluster:
    """A running control plane with a Ready node and the operator as `spo up` runs it: the webhook, the
    reconciler and the node's agent."""

    cluster: localcluster.ControlPlane
    node: node.Node
    kube: client.ApiClient
    agent_port: int

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def seccomp_dir(self) -> Path:
        return self.node.paths.seccomp_dir


@dataclass
class NodeSlot:
    """The session's node: started on first use, stopped to free the machine (for the tests that run
    `spo up` themselves) and started again when a later test needs it."""

    base: Path
    running: NodeCluster | None = None
    lock: node.NodeLock | None = None
    generation: int = 0

    def get(self) -> NodeCluster:
        if self.running is None:
            self.running = self._start()
        return self.running

    def _start(self) -> NodeCluster:
        binaries, node_binaries = localcluster.binaries_dir(), node.node_binaries_dir()
        missing = node.missing_prerequisites(binaries, node_binaries)
        if missing:
            pytest.skip(f"the node's prerequisites are missing: {', '.join(missing)}")
        self.generation += 1
        state = self.base / f"node-cluster-{self.generation}"
        self.lock = node.NodeLock.acquire(state, wait=NODE_LOCK_WAIT_SECONDS)
        cluster = localcluster.ControlPlane(
            state,
            binaries,
            webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, constants.DEFAULT_NAMESPACE),
            node=True,
        )
        local_node = node.Node(cluster, node_binaries)
        try:
            cluster.start()
            cluster.start_controllers()
            local_node.start(self.lock)
            kube = api_client(str(cluster.kubeconfig))
            localcluster.install_crds(kube, manifests.crds.all_crds())
            localcluster.ensure_namespace(kube, constants.DEFAULT_NAMESPACE)
            server = start_webhook_server(cluster, localcluster.free_port())
            # As `spo up`: the reconciler registers the webhooks and keeps the profiles' statuses and
            # finalizers, the node's agent writes profiles where this node's kubelet reads them.
            start_reconciler(cluster, constants.DEFAULT_NAMESPACE, server.url)
            agent_port = localcluster.free_port()
            start_agent(
                cluster,
                local_node.name,
                local_node.paths.kubelet_root,
                constants.DEFAULT_NAMESPACE,
                agent_port,
                selinux_dir=local_node.paths.selinux_dir,
                audit_log=local_node.audit_log,
            )
        except BaseException:
            self._stop(cluster, node_binaries)
            raise
        return NodeCluster(cluster, local_node, kube, agent_port)

    def stop(self) -> None:
        if self.running is not None:
            self._stop(self.running.cluster, self.running.node.binaries)
            self.running = None

    def _stop(self, cluster: localcluster.ControlPlane, node_binaries: Path) -> None:
        stop_all(cluster, node_binaries)
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@pytest.fixture(scope="session")
def node_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSlot]:
    if os.geteuid() != 0:
        pytest.skip("a real node needs root")
    slot = NodeSlot(tmp_path_factory.mktemp("node"))
    yield slot
    slot.stop()


@pytest.fixture
def node_cluster(node_slot: NodeSlot) -> NodeCluster:
    return node_slot.get()


@pytest.fixture
def node_namespace(node_cluster: NodeCluster) -> str:
    """A fresh namespace on the node's cluster, once its `default` service account exists (the
    ServiceAccount admission plugin refuses pods until the controller-manager has made it)."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    localcluster.ensure_namespace(node_cluster.kube, name)
    core = client.CoreV1Api(node_cluster.kube)
    node_cluster.cluster.wait_until(
        lambda: any(
            sa.metadata and sa.metadata.name == "default"
            for sa in core.list_namespaced_service_account(name).items
        ),
        f"service account default in {name}",
    )
    return name
