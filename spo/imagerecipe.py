"""The operator image as data: the one list of its Debian packages, Python requirements and build steps.

Two builds read it and nothing else: the committed `Containerfile` (rendered here by `containerfile`, for
anyone with `docker build` / `podman build`) and `spo image build` (spo/operator_image.py: offline, with
mmdebstrap, pip and our OCI writer). Both install the same Debian packages with the same dpkg excludes, add
the same user, build the same wheels from the same pinned list, install them with the same pip and
compileall commands into the same directory, and start `spo` the same way; a test keeps the committed
Containerfile equal to what this module renders, so the two cannot drift.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from api import constants


@dataclass(frozen=True)
class Recipe:
    """What the image is made of. Paths are inside the image unless they say `source`."""

    suite: str
    # One apt source line each, the same ones the Containerfile's debian base image ships with.
    apt_sources: tuple[str, ...]
    # mmdebstrap's variant: Essential:yes packages only (no apt, no package manager in the image).
    variant: str
    packages: tuple[str, ...]
    # dpkg path-excludes: documentation and translations nobody reads in a container.
    dpkg_excludes: tuple[str, ...]
    python: str  # the version of the suite's python3, which the wheels and .pyc files are built for
    requirements_source: str  # the pinned runtime dependencies, relative to the source checkout
    project_sources: tuple[str, ...]  # what the project's wheel is built from, relative to the checkout
    project: str  # the distribution name the wheel installs as
    # Removed from the installed packages: what the image never runs.
    pruned: tuple[str, ...]
    # Distributions left out of the pinned list: only what `pruned` removes imports them.
    left_out: tuple[str, ...]
    user: int
    user_name: str
    entrypoint: tuple[str, ...]
    env: tuple[str, ...]

    @property
    def site_packages(self) -> str:
        # Debian's python3 looks here for locally installed packages (and never touches it itself).
        return f"/usr/local/lib/python{self.python}/dist-packages"

    @property
    def python_lib(self) -> str:
        return f"/usr/lib/python{self.python}"

    @property
    def launcher_path(self) -> str:
        return f"/usr/local/bin/{self.entrypoint[0]}"

    @property
    def launcher(self) -> tuple[str, ...]:
        """The `spo` console script, written by us: pip's would carry the build machine's interpreter path."""
        return ("#!/usr/bin/python3", "import sys", "from spo.cli import main", "sys.exit(main())")

    @property
    def user_line(self) -> str:
        return f"{self.user_name}:x:{self.user}:{self.user}:{self.user_name}:/nonexistent:/usr/sbin/nologin"

    @property
    def group_line(self) -> str:
        return f"{self.user_name}:x:{self.user}:"


RECIPE = Recipe(
    suite="bookworm",
    apt_sources=(
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ),
    variant="essential",
    packages=(
        "python3",
        # The agent names the syscalls of audit lines with libseccomp's table (agent/syscalls.py).
        "libseccomp2",
        # The agent's compile-only SELinux mode: secilc against Debian's reference policy base module,
        # converted to CIL by policycoreutils' pp (agent/selinux.py).
        "secilc",
        "selinux-policy-default",
        "policycoreutils",
    ),
    dpkg_excludes=(
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
        "/usr/share/lintian/*",
        # glibc's iconv charsets: Python brings its own codecs, and nothing in the image calls iconv.
        "/usr/lib/*/gconv/*",
    ),
    python="3.11",
    requirements_source="hack/image/requirements.txt",
    project_sources=(
        "pyproject.toml",
        "README.md",
        "api",
        "webhooks",
        "reconciler",
        "agent",
        "certs",
        "manifests",
        "spo",
    ),
    project="security-profiles-operator",
    pruned=(
        # pip's console scripts: they would point at the builder's interpreter (the image has a launcher).
        "bin",
        # The kubernetes client's asyncio copy of itself (65 MB): the operator uses the synchronous one.
        "kubernetes/aio",
    ),
    # aiohttp and what it needs, which kubernetes requires for its asyncio client alone.
    left_out=(
        "aiohappyeyeballs",
        "aiohttp",
        "aiohttp-retry",
        "aiosignal",
        "attrs",
        "frozenlist",
        "multidict",
        "propcache",
        "yarl",
    ),
    user=constants.ROOTLESS_UID,
    user_name="spo",
    entrypoint=("spo",),
    env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1"),
)


# --- the steps, as commands both builds run ------------------------------------------------------------


def dpkg_excludes_file(recipe: Recipe) -> str:
    return "".join(f"path-exclude={pattern}\n" for pattern in recipe.dpkg_excludes)


def base_setup(recipe: Recipe) -> str:
    """A shell command run in the base root once its packages are installed.

    Adds the image's user, and recompiles the standard library's .pyc files to be checked by hash, not
    by the source's mtime: the offline layers fix every mtime, which would make timestamp .pyc files
    stale, so every start of a non-root, read-only container would compile the standard library again.
    Removes the policy store and compiled policy selinux-policy-default's postinst builds, and the
    policy modules but the base one (24 MB): the agent compiles against the base module alone, and where
    it loads policies it uses the node's store.
    """
    modules, base_module = posixpath.split(constants.REFPOLICY_BASE_MODULE)
    return " && ".join(
        [
            f"echo {shlex.quote(recipe.user_line)} >> /etc/passwd",
            f"echo {shlex.quote(recipe.group_line)} >> /etc/group",
            "rm -rf /var/lib/selinux/default /etc/selinux/default",
            f"find {modules} -type f ! -name {shlex.quote(base_module)} -delete",
            shlex.join(compile_pyc(("python3",), recipe.python_lib, recipe.python_lib, force=True)),
        ]
    )


def pip_wheel(python: Sequence[str], wheel_dir: str, what: Sequence[str]) -> list[str]:
    return [*python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheel_dir, *what]


def pip_install(python: Sequence[str], wheel_dir: str, target: str, what: Sequence[str]) -> list[str]:
    """Install from the wheels just built and nothing else, without bytecode (compiled next)."""
    return [
        *python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheel_dir, "--no-deps",
        "--no-compile", "--target", target, *what,
    ]  # fmt: skip


def prune(recipe: Recipe, target: str) -> list[str]:
    return ["rm", "-rf", *(f"{target}/{path}" for path in recipe.pruned)]


def forget_scripts(target: str) -> list[str]:
    """Drop the pruned console scripts from the distributions' RECORD files: each line carries the hash
    of a script whose first line is the builder's interpreter path, which would change the layer."""
    return [
        "find",
        target,
        "-path",
        "*.dist-info/RECORD",
        "-exec",
        "sed",
        "-i",
        r"\#^\.\./\.\./bin/#d",
        "{}",
        "+",
    ]


def strip_libraries(target: str) -> list[str]:
    """Drop the symbol tables of the installed extension modules, as Debian does for its own (uvloop's
    shrinks from 14 to 2 MB); nothing in the image debugs them."""
    return ["find", target, "-name", "*.so*", "-type", "f", "-exec", "strip", "--strip-unneeded", "{}", "+"]


def install_steps(
    recipe: Recipe, python: Sequence[str], wheels: str, target: str, what: Sequence[str]
) -> list[list[str]]:
    """Install `what` from the wheels just built into `target` (the image's site-packages under a
    layer's tree), trimmed, stripped and compiled: the same commands in both builds."""
    return [
        pip_install(python, wheels, target, what),
        prune(recipe, target),
        forget_scripts(target),
        strip_libraries(target),
        compile_pyc(python, target, recipe.site_packages),
    ]


def compile_pyc(python: Sequence[str], tree: str, image_dir: str, *, force: bool = False) -> list[str]:
    """Bytecode whose validity is the source's hash, with the path the image has (not the builder's).

    A fixed hash seed fixes the order of set constants in the bytecode, and so its bytes.
    """
    flags = ["-f"] if force else []
    return [
        "env", "PYTHONHASHSEED=0", *python, "-m", "compileall", "-q", *flags,
        "--invalidation-mode", "unchecked-hash", "-d", image_dir, tree,
    ]  # fmt: skip


# --- the Containerfile ----------------------------------------------------------------------------------

CONTAINERFILE_NAME = "Containerfile"
_BUILDER_VENV = "/opt/build"
_BUILDER_PYTHON = (f"{_BUILDER_VENV}/bin/python",)
_WHEELS = "/wheels"
_SOURCE = "/src"
_DEPS_TREE = "/layers/deps"
_PROJECT_TREE = "/layers/project"


def _run(*commands: str) -> str:
    return "RUN " + " \\\n && ".join(commands)


def _apt_install(packages: Sequence[str]) -> str:
    return (
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(packages)
        + " && rm -rf /var/lib/apt/lists/*"
    )


def containerfile(recipe: Recipe = RECIPE) -> str:
    """The multi-stage Containerfile: wheels are built and installed in a builder stage, and copied onto
    the slim base as two layers, dependencies first, so a code change rebuilds only the last one."""
    base = f"docker.io/library/debian:{recipe.suite}-slim"
    deps_target = _DEPS_TREE + recipe.site_packages
    project_target = _PROJECT_TREE + recipe.site_packages
    requirements = f"{_SOURCE}/{recipe.requirements_source}"
    deps, deps_wheels = ["-r", requirements], f"{_WHEELS}/deps"
    project, project_wheels = [recipe.project], f"{_WHEELS}/project"
    excludes = "printf '%s\\n' " + " ".join(
        shlex.quote(f"path-exclude={pattern}") for pattern in recipe.dpkg_excludes
    )
    launcher = _PROJECT_TREE + recipe.launcher_path
    lines = [
        f"# Generated from spo/imagerecipe.py by `spo image containerfile > {CONTAINERFILE_NAME}`: edit the",
        "# recipe, not this file (a test keeps the two equal). `spo image build` builds the same image",
        "# offline. Build: docker build -t IMAGE . (or podman build -t IMAGE .)",
        "",
        f"FROM {base} AS builder",
        _run(_apt_install(["python3", "python3-venv", "binutils"]), f"python3 -m venv {_BUILDER_VENV}"),
        f"COPY {recipe.requirements_source} {requirements}",
        _run(
            shlex.join(pip_wheel(_BUILDER_PYTHON, deps_wheels, deps)),
            *map(shlex.join, install_steps(recipe, _BUILDER_PYTHON, deps_wheels, deps_target, deps)),
        ),
        *(f"COPY {source} {_SOURCE}/{source}" for source in recipe.project_sources),
        _run(
            shlex.join(pip_wheel(_BUILDER_PYTHON, project_wheels, [_SOURCE])),
            *map(shlex.join, install_steps(recipe, _BUILDER_PYTHON, project_wheels, project_target, project)),
            f"mkdir -p {launcher.rsplit('/', 1)[0]}",
            "printf '%s\\n' " + " ".join(shlex.quote(line) for line in recipe.launcher) + f" > {launcher}",
            f"chmod 0755 {launcher}",
        ),
        "",
        f"FROM {base}",
        _run(
            f"{excludes} > /etc/dpkg/dpkg.cfg.d/spo-image",
            _apt_install(recipe.packages),
            base_setup(recipe),
        ),
        f"COPY --from=builder {_DEPS_TREE}/ /",
        f"COPY --from=builder {_PROJECT_TREE}/ /",
        *(f"ENV {variable}" for variable in recipe.env),
        f"USER {recipe.user}:{recipe.user}",
        f"ENTRYPOINT {json.dumps(list(recipe.entrypoint))}",
        "",
    ]
    return "\n".join(lines)
