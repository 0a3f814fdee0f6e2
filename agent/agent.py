"""The node agent's loop, the same for every profile kind (agent/handlers.py says what each installs).

Level-triggered and idempotent: each pass reads the profile from the watch cache, computes what this node
should hold (handler.desired, pure), and applies the difference: this node's finalizer and the profile's
label and annotations (one JSON patch, guarded by the resourceVersion), this node's
SecurityProfileNodeStatus, then the file. A crash at any line converges on the next pass, and on start
every profile is reconciled against the files on disk (files of profiles that no longer exist removed).

Who writes what (ARCHITECTURE.md): this agent writes its node's status objects, its `<node>-deleted`
finalizer, the profile-id label and `syscalls` annotation, its node's files and its heartbeat Lease; the
profile's own status is the reconciler's aggregate.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from agent.handlers import Desired, KindHandler
from agent.workqueue import WorkQueue
from api import constants
from api.baseprofiles import builtin_spec
from api.kinds import NODE_STATUS, SPOD
from api.kube import ResourceCache, post_event
from api.types import (
    ProfileResource,
    ProfileState,
    SeccompProfile,
    SeccompProfileSpec,
    SecurityProfileNodeStatus,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
    SPODSpec,
    heartbeat_lease_name,
    node_finalizer,
    node_status_name,
    profile_id,
)

log = logging.getLogger(__name__)

_NOT_FOUND = 404
_CONFLICT = 409
_JSON_PATCH = "application/json-patch+json"
_EVENT_COMPONENT = "spod"
# Events about cluster-scoped objects are recorded in `default`, as client-go's recorder does.
_CLUSTER_SCOPED_EVENTS_NAMESPACE = "default"
_MERGE_PATCH = "application/merge-patch+json"
METRIC_PREFIX = "security_profiles_operator_"
CANNOT_UPDATE_NODE_STATUS = "CannotUpdateNodeStatus"
SYNC_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    namespace: str = constants.DEFAULT_NAMESPACE
    workers: int = 4


class Metrics:
    """The agent's counters on /metrics-spod, with upstream's names, labels and help texts."""

    def __init__(self, registry: CollectorRegistry, prefixes: Sequence[str]) -> None:
        self.registry = registry
        self.operations: dict[str, Counter] = {}
        self.errors: dict[str, Counter] = {}
        # Handlers of related kinds (SelinuxProfile, RawSelinuxProfile) count in one family.
        for prefix in dict.fromkeys(prefixes):
            what = prefix.replace("_profile", "")
            self.operations[prefix] = Counter(
                f"{METRIC_PREFIX}{prefix}",
                f"Counter about {what} profile operations.",
                ["operation"],
                registry=registry,
            )
            self.errors[prefix] = Counter(
                f"{METRIC_PREFIX}{prefix}_error",
                f"Counter about {what} profile errors.",
                ["reason"],
                registry=registry,
            )


class SpodWatch:
    """The operator's spod, from a watch: what every part of the agent follows. Started, and synced,
    before the parts that read it."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        # The operator namespace's only, where the spod's Role reads.
        self.cache = ResourceCache(api, SPOD, SecurityProfilesOperatorDaemon, namespace)
        self._namespace = namespace

    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return self.cache.get(constants.SPOD_NAME, self._namespace)

    def spec(self) -> SPODSpec:
        spod = self.spod()
        return spod.spec if spod is not None else SPODSpec()

    def start(self) -> None:
        self.cache.start()
        if not self.cache.wait_synced(SYNC_TIMEOUT_SECONDS):
            raise TimeoutError(f"the {SPOD.plural} cache did not sync")


class Agent:
    def __init__(
        self,
        api: client.ApiClient,
        config: AgentConfig,
        handlers: Sequence[KindHandler],
        spod: SpodWatch,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self._custom = client.CustomObjectsApi(api)
        self._coordination = client.CoordinationV1Api(api)
        self._core = client.CoreV1Api(api)
        self._handlers = {handler.kind.kind: handler for handler in handlers}
        self._profiles: dict[str, ResourceCache[Any]] = {
            kind: ResourceCache(api, handler.kind, handler.kind.model)
            for kind, handler in self._handlers.items()
        }
        self._statuses = ResourceCache(api, NODE_STATUS, SecurityProfileNodeStatus)
        self._spod = spod
        self.metrics = Metrics(registry or CollectorRegistry(), [h.metric_prefix for h in handlers])
        self._queue = WorkQueue()
        self._finalizer = node_finalizer(config.node_name)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = threading.Event()

    # --- the read-only view handlers decide from ------------------------------------------------
    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return self._spod.spod()

    def spod_spec(self) -> SPODSpec:
        return self._spod.spec()

    def selinux_profiles(self) -> Mapping[str, SelinuxProfile]:
        """The SelinuxProfiles by name, which others inherit (none when this agent does not watch them)."""
        cache = self._profiles.get(SelinuxProfile.KIND)
        profiles = cache.items() if cache is not None else []
        return {p.metadata.name: p for p in profiles if isinstance(p, SelinuxProfile) and p.metadata.name}

    def seccomp_spec(self, name: str) -> SeccompProfileSpec | None:
        """A base profile by name: the SeccompProfile of that name, else the built-in one."""
        cache = self._profiles.get(SeccompProfile.KIND)
        profile = cache.get(name) if cache is not None else None
        return profile.spec if isinstance(profile, SeccompProfile) else builtin_spec(name)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Once the spod watch is started (handlers decide from the spod)."""
        for kind, cache in self._profiles.items():
            cache.add_event_handler(functools.partial(self._on_profile, kind))
        self._statuses.add_event_handler(self._on_node_status)
        self._spod.cache.add_event_handler(lambda _spod: self._enqueue_all())
        caches = [*self._profiles.values(), self._statuses]
        for cache in caches:
            cache.start()
        for cache in caches:
            if not cache.wait_synced(SYNC_TIMEOUT_SECONDS):
                raise TimeoutError(f"the {cache.kind.plural} cache did not sync")
        self.remove_orphan_files()
        self._started.set()
        self._enqueue_all()
        for index in range(self.config.workers):
            self._spawn(f"worker-{index}", lambda: self._queue.run_worker(self._reconcile_key, self._failed))
        self._spawn("heartbeat", self._heartbeat_loop)

    def ready(self) -> bool:
        return self._started.is_set() and not self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.stop()
        for cache in [*self._profiles.values(), self._statuses]:
            cache.stop()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- events to keys -------------------------------------------------------------------------
    def _on_profile(self, kind: str, profile: ProfileResource) -> None:
        if not self._started.is_set():
            return  # start() enqueues everything once the caches are synced
        name = profile.metadata.name
        self._queue.add(f"{kind}/{name}")
        # Profiles built on this one change with it.
        handler = self._handlers[kind]
        for other in self._profiles[kind].items():
            if name in handler.depends_on(other):
                self._queue.add(f"{kind}/{other.metadata.name}")

    def _on_node_status(self, status: SecurityProfileNodeStatus) -> None:
        """Changed or deleted (by someone else): its profile gets this node's status right again."""
        if not self._started.is_set() or status.node_name != self.config.node_name:
            return
        owner_kind = (status.metadata.labels or {}).get(constants.LABEL_PROFILE_KIND)
        owner = _owner_name(status)
        if owner_kind in self._handlers and owner:
            self._queue.add(f"{owner_kind}/{owner}")

    def _enqueue_all(self) -> None:
        if not self._started.is_set():
            return
        for kind, cache in self._profiles.items():
            for profile in cache.items():
                self._queue.add(f"{kind}/{profile.metadata.name}")

    def _failed(self, key: str, error: Exception) -> None:
        log.warning("%s: %s (retrying)", key, error)

    # --- restart safety -------------------------------------------------------------------------
    def remove_orphan_files(self) -> None:
        """Remove the files no existing profile names, and temporary files a crash left. Handlers may
        share their files (both SELinux kinds): a file is kept when a profile of any of them names it."""
        for handler in self._handlers.values():
            sharing = [h for h in self._handlers.values() if h.files is handler.files]
            if sharing[0] is not handler:
                continue  # swept with the first handler of these files
            handler.files.sweep()
            wanted = {
                h.file_name(p.metadata.name) for h in sharing for p in self._profiles[h.kind.kind].items()
            }
            kinds = " or ".join(h.kind.kind for h in sharing)
            for file_name in handler.files.names() - wanted:
                if handler.files.remove(file_name):
                    log.info("removed %s: no %s of that name exists", file_name, kinds)
                    self.metrics.operations[handler.metric_prefix].labels("delete").inc()

    # --- reconcile ------------------------------------------------------------------------------
    def _reconcile_key(self, key: str) -> None:
        kind, name = key.split("/", 1)
        self.reconcile(self._handlers[kind], name)

    def reconcile(self, handler: KindHandler, name: str) -> None:
        profile: ProfileResource | None = self._profiles[handler.kind.kind].get(name)
        if profile is None:
            self._uninstall(handler, name)
            return
        if profile.metadata.deletion_timestamp:
            self._delete(handler, profile)
            return
        desired = handler.desired(profile, self)
        self._ensure_metadata(handler, profile, desired)
        if desired.state == ProfileState.INSTALLED:
            desired = self._install(handler, profile, desired)
        else:
            self._uninstall_file(handler, name)
        if desired.error is not None:
            self.metrics.errors[handler.metric_prefix].labels(desired.error.reason).inc()
            log.warning("%s %s: %s", handler.kind.kind, name, desired.error.message)
        self._set_node_status(handler, profile, desired)

    def _install(self, handler: KindHandler, profile: ProfileResource, desired: Desired) -> Desired:
        """Pending until the node holds it; a failed write is an Error saying why, retried. Returns what
        to report: the node may refuse the profile (a SELinux policy that does not compile)."""
        name = profile.metadata.name or ""
        if self._statuses.get(node_status_name(name, self.config.node_name)) is None:
            self._write_node_status(handler, profile, ProfileState.PENDING, None)
        try:
            installed = handler.install(profile, self, desired)
        except OSError as error:
            self.metrics.errors[handler.metric_prefix].labels(handler.save_error_reason).inc()
            message = f"cannot save {handler.file_name(name)} on {self.config.node_name}: {error}"
            self._write_node_status(handler, profile, ProfileState.ERROR, message)
            raise
        if installed.changed:
            self.metrics.operations[handler.metric_prefix].labels("update").inc()
            log.info("%s %s: saved %s", handler.kind.kind, name, handler.file_name(name))
        return installed.desired

    def _uninstall(self, handler: KindHandler, name: str) -> None:
        self._uninstall_file(handler, name)
        status_name = node_status_name(name, self.config.node_name)
        if self._statuses.get(status_name) is not None:
            self._delete_node_status(status_name)

    def _uninstall_file(self, handler: KindHandler, name: str) -> None:
        if handler.files.remove(name):
            self.metrics.operations[handler.metric_prefix].labels("delete").inc()
            log.info("%s %s: removed %s", handler.kind.kind, name, handler.file_name(name))

    def _delete(self, handler: KindHandler, profile: ProfileResource) -> None:
        """The profile is being deleted: Terminating while pods use it, then file, status, finalizer."""
        name = profile.metadata.name or ""
        finalizers = profile.metadata.finalizers or []
        if self._finalizer not in finalizers:
            self._uninstall(handler, name)
            return
        status = self._statuses.get(node_status_name(name, self.config.node_name))
        if status is not None and status.status != ProfileState.TERMINATING:
            self._write_node_status(handler, profile, ProfileState.TERMINATING, None)
        if constants.FINALIZER_IN_USE in finalizers:
            return  # the reconciler removes it when the last pod is gone; that event brings us back
        self._uninstall(handler, name)
        index = finalizers.index(self._finalizer)
        self._patch_profile(
            handler,
            name,
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": self._finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )

    def _ensure_metadata(self, handler: KindHandler, profile: ProfileResource, desired: Desired) -> None:
        """This node's finalizer, the profile-id label and the handler's annotations, in one patch."""
        metadata = profile.metadata
        operations: list[dict[str, Any]] = []
        wanted_labels = {constants.LABEL_PROFILE_ID: profile_id(handler.kind.kind, metadata.name or "")}
        operations += _map_operations("labels", metadata.labels, wanted_labels)
        operations += _map_operations("annotations", metadata.annotations, desired.annotations)
        finalizers = metadata.finalizers
        if self._finalizer not in (finalizers or []):
            if finalizers is None:
                operations.append({"op": "add", "path": "/metadata/finalizers", "value": [self._finalizer]})
            else:
                operations.append({"op": "add", "path": "/metadata/finalizers/-", "value": self._finalizer})
        if operations:
            guard = {"op": "test", "path": "/metadata/resourceVersion", "value": metadata.resource_version}
            self._patch_profile(handler, metadata.name or "", [guard, *operations])

    def _patch_profile(self, handler: KindHandler, name: str, operations: list[dict[str, Any]]) -> None:
        kind = handler.kind
        self._custom.patch_cluster_custom_object(
            kind.group, kind.version, kind.plural, name, operations, _content_type=_JSON_PATCH
        )

    # --- node status ----------------------------------------------------------------------------
    def _set_node_status(self, handler: KindHandler, profile: ProfileResource, desired: Desired) -> None:
        message = desired.error.message if desired.error is not None else desired.message
        current = self._statuses.get(node_status_name(profile.metadata.name or "", self.config.node_name))
        if current is not None and current.status == desired.state and current.message == message:
            return
        self._write_node_status(handler, profile, desired.state, message)
        if desired.error is not None:
            self._event(handler, profile, "Warning", desired.error.reason, desired.error.message)
        elif desired.state == ProfileState.INSTALLED:
            saved = f"Successfully saved profile to disk on {self.config.node_name}"
            self._event(handler, profile, "Normal", handler.saved_reason, saved)

    def _event(
        self, handler: KindHandler, profile: ProfileResource, kind: str, reason: str, message: str
    ) -> None:
        """An Event on the profile (`kubectl describe`), once per change of this node's state. Events
        are best effort: a failure is logged, never retried."""
        post_event(
            self._core,
            _CLUSTER_SCOPED_EVENTS_NAMESPACE,
            client.V1ObjectReference(
                api_version=handler.kind.api_version,
                kind=handler.kind.kind,
                name=profile.metadata.name or "",
                uid=profile.metadata.uid,
            ),
            event_type=kind,
            reason=reason,
            message=message,
            source=client.V1EventSource(component=_EVENT_COMPONENT, host=self.config.node_name),
        )

    def _write_node_status(
        self, handler: KindHandler, profile: ProfileResource, state: ProfileState, message: str | None
    ) -> None:
        name = profile.metadata.name or ""
        status_name = node_status_name(name, self.config.node_name)
        labels = {
            constants.LABEL_PROFILE_ID: profile_id(handler.kind.kind, name),
            constants.LABEL_NODE_NAME: self.config.node_name,
            constants.LABEL_PROFILE_STATE: str(state),
            constants.LABEL_PROFILE_KIND: handler.kind.kind,
        }
        body: dict[str, Any] = {
            "apiVersion": NODE_STATUS.api_version,
            "kind": NODE_STATUS.kind,
            "metadata": {
                "name": status_name,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": handler.kind.api_version,
                        "kind": handler.kind.kind,
                        "name": name,
                        "uid": profile.metadata.uid,
                        # No blockOwnerDeletion: it needs update on the profile's finalizers, which
                        # the spod's role does not grant (and the node's finalizer blocks anyway).
                        "controller": True,
                    }
                ],
            },
            "nodeName": self.config.node_name,
            "status": str(state),
            "message": message,
        }
        try:
            if self._statuses.get(status_name) is None:
                try:
                    self._custom.create_cluster_custom_object(
                        NODE_STATUS.group, NODE_STATUS.version, NODE_STATUS.plural, body
                    )
                    return
                except ApiException as error:
                    if error.status != _CONFLICT:
                        raise
            patch = {"metadata": {"labels": labels}, "status": str(state), "message": message}
            self._custom.patch_cluster_custom_object(
                NODE_STATUS.group,
                NODE_STATUS.version,
                NODE_STATUS.plural,
                status_name,
                patch,
                _content_type=_MERGE_PATCH,
            )
        except ApiException:
            self.metrics.errors[handler.metric_prefix].labels(CANNOT_UPDATE_NODE_STATUS).inc()
            raise

    def _delete_node_status(self, status_name: str) -> None:
        try:
            self._custom.delete_cluster_custom_object(
                NODE_STATUS.group, NODE_STATUS.version, NODE_STATUS.plural, status_name
            )
        except ApiException as error:
            if error.status != _NOT_FOUND:
                raise

    # --- heartbeat ------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.renew_heartbeat()
            except Exception as error:
                log.warning("heartbeat Lease: %s", error)
            self._stopping.wait(constants.HEARTBEAT_RENEW_SECONDS)

    def renew_heartbeat(self) -> None:
        """Renew this node's Lease (get and update, as the spod's Role allows); create it if missing."""
        now = datetime.datetime.now(datetime.UTC)
        # The client writes isoformat(), which drops a zero fraction; a MicroTime must have one.
        now = now.replace(microsecond=now.microsecond or 1)
        name = heartbeat_lease_name(self.config.node_name)
        try:
            lease = self._coordination.read_namespaced_lease(name, self.config.namespace)
        except ApiException as error:
            if error.status != _NOT_FOUND:
                raise
            lease = client.V1Lease(
                metadata=client.V1ObjectMeta(
                    name=name, labels={constants.LABEL_NODE_NAME: self.config.node_name}
                ),
                spec=client.V1LeaseSpec(acquire_time=now),
            )
        spec = lease.spec or client.V1LeaseSpec()
        spec.holder_identity = self.config.node_name
        spec.lease_duration_seconds = constants.HEARTBEAT_LEASE_DURATION_SECONDS
        spec.renew_time = now
        lease.spec = spec
        if lease.metadata is not None and lease.metadata.resource_version:
            self._coordination.replace_namespaced_lease(name, self.config.namespace, lease)
        else:
            self._coordination.create_namespaced_lease(self.config.namespace, lease)


def _owner_name(status: SecurityProfileNodeStatus) -> str | None:
    extra = status.metadata.model_extra or {}
    for owner in extra.get("ownerReferences") or []:
        if isinstance(owner, dict) and owner.get("controller"):
            return str(owner.get("name"))
    return None


def _map_operations(
    field: str, current: dict[str, str] | None, wanted: dict[str, str]
) -> list[dict[str, Any]]:
    """JSON patch operations that make metadata.<field> hold `wanted` (other keys untouched)."""
    missing = {k: v for k, v in wanted.items() if (current or {}).get(k) != v}
    if not missing:
        return []
    if current is None:
        return [{"op": "add", "path": f"/metadata/{field}", "value": missing}]
    return [
        {"op": "add", "path": f"/metadata/{field}/{_pointer_escape(key)}", "value": value}
        for key, value in missing.items()
    ]


def _pointer_escape(key: str) -> str:
    """A map key as one JSON-pointer segment (RFC 6901): label keys hold '/'."""
    return key.replace("~", "~0").replace("/", "~1")
