"""The controllers that keep profiles, bindings and recordings in line with the pods and nodes:

- `profiles`: each profile's status from its node statuses and the alive nodes (reconciler/status.py),
  its activeWorkloads and in-use finalizer from the pods using it
  (reconciler/workloads.py), and the node statuses and `<node>-deleted` finalizers of gone nodes;
- `bindings` / `recordings`: activeWorkloads and their lock finalizer; a deleted recording with
  `mergeStrategy: containers` has its partial profiles merged (reconciler/merge.py) first;
- `compliance`: SeccompProfiles that break the spod's allowedSyscalls are deleted (reconciler/compliance.py).

Statuses are written by server-side apply of the fields we own; finalizer lists by a merge patch
carrying the resourceVersion read, so a finalizer another actor added meanwhile makes the write fail
(409) and the pass run again on fresh data instead of dropping it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from kubernetes import client

from api import constants, kinds
from api.kinds import ResourceKind
from api.kube import ResourceCache
from api.types import (
    Condition,
    KubernetesObject,
    ProfileBinding,
    ProfileRecording,
    RawSelinuxProfile,
    Resource,
    SeccompProfile,
    SecurityProfileNodeStatus,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)
from reconciler import compliance, merge, status, workloads
from reconciler.runtime import Controller, Watch, apply, delete, own_key, split_key

_MERGE_PATCH = "application/merge-patch+json"
_PROFILE_KINDS: tuple[ResourceKind, ...] = (
    kinds.SECCOMP_PROFILE,
    kinds.SELINUX_PROFILE,
    kinds.RAW_SELINUX_PROFILE,
)
_REFERENCES = "references"
_RECORDINGS = "recordings"
_OWNER = "owner"
_HEARTBEATS_KEY = "heartbeats"
_BASES = "bases"
PROFILE_WORKERS = 8


def _profile_key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def _key(obj: Resource) -> str:
    return f"{obj.metadata.namespace or ''}/{obj.metadata.name}"


def _owner_keys(node_status: SecurityProfileNodeStatus) -> list[str]:
    owners = (node_status.metadata.model_extra or {}).get("ownerReferences") or []
    return [
        _profile_key(str(o.get("kind")), str(o.get("name")))
        for o in owners
        if isinstance(o, dict) and o.get("controller")
    ]


def _recording_of_partial(profile: Resource) -> list[str]:
    labels = profile.metadata.labels or {}
    namespace = labels.get(constants.LABEL_RECORDING_NAMESPACE)
    name = labels.get(constants.LABEL_RECORDING_ID)
    return [f"{namespace}/{name}"] if constants.LABEL_PARTIAL in labels and namespace and name else []


def _profile_keys_of_reference(reference: str) -> list[str]:
    """The profiles a pod reference may name (a seccomp file `x.json` is profile `x` or `x.json`)."""
    target = reference.partition(":")[2]
    if target.endswith(constants.SELINUX_TYPE_SUFFIX):
        name = target.removesuffix(constants.SELINUX_TYPE_SUFFIX)
        return [_profile_key(SelinuxProfile.KIND, name), _profile_key(RawSelinuxProfile.KIND, name)]
    file_name = target.rpartition("/")[2]
    return [_profile_key(SeccompProfile.KIND, n) for n in {file_name, file_name.removesuffix(".json")}]


def _status_write(kind: ResourceKind, obj: Resource, fields: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": obj.metadata.name}
    if kind.namespaced:
        metadata["namespace"] = obj.metadata.namespace
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "status": fields}


def _keep_transition_times(wanted: list[dict[str, Any]], current: Sequence[Condition] | None) -> None:
    before = {c.type: c for c in current or []}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for condition in wanted:
        previous = before.get(condition["type"])
        same = (
            previous is not None and previous.status == condition["status"] and previous.last_transition_time
        )
        condition["lastTransitionTime"] = previous.last_transition_time if same and previous else now


def _essence(fields: dict[str, Any]) -> str:
    """Status fields compared without transition times, which change only with the status."""
    stripped = {
        k: (
            [{f: c.get(f) for f in ("type", "status", "reason", "message")} for c in v]
            if k == "conditions"
            else v
        )
        for k, v in fields.items()
    }
    return json.dumps(stripped, sort_keys=True)


class ProfileControllers:
    """Caches and controllers for profiles, bindings, recordings and compliance, sharing one pod cache."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.profiles: dict[str, ResourceCache[Any]] = {
            kinds.SECCOMP_PROFILE.kind: ResourceCache(api, kinds.SECCOMP_PROFILE, SeccompProfile),
            kinds.SELINUX_PROFILE.kind: ResourceCache(api, kinds.SELINUX_PROFILE, SelinuxProfile),
            kinds.RAW_SELINUX_PROFILE.kind: ResourceCache(api, kinds.RAW_SELINUX_PROFILE, RawSelinuxProfile),
        }
        self.node_statuses = ResourceCache(api, kinds.NODE_STATUS, SecurityProfileNodeStatus)
        self.node_statuses.add_index(_OWNER, _owner_keys)
        # The agents' heartbeat Leases live in the operator's namespace: the role grants no more.
        self.leases = ResourceCache(api, kinds.LEASE, KubernetesObject, namespace=namespace)
        self.pods = ResourceCache(api, kinds.POD, workloads.PodSummary)
        self.pods.add_index(_REFERENCES, lambda pod: pod.references)
        self.pods.add_index(_RECORDINGS, lambda pod: pod.recordings)
        self.bindings = ResourceCache(api, kinds.PROFILE_BINDING, ProfileBinding)
        self.recordings = ResourceCache(api, kinds.PROFILE_RECORDING, ProfileRecording)
        self.spods = ResourceCache(api, kinds.SPOD, SecurityProfilesOperatorDaemon, namespace)
        self._spod_key = f"{namespace}/{constants.SPOD_NAME}"
        self.profiles[SeccompProfile.KIND].add_index(
            _BASES, lambda p: (p.spec.base_profile_name,) if p.spec.base_profile_name else ()
        )
        self._profiles: Controller | None = None
        self._last_alive: frozenset[str] | None = None

    def caches(self) -> list[ResourceCache[Any]]:
        return [
            *self.profiles.values(),
            self.node_statuses,
            self.leases,
            self.pods,
            self.bindings,
            self.recordings,
            self.spods,
        ]

    def controllers(self) -> list[Controller]:
        profile_watches = [
            Watch(cache, lambda obj: (_profile_key(obj.kind, obj.metadata.name),))
            for cache in self.profiles.values()
        ]
        profiles = Controller(
            "profiles",
            self.reconcile_profile,
            [
                *profile_watches,
                Watch(self.node_statuses, _owner_keys),
                Watch(
                    self.pods, lambda pod: [k for r in pod.references for k in _profile_keys_of_reference(r)]
                ),
            ],
            # Each pass waits on one or two writes: a single worker left the apiserver idle
            # between them, and 1,000 new profiles took their writes' latency in sequence.
            workers=PROFILE_WORKERS,
        )
        bindings = Controller(
            "bindings",
            self.reconcile_binding,
            [
                Watch(self.bindings, own_key),
                Watch(
                    self.pods,
                    lambda pod: [_key(b) for b in self.bindings.in_namespace(pod.metadata.namespace or "")],
                ),
            ],
        )
        recordings = Controller(
            "recordings",
            self.reconcile_recording,
            [
                Watch(self.recordings, own_key),
                Watch(self.pods, lambda pod: pod.recordings),
                # A partial profile may appear after its recording was deleted (a pod ending late, or
                # this cache behind the recordings'): the deleted recording merges it then.
                *(Watch(self.profiles[k.kind], _recording_of_partial) for k in merge.PARTIAL_KINDS),
            ],
        )
        compliant = Controller(
            "compliance",
            self.reconcile_compliance,
            [Watch(self.spods, own_key), Watch(self.profiles[SeccompProfile.KIND], self._compliance_keys)],
        )
        self._profiles = profiles
        heartbeats = Controller(
            "heartbeats",
            self.reconcile_heartbeats,
            [Watch(self.leases, lambda _: (_HEARTBEATS_KEY,))],
            resync_keys=lambda: (_HEARTBEATS_KEY,),
        )
        return [profiles, bindings, recordings, compliant, heartbeats]

    def reconcile_heartbeats(self, _key: str) -> float | None:
        """When the set of alive nodes changes, every profile's expected nodes change with it. A Lease
        renewal alone changes nothing, and an expiry comes with no event: look again at the next one."""
        now = datetime.datetime.now(datetime.UTC)
        alive = self._alive(now)
        if alive != self._last_alive and self._profiles is not None:
            self._last_alive = alive
            for kind, cache in self.profiles.items():
                for profile in cache.items():
                    self._profiles.enqueue(_profile_key(kind, profile.metadata.name or ""))
        return status.next_expiry(self._heartbeat_leases(), now)

    def _heartbeat_leases(self) -> list[dict[str, Any]]:
        return [
            lease.model_dump(by_alias=True, mode="json") for lease in self.leases.in_namespace(self.namespace)
        ]

    def _alive(self, now: datetime.datetime | None = None) -> frozenset[str]:
        return status.alive_nodes(self._heartbeat_leases(), now or datetime.datetime.now(datetime.UTC))

    # --- profiles -----------------------------------------------------------------------------------

    def reconcile_profile(self, key: str) -> float | None:
        kind_name, _, name = key.partition("/")
        cache = self.profiles.get(kind_name)
        profile = cache.get(name) if cache is not None else None
        if profile is None:
            return None
        kind = kinds.BY_KIND[kind_name]
        alive = self._alive()
        facts = status.ProfileFacts(
            kind=kind_name,
            name=name,
            deleting=bool(profile.metadata.deletion_timestamp),
            finalizers=tuple(profile.metadata.finalizers or ()),
        )
        node_statuses = self.node_statuses.by_index(_OWNER, key)
        gone = status.cleanup(facts, node_statuses, alive)
        for status_name in gone.node_statuses:
            delete(self.api, kinds.NODE_STATUS, status_name)
        desired = status.desired_status(facts, node_statuses, alive)
        users = workloads.profile_workloads(
            self.pods.by_index(_REFERENCES, workloads.profile_reference(kind_name, name))
        )
        fields = desired.status_fields()
        if users:
            fields["activeWorkloads"] = list(users)
        resource_version = self._write_status(kind, profile, fields)
        books = workloads.bookkeeping(users, constants.FINALIZER_IN_USE, facts.finalizers, gone.finalizers)
        self._write_finalizers(kind, profile, books, resource_version)
        return None

    # --- bindings and recordings ------------------------------------------------------------------

    def reconcile_binding(self, key: str) -> float | None:
        namespace, name = split_key(key)
        binding = self.bindings.get(name, namespace)
        if binding is None:
            return None
        users = workloads.profile_workloads(
            p for p in self.pods.in_namespace(namespace) if workloads.binds(binding, p)
        )
        self._book(kinds.PROFILE_BINDING, binding, users, constants.FINALIZER_ACTIVE_WORKLOAD)
        return None

    def reconcile_recording(self, key: str) -> float | None:
        namespace, name = split_key(key)
        recording = self.recordings.get(name, namespace)
        if recording is None:
            return None
        if recording.metadata.deletion_timestamp and recording.spec.merge_strategy == "containers":
            # Merge before the lock may go: once the recording is gone nothing would say what to merge.
            self._merge(recording)
        users = workloads.recording_workloads(self.pods.by_index(_RECORDINGS, key))
        self._book(kinds.PROFILE_RECORDING, recording, users, constants.FINALIZER_RECORDING_LOCK)
        return None

    def _merge(self, recording: ProfileRecording) -> None:
        kind = kinds.BY_KIND.get(recording.spec.kind)
        if kind is None or kind.kind not in self.profiles:
            return
        plan = merge.plan_merge(recording, self.profiles[kind.kind].items())
        for profile in plan.merged:
            apply(self.api, kind, profile)
        for partial in plan.partials:
            delete(self.api, kind, partial)

    def _book(
        self, kind: ResourceKind, obj: ProfileBinding | ProfileRecording, users: tuple[str, ...], lock: str
    ) -> None:
        # Kept as an empty list: applying no status field at all would leave a null status, which the
        # schema refuses.
        fields: dict[str, Any] = {"activeWorkloads": list(users)}
        resource_version = self._write_status(kind, obj, fields)
        books = workloads.bookkeeping(users, lock, obj.metadata.finalizers or ())
        self._write_finalizers(kind, obj, books, resource_version)

    # --- compliance -----------------------------------------------------------------------------------

    def _compliance_keys(self, profile: SeccompProfile) -> tuple[str, ...]:
        """A changed profile is checked alone, unless other profiles build on it: a base profile's
        syscalls count as theirs, so then every profile is checked (the spod's key), in one pass, or
        the base could be deleted first and leave them nothing to break the lists with."""
        name = profile.metadata.name or ""
        if self.profiles[SeccompProfile.KIND].by_index(_BASES, name):
            return (self._spod_key,)
        return (_profile_key(SeccompProfile.KIND, name),)

    def reconcile_compliance(self, key: str) -> float | None:
        """The spod's key checks every SeccompProfile (its lists changed), a profile's key that one."""
        spod = self.spods.get(constants.SPOD_NAME, self.namespace)
        if spod is None:
            return None
        cache = self.profiles[SeccompProfile.KIND]
        kind, _, name = key.partition("/")
        if key == self._spod_key:
            candidates: tuple[SeccompProfile, ...] = cache.items()
        elif kind == SeccompProfile.KIND:
            profile = cache.get(name)
            candidates = (profile,) if profile is not None else ()
        else:
            # A spod in another namespace is not the operator's.
            return None
        for profile_name, _reasons in compliance.to_delete(candidates, spod.spec, cache.get):
            delete(self.api, kinds.SECCOMP_PROFILE, profile_name)
        return None

    # --- writes -------------------------------------------------------------------------------------

    def _write_status(self, kind: ResourceKind, obj: Any, fields: dict[str, Any]) -> str | None:
        """Apply the status fields we own when they differ; returns the resourceVersion after."""
        current = obj.status.to_dict() if obj.status is not None else {}
        mine = {k: current[k] for k in fields.keys() | {"activeWorkloads"} if k in current}
        if _essence(mine) == _essence(fields):
            return str(obj.metadata.resource_version)
        _keep_transition_times(fields.get("conditions", []), getattr(obj.status, "conditions", None))
        stored = apply(self.api, kind, _status_write(kind, obj, fields), subresource="status")
        return str(stored["metadata"]["resourceVersion"])

    def _write_finalizers(
        self, kind: ResourceKind, obj: Any, books: workloads.Bookkeeping, resource_version: str | None
    ) -> None:
        if not books.finalizers_changed:
            return
        body = {"metadata": {"finalizers": list(books.finalizers), "resourceVersion": resource_version}}
        objects = client.CustomObjectsApi(self.api)
        if kind.namespaced:
            objects.patch_namespaced_custom_object(
                kind.group,
                kind.version,
                obj.metadata.namespace,
                kind.plural,
                obj.metadata.name,
                body,
                _content_type=_MERGE_PATCH,
            )
        else:
            objects.patch_cluster_custom_object(
                kind.group, kind.version, kind.plural, obj.metadata.name, body, _content_type=_MERGE_PATCH
            )
