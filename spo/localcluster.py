"""A real kube-apiserver + etcd on loopback, as used by `spo up` and by the test fixtures.

Binaries come from hack/controlplane/build.sh (built from the Go module proxy, cached outside the
clone). The PKI comes from certs/: one CA signs the apiserver's serving certificate, an admin client
certificate in group system:masters, and the webhook's serving certificate.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
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
from spo.nodeconfig import kubeconfig, kubernetes_service_ip
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
        # Every request of the operator's own service accounts (in-cluster): tests/e2e/test_rbac.py holds
        # them against the roles (api.access).
        {
            "level": "Metadata",
            "userGroups": [f"{constants.SERVICE_ACCOUNTS_GROUP_PREFIX}{constants.DEFAULT_NAMESPACE}"],
        },
        {"level": "None"},
    ],
}


# Certificate names (files <name>.crt/.key in the PKI directory) of a cluster with a node.
KUBELET_CLIENT = "kubelet-client"
KUBELET_SERVING = "kubelet-serving"
# The apiserver's identity towards kubelets; bound to the built-in system:kubelet-api-admin role.
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
COMPONENTS_SERVING = "components-serving"


class ControlPlaneError(RuntimeError):
    pass


def python_module(module: str, *args: str) -> list[str]:
    """The command line running one of our modules in a child Python. -P: a folder named like one of
    our packages in the caller's working directory must not shadow it."""
    return [sys.executable, "-P", "-m", module, *args]


def binaries_dir(progress: Callable[[str], None] = log.info) -> Path:
    """Build (or find, when cached) the Kubernetes binaries and etcd; honours SPO_CONTROLPLANE_BIN."""
    return built_binaries(
        BUILD_SCRIPT, "SPO_CONTROLPLANE_BIN", "kube-apiserver", "Kubernetes and etcd", progress
    )


def built_binaries(
    script: Path, override_env: str, probe: str, what: str, progress: Callable[[str], None]
) -> Path:
    """Run one of hack/'s idempotent build scripts and return the directory it prints last."""
    override = os.environ.get(override_env)
    if override and (Path(override) / probe).exists():
        return Path(override)
    if not script.exists():
        raise ControlPlaneError(f"{script} not found: run from a source checkout or set {override_env}")
    progress(f"ensuring {what} are built (the first build takes several minutes)...")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"building {what} failed:\n{result.stderr[-4000:]}")
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

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    def create(self, webhook_dns_names: Sequence[str]) -> None:
        ca = certs.generate_ca("spo-local-ca")
        certs.write_pair(self.directory, ca, cert_name=constants.CA_CERT_FILE, key_name=constants.CA_KEY_FILE)
        admin = certs.issue_certificate(ca, "admin", organization="system:masters", client=True)
        certs.write_pair(self.directory, admin, cert_name="admin.crt", key_name="admin.key")
        webhook = certs.issue_certificate(
            ca, "spo-webhook", dns_names=["localhost", *webhook_dns_names], ip_addresses=["127.0.0.1"]
        )
        certs.write_pair(self.webhook_dir, webhook)
        (self.directory / "sa.key").write_bytes(certs.generate_private_key_pem())
        (self.directory / "sa.key").chmod(0o600)

    def issue_apiserver_serving(self) -> None:
        """The apiserver's serving certificate, issued on every start so that a state directory made by
        an older version gets the names this one serves under."""
        ca = certs.load_pair(self.directory, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
        apiserver = certs.issue_certificate(
            ca,
            "kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            # Pods reach it through the `kubernetes` Service's ClusterIP (the node routes it to loopback).
            ip_addresses=["127.0.0.1", kubernetes_service_ip()],
        )
        certs.write_pair(self.directory, apiserver, cert_name="apiserver.crt", key_name="apiserver.key")

    def create_node_components(self) -> None:
        """Identities of the control-plane parts that only run with a node."""
        ca = certs.load_pair(self.directory, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
        for name, user in (
            (APISERVER_KUBELET_CLIENT, APISERVER_KUBELET_CLIENT),
            (CONTROLLER_MANAGER, "system:kube-controller-manager"),
            (SCHEDULER, "system:kube-scheduler"),
        ):
            self._write(name, certs.issue_certificate(ca, user, client=True))
        self._write(
            COMPONENTS_SERVING,
            certs.issue_certificate(ca, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]),
        )

    def create_kubelet(self, node_name: str, node_ips: Sequence[str]) -> None:
        """The node's client identity and the kubelet's serving certificate (its names and IPs)."""
        ca = certs.load_pair(self.directory, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
        # The Node authorizer confines a kubelet to its own node and pods by this name and group.
        self._write(
            KUBELET_CLIENT,
            certs.issue_certificate(ca, f"system:node:{node_name}", organization="system:nodes", client=True),
        )
        self._write(
            KUBELET_SERVING,
            certs.issue_certificate(
                ca, node_name, dns_names=[node_name, "localhost"], ip_addresses=[*node_ips, "127.0.0.1"]
            ),
        )

    def _write(self, name: str, pair: certs.KeyPair) -> None:
        cert, key = self.pair(name)
        certs.write_pair(self.directory, pair, cert_name=cert.name, key_name=key.name)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver under `state_dir`; stop() ends exactly the processes start() began."""

    state_dir: Path
    binaries: Path
    webhook_dns_names: Sequence[str] = ()
    api_port: int = 0
    # With a node: the apiserver authorizes kubelets (Node authorizer) and reaches them with its own
    # client certificate, and pods get service-account tokens; controllers and scheduler run.
    node: bool = False
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
        self.pki.issue_apiserver_serving()
        if self.node and not self.pki.pair(COMPONENTS_SERVING)[0].exists():
            self.pki.create_node_components()
        etcd_url = self._start_etcd()
        self.api_port = self.api_port or free_port()
        self._start_apiserver(etcd_url)
        self._write_kubeconfig()
        return self

    def _start_etcd(self) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        self.spawn(
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
        self.spawn(
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
                f"--service-cluster-ip-range={constants.SERVICE_SUBNET}",
                "--allow-privileged=true",
                *self._node_flags(),
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

    def _node_flags(self) -> list[str]:
        if not self.node:
            # The ServiceAccount admission plugin needs the controller-manager's default SAs.
            return ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"]
        cert, key = self.pki.pair(APISERVER_KUBELET_CLIENT)
        return [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # Webhooks behind a Service are dialled at a ready pod's address on the node's bridge: no
            # kube-proxy routes ClusterIPs here.
            "--enable-aggregator-routing=true",
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.pki.ca_cert}",
            # The node's hostname resolves to loopback: the apiserver reaches the kubelet there.
            "--kubelet-preferred-address-types=Hostname,InternalIP",
        ]

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler, each with its own identity, healthy on return."""
        pki = self.pki
        serving_cert, serving_key = pki.pair(COMPONENTS_SERVING)
        ports = {}
        for name, extra in (
            (
                CONTROLLER_MANAGER,
                [
                    f"--service-account-private-key-file={pki.directory / 'sa.key'}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--use-service-account-credentials=true",
                    # No cloud, and the node's pod CIDR comes from the kubelet's configuration.
                    "--controllers=*,-node-ipam-controller",
                ],
            ),
            (SCHEDULER, []),
        ):
            cert, key = pki.pair(name)
            config = self.state_dir / f"{name}.kubeconfig"
            write_yaml(config, kubeconfig(self.url, pki.ca_cert, name, cert, key))
            ports[name] = free_port()
            self.spawn(
                name,
                [
                    str(self.binaries / name),
                    f"--kubeconfig={config}",
                    f"--authentication-kubeconfig={config}",
                    f"--authorization-kubeconfig={config}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports[name]}",
                    f"--tls-cert-file={serving_cert}",
                    f"--tls-private-key-file={serving_key}",
                    "--leader-elect=false",
                    *extra,
                ],
            )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        for name, port in ports.items():
            url = f"https://127.0.0.1:{port}/healthz"
            self.wait_until(functools.partial(http_ok, url, context), f"{name} /healthz")

    def _write_kubeconfig(self) -> None:
        write_yaml(self.kubeconfig, kubeconfig(self.url, self.pki.ca_cert, "admin", *self.pki.pair("admin")))

    def spawn(
        self, name: str, argv: list[str], pass_fds: Sequence[int] = (), env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in a session of its own, logging to logs/<name>.log, recorded as `name`."""
        with self.log_file(name).open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=pass_fds,
                env=env,
            )
        self.processes[name] = process
        return process

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


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data))


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
