"""ResourceCache's bookkeeping of one watch event, without an apiserver: the namespace grouping and
the indexes follow each change, and applying an event only looks at the object it changes."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from api import kinds
from api.kube import ResourceCache
from api.types import ProfileBinding


def _binding(name: str, image: str, namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha1",
        "kind": "ProfileBinding",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "image": image},
    }


def _cache() -> tuple[ResourceCache[ProfileBinding], list[str]]:
    cache = ResourceCache(client.ApiClient(), kinds.PROFILE_BINDING, ProfileBinding)
    indexed: list[str] = []

    def images(binding: ProfileBinding) -> list[str]:
        indexed.append(binding.metadata.name or "")
        return [binding.spec.image]

    cache.add_index("image", images)
    return cache, indexed


def _names(objects: tuple[ProfileBinding, ...]) -> list[str]:
    return sorted(o.metadata.name or "" for o in objects)


def test_index_follows_adds_updates_and_deletes() -> None:
    cache, _ = _cache()
    cache._apply("ADDED", _binding("a", "nginx"))
    cache._apply("ADDED", _binding("b", "nginx"))
    assert _names(cache.by_index("image", "nginx")) == ["a", "b"]
    cache._apply("MODIFIED", _binding("a", "redis"))
    assert _names(cache.by_index("image", "nginx")) == ["b"]
    assert _names(cache.by_index("image", "redis")) == ["a"]
    cache._apply("DELETED", _binding("b", "nginx"))
    assert cache.by_index("image", "nginx") == ()
    assert _names(cache.in_namespace("ns")) == ["a"]


def test_an_event_only_indexes_the_object_it_changes() -> None:
    cache, indexed = _cache()
    for i in range(50):
        cache._apply("ADDED", _binding(f"b{i}", "nginx"))
    indexed.clear()
    cache._apply("MODIFIED", _binding("b7", "redis"))
    cache._apply("DELETED", _binding("b8", "nginx"))
    # old and new state of b7, old state of b8: nothing else is looked at
    assert indexed == ["b7", "b7", "b8"]


def test_a_namespace_tuple_stays_the_same_object_until_that_namespace_changes() -> None:
    cache, _ = _cache()
    cache._apply("ADDED", _binding("a", "nginx", namespace="one"))
    first = cache.in_namespace("one")
    cache._apply("ADDED", _binding("b", "nginx", namespace="two"))
    assert cache.in_namespace("one") is first
    cache._apply("MODIFIED", _binding("a", "redis", namespace="one"))
    assert cache.in_namespace("one") is not first
    assert cache.in_namespace("one")[0].spec.image == "redis"


def test_an_object_turning_invalid_leaves_the_index_and_is_reported_apart() -> None:
    cache, _ = _cache()
    cache._apply("ADDED", _binding("a", "nginx"))
    broken = _binding("a", "nginx")
    broken["spec"]["image"] = ""
    cache._apply("MODIFIED", broken)
    assert cache.by_index("image", "nginx") == ()
    assert [o.name for o in cache.invalid_in("ns")] == ["a"]
    cache._apply("MODIFIED", _binding("a", "nginx"))
    assert cache.invalid_in("ns") == ()
    assert _names(cache.by_index("image", "nginx")) == ["a"]
