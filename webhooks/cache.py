"""The webhook's Snapshot backed by list+watch caches, so admission never waits on the API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client

from api import constants, kinds
from api.kube import ResourceCache, api_client
from api.types import (
    InvalidObject,
    ProfileBinding,
    ProfileRecording,
    RawSelinuxProfile,
    SeccompProfile,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
)
from webhooks.snapshot import BindingIndex, Snapshot


class CachedSnapshot:
    def __init__(self, api: client.ApiClient, operator_namespace: str) -> None:
        self._operator_namespace = operator_namespace
        self._binding_indexes: dict[str, tuple[tuple[ProfileBinding, ...], BindingIndex]] = {}
        self.bindings = ResourceCache(api, kinds.PROFILE_BINDING, ProfileBinding)
        self.recordings = ResourceCache(api, kinds.PROFILE_RECORDING, ProfileRecording)
        self.seccomp_profiles = ResourceCache(api, kinds.SECCOMP_PROFILE, SeccompProfile)
        self.selinux_profiles = ResourceCache(api, kinds.SELINUX_PROFILE, SelinuxProfile)
        # Part of readiness so that a replica only answers once it sees every profile kind.
        self.raw_selinux_profiles = ResourceCache(api, kinds.RAW_SELINUX_PROFILE, RawSelinuxProfile)
        self.daemons = ResourceCache(api, kinds.SPOD, SecurityProfilesOperatorDaemon, operator_namespace)
        self._caches: tuple[ResourceCache[Any], ...] = (
            self.bindings,
            self.recordings,
            self.seccomp_profiles,
            self.selinux_profiles,
            self.raw_selinux_profiles,
            self.daemons,
        )
        self._by_kind = {cache.kind.kind: cache for cache in self._caches}

    def start(self) -> CachedSnapshot:
        for cache in self._caches:
            cache.start()
        return self

    def stop(self) -> None:
        for cache in self._caches:
            cache.stop()

    def synced(self) -> bool:
        return all(cache.has_synced() for cache in self._caches)

    def binding_index(self, namespace: str) -> BindingIndex:
        # The cache hands out a new tuple whenever bindings change, so the tuple's identity tells
        # whether the index built from it is still current.
        bindings = self.bindings.in_namespace(namespace)
        cached = self._binding_indexes.get(namespace)
        if cached is None or cached[0] is not bindings:
            cached = (bindings, BindingIndex.of(bindings))
            self._binding_indexes[namespace] = cached
        return cached[1]

    def recordings_in(self, namespace: str) -> Sequence[ProfileRecording]:
        return self.recordings.in_namespace(namespace)

    def seccomp_profile(self, name: str) -> SeccompProfile | None:
        return self.seccomp_profiles.get(name)

    def selinux_profile(self, name: str) -> SelinuxProfile | None:
        return self.selinux_profiles.get(name)

    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return self.daemons.get(constants.SPOD_NAME, self._operator_namespace)

    def invalid_objects(self, kind: str, namespace: str) -> Sequence[InvalidObject]:
        cache = self._by_kind.get(kind)
        return cache.invalid_in(namespace) if cache is not None else ()


def start_cached_snapshot(kubeconfig: str | None, namespace: str) -> tuple[Snapshot, Callable[[], bool]]:
    snapshot = CachedSnapshot(api_client(kubeconfig), namespace).start()
    return snapshot, snapshot.synced
