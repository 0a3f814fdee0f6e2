"""The read-only view of cluster objects that admission decisions are computed from.

The webhook process fills it from list+watch caches; tests fill it from literals. Decisions never
call the Kubernetes API, so every replica answers the same request the same way.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from api.types import (
    ProfileBinding,
    ProfileRecording,
    SeccompProfile,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)


class Snapshot(Protocol):
    def bindings_in(self, namespace: str) -> Sequence[ProfileBinding]: ...

    def recordings_in(self, namespace: str) -> Sequence[ProfileRecording]: ...

    def seccomp_profile(self, name: str) -> SeccompProfile | None: ...

    def selinux_profile(self, name: str) -> SelinuxProfile | None: ...

    def spod(self) -> SecurityProfilesOperatorDaemon | None: ...


@dataclass
class StaticSnapshot:
    """A Snapshot over fixed objects, for tests and benchmarks."""

    bindings: list[ProfileBinding] = field(default_factory=list)
    recordings: list[ProfileRecording] = field(default_factory=list)
    seccomp_profiles: list[SeccompProfile] = field(default_factory=list)
    selinux_profiles: list[SelinuxProfile] = field(default_factory=list)
    daemon: SecurityProfilesOperatorDaemon | None = None

    def __post_init__(self) -> None:
        self._seccomp = _by_name(self.seccomp_profiles)
        self._selinux = _by_name(self.selinux_profiles)

    def bindings_in(self, namespace: str) -> Sequence[ProfileBinding]:
        return [b for b in self.bindings if b.metadata.namespace == namespace]

    def recordings_in(self, namespace: str) -> Sequence[ProfileRecording]:
        return [r for r in self.recordings if r.metadata.namespace == namespace]

    def seccomp_profile(self, name: str) -> SeccompProfile | None:
        return self._seccomp.get(name)

    def selinux_profile(self, name: str) -> SelinuxProfile | None:
        return self._selinux.get(name)

    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return self.daemon


_Profile = TypeVar("_Profile", SeccompProfile, SelinuxProfile)


def _by_name(objects: Iterable[_Profile]) -> dict[str, _Profile]:
    return {o.metadata.name: o for o in objects if o.metadata.name}
