"""SELinux policy modules on a node: `<selinux-dir>/<name>.cil` files, and the tool that checks them (I/O).

A policy is staged as `<selinux-dir>/.staging-*/<name>.cil` (the module is named after the file), checked
there, and only then renamed into place, so `<name>.cil` always holds a policy that passed its check and a
reader never sees half of one. The check is where the modes differ:

- `semodule`: where SELinux is enabled, `semodule -i` installs the module, and `semodule -l` must then
  list it;
- `compile-only`: where it is not (like this machine), `secilc` compiles the policy against a base policy
  and the container templates. The result is `Installed` with a message saying it was compiled and not
  loaded: never a silent success.

A policy that fails its check is an `Error` carrying the tool's own message; the previous file, if any,
stays, as the previously loaded module does.
"""

from __future__ import annotations

import bz2
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final, Protocol

from agent.cil import (
    CONTAINER_TEMPLATE,
    Policy,
    PolicyError,
    allowed_system_profiles,
    block_inherits,
    policy_name,
    raw_selinux_profile_policy,
    selinux_profile_policy,
)
from api import cil, constants
from api.types import ProfileState, RawSelinuxProfile, SecurityProfilesOperatorDaemon, SelinuxProfile

SELINUX_MODE_SEMODULE: Final = "semodule"
SELINUX_MODE_COMPILE_ONLY: Final = "compile-only"
SELINUX_MODES: Final = (SELINUX_MODE_SEMODULE, SELINUX_MODE_COMPILE_ONLY)
COMPILED_NOT_LOADED: Final = (
    "compiled with secilc against the container templates, not loaded: "
    f"SELinux is not enabled on this node (--selinux-mode={SELINUX_MODE_COMPILE_ONLY})"
)
STAGING_PREFIX: Final = ".staging-"
TEMPLATES_FILE: Final = ".templates"  # in the staging directory: not a module name
FILE_MODE: Final = 0o644
DIRECTORY_MODE: Final = 0o755
# Debian's refpolicy has no container module: these are the names of container-selinux that the udica
# templates refer to, and its privileged container type spc_t.
CONTAINER_SELINUX_SHIM: Final = """\
(typeattribute svirt_sandbox_domain)
(typeattribute container_domain)
(typeattribute sandbox_net_domain)
(type container_runtime_t)
(roletype system_r container_runtime_t)
(type spc_t)
(roletype system_r spc_t)
"""
# The reference policy's login mappings (and their default) name users of modules that are not in base;
# one default mapping replaces them.
_SELINUX_USER_PREFIX: Final = "(selinuxuser"
_DEFAULT_SELINUX_USER: Final = "(selinuxuserdefault user_u ((s0) (s0)))"


@dataclass(frozen=True)
class PolicyResult:
    """What installing or removing a policy did on this node: the node status and its condition message."""

    state: ProfileState
    message: str


class PolicyCheck(Protocol):
    """What makes a staged policy installed: loading it (semodule) or compiling it (secilc)."""

    def install(self, staged: Path, policy: Policy, dependencies: Sequence[Path]) -> PolicyResult: ...

    def is_installed(self, name: str) -> bool: ...

    def installed_message(self, name: str) -> str: ...

    def remove(self, name: str) -> PolicyResult: ...


class ToolError(RuntimeError):
    """A tool that failed; the message is the tool's own."""


def run_tool(argv: Sequence[str | Path]) -> str:
    """The tool's standard output, or ToolError with its standard error (or output) and exit code."""
    try:
        result = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False)
    except OSError as error:
        raise ToolError(f"cannot run {argv[0]}: {error}") from None
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).replace("\n", "; ")
        raise ToolError(f"{Path(str(argv[0])).name} failed (exit code {result.returncode}): {said}")
    return result.stdout


@dataclass(frozen=True)
class ContainerTemplates:
    """System templates by block name: each block's source and the blocks it inherits itself."""

    sources: dict[str, str]
    inherits: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, directory: Path) -> ContainerTemplates:
        sources: dict[str, str] = {}
        inherits: dict[str, tuple[str, ...]] = {}
        for path in sorted(directory.glob(f"*{constants.SELINUX_POLICY_SUFFIX}")):
            text = path.read_text()
            for statement in cil.parse(text):
                if (
                    isinstance(statement, cil.Expr)
                    and len(statement.items) >= 2
                    and isinstance(statement.items[0], cil.Atom)
                    and statement.items[0].text == "block"
                    and isinstance(statement.items[1], cil.Atom)
                ):
                    name = statement.items[1].text
                    sources[name] = text[statement.start : statement.end] + "\n"
                    inherits[name] = tuple(block_inherits(statement.items[2:]))
        return cls(sources, inherits)

    def source(self, names: Iterable[str]) -> str:
        """The blocks `names` need, each after the blocks it inherits; only those, since a template file
        may hold other blocks this node's base policy cannot resolve (udica's restricted_net_container)."""
        ordered: dict[str, None] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name not in self.sources:
                raise ToolError(f"no system template {name} on this node")
            if name in chain:
                raise ToolError(f"system templates inherit in a cycle: {' -> '.join((*chain, name))}")
            for parent in self.inherits[name]:
                visit(parent, (*chain, name))
            ordered[name] = None

        for name in names:
            visit(name, ())
        return "".join(self.sources[name] for name in ordered)


def udica_templates_dir() -> Path | None:
    """The container templates of the installed `udica` Python distribution, if there is one."""
    try:
        files = metadata.distribution("udica").files or []
    except metadata.PackageNotFoundError:
        return None
    base = f"{constants.UDICA_TEMPLATES_DIR}/{constants.UDICA_BASE_TEMPLATE}"
    found = [Path(str(file.locate())).parent for file in files if str(file) == base]
    return found[0] if found else None


def write_reference_base(path: Path) -> Path:
    """Debian's reference policy base module as CIL at `path`: the base the container templates compile on."""
    module = Path(constants.REFPOLICY_BASE_MODULE)
    converter = Path(constants.PP_TO_CIL)
    if not (module.exists() and converter.exists()):
        raise ToolError(
            f"{module} or {converter} is missing: install selinux-policy-default and policycoreutils"
        )
    result = subprocess.run(
        [converter], input=bz2.decompress(module.read_bytes()), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise ToolError(
            f"{converter} failed (exit code {result.returncode}): {result.stderr.decode().strip()}"
        )
    converted = result.stdout.decode()
    lines = [line for line in converted.splitlines() if not line.startswith(_SELINUX_USER_PREFIX)]
    path.write_text("\n".join([*lines, _DEFAULT_SELINUX_USER, ""]))
    return path


class Semodule:
    """Where SELinux is enabled: the module store is the truth."""

    def __init__(self, semodule: str = "semodule") -> None:
        self._semodule = semodule

    def install(self, staged: Path, policy: Policy, dependencies: Sequence[Path]) -> PolicyResult:
        try:
            run_tool([self._semodule, "-i", staged])
        except ToolError as error:
            return PolicyResult(ProfileState.ERROR, str(error))
        if not self.is_installed(policy.name):
            return PolicyResult(
                ProfileState.ERROR, f"semodule -l does not list {policy.name} after semodule -i"
            )
        return PolicyResult(ProfileState.INSTALLED, self.installed_message(policy.name))

    def installed_message(self, name: str) -> str:
        return f"module {name} installed"

    def is_installed(self, name: str) -> bool:
        try:
            listed = run_tool([self._semodule, "-l"])
        except ToolError:
            return False
        return name in {line.split()[0] for line in listed.splitlines() if line.strip()}

    def remove(self, name: str) -> PolicyResult:
        if self.is_installed(name):
            try:
                run_tool([self._semodule, "-r", name])
            except ToolError as error:
                return PolicyResult(ProfileState.ERROR, str(error))
        return PolicyResult(ProfileState.TERMINATING, f"module {name} removed")


class CompileOnly:
    """Where SELinux is not enabled: secilc compiles the policy, with the base policy, the container
    templates it inherits and the policies of the SelinuxProfiles it inherits."""

    def __init__(self, templates: ContainerTemplates, work_dir: Path, secilc: str = "secilc") -> None:
        """`work_dir` keeps the base policy, converted once, for every compile."""
        self._templates = templates
        self._work_dir = work_dir
        self._secilc = secilc
        self._base: list[Path] | None = None

    def install(self, staged: Path, policy: Policy, dependencies: Sequence[Path]) -> PolicyResult:
        templates = staged.parent / f"{TEMPLATES_FILE}{constants.SELINUX_POLICY_SUFFIX}"
        try:
            templates.write_text(self._templates.source(policy.templates))
            # -N: udica's container template itself breaks refpolicy's neverallow rules (proc_type files).
            outputs = ["-o", os.devnull, "-f", os.devnull]
            run_tool([self._secilc, "-N", *outputs, *self._base_files(), templates, *dependencies, staged])
        except ToolError as error:
            return PolicyResult(ProfileState.ERROR, str(error))
        return PolicyResult(ProfileState.INSTALLED, COMPILED_NOT_LOADED)

    def is_installed(self, name: str) -> bool:
        # Only a policy that compiled is ever renamed into place.
        return True

    def installed_message(self, name: str) -> str:
        return COMPILED_NOT_LOADED

    def remove(self, name: str) -> PolicyResult:
        return PolicyResult(ProfileState.TERMINATING, f"policy {name} removed (compile-only: nothing loaded)")

    def _base_files(self) -> list[Path]:
        if self._base is None:
            shim = self._work_dir / f"shim{constants.SELINUX_POLICY_SUFFIX}"
            shim.write_text(CONTAINER_SELINUX_SHIM)
            base = write_reference_base(self._work_dir / f"base{constants.SELINUX_POLICY_SUFFIX}")
            self._base = [base, shim]
        return self._base


class PolicyStore:
    """The policy files of `<selinux-dir>` and the module each one is; `check` says how they are installed,
    `templates` (when the node has the template files) what each system template inherits."""

    def __init__(
        self, directory: Path, check: PolicyCheck, templates: ContainerTemplates | None = None
    ) -> None:
        self.directory = directory
        self._check = check
        self.templates = templates

    def path(self, name: str) -> Path:
        return self.directory / f"{policy_name(name)}{constants.SELINUX_POLICY_SUFFIX}"

    def install(self, policy: Policy) -> PolicyResult:
        try:
            target = self.path(policy.name)
        except PolicyError as error:
            return PolicyResult(ProfileState.ERROR, str(error))
        missing = [name for name in policy.ancestors if not self.path(name).exists()]
        if missing:
            return PolicyResult(
                ProfileState.PENDING,
                f"waiting for inherited SelinuxProfile {', '.join(missing)} on this node",
            )
        data = policy.text.encode()
        if target.exists() and target.read_bytes() == data and self._check.is_installed(policy.name):
            return PolicyResult(ProfileState.INSTALLED, self._check.installed_message(policy.name))
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.directory))
        try:
            staged = staging / target.name
            _write_file(staged, data)
            result = self._check.install(staged, policy, [self.path(name) for name in policy.ancestors])
            if result.state == ProfileState.INSTALLED:
                os.replace(staged, target)
                _sync_directory(self.directory)
            # Tools name the staged file; the user knows the policy by its file name.
            return PolicyResult(result.state, result.message.replace(str(staged), target.name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, name: str) -> PolicyResult:
        try:
            target = self.path(name)
        except PolicyError as error:
            return PolicyResult(ProfileState.ERROR, str(error))
        result = self._check.remove(name)
        if result.state != ProfileState.ERROR and target.exists():
            target.unlink()
            _sync_directory(self.directory)
        return result

    def installed(self) -> set[str]:
        """The policy names of the files in the directory, what a restart reconciles against. Other
        components may keep policies there too (upstream's selinuxd.cil): the caller knows which are ours."""
        if not self.directory.is_dir():
            return set()
        names = {
            path.name.removesuffix(constants.SELINUX_POLICY_SUFFIX)
            for path in self.directory.glob(f"*{constants.SELINUX_POLICY_SUFFIX}")
            if path.is_file()
        }
        return {name for name in names if _is_policy_name(name)}

    def sweep(self) -> None:
        """Remove the staging directories a crash left behind; none of them is ever an installed policy."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)


def _is_policy_name(name: str) -> bool:
    try:
        policy_name(name)
    except PolicyError:
        return False
    return True


def _write_file(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    # The umask may have narrowed the mode; other node components read the file.
    path.chmod(FILE_MODE)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_store(
    mode: str, directory: Path, work_dir: Path, templates_dir: Path | None = None, semodule: str = "semodule"
) -> PolicyStore:
    """The store for `--selinux-mode`: compile-only needs the container templates (udica's by default)."""
    found = templates_dir or udica_templates_dir()
    templates = ContainerTemplates.load(found) if found is not None else None
    if mode == SELINUX_MODE_SEMODULE:
        return PolicyStore(directory, Semodule(semodule), templates)
    if mode == SELINUX_MODE_COMPILE_ONLY:
        if templates is None or CONTAINER_TEMPLATE not in templates.sources:
            raise ToolError(
                f"--selinux-mode={mode} needs the container templates (the udica package); "
                f"{found} has no block {CONTAINER_TEMPLATE}"
            )
        return PolicyStore(directory, CompileOnly(templates, work_dir), templates)
    raise ToolError(f"unknown SELinux mode {mode!r}: one of {', '.join(SELINUX_MODES)}")


def selinux_enabled(selinuxfs: Path = Path(constants.SELINUXFS)) -> bool:
    """Whether the kernel runs SELinux: the agent's default mode is semodule then, compile-only otherwise."""
    return (selinuxfs / "enforce").exists()


def install_profile(
    store: PolicyStore,
    profile: SelinuxProfile | RawSelinuxProfile,
    spod: SecurityProfilesOperatorDaemon | None,
    profiles: Mapping[str, SelinuxProfile],
) -> PolicyResult:
    """Validate, translate and install one profile: the agent's one call per SelinuxProfile or
    RawSelinuxProfile. `profiles` are the SelinuxProfiles that exist, by name (for `inherit`)."""
    allowed = allowed_system_profiles(spod)
    try:
        if isinstance(profile, RawSelinuxProfile):
            policy = raw_selinux_profile_policy(profile, allowed)
        else:
            inherits = store.templates.inherits if store.templates is not None else None
            policy = selinux_profile_policy(profile, allowed, profiles, inherits)
    except PolicyError as error:
        return PolicyResult(ProfileState.ERROR, f"profile failed validation: {error}")
    return store.install(policy)
