"""Profile status aggregation (reconciler/status.py): the truth table of states, Ready and the
implementation field, expected nodes from heartbeat Leases, and the clean-up of gone nodes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from api import constants
from api.types import ProfileState, SecurityProfileNodeStatus, heartbeat_lease_name, node_finalizer
from reconciler.status import ProfileFacts, aggregate, alive_nodes, cleanup, desired_status

S = ProfileState
NOW = datetime.datetime(2026, 12, 3, 9, 30, tzinfo=datetime.UTC)


def _node_status(node: str, state: ProfileState | None, profile: str = "p") -> SecurityProfileNodeStatus:
    return SecurityProfileNodeStatus.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha1",
            "kind": "SecurityProfileNodeStatus",
            "metadata": {"name": f"{profile}-{node}"},
            "nodeName": node,
            **({"status": state.value} if state is not None else {}),
        }
    )


def _facts(
    kind: str = "SeccompProfile", deleting: bool = False, finalizers: tuple[str, ...] = ()
) -> ProfileFacts:
    return ProfileFacts(kind=kind, name="p", deleting=deleting, finalizers=finalizers)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], S.INSTALLED),
        ([S.INSTALLED, S.INSTALLED], S.INSTALLED),
        ([S.INSTALLED, S.IN_PROGRESS], S.IN_PROGRESS),
        ([S.IN_PROGRESS, S.PENDING], S.PENDING),
        ([S.PENDING, S.DISABLED], S.DISABLED),
        ([S.DISABLED, S.PARTIAL], S.PARTIAL),
        ([S.PARTIAL, S.TERMINATING], S.TERMINATING),
        ([S.TERMINATING, S.ERROR, S.INSTALLED], S.ERROR),
    ],
)
def test_the_lowest_state_wins(states: list[ProfileState], expected: ProfileState) -> None:
    assert aggregate(states) == expected


# (node states reported by alive nodes a and b (None: no report), deleting) -> (state, Ready, reason)
TRUTH_TABLE = [
    ({"a": S.INSTALLED, "b": S.INSTALLED}, False, S.INSTALLED, "True", "Available"),
    ({"a": S.INSTALLED, "b": None}, False, S.PENDING, "False", "Creating"),
    ({"a": S.INSTALLED, "b": S.PENDING}, False, S.PENDING, "False", "Creating"),
    ({"a": S.INSTALLED, "b": S.IN_PROGRESS}, False, S.IN_PROGRESS, "False", "Creating"),
    ({"a": S.INSTALLED, "b": S.ERROR}, False, S.ERROR, "False", "Unavailable"),
    ({"a": S.PARTIAL, "b": S.PARTIAL}, False, S.PARTIAL, "False", "Unavailable"),
    ({"a": S.DISABLED, "b": S.DISABLED}, False, S.DISABLED, "False", "Unavailable"),
    ({"a": S.TERMINATING, "b": S.INSTALLED}, False, S.TERMINATING, "False", "Deleting"),
    ({"a": S.INSTALLED, "b": S.INSTALLED}, True, S.TERMINATING, "False", "Deleting"),
    ({"a": S.ERROR, "b": S.INSTALLED}, True, S.ERROR, "False", "Unavailable"),
]


@pytest.mark.parametrize(("reports", "deleting", "state", "ready", "reason"), TRUTH_TABLE)
def test_status_truth_table(
    reports: dict[str, ProfileState | None], deleting: bool, state: ProfileState, ready: str, reason: str
) -> None:
    statuses = [_node_status(node, s) for node, s in reports.items() if s is not None]
    desired = desired_status(_facts(deleting=deleting), statuses, frozenset(reports))
    assert (desired.state, desired.ready.status, desired.ready.reason) == (state, ready, reason)
    assert desired.ready.type == constants.CONDITION_READY


def test_a_node_status_without_a_state_counts_as_pending() -> None:
    desired = desired_status(_facts(), [_node_status("a", None)], frozenset({"a"}))
    assert desired.state == S.PENDING


def test_statuses_of_nodes_that_are_gone_do_not_count() -> None:
    statuses = [_node_status("a", S.INSTALLED), _node_status("gone", S.ERROR)]
    assert desired_status(_facts(), statuses, frozenset({"a"})).state == S.INSTALLED


def test_without_any_agent_the_profile_is_pending_and_says_why() -> None:
    desired = desired_status(_facts(), [], frozenset())
    assert (desired.state, desired.ready.reason) == (S.PENDING, "Creating")
    assert desired.ready.message == "no node agent is running"


def test_the_message_names_the_nodes_that_hold_the_state_back() -> None:
    statuses = [_node_status("a", S.INSTALLED), _node_status("b", S.ERROR)]
    desired = desired_status(_facts(), statuses, frozenset({"a", "b", "c"}))
    assert desired.ready.message == "Error on b; not reported by c"


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("SeccompProfile", "localhostProfile", "operator/p.json"),
        ("SelinuxProfile", "usage", "p.process"),
        ("RawSelinuxProfile", "usage", "p.process"),
    ],
)
def test_implementation_field_per_kind(kind: str, field: str, value: str) -> None:
    fields = desired_status(_facts(kind), [_node_status("a", S.INSTALLED)], frozenset({"a"})).status_fields()
    assert fields[field] == value
    assert fields["status"] == "Installed"
    assert fields["conditions"][0]["status"] == "True"


def _lease(
    node: str, renewed: datetime.datetime | str | None, duration: Any = 40, name: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"holderIdentity": node, "leaseDurationSeconds": duration}
    if renewed is not None:
        spec["renewTime"] = (
            renewed if isinstance(renewed, str) else renewed.isoformat().replace("+00:00", "Z")
        )
    return {"metadata": {"name": name or heartbeat_lease_name(node)}, "spec": spec}


@pytest.mark.parametrize(
    ("lease", "alive"),
    [
        (_lease("a", NOW - datetime.timedelta(seconds=5)), True),
        (_lease("a", NOW - datetime.timedelta(seconds=40)), True),
        (_lease("a", NOW - datetime.timedelta(seconds=41)), False),
        (_lease("a", "2026-12-03T09:29:59.123456Z"), True),
        (_lease("a", None), False),
        (_lease("a", "yesterday"), False),
        (_lease("a", NOW, duration=None), False),
        (_lease("a", NOW, name=constants.LEADER_LEASE), False),
    ],
)
def test_alive_nodes_from_heartbeat_leases(lease: dict[str, Any], alive: bool) -> None:
    assert alive_nodes([lease], NOW) == (frozenset({"a"}) if alive else frozenset())


def test_cleanup_of_gone_nodes() -> None:
    long_node = "n" * 70
    finalizers = (
        node_finalizer("a"),
        node_finalizer("gone"),
        node_finalizer(long_node),
        constants.FINALIZER_IN_USE,
        constants.FINALIZER_PARTIAL_PROFILE,
    )
    statuses = [_node_status("a", S.INSTALLED), _node_status("gone", S.INSTALLED)]
    found = cleanup(_facts(finalizers=finalizers), statuses, frozenset({"a", long_node}))
    assert found.node_statuses == ("p-gone",)
    assert found.finalizers == ("gone-deleted",)


def test_nothing_to_clean_up_when_every_node_is_alive() -> None:
    statuses = [_node_status("a", S.INSTALLED)]
    found = cleanup(_facts(finalizers=(node_finalizer("a"),)), statuses, frozenset({"a"}))
    assert (found.node_statuses, found.finalizers) == ((), ())
