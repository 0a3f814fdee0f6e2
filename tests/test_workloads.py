"""Which pods use which profiles, bindings and recordings (reconciler/workloads.py), and the
activeWorkloads / finalizer bookkeeping derived from it."""

from __future__ import annotations

from typing import Any

import pytest

from api import constants
from api.types import ProfileBinding
from reconciler.workloads import (
    PodSummary,
    binds,
    bookkeeping,
    pod_recordings,
    pod_references,
    profile_reference,
    profile_workloads,
    recording_reference,
    recording_workloads,
)

SP = "SeccompProfile"
LOCALHOST = {"type": "Localhost", "localhostProfile": "operator/p.json"}


def _pod(
    spec: dict[str, Any], name: str = "pod", namespace: str = "ns", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _container(context: dict[str, Any] | None = None, image: str = "nginx") -> dict[str, Any]:
    body: dict[str, Any] = {"name": "c", "image": image}
    if context is not None:
        body["securityContext"] = context
    return body


@pytest.mark.parametrize(
    ("spec", "annotations", "expected"),
    [
        ({"securityContext": {"seccompProfile": LOCALHOST}, "containers": [_container()]}, None, {SP: "p"}),
        ({"containers": [_container({"seccompProfile": LOCALHOST})]}, None, {SP: "p"}),
        (
            {"initContainers": [_container({"seccompProfile": LOCALHOST})], "containers": [_container()]},
            None,
            {SP: "p"},
        ),
        (
            {"containers": [_container()]},
            {constants.ANNOTATION_LEGACY_SECCOMP_POD: "localhost/operator/p.json"},
            {SP: "p"},
        ),
        (
            {"containers": [_container({"seLinuxOptions": {"type": "p.process"}})]},
            None,
            {"SelinuxProfile": "p"},
        ),
        ({"securityContext": {"seLinuxOptions": {"type": "p.process"}}}, None, {"RawSelinuxProfile": "p"}),
        # Not references: RuntimeDefault, a 3-segment path, ephemeral containers, a type not ending .process.
        ({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}, None, {}),
        (
            {
                "containers": [
                    _container(
                        {"seccompProfile": {"type": "Localhost", "localhostProfile": "operator/ns/p.json"}}
                    )
                ]
            },
            None,
            {},
        ),
        ({"ephemeralContainers": [_container({"seccompProfile": LOCALHOST})]}, None, {}),
        ({"containers": [_container({"seLinuxOptions": {"type": "spc_t"}})]}, None, {}),
        # Malformed pods are read as far as they go, never crash.
        ({"containers": "nope", "securityContext": {"seccompProfile": "x"}}, None, {}),
    ],
)
def test_pod_references(
    spec: dict[str, Any], annotations: dict[str, str] | None, expected: dict[str, str]
) -> None:
    found = pod_references(_pod(spec, annotations=annotations))
    assert found == frozenset(profile_reference(kind, name) for kind, name in expected.items())


def test_a_pod_names_a_profile_of_a_json_name_by_its_file() -> None:
    spec = {
        "containers": [
            _container({"seccompProfile": {"type": "Localhost", "localhostProfile": "operator/x.json"}})
        ]
    }
    refs = pod_references(_pod(spec))
    assert profile_reference(SP, "x") in refs
    assert profile_reference(SP, "x.json") in refs
    assert profile_reference(SP, "y") not in refs


def test_pod_recordings_from_recording_annotations() -> None:
    annotations = {
        f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}nginx": "rec_nginx_bcdfg_1700000000",
        f"{constants.ANNOTATION_TRACE_AVCS_PREFIX}redis": "other_redis_bcdfg_1700000000",
        "unrelated": "x_y_z",
    }
    assert pod_recordings(_pod({}, annotations=annotations)) == {
        recording_reference("ns", "rec"),
        recording_reference("ns", "other"),
    }


def test_summary_keeps_only_what_is_needed() -> None:
    summary = PodSummary.model_validate(
        _pod({"containers": [_container({"seccompProfile": LOCALHOST}, image="img")]}, name="a")
    )
    assert summary.key == "ns/a"
    assert summary.images == {"img"}
    assert summary.references == {profile_reference(SP, "p")}


def _binding(image: str, kind: str = SP, namespace: str = "ns") -> ProfileBinding:
    return ProfileBinding.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha1",
            "kind": "ProfileBinding",
            "metadata": {"name": "b", "namespace": namespace},
            "spec": {"profileRef": {"kind": kind, "name": "p"}, "image": image},
        }
    )


@pytest.mark.parametrize(
    ("binding", "bound"),
    [
        (_binding("nginx"), True),
        (_binding("*"), True),
        (_binding("redis"), False),
        (_binding("nginx", namespace="other"), False),
        (_binding("nginx", kind="SelinuxProfile"), False),
    ],
)
def test_binding_applies_to_pods_of_its_image_using_its_profile(binding: ProfileBinding, bound: bool) -> None:
    pod = PodSummary.model_validate(_pod({"containers": [_container({"seccompProfile": LOCALHOST})]}))
    assert binds(binding, pod) is bound


def test_workload_lists() -> None:
    pods = [
        PodSummary.model_validate(_pod({}, name=n, namespace=ns))
        for n, ns in [("b", "x"), ("a", "y"), ("b", "x")]
    ]
    assert profile_workloads(pods) == ("x/b", "y/a")
    assert recording_workloads(pods) == ("a", "b")


LOCK = constants.FINALIZER_IN_USE
NODE = "node-a-deleted"


@pytest.mark.parametrize(
    ("workloads", "current", "drop", "finalizers", "changed"),
    [
        (("ns/a",), [NODE], [], (NODE, LOCK), True),
        (("ns/a",), [LOCK, NODE], [], (LOCK, NODE), False),
        ((), [LOCK, NODE], [], (NODE,), True),
        ((), [NODE], [], (NODE,), False),
        ((), [NODE, LOCK], [NODE], (), True),
        (("ns/a",), [NODE, LOCK], [NODE], (LOCK,), True),
    ],
)
def test_bookkeeping(
    workloads: tuple[str, ...],
    current: list[str],
    drop: list[str],
    finalizers: tuple[str, ...],
    changed: bool,
) -> None:
    result = bookkeeping(workloads, LOCK, current, drop)
    assert (result.active_workloads, result.finalizers, result.finalizers_changed) == (
        workloads,
        finalizers,
        changed,
    )
