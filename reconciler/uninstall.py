"""Removing the operator (docs 7.11), in an order that never blocks a pod and leaves no node file.

1. The reconciler's Deployment goes first, so nothing re-creates what follows; the spod is marked
   deleted, so a reconciler running elsewhere (a host process under `spo up`) cleans up instead.
2. The webhook configurations: from here on no pod creation waits on a webhook about to disappear (the
   docs' known issue OCPBUGS-4687, whose manual workaround is then never needed), and no binding can
   refuse a pod whose profile is going.
3. Every profile is deleted and relieved of the finalizers that guard it while the operator runs (in
   use by pods, partial recordings); each node's agent, still running, removes its file and then its
   `<node>-deleted` finalizer. Agents that do not answer within the wait have theirs removed and are
   reported: their nodes may keep files.
4. The spod DaemonSet, the spod, the leader Lease, then every object of the install (as `spo manifests
   render` prints them, the namespace last), and the CRDs only when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import manifests
from api import constants, kinds
from api.objects import Objects
from api.types import KubernetesObject
from reconciler.runtime import delete, remove_finalizer

_HTTP_NOT_FOUND = 404
_HTTP_CONFLICT_STATES = (409, 422)
_POLL_SECONDS = 0.5
_PROFILE_KINDS = (kinds.SECCOMP_PROFILE, kinds.SELINUX_PROFILE, kinds.RAW_SELINUX_PROFILE)


def remove_operator_objects(api: client.ApiClient, namespace: str, *, daemonset: bool = True) -> None:
    delete(api, kinds.MUTATING_WEBHOOK_CONFIGURATION, constants.MUTATING_WEBHOOK_CONFIGURATION)
    delete(api, kinds.VALIDATING_WEBHOOK_CONFIGURATION, constants.VALIDATING_WEBHOOK_CONFIGURATION)
    if daemonset:
        delete(api, kinds.DAEMON_SET, constants.SPOD_NAME, namespace)


@dataclass
class Uninstalled:
    """What `uninstall` did: the objects it deleted and the nodes whose agent did not remove its files."""

    deleted: list[str] = field(default_factory=list)
    unconfirmed_nodes: list[str] = field(default_factory=list)


def uninstall(
    api: client.ApiClient,
    namespace: str,
    *,
    crds: bool = False,
    wait_seconds: float = 120.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Uninstalled:
    """Works whether the operator runs in the cluster, as host processes, or not at all."""
    done = Uninstalled()
    objects = Objects(api)
    installed = manifests.render(namespace, cert_manager=True)
    reconciler = [
        obj
        for obj in installed
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == constants.RECONCILER_DEPLOYMENT
    ]
    done.deleted += objects.delete(reconciler)
    _wait_for_no_pods(api, namespace, reconciler[0]["spec"]["selector"]["matchLabels"], wait_seconds)
    delete(api, kinds.SPOD, constants.SPOD_NAME, namespace)
    remove_operator_objects(api, namespace, daemonset=False)
    progress("removed the webhook configurations; deleting the profiles")
    done.unconfirmed_nodes = _delete_profiles(api, wait_seconds)
    delete(api, kinds.DAEMON_SET, constants.SPOD_NAME, namespace)
    _release_spod(api, namespace)
    delete(api, kinds.LEASE, constants.LEADER_LEASE, namespace)
    rest = [obj for obj in installed if obj not in reconciler and obj["kind"] != "CustomResourceDefinition"]
    done.deleted += objects.delete(reversed(rest))
    if crds:
        done.deleted += objects.delete(obj for obj in installed if obj["kind"] == "CustomResourceDefinition")
    return done


def _wait_for_no_pods(
    api: client.ApiClient, namespace: str, labels: dict[str, str], wait_seconds: float
) -> None:
    """A reconciler still in its grace period could re-create a webhook configuration removed now."""
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + wait_seconds
    while core.list_namespaced_pod(namespace, label_selector=selector).items and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)


def _delete_profiles(api: client.ApiClient, wait_seconds: float) -> list[str]:
    """Delete every profile and wait for the agents to let them go; returns the nodes that did not."""
    for kind in _PROFILE_KINDS:
        for profile in _list(api, kind):
            delete(api, kind, profile.metadata.name or "")
    deadline = time.monotonic() + wait_seconds
    while True:
        left = [(kind, profile) for kind in _PROFILE_KINDS for profile in _list(api, kind)]
        if not left:
            return []
        waited_enough = time.monotonic() >= deadline
        for kind, profile in left:
            for finalizer in profile.metadata.finalizers or []:
                node_owned = finalizer.endswith(constants.FINALIZER_NODE_DELETED_SUFFIX)
                if not node_owned or waited_enough:
                    _remove_finalizer(api, kind, profile, finalizer)
        if waited_enough:
            return sorted(
                {
                    finalizer.removesuffix(constants.FINALIZER_NODE_DELETED_SUFFIX)
                    for _, profile in left
                    for finalizer in profile.metadata.finalizers or []
                    if finalizer.endswith(constants.FINALIZER_NODE_DELETED_SUFFIX)
                }
            )
        time.sleep(_POLL_SECONDS)


def _list(api: client.ApiClient, kind: kinds.ResourceKind) -> list[KubernetesObject]:
    try:
        listed: Any = client.CustomObjectsApi(api).list_cluster_custom_object(
            kind.group, kind.version, kind.plural
        )
    except ApiException as error:
        if error.status != _HTTP_NOT_FOUND:  # the CRD is gone already
            raise
        return []
    return [KubernetesObject.model_validate(item) for item in listed["items"]]


def _remove_finalizer(
    api: client.ApiClient, kind: kinds.ResourceKind, obj: KubernetesObject, finalizer: str
) -> None:
    try:
        remove_finalizer(api, kind, obj, finalizer)
    except ApiException as error:
        # Changed meanwhile (an agent removed its own entry): the next pass sees it as it is.
        if error.status not in _HTTP_CONFLICT_STATES:
            raise


def _release_spod(api: client.ApiClient, namespace: str) -> None:
    try:
        raw = client.CustomObjectsApi(api).get_namespaced_custom_object(
            kinds.SPOD.group, kinds.SPOD.version, namespace, kinds.SPOD.plural, constants.SPOD_NAME
        )
    except ApiException as error:
        if error.status != _HTTP_NOT_FOUND:
            raise
        return
    _remove_finalizer(api, kinds.SPOD, KubernetesObject.model_validate(raw), constants.FINALIZER_SPOD)
