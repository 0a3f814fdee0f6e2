"""What `spo up` brings up: the control plane, the CRDs, the operator namespace and default spod,
the webhook process, and the webhook configurations pointing at it by URL."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
import manifests.crds
from api import constants
from api.kube import api_client
from api.types import SecurityProfilesOperatorDaemon, default_spod
from reconciler.webhook_config import (
    Endpoint,
    apply_webhook_configurations,
    desired_mutating_configuration,
    desired_validating_configuration,
)
from spo import localcluster


def _ensure_spod(api: client.ApiClient, namespace: str) -> SecurityProfilesOperatorDaemon:
    spod = default_spod(namespace)
    objects = client.CustomObjectsApi(api)
    version = SecurityProfilesOperatorDaemon.VERSION
    try:
        objects.create_namespaced_custom_object(
            constants.GROUP, version, namespace, "securityprofilesoperatordaemons", spod.to_dict()
        )
    except ApiException as error:
        if error.status != 409:
            raise
        current = objects.get_namespaced_custom_object(
            constants.GROUP, version, namespace, "securityprofilesoperatordaemons", constants.SPOD_NAME
        )
        spod = SecurityProfilesOperatorDaemon.model_validate(current)
    return spod


def start_webhook(
    cluster: localcluster.ControlPlane, namespace: str, port: int, name: str = "webhook"
) -> subprocess.Popen[bytes]:
    """`spo webhook` on 127.0.0.1:port with the cluster's webhook certificate; returns once ready."""
    argv = [
        sys.executable, "-m", "spo.cli", "webhook",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--cert-dir", str(cluster.pki.webhook_dir),
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
    ]  # fmt: skip
    with cluster.log_file(name).open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    cluster.processes[name] = process
    context = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
    cluster.wait_until(
        lambda: localcluster.http_ok(f"https://127.0.0.1:{port}/readyz", context), "webhook /readyz"
    )
    return process


def bring_up(state_dir: Path, namespace: str, webhook_port: int) -> localcluster.ControlPlane:
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster = localcluster.ControlPlane(
        state_dir,
        localcluster.binaries_dir(progress=lambda m: print(m, flush=True)),
        webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, namespace),
    )
    print(f"starting etcd and kube-apiserver under {state_dir} ...", flush=True)
    try:
        cluster.start()
        api = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(api, manifests.crds.all_crds())
        localcluster.ensure_namespace(api, namespace)
        spod = _ensure_spod(api, namespace)
        start_webhook(cluster, namespace, webhook_port)
        endpoint = Endpoint(url=f"https://127.0.0.1:{webhook_port}")
        bundle = certs.ca_bundle(
            certs.load_pair(cluster.pki.directory, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
        )
        apply_webhook_configurations(
            api,
            desired_mutating_configuration(spod.spec, endpoint, bundle, namespace),
            desired_validating_configuration(endpoint, bundle),
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster
