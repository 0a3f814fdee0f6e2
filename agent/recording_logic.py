"""Profile recording from logs, the pure part: which containers of a pod are recorded and for which
recording, what they recorded, and the profiles that makes once the pod has finished.

- `pod_facts(pod)`: what recording needs of a pod object (a dict as the API returns it), its trace
  annotations parsed (ANNOTATION_TRACE_LOGS_PREFIX + container for seccomp, ANNOTATION_TRACE_AVCS_PREFIX
  + container for SELinux, value `<recording>_<container>_<nonce>_<unix seconds>`).
- `trust(trace, pod, recordings)`: the ProfileRecording a container is recorded for, or why it is not.
  Only the webhook writes these annotations in a namespace that records, but the agent does not take its
  word for it (issue 11, item 6): the recording must exist in the pod's namespace, select the pod (and
  the container), and record this kind with the logs recorder. A forged annotation on any other pod
  records nothing. What the profile is named and labelled with comes from the recording object
  (`RecordingRef`), never from the annotation's text.
- `PodRecord`: one pod's recorded data, bounded by the distinct values (a pod making millions of
  syscalls holds each name once), serialisable to the small JSON file that survives an agent restart.
- `plan_collection(record, targets, architecture)`: the SeccompProfiles / SelinuxProfiles to apply.

Where we differ from upstream (inventory §5.2): the syscall names are sorted (upstream's order depends
on a map), and the recorded data and the trust are persisted per pod instead of living in memory.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pydantic

from api import constants, kinds, validation
from api.selectors import matches
from api.types import MAX_ALLOW_ENTRIES, ProfileRecording, SeccompProfile, SelinuxProfile

# Annotation prefix -> the profile kind recorded under it (log-based recording only).
TRACE_PREFIXES: Final[Mapping[str, str]] = {
    constants.ANNOTATION_TRACE_LOGS_PREFIX: SeccompProfile.KIND,
    constants.ANNOTATION_TRACE_AVCS_PREFIX: SelinuxProfile.KIND,
}
_VALUE_PARTS: Final = 4
_CONTEXT_TYPE_FIELD: Final = 2  # user:role:type:level
_DEFAULT_ACTION: Final = "SCMP_ACT_ERRNO"
_ALLOW_ACTION: Final = "SCMP_ACT_ALLOW"
# The CRD bounds every level of a SelinuxProfile's allow map (api.types.MAX_ALLOW_ENTRIES).
_MAX_RULES: Final = MAX_ALLOW_ENTRIES


class Skip(enum.StrEnum):
    """Why something recorded nothing; the recorder counts and logs each."""

    MALFORMED_ANNOTATION = "MalformedAnnotation"
    UNKNOWN_CONTAINER = "UnknownContainer"
    RECORDING_NOT_FOUND = "RecordingNotFound"
    NOT_SELECTED = "NotSelected"
    KIND_MISMATCH = "KindMismatch"
    INVALID_NAME = "InvalidName"
    MALFORMED_EVENT = "MalformedEvent"
    TOO_MANY_RULES = "TooManyRules"
    NOTHING_RECORDED = "NothingRecorded"
    UNREADABLE_STATE = "UnreadableState"


class RecordingError(ValueError):
    def __init__(self, reason: Skip, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Trace:
    """One trace annotation of a pod: `container` is recorded as `kind` for the recording it names."""

    kind: str
    container: str
    recording: str  # as the annotation spells it: only a key to look the recording up by


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    generate_name: str
    labels: Mapping[str, str]
    containers: frozenset[str]
    traces: tuple[Trace, ...]
    malformed: tuple[str, ...]  # annotation keys whose value is no trace value for that container
    node_name: str
    succeeded: bool

    @property
    def replica_suffix(self) -> str:
        """What a controller's pod adds to its generateName (`abcde` of `nginx-deploy-5d4f8c7b9-abcde`)."""
        if self.generate_name and self.name.startswith(self.generate_name):
            return self.name[len(self.generate_name) :]
        return ""


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """Raises ValueError when the object has no name or namespace."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        raise ValueError("a pod without a name or namespace")
    containers = frozenset(
        str(c.get("name"))
        for group in ("initContainers", "containers")
        for c in spec.get(group) or []
        if isinstance(c, Mapping) and c.get("name")
    )
    traces, malformed = parse_traces(metadata.get("annotations") or {})
    return PodFacts(
        namespace=namespace,
        name=name,
        uid=str(metadata.get("uid") or ""),
        generate_name=str(metadata.get("generateName") or ""),
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        containers=containers,
        traces=traces,
        malformed=malformed,
        node_name=str(spec.get("nodeName") or ""),
        succeeded=(pod.get("status") or {}).get("phase") == constants.POD_PHASE_SUCCEEDED,
    )


def parse_traces(annotations: Mapping[str, str]) -> tuple[tuple[Trace, ...], tuple[str, ...]]:
    """The trace annotations, and the keys of those whose value does not fit their container."""
    traces: list[Trace] = []
    malformed: list[str] = []
    for key, value in sorted(annotations.items()):
        for prefix, kind in TRACE_PREFIXES.items():
            if not key.startswith(prefix):
                continue
            container = key[len(prefix) :]
            parts = str(value).split("_")
            if len(parts) != _VALUE_PARTS or parts[1] != container or not parts[0] or not parts[3].isdigit():
                malformed.append(key)
            else:
                traces.append(Trace(kind, container, parts[0]))
    return tuple(traces), tuple(malformed)


@dataclass(frozen=True)
class RecordingRef:
    """The recording a container is recorded for, as its object says: where the profile's name and labels
    come from. Kept with the recorded data, so a recording deleted meanwhile still names its profiles."""

    name: str
    namespace: str
    uid: str
    kind: str
    merge: bool
    disable: bool

    @classmethod
    def of(cls, recording: ProfileRecording) -> RecordingRef:
        spec = recording.spec
        return cls(
            name=recording.metadata.name or "",
            namespace=recording.metadata.namespace or "",
            uid=recording.metadata.uid or "",
            kind=spec.kind,
            merge=spec.merge_strategy == constants.MERGE_STRATEGY_CONTAINERS,
            disable=spec.disable_profile_after_recording,
        )


def trust(trace: Trace, pod: PodFacts, recordings: Mapping[str, ProfileRecording]) -> RecordingRef | Skip:
    """The recording `trace` records for, by `recordings` (the pod's namespace's, by name)."""
    if trace.container not in pod.containers:
        return Skip.UNKNOWN_CONTAINER
    recording = recordings.get(trace.recording)
    if recording is None or recording.metadata.namespace != pod.namespace:
        return Skip.RECORDING_NOT_FOUND
    spec = recording.spec
    if spec.kind != trace.kind or spec.recorder != constants.RECORDER_LOGS:
        return Skip.KIND_MISMATCH
    if not matches(spec.pod_selector, pod.labels):
        return Skip.NOT_SELECTED
    if spec.containers is not None and trace.container not in spec.containers:
        return Skip.NOT_SELECTED
    try:
        # A label value: upstream refuses recordings whose name is not a DNS-1123 label too.
        validation.dns1123_label(recording.metadata.name or "")
    except ValueError:
        return Skip.INVALID_NAME
    return RecordingRef.of(recording)


def avc_target(tcontext: str) -> str:
    """The allow rule's target of an AVC: the type of its target context, `@self` for the recording type
    (the process acting on itself). RecordingError when the context is not one."""
    fields = tcontext.split(":")
    if len(fields) <= _CONTEXT_TYPE_FIELD:
        raise RecordingError(Skip.MALFORMED_EVENT, f"malformed SELinux context {tcontext!r}")
    target = fields[_CONTEXT_TYPE_FIELD]
    if target == constants.SELINUX_RECORDING_TYPE:
        return validation.SELF_KEYWORD
    _checked(validation.selinux_identifier, target)
    return target


def _checked(check: Any, value: str) -> None:
    try:
        check(value)
    except ValueError as error:
        raise RecordingError(Skip.MALFORMED_EVENT, str(error)) from error


@dataclass
class PodRecord:
    """One pod's recording: its facts, the recordings its containers are trusted for ((kind, container)
    -> RecordingRef), and what they recorded. Not thread-safe: the recorder holds a lock around it."""

    facts: PodFacts
    trusted: dict[tuple[str, str], RecordingRef] = field(default_factory=dict)
    syscalls: dict[str, set[str]] = field(default_factory=dict)
    avcs: dict[str, dict[str, dict[str, set[str]]]] = field(default_factory=dict)
    finished: bool = False

    def traced(self, kind: str, container: str) -> bool:
        return any(t.kind == kind and t.container == container for t in self.facts.traces)

    def add_syscall(self, container: str, name: str) -> bool:
        """True when the name is new for the container. RecordingError for a name no profile can hold."""
        names = self.syscalls.setdefault(container, set())
        if name in names:
            return False
        _checked(validation.syscall_name, name)
        names.add(name)
        return True

    def add_avc(self, container: str, perms: Iterable[str], tcontext: str, tclass: str) -> bool:
        """True when a permission is new. RecordingError for a malformed event, or one more rule than
        a profile can hold (the CRD's bound)."""
        target = avc_target(tcontext)
        _checked(validation.selinux_identifier, tclass)
        wanted = list(perms)
        for perm in wanted:
            _checked(validation.selinux_identifier, perm)
        classes = self.avcs.setdefault(container, {})
        if target not in classes and len(classes) >= _MAX_RULES:
            raise RecordingError(Skip.TOO_MANY_RULES, f"more than {_MAX_RULES} target types")
        have = classes.setdefault(target, {})
        if tclass not in have and len(have) >= _MAX_RULES:
            raise RecordingError(Skip.TOO_MANY_RULES, f"more than {_MAX_RULES} classes of {target}")
        allowed = have.setdefault(tclass, set())
        new = set(wanted) - allowed
        if len(allowed) + len(new) > _MAX_RULES:
            raise RecordingError(Skip.TOO_MANY_RULES, f"more than {_MAX_RULES} permissions on {tclass}")
        allowed |= new
        return bool(new)

    # --- the file that survives a restart -------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        facts = self.facts
        return {
            "pod": {
                "namespace": facts.namespace,
                "name": facts.name,
                "uid": facts.uid,
                "generateName": facts.generate_name,
                "labels": dict(facts.labels),
                "containers": sorted(facts.containers),
                "traces": [[t.kind, t.container, t.recording] for t in facts.traces],
                "nodeName": facts.node_name,
            },
            "trusted": [
                {"container": container, **vars(ref)} for (_, container), ref in sorted(self.trusted.items())
            ],
            "syscalls": {c: sorted(names) for c, names in sorted(self.syscalls.items())},
            "avcs": {
                c: {t: {k: sorted(p) for k, p in ks.items()} for t, ks in ts.items()}
                for c, ts in sorted(self.avcs.items())
            },
            "finished": self.finished,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodRecord:
        """Raises ValueError (KeyError, TypeError included) for a file that is not one of ours."""
        try:
            pod = data["pod"]
            facts = PodFacts(
                namespace=str(pod["namespace"]),
                name=str(pod["name"]),
                uid=str(pod["uid"]),
                generate_name=str(pod["generateName"]),
                labels={str(k): str(v) for k, v in pod["labels"].items()},
                containers=frozenset(str(c) for c in pod["containers"]),
                traces=tuple(Trace(str(k), str(c), str(r)) for k, c, r in pod["traces"]),
                malformed=(),
                node_name=str(pod["nodeName"]),
                succeeded=False,
            )
            trusted = {}
            for entry in data["trusted"]:
                ref = RecordingRef(**{k: v for k, v in entry.items() if k != "container"})
                trusted[ref.kind, str(entry["container"])] = ref
            record = cls(facts, trusted, finished=bool(data["finished"]))
            for container, names in data["syscalls"].items():
                for name in names:
                    record.add_syscall(str(container), str(name))
            for container, targets in data["avcs"].items():
                for target, classes in targets.items():
                    for tclass, perms in classes.items():
                        # Stored targets are already resolved: re-add them as a context with that type.
                        context = f"::{_stored_type(target)}"
                        record.add_avc(str(container), [str(p) for p in perms], context, str(tclass))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a recording state file: {error!r}") from error
        return record


def _stored_type(target: str) -> str:
    return constants.SELINUX_RECORDING_TYPE if target == validation.SELF_KEYWORD else target


# --- the profiles of a finished pod ---------------------------------------------------------------


@dataclass(frozen=True)
class RecordedProfile:
    recording: RecordingRef
    container: str
    body: dict[str, Any]  # the whole object to apply

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass(frozen=True)
class Problem:
    recording: RecordingRef
    container: str
    reason: Skip
    message: str


@dataclass(frozen=True)
class CollectionPlan:
    profiles: tuple[RecordedProfile, ...]
    problems: tuple[Problem, ...]  # nothing recorded, or a profile that cannot exist

    @property
    def partial_recordings(self) -> tuple[RecordingRef, ...]:
        """The recordings that must hold FINALIZER_UNMERGED before these profiles are created."""
        return tuple(dict.fromkeys(p.recording for p in self.profiles if p.recording.merge))


def native_architecture(machine: str) -> str:
    """The seccomp architecture of `platform.machine()`; ValueError for one we do not know."""
    try:
        return constants.SECCOMP_ARCH_BY_MACHINE[machine]
    except KeyError:
        raise ValueError(f"no seccomp architecture known for machine {machine!r}") from None


def profile_name(recording: RecordingRef, container: str, replica_suffix: str) -> str:
    """`<recording>-<container>[-<replica suffix>]`; ValueError when that is no valid profile name."""
    name = f"{recording.name}-{container}" + (f"-{replica_suffix}" if replica_suffix else "")
    return validation.profile_name(name)


def plan_collection(
    record: PodRecord, targets: Mapping[tuple[str, str], RecordingRef], architecture: str
) -> CollectionPlan:
    """The profiles of a finished pod, one per trusted (kind, container) that recorded something."""
    profiles: list[RecordedProfile] = []
    problems: list[Problem] = []
    for (kind, container), recording in sorted(targets.items()):
        spec = _spec(record, kind, container, architecture)
        if spec is None:
            what = "syscalls" if kind == SeccompProfile.KIND else "AVCs"
            message = f"container {container} of pod {record.facts.name} recorded no {what}: no profile"
            problems.append(Problem(recording, container, Skip.NOTHING_RECORDED, message))
            continue
        try:
            name = profile_name(recording, container, record.facts.replica_suffix)
            body = _profile(kind, name, recording, container, spec)
        except (ValueError, pydantic.ValidationError) as error:
            problems.append(Problem(recording, container, Skip.INVALID_NAME, str(error)))
            continue
        profiles.append(RecordedProfile(recording, container, body))
    return CollectionPlan(tuple(profiles), tuple(problems))


def _spec(record: PodRecord, kind: str, container: str, architecture: str) -> dict[str, Any] | None:
    if kind == SeccompProfile.KIND:
        names = record.syscalls.get(container)
        if not names:
            return None
        return {
            "defaultAction": _DEFAULT_ACTION,
            "architectures": [architecture],
            "syscalls": [{"action": _ALLOW_ACTION, "names": sorted(names)}],
        }
    targets = record.avcs.get(container)
    if not targets:
        return None
    return {
        "inherit": [{"kind": "System", "name": constants.SELINUX_CONTAINER_TEMPLATE}],
        "allow": {t: {c: sorted(p) for c, p in sorted(cs.items())} for t, cs in sorted(targets.items())},
    }


def _profile(
    kind: str, name: str, recording: RecordingRef, container: str, spec: dict[str, Any]
) -> dict[str, Any]:
    labels = {
        constants.LABEL_RECORDING_ID: recording.name,
        constants.LABEL_RECORDING_NAMESPACE: recording.namespace,
        constants.LABEL_CONTAINER_ID: container,
    }
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if recording.merge:
        labels[constants.LABEL_PARTIAL] = constants.LABEL_PARTIAL_VALUE
        metadata["finalizers"] = [constants.FINALIZER_PARTIAL_PROFILE]
    resource = kinds.BY_KIND[kind]
    body = {
        "apiVersion": resource.api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": {**spec, "disabled": recording.disable},
    }
    resource.model.model_validate(body)  # what the CRD would refuse, refused here with its reason
    return body


def unmerged_finalizer_change(
    *, held: bool, deleting: bool, merging: bool, tracked_here: bool, partials_left: int
) -> bool | None:
    """Whether this node's recorder adds (True) or removes (False) FINALIZER_UNMERGED on a recording.

    Added while this node records a pod for a merging recording, so that the recording outlives the
    pod's partial profiles. Removed only once the recording is being deleted (the reconciler merges
    then) and neither a partial profile of it nor a pod recording for it on this node is left: a
    recording that is not being deleted keeps it, so that another node about to create a partial profile
    never finds it gone."""
    if merging and tracked_here and not held and not deleting:
        return True
    if held and deleting and not tracked_here and partials_left == 0:
        return False
    return None
