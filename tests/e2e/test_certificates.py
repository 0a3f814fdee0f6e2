"""Certificates in a cluster (acceptance 9) against the real apiserver: the reconciler's certificates
controller renews the serving certificate and changes the CA, forced by short validities, while
admission requests run without pause through a real webhook process - none may fail; and the webhook's
Secret never holds a CA private key.

The kubelet's part (a Secret's keys appearing as files in the webhook's volume) is played by a thread
that copies the Secret into the webhook's certificate directory; the webhook configurations' owner
(the spod controller in `spo reconciler`) by a callback re-applying them with the Secret's `ca.crt`.
"""

from __future__ import annotations

import base64
import datetime
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
from api import constants
from api.types import SPODSpec
from certs.pki import KeyPair
from reconciler.certificates import Validity
from reconciler.certificates_controller import CertificateReconciler
from reconciler.cli import build_manager
from reconciler.runtime import Manager
from reconciler.webhook_config import (
    Endpoint,
    apply_webhook_configurations,
    desired_mutating_configuration,
    desired_validating_configuration,
)
from spo import localcluster
from spo.cli import build_parser
from spo.processes import stop_process
from tests.conftest import WebhookServer
from tests.e2e.leftovers import hand_back_session
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

# Short enough that a run sees serving renewals, a CA change and the old CA's expiry in about a minute.
SHORT = Validity(ca=datetime.timedelta(seconds=40), serving=datetime.timedelta(seconds=16))
HOSTS = ["127.0.0.1", "localhost"]


def _read_secret(core: client.CoreV1Api, name: str, namespace: str) -> dict[str, bytes] | None:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


@dataclass
class Observed:
    """What the kubelet stand-in saw of the webhook's Secret."""

    secret_keys: set[str] = field(default_factory=set)
    serving_serials: list[int] = field(default_factory=list)
    bundles: list[list[x509.Certificate]] = field(default_factory=list)


def _kubelet(
    core: client.CoreV1Api, namespace: str, cert_dir: Path, seen: Observed, stop: threading.Event
) -> None:
    last: dict[str, bytes] | None = None
    while not stop.wait(0.2):
        data = _read_secret(core, constants.WEBHOOK_CERT_SECRET, namespace)
        if data is None or data == last:
            continue
        last = data
        seen.secret_keys |= set(data)
        pair = KeyPair(data[constants.TLS_CERT_FILE], data[constants.TLS_KEY_FILE])
        certs.write_pair(cert_dir, pair)
        bundle = x509.load_pem_x509_certificates(data[constants.CA_CERT_FILE])
        if not seen.bundles or seen.bundles[-1] != bundle:
            seen.bundles.append(bundle)
        serial = pair.certificate.serial_number
        if not seen.serving_serials or seen.serving_serials[-1] != serial:
            seen.serving_serials.append(serial)


@dataclass
class Load:
    admitted: int = 0
    failures: list[str] = field(default_factory=list)


def _admissions(core: client.CoreV1Api, namespace: str, load: Load, stop: threading.Event) -> None:
    """Server-side dry-run pod creations in a namespace opted in to binding: each one is an admission
    request through the binding webhook (failurePolicy Fail)."""
    pod: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "load-"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    while not stop.is_set():
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
            load.admitted += 1
        except ApiException as error:
            load.failures.append(f"{error.status}: {error.body}")


@pytest.fixture
def bound_namespace(kube: client.ApiClient, namespace: str) -> str:
    client.CoreV1Api(kube).patch_namespace(
        namespace, {"metadata": {"labels": {constants.LABEL_ENABLE_BINDING: "true"}}}
    )
    return namespace


def test_renewals_and_a_ca_change_fail_no_admission_and_never_expose_the_ca_key(
    kube: client.ApiClient,
    control_plane: localcluster.ControlPlane,
    webhook_server: WebhookServer,
    bound_namespace: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(kube)
    secrets_namespace = bound_namespace  # the reconciler's namespace in this test
    port = localcluster.free_port()
    endpoint = Endpoint(url=f"https://127.0.0.1:{port}")
    spec = SPODSpec()

    def publish() -> None:
        data = _read_secret(core, constants.WEBHOOK_CERT_SECRET, secrets_namespace) or {}
        bundle = base64.b64encode(data[constants.CA_CERT_FILE]).decode("ascii")
        apply_webhook_configurations(
            kube,
            desired_mutating_configuration(spec, endpoint, bundle),
            desired_validating_configuration(endpoint, bundle),
        )

    manager = Manager()
    CertificateReconciler(
        kube, secrets_namespace, hosts=HOSTS, validity=SHORT, on_bundle_change=publish
    ).register(manager)
    seen, stop = Observed(), threading.Event()
    cert_dir = tmp_path / "webhook-certs"
    webhook = None
    threads: list[threading.Thread] = []
    try:
        manager.start()
        eventually(
            lambda: _read_secret(core, constants.WEBHOOK_CERT_SECRET, secrets_namespace) is not None,
            60,
            "Secret",
        )
        kubelet = threading.Thread(
            target=_kubelet, args=(core, secrets_namespace, cert_dir, seen, stop), daemon=True
        )
        kubelet.start()
        threads.append(kubelet)
        eventually((cert_dir / constants.TLS_CERT_FILE).exists, 30, "certificate files")
        webhook = _start_webhook(control_plane, port, cert_dir, tmp_path)
        publish()

        load = Load()
        admissions = threading.Thread(
            target=_admissions, args=(core, bound_namespace, load, stop), daemon=True
        )
        admissions.start()
        threads.append(admissions)

        first_ca = seen.bundles[0][0]

        def rotated_and_settled() -> bool:
            # a CA change happened, the old CA expired and left the bundle, and a renewal followed
            last = seen.bundles[-1]
            return len(last) == 1 and last[0] != first_ca and len(seen.serving_serials) >= 4

        eventually(rotated_and_settled, 180, "CA change and renewals")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        manager.stop()
        if webhook is not None:
            stop_process(webhook.pid, webhook)
        hand_back_session(control_plane, kube, webhook_server.url)

    assert load.failures == []
    assert load.admitted > 0
    assert any(len(bundle) == 2 for bundle in seen.bundles), "old and new CA were never trusted together"
    assert seen.secret_keys == {constants.TLS_CERT_FILE, constants.TLS_KEY_FILE, constants.CA_CERT_FILE}
    ca_secret = _read_secret(core, constants.WEBHOOK_CA_SECRET, secrets_namespace) or {}
    assert set(ca_secret) == {constants.CA_CERT_FILE, constants.CA_KEY_FILE}


def _start_webhook(
    cluster: localcluster.ControlPlane, port: int, cert_dir: Path, tmp_path: Path
) -> subprocess.Popen[bytes]:
    argv = localcluster.python_module(
        "spo.cli", "webhook",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--cert-dir", str(cert_dir),
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", constants.DEFAULT_NAMESPACE,
    )  # fmt: skip
    with (tmp_path / "webhook.log").open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    eventually(
        lambda: localcluster.http_ok(f"https://127.0.0.1:{port}/readyz", context), 60, "webhook /readyz"
    )
    return process


def _reconciler_args(cluster: localcluster.ControlPlane, namespace: str, *extra: str) -> Any:
    return build_parser().parse_args(
        [
            "reconciler",
            "--kubeconfig", str(cluster.kubeconfig),
            "--namespace", namespace,
            "--no-daemonset",
            *extra,
        ]
    )  # fmt: skip


def test_spo_reconciler_makes_the_secrets_and_publishes_their_bundle(
    kube: client.ApiClient,
    control_plane: localcluster.ControlPlane,
    webhook_server: WebhookServer,
    namespace: str,
) -> None:
    """In a cluster (no --ca-file, no --cert-manager): the Secrets appear, the webhook configurations'
    caBundle is the webhook Secret's ca.crt, and that Secret names the Service and holds no CA key."""
    core = client.CoreV1Api(kube)
    manager = build_manager(_reconciler_args(control_plane, namespace))
    assert "certificates" in [c.name for c in manager.controllers]
    admission = client.AdmissionregistrationV1Api(kube)

    def published() -> bool:
        data = _read_secret(core, constants.WEBHOOK_CERT_SECRET, namespace)
        if data is None:
            return False
        bundle = base64.b64encode(data[constants.CA_CERT_FILE]).decode("ascii")
        mutating = admission.read_mutating_webhook_configuration(constants.MUTATING_WEBHOOK_CONFIGURATION)
        return all(w.client_config.ca_bundle == bundle for w in mutating.webhooks or [])

    try:
        manager.start()
        eventually(published, 60, "the Secret's bundle in the webhook configurations")
    finally:
        manager.stop()
        hand_back_session(control_plane, kube, webhook_server.url)
    data = _read_secret(core, constants.WEBHOOK_CERT_SECRET, namespace) or {}
    assert set(data) == {constants.TLS_CERT_FILE, constants.TLS_KEY_FILE, constants.CA_CERT_FILE}
    serving = x509.load_pem_x509_certificate(data[constants.TLS_CERT_FILE])
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == set(
        certs.webhook_dns_names(constants.WEBHOOK_SERVICE, namespace)
    )
    ca = _read_secret(core, constants.WEBHOOK_CA_SECRET, namespace) or {}
    serving.verify_directly_issued_by(x509.load_pem_x509_certificate(ca[constants.CA_CERT_FILE]))


@pytest.mark.parametrize(
    "flag", [["--cert-manager"], ["--ca-file", "ca.crt"], ["--webhook-url", "https://127.0.0.1:9443"]]
)
def test_certificates_are_left_to_cert_manager_a_ca_file_or_a_local_webhook(
    control_plane: localcluster.ControlPlane, namespace: str, flag: list[str]
) -> None:
    manager = build_manager(_reconciler_args(control_plane, namespace, *flag))
    assert "certificates" not in [c.name for c in manager.controllers]
