"""The controller runtime against the real apiserver: the apply path, leader election, a controller
fed by a cache and retried on errors."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from kubernetes import client

from api import kinds
from api.kube import ResourceCache
from api.types import ProfileBinding
from reconciler.runtime import (
    Controller,
    LeaderElector,
    LeaseTiming,
    Manager,
    Watch,
    apply,
    own_key,
)
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

FAST = LeaseTiming(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)


def _lease(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": kinds.LEASE.api_version,
        "kind": kinds.LEASE.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"leaseDurationSeconds": 7},
    }


def test_apply_owns_only_its_fields_and_a_repeat_does_not_write(
    kube: client.ApiClient, namespace: str
) -> None:
    leases = client.CoordinationV1Api(kube)
    first = apply(kube, kinds.LEASE, _lease(namespace, "x", {"ours": "1", "gone-later": "1"}))
    leases.patch_namespaced_lease("x", namespace, {"metadata": {"labels": {"theirs": "1"}}})
    metadata = leases.read_namespaced_lease("x", namespace).metadata
    assert metadata is not None
    version = metadata.resource_version

    again = apply(kube, kinds.LEASE, _lease(namespace, "x", {"ours": "1", "gone-later": "1"}))
    assert again["metadata"]["resourceVersion"] == version, "an unchanged apply wrote"

    dropped = apply(kube, kinds.LEASE, _lease(namespace, "x", {"ours": "1"}))
    assert dropped["metadata"]["labels"] == {"ours": "1", "theirs": "1"}
    assert first["metadata"]["uid"] == dropped["metadata"]["uid"]


def test_one_leader_at_a_time_and_takeover_after_the_lease_expires(
    kube: client.ApiClient, namespace: str
) -> None:
    lease_name = f"lock-{uuid.uuid4().hex[:6]}"
    first = LeaderElector(kube, namespace, "first", FAST, name=lease_name)
    second = LeaderElector(kube, namespace, "second", FAST, name=lease_name)
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    assert first.try_acquire_or_renew(), "the holder could not renew"
    assert not second.try_acquire_or_renew()
    # The first stops renewing (crashed): the second sees the record unchanged for the lease duration.
    eventually(second.try_acquire_or_renew, timeout=FAST.lease_duration * 3, what="takeover")
    assert second.is_leader()
    assert not first.try_acquire_or_renew(), "the old leader took the lease back"
    assert not first.is_leader()
    holder = client.CoordinationV1Api(kube).read_namespaced_lease(lease_name, namespace).spec
    assert holder is not None
    assert (holder.holder_identity, holder.lease_transitions) == ("second", 1)


def test_release_lets_a_standby_lead_at_once(kube: client.ApiClient, namespace: str) -> None:
    lease_name = f"lock-{uuid.uuid4().hex[:6]}"
    first = LeaderElector(kube, namespace, "first", FAST, name=lease_name)
    second = LeaderElector(kube, namespace, "second", LeaseTiming(600, 400, 1), name=lease_name)
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    first.release()
    assert second.try_acquire_or_renew()


def test_a_controller_reconciles_watched_objects_and_retries_failures(
    kube: client.ApiClient, namespace: str
) -> None:
    seen: list[str] = []
    failed_once: set[str] = set()
    lock = threading.Lock()

    def reconcile(key: str) -> None:
        with lock:
            if key not in failed_once:
                failed_once.add(key)
                raise RuntimeError("first attempt fails")
            seen.append(key)

    manager = Manager(
        elector=LeaderElector(kube, namespace, "only", FAST, name=f"lock-{uuid.uuid4().hex[:6]}")
    )
    bindings = manager.cache(ResourceCache(kube, kinds.PROFILE_BINDING, ProfileBinding))
    manager.add(Controller("bindings", reconcile, [Watch(bindings, own_key)], workers=2))
    manager.start()
    try:
        eventually(lambda: manager.ready() and manager.leading, what="ready and leading")
        body = {
            "apiVersion": kinds.PROFILE_BINDING.api_version,
            "kind": kinds.PROFILE_BINDING.kind,
            "metadata": {"name": "b"},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "image": "nginx"},
        }
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            kinds.PROFILE_BINDING.group, kinds.PROFILE_BINDING.version, namespace, "profilebindings", body
        )
        eventually(lambda: f"{namespace}/b" in seen, what="reconciled after one failure")
        errors = manager.registry.get_sample_value(
            "controller_runtime_reconcile_errors_total", {"controller": "bindings"}
        )
        assert errors is not None and errors >= 1
    finally:
        manager.stop()
    assert not manager.leading
