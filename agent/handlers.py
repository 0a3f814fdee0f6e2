"""One handler per profile kind: what the agent installs for a profile and where. The agent's loop
(agent/agent.py) is the same for every kind: finalizer, node status, install or remove, deletion.

A handler's `desired` is pure (the profile and the agent's read-only view in, a Desired out); its
`install` and `files` are the node-facing I/O. Installing returns what to report, because for SELinux the
node itself decides (secilc or semodule may refuse a policy, with a message the status must carry).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from agent import seccomp_logic
from agent.cil import PolicyError
from agent.files import DirectoryFiles, NodeFiles
from agent.seccomp_logic import ProfileError
from agent.selinux import PolicyStore, ToolError, install_profile
from api import constants
from api.kinds import RAW_SELINUX_PROFILE, SECCOMP_PROFILE, SELINUX_PROFILE, ResourceKind
from api.types import (
    ProfileResource,
    ProfileState,
    RawSelinuxProfile,
    SeccompProfile,
    SeccompProfileSpec,
    SecurityProfilesOperatorDaemon,
    SelinuxProfile,
    SPODSpec,
)


@dataclass(frozen=True)
class Desired:
    """What this node should hold for a profile: `content` to install when Installed, and the node
    status's `message` when the state is not an error (an error carries its own)."""

    state: ProfileState
    content: bytes | None = None
    error: ProfileError | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True)
class Installed:
    """What installing did: the Desired to report, and whether the node's copy changed."""

    desired: Desired
    changed: bool


class View(Protocol):
    """The agent's read-only view of the cluster a handler decides from."""

    def spod_spec(self) -> SPODSpec: ...

    def spod(self) -> SecurityProfilesOperatorDaemon | None: ...

    def seccomp_spec(self, name: str) -> SeccompProfileSpec | None: ...

    def selinux_profiles(self) -> Mapping[str, SelinuxProfile]: ...


class KindHandler(Protocol):
    @property
    def kind(self) -> ResourceKind: ...

    @property
    def files(self) -> NodeFiles: ...

    @property
    def metric_prefix(self) -> str:
        """Metric families: `<prefix>_total{operation}` and `<prefix>_error_total{reason}`."""

    @property
    def save_error_reason(self) -> str:
        """The error reason when the node cannot hold the profile (docs table 7.1)."""

    @property
    def saved_reason(self) -> str:
        """The reason of the Normal event once this node holds the profile."""

    def desired(self, profile: ProfileResource, view: View) -> Desired: ...

    def install(self, profile: ProfileResource, view: View, desired: Desired) -> Installed:
        """Put an Installed `desired` on the node; OSError when the node cannot hold it (retried)."""

    def file_name(self, profile_name: str) -> str: ...

    def depends_on(self, profile: ProfileResource) -> Collection[str]:
        """The names of other profiles of this kind whose change changes this one's content."""


def lifecycle_state(profile: ProfileResource, disabled: bool) -> ProfileState | None:
    """Disabled and partial (recorded, awaiting merge) profiles are never installed."""
    labels = profile.metadata.labels or {}
    if constants.LABEL_PARTIAL in labels:
        return ProfileState.PARTIAL
    if disabled:
        return ProfileState.DISABLED
    return None


SECCOMP_NOT_SUPPORTED = "SeccompNotSupportedOnNode"


def seccomp_supported(proc: Path) -> bool:
    """The kernel filters syscalls for containers (it lists the seccomp actions it knows)."""
    return (proc / "sys/kernel/seccomp/actions_avail").is_file()


class SeccompHandler:
    kind = SECCOMP_PROFILE
    metric_prefix = "seccomp_profile"
    save_error_reason = "CannotSaveSeccompProfile"
    saved_reason = "SavedSeccompProfile"

    def __init__(self, kubelet_dir: Path, supported: Callable[[], bool]) -> None:
        self.files: DirectoryFiles = DirectoryFiles(
            kubelet_dir / "seccomp" / constants.SECCOMP_OPERATOR_DIR, ".json"
        )
        self._supported = supported

    def file_name(self, profile_name: str) -> str:
        return self.files.path(profile_name).name

    def depends_on(self, profile: ProfileResource) -> Collection[str]:
        assert isinstance(profile, SeccompProfile)
        base = profile.spec.base_profile_name
        return (base,) if base else ()

    def install(self, profile: ProfileResource, view: View, desired: Desired) -> Installed:
        assert desired.content is not None
        return Installed(desired, self.files.write(profile.metadata.name or "", desired.content))

    def desired(self, profile: ProfileResource, view: View) -> Desired:
        assert isinstance(profile, SeccompProfile)
        spec = profile.spec
        skipped = lifecycle_state(profile, spec.disabled)
        if skipped is not None:
            return Desired(skipped)
        name = profile.metadata.name or ""
        try:
            if not self._supported():
                raise ProfileError(SECCOMP_NOT_SUPPORTED, "the node's kernel does not support seccomp")
            syscalls = seccomp_logic.resolve_syscalls(name, spec, view.seccomp_spec)
            annotations = {constants.ANNOTATION_SYSCALLS: seccomp_logic.syscalls_annotation(syscalls)}
            spod = view.spod_spec()
            seccomp_logic.check_allowed(spec, syscalls, spod.allowed_syscalls, spod.allowed_seccomp_actions)
        except ProfileError as error:
            return Desired(ProfileState.ERROR, error=error)
        return Desired(
            ProfileState.INSTALLED, content=seccomp_logic.render(spec, syscalls), annotations=annotations
        )


SELINUX_INSTALL_FAILED = "CannotInstallSelinuxPolicy"


class PolicyFiles:
    """The policy files of a PolicyStore as the agent's NodeFiles: removing one removes its module."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store

    def remove(self, name: str) -> bool:
        try:
            existed = self.store.path(name).exists()
        except PolicyError:
            return False  # not a policy name: no file of ours can have it
        result = self.store.remove(name)
        if result.state == ProfileState.ERROR:
            raise ToolError(result.message)
        return existed

    def names(self) -> set[str]:
        """Policy (module) names, not file names: `remove` takes a name of a profile, and a profile
        named `x.cil` must never remove the policy `x`."""
        return self.store.installed()

    def sweep(self) -> None:
        self.store.sweep()


class SelinuxHandler:
    """SelinuxProfiles or RawSelinuxProfiles (`kind`): `<selinux-dir>/<name>.cil`, checked by the store's
    mode (semodule loads it, compile-only compiles it) before it is put in place."""

    metric_prefix = "selinux_profile"
    save_error_reason = "CannotSaveSelinuxPolicy"
    saved_reason = "SavedSelinuxProfile"

    def __init__(self, kind: ResourceKind, files: PolicyFiles) -> None:
        """`files` may be shared with the handler of the other SELinux kind (one directory)."""
        assert kind in (SELINUX_PROFILE, RAW_SELINUX_PROFILE)
        self.kind = kind
        self.files = files
        self._store = files.store

    def file_name(self, profile_name: str) -> str:
        """The policy's name in `files` (PolicyFiles.names); a name that is no policy name never is one."""
        return profile_name

    def depends_on(self, profile: ProfileResource) -> Collection[str]:
        if not isinstance(profile, SelinuxProfile):
            return ()
        return [ref.name for ref in profile.spec.inherit if ref.kind == SelinuxProfile.KIND]

    def desired(self, profile: ProfileResource, view: View) -> Desired:
        assert isinstance(profile, SelinuxProfile | RawSelinuxProfile)
        skipped = lifecycle_state(profile, profile.spec.disabled)
        return Desired(skipped or ProfileState.INSTALLED)

    def install(self, profile: ProfileResource, view: View, desired: Desired) -> Installed:
        assert isinstance(profile, SelinuxProfile | RawSelinuxProfile)
        name = profile.metadata.name or ""
        before = self._read(name)
        result = install_profile(self._store, profile, view.spod(), view.selinux_profiles())
        if result.state == ProfileState.ERROR:
            error = ProfileError(SELINUX_INSTALL_FAILED, result.message)
            return Installed(replace(desired, state=result.state, error=error), changed=False)
        reported = replace(desired, state=result.state, message=result.message)
        return Installed(reported, changed=self._read(name) != before)

    def _read(self, name: str) -> bytes | None:
        try:
            return self._store.path(name).read_bytes()
        except (PolicyError, FileNotFoundError):
            return None
