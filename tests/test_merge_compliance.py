"""Recording merge of partial profiles (reconciler/merge.py) and the spod's allowedSyscalls /
allowedSeccompActions check (reconciler/compliance.py)."""

from __future__ import annotations

from typing import Any

import pytest

from api import constants
from api.types import ProfileRecording, SeccompProfile, SeccompProfileSpec, SelinuxProfile, SPODSpec, Syscall
from reconciler.compliance import to_delete, violations
from reconciler.merge import merge_syscalls, plan_merge


def _recording(name: str = "rec", namespace: str = "ns") -> ProfileRecording:
    return ProfileRecording.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha1",
            "kind": "ProfileRecording",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "kind": "SeccompProfile",
                "recorder": "logs",
                "mergeStrategy": "containers",
                "podSelector": {},
            },
        }
    )


def _labels(
    container: str, recording: str = "rec", namespace: str = "ns", partial: bool = True
) -> dict[str, str]:
    labels = {
        constants.LABEL_RECORDING_ID: recording,
        constants.LABEL_RECORDING_NAMESPACE: namespace,
        constants.LABEL_CONTAINER_ID: container,
    }
    if partial:
        labels[constants.LABEL_PARTIAL] = "true"
    return labels


def _seccomp(
    name: str,
    syscalls: list[dict[str, Any]],
    labels: dict[str, str] | None = None,
    default: str = "SCMP_ACT_ERRNO",
) -> SeccompProfile:
    return SeccompProfile.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1beta1",
            "kind": "SeccompProfile",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"defaultAction": default, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": syscalls},
        }
    )


def _selinux(name: str, allow: dict[str, Any], labels: dict[str, str]) -> SelinuxProfile:
    return SelinuxProfile.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha2",
            "kind": "SelinuxProfile",
            "metadata": {"name": name, "labels": labels},
            "spec": {"allow": allow},
        }
    )


def _syscalls(*entries: tuple[str, list[str]]) -> list[Syscall]:
    return [Syscall.model_validate({"action": a, "names": n}) for a, n in entries]


def _flat(syscalls: list[Syscall]) -> list[tuple[str, list[str]]]:
    return [(s.action, s.names) for s in syscalls]


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        # union per action, names sorted, less restrictive actions first
        (
            [
                _syscalls(("SCMP_ACT_ALLOW", ["write", "read"])),
                _syscalls(("SCMP_ACT_ALLOW", ["read", "open"])),
            ],
            [("SCMP_ACT_ALLOW", ["open", "read", "write"])],
        ),
        # a conflict: the less restrictive action wins, whichever side has it
        (
            [
                _syscalls(("SCMP_ACT_ERRNO", ["bpf"]), ("SCMP_ACT_ALLOW", ["read"])),
                _syscalls(("SCMP_ACT_LOG", ["bpf"])),
            ],
            [("SCMP_ACT_ALLOW", ["read"]), ("SCMP_ACT_LOG", ["bpf"])],
        ),
        (
            [_syscalls(("SCMP_ACT_ALLOW", ["bpf"])), _syscalls(("SCMP_ACT_KILL_PROCESS", ["bpf"]))],
            [("SCMP_ACT_ALLOW", ["bpf"])],
        ),
        ([None, []], []),
    ],
)
def test_merge_syscalls(lists: list[list[Syscall] | None], expected: list[tuple[str, list[str]]]) -> None:
    assert _flat(merge_syscalls(lists)) == expected


def test_merge_keeps_conditions_unless_one_side_is_unconditional() -> None:
    arg = {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}
    conditional = [Syscall.model_validate({"action": "SCMP_ACT_ALLOW", "names": ["ioctl"], "args": [arg]})]
    assert [s.args is not None for s in merge_syscalls([conditional, conditional])] == [True]
    unconditional = _syscalls(("SCMP_ACT_ALLOW", ["ioctl"]))
    merged = merge_syscalls([conditional, unconditional])
    assert _flat(merged) == [("SCMP_ACT_ALLOW", ["ioctl"])] and merged[0].args is None


def test_plan_merge_one_profile_per_container_with_the_union() -> None:
    profiles = [
        _seccomp(
            "rec-nginx-abcde", [{"action": "SCMP_ACT_ALLOW", "names": ["read", "write"]}], _labels("nginx")
        ),
        _seccomp("rec-nginx-fghij", [{"action": "SCMP_ACT_ALLOW", "names": ["open"]}], _labels("nginx")),
        _seccomp(
            "rec-redis-abcde", [{"action": "SCMP_ACT_ALLOW", "names": ["epoll_wait"]}], _labels("redis")
        ),
        # not partials of this recording: another namespace's recording of the same name, a merged one
        _seccomp(
            "rec-nginx-other",
            [{"action": "SCMP_ACT_ALLOW", "names": ["bpf"]}],
            _labels("nginx", namespace="x"),
        ),
        _seccomp(
            "rec-nginx", [{"action": "SCMP_ACT_ALLOW", "names": ["read"]}], _labels("nginx", partial=False)
        ),
    ]
    plan = plan_merge(_recording(), profiles)
    assert plan.partials == ("rec-nginx-abcde", "rec-nginx-fghij", "rec-redis-abcde")
    assert [p["metadata"]["name"] for p in plan.merged] == ["rec-nginx", "rec-redis"]
    nginx = SeccompProfile.model_validate(plan.merged[0])
    assert _flat(nginx.spec.syscalls or []) == [("SCMP_ACT_ALLOW", ["open", "read", "write"])]
    assert nginx.spec.default_action == "SCMP_ACT_ERRNO"
    assert nginx.metadata.labels == {
        constants.LABEL_RECORDING_ID: "rec",
        constants.LABEL_RECORDING_NAMESPACE: "ns",
    }


def test_plan_merge_selinux_unions_allow_rules() -> None:
    profiles = [
        _selinux(
            "rec-nginx-a",
            {"@self": {"tcp_socket": ["listen"]}, "var_log_t": {"file": ["open"]}},
            _labels("nginx"),
        ),
        _selinux("rec-nginx-b", {"@self": {"tcp_socket": ["accept", "listen"]}}, _labels("nginx")),
    ]
    plan = plan_merge(_recording(), profiles)
    merged = SelinuxProfile.model_validate(plan.merged[0])
    assert merged.metadata.name == "rec-nginx"
    assert merged.spec.allow == {
        "@self": {"tcp_socket": ["accept", "listen"]},
        "var_log_t": {"file": ["open"]},
    }


def test_plan_merge_adds_to_the_merged_profile_of_an_earlier_pass() -> None:
    """A pass that saw only some partials, then one that sees the others: the union, not the last ones."""
    first = [
        _seccomp("rec-nginx-a", [{"action": "SCMP_ACT_ALLOW", "names": ["read", "write"]}], _labels("nginx"))
    ]
    stored = SeccompProfile.model_validate(plan_merge(_recording(), first).merged[0])
    later = [_seccomp("rec-nginx-b", [{"action": "SCMP_ACT_ALLOW", "names": ["mkdir"]}], _labels("nginx"))]
    plan = plan_merge(_recording(), [*later, stored])
    assert plan.partials == ("rec-nginx-b",)
    merged = SeccompProfile.model_validate(plan.merged[0])
    assert _flat(merged.spec.syscalls or []) == [("SCMP_ACT_ALLOW", ["mkdir", "read", "write"])]
    # another recording's merged profile of the same name pattern is not ours
    foreign = stored.model_copy(deep=True)
    foreign.metadata.labels = _labels("nginx", namespace="x", partial=False)
    assert plan_merge(_recording(), [*later, foreign]).merged[0]["spec"]["syscalls"] == [
        {"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}
    ]


def test_plan_merge_leaves_partials_being_deleted_alone() -> None:
    """Merged by an earlier pass: one left Terminating (its finalizers) must not shrink the union."""
    terminating = _seccomp(
        "rec-nginx-abcde", [{"action": "SCMP_ACT_ALLOW", "names": ["read"]}], _labels("nginx")
    )
    terminating.metadata.deletion_timestamp = "2026-12-03T13:00:00Z"
    plan = plan_merge(_recording(), [terminating])
    assert (plan.merged, plan.partials) == ((), ())


def test_plan_merge_without_partials_does_nothing() -> None:
    plan = plan_merge(_recording(), [_seccomp("other", [])])
    assert (plan.merged, plan.partials) == ((), ())


ALLOWED = SPODSpec(allowed_syscalls=["exit", "exit_group", "futex", "nanosleep"])


@pytest.mark.parametrize(
    ("spec", "daemon", "expected"),
    [
        # the docs' examples (7.8.1, inventory §4.4)
        (
            SeccompProfileSpec(
                default_action="SCMP_ACT_ERRNO", syscalls=_syscalls(("SCMP_ACT_ALLOW", ["exit", "futex"]))
            ),
            ALLOWED,
            [],
        ),
        (SeccompProfileSpec(default_action="SCMP_ACT_ERRNO"), ALLOWED, []),
        (
            SeccompProfileSpec(
                default_action="SCMP_ACT_ERRNO", syscalls=_syscalls(("SCMP_ACT_ALLOW", ["bpf", "exit"]))
            ),
            ALLOWED,
            ["syscall not allowed: bpf"],
        ),
        (
            SeccompProfileSpec(default_action="SCMP_ACT_ALLOW"),
            ALLOWED,
            ["seccomp profile not allowed: defaultAction SCMP_ACT_ALLOW"],
        ),
        # other actions only take away permissions
        (
            SeccompProfileSpec(
                default_action="SCMP_ACT_LOG", syscalls=_syscalls(("SCMP_ACT_ERRNO", ["bpf"]))
            ),
            ALLOWED,
            ["seccomp profile not allowed: defaultAction SCMP_ACT_LOG"],
        ),
        # restricting ALLOW only leaves LOG free
        (
            SeccompProfileSpec(default_action="SCMP_ACT_LOG"),
            SPODSpec(allowed_syscalls=["exit"], allowed_seccomp_actions=["SCMP_ACT_ALLOW"]),
            [],
        ),
        (
            SeccompProfileSpec(default_action="SCMP_ACT_ERRNO"),
            SPODSpec(allowed_syscalls=["exit"], allowed_seccomp_actions=["SCMP_ACT_ERRNO"]),
            ["seccomp action not allowed: SCMP_ACT_ERRNO"],
        ),
        # no allowedSyscalls: nothing is checked
        (SeccompProfileSpec(default_action="SCMP_ACT_ALLOW"), SPODSpec(), []),
    ],
)
def test_violations(spec: SeccompProfileSpec, daemon: SPODSpec, expected: list[str]) -> None:
    assert violations(spec, daemon) == expected


def test_to_delete_counts_base_profiles_and_skips_profiles_already_deleting() -> None:
    base = _seccomp("base", [{"action": "SCMP_ACT_ALLOW", "names": ["exit"]}])
    base_of_base = _seccomp("root", [{"action": "SCMP_ACT_ALLOW", "names": ["bpf"]}])
    child = _seccomp("child", [])
    child.spec.base_profile_name = "base"
    base.spec.base_profile_name = "root"
    deleting = _seccomp("deleting", [{"action": "SCMP_ACT_ALLOW", "names": ["bpf"]}])
    deleting.metadata.deletion_timestamp = "2026-12-03T09:00:00Z"
    found = to_delete([base, base_of_base, child, deleting], ALLOWED)
    assert found == [
        ("base", ["syscall not allowed: bpf"]),
        ("child", ["syscall not allowed: bpf"]),
        ("root", ["syscall not allowed: bpf"]),
    ]
