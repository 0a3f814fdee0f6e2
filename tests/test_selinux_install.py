"""Installing SELinux policies on a node (agent/selinux.py): compile-only with the real secilc against
udica's container templates and Debian's reference policy, semodule through a stand-in, atomic files."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.cil import Policy, raw_selinux_profile_policy, selinux_profile_policy
from agent.selinux import (
    COMPILED_NOT_LOADED,
    SELINUX_MODE_COMPILE_ONLY,
    SELINUX_MODE_SEMODULE,
    STAGING_PREFIX,
    CompileOnly,
    ContainerTemplates,
    PolicyResult,
    PolicyStore,
    Semodule,
    ToolError,
    install_profile,
    open_store,
    selinux_enabled,
    udica_templates_dir,
)
from api.types import ProfileState, SelinuxOptions, SelinuxProfile, default_spod
from tests.raw_selinux_corpus import ACCEPTED
from tests.raw_selinux_corpus import Policy as CorpusPolicy
from tests.test_selinux_cil import ALLOWED, docs_profile, profile, raw

needs_secilc = pytest.mark.skipif(
    shutil.which("secilc") is None, reason="secilc is not installed (hack/setup.sh)"
)


@pytest.fixture(scope="module")
def templates() -> ContainerTemplates:
    directory = udica_templates_dir()
    if directory is None:
        pytest.fail("the udica package is not installed (pip install -e . installs it)")
    return ContainerTemplates.load(directory)


@pytest.fixture(scope="module")
def compiler(templates: ContainerTemplates, tmp_path_factory: pytest.TempPathFactory) -> CompileOnly:
    return CompileOnly(templates, tmp_path_factory.mktemp("selinux-base"))


@pytest.fixture
def store(compiler: CompileOnly, templates: ContainerTemplates, tmp_path: Path) -> PolicyStore:
    return PolicyStore(tmp_path / "selinux.d", compiler, templates)


def translate(
    selinux_profile: SelinuxProfile,
    templates: ContainerTemplates,
    profiles: dict[str, SelinuxProfile] | None = None,
) -> Policy:
    return selinux_profile_policy(selinux_profile, ALLOWED, profiles or {}, templates.inherits)


def test_templates_are_read_by_block(templates: ContainerTemplates) -> None:
    assert templates.inherits["container"] == ()
    assert templates.inherits["net_container"] == ("container",)
    assert templates.source(["net_container"]).startswith("(block container\n")
    # A file's other blocks are left out: restricted_net_container needs permissions refpolicy lacks.
    assert "restricted_net_container" not in templates.source(["net_container"])


@needs_secilc
def test_every_generated_policy_compiles_with_the_container_templates(
    store: PolicyStore, templates: ContainerTemplates
) -> None:
    parent = docs_profile("nginx-secure")
    profiles = {"nginx-secure": parent}
    cases = [
        parent,
        profile("net", inherit=[{"name": "net_container"}], allow={"@self": {"tcp_socket": ["listen"]}}),
        profile("child", inherit=[{"kind": "SelinuxProfile", "name": "nginx-secure"}]),
        docs_profile("nginx-secure", with_allow=False).model_copy(
            update={"metadata": profile("permissive").metadata}
        ),
        profile(
            "self-only",
            allow={"@self": {"unix_stream_socket": ["connectto"], "fifo_file": ["read", "write"]}},
        ),
    ]

    for case in cases:
        policy = translate(case, templates, profiles)
        result = store.install(policy)

        assert result == PolicyResult(ProfileState.INSTALLED, COMPILED_NOT_LOADED), policy.text
        path = store.path(policy.name)
        assert path.read_text() == policy.text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert "(typepermissive process)" in store.path("permissive").read_text()
    assert store.installed() == {"nginx-secure", "net", "child", "permissive", "self-only"}


@needs_secilc
def test_an_unknown_permission_is_an_error_with_secilcs_message(
    store: PolicyStore, templates: ContainerTemplates
) -> None:
    policy = translate(profile("typo", allow={"@self": {"tcp_socket": ["frobnicate"]}}), templates)

    result = store.install(policy)

    assert result.state == ProfileState.ERROR
    assert "secilc failed" in result.message
    assert "Failed to resolve permission frobnicate" in result.message
    # The message names the policy's file, not the staging directory it was checked in.
    assert "typo.cil:" in result.message and STAGING_PREFIX not in result.message
    assert not store.path("typo").exists()
    assert os.listdir(store.directory) == []


@needs_secilc
def test_a_failed_update_keeps_the_policy_that_compiled(
    store: PolicyStore, templates: ContainerTemplates
) -> None:
    good = translate(profile("p", allow={"@self": {"tcp_socket": ["listen"]}}), templates)
    assert store.install(good).state == ProfileState.INSTALLED

    bad = translate(profile("p", allow={"no_such_t": {"tcp_socket": ["listen"]}}), templates)
    result = store.install(bad)

    assert result.state == ProfileState.ERROR
    assert "Failed to resolve allow statement" in result.message
    assert store.path("p").read_text() == good.text


@needs_secilc
def test_raw_policy_defines_the_type_its_usage_names(store: PolicyStore) -> None:
    """`<name>.process` resolves only if the block is `<name>` (upstream's `<name>_` would not)."""
    policy = raw_selinux_profile_policy(
        raw("my-raw", "(blockinherit net_container)\n(allow process my-raw.process (tcp_socket (listen)))"),
        ALLOWED,
    )

    assert store.install(policy) == PolicyResult(ProfileState.INSTALLED, COMPILED_NOT_LOADED)


def test_a_child_waits_for_its_parents_policy(store: PolicyStore, templates: ContainerTemplates) -> None:
    parent = profile("parent")
    child = translate(
        profile("child", inherit=[{"kind": "SelinuxProfile", "name": "parent"}]),
        templates,
        {"parent": parent},
    )

    result = store.install(child)

    assert result.state == ProfileState.PENDING
    assert "parent" in result.message
    assert not store.directory.exists() or os.listdir(store.directory) == []


class Observer:
    """A check that looks at the directory while the policy is being checked, and then says `result`."""

    def __init__(self, store_dir: Path, result: PolicyResult) -> None:
        self.store_dir = store_dir
        self.result = result
        self.seen: list[tuple[list[str], bytes | None]] = []

    def install(self, staged: Path, policy: Policy, dependencies: Sequence[Path]) -> PolicyResult:
        target = self.store_dir / f"{policy.name}.cil"
        self.seen.append(
            (sorted(os.listdir(self.store_dir)), target.read_bytes() if target.exists() else None)
        )
        assert staged.read_text() == policy.text
        assert staged.name == f"{policy.name}.cil"  # the module is named after the file
        return self.result

    def is_installed(self, name: str) -> bool:
        return True

    def installed_message(self, name: str) -> str:
        return "installed"

    def remove(self, name: str) -> PolicyResult:
        return PolicyResult(ProfileState.TERMINATING, "removed")


def test_the_policy_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    directory = tmp_path / "selinux.d"
    check = Observer(directory, PolicyResult(ProfileState.INSTALLED, "installed"))
    store = PolicyStore(directory, check)
    old = Policy("p", "(block p\n(blockinherit container)\n)\n")
    new = Policy("p", "(block p\n(blockinherit container)\n(typepermissive process)\n)\n")

    store.install(old)
    store.install(new)
    store.install(new)  # unchanged: not checked again

    # While each version was checked, only a staging directory and the previous whole file were there.
    assert len(check.seen) == 2
    (first_listing, first_target), (second_listing, second_target) = check.seen
    assert first_target is None and [n[: len(STAGING_PREFIX)] for n in first_listing] == [STAGING_PREFIX]
    assert second_target == old.text.encode() and "p.cil" in second_listing
    assert os.listdir(directory) == ["p.cil"]
    assert store.path("p").read_text() == new.text


def test_a_refused_policy_leaves_no_file(tmp_path: Path) -> None:
    directory = tmp_path / "selinux.d"
    store = PolicyStore(directory, Observer(directory, PolicyResult(ProfileState.ERROR, "no")))

    assert store.install(Policy("p", "(block p)\n")) == PolicyResult(ProfileState.ERROR, "no")
    assert os.listdir(directory) == []


def test_remove_and_sweep(tmp_path: Path) -> None:
    directory = tmp_path / "selinux.d"
    check = Observer(directory, PolicyResult(ProfileState.INSTALLED, "installed"))
    store = PolicyStore(directory, check)
    store.install(Policy("p", "(block p)\n"))
    (directory / f"{STAGING_PREFIX}crashed").mkdir()
    (directory / f"{STAGING_PREFIX}crashed" / "q.cil").write_text("(block q")
    (directory / "not.a.profile.cil").write_text("(block x)")

    assert store.installed() == {"p"}
    store.sweep()
    assert store.remove("p") == PolicyResult(ProfileState.TERMINATING, "removed")
    assert store.remove("p") == PolicyResult(ProfileState.TERMINATING, "removed")  # already gone: fine
    assert os.listdir(directory) == ["not.a.profile.cil"]
    assert PolicyStore(tmp_path / "never-made", check).remove("p").state == ProfileState.TERMINATING


@pytest.mark.parametrize("name", ["../escape", "p\n", "a/b", "x)(y", ".."])
def test_names_never_become_paths(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "selinux.d"
    store = PolicyStore(directory, Observer(directory, PolicyResult(ProfileState.INSTALLED, "installed")))

    assert store.install(Policy(name, "(block x)\n")).state == ProfileState.ERROR
    assert store.remove(name).state == ProfileState.ERROR
    assert not directory.exists()
    assert os.listdir(tmp_path) == []


FAKE_SEMODULE = """\
#!/bin/sh
# semodule as far as the agent uses it: -i FILE adds the module named after FILE, -l lists, -r removes.
store="$(dirname "$0")/modules"
touch "$store"
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in
  -i) case "$2" in *bad*) echo "Failed to resolve permission frobnicate" >&2; exit 1;; esac
      basename "$2" .cil >> "$store";;
  -l) cat "$store";;
  -r) grep -vx "$2" "$store" > "$store.new"; mv "$store.new" "$store";;
esac
"""


@pytest.fixture
def semodule(tmp_path: Path) -> Path:
    tool = tmp_path / "bin" / "semodule"
    tool.parent.mkdir()
    tool.write_text(FAKE_SEMODULE)
    tool.chmod(0o755)
    return tool


def test_semodule_installs_lists_and_removes(tmp_path: Path, semodule: Path) -> None:
    store = PolicyStore(tmp_path / "selinux.d", Semodule(str(semodule)))
    policy = Policy("nginx-secure", "(block nginx-secure)\n")

    assert store.install(policy) == PolicyResult(ProfileState.INSTALLED, "module nginx-secure installed")
    assert store.install(policy).state == ProfileState.INSTALLED  # unchanged and listed: not installed again
    assert store.remove("nginx-secure").state == ProfileState.TERMINATING

    calls = (semodule.parent / "calls").read_text().splitlines()
    assert [call.split()[0] for call in calls] == ["-i", "-l", "-l", "-l", "-r"]
    assert calls[0].endswith("/nginx-secure.cil")
    assert (semodule.parent / "modules").read_text() == ""
    assert not store.path("nginx-secure").exists()


def test_semodule_failure_is_an_error_with_its_message(tmp_path: Path, semodule: Path) -> None:
    store = PolicyStore(tmp_path / "selinux.d", Semodule(str(semodule)))

    result = store.install(Policy("bad", "(block bad)\n"))

    assert result.state == ProfileState.ERROR
    assert "semodule failed (exit code 1): Failed to resolve permission frobnicate" in result.message
    assert not store.path("bad").exists()


@needs_secilc
def test_install_profile_is_the_agents_one_call(store: PolicyStore) -> None:
    spod = default_spod()
    parent = docs_profile("nginx-secure")

    installed = install_profile(store, parent, spod, {})
    net_refused = install_profile(store, profile("net", inherit=[{"name": "net_container"}]), spod, {})
    spod.spec.selinux_options = SelinuxOptions(allowed_system_profiles=["container", "net_container"])
    net_allowed = install_profile(store, profile("net", inherit=[{"name": "net_container"}]), spod, {})
    raw_profile = raw("my-raw", "(blockinherit container)\n(allow process my-raw.process (file (read)))")

    assert installed == PolicyResult(ProfileState.INSTALLED, COMPILED_NOT_LOADED)
    assert "not loaded" in COMPILED_NOT_LOADED and "compile-only" in COMPILED_NOT_LOADED
    assert net_refused.state == ProfileState.ERROR
    assert net_refused.message.startswith("profile failed validation: system profile net_container not in")
    assert net_allowed.state == ProfileState.INSTALLED
    assert install_profile(store, raw_profile, spod, {}).state == ProfileState.INSTALLED
    assert store.installed() == {"nginx-secure", "net", "my-raw"}


def test_open_store_by_mode(tmp_path: Path) -> None:
    compile_only = open_store(SELINUX_MODE_COMPILE_ONLY, tmp_path / "d", tmp_path)
    semodule = open_store(SELINUX_MODE_SEMODULE, tmp_path / "d", tmp_path)

    assert compile_only.templates is not None and "container" in compile_only.templates.sources
    assert semodule.templates is not None
    with pytest.raises(ToolError, match="unknown SELinux mode 'enforcing'"):
        open_store("enforcing", tmp_path / "d", tmp_path)
    with pytest.raises(ToolError, match="needs the container templates"):
        open_store(SELINUX_MODE_COMPILE_ONLY, tmp_path / "d", tmp_path, templates_dir=tmp_path / "none")


def test_selinux_enabled_reads_selinuxfs(tmp_path: Path) -> None:
    assert not selinux_enabled(tmp_path)
    (tmp_path / "enforce").write_text("1")
    assert selinux_enabled(tmp_path)


@needs_secilc
@pytest.mark.parametrize("corpus", ACCEPTED, ids=lambda policy: policy.id)
def test_raw_policies_the_webhook_accepts_install(store: PolicyStore, corpus: CorpusPolicy) -> None:
    """What admission lets through, the agent installs: its own check and the compile agree."""
    result = install_profile(store, raw(corpus.block, corpus.text), default_spod(), {})

    assert result == PolicyResult(ProfileState.INSTALLED, COMPILED_NOT_LOADED)
