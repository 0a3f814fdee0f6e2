"""The agent's watch of its node's pods against the real apiserver: only this node's pods (and, with
memory optimisation, only those labelled for recording) reach the cache, and the container index
follows their statuses: container ids in as the kubelet reports them, out when the pod is deleted.

No kubelet runs here: the pods are bound by `spec.nodeName` and their statuses written as a kubelet
writes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client

from agent.attribution import ContainerIndex, NodePod, watch_node_pods
from api import constants
from api.kube import ResourceCache
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

FIRST_ID = "218ce99dd8b33f6f9b6565863d7cd47dc880963ddd2cd987bcb2d330c65144bf"  # inventory §6.1
SECOND_ID = "af208fd68bf39a07a439ed0c9b6609b9ae63ecd8a5f1a2af3e0db48b945b320a"  # inventory §6.2
OTHER_NODE_ID = "b469ca5b54e01e7724b7a990f01d54f571dd7669b87851a87bd8b849c438c580"  # inventory §6.2
UNLABELLED_ID = "5819a498721cf8bb7e334809c9e48aa310bfc98801eb8017034ad17fb0749920"  # inventory §6.2
RECORDING_LABEL = {constants.LABEL_ENABLE_RECORDING: constants.ENABLE_RECORDING_LABEL_VALUE}


def _node() -> str:
    # Pods of every namespace are watched: a node name of its own keeps other tests' pods out.
    return f"worker-{uuid.uuid4().hex[:8]}"


def _create_pod(core: client.CoreV1Api, namespace: str, name: str, node: str, labels: dict[str, str]) -> None:
    # The client takes a plain dict as well as its V1Pod model.
    pod: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "nginx", "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED}],
        },
    }
    core.create_namespaced_pod(namespace, pod)


def _report_running(core: client.CoreV1Api, namespace: str, name: str, container_id: str) -> None:
    """Write the pod's status as the kubelet does once its container runs."""
    status: dict[str, Any] = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "nginx",
                "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED,
                "imageID": "",
                "containerID": f"containerd://{container_id}",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }
        ],
    }
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


@contextmanager
def _watching(
    kube: client.ApiClient, node: str, memory_optimization: bool
) -> Iterator[tuple[ResourceCache[NodePod], ContainerIndex, list[str]]]:
    index = ContainerIndex()
    heard: list[str] = []
    cache = watch_node_pods(kube, node, memory_optimization, index, heard.extend)
    cache.start()
    try:
        assert cache.wait_synced(60)
        yield cache, index, heard
    finally:
        cache.stop()


def _pods(cache: ResourceCache[NodePod]) -> set[str]:
    return {p.metadata.name or "" for p in cache.items()}


def test_memory_optimisation_watches_only_this_nodes_labelled_pods(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    node, other_node = _node(), _node()
    _create_pod(core, namespace, "recorded", node, RECORDING_LABEL)
    _create_pod(core, namespace, "unlabelled", node, {})
    _create_pod(core, namespace, "elsewhere", other_node, RECORDING_LABEL)
    for name, container_id in (
        ("recorded", FIRST_ID),
        ("unlabelled", UNLABELLED_ID),
        ("elsewhere", OTHER_NODE_ID),
    ):
        _report_running(core, namespace, name, container_id)

    with _watching(kube, node, memory_optimization=True) as (cache, index, heard):
        eventually(lambda: index.get(FIRST_ID) is not None, what="the recorded pod's container indexed")
        assert _pods(cache) == {"recorded"}
        assert (index.get(UNLABELLED_ID), index.get(OTHER_NODE_ID)) == (None, None)
        info = index.get(FIRST_ID)
        assert info is not None
        assert (info.namespace, info.pod, info.container) == (namespace, "recorded", "nginx")
        assert heard == [FIRST_ID]

    with _watching(kube, node, memory_optimization=False) as (cache, index, _):
        eventually(lambda: len(index) == 2, what="both pods of the node indexed")
        assert _pods(cache) == {"recorded", "unlabelled"}
        assert index.get(OTHER_NODE_ID) is None


def test_index_follows_statuses_and_forgets_deleted_pods(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    node = _node()
    with _watching(kube, node, memory_optimization=False) as (cache, index, heard):
        _create_pod(core, namespace, "my-pod", node, {})
        eventually(lambda: _pods(cache) == {"my-pod"}, what="the pending pod in the cache")
        assert len(index) == 0  # no container runs yet

        _report_running(core, namespace, "my-pod", FIRST_ID)
        eventually(lambda: index.get(FIRST_ID) is not None, what="the container indexed once it runs")
        # A new instance of the container (a restart) is heard as new, the old one forgotten.
        _report_running(core, namespace, "my-pod", SECOND_ID)
        eventually(lambda: index.get(SECOND_ID) is not None, what="the new instance indexed")
        assert index.get(FIRST_ID) is None
        assert heard == [FIRST_ID, SECOND_ID]

        # Bound to a node without a kubelet, the pod goes at once only without a grace period.
        core.delete_namespaced_pod("my-pod", namespace, grace_period_seconds=0)
        eventually(lambda: index.get(SECOND_ID) is None, what="the deleted pod's container forgotten")
        assert len(index) == 0
