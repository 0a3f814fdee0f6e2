"""Properties of every admission decision over generated pods, snapshots and garbage requests:
patches apply cleanly, deciding again on the patched pod changes nothing, and nothing raises."""

from __future__ import annotations

import copy
import dataclasses
import random
import re
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from api.constants import (
    ANNOTATION_TRACE_AVCS_PREFIX,
    ANNOTATION_TRACE_BPF_PREFIX,
    ANNOTATION_TRACE_LOGS_PREFIX,
    EXEC_REQUEST_UID_ENV,
)
from api.types import ProfileBinding, ProfileRecording, SeccompProfile, SelinuxProfile
from tests.test_decisions_support import (
    BUSYBOX,
    NGINX,
    REDIS,
    admission,
    binding,
    patched,
    recording,
    seccomp_profile,
    selinux_profile,
    spod,
)
from webhooks.decisions import (
    Decision,
    decide_binding,
    decide_exec_metadata,
    decide_profile_binding,
    decide_raw_selinux,
    decide_recording,
)
from webhooks.snapshot import StaticSnapshot

IMAGES = [NGINX, REDIS, BUSYBOX, "alpine:3"]
NAMES = ["a", "b", "c", "d", "e"]
PROFILES = ["p1", "p2", "p3"]
RECORDINGS = ["rec-a", "rec-b", "rec-c"]
LABELS = {"app": ["my-app", "web"], "tier": ["db", "cache"]}
PREFIXES = [ANNOTATION_TRACE_LOGS_PREFIX, ANNOTATION_TRACE_BPF_PREFIX, ANNOTATION_TRACE_AVCS_PREFIX]
RECORDING_VALUE = re.compile(r"[a-z0-9.-]+_[a-z]+_[bcdfghjklmnpqrstvwxz2456789]{5}_[0-9]+")

# --- pods -----------------------------------------------------------------------------------------

seccomp_profiles = st.sampled_from(
    [
        None,
        {"type": "Unconfined"},
        {"type": "RuntimeDefault"},
        {"type": "Localhost", "localhostProfile": "operator/p1.json"},
    ]
)
selinux_options = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["spc_t", "p1.process"]), "level": st.just("s0:c1,c2")}
)
security_contexts = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "seccompProfile": seccomp_profiles,
        "seLinuxOptions": st.none() | selinux_options,
        "privileged": st.booleans(),
        "runAsNonRoot": st.booleans(),
    },
)


def _container(name: str, image: str, security_context: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": image}
    if security_context is not None:
        body["securityContext"] = security_context
    return body


def _recording_values() -> st.SearchStrategy[str]:
    valid = st.builds(
        lambda rec, ctr, nonce, stamp: f"{rec}_{ctr}_{nonce}_{stamp}",
        st.sampled_from(RECORDINGS),
        st.sampled_from(NAMES),
        st.text("bcdfghjklmnpqrstvwxz2456789", min_size=5, max_size=5),
        st.integers(0, 2**40),
    )
    return valid | st.sampled_from(["", "forged", "rec-a_a_AAAAA_1", "rec-a_a_bcdfg_"])


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    split = draw(st.integers(0, len(names)))
    bodies = [_container(n, draw(st.sampled_from(IMAGES)), draw(security_contexts)) for n in names]
    # Empty maps and lists are sometimes present, sometimes omitted, as clients send both.
    keep_empty: list[bool] = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    metadata: dict[str, Any] = {"name": "p"}
    labels = draw(st.dictionaries(st.sampled_from(sorted(LABELS)), st.sampled_from(["my-app", "web", "db"])))
    if labels or keep_empty[0]:
        metadata["labels"] = labels
    annotation_keys = st.builds(str.__add__, st.sampled_from(PREFIXES), st.sampled_from(NAMES))
    annotations = draw(st.dictionaries(annotation_keys | st.just("team"), _recording_values(), max_size=4))
    if annotations or keep_empty[1]:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": bodies[split:]}
    if split or keep_empty[2]:
        spec["initContainers"] = bodies[:split]
    pod_context = draw(security_contexts)
    if pod_context is not None:
        spec["securityContext"] = pod_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# --- snapshots ------------------------------------------------------------------------------------


@st.composite
def binding_snapshots(draw: st.DrawFn) -> StaticSnapshot:
    count = draw(st.integers(0, 6))
    bindings: list[ProfileBinding] = [
        binding(
            f"binding-{i}",
            draw(st.sampled_from([SeccompProfile.KIND, SelinuxProfile.KIND])),
            draw(st.sampled_from(PROFILES)),
            draw(st.sampled_from([*IMAGES, "*"])),
        )
        for i in range(count)
    ]
    seccomp = [
        seccomp_profile(
            name,
            localhost=draw(st.sampled_from([None, f"operator/{name}.json", f"operator/x/{name}.json"])),
            disabled=draw(st.integers(0, 9)) == 0,
        )
        for name in draw(st.lists(st.sampled_from(PROFILES), unique=True, min_size=2))
    ]
    selinux = [
        selinux_profile(name, usage=draw(st.sampled_from([None, f"{name}.process"])))
        for name in draw(st.lists(st.sampled_from(PROFILES), unique=True, min_size=2))
    ]
    return StaticSnapshot(bindings=bindings, seccomp_profiles=seccomp, selinux_profiles=selinux)


@st.composite
def recording_snapshots(draw: st.DrawFn, *, select_all: bool = False) -> StaticSnapshot:
    """Recordings of any kind; with `select_all`, every one selects every container of every pod, so
    that recordings compete for the same containers."""
    recordings: list[ProfileRecording] = []
    for name in draw(st.lists(st.sampled_from(RECORDINGS), unique=True)):
        kind, recorder = draw(
            st.sampled_from(
                [
                    ("SeccompProfile", "logs"),
                    ("SeccompProfile", "bpf"),
                    ("SelinuxProfile", "logs"),
                    ("ApparmorProfile", "bpf"),
                ]
            )
        )
        match_labels = (
            {}
            if select_all
            else draw(st.dictionaries(st.sampled_from(sorted(LABELS)), st.sampled_from(["my-app", "web"])))
        )
        containers = None if select_all else draw(st.none() | st.lists(st.sampled_from(NAMES), unique=True))
        recordings.append(recording(name, kind, recorder, match_labels=match_labels, containers=containers))
    return StaticSnapshot(recordings=recordings)


def fixed(nonce: str) -> Callable[[], str]:
    return lambda: nonce


# --- idempotence ----------------------------------------------------------------------------------


@given(pods(), binding_snapshots())
def test_binding_is_idempotent(pod: dict[str, Any], snapshot: StaticSnapshot) -> None:
    request = admission(pod)
    untouched = copy.deepcopy(request)

    first = decide_binding(request, snapshot)

    assert request == untouched
    assert first.code == (200 if first.allowed else 403)
    if first.allowed:
        again = decide_binding(admission(patched(pod, first)), snapshot)
        assert again.allowed
        assert again.patch == []
    else:
        assert first.patch == []


@given(pods(), binding_snapshots(), st.randoms(use_true_random=False), st.sampled_from(["CREATE", "UPDATE"]))
def test_binding_decision_does_not_depend_on_the_order_of_bindings(
    pod: dict[str, Any], snapshot: StaticSnapshot, shuffler: random.Random, operation: str
) -> None:
    """Replicas hold the bindings in the order they listed or watched them: the answer must not care."""
    old = copy.deepcopy(pod)
    for body in old["spec"]["containers"][:1]:
        body["image"] = "previous:1"
    request = admission(pod, operation=operation, old=old if operation == "UPDATE" else None)
    reordered = list(snapshot.bindings)
    shuffler.shuffle(reordered)

    first = decide_binding(request, snapshot)
    again = decide_binding(request, dataclasses.replace(snapshot, bindings=reordered))

    assert first == again


@given(pods(), recording_snapshots(select_all=True), st.randoms(use_true_random=False))
def test_recording_decision_does_not_depend_on_the_order_of_recordings(
    pod: dict[str, Any], snapshot: StaticSnapshot, shuffler: random.Random
) -> None:
    reordered = list(snapshot.recordings)
    shuffler.shuffle(reordered)

    first = decide_recording(admission(pod), snapshot, now=1000, nonce=fixed("bcdfg"))
    again = decide_recording(
        admission(pod), dataclasses.replace(snapshot, recordings=reordered), now=1000, nonce=fixed("bcdfg")
    )

    assert first == again


@given(pods(), recording_snapshots(), st.sampled_from(["CREATE", "UPDATE"]))
def test_recording_is_idempotent(pod: dict[str, Any], snapshot: StaticSnapshot, operation: str) -> None:
    request = admission(pod, operation=operation, old=pod if operation == "UPDATE" else None)
    untouched = copy.deepcopy(request)

    first = decide_recording(request, snapshot, now=1000, nonce=fixed("bcdfg"))
    result = patched(pod, first)

    assert request == untouched
    assert first.allowed
    if operation == "UPDATE":
        assert result["spec"] == pod["spec"]
    for key, value in (result["metadata"].get("annotations") or {}).items():
        if key not in (pod["metadata"].get("annotations") or {}):
            assert RECORDING_VALUE.fullmatch(value)
    # A different nonce and clock show that valid annotations are kept, not rewritten.
    for now, nonce in [(1000, "bcdfg"), (2000, "zz9x2")]:
        again = decide_recording(
            admission(result, operation=operation), snapshot, now=now, nonce=fixed(nonce)
        )
        assert again.allowed
        assert again.patch == []


@given(pods())
def test_node_debugging_pod_tagging_is_idempotent(pod: dict[str, Any]) -> None:
    first = decide_exec_metadata(admission(pod))
    result = patched(pod, first)

    for body in [*result["spec"].get("initContainers", []), *result["spec"]["containers"]]:
        assert [e for e in body["env"] if e["name"] == EXEC_REQUEST_UID_ENV] == [
            {"name": EXEC_REQUEST_UID_ENV, "value": "test-uid"}
        ]
    assert decide_exec_metadata(admission(result)).patch == []


# --- garbage ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _maybe_garbage(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly valid, so that the garbage also turns up deep inside otherwise decodable requests.
    return st.integers(0, 3).flatmap(lambda n: json_values if n == 0 else valid)


@st.composite
def garbage_objects(draw: st.DrawFn) -> Any:
    """Pod-like objects (or exec options / raw profiles) with garbage at any level."""
    container = st.fixed_dictionaries(
        {},
        optional={
            "name": _maybe_garbage(st.sampled_from(NAMES)),
            "image": _maybe_garbage(st.sampled_from([*IMAGES, "*"])),
            "securityContext": _maybe_garbage(security_contexts),
            "env": _maybe_garbage(st.lists(st.fixed_dictionaries({"name": st.just(EXEC_REQUEST_UID_ENV)}))),
        },
    )
    containers = _maybe_garbage(st.lists(_maybe_garbage(container), max_size=3))
    spec = st.fixed_dictionaries(
        {},
        optional={
            "containers": containers,
            "initContainers": containers,
            "ephemeralContainers": containers,
            "securityContext": _maybe_garbage(security_contexts),
            "policy": _maybe_garbage(st.sampled_from(["(blockinherit container)", ") (block x", ""])),
        },
    )
    metadata = st.fixed_dictionaries(
        {},
        optional={
            "name": _maybe_garbage(st.just("p")),
            "labels": _maybe_garbage(st.just({"app": "my-app"})),
            "annotations": _maybe_garbage(st.dictionaries(st.sampled_from(PREFIXES), st.text(max_size=5))),
        },
    )
    pod = st.fixed_dictionaries(
        {},
        optional={
            "apiVersion": json_values,
            "kind": json_values,
            "metadata": _maybe_garbage(metadata),
            "spec": _maybe_garbage(spec),
            "command": _maybe_garbage(st.lists(st.text(max_size=5), max_size=3)),
        },
    )
    return draw(_maybe_garbage(pod))


@st.composite
def garbage_requests(draw: st.DrawFn) -> dict[str, Any]:
    kinds = st.sampled_from(["Pod", "PodExecOptions", "RawSelinuxProfile", "ProfileBinding", "Deployment"])
    fields = {
        "uid": _maybe_garbage(st.just("test-uid")),
        "kind": _maybe_garbage(st.builds(lambda kind: {"kind": kind}, kinds)),
        "namespace": _maybe_garbage(st.just("my-namespace")),
        "operation": _maybe_garbage(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
        "subResource": _maybe_garbage(st.sampled_from(["", "ephemeralcontainers", "exec"])),
        "object": garbage_objects(),
        "oldObject": garbage_objects(),
    }
    return draw(st.fixed_dictionaries({}, optional=fields))


def _check(request: dict[str, Any], decision: Decision) -> None:
    assert isinstance(decision, Decision)
    assert decision.code in (200, 400, 403)
    assert decision.allowed == (decision.code == 200)
    if decision.patch:
        patched(request["object"], decision)


@given(garbage_requests())
def test_garbage_requests_never_raise(request: dict[str, Any]) -> None:
    snapshot = StaticSnapshot(
        bindings=[
            binding("b", SeccompProfile.KIND, "p1", NGINX),
            binding("all", SelinuxProfile.KIND, "p1", "*"),
        ],
        recordings=[recording("rec-a", match_labels={}), recording("rec-b", "SelinuxProfile")],
        seccomp_profiles=[seccomp_profile("p1")],
        selinux_profiles=[selinux_profile("p1")],
        daemon=spod(None),
    )
    untouched = copy.deepcopy(request)

    _check(request, decide_binding(request, snapshot))
    _check(request, decide_recording(request, snapshot, now=1, nonce=lambda: "bcdfg"))
    _check(request, decide_exec_metadata(request))
    _check(request, decide_raw_selinux(request, snapshot))
    _check(request, decide_profile_binding(request, snapshot))
    assert request == untouched
