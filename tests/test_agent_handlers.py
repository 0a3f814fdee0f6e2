"""The seccomp handler's decision for one profile on one node, from a fake view of the cluster."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.handlers import SeccompHandler
from api import constants
from api.baseprofiles import builtin_spec
from api.types import (
    ProfileState,
    SeccompProfile,
    SeccompProfileSpec,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
    SPODSpec,
)


class FakeView:
    def __init__(self, spod: SPODSpec | None = None, profiles: dict[str, SeccompProfileSpec] | None = None):
        self._spod = spod or SPODSpec()
        self._profiles = profiles or {}

    def spod_spec(self) -> SPODSpec:
        return self._spod

    def spod(self) -> SecurityProfilesOperatorDaemon | None:
        return None

    def selinux_profiles(self) -> Mapping[str, SelinuxProfile]:
        return {}

    def seccomp_spec(self, name: str) -> SeccompProfileSpec | None:
        return self._profiles.get(name) or builtin_spec(name)


def profile(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> SeccompProfile:
    return SeccompProfile.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1beta1",
            "kind": "SeccompProfile",
            "metadata": {"name": name, **({"labels": labels} if labels else {})},
            "spec": spec,
        }
    )


def handler(tmp_path: Path, supported: bool = True) -> SeccompHandler:
    return SeccompHandler(tmp_path / "kubelet", lambda: supported)


def test_installed_profile_has_content_and_syscalls_annotation(tmp_path: Path) -> None:
    example = profile(
        "example-name",
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "baseProfileName": "runc-v1.0.0",
            "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit_group"]}],
        },
    )
    desired = handler(tmp_path).desired(example, FakeView())
    assert desired.state == ProfileState.INSTALLED and desired.content is not None
    written = orjson.loads(desired.content)
    assert orjson.loads(desired.annotations[constants.ANNOTATION_SYSCALLS]) == written["syscalls"]
    assert written["baseProfileName"] == "runc-v1.0.0"


@pytest.mark.parametrize(
    ("spec", "labels", "state"),
    [
        ({"defaultAction": "SCMP_ACT_LOG", "disabled": True}, None, ProfileState.DISABLED),
        ({"defaultAction": "SCMP_ACT_LOG"}, {constants.LABEL_PARTIAL: "true"}, ProfileState.PARTIAL),
    ],
)
def test_disabled_and_partial_profiles_are_never_installed(
    tmp_path: Path, spec: dict[str, Any], labels: dict[str, str] | None, state: ProfileState
) -> None:
    desired = handler(tmp_path).desired(profile("p", spec, labels), FakeView())
    assert desired.state == state and desired.content is None and desired.error is None


def test_a_node_without_seccomp_reports_it(tmp_path: Path) -> None:
    desired = handler(tmp_path, supported=False).desired(
        profile("p", {"defaultAction": "SCMP_ACT_LOG"}), FakeView()
    )
    assert desired.state == ProfileState.ERROR and desired.content is None
    assert desired.error is not None and desired.error.reason == "SeccompNotSupportedOnNode"


def test_spod_allow_list_refusal_names_the_syscall(tmp_path: Path) -> None:
    spod = SPODSpec(allowed_syscalls=["exit", "exit_group", "futex", "nanosleep"])
    bpf = profile(
        "p", {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["bpf"]}]}
    )
    desired = handler(tmp_path).desired(bpf, FakeView(spod))
    assert desired.state == ProfileState.ERROR and desired.content is None
    assert desired.error is not None and "syscall not allowed: bpf" in desired.error.message


def test_a_user_profile_shadows_the_builtin_base_of_that_name(tmp_path: Path) -> None:
    own_base = SeccompProfileSpec.model_validate(
        {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["uname"]}]}
    )
    child = profile("child", {"defaultAction": "SCMP_ACT_ERRNO", "baseProfileName": "runc-v1.0.0"})
    desired = handler(tmp_path).desired(child, FakeView(profiles={"runc-v1.0.0": own_base}))
    assert desired.content is not None
    assert [e["names"] for e in orjson.loads(desired.content)["syscalls"]] == [["uname"]]


def test_file_names_follow_the_localhost_profile_rule(tmp_path: Path) -> None:
    seccomp = handler(tmp_path)
    assert seccomp.file_name("profile1") == "profile1.json"
    assert seccomp.file_name("already.json") == "already.json"
