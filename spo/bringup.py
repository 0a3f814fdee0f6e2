"""What `spo up` brings up: the control plane, the CRDs, the operator namespace and default spod,
the webhook process, and the webhook configurations pointing at it by URL."""

from __future__ import annotations

import functools
import ssl
import subprocess
import sys
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
import manifests.crds
from api import constants
from api.baseprofiles import builtin_base_profiles
from api.kinds import SECCOMP_PROFILE
from api.kube import api_client
from api.types import SeccompProfile, SecurityProfilesOperatorDaemon, default_spod
from reconciler.webhook_config import (
    Endpoint,
    apply_webhook_configurations,
    desired_mutating_configuration,
    desired_validating_configuration,
)
from spo import localcluster, node


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


def ensure_builtin_base_profiles(api: client.ApiClient) -> None:
    """Create the built-in base profiles that do not exist (a user's own of that name is kept)."""
    objects = client.CustomObjectsApi(api)
    for profile in builtin_base_profiles():
        try:
            objects.create_cluster_custom_object(
                constants.GROUP, SeccompProfile.VERSION, SECCOMP_PROFILE.plural, profile.to_dict()
            )
        except ApiException as error:
            if error.status != 409:
                raise


def start_webhook(
    cluster: localcluster.ControlPlane, namespace: str, port: int, name: str = "webhook"
) -> subprocess.Popen[bytes]:
    """`spo webhook` on 127.0.0.1:port with the cluster's webhook certificate; returns once ready."""
    argv = [
        # -P: a folder named like one of our packages in the caller's directory must not shadow it.
        sys.executable, "-P", "-m", "spo.cli", "webhook",
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


def start_agent(
    cluster: localcluster.ControlPlane,
    node_name: str,
    kubelet_dir: Path,
    namespace: str,
    port: int,
    *,
    name: str = "agent",
) -> subprocess.Popen[bytes]:
    """`spo agent` for `node_name` as a host process writing below `kubelet_dir`; returns once its
    caches are synced (/healthz)."""
    argv = [
        sys.executable, "-P", "-m", "spo.cli", "agent",
        "--node-name", node_name,
        "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace,
        "--kubelet-dir", str(kubelet_dir),
        "--host", "127.0.0.1",
        "--metrics-port", str(port),
    ]  # fmt: skip
    with cluster.log_file(name).open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    cluster.processes[name] = process
    cluster.wait_until(
        lambda: localcluster.http_ok(f"http://127.0.0.1:{port}{constants.PATH_HEALTHZ}"), f"{name} /healthz"
    )
    return process


def bring_up(
    state_dir: Path, namespace: str, webhook_port: int, with_node: bool = True
) -> tuple[localcluster.ControlPlane, dict[str, str]]:
    """The control plane, with a node unless `with_node` is off, then the operator's components.
    Returns the cluster and what `spo down` and `spo status` need to know of the node."""
    progress = functools.partial(print, flush=True)
    cluster = localcluster.ControlPlane(
        state_dir,
        localcluster.binaries_dir(progress),
        webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, namespace),
        node=with_node,
    )
    lock, node_binaries, facts = None, None, {}
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
        api = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(api, manifests.crds.all_crds())
        localcluster.ensure_namespace(api, namespace)
        spod = _ensure_spod(api, namespace)
        ensure_builtin_base_profiles(api)
        start_webhook(cluster, namespace, webhook_port)
        if with_node:
            start_agent(
                cluster, facts["node"], local_node.paths.kubelet_root, namespace, localcluster.free_port()
            )
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
        stop_all(cluster, node_binaries)
        if lock is not None:
            lock.release()
        raise
    if lock is not None:
        lock.hand_over()
    return cluster, facts


def stop_all(cluster: localcluster.ControlPlane, node_binaries: Path | None) -> None:
    """The node first (torn down to nothing), then the rest in reverse start order."""
    if node_binaries is not None:
        node.Node(cluster, node_binaries).stop()
    cluster.stop()
