"""`spo image build`: the operator image, built offline from spo/imagerecipe.py without a daemon.

This machine reaches Debian's mirrors and PyPI but no container registry, so the image the Containerfile
describes is assembled here from the same recipe: a root file system of Debian packages made by
`mmdebstrap`, the pinned dependencies and the project's wheel installed into its Python by pip, and all
of it written by our OCI writer (spo/images.py) as an image layout tar that `ctr -n k8s.io images import`
loads. Three layers, least changing first: the Debian base (cached by the hash of what makes it), the
dependencies (cached by the hash of their pinned list) and our code, so a code change rebuilds only the
last one. Every layer is reproducible (fixed mtimes and owners, sorted entries, hash-checked .pyc files
compiled with a fixed hash seed), so the same inputs give the same digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from api.constants import ANNOTATION_OCI_REF_NAME, DEFAULT_IMAGE, OPERATOR_IMAGE_TAR
from spo import images
from spo.imagerecipe import (
    CONTAINERFILE_NAME,
    RECIPE,
    Recipe,
    base_setup,
    containerfile,
    dpkg_excludes_file,
    install_steps,
    pip_wheel,
)
from spo.images import ImageBuildError, ImageSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tools print a lot; an error message carries the end of it, where the reason is.
_OUTPUT_TAIL = 4000
_LAYERS = ("base", "dependencies", "project")
# Part of every cache key: raise it when what a cached layer holds changes for the same inputs.
_CACHE_FORMAT = "2"
_CACHE_KEEP = 2  # cached layers of each kind (e.g. two checkouts with different recipes)


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    reference: str
    digest: str  # the manifest's, as `ctr images ls` shows it
    layer_sizes: tuple[int, ...]
    rebuilt: tuple[str, ...]  # the layers this build made; the others came from the cache


# --- pure: what the cache keys and commands are --------------------------------------------------------


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def base_key(recipe: Recipe, architecture: str) -> str:
    """Everything the base layer is made from: a change to any of it builds a new base."""
    command = mmdebstrap_command(recipe, Path("EXCLUDES"), Path("OUTPUT"))
    return _key("base", _CACHE_FORMAT, architecture, shlex.join(command), dpkg_excludes_file(recipe))


def dependencies_key(recipe: Recipe, requirements: bytes, architecture: str) -> str:
    """The pinned list and every step that installs it: a change to any of it builds a new layer."""
    steps = install_steps(recipe, ("PYTHON",), "WHEELS", "TARGET", ["-r", "REQUIREMENTS"])
    return _key(
        "dependencies", _CACHE_FORMAT, architecture, recipe.python, *map(shlex.join, steps), requirements
    )


def mmdebstrap_command(recipe: Recipe, excludes_file: Path, output: Path) -> list[str]:
    # merged-usr's setup hook alone: its essential hook would install the real usr-is-merged, which on
    # bookworm is usrmerge and pulls in perl (some 50 MB the image never runs).
    return [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        "--include=" + ",".join(recipe.packages),
        f"--dpkgopt={excludes_file}",
        '--aptopt=Acquire::Languages "none"',
        '--setup-hook=sh /usr/share/mmdebstrap/hooks/merged-usr/setup00.sh "$1"',
        f'--customize-hook=chroot "$1" sh -c {shlex.quote(base_setup(recipe))}',
        "--skip=output/dev",
        recipe.suite,
        str(output),
        *recipe.apt_sources,
    ]


def launcher_entry(recipe: Recipe) -> images.Entry:
    return images.regular(recipe.launcher_path, ("\n".join(recipe.launcher) + "\n").encode(), 0o755)


def image_spec(recipe: Recipe, reference: str, layers: Sequence[bytes]) -> ImageSpec:
    return ImageSpec(
        reference,
        tuple(layers),
        cmd=(),
        user=f"{recipe.user}:{recipe.user}",
        env=recipe.env,
        entrypoint=recipe.entrypoint,
    )


# --- I/O: running the tools ---------------------------------------------------------------------------


def _build_env() -> dict[str, str]:
    return {**os.environ, "SOURCE_DATE_EPOCH": str(images.FIXED_MTIME), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            list(argv), cwd=cwd, env=_build_env(), capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ImageBuildError(f"{argv[0]} not found: install it (bash hack/setup.sh does)") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-_OUTPUT_TAIL:]
        raise ImageBuildError(f"`{shlex.join(argv)}` failed (exit code {result.returncode}):\n{output}")
    return result.stdout


def _check_python(recipe: Recipe) -> tuple[str, ...]:
    """The interpreter that runs pip and compileall: it must be the image's Python version, since the
    wheels it builds and the bytecode it writes are for its own version."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != recipe.python:
        raise ImageBuildError(
            f"the image's Python is {recipe.python} but this is Python {running} ({sys.executable}): "
            f"run spo from a Python {recipe.python} environment"
        )
    return (sys.executable,)


def cached_layer(cache_dir: Path, kind: str, key: str, build: Callable[[Path], bytes]) -> tuple[bytes, bool]:
    """The layer of `kind` cached under `key`, and whether it was built now with `build(scratch_dir)`.

    Only the most recently used layers of each kind are kept: every recipe change would otherwise leave
    another 100 MB behind.
    """
    cached = cache_dir / f"{kind}-{key}.tar"
    if cached.is_file():
        layer, built = cached.read_bytes(), False
        os.utime(cached)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{cached.name}.") as scratch:
            layer, built = build(Path(scratch)), True
        images.write_if_changed(cached, layer)
    others = sorted(cache_dir.glob(f"{kind}-*.tar"), key=lambda path: path.stat().st_mtime, reverse=True)
    for stale in others[_CACHE_KEEP:]:
        if stale != cached:
            stale.unlink(missing_ok=True)
    return layer, built


def _base_layer(recipe: Recipe, scratch: Path) -> bytes:
    excludes = scratch / "dpkg-excludes"
    excludes.write_text(dpkg_excludes_file(recipe))
    root = scratch / "root.tar"
    _run(mmdebstrap_command(recipe, excludes, root))
    with tarfile.open(root) as archive:
        return images.layer_tar(images.archive_entries(archive))


def _install(recipe: Recipe, python: Sequence[str], wheels: Path, tree: Path, what: Sequence[str]) -> None:
    """Install wheels from `wheels` into `tree`, laid out as in the image, with its bytecode."""
    target = tree / recipe.site_packages.lstrip("/")
    for step in install_steps(recipe, python, str(wheels), str(target), what):
        _run(step)


def _dependencies_layer(recipe: Recipe, requirements: Path, scratch: Path) -> bytes:
    python = _check_python(recipe)
    wheels, tree = scratch / "wheels", scratch / "tree"
    _run(pip_wheel(python, str(wheels), ["-r", str(requirements)]))
    _install(recipe, python, wheels, tree, ["-r", str(requirements)])
    return images.layer_tar(images.tree_entries(tree))


def copy_sources(source: Path, names: Sequence[str], destination: Path) -> None:
    """Copy the files and trees `names` of the checkout `source`, without Python's caches."""
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in names:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, destination / name, ignore=ignored)
        elif path.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination / name)
        else:
            raise ImageBuildError(f"{path} not found: build the image from a source checkout")


def _project_layer(recipe: Recipe, source: Path, scratch: Path) -> bytes:
    python = _check_python(recipe)
    copy, wheels, tree = scratch / "source", scratch / "wheels", scratch / "tree"
    # A copy of exactly what the Containerfile copies: no build/ leftovers or caches of the checkout.
    copy_sources(source, recipe.project_sources, copy)
    _run(pip_wheel(python, str(wheels), [str(copy)]))
    _install(recipe, python, wheels, tree, [recipe.project])
    return images.layer_tar([*images.tree_entries(tree), launcher_entry(recipe)])


def build_operator_image(
    output: Path,
    reference: str = DEFAULT_IMAGE,
    cache_dir: Path | None = None,
    source: Path = REPO_ROOT,
    recipe: Recipe = RECIPE,
) -> BuiltImage:
    """Build the image into the OCI layout tar `output`, tagged `reference`, for `ctr images import`."""
    cache = cache_dir or images.default_cache_dir()
    architecture = images.host_architecture()
    requirements = source / recipe.requirements_source
    if not requirements.is_file():
        raise ImageBuildError(f"{requirements} not found: build the image from a source checkout")
    base, base_built = cached_layer(
        cache, "operator-base", base_key(recipe, architecture), lambda scratch: _base_layer(recipe, scratch)
    )
    deps, deps_built = cached_layer(
        cache,
        "operator-deps",
        dependencies_key(recipe, requirements.read_bytes(), architecture),
        lambda scratch: _dependencies_layer(recipe, requirements, scratch),
    )
    with tempfile.TemporaryDirectory(prefix="spo-image-") as scratch:
        project = _project_layer(recipe, source, Path(scratch))
    layers = [base, deps, project]
    files = images.oci_layout([image_spec(recipe, reference, layers)], architecture)
    images.write_if_changed(output, images.layout_tar(files))
    manifest = json.loads(files["index.json"])["manifests"][0]
    return BuiltImage(
        path=output,
        reference=manifest["annotations"][ANNOTATION_OCI_REF_NAME],
        digest=manifest["digest"],
        layer_sizes=tuple(len(layer) for layer in layers),
        rebuilt=tuple(
            name for name, built in zip(_LAYERS, (base_built, deps_built, True), strict=True) if built
        ),
    )


def canonical_name(distribution: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503): `prometheus_client` is `prometheus-client`."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def lock_requirements(source: Path = REPO_ROOT, recipe: Recipe = RECIPE) -> str:
    """The pinned list of the project's runtime dependencies (not [test]), as pip resolves them today."""
    python = _check_python(recipe)
    resolve = [*python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-"]
    report = json.loads(_run([*resolve, str(source)]))
    pins = [
        f"{item['metadata']['name']}=={item['metadata']['version']}"
        for item in report["install"]
        if canonical_name(item["metadata"]["name"])
        not in map(canonical_name, (recipe.project, *recipe.left_out))
    ]
    header = (
        "# The operator image's Python dependencies, pinned: `spo image lock` writes this file from\n"
        "# pyproject.toml's runtime dependencies (not [test]), without those only pruned code needs\n"
        "# (spo/imagerecipe.py). Both the Containerfile and `spo image build` install exactly these.\n"
    )
    return header + "".join(f"{pin}\n" for pin in sorted(pins, key=str.lower))


# --- the command line -------------------------------------------------------------------------------


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "image",
        help="the operator image: build it offline, render its Containerfile, pin its dependencies",
        description="The operator image, from the one recipe in spo/imagerecipe.py.",
    )
    commands = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="build the image offline (mmdebstrap, pip; no daemon, no registry) as an OCI layout tar",
        description="Build the operator image from Debian packages and the project's wheel into an OCI "
        "image layout tar that `ctr -n k8s.io images import` loads; print its path and digest. Needs "
        "mmdebstrap and root (or user namespaces) for the Debian base, which is cached.",
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE, help="the image's name (default: %(default)s)")
    build.add_argument(
        "--output", type=Path, default=None,
        help=f"the tar to write (default: <cache-dir>/{OPERATOR_IMAGE_TAR})",
    )  # fmt: skip
    build.add_argument(
        "--cache-dir", type=Path, default=images.default_cache_dir(),
        help="where the base and dependency layers are cached (default: %(default)s)",
    )  # fmt: skip
    build.add_argument("--source", type=Path, default=REPO_ROOT, help="the source checkout to build")
    build.set_defaults(func=_build)
    render = commands.add_parser(
        "containerfile",
        help=f"print the {CONTAINERFILE_NAME} rendered from the recipe",
        description=f"Print the {CONTAINERFILE_NAME}; the committed one must equal it.",
    )
    render.set_defaults(func=lambda args: _print(containerfile()))
    lock = commands.add_parser(
        "lock",
        help=f"print the pinned runtime dependencies ({RECIPE.requirements_source})",
        description="Resolve pyproject.toml's runtime dependencies with pip and print them pinned.",
    )
    lock.set_defaults(func=lambda args: _print(lock_requirements()))


def _print(text: str) -> int:
    sys.stdout.write(text)
    return 0


def _build(args: argparse.Namespace) -> int:
    output = args.output or args.cache_dir / OPERATOR_IMAGE_TAR
    try:
        built = build_operator_image(output, args.tag, args.cache_dir, args.source)
    except (ImageBuildError, OSError) as error:
        print(f"cannot build the operator image: {error}", file=sys.stderr)
        return 1
    print(json.dumps({**asdict(built), "path": str(built.path)}, indent=2))
    return 0
