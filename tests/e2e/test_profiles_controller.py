"""The profile, binding and recording controllers against the real apiserver: a profile in use cannot
disappear while its pod exists (docs 7.6.x, acceptance 5), statuses from node statuses and heartbeat
Leases with the clean-up of gone nodes, and the recording merge of partial profiles (acceptance 7).

No node here: pods stay Pending, which is all the bookkeeping needs."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants, kinds
from api.types import heartbeat_lease_name, node_finalizer
from reconciler.profiles_controller import ProfileControllers
from reconciler.runtime import Manager
from spo import localcluster
from tests.e2e.leftovers import release_reconciler_finalizers
from tests.eventually import eventually
from tests.kubectl import kubectl, kubectl_json

pytestmark = pytest.mark.e2e

SP = kinds.SECCOMP_PROFILE


@pytest.fixture(scope="module")
def operator_namespace(kube: client.ApiClient) -> str:
    name = f"op-{uuid.uuid4().hex[:8]}"
    localcluster.ensure_namespace(kube, name)
    return name


@pytest.fixture(scope="module")
def controllers(kube: client.ApiClient, operator_namespace: str) -> Iterator[Manager]:
    manager = Manager()
    profiles = ProfileControllers(kube, operator_namespace)
    for cache in profiles.caches():
        manager.cache(cache)
    for controller in profiles.controllers():
        manager.add(controller)
    manager.start()
    eventually(lambda: manager.ready() and manager.leading, timeout=60, what="controllers running")
    yield manager
    manager.stop()
    release_reconciler_finalizers(kube)


def _objects(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def _create_profile(kube: client.ApiClient, name: str, **extra: Any) -> None:
    body = {
        "apiVersion": SP.api_version,
        "kind": SP.kind,
        "metadata": {"name": name, **extra.pop("metadata", {})},
        "spec": {"defaultAction": "SCMP_ACT_ERRNO", **extra.pop("spec", {})},
    }
    _objects(kube).create_cluster_custom_object(SP.group, SP.version, SP.plural, body)


def _profile(kube: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        found = cast(
            dict[str, Any], _objects(kube).get_cluster_custom_object(SP.group, SP.version, SP.plural, name)
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


_DOCS_ALLOWED_SYSCALLS = ["exit", "exit_group", "futex", "nanosleep"]


@contextlib.contextmanager
def _spod_allowing(kube: client.ApiClient, operator_namespace: str, syscalls: list[str]) -> Iterator[None]:
    """The spod, with `allowedSyscalls`, for the duration."""
    spod = kinds.SPOD
    body = {
        "apiVersion": spod.api_version,
        "kind": spod.kind,
        "metadata": {"name": constants.SPOD_NAME},
        "spec": {"allowedSyscalls": syscalls},
    }
    _objects(kube).create_namespaced_custom_object(
        spod.group, spod.version, operator_namespace, spod.plural, body
    )
    try:
        yield
    finally:
        _objects(kube).delete_namespaced_custom_object(
            spod.group, spod.version, operator_namespace, spod.plural, constants.SPOD_NAME
        )


def _pod_spec(where: str, localhost: str) -> dict[str, Any]:
    context = {"seccompProfile": {"type": "Localhost", "localhostProfile": localhost}}
    container: dict[str, Any] = {"name": "c", "image": "nginx"}
    if where == "pod":
        return {"securityContext": context, "containers": [container]}
    if where == "container":
        return {"containers": [{**container, "securityContext": context}]}
    return {
        "initContainers": [{**container, "name": "init", "securityContext": context}],
        "containers": [container],
    }


@pytest.mark.parametrize("where", ["pod", "container", "init-container"])
def test_a_profile_used_by_a_pod_stays_terminating_until_the_pod_is_gone(
    controllers: Manager,
    kube: client.ApiClient,
    namespace: str,
    control_plane: localcluster.ControlPlane,
    where: str,
) -> None:
    name = f"used-{uuid.uuid4().hex[:8]}"
    _create_profile(kube, name)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": _pod_spec(where, f"operator/{name}.json"),
    }
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
    eventually(
        lambda: (
            ((_profile(kube, name) or {}).get("status") or {}).get("activeWorkloads") == [f"{namespace}/app"]
        ),
        what="activeWorkloads naming the pod",
    )
    # The status is written first, the finalizer right after it.
    eventually(
        lambda: (
            constants.FINALIZER_IN_USE in ((_profile(kube, name) or {})["metadata"].get("finalizers") or [])
        ),
        what="the in-use finalizer",
    )

    kubectl(control_plane.kubeconfig, "delete", "sp", name, "--wait=false")
    eventually(
        lambda: ((_profile(kube, name) or {}).get("status") or {}).get("status") == "Terminating",
        what="Terminating",
    )
    shown = kubectl_json(control_plane.kubeconfig, "get", "sp", name)
    assert shown["status"]["activeWorkloads"] == [f"{namespace}/app"]
    assert shown["status"]["conditions"][0]["reason"] == "Deleting"

    client.CoreV1Api(kube).delete_namespaced_pod("app", namespace, grace_period_seconds=0)
    eventually(lambda: _profile(kube, name) is None, what="the profile removed after its pod")


def test_an_unused_profile_gets_its_status_and_no_finalizer(
    controllers: Manager, kube: client.ApiClient
) -> None:
    name = f"free-{uuid.uuid4().hex[:8]}"
    _create_profile(kube, name)
    eventually(lambda: "status" in (_profile(kube, name) or {}), what="a status")
    profile = _profile(kube, name) or {}
    assert profile["status"]["localhostProfile"] == f"operator/{name}.json"
    assert constants.FINALIZER_IN_USE not in (profile["metadata"].get("finalizers") or [])


def _heartbeat(kube: client.ApiClient, namespace: str, node: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name=heartbeat_lease_name(node)),
        spec=client.V1LeaseSpec(
            holder_identity=node, lease_duration_seconds=40, renew_time=now, acquire_time=now
        ),
    )
    client.CoordinationV1Api(kube).create_namespaced_lease(namespace, lease)


def _node_status(kube: client.ApiClient, profile: dict[str, Any], node: str, state: str) -> None:
    body = {
        "apiVersion": kinds.NODE_STATUS.api_version,
        "kind": kinds.NODE_STATUS.kind,
        "metadata": {
            "name": f"{profile['metadata']['name']}-{node}",
            "ownerReferences": [
                {
                    "apiVersion": SP.api_version,
                    "kind": SP.kind,
                    "name": profile["metadata"]["name"],
                    "uid": profile["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "nodeName": node,
        "status": state,
    }
    _objects(kube).create_cluster_custom_object(
        kinds.NODE_STATUS.group, kinds.NODE_STATUS.version, kinds.NODE_STATUS.plural, body
    )


def test_status_from_alive_nodes_and_clean_up_of_a_gone_node(
    controllers: Manager, kube: client.ApiClient, operator_namespace: str
) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    name = f"nodes-{uuid.uuid4().hex[:8]}"
    _heartbeat(kube, operator_namespace, node)
    _create_profile(kube, name, metadata={"finalizers": [node_finalizer(node), node_finalizer("gone")]})
    profile = _profile(kube, name) or {}
    _node_status(kube, profile, node, "Installed")
    _node_status(kube, profile, "gone", "Error")
    eventually(
        lambda: ((_profile(kube, name) or {}).get("status") or {}).get("status") == "Installed",
        what=f"Installed from the one alive node: {_profile(kube, name)}",
    )
    eventually(
        lambda: (_profile(kube, name) or {})["metadata"].get("finalizers") == [node_finalizer(node)],
        what="the gone node's finalizer removed",
    )

    def node_statuses() -> set[str]:
        statuses: Any = _objects(kube).list_cluster_custom_object(
            kinds.NODE_STATUS.group, kinds.NODE_STATUS.version, kinds.NODE_STATUS.plural
        )
        return {s["metadata"]["name"] for s in statuses["items"]}

    # The finalizer may go in a pass before the one that sees the gone node's status.
    eventually(lambda: f"{name}-gone" not in node_statuses(), what="the gone node's status deleted")
    assert f"{name}-{node}" in node_statuses()
    # the alive node's own finalizer is its agent's to remove
    _objects(kube).patch_cluster_custom_object(
        SP.group, SP.version, SP.plural, name, {"metadata": {"finalizers": None}}
    )


def test_recording_merge_of_partial_profiles(
    controllers: Manager, kube: client.ApiClient, namespace: str
) -> None:
    recording = f"rec-{uuid.uuid4().hex[:6]}"
    pr = kinds.PROFILE_RECORDING
    body = {
        "apiVersion": pr.api_version,
        "kind": pr.kind,
        # the agent's recorder holds a recording with partial profiles by this finalizer
        "metadata": {"name": recording, "finalizers": [constants.FINALIZER_UNMERGED]},
        "spec": {
            "kind": "SeccompProfile",
            "recorder": "logs",
            "mergeStrategy": "containers",
            "podSelector": {},
        },
    }
    _objects(kube).create_namespaced_custom_object(pr.group, pr.version, namespace, pr.plural, body)
    partials = {
        f"{recording}-nginx-aaaaa": ("nginx", ["read", "write"]),
        f"{recording}-nginx-bbbbb": ("nginx", ["open", "read"]),
        f"{recording}-redis-aaaaa": ("redis", ["epoll_wait"]),
    }
    for partial, (container, names) in partials.items():
        labels = {
            constants.LABEL_RECORDING_ID: recording,
            constants.LABEL_RECORDING_NAMESPACE: namespace,
            constants.LABEL_CONTAINER_ID: container,
            constants.LABEL_PARTIAL: "true",
        }
        _create_profile(
            kube,
            partial,
            metadata={"labels": labels},
            spec={"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": names}]},
        )
    _objects(kube).delete_namespaced_custom_object(pr.group, pr.version, namespace, pr.plural, recording)

    eventually(lambda: all(_profile(kube, p) is None for p in partials), what="partials deleted")
    nginx = _profile(kube, f"{recording}-nginx") or {}
    redis = _profile(kube, f"{recording}-redis") or {}
    assert nginx["spec"]["syscalls"] == [{"action": "SCMP_ACT_ALLOW", "names": ["open", "read", "write"]}]
    assert redis["spec"]["syscalls"] == [{"action": "SCMP_ACT_ALLOW", "names": ["epoll_wait"]}]
    assert constants.LABEL_PARTIAL not in nginx["metadata"]["labels"]
    _objects(kube).patch_namespaced_custom_object(
        pr.group, pr.version, namespace, pr.plural, recording, {"metadata": {"finalizers": None}}
    )


def _namespaced(
    kube: client.ApiClient, kind: kinds.ResourceKind, namespace: str, name: str
) -> dict[str, Any]:
    return cast(
        dict[str, Any],
        _objects(kube).get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name),
    )


def test_binding_and_recording_list_their_pods_and_hold_a_lock_while_they_run(
    controllers: Manager, kube: client.ApiClient, namespace: str
) -> None:
    profile = f"bound-{uuid.uuid4().hex[:8]}"
    _create_profile(kube, profile)
    pb, pr = kinds.PROFILE_BINDING, kinds.PROFILE_RECORDING
    binding = {
        "apiVersion": pb.api_version,
        "kind": pb.kind,
        "metadata": {"name": "b"},
        "spec": {"profileRef": {"kind": "SeccompProfile", "name": profile}, "image": "nginx"},
    }
    _objects(kube).create_namespaced_custom_object(pb.group, pb.version, namespace, pb.plural, binding)
    recording = {
        "apiVersion": pr.api_version,
        "kind": pr.kind,
        "metadata": {"name": "rec"},
        "spec": {"kind": "SeccompProfile", "recorder": "logs", "podSelector": {}},
    }
    _objects(kube).create_namespaced_custom_object(pr.group, pr.version, namespace, pr.plural, recording)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app",
            "annotations": {f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}c": "rec_c_bcdfg_1700000000"},
        },
        "spec": _pod_spec("container", f"operator/{profile}.json"),
    }
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]

    def listed(kind: kinds.ResourceKind, name: str, workloads: list[str], lock: str) -> bool:
        obj = _namespaced(kube, kind, namespace, name)
        held = lock in (obj["metadata"].get("finalizers") or [])
        return (obj.get("status") or {}).get("activeWorkloads") == workloads and held == bool(workloads)

    eventually(
        lambda: listed(pb, "b", [f"{namespace}/app"], constants.FINALIZER_ACTIVE_WORKLOAD), what="binding"
    )
    eventually(lambda: listed(pr, "rec", ["app"], constants.FINALIZER_RECORDING_LOCK), what="recording")
    client.CoreV1Api(kube).delete_namespaced_pod("app", namespace, grace_period_seconds=0)
    eventually(lambda: listed(pb, "b", [], constants.FINALIZER_ACTIVE_WORKLOAD), what="binding released")
    eventually(lambda: listed(pr, "rec", [], constants.FINALIZER_RECORDING_LOCK), what="recording released")


def test_profiles_breaking_the_allowed_syscalls_are_deleted_and_one_in_use_waits(
    controllers: Manager, kube: client.ApiClient, namespace: str, operator_namespace: str
) -> None:
    allowed = f"ok-{uuid.uuid4().hex[:8]}"
    broken = f"bpf-{uuid.uuid4().hex[:8]}"
    in_use = f"busy-{uuid.uuid4().hex[:8]}"
    exit_only = {"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit"]}]}
    _create_profile(kube, allowed, spec=exit_only)
    for name in (broken, in_use):
        _create_profile(
            kube, name, spec={"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["bpf", "exit"]}]}
        )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "busy"},
        "spec": _pod_spec("pod", f"operator/{in_use}.json"),
    }
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]
    eventually(
        lambda: (
            constants.FINALIZER_IN_USE in ((_profile(kube, in_use) or {})["metadata"].get("finalizers") or [])
        ),
        what="in use",
    )
    with _spod_allowing(kube, operator_namespace, _DOCS_ALLOWED_SYSCALLS):
        eventually(lambda: _profile(kube, broken) is None, what="the profile allowing bpf deleted")
        eventually(
            lambda: ((_profile(kube, in_use) or {}).get("status") or {}).get("status") == "Terminating",
            what="the one in use Terminating",
        )
        assert _profile(kube, allowed) is not None
        client.CoreV1Api(kube).delete_namespaced_pod("busy", namespace, grace_period_seconds=0)
        eventually(lambda: _profile(kube, in_use) is None, what="deleted once its pod is gone")


def test_a_profile_is_checked_when_it_or_its_base_changes_while_the_spod_restricts(
    controllers: Manager, kube: client.ApiClient, operator_namespace: str
) -> None:
    base = f"base-{uuid.uuid4().hex[:8]}"
    child = f"child-{uuid.uuid4().hex[:8]}"
    late = f"late-{uuid.uuid4().hex[:8]}"
    _create_profile(kube, base, spec={"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit"]}]})
    _create_profile(kube, child, spec={"baseProfileName": base})
    with _spod_allowing(kube, operator_namespace, _DOCS_ALLOWED_SYSCALLS):
        _create_profile(kube, late, spec={"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["bpf"]}]})
        eventually(lambda: _profile(kube, late) is None, what="a profile created later allowing bpf deleted")
        # The child did not change: only its base did, whose syscalls count as the child's.
        patch = {"spec": {"syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit", "bpf"]}]}}
        _objects(kube).patch_cluster_custom_object(SP.group, SP.version, SP.plural, base, patch)
        eventually(lambda: _profile(kube, child) is None, what="the child of a base now allowing bpf deleted")
