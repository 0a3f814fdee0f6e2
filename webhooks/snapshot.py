"""The read-only view of cluster objects that admission decisions are computed from.

The webhook process fills it from list+watch caches; tests fill it from literals. Decisions never
call the Kubernetes API, so every replica answers the same request the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from api.types import (
    InvalidObject,
    ProfileBinding,
    ProfileRecording,
    SeccompProfile,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)


@dataclass(frozen=True)
class BindingIndex:
    """A namespace's ProfileBindings by image, so that a pod's decision only visits the bindings
    that can apply to it (its images and the wildcard) instead of every binding in the namespace."""

    by_image: Mapping[str, tuple[ProfileBinding, ...]]

    @classmethod
    def of(cls, bindings: Iterable[ProfileBinding]) -> BindingIndex:
        grouped: dict[str, list[ProfileBinding]] = {}
        for binding in bindings:
            grouped.setdefault(binding.spec.image, []).append(binding)
        return cls({image: tuple(entries) for image, entries in grouped.items()})

    def applicable(self, images: Iterable[str]) -> list[ProfileBinding]:
        """The bindings for these images and the wildcard ones, by name.

        By name, not in the cache's order: a replica that listed the bindings and one that saw them
        arrive one by one hold them in different orders, and must still give the same answer.
        """
        found = [
            binding
            for image in {*images, ProfileBinding.WILDCARD_IMAGE}
            for binding in self.by_image.get(image, ())
        ]
        return sorted(found, key=lambda binding: binding.metadata.name or "")


class Snapshot(Protocol):
    def binding_index(self, namespace: str) -> BindingIndex: ...

    def recordings_in(self, namespace: str) -> Sequence[ProfileRecording]: ...

    def seccomp_profile(self, name: str) -> SeccompProfile | None: ...

    def selinux_profile(self, name: str) -> SelinuxProfile | None: ...

    def spod(self) -> SecurityProfilesOperatorDaemon | None: ...

    def invalid_objects(self, kind: str, namespace: str) -> Sequence[InvalidObject]:
        """Stored objects of `kind` in `namespace` ("" for cluster-scoped kinds) that the models reject."""
        ...


@dataclass
class StaticSnapshot:
    """A Snapshot over fixed objects, for tests and benchmarks."""

    bindings: list[ProfileBinding] = field(default_factory=list)
    recordings: list[ProfileRecording] = field(default_factory=list)
    seccomp_profiles: list[SeccompProfile] = field(default_factory=list)
    selinux_profiles: list[SelinuxProfile] = field(default_factory=list)
    daemon: SecurityProfilesOperatorDaemon | None = None
    invalid: list[InvalidObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._seccomp = _by_name(self.seccomp_profiles)
        self._selinux = _by_name(self.selinux_profiles)
        namespaces = {b.metadata.namespace or "" for b in self.bindings}
        self._binding_indexes = {
            ns: BindingIndex.of(b for b in self.bindings if (b.metadata.namespace or "") == ns)
            for ns in namespaces
        }

    def binding_index(self, namespace: str) -> BindingIndex:
        return self._binding_indexes.get(namespace, EMPTY_BINDING_INDEX)

    def recordings_in(self, namespace: str) -> Sequence[ProfileRecording]:
        return [r for r in self.recordings if r.metadata.namespace == namespace]

    def seccomp_profile(self, name: str) -> SeccompProfile | None:
        return self._seccomp.get(name)

    def selinux_profile(self, name: str) -> SelinuxProfile | None:
        return self._selinux.get(name)

    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return self.daemon

    def invalid_objects(self, kind: str, namespace: str) -> Sequence[InvalidObject]:
        return [o for o in self.invalid if o.kind == kind and o.namespace == namespace]


_Profile = TypeVar("_Profile", SeccompProfile, SelinuxProfile)


EMPTY_BINDING_INDEX = BindingIndex({})


def _by_name(objects: Iterable[_Profile]) -> dict[str, _Profile]:
    return {o.metadata.name: o for o in objects if o.metadata.name}
