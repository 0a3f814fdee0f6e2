"""The spod controller: from the spod in the operator namespace, the webhook configurations, the
`spod` DaemonSet and the spod's status; and, when the spod is deleted, their removal.

The spod is created with the defaults when the reconciler starts and finds none (as upstream does
at start-up); a spod a user deleted stays deleted until the next start, so removing the operator
by deleting its spod is not undone by the operator itself. The built-in base profiles (the docs'
7.8.2 `baseProfileName: runc-v1.0.0`) are created at the same moment, each only if missing, so a user's
own profile of that name is kept. With the log enricher on, the trace profile that recorded
containers run under is created too (api.types.log_enricher_trace_profile).
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants, kinds
from api.baseprofiles import builtin_base_profiles
from api.kube import ResourceCache, post_event
from api.nodepaths import NodePaths
from api.types import (
    KubernetesObject,
    SecurityProfilesOperatorDaemon,
    SPODStatus,
    default_spod,
    log_enricher_trace_profile,
)
from reconciler import spod as spod_config
from reconciler.drift import needs_apply
from reconciler.runtime import (
    Controller,
    Watch,
    add_finalizer,
    apply,
    guarded_patch,
    remove_finalizer,
    split_key,
)
from reconciler.uninstall import remove_operator_objects
from reconciler.webhook_config import (
    Endpoint,
    desired_mutating_configuration,
    desired_validating_configuration,
    endpoint_form_changes,
    kind_of,
)

log = logging.getLogger(__name__)

_HTTP_CONFLICT = 409
_HTTP_NOT_FOUND = 404


@dataclass(frozen=True)
class Settings:
    namespace: str
    endpoint: Endpoint
    # Read on every pass, so a renewed CA reaches the configurations without a restart.
    ca_bundle: Callable[[], str]
    manage_daemonset: bool
    image: str  # the operator image the spod DaemonSet runs
    node_paths: NodePaths


def ca_bundle_from_file(path: str) -> Callable[[], str]:
    def read() -> str:
        with open(path, "rb") as pem:
            return base64.b64encode(pem.read()).decode("ascii")

    return read


def ca_bundle_from_secret(api: client.ApiClient, namespace: str) -> Callable[[], str]:
    """The CA certificate stored with the webhook's serving pair (`spo certs` or the installer wrote it)."""
    core = client.CoreV1Api(api)

    def read() -> str:
        secret = core.read_namespaced_secret(constants.WEBHOOK_CERT_SECRET, namespace)
        bundle = (secret.data or {}).get(constants.CA_CERT_FILE)
        if not bundle:
            raise ValueError(
                f"Secret {namespace}/{constants.WEBHOOK_CERT_SECRET} has no {constants.CA_CERT_FILE}: "
                "add the CA certificate there, or start the reconciler with --ca-file"
            )
        return str(bundle)

    return read


def create_missing(api: client.ApiClient, kind: kinds.ResourceKind, bodies: list[dict[str, Any]]) -> None:
    """Create each object that does not exist yet; one that does is left as it is."""
    objects = client.CustomObjectsApi(api)
    for body in bodies:
        namespace = body["metadata"].get("namespace")
        try:
            if namespace:
                objects.create_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, body
                )
            else:
                objects.create_cluster_custom_object(kind.group, kind.version, kind.plural, body)
        except ApiException as error:
            if error.status != _HTTP_CONFLICT:
                raise


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SpodReconciler:
    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.spods: ResourceCache[SecurityProfilesOperatorDaemon] = ResourceCache(
            api, kinds.SPOD, SecurityProfilesOperatorDaemon, settings.namespace
        )
        self.mutating: ResourceCache[KubernetesObject] = ResourceCache(
            api, kinds.MUTATING_WEBHOOK_CONFIGURATION, KubernetesObject
        )
        self.validating: ResourceCache[KubernetesObject] = ResourceCache(
            api, kinds.VALIDATING_WEBHOOK_CONFIGURATION, KubernetesObject
        )
        self.daemonsets: ResourceCache[KubernetesObject] | None = (
            ResourceCache(api, kinds.DAEMON_SET, KubernetesObject, settings.namespace)
            if settings.manage_daemonset
            else None
        )
        self._created_default = False
        self._created_base_profiles = False
        self._unsupported_said: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.settings.namespace}/{constants.SPOD_NAME}"

    def caches(self) -> list[ResourceCache[Any]]:
        found: list[ResourceCache[Any]] = [self.spods, self.mutating, self.validating]
        return found + ([self.daemonsets] if self.daemonsets is not None else [])

    def controller(self) -> Controller:
        watches = [
            Watch(self.spods, self._spod_keys),
            Watch(self.mutating, self._configuration_keys),
            Watch(self.validating, self._configuration_keys),
        ]
        if self.daemonsets is not None:
            watches.append(Watch(self.daemonsets, self._daemonset_keys))
        return Controller("spod", self.reconcile, watches, resync_keys=lambda: (self.key,))

    def _spod_keys(self, obj: SecurityProfilesOperatorDaemon) -> Iterable[str]:
        return (self.key,) if obj.metadata.namespace == self.settings.namespace else ()

    def _configuration_keys(self, obj: KubernetesObject) -> Iterable[str]:
        ours = {constants.MUTATING_WEBHOOK_CONFIGURATION, constants.VALIDATING_WEBHOOK_CONFIGURATION}
        return (self.key,) if obj.metadata.name in ours else ()

    def _daemonset_keys(self, obj: KubernetesObject) -> Iterable[str]:
        ours = obj.metadata.name == constants.SPOD_NAME and obj.metadata.namespace == self.settings.namespace
        return (self.key,) if ours else ()

    # --- reconcile ------------------------------------------------------------------------------

    def reconcile(self, key: str) -> float | None:
        if not self._created_base_profiles:
            create_missing(self.api, kinds.SECCOMP_PROFILE, [p.to_dict() for p in builtin_base_profiles()])
            self._created_base_profiles = True
        namespace, name = split_key(key)
        spod = self.spods.get(name, namespace)
        if spod is None:
            invalid = [i for i in self.spods.invalid_in(namespace) if i.name == name]
            if invalid:
                self._report(name, [invalid[0].reason], None)
            elif not self._created_default:
                self._create_default()
            return None
        self._created_default = True
        if spod.metadata.deletion_timestamp:
            self._clean_up(spod)
            return None
        add_finalizer(self.api, kinds.SPOD, spod, constants.FINALIZER_SPOD)
        found = spod_config.problems(spod.spec)
        log_volume = None
        if self.settings.manage_daemonset and spod.spec.enable_json_enricher:
            try:
                log_volume = spod_config.json_enricher_volume(self._profile_configmap())
            except ValueError as error:
                found.append(f"{constants.PROFILE_CONFIGMAP}: {error}")
        if found:
            self._report(name, found, spod)
            return None
        self._say_unsupported(name, spod)
        self._apply_webhook_configurations(spod)
        if spod.spec.enable_log_enricher:
            # Recorded containers run under it; a user who deleted it gets it back on the next pass.
            create_missing(self.api, kinds.SECCOMP_PROFILE, [log_enricher_trace_profile().to_dict()])
        daemonset_status: dict[str, Any] | None = None
        generation = None
        if self.settings.manage_daemonset:
            desired = spod_config.desired_daemonset(
                spod.spec, namespace, self.settings.image, self.settings.node_paths, log_volume
            )
            live = apply(self.api, kinds.DAEMON_SET, desired)
            daemonset_status = live.get("status") or None
            generation = live["metadata"].get("generation")
        status = spod_config.desired_status(
            [],
            manages_daemonset=self.settings.manage_daemonset,
            daemonset_status=daemonset_status,
            generation=generation,
        )
        self._set_status(spod, status)
        return None

    def _apply_webhook_configurations(self, spod: SecurityProfilesOperatorDaemon) -> None:
        bundle = self.settings.ca_bundle()
        desired = [
            (
                self.mutating,
                desired_mutating_configuration(
                    spod.spec, self.settings.endpoint, bundle, self.settings.namespace
                ),
            ),
            (self.validating, desired_validating_configuration(self.settings.endpoint, bundle)),
        ]
        for cache, configuration in desired:
            live = cache.get(configuration["metadata"]["name"])
            observed = live.model_dump(by_alias=True, exclude_none=True) if live is not None else None
            switch = endpoint_form_changes(configuration, observed) if observed is not None else []
            if switch and live is not None:
                log.info("%s: switching the webhooks' endpoint form", configuration["metadata"]["name"])
                guarded_patch(self.api, kind_of(configuration), live, switch)
                continue  # the patch's watch event brings the apply, on the configuration as it is now
            if needs_apply(configuration, observed):
                log.info("applying %s", configuration["metadata"]["name"])
                apply(self.api, kind_of(configuration), configuration)

    def _profile_configmap(self) -> dict[str, str]:
        core = client.CoreV1Api(self.api)
        try:
            configmap = core.read_namespaced_config_map(constants.PROFILE_CONFIGMAP, self.settings.namespace)
        except ApiException as error:
            if error.status == _HTTP_NOT_FOUND:
                return {}
            raise
        return dict(configmap.data or {})

    def _create_default(self) -> None:
        create_missing(self.api, kinds.SPOD, [default_spod(self.settings.namespace).to_dict()])
        self._created_default = True

    def _identity(self, name: str) -> dict[str, Any]:
        metadata = {"name": name, "namespace": self.settings.namespace}
        return {"apiVersion": kinds.SPOD.api_version, "kind": kinds.SPOD.kind, "metadata": metadata}

    def _clean_up(self, spod: SecurityProfilesOperatorDaemon) -> None:
        """The spod is being deleted: take away what it configured, webhooks first (see uninstall)."""
        remove_operator_objects(self.api, self.settings.namespace, daemonset=self.settings.manage_daemonset)
        remove_finalizer(self.api, kinds.SPOD, spod, constants.FINALIZER_SPOD)

    # --- status and events ------------------------------------------------------------------------

    def _report(self, name: str, found: list[str], spod: SecurityProfilesOperatorDaemon | None) -> None:
        status = spod_config.desired_status(
            found, manages_daemonset=False, daemonset_status=None, generation=None
        )
        changed = self._set_status(spod, status, name)
        if changed:
            log.warning("spod %s is not applied: %s", name, "; ".join(found))
            self._event(name, spod, constants.EVENT_REASON_INVALID_SPOD, "; ".join(found))

    def _say_unsupported(self, name: str, spod: SecurityProfilesOperatorDaemon) -> None:
        """Once per change: what the spod asks for that nothing runs for."""
        notes = tuple(spod_config.unsupported(spod.spec))
        if notes and notes != self._unsupported_said:
            log.warning("spod %s: %s", name, "; ".join(notes))
            self._event(name, spod, constants.EVENT_REASON_UNSUPPORTED_FEATURE, "; ".join(notes))
        self._unsupported_said = notes

    def _set_status(
        self, spod: SecurityProfilesOperatorDaemon | None, status: SPODStatus, name: str = constants.SPOD_NAME
    ) -> bool:
        """Apply the status if it differs from the live one; True when it did."""
        current = spod.status if spod is not None else None
        if current is not None and _same(current, status):
            return False
        conditions = status.conditions or []
        previous = {c.type: c for c in (current.conditions or [])} if current is not None else {}
        for condition in conditions:
            before = previous.get(condition.type)
            keep = before is not None and before.status == condition.status and before.last_transition_time
            condition.last_transition_time = before.last_transition_time if keep and before else _now()
        body = {**self._identity(name), "status": status.to_dict()}
        apply(self.api, kinds.SPOD, body, subresource="status")
        return True

    def _event(
        self, name: str, spod: SecurityProfilesOperatorDaemon | None, reason: str, message: str
    ) -> None:
        post_event(
            client.CoreV1Api(self.api),
            self.settings.namespace,
            client.V1ObjectReference(
                api_version=kinds.SPOD.api_version,
                kind=kinds.SPOD.kind,
                name=name,
                namespace=self.settings.namespace,
                uid=spod.metadata.uid if spod is not None else None,
            ),
            event_type="Warning",
            reason=reason,
            message=message,
            source=client.V1EventSource(component=constants.FIELD_MANAGER),
        )


def _same(current: SPODStatus, wanted: SPODStatus) -> bool:
    def essence(status: SPODStatus) -> tuple[Any, ...]:
        return (
            status.state,
            tuple((c.type, c.status, c.reason, c.message) for c in status.conditions or []),
        )

    return essence(current) == essence(wanted)
