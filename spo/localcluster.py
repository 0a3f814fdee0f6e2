"""A real kube-apiserver + etcd on loopback, as used by `spo up` and by the test fixtures.

Binaries come from hack/controlplane/build.sh (built from the Go module proxy, cached outside the
clone). The PKI comes from certs/: one CA signs the apiserver's serving certificate, an admin client
certificate in group system:masters, and the webhook's serving certificate.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

import certs
from api import constants
from spo.processes import stop_process

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "hack" / "controlplane" / "build.sh"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 5.0

# Docs 7.9.12-7.9.15 read who exec'd and the webhooks' audit annotations (Metadata level); exec
# sessions are kept at Request level so the event also shows the patch the webhook made.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Request",
            "resources": [
                {"group": "", "resources": ["pods/exec", "pods/attach", "pods/ephemeralcontainers"]}
            ],
        },
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete"],
            "resources": [{"group": "", "resources": ["pods"]}],
        },
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    pass


def binaries_dir(progress: Callable[[str], None] = log.info) -> Path:
    """Build (or find, when cached) kube-apiserver and etcd; honours SPO_CONTROLPLANE_BIN."""
    override = os.environ.get("SPO_CONTROLPLANE_BIN")
    if override and (Path(override) / "kube-apiserver").exists():
        return Path(override)
    if not BUILD_SCRIPT.exists():
        raise ControlPlaneError(
            f"{BUILD_SCRIPT} not found: run from a source checkout or set SPO_CONTROLPLANE_BIN"
        )
    progress("ensuring kube-apiserver and etcd are built (the first build takes several minutes)...")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pki:
    """File paths of the control plane's certificates, all under one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / constants.CA_CERT_FILE

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def webhook_dir(self) -> Path:
        return self.directory / "webhook"

    def create(self, webhook_dns_names: Sequence[str]) -> None:
        ca = certs.generate_ca("spo-local-ca")
        certs.write_pair(self.directory, ca, cert_name=constants.CA_CERT_FILE, key_name=constants.CA_KEY_FILE)
        apiserver = certs.issue_certificate(
            ca,
            "kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1"],
        )
        certs.write_pair(self.directory, apiserver, cert_name="apiserver.crt", key_name="apiserver.key")
        admin = certs.issue_certificate(ca, "admin", organization="system:masters", client=True)
        certs.write_pair(self.directory, admin, cert_name="admin.crt", key_name="admin.key")
        webhook = certs.issue_certificate(
            ca, "spo-webhook", dns_names=["localhost", *webhook_dns_names], ip_addresses=["127.0.0.1"]
        )
        certs.write_pair(self.webhook_dir, webhook)
        (self.directory / "sa.key").write_bytes(certs.generate_private_key_pem())
        (self.directory / "sa.key").chmod(0o600)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver under `state_dir`; stop() ends exactly the processes start() began."""

    state_dir: Path
    binaries: Path
    webhook_dns_names: Sequence[str] = ()
    api_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self) -> ControlPlane:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not self.pki.ca_cert.exists():
            self.pki.create(self.webhook_dns_names)
        etcd_url = self._start_etcd()
        self.api_port = self.api_port or free_port()
        self._start_apiserver(etcd_url)
        self._write_kubeconfig()
        return self

    def _start_etcd(self) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries / "etcd"),
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Test and local data only: fsync makes every write wait on the disk.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self.wait_until(lambda: http_ok(f"{client_url}/health"), "etcd /health")
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self.pki
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.directory / 'apiserver.crt'}",
                f"--tls-private-key-file={pki.directory / 'apiserver.key'}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-issuer=https://127.0.0.1:{self.api_port}",
                f"--service-account-key-file={pki.directory / 'sa.key'}",
                f"--service-account-signing-key-file={pki.directory / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # The ServiceAccount admission plugin needs the controller-manager's default SAs.
                "--disable-admission-plugins=ServiceAccount",
                # No Endpoints for `kubernetes` to keep: nothing may dial a non-loopback address.
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--profiling=false",
            ],
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self.wait_until(lambda: http_ok(f"{self.url}/readyz", context), "kube-apiserver /readyz")

    def _write_kubeconfig(self) -> None:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "spo-local",
                    "cluster": {"server": self.url, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self.pki.admin_cert),
                        "client-key": str(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "spo-local", "context": {"cluster": "spo-local", "user": "admin"}}],
            "current-context": "spo-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))

    def _spawn(self, name: str, argv: list[str]) -> None:
        with self.log_file(name).open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def wait_until(self, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    tail = self.log_file(name).read_text(errors="replace")[-3000:]
                    raise ControlPlaneError(
                        f"{name} exited with {process.returncode} while waiting for {what}:\n{tail}"
                    )
            if probe():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{what} not ready after {START_TIMEOUT_SECONDS:.0f}s; logs in {self.state_dir / 'logs'}"
        )

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            # kube-apiserver's graceful shutdown can wait on clients that keep reconnecting (a watch
            # cache, say) well past this; the data is test or local data, so it is then killed.
            stop_process(process.pid, process, timeout=STOP_TIMEOUT_SECONDS)
        self.processes.clear()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:  # noqa: S310 (loopback URL we built)
            return bool(response.status == 200)
    except OSError:
        return False


def install_crds(api: ApiClient, crds: Sequence[dict[str, Any]], timeout: float = 60.0) -> None:
    """Create (or replace) the CRDs and wait until the apiserver serves every one of them."""
    extensions = client.ApiextensionsV1Api(api)
    for crd in crds:
        name = crd["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(
                client.V1CustomResourceDefinition.model_validate(crd)
            )
        except ApiException as error:
            if error.status != 409:
                raise
            replacement = client.V1CustomResourceDefinition.model_validate(crd)
            replacement.metadata = extensions.read_custom_resource_definition(name).metadata
            extensions.replace_custom_resource_definition(name, replacement)
    deadline = time.monotonic() + timeout
    pending = {crd["metadata"]["name"] for crd in crds}
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending:
            time.sleep(0.2)
    if pending:
        raise ControlPlaneError(f"CRDs not established after {timeout:.0f}s: {sorted(pending)}")


def ensure_namespace(api: ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {}))
    try:
        client.CoreV1Api(api).create_namespace(body)
    except ApiException as error:
        if error.status != 409:
            raise
