"""The SELinux handlers' part of the agent's loop, with the real secilc (compile-only): what installing
reports, when it changed the node, what depends on what, and which files removal may touch."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.handlers import Desired, PolicyFiles, SelinuxHandler
from agent.selinux import COMPILED_NOT_LOADED, SELINUX_MODE_COMPILE_ONLY, open_store
from api import types
from api.baseprofiles import builtin_spec
from api.kinds import RAW_SELINUX_PROFILE, SELINUX_PROFILE
from api.types import ProfileState, SelinuxProfile, default_spod
from tests.test_selinux_cil import profile, raw

pytestmark = pytest.mark.skipif(
    shutil.which("secilc") is None, reason="secilc is not installed (hack/setup.sh)"
)


class FakeView:
    def __init__(self, *profiles: SelinuxProfile) -> None:
        self._profiles = {p.metadata.name or "": p for p in profiles}

    def spod_spec(self) -> types.SPODSpec:
        return self.spod().spec

    def spod(self) -> types.SecurityProfilesOperatorDaemon:
        return default_spod()

    def seccomp_spec(self, name: str) -> types.SeccompProfileSpec | None:
        return builtin_spec(name)

    def selinux_profiles(self) -> Mapping[str, SelinuxProfile]:
        return self._profiles


@pytest.fixture
def files(tmp_path: Path) -> PolicyFiles:
    work = tmp_path / "work"
    work.mkdir()
    return PolicyFiles(open_store(SELINUX_MODE_COMPILE_ONLY, tmp_path / "selinux.d", work))


def test_a_child_is_pending_until_its_parent_is_installed(files: PolicyFiles) -> None:
    handler = SelinuxHandler(SELINUX_PROFILE, files)
    parent = profile("parent", allow={"@self": {"tcp_socket": ["listen"]}})
    child = profile("child", inherit=[{"kind": "SelinuxProfile", "name": "parent"}])
    view = FakeView(parent, child)
    assert handler.depends_on(child) == ["parent"] and handler.depends_on(parent) == []

    waiting = handler.install(child, view, handler.desired(child, view))
    assert waiting.desired.state == ProfileState.PENDING and not waiting.changed
    assert waiting.desired.message is not None and "parent" in waiting.desired.message

    assert handler.install(parent, view, handler.desired(parent, view)).changed
    installed = handler.install(child, view, handler.desired(child, view))
    assert installed.desired == Desired(ProfileState.INSTALLED, message=COMPILED_NOT_LOADED)
    assert installed.changed
    assert not handler.install(child, view, handler.desired(child, view)).changed
    assert files.names() == {"parent", "child"}


def test_a_disabled_profile_is_not_installed(files: PolicyFiles) -> None:
    handler = SelinuxHandler(RAW_SELINUX_PROFILE, files)
    disabled = raw("off", "(blockinherit container)\n")
    disabled.spec.disabled = True
    assert handler.desired(disabled, FakeView()) == Desired(ProfileState.DISABLED)


def test_a_profile_named_like_a_policy_file_never_removes_that_policy(files: PolicyFiles) -> None:
    handler = SelinuxHandler(RAW_SELINUX_PROFILE, files)
    policy = raw("web", "(blockinherit container)\n")
    assert handler.install(policy, FakeView(), Desired(ProfileState.INSTALLED)).changed

    assert not files.remove("web.cil")
    assert files.names() == {"web"}
    assert files.remove(handler.file_name("web"))
    assert files.names() == set()
