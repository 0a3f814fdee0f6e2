"""BindingIndex: only the bindings that can apply to a pod, by name whatever the cache's order."""

from __future__ import annotations

from api.types import ProfileBinding
from webhooks.snapshot import BindingIndex, StaticSnapshot


def _binding(name: str, image: str, namespace: str = "ns") -> ProfileBinding:
    return ProfileBinding.model_validate(
        {
            "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha1",
            "kind": "ProfileBinding",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": name}, "image": image},
        }
    )


def test_applicable_is_by_name_and_includes_wildcards() -> None:
    bindings = [_binding("d", "nginx"), _binding("b", "*"), _binding("c", "redis"), _binding("a", "nginx")]
    index = BindingIndex.of(bindings)
    assert [b.metadata.name for b in index.applicable(["redis", "nginx"])] == ["a", "b", "c", "d"]
    assert [b.metadata.name for b in index.applicable(["nginx", "nginx"])] == ["a", "b", "d"]
    assert [b.metadata.name for b in index.applicable(["busybox"])] == ["b"]


def test_static_snapshot_indexes_per_namespace() -> None:
    snapshot = StaticSnapshot(bindings=[_binding("a", "nginx", "one"), _binding("b", "nginx", "two")])
    assert [b.metadata.name for b in snapshot.binding_index("two").applicable(["nginx"])] == ["b"]
    assert snapshot.binding_index("three").applicable(["nginx"]) == []
