"""The spod's `allowedSyscalls` / `allowedSeccompActions` (docs 7.8.1): which SeccompProfiles break
them, and so are deleted.

The check is upstream's (inventory §4.4), applied when `allowedSyscalls` is not empty: for each
restricted action (`allowedSeccompActions`, default all of ALLOW, LOG, TRACE, NOTIFY) every syscall
listed under it must be allowed, and the default action must not be it; other actions (ERRNO, KILL,
TRAP) only take permissions away and are never restricted. A base profile's syscalls count as the
profile's own, since the node installs their union.

Upstream deletes the profiles that break the lists only when the lists change; here the check is
level-triggered (a crashed pass converges on the next one), so a profile created later that breaks
them is deleted too, which is what the lists ask for: the agent would never install it. Deletion goes
through the finalizers, so a profile in use stays Terminating until its pods are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from api.types import SeccompProfile, SeccompProfileSpec, SPODSpec, Syscall

RESTRICTABLE_ACTIONS: Final = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_NOTIFY")
# Base profiles may chain; upstream stops at this depth too.
MAX_BASE_DEPTH: Final = 15


def violations(
    spec: SeccompProfileSpec,
    daemon: SPODSpec,
    base_spec: Callable[[str], SeccompProfileSpec | None] = lambda _: None,
) -> list[str]:
    """What the profile does that the spod does not allow; empty when it complies."""
    allowed = set(daemon.allowed_syscalls or [])
    if not allowed:
        return []
    actions = list(daemon.allowed_seccomp_actions or RESTRICTABLE_ACTIONS)
    found = [f"seccomp action not allowed: {a}" for a in actions if a not in RESTRICTABLE_ACTIONS]
    syscalls = list(spec.syscalls or []) + _base_chain(spec.base_profile_name, base_spec)
    for action in (a for a in actions if a in RESTRICTABLE_ACTIONS):
        if spec.default_action == action:
            found.append(f"seccomp profile not allowed: defaultAction {action}")
        names = sorted({n for s in syscalls if s.action == action for n in s.names} - allowed)
        found += [f"syscall not allowed: {name}" for name in names]
    return found


def _base_chain(name: str | None, base_spec: Callable[[str], SeccompProfileSpec | None]) -> list[Syscall]:
    """The syscalls of the base profiles the cluster holds (an OCI base is the agent's to check)."""
    found: list[Syscall] = []
    seen: set[str] = set()
    while name and name not in seen and len(seen) < MAX_BASE_DEPTH:
        seen.add(name)
        base = base_spec(name)
        if base is None:
            break
        found += base.syscalls or []
        name = base.base_profile_name
    return found


def to_delete(
    candidates: Iterable[SeccompProfile],
    daemon: SPODSpec,
    lookup: Callable[[str], SeccompProfile | None],
) -> list[tuple[str, list[str]]]:
    """The candidates that break the spod's lists and are not being deleted yet, with the reasons;
    `lookup` finds any profile by name (the base profiles)."""
    if not daemon.allowed_syscalls:
        # Nothing is restricted (the default): this runs on every profile event, so not one profile
        # is looked at, or each event would cost a pass over all of them.
        return []

    def base(name: str) -> SeccompProfileSpec | None:
        profile = lookup(name)
        return profile.spec if profile is not None else None

    found = []
    for profile in sorted(candidates, key=lambda p: p.metadata.name or ""):
        name = profile.metadata.name
        if profile.metadata.deletion_timestamp or name is None:
            continue
        reasons = violations(profile.spec, daemon, base)
        if reasons:
            found.append((name, reasons))
    return found
