"""Fixtures: a real etcd + kube-apiserver per pytest session, a fresh namespace per test, and the
webhook server registered with the apiserver by URL on 127.0.0.1."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
from spo import localcluster
from spo.bringup import start_webhook
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
