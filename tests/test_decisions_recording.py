"""recording.spo.io decisions: recording annotations and log-tracing security contexts on selected pods."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from api.constants import (
    ANNOTATION_TRACE_AVCS_PREFIX,
    ANNOTATION_TRACE_BPF_APPARMOR_PREFIX,
    ANNOTATION_TRACE_BPF_PREFIX,
    ANNOTATION_TRACE_LOGS_PREFIX,
    LOG_ENRICHER_TRACE_PROFILE,
    SECCOMP_OPERATOR_DIR,
    SELINUX_RECORDING_TYPE,
)
from api.types import InvalidObject, ProfileRecording
from tests.test_decisions_support import NAMESPACE, NGINX, REDIS, admission, container, edited, patched, pod
from tests.test_decisions_support import recording as make_recording
from webhooks.decisions import decide_recording, random_nonce
from webhooks.snapshot import StaticSnapshot

NONCE = "6kmrb"
NOW = 1684331729
TRACE_PROFILE = {
    "type": "Localhost",
    "localhostProfile": f"{SECCOMP_OPERATOR_DIR}/{LOG_ENRICHER_TRACE_PROFILE}.json",
}
SELINUX_TRACE = {"type": SELINUX_RECORDING_TYPE}
LABELS = {"app": "my-app"}
Change = tuple[str, Any]

SECCOMP_LOGS = make_recording("test-recording")
SELINUX_LOGS = make_recording("test-recording", "SelinuxProfile")
SECCOMP_BPF = make_recording("bpf-recording", recorder="bpf")
APPARMOR_BPF = make_recording("aa-recording", "ApparmorProfile", "bpf")


def value(recording: str, container_name: str, nonce: str = NONCE, now: int = NOW) -> str:
    return f"{recording}_{container_name}_{nonce}_{now}"


def decide(request: dict[str, Any], recordings: list[ProfileRecording]) -> Any:
    return decide_recording(request, StaticSnapshot(recordings=recordings), now=NOW, nonce=lambda: NONCE)


def docs_my_pod() -> dict[str, Any]:
    """The workload of docs 7.6.3 / 7.7.3 step 4."""
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    nginx = container("nginx", NGINX, copy.deepcopy(restricted)) | {"ports": [{"containerPort": 8080}]}
    return pod(
        [nginx, container("redis", REDIS, copy.deepcopy(restricted))],
        labels=LABELS,
        security_context={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        name="my-pod",
    )


def annotated(prefix: str, recording: str, *names: str, **kept: str) -> Change:
    return ("/metadata/annotations", {prefix + n: value(recording, n) for n in names} | kept)


# (pod, recordings, changes the patch must make, warnings expected (substrings, in order))
CREATE_CASES = [
    pytest.param(
        docs_my_pod(),
        [SECCOMP_LOGS],
        [
            annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx", "redis"),
            ("/spec/containers/0/securityContext/seccompProfile", TRACE_PROFILE),
            ("/spec/containers/1/securityContext/seccompProfile", TRACE_PROFILE),
        ],
        [],
        id="docs-7.6.3-seccomp-logs",
    ),
    pytest.param(
        docs_my_pod(),
        [SELINUX_LOGS],
        [
            annotated(ANNOTATION_TRACE_AVCS_PREFIX, "test-recording", "nginx", "redis"),
            ("/spec/containers/0/securityContext/seLinuxOptions", SELINUX_TRACE),
            ("/spec/containers/1/securityContext/seLinuxOptions", SELINUX_TRACE),
        ],
        [],
        id="docs-7.7.3-selinux-logs",
    ),
    pytest.param(
        docs_my_pod(),
        [SECCOMP_BPF],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx", "redis")],
        [],
        id="bpf-annotation-only",
    ),
    pytest.param(
        docs_my_pod(),
        [APPARMOR_BPF],
        [annotated(ANNOTATION_TRACE_BPF_APPARMOR_PREFIX, "aa-recording", "nginx", "redis")],
        [],
        id="apparmor-bpf-annotation-only",
    ),
    pytest.param(
        pod([container("nginx", NGINX), container("redis", REDIS)], labels=LABELS),
        [make_recording("test-recording", containers=["redis"])],
        [
            annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "redis"),
            ("/spec/containers/1/securityContext", {"seccompProfile": TRACE_PROFILE}),
        ],
        [],
        id="containers-filter",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS),
        [make_recording("test-recording", containers=[])],
        [],
        [],
        id="empty-containers-filter-records-none",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels={"app": "other"}),
        [SECCOMP_LOGS],
        [],
        [],
        id="selector-mismatch",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS),
        [make_recording("test-recording", namespace="elsewhere")],
        [],
        [],
        id="recording-of-another-namespace",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], init_containers=[container("setup", REDIS)], labels=LABELS),
        [SECCOMP_BPF],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "setup", "nginx")],
        [],
        id="init-containers-recorded",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], init_containers=[container("setup", REDIS)], labels=LABELS),
        [SECCOMP_LOGS],
        [
            annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "setup", "nginx"),
            ("/spec/initContainers/0/securityContext", {"seccompProfile": TRACE_PROFILE}),
            ("/spec/containers/0/securityContext", {"seccompProfile": TRACE_PROFILE}),
        ],
        [],
        id="init-containers-traced",
    ),
    pytest.param(
        edited(pod([container("nginx", NGINX)]), ("/metadata", None)),
        [make_recording("all-pods", recorder="bpf", match_labels={})],
        [("/metadata", {"annotations": {ANNOTATION_TRACE_BPF_PREFIX + "nginx": value("all-pods", "nginx")}})],
        [],
        id="empty-selector-pod-without-metadata",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS, annotations={"team": "a"}),
        [SECCOMP_BPF],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx", team="a")],
        [],
        id="other-annotations-kept",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX)],
            labels=LABELS,
            annotations={ANNOTATION_TRACE_BPF_PREFIX + "nginx": value("someone-else", "nginx")},
        ),
        [SECCOMP_BPF],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx")],
        [],
        id="forged-annotation-of-another-recording-overwritten",
    ),
    *(
        pytest.param(
            pod(
                [container("nginx", NGINX)],
                labels=LABELS,
                annotations={ANNOTATION_TRACE_BPF_PREFIX + "nginx": forged},
            ),
            [SECCOMP_BPF],
            [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx")],
            [],
            id=f"malformed-annotation-overwritten-{case}",
        )
        for case, forged in [
            ("bad-nonce-alphabet", "bpf-recording_nginx_aeiou_1684331000"),
            ("short-nonce", "bpf-recording_nginx_bcdf_1684331000"),
            ("no-timestamp", "bpf-recording_nginx_bcdfg_"),
            ("other-container", "bpf-recording_redis_bcdfg_1684331000"),
            ("trailing-garbage", "bpf-recording_nginx_bcdfg_1684331000 x"),
            ("unicode-digits", "bpf-recording_nginx_bcdfg_\u00b2"),
            ("empty", ""),
        ]
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX), container("redis", REDIS)],
            labels=LABELS,
            annotations={ANNOTATION_TRACE_BPF_PREFIX + "nginx": "bpf-recording_nginx_zz9x2_1600000000"},
        ),
        [SECCOMP_BPF],
        [
            annotated(
                ANNOTATION_TRACE_BPF_PREFIX,
                "bpf-recording",
                "redis",
                **{ANNOTATION_TRACE_BPF_PREFIX + "nginx": "bpf-recording_nginx_zz9x2_1600000000"},
            )
        ],
        [],
        id="valid-annotation-kept",
    ),
    pytest.param(
        pod([container("nginx", NGINX, {"privileged": True})], labels=LABELS),
        [SECCOMP_LOGS],
        [
            annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx"),
            ("/spec/containers/0/securityContext/seccompProfile", TRACE_PROFILE),
        ],
        ["container nginx is privileged: log-based recording cannot trace it"],
        id="privileged-warning",
    ),
    pytest.param(
        pod([container("nginx", NGINX, {"privileged": True})], labels=LABELS),
        [SECCOMP_BPF],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx")],
        [],
        id="privileged-bpf-no-warning",
    ),
    pytest.param(
        pod([container("nginx", NGINX, {"seccompProfile": {"type": "Unconfined"}})], labels=LABELS),
        [SECCOMP_LOGS],
        [
            annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx"),
            ("/spec/containers/0/securityContext/seccompProfile", TRACE_PROFILE),
        ],
        ["container nginx had securityContext.seccompProfile set: the profile recorder overwrote it"],
        id="existing-seccomp-overwritten-warning",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX, {"seLinuxOptions": {"level": "s0:c1", "type": "spc_t"}})],
            labels=LABELS,
        ),
        [SELINUX_LOGS],
        [
            annotated(ANNOTATION_TRACE_AVCS_PREFIX, "test-recording", "nginx"),
            ("/spec/containers/0/securityContext/seLinuxOptions/type", SELINUX_RECORDING_TYPE),
        ],
        ["container nginx had securityContext.seLinuxOptions.type set: the profile recorder overwrote it"],
        id="existing-selinux-type-overwritten-level-kept",
    ),
    pytest.param(
        pod([container("nginx", NGINX, {"seccompProfile": TRACE_PROFILE})], labels=LABELS),
        [SECCOMP_LOGS],
        [annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx")],
        [],
        id="trace-profile-already-set",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS),
        [SECCOMP_LOGS, make_recording("avcs", "SelinuxProfile")],
        [
            (
                "/metadata/annotations",
                {
                    ANNOTATION_TRACE_LOGS_PREFIX + "nginx": value("test-recording", "nginx"),
                    ANNOTATION_TRACE_AVCS_PREFIX + "nginx": value("avcs", "nginx"),
                },
            ),
            (
                "/spec/containers/0/securityContext",
                {"seccompProfile": TRACE_PROFILE, "seLinuxOptions": SELINUX_TRACE},
            ),
        ],
        [],
        id="seccomp-and-selinux-recordings-on-one-container",
    ),
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS),
        [make_recording("first", recorder="bpf"), make_recording("second", recorder="bpf")],
        [annotated(ANNOTATION_TRACE_BPF_PREFIX, "second", "nginx")],
        ["container nginx is selected by ProfileRecordings first and second with the same recorder: second"],
        id="same-recorder-twice-last-wins",
    ),
]


@pytest.mark.parametrize(("pod_object", "recordings", "changes", "warnings"), CREATE_CASES)
def test_recording_on_create(
    pod_object: dict[str, Any], recordings: list[ProfileRecording], changes: list[Change], warnings: list[str]
) -> None:
    request = admission(pod_object)
    untouched = copy.deepcopy(request)

    decision = decide(request, recordings)

    assert request == untouched
    assert decision.allowed
    assert patched(pod_object, decision) == edited(pod_object, *changes)
    assert bool(decision.patch) == bool(changes)
    assert len(decision.warnings) == len(warnings), decision.warnings
    for warning, expected in zip(decision.warnings, warnings, strict=True):
        assert expected in warning


def test_docs_7_7_3_annotation_value_format() -> None:
    """The log enricher line of docs 7.7.3 shows profile=test-recording_redis_6kmrb_1684331729."""
    decision = decide(admission(docs_my_pod()), [SELINUX_LOGS])

    annotations = patched(docs_my_pod(), decision)["metadata"]["annotations"]
    assert annotations[ANNOTATION_TRACE_AVCS_PREFIX + "redis"] == "test-recording_redis_6kmrb_1684331729"


# (old pod, new pod, recordings, changes the patch must make to the new pod)
UPDATE_CASES = [
    pytest.param(
        pod([container("nginx", NGINX)], labels=LABELS),
        [SECCOMP_LOGS],
        [annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx")],
        id="missing-annotation-restored-spec-untouched",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX, {"privileged": True})],
            labels=LABELS,
            annotations={
                ANNOTATION_TRACE_LOGS_PREFIX + "nginx": value("test-recording", "nginx", "bbbbb", 1)
            },
        ),
        [SECCOMP_LOGS],
        [],
        id="valid-annotation-kept-no-warning",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX)],
            labels=LABELS,
            annotations={ANNOTATION_TRACE_LOGS_PREFIX + "nginx": "forged"},
        ),
        [SECCOMP_LOGS],
        [annotated(ANNOTATION_TRACE_LOGS_PREFIX, "test-recording", "nginx")],
        id="forged-annotation-overwritten",
    ),
]


@pytest.mark.parametrize(("pod_object", "recordings", "changes"), UPDATE_CASES)
def test_recording_on_update_only_fixes_annotations(
    pod_object: dict[str, Any], recordings: list[ProfileRecording], changes: list[Change]
) -> None:
    decision = decide(admission(pod_object, operation="UPDATE", old=pod_object), recordings)

    assert decision.allowed
    assert decision.warnings == []
    assert patched(pod_object, decision) == edited(pod_object, *changes)
    assert bool(decision.patch) == bool(changes)


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT", None])
def test_recording_ignores_other_operations(operation: str | None) -> None:
    request = admission(docs_my_pod(), operation=str(operation))
    if operation is None:
        del request["operation"]

    decision = decide(request, [SECCOMP_LOGS])

    assert decision.allowed
    assert decision.patch == []


def _with_spec(recording: ProfileRecording, **update: Any) -> ProfileRecording:
    """A recording whose spec bypassed validation, as only a broken CRD schema would let through."""
    return recording.model_copy(update={"spec": recording.spec.model_copy(update=update)})


SKIPPED = [
    pytest.param(
        _with_spec(SELINUX_LOGS, recorder="bpf"),
        f"ProfileRecording {NAMESPACE}/test-recording skipped: "
        "recorder bpf cannot record kind SelinuxProfile",
        id="selinux-bpf",
    ),
    pytest.param(
        _with_spec(APPARMOR_BPF, recorder="logs"),
        "recorder logs cannot record kind ApparmorProfile",
        id="apparmor-logs",
    ),
    pytest.param(
        ProfileRecording.model_validate(
            SECCOMP_LOGS.to_dict()
            | {
                "spec": {
                    "kind": "SeccompProfile",
                    "recorder": "logs",
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
                }
            }
        ),
        "podSelector: operator In on key 'app' needs values",
        id="in-without-values",
    ),
    pytest.param(
        ProfileRecording.model_validate(
            SECCOMP_LOGS.to_dict()
            | {
                "spec": {
                    "kind": "SeccompProfile",
                    "recorder": "logs",
                    "podSelector": {
                        "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]
                    },
                }
            }
        ),
        "podSelector: operator Exists on key 'app' must not have values",
        id="exists-with-values",
    ),
]


@pytest.mark.parametrize(("broken", "warning"), SKIPPED)
def test_unusable_recording_is_skipped_with_warning(broken: ProfileRecording, warning: str) -> None:
    pod_object = pod([container("nginx", NGINX)], labels=LABELS)

    decision = decide(admission(pod_object), [broken, SECCOMP_BPF])

    assert decision.allowed
    assert len(decision.warnings) == 1
    assert warning in decision.warnings[0]
    assert patched(pod_object, decision) == edited(
        pod_object, annotated(ANNOTATION_TRACE_BPF_PREFIX, "bpf-recording", "nginx")
    )


def test_selector_match_expressions() -> None:
    recording = ProfileRecording.model_validate(
        SECCOMP_BPF.to_dict()
        | {
            "spec": {
                "kind": "SeccompProfile",
                "recorder": "bpf",
                "podSelector": {
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]
                },
            }
        }
    )
    web, cache = (pod([container("nginx", NGINX)], labels={"tier": tier}) for tier in ("web", "cache"))

    assert decide(admission(web), [recording]).patch
    assert not decide(admission(cache), [recording]).patch


UNDECODABLE = [
    pytest.param({"object": None}, "request.object must be an object, got null", id="no-object"),
    pytest.param({"namespace": None}, "request.namespace must be a non-empty string", id="no-namespace"),
    pytest.param(
        {"object": pod([container("nginx", NGINX)], labels=["app"])},  # type: ignore[arg-type]
        "metadata.labels must be an object, got array",
        id="labels-not-a-dict",
    ),
    pytest.param(
        {"object": pod([container("nginx", NGINX)], labels=LABELS, annotations={"a": 1})},  # type: ignore[dict-item]
        "metadata.annotations['a'] must be a string, got number",
        id="annotation-not-a-string",
    ),
    pytest.param(
        {"object": edited(pod([], labels=LABELS), ("/spec/initContainers", "nginx"))},
        "spec.initContainers must be a list, got string",
        id="init-containers-not-a-list",
    ),
    pytest.param(
        {"object": pod([{"name": 3, "image": NGINX}], labels=LABELS)},
        "spec.containers[0].name must be a string, got number",
        id="container-name-not-a-string",
    ),
    pytest.param(
        {"object": pod([container("nginx", NGINX, [])], labels=LABELS)},  # type: ignore[arg-type]
        "/spec/containers/0/securityContext must be an object, got array",
        id="security-context-not-a-dict",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), UNDECODABLE)
def test_undecodable_request_is_denied(overrides: dict[str, Any], message: str) -> None:
    """Recording fails closed: annotations it could not check might be forged."""
    decision = decide(admission(docs_my_pod()) | overrides, [SECCOMP_LOGS])

    assert not decision.allowed
    assert decision.code == 400
    assert message in decision.message


FORGED = [
    pytest.param(
        pod(
            [container("nginx", NGINX), container("redis", REDIS)],
            labels=LABELS,
            annotations={
                ANNOTATION_TRACE_BPF_PREFIX + "redis": value("test-recording", "redis"),
                "team": "a",
            },
        ),
        [make_recording("test-recording", containers=["nginx"])],
        "/metadata/annotations/io.containers.trace-bpf~1redis",
        id="unselected-container",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX)],
            labels={"app": "other"},
            annotations={
                ANNOTATION_TRACE_LOGS_PREFIX + "nginx": value("test-recording", "nginx"),
                "team": "a",
            },
        ),
        [SECCOMP_LOGS],
        "/metadata/annotations/io.containers.trace-logs~1nginx",
        id="unselected-pod",
    ),
    pytest.param(
        pod(
            [container("nginx", NGINX)],
            labels=LABELS,
            annotations={ANNOTATION_TRACE_AVCS_PREFIX + "ghost": "test-recording_ghost_bbbbb_1", "team": "a"},
        ),
        [],
        "/metadata/annotations/io.containers.trace-avcs~1ghost",
        id="no-recording-at-all",
    ),
]


@pytest.mark.parametrize(("pod_object", "recordings", "removed"), FORGED)
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_forged_recording_annotations_are_removed(
    pod_object: dict[str, Any], recordings: list[ProfileRecording], removed: str, operation: str
) -> None:
    request = admission(pod_object, operation=operation, old=pod_object if operation == "UPDATE" else None)

    decision = decide(request, recordings)

    assert decision.allowed
    assert {"op": "remove", "path": removed} in decision.patch
    result = patched(pod_object, decision)["metadata"]["annotations"]
    assert result["team"] == "a"
    assert removed.rpartition("/")[2].replace("~1", "/") not in result
    assert "removed recording annotations that no ProfileRecording selects" in decision.warnings[-1]


def test_invalid_stored_recording_denies_pods_of_its_namespace() -> None:
    invalid = InvalidObject(
        "ProfileRecording", NAMESPACE, "old", "spec.recorder: Input should be 'bpf' or 'logs'"
    )
    decision = decide_recording(
        admission(docs_my_pod()),
        StaticSnapshot(recordings=[SECCOMP_LOGS], invalid=[invalid]),
        now=NOW,
        nonce=lambda: NONCE,
    )

    assert not decision.allowed
    assert "ProfileRecording my-namespace/old is stored but not valid (spec.recorder:" in decision.message


def test_random_nonce() -> None:
    nonces = {random_nonce() for _ in range(50)}

    assert all(re.fullmatch("[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in nonces)
    assert len(nonces) > 1


def test_nonce_and_clock_are_the_injected_ones() -> None:
    pod_object = pod([container("nginx", NGINX)], labels=LABELS)

    decision = decide_recording(
        admission(pod_object), StaticSnapshot(recordings=[SECCOMP_BPF]), now=42, nonce=lambda: "zzzzz"
    )

    annotations = patched(pod_object, decision)["metadata"]["annotations"]
    assert annotations == {ANNOTATION_TRACE_BPF_PREFIX + "nginx": "bpf-recording_nginx_zzzzz_42"}
