"""`spo up --in-cluster`: the operator deployed on the local node exactly as in a user's cluster.

The operator image is built offline (spo/operator_image.py) and imported into the node's containerd
under the name the manifests use; `spo manifests render` (with that image and the node's host paths)
is applied; then the reconciler, from its Deployment, renders the `spod` DaemonSet, issues the webhook's
certificate and registers the webhook by its Service, which the apiserver dials at a ready pod's
address on the node's bridge.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import manifests
import manifests.crds
from api import constants
from api.kinds import SPOD
from api.kube import api_client
from api.nodepaths import NodePaths
from api.objects import Objects
from spo import images, localcluster
from spo.node import Node
from spo.operator_image import build_operator_image

INSTALL_FIELD_MANAGER = "spo-up"
T = TypeVar("T")


def deploy(
    cluster: localcluster.ControlPlane,
    node: Node,
    namespace: str,
    progress: Callable[[str], None],
    image_cache: Path | None = None,
) -> None:
    """Build and import the image, apply the install manifests and wait until the operator runs: its
    Deployments available, the webhooks registered with a CA, the spod `RUNNING` (every agent ready)."""
    progress("building the operator image ...")
    cache = image_cache or images.default_cache_dir()
    built = build_operator_image(cache / constants.OPERATOR_IMAGE_TAR, constants.DEFAULT_IMAGE, cache)
    node.import_image(built.path)
    progress(f"imported {built.reference} ({built.digest[:19]}); applying the manifests ...")
    api = api_client(str(cluster.kubeconfig))
    # The DaemonSet mounts, and its agents use, the paths where this node keeps them (below its state).
    node_paths = NodePaths(
        kubelet_dir=str(node.paths.kubelet_root),
        audit_log=str(node.audit_log),
        selinux_dir=str(node.paths.selinux_dir),
        state_dir=str(node.paths.recordings_dir),
    )
    rendered = manifests.render(namespace, built.reference, node_paths=node_paths)
    crds = [obj for obj in rendered if obj["kind"] == "CustomResourceDefinition"]
    localcluster.install_crds(api, crds)
    rest = [obj for obj in rendered if obj["kind"] != "CustomResourceDefinition"]
    Objects(api).apply(rest, INSTALL_FIELD_MANAGER)
    apps = client.AppsV1Api(api)
    for name in (constants.RECONCILER_DEPLOYMENT, constants.WEBHOOK_DEPLOYMENT):
        cluster.wait_until(
            functools.partial(_available, apps, name, namespace), f"Deployment {name} available"
        )
    cluster.wait_until(lambda: _webhooks_registered(api), "the webhook configurations, with their CA")
    cluster.wait_until(functools.partial(_agents_ready, apps, namespace), "the spod DaemonSet's pod ready")
    cluster.wait_until(lambda: _spod_state(api, namespace) == "RUNNING", "the spod RUNNING")


def _found(read: Callable[..., T], *args: str) -> T | None:
    """`read(*args)`, or None while the object does not exist yet."""
    try:
        return read(*args)
    except ApiException as error:
        if error.status != HTTPStatus.NOT_FOUND:
            raise
        return None


def _available(apps: client.AppsV1Api, name: str, namespace: str) -> bool:
    deployment = _found(apps.read_namespaced_deployment, name, namespace)
    if deployment is None:
        return False
    status, spec = deployment.status, deployment.spec
    wanted = spec.replicas if spec and spec.replicas is not None else 1
    return bool(status and (status.available_replicas or 0) >= wanted)


def _webhooks_registered(api: client.ApiClient) -> bool:
    admission = client.AdmissionregistrationV1Api(api)
    configuration = _found(
        admission.read_mutating_webhook_configuration, constants.MUTATING_WEBHOOK_CONFIGURATION
    )
    return configuration is not None and all(
        webhook.client_config.service and webhook.client_config.ca_bundle
        for webhook in configuration.webhooks or []
    )


def _agents_ready(apps: client.AppsV1Api, namespace: str) -> bool:
    daemonset = _found(apps.read_namespaced_daemon_set, constants.SPOD_NAME, namespace)
    if daemonset is None:
        return False
    status, metadata = daemonset.status, daemonset.metadata
    return bool(
        status
        and metadata
        and status.observed_generation == metadata.generation
        and status.desired_number_scheduled >= 1
        and status.number_ready == status.updated_number_scheduled == status.desired_number_scheduled
    )


def _spod_state(api: client.ApiClient, namespace: str) -> str | None:
    objects = client.CustomObjectsApi(api)
    spod: Any = _found(
        objects.get_namespaced_custom_object,
        SPOD.group, SPOD.version, namespace, SPOD.plural, constants.SPOD_NAME,
    )  # fmt: skip
    if spod is None:
        return None
    return str(spod.get("status", {}).get("state") or "") or None
