"""Every request each of the operator's processes makes to the apiserver, as (api group, resource,
verb, scope): the one source of their RBAC.

manifests.deploy renders each component's ClusterRole and Role from its list here, and nothing else;
tests/e2e/test_rbac.py runs each component with a token of its own service account only and checks the
apiserver's audit log against its list (no request refused, none outside it). A new API call in a
component's code goes here in the same change, or that test fails.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from api import constants
from api.kinds import (
    CONFIG_MAP,
    DAEMON_SET,
    EVENT,
    LEASE,
    MUTATING_WEBHOOK_CONFIGURATION,
    NODE_STATUS,
    POD,
    PROFILE_BINDING,
    PROFILE_RECORDING,
    RAW_SELINUX_PROFILE,
    SECCOMP_PROFILE,
    SECRET,
    SELINUX_PROFILE,
    SPOD,
    VALIDATING_WEBHOOK_CONFIGURATION,
    BuiltinKind,
    ResourceKind,
)


class Scope(enum.StrEnum):
    # Cluster-scoped objects, or namespaced ones in any namespace: granted by a ClusterRole.
    CLUSTER = "cluster"
    # The operator's namespace only: granted by a Role there.
    NAMESPACE = "namespace"


@dataclass(frozen=True, order=True)
class Grant:
    """One verb on one resource (``plural`` or ``plural/subresource``), for the named objects only when
    ``name`` is set (RBAC resourceNames)."""

    scope: Scope
    group: str
    resource: str
    verb: str
    name: str = ""


@dataclass(frozen=True)
class Access:
    scope: Scope
    group: str
    resource: str
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()

    def grants(self) -> list[Grant]:
        return [
            Grant(self.scope, self.group, self.resource, verb, name)
            for verb in self.verbs
            for name in self.names or ("",)
        ]


def grants(accesses: Iterable[Access]) -> frozenset[Grant]:
    return frozenset(grant for access in accesses for grant in access.grants())


# A ResourceCache (api.kube): list once, then watch.
CACHE: Final[tuple[str, ...]] = ("list", "watch")
# Server-side apply (api.kube.server_side_apply) is a patch; one that creates the object is also
# authorized as a create.
APPLY: Final[tuple[str, ...]] = ("create", "patch")
# The order RBAC rules list verbs in.
VERB_ORDER: Final[tuple[str, ...]] = ("get", "list", "watch", "create", "update", "patch", "delete")


def _on(
    scope: Scope,
    served: Iterable[BuiltinKind | ResourceKind],
    verbs: tuple[str, ...],
    subresource: str = "",
    names: tuple[str, ...] = (),
) -> list[Access]:
    suffix = f"/{subresource}" if subresource else ""
    return [Access(scope, kind.group, f"{kind.plural}{suffix}", verbs, names) for kind in served]


_CLUSTER, _NAMESPACE = Scope.CLUSTER, Scope.NAMESPACE
_PROFILES: Final = (SECCOMP_PROFILE, SELINUX_PROFILE, RAW_SELINUX_PROFILE)
# The kinds recorded (agent/recorder.py) and merged (reconciler/merge.py).
_RECORDED: Final = (SECCOMP_PROFILE, SELINUX_PROFILE)
_WEBHOOK_CONFIGURATIONS: Final = (MUTATING_WEBHOOK_CONFIGURATION, VALIDATING_WEBHOOK_CONFIGURATION)

RECONCILER: Final[tuple[Access, ...]] = (
    # Caches (profiles_controller.py, spod_controller.py, certificates_controller.py).
    *_on(_CLUSTER, (*_PROFILES, PROFILE_BINDING, PROFILE_RECORDING, NODE_STATUS, POD), CACHE),
    *_on(_CLUSTER, _WEBHOOK_CONFIGURATIONS, CACHE),
    *_on(_NAMESPACE, (SPOD, DAEMON_SET, LEASE), CACHE),
    # Built-in base and trace profiles (create_missing), merged profiles (apply); merged partials and
    # profiles that break allowedSyscalls are deleted.
    *_on(_CLUSTER, _RECORDED, (*APPLY, "delete")),
    # Finalizers by merge patch, statuses by apply.
    *_on(_CLUSTER, (*_PROFILES, PROFILE_BINDING, PROFILE_RECORDING), ("patch",)),
    *_on(_CLUSTER, (*_PROFILES, PROFILE_BINDING, PROFILE_RECORDING), ("patch",), "status"),
    *_on(_CLUSTER, (NODE_STATUS,), ("delete",)),
    # Write access to admission webhooks is a cluster-wide power: only the operator's own two (a
    # create cannot be limited by name; it is an apply of a configuration that does not exist yet).
    *_on(_CLUSTER, _WEBHOOK_CONFIGURATIONS, ("create",)),
    Access(
        _CLUSTER,
        MUTATING_WEBHOOK_CONFIGURATION.group,
        MUTATING_WEBHOOK_CONFIGURATION.plural,
        ("patch", "delete"),
        (constants.MUTATING_WEBHOOK_CONFIGURATION,),
    ),
    Access(
        _CLUSTER,
        VALIDATING_WEBHOOK_CONFIGURATION.group,
        VALIDATING_WEBHOOK_CONFIGURATION.plural,
        ("patch", "delete"),
        (constants.VALIDATING_WEBHOOK_CONFIGURATION,),
    ),
    # The default spod; its finalizer and status.
    *_on(_NAMESPACE, (SPOD,), ("create",)),
    *_on(_NAMESPACE, (SPOD,), ("patch",), names=(constants.SPOD_NAME,)),
    *_on(_NAMESPACE, (SPOD,), ("patch",), "status", (constants.SPOD_NAME,)),
    *_on(_NAMESPACE, (DAEMON_SET,), ("create",)),
    *_on(_NAMESPACE, (DAEMON_SET,), ("patch", "delete"), names=(constants.SPOD_NAME,)),
    # The JSON enricher's log volume.
    *_on(_NAMESPACE, (CONFIG_MAP,), ("get",), names=(constants.PROFILE_CONFIGMAP,)),
    # The webhook's certificates (certificates_controller.py), read by name, written by apply.
    *_on(_NAMESPACE, (SECRET,), ("create",)),
    *_on(
        _NAMESPACE,
        (SECRET,),
        ("get", "patch"),
        names=(constants.WEBHOOK_CA_SECRET, constants.WEBHOOK_CERT_SECRET),
    ),
    # Leader election (runtime.LeaderElector).
    *_on(_NAMESPACE, (LEASE,), ("create",)),
    *_on(_NAMESPACE, (LEASE,), ("get", "update"), names=(constants.LEADER_LEASE,)),
    # Warning events about an invalid spod.
    *_on(_NAMESPACE, (EVENT,), ("create",)),
)

# Admission decisions come from caches; the webhook never writes to the API.
WEBHOOK: Final[tuple[Access, ...]] = (
    *_on(_CLUSTER, (*_PROFILES, PROFILE_BINDING, PROFILE_RECORDING), CACHE),
    *_on(_NAMESPACE, (SPOD,), CACHE),
)

AGENT: Final[tuple[Access, ...]] = (
    # Caches (agent.py, recorder.py; this node's pods by field selector in attribution.py and cli.py).
    *_on(_CLUSTER, (*_PROFILES, NODE_STATUS, PROFILE_RECORDING, POD), CACHE),
    *_on(_NAMESPACE, (SPOD,), CACHE),
    # This node's finalizer, the profile-id label and syscalls annotation by JSON patch; recorded
    # profiles by apply.
    *_on(_CLUSTER, _PROFILES, ("patch",)),
    *_on(_CLUSTER, _RECORDED, ("create",)),
    *_on(_CLUSTER, (NODE_STATUS,), ("create", "patch", "delete")),
    # The recorder's has-unmerged-profiles finalizer.
    *_on(_CLUSTER, (PROFILE_RECORDING,), ("patch",)),
    # Whether a pod recorded before a restart has ended.
    *_on(_CLUSTER, (POD,), ("get",)),
    # Events about profiles (in `default`) and recordings (in their namespace).
    *_on(_CLUSTER, (EVENT,), ("create",)),
    # This node's heartbeat Lease.
    *_on(_NAMESPACE, (LEASE,), ("get", "create", "update")),
)
