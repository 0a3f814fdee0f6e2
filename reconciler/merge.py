"""Recording merge (`mergeStrategy: containers`): the partial profiles a recording produced, one per
replica and container, become one profile per container named `<recording>-<container>`.

Seccomp: the union of the syscalls, one entry per action; a syscall recorded under different actions
keeps the least restrictive one (KILL_PROCESS < KILL/KILL_THREAD < TRAP < ERRNO < NOTIFY < TRACE <
LOG < ALLOW), as upstream HEAD does, since every replica needed it to run. A syscall allowed
unconditionally by one partial stays unconditional. SELinux: the union of the allow rules. The rest
of the spec (defaultAction, architectures, flags, inherit, disabled) is the first partial's, in name
order so that the result does not depend on listing order.

Upstream 0.10 listed the cluster-scoped partials inside the recording's namespace and so never
merged anything (inventory D8); here they are found by their recording-id and recording-namespace
labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from api import constants, kinds
from api.constants import SECCOMP_ACTION_RESTRICTIVENESS as RANK
from api.types import (
    ObjectMeta,
    ProfileRecording,
    SeccompProfile,
    SeccompProfileSpec,
    SelinuxProfile,
    SelinuxProfileSpec,
    Syscall,
)

PartialProfile = SeccompProfile | SelinuxProfile
PARTIAL_KINDS = (kinds.SECCOMP_PROFILE, kinds.SELINUX_PROFILE)


def partial_selector(recording: ProfileRecording) -> dict[str, str]:
    """The labels every partial profile of the recording carries."""
    return {
        constants.LABEL_RECORDING_ID: recording.metadata.name or "",
        constants.LABEL_RECORDING_NAMESPACE: recording.metadata.namespace or "",
        constants.LABEL_PARTIAL: "true",
    }


def is_partial_of(recording: ProfileRecording, profile: PartialProfile) -> bool:
    labels = profile.metadata.labels or {}
    wanted = partial_selector(recording)
    # Any value marks a profile partial (inventory §1.1), the recorder writes "true".
    return constants.LABEL_PARTIAL in labels and all(
        labels.get(k) == v for k, v in wanted.items() if k != constants.LABEL_PARTIAL
    )


def merge_syscalls(spec_lists: Iterable[Sequence[Syscall] | None]) -> list[Syscall]:
    """The union of syscall lists; per syscall the least restrictive action wins."""
    # name -> (action, errnoRet, the args variants; () when unconditional)
    chosen: dict[str, tuple[str, int | None, list[Any] | None]] = {}
    for syscalls in spec_lists:
        for entry in syscalls or []:
            args = [a.to_dict() for a in entry.args] if entry.args else None
            for name in entry.names:
                previous = chosen.get(name)
                if previous is None or RANK[entry.action] > RANK[previous[0]]:
                    chosen[name] = (entry.action, entry.errno_ret, [args] if args else None)
                elif entry.action == previous[0] and previous[2] is not None:
                    # Same action: unconditional wins, otherwise every condition is kept.
                    kept = None if args is None else _add(previous[2], args)
                    chosen[name] = (previous[0], previous[1], kept)
    grouped: dict[tuple[str, int | None], list[str]] = {}
    conditional: list[Syscall] = []
    for name in sorted(chosen):
        action, errno_ret, variants = chosen[name]
        if variants is None:
            grouped.setdefault((action, errno_ret), []).append(name)
        else:
            conditional += [
                Syscall.model_validate({"names": [name], "action": action, "errnoRet": errno_ret, "args": v})
                for v in variants
            ]
    plain = [
        Syscall.model_validate({"names": names, "action": action, "errnoRet": errno_ret})
        for (action, errno_ret), names in sorted(
            grouped.items(), key=lambda item: (-RANK[item[0][0]], item[0][0], item[0][1] or 0)
        )
    ]
    return plain + conditional


def _add(variants: list[Any], args: list[Any]) -> list[Any]:
    return variants if args in variants else [*variants, args]


def merge_seccomp(partials: Sequence[SeccompProfile]) -> SeccompProfileSpec:
    first = partials[0].spec
    merged = first.model_copy(deep=True)
    merged.syscalls = merge_syscalls(p.spec.syscalls for p in partials) or None
    return merged


def merge_selinux(partials: Sequence[SelinuxProfile]) -> SelinuxProfileSpec:
    merged = partials[0].spec.model_copy(deep=True)
    allow: dict[str, dict[str, list[str]]] = {}
    for partial in partials:
        for target, classes in (partial.spec.allow or {}).items():
            for tclass, permissions in classes.items():
                have = allow.setdefault(target, {}).setdefault(tclass, [])
                have += [p for p in permissions if p not in have]
    merged.allow = {t: {c: sorted(p) for c, p in cs.items()} for t, cs in allow.items()} or None
    return merged


@dataclass(frozen=True)
class MergePlan:
    merged: tuple[dict[str, Any], ...]  # whole profiles to apply
    partials: tuple[str, ...]  # partial profile names to delete once the merged ones are stored


def plan_merge(recording: ProfileRecording, profiles: Iterable[PartialProfile]) -> MergePlan:
    """The merged profiles of a deleted recording, from all profiles of its kind.

    Each pass merges the partials it sees into the merged profile already stored, so that passes which
    each see only some partials (the cache may not hold them all yet, a pod may end later) add up to
    the union instead of replacing each other. Partials being deleted were merged by an earlier pass."""
    profiles = list(profiles)
    partials = sorted(
        (p for p in profiles if is_partial_of(recording, p) and not p.metadata.deletion_timestamp),
        key=lambda p: p.metadata.name or "",
    )
    stored = {p.metadata.name: p for p in profiles if _is_merged_of(recording, p)}
    by_container: dict[str, list[PartialProfile]] = {}
    for partial in partials:
        container = (partial.metadata.labels or {}).get(constants.LABEL_CONTAINER_ID) or (
            partial.metadata.name or ""
        )
        by_container.setdefault(container, []).append(partial)
    merged = []
    for container, group in sorted(by_container.items()):
        earlier = stored.get(f"{recording.metadata.name}-{container}")
        merged.append(_merged_profile(recording, container, group + ([earlier] if earlier else [])))
    return MergePlan(tuple(merged), tuple(p.metadata.name or "" for p in partials))


def _is_merged_of(recording: ProfileRecording, profile: PartialProfile) -> bool:
    labels = profile.metadata.labels or {}
    return (
        constants.LABEL_PARTIAL not in labels
        and not profile.metadata.deletion_timestamp
        and labels.get(constants.LABEL_RECORDING_ID) == recording.metadata.name
        and labels.get(constants.LABEL_RECORDING_NAMESPACE) == recording.metadata.namespace
    )


def _merged_profile(
    recording: ProfileRecording, container: str, group: list[PartialProfile]
) -> dict[str, Any]:
    spec: SeccompProfileSpec | SelinuxProfileSpec
    if isinstance(group[0], SeccompProfile):
        model: type[PartialProfile] = SeccompProfile
        spec = merge_seccomp([p for p in group if isinstance(p, SeccompProfile)])
    else:
        model = SelinuxProfile
        spec = merge_selinux([p for p in group if isinstance(p, SelinuxProfile)])
    profile = model(
        api_version=f"{constants.GROUP}/{model.VERSION}",
        kind=model.KIND,
        metadata=ObjectMeta(
            name=f"{recording.metadata.name}-{container}",
            labels={
                constants.LABEL_RECORDING_ID: recording.metadata.name or "",
                constants.LABEL_RECORDING_NAMESPACE: recording.metadata.namespace or "",
            },
        ),
        spec=spec,
    )
    return profile.to_dict()
