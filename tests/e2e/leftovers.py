"""After a test stops a reconciler: give the session its webhook registration back, then take away the
finalizers the reconciler held on the session's objects.

A reconciler that stops keeps its finalizers on purpose (a profile in use must not vanish while no
reconciler runs). The session's control plane is shared by every test module, and the pods other
modules create are never deleted, so without this a later test deleting its profile would wait on a
reconciler that is gone."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from api import constants, kinds
from spo import localcluster
from tests.conftest import register_webhooks

_OURS = {constants.FINALIZER_IN_USE, constants.FINALIZER_ACTIVE_WORKLOAD, constants.FINALIZER_RECORDING_LOCK}
_KINDS = (
    kinds.SECCOMP_PROFILE,
    kinds.SELINUX_PROFILE,
    kinds.RAW_SELINUX_PROFILE,
    kinds.PROFILE_BINDING,
    kinds.PROFILE_RECORDING,
)


def release_reconciler_finalizers(kube: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(kube)
    for kind in _KINDS:
        listing: Any = objects.list_cluster_custom_object(kind.group, kind.version, kind.plural)
        for item in listing["items"]:
            metadata = item["metadata"]
            held = metadata.get("finalizers") or []
            if not _OURS & set(held):
                continue
            body = {"metadata": {"finalizers": [f for f in held if f not in _OURS]}}
            if kind.namespaced:
                objects.patch_namespaced_custom_object(
                    kind.group, kind.version, metadata["namespace"], kind.plural, metadata["name"], body
                )
            else:
                objects.patch_cluster_custom_object(
                    kind.group, kind.version, kind.plural, metadata["name"], body
                )


def hand_back_session(cluster: localcluster.ControlPlane, kube: client.ApiClient, webhook_url: str) -> None:
    """The registration first: a test's reconciler may have pointed the webhook configurations at a
    Service that does not exist here, and removing finalizers goes through admission (the ProfileBinding
    validator), which would then fail every later test's writes."""
    register_webhooks(cluster, kube, webhook_url)
    release_reconciler_finalizers(kube)
