"""Profile status from node statuses: which nodes must report, the aggregate state, the Ready
condition, `localhostProfile` / `usage`, and the node statuses and finalizers of nodes that are gone.

Expected nodes are the nodes whose agent is alive, told by the heartbeat Lease each agent renews
(`spod-heartbeat-<node>` in the operator namespace). Upstream counted the spod DaemonSet's pods
instead, which does not exist under `spo up` (agents are host processes) and made a profile wait
forever for a node that left; here a node whose Lease expired no longer holds anything: its node
statuses are deleted and its `<node>-deleted` finalizer removed, so a profile deletion never hangs on
it (its agent, when it comes back, reports again).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from api import constants
from api.types import (
    Condition,
    ProfileState,
    SeccompProfile,
    SecurityProfileNodeStatus,
    heartbeat_lease_name,
    node_finalizer,
    seccomp_localhost_profile,
    selinux_usage,
)

# Ready condition per aggregate state (inventory §1.1).
_READY: Mapping[ProfileState, tuple[bool, str]] = {
    ProfileState.PENDING: (False, "Creating"),
    ProfileState.IN_PROGRESS: (False, "Creating"),
    ProfileState.INSTALLED: (True, "Available"),
    ProfileState.TERMINATING: (False, "Deleting"),
    ProfileState.ERROR: (False, "Unavailable"),
    ProfileState.PARTIAL: (False, "Unavailable"),
    ProfileState.DISABLED: (False, "Unavailable"),
}


def alive_nodes(leases: Iterable[Mapping[str, Any]], now: datetime.datetime) -> frozenset[str]:
    """The nodes whose heartbeat Lease was renewed within its duration (raw Lease objects)."""
    alive = set()
    for lease in leases:
        name = str((lease.get("metadata") or {}).get("name") or "")
        spec = lease.get("spec") or {}
        node = spec.get("holderIdentity")
        renewed = _parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds")
        if not node or renewed is None or not isinstance(duration, int):
            continue
        # Only a Lease named after its holder counts: any other Lease in the namespace is not a heartbeat.
        if name != heartbeat_lease_name(node):
            continue
        if now - renewed <= datetime.timedelta(seconds=duration):
            alive.add(node)
    return frozenset(alive)


def next_expiry(leases: Iterable[Mapping[str, Any]], now: datetime.datetime) -> float | None:
    """Seconds until the first heartbeat Lease still alive expires, None when none is alive."""
    left = []
    for lease in leases:
        spec = lease.get("spec") or {}
        renewed = _parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds")
        if renewed is not None and isinstance(duration, int):
            remaining = (renewed + datetime.timedelta(seconds=duration) - now).total_seconds()
            if remaining >= 0:
                left.append(remaining)
    # Just past the expiry, so that the Lease is seen expired then.
    return min(left) + 1.0 if left else None


def _parse_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class ProfileFacts:
    """What the aggregation needs to know of a profile."""

    kind: str
    name: str
    deleting: bool
    finalizers: tuple[str, ...]


@dataclass(frozen=True)
class DesiredStatus:
    state: ProfileState
    ready: Condition
    # `localhostProfile` for seccomp, `usage` for SELinux: the field name on the wire and its value.
    implementation: tuple[str, str]

    def status_fields(self) -> dict[str, Any]:
        """The status fields the reconciler owns, as they are applied."""
        field, value = self.implementation
        return {
            "status": self.state.value,
            "conditions": [self.ready.to_dict()],
            field: value,
        }


@dataclass(frozen=True)
class Cleanup:
    """Node statuses to delete and profile finalizers to drop, for nodes that are gone."""

    node_statuses: tuple[str, ...]
    finalizers: tuple[str, ...]


def aggregate(states: Iterable[ProfileState]) -> ProfileState:
    """The lowest state wins (Error < Terminating < Partial < Disabled < Pending < InProgress < Installed)."""
    return min(states, key=lambda s: s.rank, default=ProfileState.INSTALLED)


def desired_status(
    profile: ProfileFacts,
    node_statuses: Iterable[SecurityProfileNodeStatus],
    alive: frozenset[str],
) -> DesiredStatus:
    """The profile's status from its node statuses and the nodes that must report."""
    reported = {s.node_name: s for s in node_statuses if s.node_name in alive}
    states = [s.status or ProfileState.PENDING for s in reported.values()]
    # An alive node that has not reported yet has not installed the profile: it is Pending there.
    missing = sorted(alive - reported.keys())
    if missing or not alive:
        states.append(ProfileState.PENDING)
    if profile.deleting:
        states.append(ProfileState.TERMINATING)
    state = aggregate(states)
    ok, reason = _READY[state]
    return DesiredStatus(
        state=state,
        ready=Condition(
            type=constants.CONDITION_READY,
            status="True" if ok else "False",
            reason=reason,
            message=_message(state, reported, missing, alive),
        ),
        implementation=implementation_status(profile.kind, profile.name),
    )


def _message(
    state: ProfileState,
    reported: Mapping[str, SecurityProfileNodeStatus],
    missing: list[str],
    alive: frozenset[str],
) -> str:
    if not alive:
        return "no node agent is running"
    lagging = sorted(n for n, s in reported.items() if (s.status or ProfileState.PENDING) == state)
    if state == ProfileState.INSTALLED:
        return f"installed on {len(alive)} node(s)"
    parts = []
    if lagging:
        parts.append(f"{state.value} on {', '.join(lagging)}")
    if missing:
        parts.append(f"not reported by {', '.join(missing)}")
    return "; ".join(parts) or state.value


def implementation_status(kind: str, name: str) -> tuple[str, str]:
    if kind == SeccompProfile.KIND:
        return ("localhostProfile", seccomp_localhost_profile(name))
    return ("usage", selinux_usage(name))


def cleanup(
    profile: ProfileFacts, node_statuses: Iterable[SecurityProfileNodeStatus], alive: frozenset[str]
) -> Cleanup:
    """Node statuses of nodes that are not alive, and `<node>-deleted` finalizers no alive node owns."""
    gone_statuses = sorted(
        s.metadata.name for s in node_statuses if s.node_name not in alive and s.metadata.name
    )
    kept = {node_finalizer(n) for n in alive}
    gone_finalizers = sorted(
        f for f in profile.finalizers if f.endswith(constants.FINALIZER_NODE_DELETED_SUFFIX) and f not in kept
    )
    return Cleanup(tuple(gone_statuses), tuple(gone_finalizers))
