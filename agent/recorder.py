"""Profile recording from logs, the node agent's side (issue 11, items 4 and 6): the recorded syscalls
and AVCs of this node's annotated pods become SeccompProfiles / SelinuxProfiles when each pod ends.

Public surface (the agent wires it):

- ``Recorder(api, node_name, state_dir, registry=None)`` loads what an earlier run recorded from
  ``state_dir`` (one small JSON file per pod, written atomically); ``start()`` starts its caches
  (ProfileRecordings, partial profiles) and its one worker thread, ``stop()`` saves and stops them.
- ``observe_pod(pod)`` / ``pod_deleted(pod)``: from the pod watch's thread, with the pod objects as the
  API returns them (dicts). Pods of other nodes and pods without trace annotations are ignored at once.
- ``record_syscall(namespace, pod, container, syscall)`` / ``record_avc(namespace, pod, container,
  *, perms, tcontext, tclass)``: from the audit thread, already attributed; thread-safe and cheap (a set
  insertion under a lock; a new distinct value only schedules the pod's file to be saved).

What it does with them, on its worker thread (a crash at any point converges on the next start):

- Trust (recording_logic.trust): a container is recorded only for a ProfileRecording that exists in the
  pod's namespace, selects the pod and the container, and records that kind from logs; anything else is
  logged and counted in ``security_profiles_operator_profile_recording_skipped_total{reason}``, and its
  events are dropped. Trust is decided while the pod runs and kept with the data; a container whose
  recording the cache has not shown yet records meanwhile, and is dropped if it never shows up.
- When the pod is deleted or Succeeded: for recordings with ``mergeStrategy: containers`` the recording
  first gets the finalizer FINALIZER_UNMERGED (already while the pod runs, so the recording cannot
  disappear before its partial profiles exist); then every profile is created or updated by server-side
  apply (field manager ``spod``), with a Normal event on the recording, or a Warning event when a
  container recorded nothing; then the pod's data and file are forgotten. Any failure (apiserver down,
  a recording not in the cache yet) is retried with backoff, the data kept.
- A pod that ended while the agent was down is found at start (the API no longer has it) and collected.
- Finalizers: FINALIZER_PARTIAL_PROFILE on a partial profile being deleted (the
  reconciler deletes them once merged) is removed; FINALIZER_UNMERGED is removed from a recording
  being deleted once no partial profile of it is left and this node tracks no pod recording for it.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from agent.files import DirectoryFiles
from agent.recording_logic import (
    PodFacts,
    PodRecord,
    RecordingError,
    RecordingRef,
    Skip,
    native_architecture,
    plan_collection,
    pod_facts,
    trust,
    unmerged_finalizer_change,
)
from agent.workqueue import WorkQueue
from api import constants, kinds
from api.kube import ResourceCache, post_event, server_side_apply
from api.types import ProfileRecording, SeccompProfile, SelinuxProfile

log = logging.getLogger(__name__)

_NOT_FOUND: Final = 404
_JSON_PATCH: Final = "application/json-patch+json"
_STATE_SUFFIX: Final = ".json"
_EVENT_COMPONENT: Final = "spod"
SYNC_TIMEOUT_SECONDS: Final = 120.0
# A recording the cache has never shown may just be late: a finished pod's container waiting for it is
# collected again this many times (with the queue's growing backoff, about half a minute), then dropped.
PENDING_ATTEMPTS: Final = 6
PROFILE_CREATED: Final = "ProfileCreated"
PROFILE_KINDS: Final = (kinds.SECCOMP_PROFILE, kinds.SELINUX_PROFILE)


class RecordingPendingError(Exception):
    """A finished pod still names a recording the cache has not shown yet: collect it again later."""


@dataclass
class _Tracked:
    record: PodRecord
    verified: bool  # the pod was seen alive since this agent started (else the API is asked)
    rejected: set[tuple[str, str]] = field(default_factory=set)
    pending_attempts: int = 0


class Recorder:
    def __init__(
        self,
        api: client.ApiClient,
        node_name: str,
        state_dir: Path,
        registry: CollectorRegistry | None = None,
        machine: str | None = None,
    ) -> None:
        """``machine``: platform.machine() unless given; ValueError for one with no seccomp architecture."""
        self.node_name = node_name
        self._api = api
        self._core = client.CoreV1Api(api)
        self._objects = client.CustomObjectsApi(api)
        self._architecture = native_architecture(machine or platform.machine())
        self._recordings = ResourceCache(api, kinds.PROFILE_RECORDING, ProfileRecording)
        self._partials: dict[str, ResourceCache[Any]] = {
            kind.kind: ResourceCache(api, kind, kind.model, label_selector=constants.LABEL_PARTIAL)
            for kind in PROFILE_KINDS
        }
        self._files = DirectoryFiles(state_dir, _STATE_SUFFIX)
        self._lock = threading.Lock()
        self._pods: dict[str, _Tracked] = {}  # by pod uid
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, pod name) -> uid of the live pod
        self._queue = WorkQueue()
        self._thread: threading.Thread | None = None
        self.skipped = Counter(
            "security_profiles_operator_profile_recording_skipped_total",
            "Counter about recorded containers and events that make no profile.",
            ["reason"],
            registry=registry or CollectorRegistry(),
        )
        self._load()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._recordings.add_event_handler(self._on_recording)
        for cache in self._partials.values():
            cache.add_event_handler(self._on_partial)
        caches = [self._recordings, *self._partials.values()]
        for cache in caches:
            cache.start()
        for cache in caches:
            if not cache.wait_synced(SYNC_TIMEOUT_SECONDS):
                raise TimeoutError(f"the {cache.kind.plural} cache did not sync")
        with self._lock:
            uids = list(self._pods)
        for uid in uids:
            self._queue.add(f"collect/{uid}")
        self._thread = threading.Thread(
            target=lambda: self._queue.run_worker(self._handle, self._failed), name="recorder", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._queue.stop()
        for cache in [self._recordings, *self._partials.values()]:
            cache.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            uids = list(self._pods)
        for uid in uids:
            self._save(uid)

    # --- the pod watch's thread -----------------------------------------------------------------
    def observe_pod(self, pod: dict[str, Any]) -> None:
        facts = self._facts(pod)
        if facts is None or (not facts.traces and not facts.malformed):
            return
        with self._lock:
            tracked = self._pods.get(facts.uid)
            if tracked is None:
                tracked = self._pods[facts.uid] = _Tracked(PodRecord(facts), verified=True)
            tracked.record.facts = facts
            tracked.verified = True
            self._uids[facts.namespace, facts.name] = facts.uid
            for key in facts.malformed:
                self._reject(tracked, ("", key), Skip.MALFORMED_ANNOTATION, f"annotation {key}")
            merged = self._evaluate(tracked)
            tracked.record.finished |= facts.succeeded
            finished = tracked.record.finished
        self._queue.add(f"save/{facts.uid}")
        for ref in merged:
            self._queue.add(f"recording/{ref.namespace}/{ref.name}")
        if finished:
            self._queue.add(f"collect/{facts.uid}")

    def pod_deleted(self, pod: dict[str, Any]) -> None:
        facts = self._facts(pod)
        if facts is None:
            return
        with self._lock:
            tracked = self._pods.get(facts.uid)
            if tracked is None:
                return
            tracked.record.finished = True
        self._queue.add(f"save/{facts.uid}")
        self._queue.add(f"collect/{facts.uid}")

    def _facts(self, pod: dict[str, Any]) -> PodFacts | None:
        try:
            facts = pod_facts(pod)
        except ValueError as error:
            log.warning("pod watch: %s", error)
            return None
        return facts if facts.node_name == self.node_name and facts.uid else None

    # --- the audit thread -----------------------------------------------------------------------
    def record_syscall(self, namespace: str, pod: str, container: str, syscall: str) -> None:
        with self._lock:
            tracked = self._recording(namespace, pod, SeccompProfile.KIND, container)
            if tracked is None:
                return
            try:
                new = tracked.record.add_syscall(container, syscall)
            except RecordingError as error:
                self._skip(error.reason, f"pod {namespace}/{pod} container {container}: {error}")
                return
        if new:
            self._queue.add(f"save/{tracked.record.facts.uid}")

    def record_avc(
        self, namespace: str, pod: str, container: str, *, perms: list[str], tcontext: str, tclass: str
    ) -> None:
        with self._lock:
            tracked = self._recording(namespace, pod, SelinuxProfile.KIND, container)
            if tracked is None:
                return
            try:
                new = tracked.record.add_avc(container, perms, tcontext, tclass)
            except RecordingError as error:
                self._skip(error.reason, f"pod {namespace}/{pod} container {container}: {error}")
                return
        if new:
            self._queue.add(f"save/{tracked.record.facts.uid}")

    def _recording(self, namespace: str, pod: str, kind: str, container: str) -> _Tracked | None:
        """The live pod, when it records this container as this kind (trusted, or not refused yet)."""
        uid = self._uids.get((namespace, pod))
        tracked = self._pods.get(uid) if uid is not None else None
        if tracked is None or (kind, container) in tracked.rejected:
            return None
        return tracked if tracked.record.traced(kind, container) else None

    # --- trust ----------------------------------------------------------------------------------
    def _evaluate(self, tracked: _Tracked) -> list[RecordingRef]:
        """Trust what can be trusted now (under the lock); returns the newly trusted merging recordings."""
        record = tracked.record
        facts = record.facts
        recordings = {r.metadata.name or "": r for r in self._recordings.in_namespace(facts.namespace)}
        merged = []
        for trace in facts.traces:
            key = (trace.kind, trace.container)
            if key in record.trusted or key in tracked.rejected:
                continue
            verdict = trust(trace, facts, recordings)
            if isinstance(verdict, RecordingRef):
                record.trusted[key] = verdict
                if verdict.merge:
                    merged.append(verdict)
            elif verdict != Skip.RECORDING_NOT_FOUND:
                self._reject(tracked, key, verdict, f"{trace.kind} of container {trace.container}")
        return merged

    def _reject(self, tracked: _Tracked, key: tuple[str, str], reason: Skip, what: str) -> None:
        if key in tracked.rejected:
            return
        tracked.rejected.add(key)
        facts = tracked.record.facts
        self._skip(reason, f"pod {facts.namespace}/{facts.name}: {what} is not recorded")

    def _skip(self, reason: Skip, message: str) -> None:
        self.skipped.labels(str(reason)).inc()
        log.warning("%s (%s)", message, reason)

    # --- events to keys -------------------------------------------------------------------------
    def _on_recording(self, recording: ProfileRecording) -> None:
        namespace, name = recording.metadata.namespace or "", recording.metadata.name or ""
        newly: list[RecordingRef] = []
        changed = []
        with self._lock:
            for uid, tracked in self._pods.items():
                facts = tracked.record.facts
                if facts.namespace == namespace and any(t.recording == name for t in facts.traces):
                    before = len(tracked.record.trusted)
                    newly += self._evaluate(tracked)
                    if len(tracked.record.trusted) != before:
                        changed.append(uid)
        for uid in changed:
            self._queue.add(f"save/{uid}")
        if newly or constants.FINALIZER_UNMERGED in (recording.metadata.finalizers or []):
            self._queue.add(f"recording/{namespace}/{name}")

    def _on_partial(self, profile: SeccompProfile | SelinuxProfile) -> None:
        labels = profile.metadata.labels or {}
        self._queue.add(f"partial/{profile.kind}/{profile.metadata.name}")
        namespace = labels.get(constants.LABEL_RECORDING_NAMESPACE)
        name = labels.get(constants.LABEL_RECORDING_ID)
        if namespace and name:
            self._queue.add(f"recording/{namespace}/{name}")

    # --- the worker -----------------------------------------------------------------------------
    def _handle(self, key: str) -> None:
        what, _, rest = key.partition("/")
        if what == "save":
            self._save(rest)
        elif what == "collect":
            self._collect(rest)
        elif what == "recording":
            namespace, _, name = rest.partition("/")
            self._reconcile_recording(namespace, name)
        else:
            kind, _, name = rest.partition("/")
            self._release_partial(kind, name)

    def _failed(self, key: str, error: Exception) -> None:
        log.warning("recorder %s: %s (retrying)", key, error)

    # --- the files that survive a restart -------------------------------------------------------
    def _load(self) -> None:
        self._files.sweep()
        for file_name in sorted(self._files.names()):
            content = self._files.read(file_name)
            try:
                record = PodRecord.from_json(json.loads(content or b""))
            except (ValueError, RecordingError) as error:
                self._skip(Skip.UNREADABLE_STATE, f"recording state {file_name} not loaded: {error}")
                continue
            facts = record.facts
            self._pods[facts.uid] = _Tracked(record, verified=False)
            self._uids[facts.namespace, facts.name] = facts.uid
        log.info("recorder: %d pods' recordings loaded from %s", len(self._pods), self._files.directory)

    def _save(self, uid: str) -> None:
        with self._lock:
            tracked = self._pods.get(uid)
            data = tracked.record.to_json() if tracked is not None else None
        if data is not None:
            self._files.write(uid, json.dumps(data, sort_keys=True).encode())

    # --- collection -----------------------------------------------------------------------------
    def _collect(self, uid: str) -> None:
        with self._lock:
            tracked = self._pods.get(uid)
            if tracked is None:
                return
            facts, finished, verified = tracked.record.facts, tracked.record.finished, tracked.verified
        if not finished:
            if verified or not self._ended(facts.namespace, facts.name, uid):
                return
            with self._lock:
                tracked.record.finished = True
        with self._lock:
            self._evaluate(tracked)
            record = tracked.record
            waiting = [t for t in record.facts.traces if (t.kind, t.container) not in record.trusted]
            waiting = [t for t in waiting if (t.kind, t.container) not in tracked.rejected]
            if waiting and tracked.pending_attempts < PENDING_ATTEMPTS:
                tracked.pending_attempts += 1
                raise RecordingPendingError(
                    f"pod {facts.namespace}/{facts.name} waits for {waiting[0].recording}"
                )
            for trace in waiting:
                key = (trace.kind, trace.container)
                self._reject(tracked, key, Skip.RECORDING_NOT_FOUND, f"recording {trace.recording}")
            plan = plan_collection(record, dict(record.trusted), self._architecture)
        for ref in plan.partial_recordings:
            self._hold_unmerged(ref)
        for profile in plan.profiles:
            kind = kinds.BY_KIND[profile.recording.kind]
            server_side_apply(self._api, kind, profile.body, constants.AGENT_FIELD_MANAGER, namespaced=False)
        # Told once all are stored: a collection retried after a failure repeats no event.
        for profile in plan.profiles:
            message = (
                f"{profile.recording.kind} {profile.name} recorded from pod {facts.name} "
                f"container {profile.container}"
            )
            log.info("recorder: %s", message)
            self._event(profile.recording, "Normal", PROFILE_CREATED, message)
        for problem in plan.problems:
            self._skip(problem.reason, f"pod {facts.namespace}/{facts.name}: {problem.message}")
            self._event(problem.recording, "Warning", str(problem.reason), problem.message)
        with self._lock:
            self._pods.pop(uid, None)
            if self._uids.get((facts.namespace, facts.name)) == uid:
                del self._uids[facts.namespace, facts.name]
        self._files.remove(uid)
        for ref in dict.fromkeys(record.trusted.values()):
            self._queue.add(f"recording/{ref.namespace}/{ref.name}")

    def _ended(self, namespace: str, name: str, uid: str) -> bool:
        """Whether a pod loaded from an earlier run has ended meanwhile (gone, replaced, or Succeeded)."""
        try:
            pod = self._core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == _NOT_FOUND:
                return True
            raise
        if pod.metadata is None or pod.metadata.uid != uid:
            return True
        if pod.status is not None and pod.status.phase == constants.POD_PHASE_SUCCEEDED:
            return True
        with self._lock:
            tracked = self._pods.get(uid)
            if tracked is not None:
                tracked.verified = True
        return False

    # --- finalizers -----------------------------------------------------------------------------
    def _hold_unmerged(self, ref: RecordingRef) -> None:
        """FINALIZER_UNMERGED on the recording before its partial profiles exist."""
        recording = self._recordings.get(ref.name, ref.namespace)
        if recording is None or recording.metadata.uid != ref.uid:
            # Gone (its finalizers were forced away): the partial profiles stay for the user to see.
            log.warning(
                "recorder: ProfileRecording %s/%s is gone, its profiles stay partial", ref.namespace, ref.name
            )
            return
        if constants.FINALIZER_UNMERGED in (recording.metadata.finalizers or []):
            return
        if recording.metadata.deletion_timestamp:
            # The apiserver adds no finalizer to an object being deleted; the reconciler merges what
            # exists while the recording lasts.
            log.warning("recorder: ProfileRecording %s/%s is being deleted", ref.namespace, ref.name)
            return
        self._add_unmerged(recording)

    def _reconcile_recording(self, namespace: str, name: str) -> None:
        recording = self._recordings.get(name, namespace)
        if recording is None:
            return
        uid = recording.metadata.uid
        with self._lock:
            tracked_here = any(
                ref.namespace == namespace and ref.name == name and ref.uid == uid
                for tracked in self._pods.values()
                for ref in tracked.record.trusted.values()
            )
        partials_left = sum(
            1
            for cache in self._partials.values()
            for profile in cache.items()
            if not profile.metadata.deletion_timestamp and _partial_of(profile, namespace, name)
        )
        finalizers = recording.metadata.finalizers or []
        change = unmerged_finalizer_change(
            held=constants.FINALIZER_UNMERGED in finalizers,
            deleting=bool(recording.metadata.deletion_timestamp),
            merging=recording.spec.merge_strategy == constants.MERGE_STRATEGY_CONTAINERS,
            tracked_here=tracked_here,
            partials_left=partials_left,
        )
        if change is True:
            self._add_unmerged(recording)
        elif change is False:
            index = finalizers.index(constants.FINALIZER_UNMERGED)
            self._patch(
                kinds.PROFILE_RECORDING, name, _remove_at(index, constants.FINALIZER_UNMERGED), namespace
            )
            log.info("recorder: ProfileRecording %s/%s has no unmerged profile left", namespace, name)

    def _add_unmerged(self, recording: ProfileRecording) -> None:
        metadata = recording.metadata
        # A cache behind the apiserver must not make it add the finalizer twice: retried once it caught up.
        guard = {"op": "test", "path": "/metadata/resourceVersion", "value": metadata.resource_version}
        if metadata.finalizers is None:
            add = {"op": "add", "path": "/metadata/finalizers", "value": [constants.FINALIZER_UNMERGED]}
        else:
            add = {"op": "add", "path": "/metadata/finalizers/-", "value": constants.FINALIZER_UNMERGED}
        self._patch(kinds.PROFILE_RECORDING, metadata.name or "", [guard, add], metadata.namespace or "")

    def _release_partial(self, kind: str, name: str) -> None:
        profile = self._partials[kind].get(name)
        if profile is None or not profile.metadata.deletion_timestamp:
            return
        finalizers = profile.metadata.finalizers or []
        if constants.FINALIZER_PARTIAL_PROFILE in finalizers:
            index = finalizers.index(constants.FINALIZER_PARTIAL_PROFILE)
            self._patch(kinds.BY_KIND[kind], name, _remove_at(index, constants.FINALIZER_PARTIAL_PROFILE))

    def _patch(
        self, kind: kinds.ResourceKind, name: str, operations: list[dict[str, Any]], namespace: str = ""
    ) -> None:
        if kind.namespaced:
            self._objects.patch_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, operations, _content_type=_JSON_PATCH
            )
        else:
            self._objects.patch_cluster_custom_object(
                kind.group, kind.version, kind.plural, name, operations, _content_type=_JSON_PATCH
            )

    # --- events ---------------------------------------------------------------------------------
    def _event(self, ref: RecordingRef, kind: str, reason: str, message: str) -> None:
        """An Event on the recording (`kubectl describe profilerecording`); best effort."""
        post_event(
            self._core,
            ref.namespace,
            client.V1ObjectReference(
                api_version=kinds.PROFILE_RECORDING.api_version,
                kind=kinds.PROFILE_RECORDING.kind,
                name=ref.name,
                namespace=ref.namespace,
                uid=ref.uid,
            ),
            event_type=kind,
            reason=reason,
            message=message,
            source=client.V1EventSource(component=_EVENT_COMPONENT, host=self.node_name),
        )


def _partial_of(profile: SeccompProfile | SelinuxProfile, namespace: str, name: str) -> bool:
    labels = profile.metadata.labels or {}
    return (
        labels.get(constants.LABEL_RECORDING_NAMESPACE) == namespace
        and labels.get(constants.LABEL_RECORDING_ID) == name
    )


def _remove_at(index: int, value: str) -> list[dict[str, Any]]:
    path = f"/metadata/finalizers/{index}"
    return [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}]
