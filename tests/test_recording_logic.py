"""The recorder's pure part: trace annotations, trust in recordings, accumulation, and the profiles a
finished pod makes (docs 7.6.3, 7.6.3.1, 7.7.3)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.recording_logic import (
    PodRecord,
    RecordingError,
    RecordingRef,
    Skip,
    Trace,
    avc_target,
    native_architecture,
    parse_traces,
    plan_collection,
    pod_facts,
    trust,
    unmerged_finalizer_change,
)
from api import constants
from api.types import ProfileRecording, SeccompProfile, SelinuxProfile
from reconciler.merge import plan_merge

NS = "my-namespace"
LOGS = constants.ANNOTATION_TRACE_LOGS_PREFIX
AVCS = constants.ANNOTATION_TRACE_AVCS_PREFIX
SECCOMP = SeccompProfile.KIND
SELINUX = SelinuxProfile.KIND
ARCH = "SCMP_ARCH_X86_64"


def _recording(
    name: str = "test-recording",
    kind: str = SECCOMP,
    selector: dict[str, Any] | None = None,
    namespace: str = NS,
    **spec: Any,
) -> ProfileRecording:
    return ProfileRecording.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha1",
            "kind": "ProfileRecording",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "spec": {
                "kind": kind,
                "recorder": "logs",
                "podSelector": selector if selector is not None else {"matchLabels": {"app": "my-app"}},
                **spec,
            },
        }
    )


def _docs_pod(annotations: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The docs' 7.6.3 two-container pod, as the API returns it after the recording webhook."""
    return {
        "metadata": {
            "namespace": NS,
            "name": "my-pod",
            "uid": "pod-uid",
            "labels": {"app": "my-app"} if labels is None else labels,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {"name": "nginx", "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED},
                {"name": "redis", "image": constants.IMAGE_REDIS},
            ],
        },
        "status": {"phase": "Running"},
    }


def _value(recording: str, container: str) -> str:
    return f"{recording}_{container}_6kmrb_1684331729"


DOCS_ANNOTATIONS = {
    f"{LOGS}nginx": _value("test-recording", "nginx"),
    f"{LOGS}redis": _value("test-recording", "redis"),
}


# --- annotations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "traces", "malformed"),
    [
        (DOCS_ANNOTATIONS, [(SECCOMP, "nginx", "test-recording"), (SECCOMP, "redis", "test-recording")], []),
        ({f"{AVCS}redis": _value("rec", "redis")}, [(SELINUX, "redis", "rec")], []),
        ({f"{LOGS}nginx": "test-recording_nginx_6kmrb"}, [], [f"{LOGS}nginx"]),
        ({f"{LOGS}nginx": "a_nginx_6kmrb_1_2"}, [], [f"{LOGS}nginx"]),
        ({f"{LOGS}nginx": _value("rec", "redis")}, [], [f"{LOGS}nginx"]),
        ({f"{LOGS}nginx": "rec_nginx_6kmrb_yesterday"}, [], [f"{LOGS}nginx"]),
        ({f"{LOGS}nginx": "_nginx_6kmrb_1"}, [], [f"{LOGS}nginx"]),
        # bpf recording and unrelated annotations are not ours
        ({f"{constants.ANNOTATION_TRACE_BPF_PREFIX}nginx": _value("rec", "nginx"), "other": "x"}, [], []),
    ],
)
def test_trace_annotations(
    annotations: dict[str, str], traces: list[tuple[str, str, str]], malformed: list[str]
) -> None:
    parsed, bad = parse_traces(annotations)
    assert parsed == tuple(Trace(*t) for t in traces)
    assert bad == tuple(malformed)


def test_pod_facts_of_a_controller_pod() -> None:
    pod = _docs_pod(DOCS_ANNOTATIONS)
    pod["metadata"] |= {"name": "nginx-deploy-5d4f8c7b9-abcde", "generateName": "nginx-deploy-5d4f8c7b9-"}
    pod["spec"]["initContainers"] = [{"name": "init"}]
    pod["status"]["phase"] = "Succeeded"
    facts = pod_facts(pod)
    assert facts.replica_suffix == "abcde"
    assert facts.containers == {"init", "nginx", "redis"}
    assert facts.succeeded and facts.node_name == "node-1"
    assert pod_facts(_docs_pod({})).replica_suffix == ""


@pytest.mark.parametrize("metadata", [{}, {"name": "p"}, {"namespace": "n"}, {"name": 3, "namespace": "n"}])
def test_pod_facts_refuse_an_object_without_name_or_namespace(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="without a name"):
        pod_facts({"metadata": metadata})


# --- trust (issue 11, item 6) ---------------------------------------------------------------------

DOCS_REF = RecordingRef("test-recording", NS, "uid-test-recording", SECCOMP, merge=False, disable=False)


@pytest.mark.parametrize(
    ("trace", "labels", "recordings", "verdict"),
    [
        # the docs' pod, selected by the docs' recording
        (Trace(SECCOMP, "nginx", "test-recording"), None, [_recording()], DOCS_REF),
        # forged: the recording exists but does not select this pod
        (Trace(SECCOMP, "nginx", "test-recording"), {"app": "other"}, [_recording()], Skip.NOT_SELECTED),
        # forged: no such recording in the namespace (one of that name elsewhere does not count)
        (
            Trace(SECCOMP, "nginx", "test-recording"),
            None,
            [_recording(namespace="x")],
            Skip.RECORDING_NOT_FOUND,
        ),
        (Trace(SECCOMP, "nginx", "nope"), None, [_recording()], Skip.RECORDING_NOT_FOUND),
        # the recording records SELinux, the annotation says seccomp
        (Trace(SECCOMP, "nginx", "test-recording"), None, [_recording(kind=SELINUX)], Skip.KIND_MISMATCH),
        (Trace(SECCOMP, "nginx", "test-recording"), None, [_recording(recorder="bpf")], Skip.KIND_MISMATCH),
        # the recording records other containers only
        (
            Trace(SECCOMP, "nginx", "test-recording"),
            None,
            [_recording(containers=["redis"])],
            Skip.NOT_SELECTED,
        ),
        (Trace(SECCOMP, "redis", "test-recording"), None, [_recording(containers=["redis"])], DOCS_REF),
        # a container the pod does not have
        (Trace(SECCOMP, "ghost", "test-recording"), None, [_recording()], Skip.UNKNOWN_CONTAINER),
        # a recording name that is no label value cannot name a profile's labels
        (Trace(SECCOMP, "nginx", "rec.dotted"), None, [_recording(name="rec.dotted")], Skip.INVALID_NAME),
        # an empty selector selects every pod of the namespace
        (Trace(SECCOMP, "nginx", "test-recording"), {}, [_recording(selector={})], DOCS_REF),
    ],
)
def test_trust(
    trace: Trace,
    labels: dict[str, str] | None,
    recordings: list[ProfileRecording],
    verdict: RecordingRef | Skip,
) -> None:
    facts = pod_facts(_docs_pod(DOCS_ANNOTATIONS, labels))
    by_name = {r.metadata.name or "": r for r in recordings}
    assert trust(trace, facts, by_name) == verdict


def test_the_profile_follows_the_recording_object() -> None:
    recording = _recording(mergeStrategy="containers", disableProfileAfterRecording=True)
    verdict = trust(
        Trace(SECCOMP, "nginx", "test-recording"), pod_facts(_docs_pod({})), {"test-recording": recording}
    )
    assert isinstance(verdict, RecordingRef)
    assert (verdict.merge, verdict.disable, verdict.uid) == (True, True, "uid-test-recording")


# --- accumulation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tcontext", "target"),
    [
        ("system_u:object_r:redis_port_t:s0", "redis_port_t"),
        ("system_u:system_r:selinuxrecording.process:s0:c4,c27", "@self"),
        ("system_u:object_r:container_file_t", "container_file_t"),
    ],
)
def test_avc_target(tcontext: str, target: str) -> None:
    assert avc_target(tcontext) == target


@pytest.mark.parametrize("tcontext", ["", "system_u:object_r", "a:b:(evil)", "a:b::s0"])
def test_a_malformed_context_is_an_error(tcontext: str) -> None:
    with pytest.raises(RecordingError) as error:
        avc_target(tcontext)
    assert error.value.reason == Skip.MALFORMED_EVENT


def test_syscalls_are_held_once_each() -> None:
    record = PodRecord(pod_facts(_docs_pod(DOCS_ANNOTATIONS)))
    news = [record.add_syscall("nginx", name) for _ in range(50_000) for name in ("read", "write", "mkdir")]
    assert news.count(True) == 3
    assert record.syscalls == {"nginx": {"read", "write", "mkdir"}}
    with pytest.raises(RecordingError):
        record.add_syscall("nginx", "Read; rm")


def test_avcs_are_grouped_by_class_and_type() -> None:
    record = PodRecord(pod_facts(_docs_pod({})))
    port = "system_u:object_r:redis_port_t:s0"
    itself = "system_u:system_r:selinuxrecording.process:s0:c4,c27"
    assert record.add_avc("redis", ["name_bind"], port, "tcp_socket")
    assert record.add_avc("redis", ["listen", "name_bind"], port, "tcp_socket")
    assert not record.add_avc("redis", ["listen"], port, "tcp_socket")
    assert record.add_avc("redis", ["create"], itself, "tcp_socket")
    assert record.avcs == {
        "redis": {
            "redis_port_t": {"tcp_socket": {"listen", "name_bind"}},
            "@self": {"tcp_socket": {"create"}},
        }
    }
    for bad in (("x(", port, "tcp_socket"), ("read", "nocontext", "file"), ("read", port, "file)")):
        with pytest.raises(RecordingError):
            record.add_avc("redis", [bad[0]], bad[1], bad[2])


def test_avcs_are_bounded_by_what_a_profile_holds() -> None:
    record = PodRecord(pod_facts(_docs_pod({})))
    for index in range(128):
        record.add_avc("c", ["read"], f"u:r:type{index}_t:s0", "file")
    with pytest.raises(RecordingError) as error:
        record.add_avc("c", ["read"], "u:r:one_more_t:s0", "file")
    assert error.value.reason == Skip.TOO_MANY_RULES


def test_the_state_file_round_trips() -> None:
    record = PodRecord(pod_facts(_docs_pod(DOCS_ANNOTATIONS)), finished=True)
    record.trusted[SECCOMP, "nginx"] = DOCS_REF
    record.add_syscall("nginx", "mkdir")
    record.add_avc("redis", ["name_bind"], "u:r:redis_port_t:s0", "tcp_socket")
    record.add_avc("redis", ["create"], "u:r:selinuxrecording.process:s0", "tcp_socket")
    loaded = PodRecord.from_json(copy.deepcopy(record.to_json()))
    assert loaded.to_json() == record.to_json()
    assert (loaded.trusted, loaded.syscalls, loaded.avcs) == (record.trusted, record.syscalls, record.avcs)


@pytest.mark.parametrize("data", [{}, {"pod": {}}, {"pod": None}, []])
def test_a_foreign_state_file_is_refused(data: Any) -> None:
    with pytest.raises(ValueError, match="not a recording state file"):
        PodRecord.from_json(data)


# --- the profiles of a finished pod ---------------------------------------------------------------


def _finished(pod: dict[str, Any], trusted: dict[tuple[str, str], RecordingRef]) -> PodRecord:
    return PodRecord(pod_facts(pod), dict(trusted), finished=True)


def test_docs_two_container_pod_makes_two_seccomp_profiles() -> None:
    record = _finished(
        _docs_pod(DOCS_ANNOTATIONS), {(SECCOMP, "nginx"): DOCS_REF, (SECCOMP, "redis"): DOCS_REF}
    )
    for name in ("write", "accept4", "read"):
        record.add_syscall("nginx", name)
    record.add_syscall("redis", "epoll_wait")
    plan = plan_collection(record, record.trusted, ARCH)
    assert plan.problems == () and plan.partial_recordings == ()
    assert [p.body for p in plan.profiles] == [
        {
            "apiVersion": f"{constants.GROUP}/v1beta1",
            "kind": SECCOMP,
            "metadata": {
                "name": f"test-recording-{container}",
                "labels": {
                    constants.LABEL_RECORDING_ID: "test-recording",
                    constants.LABEL_RECORDING_NAMESPACE: NS,
                    constants.LABEL_CONTAINER_ID: container,
                },
            },
            "spec": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "architectures": [ARCH],
                "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": names}],
                "disabled": False,
            },
        }
        for container, names in (("nginx", ["accept4", "read", "write"]), ("redis", ["epoll_wait"]))
    ]


def _replica(suffix: str, syscalls: list[str], ref: RecordingRef) -> PodRecord:
    pod = _docs_pod({f"{LOGS}nginx-record": _value(ref.name, "nginx-record")}, {"app": "sp-record"})
    pod["metadata"] |= {"name": f"nginx-deploy-5d4f8c7b9-{suffix}", "generateName": "nginx-deploy-5d4f8c7b9-"}
    pod["spec"]["containers"] = [{"name": "nginx-record"}]
    record = _finished(pod, {(ref.kind, "nginx-record"): ref})
    for name in syscalls:
        record.add_syscall("nginx-record", name)
    return record


def test_docs_deployment_replicas_make_partial_profiles_the_reconciler_merges() -> None:
    ref = RecordingRef("test-recording", NS, "uid-test-recording", SECCOMP, merge=True, disable=False)
    replicas = [
        _replica("abcde", ["read", "write"], ref),
        _replica("fghij", ["read", "mkdir"], ref),
        _replica("klmno", ["openat"], ref),
    ]
    plans = [plan_collection(r, r.trusted, ARCH) for r in replicas]
    assert all(p.partial_recordings == (ref,) for p in plans)
    bodies = [profile.body for plan in plans for profile in plan.profiles]
    assert [b["metadata"]["name"] for b in bodies] == [
        "test-recording-nginx-record-abcde",
        "test-recording-nginx-record-fghij",
        "test-recording-nginx-record-klmno",
    ]
    for body in bodies:
        assert body["metadata"]["labels"][constants.LABEL_PARTIAL] == "true"
        assert body["metadata"]["labels"][constants.LABEL_CONTAINER_ID] == "nginx-record"
        assert body["metadata"]["finalizers"] == [constants.FINALIZER_PARTIAL_PROFILE]
    recording = _recording(selector={"matchLabels": {"app": "sp-record"}}, mergeStrategy="containers")
    merged = plan_merge(recording, [SeccompProfile.model_validate(b) for b in bodies])
    assert [m["metadata"]["name"] for m in merged.merged] == ["test-recording-nginx-record"]
    assert merged.merged[0]["spec"]["syscalls"] == [
        {"names": ["mkdir", "openat", "read", "write"], "action": "SCMP_ACT_ALLOW"}
    ]
    assert len(merged.partials) == 3


def test_disable_profile_after_recording() -> None:
    ref = RecordingRef("rec", NS, "u", SECCOMP, merge=False, disable=True)
    record = _finished(_docs_pod(DOCS_ANNOTATIONS), {(SECCOMP, "nginx"): ref})
    record.add_syscall("nginx", "read")
    (profile,) = plan_collection(record, record.trusted, ARCH).profiles
    assert profile.body["spec"]["disabled"] is True
    assert profile.name == "rec-nginx"


def test_docs_selinux_recording_makes_allow_rules() -> None:
    ref = RecordingRef("test-recording", NS, "u", SELINUX, merge=False, disable=False)
    record = _finished(
        _docs_pod({f"{AVCS}redis": _value("test-recording", "redis")}), {(SELINUX, "redis"): ref}
    )
    record.add_avc("redis", ["name_bind"], "system_u:object_r:redis_port_t:s0", "tcp_socket")
    record.add_avc(
        "redis", ["listen", "create"], "system_u:system_r:selinuxrecording.process:s0:c4", "tcp_socket"
    )
    (profile,) = plan_collection(record, record.trusted, ARCH).profiles
    assert profile.name == "test-recording-redis"
    assert profile.body["apiVersion"] == f"{constants.GROUP}/v1alpha2"
    assert profile.body["spec"] == {
        "inherit": [{"kind": "System", "name": "container"}],
        "allow": {
            "@self": {"tcp_socket": ["create", "listen"]},
            "redis_port_t": {"tcp_socket": ["name_bind"]},
        },
        "disabled": False,
    }


def test_nothing_recorded_makes_no_profile() -> None:
    record = _finished(
        _docs_pod(DOCS_ANNOTATIONS), {(SECCOMP, "nginx"): DOCS_REF, (SELINUX, "redis"): DOCS_REF}
    )
    plan = plan_collection(record, record.trusted, ARCH)
    assert plan.profiles == ()
    assert [(p.container, p.reason) for p in plan.problems] == [
        ("nginx", Skip.NOTHING_RECORDED),
        ("redis", Skip.NOTHING_RECORDED),
    ]


def test_a_name_too_long_for_a_profile_is_a_problem_not_a_crash() -> None:
    ref = RecordingRef("r" * 63, NS, "u", SECCOMP, merge=False, disable=False)
    pod = _docs_pod({})
    pod["metadata"] |= {"name": "p" * 50 + "x" * 150, "generateName": "p" * 50}
    pod["spec"]["containers"] = [{"name": "c" * 63}]
    record = _finished(pod, {(SECCOMP, "c" * 63): ref})
    record.add_syscall("c" * 63, "read")
    plan = plan_collection(record, record.trusted, ARCH)
    assert plan.profiles == ()
    assert [p.reason for p in plan.problems] == [Skip.INVALID_NAME]


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "SCMP_ARCH_X86_64"), ("aarch64", "SCMP_ARCH_AARCH64"), ("s390x", "SCMP_ARCH_S390X")],
)
def test_native_architecture(machine: str, arch: str) -> None:
    assert native_architecture(machine) == arch


def test_an_unknown_machine_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="vax"):
        native_architecture("vax")


@pytest.mark.parametrize(
    ("held", "deleting", "merging", "tracked_here", "partials_left", "change"),
    [
        (False, False, True, True, 0, True),  # recording a pod for a merging recording: hold it
        (False, False, False, True, 0, None),  # not merging: nothing to hold
        (False, True, True, True, 0, None),  # being deleted: the apiserver adds no finalizer
        (True, False, True, False, 0, None),  # not deleted yet: kept, another node may add partials
        (True, True, True, False, 0, False),  # deleted, merged, nothing left: released
        (True, True, True, False, 2, None),  # partials left to merge
        (True, True, True, True, 0, None),  # a pod here still to collect
        (False, True, True, False, 0, None),  # nothing held
    ],
)
def test_unmerged_finalizer(
    held: bool, deleting: bool, merging: bool, tracked_here: bool, partials_left: int, change: bool | None
) -> None:
    assert (
        unmerged_finalizer_change(
            held=held,
            deleting=deleting,
            merging=merging,
            tracked_here=tracked_here,
            partials_left=partials_left,
        )
        is change
    )
