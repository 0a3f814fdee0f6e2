"""Pure seccomp decisions of the agent: base-profile resolution and union, the spod's allow-lists, and
the bytes of the node file. Observed objects in, desired content or a reasoned error out; no I/O.

Differences from upstream (inventory §4.4-4.5): the union is HEAD's (one name per entry, the less
restrictive action wins, sorted by name) even for v1beta1; a cycle of base profiles is an error of its
own rather than the depth limit; `oci://` bases are reported as unsupported instead of pulled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.constants import SECCOMP_ACTION_RESTRICTIVENESS as RANK
from api.types import SeccompAction, SeccompProfileSpec, Syscall, SyscallArg

MAX_BASE_DEPTH = 15
OCI_PREFIX = "oci://"

# The actions the spod's allow-lists can restrict; the others only take rights away.
RESTRICTABLE_ACTIONS: tuple[SeccompAction, ...] = (
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_NOTIFY",
)


@dataclass(frozen=True)
class ProfileError(Exception):
    """Why a profile cannot be installed: `reason` is the metric/event reason of docs table 7.1."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


INVALID = "InvalidSeccompProfile"
NOT_ALLOWED = "ProfileNotAllowed"
CANNOT_PULL = "CannotPullSeccompProfile"

SpecLookup = Callable[[str], SeccompProfileSpec | None]


def resolve_syscalls(name: str, spec: SeccompProfileSpec, lookup: SpecLookup) -> list[Syscall]:
    """The profile's syscalls united with those of its base profiles, recursively.

    Only the bases' syscalls count (not their default action, architectures or flags), as upstream."""
    chain = [name]
    layers = [spec.syscalls or []]
    base = spec.base_profile_name
    while base:
        if base.startswith(OCI_PREFIX):
            raise ProfileError(CANNOT_PULL, f"base profile {base!r}: OCI base profiles are not supported yet")
        if base in chain:
            cycle = " -> ".join([*chain[chain.index(base) :], base])
            raise ProfileError(INVALID, f"base profiles form a cycle: {cycle}")
        if len(chain) > MAX_BASE_DEPTH:
            raise ProfileError(INVALID, f"base profiles nest deeper than {MAX_BASE_DEPTH} levels")
        base_spec = lookup(base)
        if base_spec is None:
            raise ProfileError(INVALID, f"base profile {base!r} of {chain[-1]!r} does not exist")
        chain.append(base)
        layers.append(base_spec.syscalls or [])
        base = base_spec.base_profile_name
    if len(layers) == 1:
        return list(layers[0])
    merged: list[Syscall] = []
    for layer in reversed(layers):
        merged = union_syscalls(merged, layer)
    return merged


def union_syscalls(first: Sequence[Syscall], second: Sequence[Syscall]) -> list[Syscall]:
    """One entry per syscall name, sorted by name; where both sides name a syscall, the less
    restrictive action wins (with its errnoRet), and the args are united (none on either side: none)."""
    by_name: dict[str, Syscall] = {}
    for entry in (*first, *second):
        for name in entry.names:
            single = Syscall(names=[name], action=entry.action, errno_ret=entry.errno_ret, args=entry.args)
            current = by_name.get(name)
            by_name[name] = single if current is None else _less_restrictive(current, single)
    return [by_name[name] for name in sorted(by_name)]


def _less_restrictive(a: Syscall, b: Syscall) -> Syscall:
    if RANK[a.action] != RANK[b.action]:
        return a if RANK[a.action] > RANK[b.action] else b
    return a.model_copy(update={"args": _union_args(a.args, b.args)})


def _union_args(a: list[SyscallArg] | None, b: list[SyscallArg] | None) -> list[SyscallArg] | None:
    if not a or not b:
        return None  # one side allows the syscall unconditionally
    merged = list(a)
    merged.extend(arg for arg in b if arg not in merged)
    return merged


def check_allowed(
    spec: SeccompProfileSpec,
    syscalls: Sequence[Syscall],
    allowed_syscalls: Sequence[str] | None,
    allowed_actions: Sequence[str] | None,
) -> None:
    """Raise ProfileNotAllowed when the resolved profile grants what the spod's allow-lists do not.
    Nothing is checked while `allowedSyscalls` is empty (docs 7.8.1)."""
    if not allowed_syscalls:
        return
    actions = list(allowed_actions or RESTRICTABLE_ACTIONS)
    for action in actions:
        if action not in RESTRICTABLE_ACTIONS:
            raise ProfileError(NOT_ALLOWED, f"seccomp action not allowed: {action}")
    allowed = set(allowed_syscalls)
    for action in actions:
        if spec.default_action == action:
            raise ProfileError(
                NOT_ALLOWED, f"seccomp profile not allowed: defaultAction {action} is a restricted action"
            )
        for entry in syscalls:
            if entry.action != action:
                continue
            for name in entry.names:
                if name not in allowed:
                    raise ProfileError(
                        NOT_ALLOWED, f"syscall not allowed: {name} (action {action}, spod allowedSyscalls)"
                    )


def render(spec: SeccompProfileSpec, syscalls: Sequence[Syscall]) -> bytes:
    """The node file: the spec with the resolved syscalls, compact, keys in the CRD's field order and
    empty or zero values left out (inventory §4.2), so it is byte-stable across agents and restarts."""
    document: dict[str, Any] = {}
    if spec.disabled:
        document["disabled"] = True
    if spec.base_profile_name:
        document["baseProfileName"] = spec.base_profile_name
    document["defaultAction"] = spec.default_action
    if spec.architectures:
        document["architectures"] = spec.architectures
    if spec.listener_path:
        document["listenerPath"] = spec.listener_path
    if spec.listener_metadata:
        document["listenerMetadata"] = spec.listener_metadata
    if syscalls:
        document["syscalls"] = [_syscall_document(entry) for entry in syscalls]
    if spec.flags:
        document["flags"] = spec.flags
    return orjson.dumps(document)


def syscalls_annotation(syscalls: Sequence[Syscall]) -> str:
    """The `syscalls` annotation: the JSON of the resolved entries."""
    return orjson.dumps([_syscall_document(entry) for entry in syscalls]).decode()


def _syscall_document(entry: Syscall) -> dict[str, Any]:
    document: dict[str, Any] = {"names": entry.names, "action": entry.action}
    if entry.errno_ret:
        document["errnoRet"] = entry.errno_ret
    if entry.args:
        document["args"] = [_arg_document(arg) for arg in entry.args]
    return document


def _arg_document(arg: SyscallArg) -> dict[str, Any]:
    document: dict[str, Any] = {"index": arg.index}
    if arg.value:
        document["value"] = arg.value
    if arg.value_two:
        document["valueTwo"] = arg.value_two
    document["op"] = arg.op
    return document
