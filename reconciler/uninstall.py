"""Removing what the reconciler created, webhook configurations first.

Once the webhook configurations are gone no pod creation can wait on a webhook that is about to
disappear, so a removed operator never blocks pods (the docs' known issue OCPBUGS-4687, whose manual
workaround is then never needed).
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants, kinds
from api.types import KubernetesObject
from reconciler.runtime import delete, remove_finalizer

_HTTP_NOT_FOUND = 404


def remove_operator_objects(api: client.ApiClient, namespace: str, *, daemonset: bool = True) -> None:
    delete(api, kinds.MUTATING_WEBHOOK_CONFIGURATION, constants.MUTATING_WEBHOOK_CONFIGURATION)
    delete(api, kinds.VALIDATING_WEBHOOK_CONFIGURATION, constants.VALIDATING_WEBHOOK_CONFIGURATION)
    if daemonset:
        delete(api, kinds.DAEMON_SET, constants.SPOD_NAME, namespace)


def uninstall(api: client.ApiClient, namespace: str) -> None:
    """Works whether a reconciler still runs or not: the spod is marked deleted first, so a running
    reconciler cleans up rather than re-creating what is removed here; then everything is removed
    directly and the spod's finalizer released."""
    delete(api, kinds.SPOD, constants.SPOD_NAME, namespace)
    remove_operator_objects(api, namespace)
    objects = client.CustomObjectsApi(api)
    try:
        raw = objects.get_namespaced_custom_object(
            kinds.SPOD.group, kinds.SPOD.version, namespace, kinds.SPOD.plural, constants.SPOD_NAME
        )
    except ApiException as error:
        if error.status != _HTTP_NOT_FOUND:
            raise
    else:
        remove_finalizer(api, kinds.SPOD, KubernetesObject.model_validate(raw), constants.FINALIZER_SPOD)
    delete(api, kinds.LEASE, constants.LEADER_LEASE, namespace)
