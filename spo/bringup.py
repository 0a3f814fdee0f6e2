"""What `spo up` brings up: the control plane, the CRDs, the operator namespace, the webhook process,
the reconciler, which creates the default spod and the built-in base profiles and keeps the webhook
configurations pointing at the webhook by URL, and the node's agent."""

from __future__ import annotations

import functools
import ssl
import subprocess
from http import HTTPStatus
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
import manifests.crds
from api import constants
from api.kube import api_client
from spo import incluster, localcluster, node


def start_webhook(
    cluster: localcluster.ControlPlane, namespace: str, port: int, name: str = "webhook"
) -> subprocess.Popen[bytes]:
    """`spo webhook` on 127.0.0.1:port with the cluster's webhook certificate; returns once ready."""
    argv = localcluster.python_module(
        "spo.cli", "webhook",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--cert-dir", str(cluster.pki.webhook_dir),
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
    )  # fmt: skip
    process = cluster.spawn(name, argv)
    context = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
    cluster.wait_until(
        lambda: localcluster.http_ok(f"https://127.0.0.1:{port}/readyz", context), "webhook /readyz"
    )
    return process


def start_agent(
    cluster: localcluster.ControlPlane,
    node_name: str,
    kubelet_dir: Path,
    namespace: str,
    port: int,
    *,
    name: str = "agent",
    selinux_dir: Path | None = None,
    selinux_mode: str | None = None,
    audit_log: Path | None = None,
    state_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`spo agent` for `node_name` as a host process writing below `kubelet_dir` (and SELinux policies
    in `selinux_dir` with `selinux_mode`, following `audit_log` for the enrichers and the recorder,
    which keeps its state in `state_dir`; the agent's defaults when None); returns once its caches are
    synced (/healthz)."""
    argv = localcluster.python_module(
        "spo.cli", "agent",
        "--node-name", node_name,
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
        "--kubelet-dir", str(kubelet_dir),
        "--host", "127.0.0.1",
        "--metrics-port", str(port),
        *(["--selinux-dir", str(selinux_dir)] if selinux_dir is not None else []),
        *(["--selinux-mode", selinux_mode] if selinux_mode is not None else []),
        *(["--audit-log", str(audit_log)] if audit_log is not None else []),
        *(["--state-dir", str(state_dir)] if state_dir is not None else []),
    )  # fmt: skip
    process = cluster.spawn(name, argv)
    cluster.wait_until(
        lambda: localcluster.http_ok(f"http://127.0.0.1:{port}{constants.PATH_HEALTHZ}"), f"{name} /healthz"
    )
    return process


def start_reconciler(
    cluster: localcluster.ControlPlane, namespace: str, webhook_url: str, name: str = "reconciler"
) -> subprocess.Popen[bytes]:
    """`spo reconciler` registering the webhooks by URL; the agents run as host processes here, so it
    manages no DaemonSet. Returns once it has created the spod and the webhook configurations."""
    health_port = localcluster.free_port()
    argv = localcluster.python_module(
        "spo.cli", "reconciler",
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
        "--webhook-url", webhook_url,
        "--ca-file", str(cluster.pki.ca_cert),
        "--no-daemonset",
        "--health-host", "127.0.0.1",
        "--health-port", str(health_port),
    )  # fmt: skip
    process = cluster.spawn(name, argv)
    cluster.wait_until(
        lambda: localcluster.http_ok(f"http://127.0.0.1:{health_port}{constants.PATH_READYZ}"),
        "reconciler /readyz",
    )
    admission = client.AdmissionregistrationV1Api(api_client(str(cluster.kubeconfig)))

    def registered() -> bool:
        try:
            admission.read_mutating_webhook_configuration(constants.MUTATING_WEBHOOK_CONFIGURATION)
        except ApiException as error:
            if error.status != HTTPStatus.NOT_FOUND:
                raise
            return False
        return True

    cluster.wait_until(registered, "the webhook configurations")
    return process


def bring_up(
    state_dir: Path, namespace: str, webhook_port: int, with_node: bool = True, in_cluster: bool = False
) -> tuple[localcluster.ControlPlane, dict[str, str]]:
    """The control plane, with a node unless `with_node` is off, then the operator's components: host
    processes, or with `in_cluster` (a node needed) its Deployments and DaemonSet from the operator image.
    Returns the cluster and what `spo down` and `spo status` need to know of the node."""
    progress = functools.partial(print, flush=True)
    cluster = localcluster.ControlPlane(
        state_dir,
        localcluster.binaries_dir(progress),
        webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, namespace),
        node=with_node,
    )
    lock, node_binaries, local_node, facts = None, None, None, {}
    if with_node:
        node_binaries = node.node_binaries_dir(progress)
        missing = node.missing_prerequisites(cluster.binaries, node_binaries)
        if missing:
            raise localcluster.ControlPlaneError(
                "the node needs:\n  " + "\n  ".join(missing) + "\n(or run `spo up --no-node` for the "
                "control plane alone)"
            )
        lock = node.acquire_for(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"starting etcd and kube-apiserver under {state_dir} ...", flush=True)
        cluster.start()
        if lock is not None and node_binaries is not None:
            print("starting the controller-manager, the scheduler and the node ...", flush=True)
            cluster.start_controllers()
            local_node = node.Node(cluster, node_binaries)
            local_node.start(lock)
            progress(f"node {local_node.name} is Ready")
            facts = {
                "node": local_node.name,
                "node_binaries": str(node_binaries),
                "seccomp_dir": str(local_node.paths.seccomp_dir),
            }
        if in_cluster and local_node is not None:
            incluster.deploy(cluster, local_node, namespace, progress)
        else:
            _start_host_processes(cluster, namespace, webhook_port, local_node)
    except BaseException:
        stop_all(cluster, node_binaries)
        if lock is not None:
            lock.release()
        raise
    if lock is not None:
        lock.hand_over()
    return cluster, facts


def _start_host_processes(
    cluster: localcluster.ControlPlane, namespace: str, webhook_port: int, local_node: node.Node | None
) -> None:
    """The CRDs, the operator namespace, and the webhook, the reconciler and the node's agent as host
    processes."""
    api = api_client(str(cluster.kubeconfig))
    localcluster.install_crds(api, manifests.crds.all_crds())
    localcluster.ensure_namespace(api, namespace)
    start_webhook(cluster, namespace, webhook_port)
    start_reconciler(cluster, namespace, f"https://127.0.0.1:{webhook_port}")
    if local_node is not None:
        start_agent(
            cluster,
            local_node.name,
            local_node.paths.kubelet_root,
            namespace,
            localcluster.free_port(),
            selinux_dir=local_node.paths.selinux_dir,
            audit_log=local_node.audit_log,
            state_dir=local_node.paths.recordings_dir,
        )


def stop_all(cluster: localcluster.ControlPlane, node_binaries: Path | None) -> None:
    """The node first (torn down to nothing), then the rest in reverse start order."""
    if node_binaries is not None:
        node.Node(cluster, node_binaries).stop()
    cluster.stop()
