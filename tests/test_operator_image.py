"""Issue 12, acceptance 3: the operator image, from one recipe (spo/imagerecipe.py) to two builds.

The committed Containerfile must be what the recipe renders, and say what the offline build does; the
offline build (`spo image build`) is run for real: its layout is read as an importer reads it, its layers
are unpacked into a root where `spo --help` and `spo agent --help` run (chroot, as root and as the image's
user), and a second build gives the same digest while rebuilding only the top layer.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from api.constants import DEFAULT_IMAGE, UDICA_BASE_TEMPLATE
from spo import imagerecipe, images, operator_image
from spo.cli import main
from spo.imagerecipe import (
    RECIPE,
    base_setup,
    containerfile,
    install_steps,
    pip_wheel,
)
from spo.images import normalize_reference
from tests.test_images import Image, read_layout

REPO_ROOT = Path(__file__).resolve().parents[1]
CAN_BUILD = shutil.which("mmdebstrap") is not None and os.geteuid() == 0


# --- reading the Containerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]]  # (instruction, its arguments), continuation lines joined

    def commands(self) -> list[list[str]]:
        """Every shell command of the stage's RUN instructions, split as the shell would."""
        return [
            shlex.split(command)
            for keyword, arguments in self.instructions
            if keyword == "RUN"
            for command in arguments.split(" && ")
        ]

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]


def stages(text: str) -> list[Stage]:
    logical = re.sub(r"\\\n", "", text)
    found: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword == "FROM":
            base, _, name = arguments.partition(" AS ")
            found.append(Stage(base, name, []))
        else:
            found[-1].instructions.append((keyword, re.sub(r" +", " ", arguments.strip())))
    return found


CONTAINERFILE = (REPO_ROOT / imagerecipe.CONTAINERFILE_NAME).read_text()


def test_committed_containerfile_is_the_one_the_recipe_renders() -> None:
    assert containerfile(RECIPE) == CONTAINERFILE, "run: spo image containerfile > Containerfile"


def test_containerfile_is_multi_stage_on_a_slim_debian_of_the_recipes_suite() -> None:
    builder, final = stages(CONTAINERFILE)
    assert builder.name == "builder" and final.name == ""
    assert builder.base == final.base == f"docker.io/library/debian:{RECIPE.suite}-slim"


def _apt_installed(stage: Stage) -> list[str]:
    (command,) = [c for c in stage.commands() if c[:2] == ["DEBIAN_FRONTEND=noninteractive", "apt-get"]]
    return command[command.index("--no-install-recommends") + 1 :]


def test_final_stage_installs_the_recipes_packages_and_sets_it_up_as_the_offline_build_does() -> None:
    final = stages(CONTAINERFILE)[1]
    assert _apt_installed(final) == list(RECIPE.packages)
    assert not {"python3-venv", "python3-pip", "gcc", "build-essential"} & set(_apt_installed(final))
    # The same dpkg excludes and the same set-up command the offline build gives mmdebstrap.
    commands = final.commands()
    excludes = next(c for c in commands if c[0] == "printf")
    assert excludes[2:] == [
        *(f"path-exclude={pattern}" for pattern in RECIPE.dpkg_excludes),
        ">",
        "/etc/dpkg/dpkg.cfg.d/spo-image",
    ]
    assert final.arguments("RUN")[0].endswith(f" && {base_setup(RECIPE)}")
    mmdebstrap = operator_image.mmdebstrap_command(RECIPE, Path("excludes"), Path("out.tar"))
    assert f"--include={','.join(RECIPE.packages)}" in mmdebstrap
    assert f'--customize-hook=chroot "$1" sh -c {shlex.quote(base_setup(RECIPE))}' in mmdebstrap
    assert f"--variant={RECIPE.variant}" in mmdebstrap and RECIPE.suite in mmdebstrap


def test_builder_runs_the_recipes_pip_and_compile_steps_for_both_layers() -> None:
    builder = stages(CONTAINERFILE)[0]
    commands = builder.commands()
    python = ("/opt/build/bin/python",)
    requirements = f"/src/{RECIPE.requirements_source}"
    for tree, wheels, what, install in (
        ("/layers/deps", "/wheels/deps", ["-r", requirements], ["-r", requirements]),
        ("/layers/project", "/wheels/project", ["/src"], [RECIPE.project]),
    ):
        target = tree + RECIPE.site_packages
        expected = [pip_wheel(python, wheels, what), *install_steps(RECIPE, python, wheels, target, install)]
        assert [c for c in commands if c in expected] == expected
    # Every source the offline build copies is copied, after the dependencies' layer is built.
    copies = builder.arguments("COPY")
    assert copies[0] == f"{RECIPE.requirements_source} {requirements}"
    assert copies[1:] == [f"{source} /src/{source}" for source in RECIPE.project_sources]


def test_final_image_takes_dependencies_then_code_and_runs_spo_as_the_recipes_user() -> None:
    final = stages(CONTAINERFILE)[1]
    assert final.arguments("COPY") == ["--from=builder /layers/deps/ /", "--from=builder /layers/project/ /"]
    assert final.arguments("USER") == [f"{RECIPE.user}:{RECIPE.user}"]
    assert [json.loads(a) for a in final.arguments("ENTRYPOINT")] == [list(RECIPE.entrypoint)]
    assert final.arguments("ENV") == list(RECIPE.env)
    launcher = next(c for c in stages(CONTAINERFILE)[0].commands() if c[0] == "printf")
    assert launcher[2:] == [*RECIPE.launcher, ">", "/layers/project" + RECIPE.launcher_path]


# --- the pinned dependencies ----------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    lines = (REPO_ROOT / RECIPE.requirements_source).read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "every line pins one version: name==version"
    return {canonicalize_name(name): version for name, version in pins}


def test_requirements_pin_every_runtime_dependency_and_no_test_tool() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} is not pinned: spo image lock > {RECIPE.requirements_source}"
        )
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {line}"
    test_only = {
        canonicalize_name(Requirement(line).name) for line in project["optional-dependencies"]["test"]
    }
    assert not test_only & set(pins)
    assert canonicalize_name(RECIPE.project) not in pins


def test_left_out_distributions_are_needed_only_by_pruned_code() -> None:
    pins = _pins()
    left_out = {canonicalize_name(name) for name in RECIPE.left_out}
    assert not left_out & set(pins)
    # Who requires each left-out distribution, among what the image installs: kubernetes alone, for its
    # asyncio client, which is pruned.
    assert "kubernetes/aio" in RECIPE.pruned
    requirers: dict[str, set[str]] = {}
    for name in [*pins, RECIPE.project]:
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                requirers.setdefault(canonicalize_name(requirement.name), set()).add(name)
    required = {name: requirers[name] for name in left_out if name in requirers}
    assert required == {"aiohttp": {"kubernetes"}, "aiohttp-retry": {"kubernetes"}}


# --- cache keys -----------------------------------------------------------------------------------------


def test_base_is_rebuilt_when_what_makes_it_changes_and_only_then() -> None:
    key = operator_image.base_key(RECIPE, "amd64")
    assert operator_image.base_key(RECIPE, "amd64") == key
    for changed in (
        replace(RECIPE, packages=(*RECIPE.packages, "curl")),
        replace(RECIPE, dpkg_excludes=RECIPE.dpkg_excludes[1:]),
        replace(RECIPE, user=1000),
        replace(RECIPE, suite="trixie"),
    ):
        assert operator_image.base_key(changed, "amd64") != key
    assert operator_image.base_key(RECIPE, "arm64") != key
    assert operator_image.base_key(replace(RECIPE, project_sources=("spo",)), "amd64") == key


def test_dependencies_are_rebuilt_when_their_pinned_list_changes() -> None:
    key = operator_image.dependencies_key(RECIPE, b"fastapi==1\n", "amd64")
    assert operator_image.dependencies_key(RECIPE, b"fastapi==1\n", "amd64") == key
    assert operator_image.dependencies_key(RECIPE, b"fastapi==2\n", "amd64") != key
    assert operator_image.dependencies_key(replace(RECIPE, python="3.12"), b"fastapi==1\n", "amd64") != key


def test_cached_layer_is_built_once_and_only_the_latest_two_of_a_kind_are_kept(tmp_path: Path) -> None:
    built: list[str] = []

    def build(key: str) -> tuple[bytes, bool]:
        def make(scratch: Path) -> bytes:
            assert scratch.parent == tmp_path
            built.append(key)
            return key.encode()

        return operator_image.cached_layer(tmp_path, "layer", key, make)

    assert build("a") == (b"a", True)
    assert build("a") == (b"a", False)
    for key in ("b", "c"):
        build(key)
        os.utime(tmp_path / f"layer-{key}.tar", (0, {"b": 1, "c": 2}[key]))
    assert build("a") == (b"a", False)  # used last: kept, with "c"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["layer-a.tar", "layer-c.tar"]
    assert built == ["a", "b", "c"]


# --- the command line -----------------------------------------------------------------------------------


def test_build_from_a_directory_that_is_no_checkout_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["image", "build", "--source", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("cannot build the operator image: ")
    assert f"{tmp_path / RECIPE.requirements_source} not found" in error
    assert "Traceback" not in error


def test_a_failing_tool_is_named_with_its_output() -> None:
    with pytest.raises(
        images.ImageBuildError, match=r"`sh -c 'echo broken; exit 3'` failed \(exit code 3\):\nbroken"
    ):
        operator_image._run(["sh", "-c", "echo broken; exit 3"])


def test_containerfile_command_prints_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "containerfile"]) == 0
    assert capsys.readouterr().out == CONTAINERFILE


# --- the offline build, for real ------------------------------------------------------------------------


@dataclass
class Builds:
    first: operator_image.BuiltImage
    second: operator_image.BuiltImage
    image: Image
    root: Path


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    if not CAN_BUILD:
        pytest.skip("needs root and mmdebstrap (bash hack/setup.sh installs it)")
    # The machine's image cache: cold on a fresh machine (the Debian base takes a few minutes then).
    out = tmp_path_factory.mktemp("operator-image")
    first = operator_image.build_operator_image(out / "first.tar")
    second = operator_image.build_operator_image(out / "second.tar")
    (image,) = read_layout((out / "first.tar").read_bytes()).values()
    root = out / "root"
    root.mkdir()
    for number, layer in enumerate(image.layers):
        path = out / f"layer-{number}.tar"
        path.write_bytes(layer)
        subprocess.run(["tar", "-xf", str(path), "-C", str(root)], check=True)
    yield Builds(first, second, image, root)


def test_image_is_named_as_the_manifests_name_it_and_runs_spo_as_the_recipes_user(builds: Builds) -> None:
    assert builds.image.reference == normalize_reference(DEFAULT_IMAGE) == builds.first.reference
    config = builds.image.config["config"]
    assert config["Entrypoint"] == list(RECIPE.entrypoint)
    assert config["User"] == f"{RECIPE.user}:{RECIPE.user}"
    assert config["Env"] == list(RECIPE.env)


def test_building_again_gives_the_same_digest_rebuilding_only_the_code(builds: Builds) -> None:
    assert builds.second.digest == builds.first.digest
    assert builds.first.path.read_bytes() == builds.second.path.read_bytes()
    assert builds.second.rebuilt == ("project",)
    assert len(builds.image.layers) == 3


def _chroot(root: Path, *argv: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    userspec = [f"--userspec={user}:{user}"] if user is not None else []
    return subprocess.run(
        ["chroot", *userspec, str(root), *argv],
        capture_output=True,
        text=True,
        env={"PATH": RECIPE.env[0].removeprefix("PATH=")},
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize("user", [None, RECIPE.user])
@pytest.mark.parametrize("args", [["--help"], ["agent", "--help"], ["reconciler", "--help"]])
def test_spo_runs_inside_the_unpacked_image(builds: Builds, args: list[str], user: int | None) -> None:
    result = _chroot(builds.root, *RECIPE.entrypoint, *args, user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: spo")


def test_image_holds_the_recipes_packages_and_the_tools_the_agent_runs(builds: Builds) -> None:
    status = (builds.root / "var/lib/dpkg/status").read_text()
    installed = set(re.findall(r"^Package: (\S+)\nStatus: install ok installed", status, re.MULTILINE))
    assert set(RECIPE.packages) <= installed
    assert not {"perl", "usrmerge", "gcc", "python3-pip"} & installed
    # The agent names syscalls with libseccomp, as its user: 83 is mkdir on x86_64.
    naming = "from agent import syscalls as s; print(s.syscall_name(83, s.native_arch()))"
    result = _chroot(builds.root, "python3", "-c", naming, user=RECIPE.user)
    assert (result.returncode, result.stdout) == (0, "mkdir\n"), result.stderr
    # The agent's compile-only SELinux mode, as its user: the reference base module converted to CIL by
    # policycoreutils' pp, compiled by secilc with the shim and udica's container template.
    script = (
        "from pathlib import Path; import agent.selinux as s; "
        "s.write_reference_base(Path('/tmp/base.cil')); "
        "Path('/tmp/shim.cil').write_text(s.CONTAINER_SELINUX_SHIM); "
        "print(s.udica_templates_dir())"
    )
    result = _chroot(builds.root, "python3", "-c", script, user=RECIPE.user)
    assert result.returncode == 0, result.stderr
    template = f"{result.stdout.strip()}/{UDICA_BASE_TEMPLATE}"
    policy = ["-o", "/tmp/policy", "-f", "/tmp/file_contexts", "/tmp/base.cil", "/tmp/shim.cil", template]
    result = _chroot(builds.root, "secilc", "-N", *policy, user=RECIPE.user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((builds.root / "usr/share/doc").glob("*/*"))
    assert f"{RECIPE.user_line}\n" in (builds.root / "etc/passwd").read_text()


def test_every_pyc_is_checked_by_hash_not_by_mtime(builds: Builds) -> None:
    flags: dict[int, int] = {}
    for layer in builds.image.layers:
        with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
            for info in archive:
                if info.name.endswith(".pyc"):
                    header = archive.extractfile(info).read(8)  # type: ignore[union-attr]
                    flag = int.from_bytes(header[4:8], "little")
                    flags[flag] = flags.get(flag, 0) + 1
    # Bit 0 set: hash-based (bit 1: checked against the source). A timestamp-based one would be stale,
    # every mtime in the layers being fixed. Ours are unchecked: the image's sources never change.
    assert all(flag & 0b01 for flag in flags), flags
    assert flags[0b01] > 1000
