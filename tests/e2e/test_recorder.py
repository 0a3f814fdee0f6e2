"""The agent's recorder against the real apiserver (docs 7.6.3, 7.6.3.1, 7.7.3; issue 11 items 4 and 6).

No node: the pods are objects carrying the annotations the recording webhook writes, and the syscalls
and AVCs are fed as the audit thread would feed them once attributed. Each recording has a name of its
own, since the profiles it makes are cluster-scoped and the control plane is shared by the session."""

from __future__ import annotations

import json
import platform
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from agent.recorder import Recorder
from agent.recording_logic import native_architecture
from api import constants, kinds
from api.kube import api_client
from spo import localcluster

# The reconciler's controllers, which merge partial profiles when a recording is deleted.
from tests.e2e.test_profiles_controller import controllers, operator_namespace  # noqa: F401
from tests.eventually import eventually
from tests.kubectl import kubectl_json

pytestmark = pytest.mark.e2e

NODE = "recorder-node"
PR = kinds.PROFILE_RECORDING
SP = kinds.SECCOMP_PROFILE
SELINUX = kinds.SELINUX_PROFILE
LOGS = constants.ANNOTATION_TRACE_LOGS_PREFIX
AVCS = constants.ANNOTATION_TRACE_AVCS_PREFIX
TIMEOUT = 90.0


def _objects(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def recorder(kube: client.ApiClient, state: Path) -> Iterator[Recorder]:
    started = Recorder(kube, NODE, state, CollectorRegistry())
    started.start()
    yield started
    started.stop()


def _create_recording(kube: client.ApiClient, namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": PR.api_version,
        "kind": PR.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "kind": "SeccompProfile",
            "recorder": "logs",
            "podSelector": {"matchLabels": {"app": "my-app"}},
        }
        | spec,
    }
    _objects(kube).create_namespaced_custom_object(PR.group, PR.version, namespace, PR.plural, body)


def _recording(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return cast(
            dict[str, Any],
            _objects(kube).get_namespaced_custom_object(PR.group, PR.version, namespace, PR.plural, name),
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _profile(kube: client.ApiClient, name: str, kind: kinds.ResourceKind = SP) -> dict[str, Any] | None:
    try:
        return cast(
            dict[str, Any],
            _objects(kube).get_cluster_custom_object(kind.group, kind.version, kind.plural, name),
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _recorded(kube: client.ApiClient, recording: str, kind: kinds.ResourceKind = SP) -> list[dict[str, Any]]:
    listing: Any = _objects(kube).list_cluster_custom_object(
        kind.group, kind.version, kind.plural, label_selector=f"{constants.LABEL_RECORDING_ID}={recording}"
    )
    return cast(list[dict[str, Any]], listing["items"])


def _create_pod(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    annotations: dict[str, str],
    containers: tuple[str, ...] = ("nginx", "redis"),
    labels: dict[str, str] | None = None,
    generate_name: str | None = None,
) -> dict[str, Any]:
    """A pod object as the recording webhook leaves it, on this recorder's node; the dict the API returns."""
    metadata: dict[str, Any] = {"labels": labels or {"app": "my-app"}, "annotations": annotations}
    metadata |= {"generateName": generate_name} if generate_name else {"name": name}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": NODE, "containers": [{"name": c, "image": "nginx"} for c in containers]},
    }
    core = client.CoreV1Api(kube)
    created: Any = core.create_namespaced_pod(namespace, pod, _preload_content=False)  # type: ignore[arg-type]
    return cast(dict[str, Any], json.loads(created.data))


def _delete_pod(kube: client.ApiClient, pod: dict[str, Any]) -> None:
    metadata = pod["metadata"]
    # No kubelet here to finish a graceful deletion.
    client.CoreV1Api(kube).delete_namespaced_pod(
        metadata["name"], metadata["namespace"], grace_period_seconds=0
    )


def _trace(recording: str, container: str) -> str:
    return f"{recording}_{container}_bcdfg_1700000000"


def _events(kube: client.ApiClient, namespace: str, recording: str) -> list[tuple[str, str]]:
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={recording}"
    )
    return [(str(e.type), str(e.reason)) for e in events.items]


def _forgotten(state: Path) -> bool:
    """No pod's recording is kept any more."""
    return not state.is_dir() or not any(state.iterdir())


def _skipped(recorder: Recorder, reason: str) -> float:
    return sum(
        sample.value
        for metric in recorder.skipped.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("reason") == reason
    )


def test_docs_two_container_pod_records_two_seccomp_profiles(
    recorder: Recorder,
    kube: client.ApiClient,
    namespace: str,
    control_plane: localcluster.ControlPlane,
    state: Path,
) -> None:
    """Docs 7.6.3: ProfileRecording for app: my-app, the two-container pod, delete the pod, then
    `kubectl get seccompprofiles -lspo.x-k8s.io/recording-id=test-recording` lists both."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording)
    annotations = {f"{LOGS}nginx": _trace(recording, "nginx"), f"{LOGS}redis": _trace(recording, "redis")}
    pod = _create_pod(kube, namespace, "my-pod", annotations)
    recorder.observe_pod(pod)
    for name in ("write", "read", "mkdir", "read"):
        recorder.record_syscall(namespace, "my-pod", "nginx", name)
    recorder.record_syscall(namespace, "my-pod", "redis", "epoll_wait")
    recorder.record_syscall(namespace, "my-pod", "not-traced", "reboot")
    recorder.record_syscall(namespace, "other-pod", "nginx", "reboot")
    _delete_pod(kube, pod)
    recorder.pod_deleted(pod)

    eventually(lambda: len(_recorded(kube, recording)) == 2, TIMEOUT, "two recorded profiles")
    shown = kubectl_json(
        control_plane.kubeconfig, "get", "seccompprofiles", f"-l{constants.LABEL_RECORDING_ID}={recording}"
    )
    by_name = {p["metadata"]["name"]: p for p in shown["items"]}
    assert set(by_name) == {f"{recording}-nginx", f"{recording}-redis"}
    nginx = by_name[f"{recording}-nginx"]
    assert nginx["spec"]["syscalls"] == [{"action": "SCMP_ACT_ALLOW", "names": ["mkdir", "read", "write"]}]
    assert nginx["spec"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert nginx["spec"]["architectures"] == [native_architecture(platform.machine())]
    assert nginx["metadata"]["labels"] == {
        constants.LABEL_RECORDING_ID: recording,
        constants.LABEL_RECORDING_NAMESPACE: namespace,
        constants.LABEL_CONTAINER_ID: "nginx",
    }
    assert not nginx["metadata"].get("finalizers")
    assert by_name[f"{recording}-redis"]["spec"]["syscalls"][0]["names"] == ["epoll_wait"]
    fields = (_profile(kube, f"{recording}-nginx") or {})["metadata"]["managedFields"]
    assert {f["manager"] for f in fields} == {constants.AGENT_FIELD_MANAGER}
    eventually(
        lambda: _events(kube, namespace, recording).count(("Normal", "ProfileCreated")) == 2,
        TIMEOUT,
        "a ProfileCreated event per profile",
    )
    # nothing recorded for a recording without merging: no finalizer on it
    assert not (_recording(kube, namespace, recording) or {})["metadata"].get("finalizers")
    eventually(lambda: _forgotten(state), TIMEOUT, "the pod's state forgotten")


def test_selinux_recording_records_allow_rules_and_an_empty_container_makes_none(
    recorder: Recorder, kube: client.ApiClient, namespace: str
) -> None:
    """Docs 7.7.3, with the AVC of the docs' log line; a container that recorded nothing: an event."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording, kind="SelinuxProfile", disableProfileAfterRecording=True)
    annotations = {f"{AVCS}redis": _trace(recording, "redis"), f"{AVCS}nginx": _trace(recording, "nginx")}
    pod = _create_pod(kube, namespace, "my-pod", annotations)
    recorder.observe_pod(pod)
    port, itself = "system_u:object_r:redis_port_t:s0", "system_u:system_r:selinuxrecording.process:s0:c4,c27"
    recorder.record_avc(namespace, "my-pod", "redis", perms=["name_bind"], tcontext=port, tclass="tcp_socket")
    recorder.record_avc(namespace, "my-pod", "redis", perms=["listen"], tcontext=itself, tclass="tcp_socket")
    recorder.record_avc(namespace, "my-pod", "redis", perms=["read"], tcontext="broken", tclass="file")
    _delete_pod(kube, pod)
    recorder.pod_deleted(pod)

    eventually(
        lambda: _profile(kube, f"{recording}-redis", SELINUX) is not None, TIMEOUT, "the SelinuxProfile"
    )
    profile = _profile(kube, f"{recording}-redis", SELINUX) or {}
    assert profile["spec"]["inherit"] == [{"kind": "System", "name": "container"}]
    assert profile["spec"]["allow"] == {
        "@self": {"tcp_socket": ["listen"]},
        "redis_port_t": {"tcp_socket": ["name_bind"]},
    }
    assert profile["spec"]["disabled"] is True
    assert _skipped(recorder, "MalformedEvent") == 1
    eventually(
        lambda: ("Warning", "NothingRecorded") in _events(kube, namespace, recording),
        TIMEOUT,
        "an event for nginx",
    )
    assert _profile(kube, f"{recording}-nginx", SELINUX) is None


@pytest.mark.usefixtures("controllers")
def test_docs_deployment_partial_profiles_merge_when_the_recording_is_deleted(
    recorder: Recorder, kube: client.ApiClient, namespace: str
) -> None:
    """Docs 7.6.3.1: mergeStrategy containers, 3 replicas, delete them (partial profiles, the recording
    held), delete the recording (one merged profile), then every finalizer is released."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(
        kube,
        namespace,
        recording,
        mergeStrategy="containers",
        podSelector={"matchLabels": {"app": "sp-record"}},
    )
    syscalls = [["read", "write"], ["read", "mkdir"], ["openat"]]
    pods = []
    for names in syscalls:
        pod = _create_pod(
            kube,
            namespace,
            "",
            {f"{LOGS}nginx-record": _trace(recording, "nginx-record")},
            containers=("nginx-record",),
            labels={"app": "sp-record"},
            generate_name="nginx-deploy-5d4f8c7b9-",
        )
        recorder.observe_pod(pod)
        for name in names:
            recorder.record_syscall(namespace, pod["metadata"]["name"], "nginx-record", name)
        pods.append(pod)
    # held while its pods record, before any partial profile exists
    eventually(
        lambda: (
            constants.FINALIZER_UNMERGED
            in ((_recording(kube, namespace, recording) or {})["metadata"].get("finalizers") or [])
        ),
        TIMEOUT,
        "the recording held",
    )
    for pod in pods:
        _delete_pod(kube, pod)
        recorder.pod_deleted(pod)

    eventually(lambda: len(_recorded(kube, recording)) == 3, TIMEOUT, "three partial profiles")
    for partial in _recorded(kube, recording):
        suffix = partial["metadata"]["name"].removeprefix(f"{recording}-nginx-record-")
        assert {p["metadata"]["name"] for p in pods} >= {f"nginx-deploy-5d4f8c7b9-{suffix}"}
        assert partial["metadata"]["labels"][constants.LABEL_PARTIAL] == "true"
        assert partial["metadata"]["finalizers"] == [constants.FINALIZER_PARTIAL_PROFILE]

    _objects(kube).delete_namespaced_custom_object(PR.group, PR.version, namespace, PR.plural, recording)
    merged_name = f"{recording}-nginx-record"
    eventually(
        lambda: [p["metadata"]["name"] for p in _recorded(kube, recording)] == [merged_name],
        TIMEOUT,
        "only the merged profile left",
    )
    merged = _profile(kube, merged_name) or {}
    assert merged["spec"]["syscalls"] == [
        {"action": "SCMP_ACT_ALLOW", "names": ["mkdir", "openat", "read", "write"]}
    ]
    eventually(lambda: _recording(kube, namespace, recording) is None, TIMEOUT, "the recording gone")


def test_forged_annotations_record_nothing(
    recorder: Recorder, kube: client.ApiClient, namespace: str, state: Path
) -> None:
    """Trust (issue 11, item 6): annotations naming a recording that does not select the pod, that
    records another kind, or that does not exist, on a pod the webhook never marked."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording)
    forged = {
        f"{LOGS}nginx": _trace(recording, "nginx"),  # the recording selects app: my-app, not this pod
        f"{AVCS}nginx": _trace(recording, "nginx"),  # the recording records seccomp
        f"{LOGS}redis": _trace("no-such-recording", "redis"),
    }
    pod = _create_pod(kube, namespace, "intruder", forged, labels={"app": "intruder"})
    recorder.observe_pod(pod)
    recorder.record_syscall(namespace, "intruder", "nginx", "reboot")
    recorder.record_syscall(namespace, "intruder", "redis", "reboot")
    recorder.record_avc(namespace, "intruder", "nginx", perms=["read"], tcontext="u:r:t:s0", tclass="file")
    _delete_pod(kube, pod)
    recorder.pod_deleted(pod)

    # the unknown recording is waited for (it may be late in the cache), then given up
    eventually(lambda: _skipped(recorder, "RecordingNotFound") == 1, 3 * TIMEOUT, "the unknown recording")
    eventually(lambda: _forgotten(state), TIMEOUT, "the pod's state forgotten")
    assert _skipped(recorder, "NotSelected") == 1
    assert _skipped(recorder, "KindMismatch") == 1
    assert _skipped(recorder, "RecordingNotFound") == 1
    assert _recorded(kube, recording) == [] and _recorded(kube, "no-such-recording") == []
    assert _recorded(kube, recording, SELINUX) == []


def test_a_recording_created_after_its_pod_is_waited_for(
    recorder: Recorder, kube: client.ApiClient, namespace: str
) -> None:
    """The recording not in the cache yet when the pod ends: the collection is retried, nothing lost."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    pod = _create_pod(kube, namespace, "early", {f"{LOGS}nginx": _trace(recording, "nginx")})
    recorder.observe_pod(pod)
    recorder.record_syscall(namespace, "early", "nginx", "clone3")
    _delete_pod(kube, pod)
    recorder.pod_deleted(pod)
    _create_recording(kube, namespace, recording)
    eventually(lambda: _profile(kube, f"{recording}-nginx") is not None, TIMEOUT, "the profile")
    assert (_profile(kube, f"{recording}-nginx") or {})["spec"]["syscalls"][0]["names"] == ["clone3"]


def test_recorded_data_survives_a_restart(kube: client.ApiClient, namespace: str, state: Path) -> None:
    """A new Recorder on the same state directory collects what the old one recorded: a pod deleted
    while no agent ran is collected at start, a pod still running goes on recording."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording, podSelector={})
    first = Recorder(kube, NODE, state, CollectorRegistry())
    first.start()
    gone = _create_pod(kube, namespace, "gone", {f"{LOGS}nginx": _trace(recording, "nginx")}, ("nginx",))
    alive = _create_pod(kube, namespace, "alive", {f"{LOGS}redis": _trace(recording, "redis")}, ("redis",))
    for pod in (gone, alive):
        first.observe_pod(pod)
    first.record_syscall(namespace, "gone", "nginx", "mkdir")
    first.record_syscall(namespace, "alive", "redis", "read")
    first.stop()
    _delete_pod(kube, gone)  # while no agent runs

    second = Recorder(kube, NODE, state, CollectorRegistry())
    second.start()
    try:
        eventually(
            lambda: _profile(kube, f"{recording}-nginx") is not None, TIMEOUT, "the gone pod's profile"
        )
        assert (_profile(kube, f"{recording}-nginx") or {})["spec"]["syscalls"][0]["names"] == ["mkdir"]
        second.observe_pod(alive)
        second.record_syscall(namespace, "alive", "redis", "write")
        assert _profile(kube, f"{recording}-redis") is None
        _delete_pod(kube, alive)
        second.pod_deleted(alive)
        eventually(
            lambda: _profile(kube, f"{recording}-redis") is not None, TIMEOUT, "the alive pod's profile"
        )
        assert (_profile(kube, f"{recording}-redis") or {})["spec"]["syscalls"][0]["names"] == [
            "read",
            "write",
        ]
    finally:
        second.stop()


def test_an_apiserver_outage_is_retried_and_loses_nothing(
    kube: client.ApiClient,
    namespace: str,
    state: Path,
    control_plane: localcluster.ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pod ends while the recorder cannot reach the apiserver: the collection fails, is retried with
    backoff, and the profile holds every syscall once the apiserver answers again."""
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording)
    own = api_client(str(control_plane.kubeconfig))
    recorder = Recorder(own, NODE, state, CollectorRegistry())
    recorder.start()
    try:
        pod = _create_pod(kube, namespace, "my-pod", {f"{LOGS}nginx": _trace(recording, "nginx")}, ("nginx",))
        recorder.observe_pod(pod)
        for name in ("bind", "listen"):
            recorder.record_syscall(namespace, "my-pod", "nginx", name)
        _delete_pod(kube, pod)
        reachable = own.configuration.host
        own.configuration.host = f"https://127.0.0.1:{localcluster.free_port()}"  # nothing listens there
        recorder.pod_deleted(pod)
        eventually(
            lambda: any(
                "collect/" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records
            ),
            TIMEOUT,
            "a failed collection",
        )
        assert _profile(kube, f"{recording}-nginx") is None
        own.configuration.host = reachable
        eventually(lambda: _profile(kube, f"{recording}-nginx") is not None, TIMEOUT, "the profile")
        assert (_profile(kube, f"{recording}-nginx") or {})["spec"]["syscalls"][0]["names"] == [
            "bind",
            "listen",
        ]
        eventually(lambda: _forgotten(state), TIMEOUT, "the pod's state forgotten")
    finally:
        recorder.stop()


def test_the_audit_threads_record_each_distinct_name_once(state: Path) -> None:
    """record_syscall from several threads at once, a hundred thousand calls over 40 names: the pod's
    saved state holds the 40 names, whatever the interleaving (no apiserver needed before start)."""
    recorder = Recorder(client.ApiClient(), NODE, state, CollectorRegistry())
    pod = {
        "metadata": {
            "namespace": "ns",
            "name": "busy",
            "uid": "uid-busy",
            "annotations": {f"{LOGS}c": _trace("rec", "c")},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
    }
    recorder.observe_pod(pod)
    names = [f"call{index}" for index in range(40)]

    def hammer(offset: int) -> None:
        for index in range(25_000):
            recorder.record_syscall("ns", "busy", "c", names[(index + offset) % len(names)])

    threads = [threading.Thread(target=hammer, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.stop()  # saves what it holds
    (saved,) = state.iterdir()
    assert json.loads(saved.read_text())["syscalls"] == {"c": sorted(names)}


def test_an_unreadable_state_file_is_a_counted_skip(state: Path) -> None:
    state.mkdir()
    (state / "0b7c1f7e-broken.json").write_text("{not json")
    (state / "1c2d3e4f-foreign.json").write_text('{"pod": {"name": "x"}}')
    recorder = Recorder(client.ApiClient(), NODE, state, CollectorRegistry())
    assert _skipped(recorder, "UnreadableState") == 2


def test_a_pod_that_succeeded_is_collected_without_being_deleted(
    recorder: Recorder, kube: client.ApiClient, namespace: str
) -> None:
    recording = f"test-recording-{uuid.uuid4().hex[:6]}"
    _create_recording(kube, namespace, recording)
    pod = _create_pod(kube, namespace, "job", {f"{LOGS}nginx": _trace(recording, "nginx")}, ("nginx",))
    recorder.observe_pod(pod)
    recorder.record_syscall(namespace, "job", "nginx", "exit_group")
    core = client.CoreV1Api(kube)
    core.patch_namespaced_pod_status("job", namespace, {"status": {"phase": "Succeeded"}})
    succeeded: Any = core.read_namespaced_pod("job", namespace, _preload_content=False)
    recorder.observe_pod(json.loads(succeeded.data))
    eventually(lambda: _profile(kube, f"{recording}-nginx") is not None, TIMEOUT, "the profile")
    assert (_profile(kube, f"{recording}-nginx") or {})["spec"]["syscalls"][0]["names"] == ["exit_group"]
