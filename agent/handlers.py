"""One handler per profile kind: what the agent installs for a profile and where. The agent's loop
(agent/agent.py) is the same for every kind: finalizer, node status, install or remove, deletion.

A handler's `desired` is pure (the profile and the agent's read-only view in, a Desired out); its
`files` are the node-facing I/O. A SELinux handler plugs in with the same two parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent import seccomp_logic
from agent.files import DirectoryFiles, NodeFiles
from agent.seccomp_logic import ProfileError
from api import constants
from api.kinds import SECCOMP_PROFILE, ResourceKind
from api.types import ProfileResource, ProfileState, SeccompProfile, SeccompProfileSpec, SPODSpec


@dataclass(frozen=True)
class Desired:
    """What this node should hold for a profile: `content` to install when Installed."""

    state: ProfileState
    content: bytes | None = None
    error: ProfileError | None = None
    annotations: dict[str, str] = field(default_factory=dict)


class View(Protocol):
    """The agent's read-only view of the cluster a handler decides from."""

    def spod_spec(self) -> SPODSpec: ...

    def seccomp_spec(self, name: str) -> SeccompProfileSpec | None: ...


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

    def file_name(self, profile_name: str) -> str: ...

    def depends_on(self, profile: ProfileResource) -> str | None:
        """The name of another profile of this kind whose change changes this one's content."""


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

    def depends_on(self, profile: ProfileResource) -> str | None:
        assert isinstance(profile, SeccompProfile)
        return profile.spec.base_profile_name

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
