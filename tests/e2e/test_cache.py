"""ResourceCache (list+watch) against the real apiserver: sync, changes, deletes, re-list on 410 Gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from kubernetes import client

from api import kinds
from api.kube import ResourceCache, api_client
from api.types import KubernetesObject, ProfileBinding, ProfileBindingSpec
from manifests.crds import crd
from spo import localcluster

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "security-profiles-operator.x-k8s.io", "v1alpha1", "profilebindings"


def _binding(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProfileBinding",
        "metadata": {"name": name},
        "spec": {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "image": image},
    }


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_cache_follows_creates_updates_and_deletes(kube: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(kube)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("before", "a"))
    cache = ResourceCache(kube, kinds.PROFILE_BINDING, ProfileBinding)
    cache.start()
    try:
        assert cache.wait_synced(10)
        assert [b.metadata.name for b in cache.in_namespace(namespace)] == ["before"]

        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("after", "b"))
        _eventually(lambda: cache.get("after", namespace) is not None)
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "after", {"spec": {"image": "c"}}
        )
        _eventually(lambda: (b := cache.get("after", namespace)) is not None and b.spec.image == "c")
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "before")
        _eventually(lambda: [b.metadata.name for b in cache.in_namespace(namespace)] == ["after"])
    finally:
        cache.stop()


class _StricterBinding(ProfileBinding):
    """A model stricter than the installed CRD, as after an upgrade: it refuses images `rejected-*`."""

    @pydantic.field_validator("spec")
    @classmethod
    def _refuse(cls, spec: ProfileBindingSpec) -> ProfileBindingSpec:
        if spec.image.startswith("rejected-"):
            raise ValueError(f"image {spec.image} is refused")
        return spec


def test_stored_objects_the_model_rejects_are_kept_apart_not_dropped(
    kube: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(kube)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _binding("listed", "rejected-1")
    )
    cache = ResourceCache(kube, kinds.PROFILE_BINDING, _StricterBinding)
    cache.start()

    def invalid() -> list[str]:
        return sorted(o.name for o in cache.invalid_in(namespace))

    try:
        assert cache.wait_synced(10)
        (listed,) = cache.invalid_in(namespace)
        assert listed.describe() == (
            f"ProfileBinding {namespace}/listed is stored but not valid "
            "(spec: Value error, image rejected-1 is refused)"
        )
        assert cache.in_namespace(namespace) == ()

        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _binding("watched", "rejected-2")
        )
        _eventually(lambda: invalid() == ["listed", "watched"])
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "listed", {"spec": {"image": "ok"}}
        )
        _eventually(lambda: invalid() == ["watched"] and cache.get("listed", namespace) is not None)
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "watched")
        _eventually(lambda: invalid() == [])
    finally:
        cache.stop()


def test_cache_lists_again_after_410_gone(
    kube: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first list reports a long-expired resourceVersion, so the apiserver answers the watch with
    410 Gone (a real one); the cache must list again and then follow changes."""
    objects = client.CustomObjectsApi(kube)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("first", "a"))
    cache = ResourceCache(kube, kinds.PROFILE_BINDING, ProfileBinding)
    real_list = cache._list
    lists: list[str] = []

    def list_with_stale_first_version() -> str:
        version = real_list()
        lists.append(version)
        return "1" if len(lists) == 1 else version

    monkeypatch.setattr(cache, "_list", list_with_stale_first_version)
    cache.start()
    try:
        _eventually(lambda: len(lists) >= 2)
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("second", "b"))
        _eventually(lambda: cache.get("second", namespace) is not None)
        assert cache.get("first", namespace) is not None
    finally:
        cache.stop()


def test_cache_reconnects_after_the_apiserver_restarts(tmp_path: Path) -> None:
    cluster = localcluster.ControlPlane(tmp_path / "cluster", localcluster.binaries_dir())
    cluster.start()
    try:
        kube = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(kube, [crd(kinds.PROFILE_BINDING)])
        localcluster.ensure_namespace(kube, "restart")
        cache = ResourceCache(kube, kinds.PROFILE_BINDING, ProfileBinding).start()
        assert cache.wait_synced(10)
        cluster.stop()
        cluster.start()  # same data and port: a restart, as after an apiserver upgrade
        objects = client.CustomObjectsApi(kube)
        objects.create_namespaced_custom_object(
            GROUP, VERSION, "restart", PLURAL, _binding("after-restart", "a")
        )
        _eventually(lambda: cache.get("after-restart", "restart") is not None, timeout=60)
        cache.stop()
    finally:
        cluster.destroy()


def test_pod_cache_lists_and_watches_a_core_group_namespace_with_a_label_selector(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)

    def pod(name: str, labels: dict[str, str]) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]),
        )

    core.create_namespaced_pod(namespace, pod("listed", {"watched": "yes"}))
    core.create_namespaced_pod(namespace, pod("unlabelled", {}))
    cache = ResourceCache(kube, kinds.POD, KubernetesObject, namespace, label_selector="watched=yes").start()
    try:
        assert cache.wait_synced(10)
        assert [p.metadata.name for p in cache.in_namespace(namespace)] == ["listed"]
        core.create_namespaced_pod(namespace, pod("watched", {"watched": "yes"}))
        core.create_namespaced_pod(namespace, pod("ignored", {}))
        _eventually(lambda: cache.get("watched", namespace) is not None)
        core.delete_namespaced_pod("listed", namespace, grace_period_seconds=0)
        _eventually(lambda: [p.metadata.name for p in cache.in_namespace(namespace)] == ["watched"])
        assert cache.get("ignored", namespace) is None
    finally:
        cache.stop()


def test_handlers_hear_changes_and_a_relist_reports_deletions_the_watch_missed(
    kube: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(kube)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("kept", "a"))
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _binding("missed", "m"))
    cache = ResourceCache(kube, kinds.PROFILE_BINDING, ProfileBinding, namespace)
    heard: list[str] = []
    cache.add_event_handler(lambda b: heard.append(f"{b.metadata.name}:{b.spec.image}"))
    cache._list()  # what the cache thread does first; called here so that no watch runs yet
    assert sorted(heard) == ["kept:a", "missed:m"]
    heard.clear()
    # Deleted while no watch ran (as before a 410 Gone): only the next list can tell.
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "missed")
    cache._list()
    assert heard == ["missed:m"], "an unchanged object was reported, or the deletion was not"
    assert cache.get("missed", namespace) is None
    heard.clear()
    cache.start()
    try:
        assert cache.wait_synced(10)
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "kept", {"spec": {"image": "b"}}
        )
        _eventually(lambda: "kept:b" in heard)
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kept")
        _eventually(lambda: cache.get("kept", namespace) is None)
        assert heard[-1] == "kept:b", "a deletion is reported with the object's last state"
    finally:
        cache.stop()
