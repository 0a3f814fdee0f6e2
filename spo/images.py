"""The node's container images, built locally without a registry or a daemon.

The local node never pulls: every image a pod of the docs names (and containerd's sandbox image) is built
here as an OCI image layout, written into one tar that `ctr -n k8s.io images import` loads, each image
tagged with the exact reference the kubelet will ask for. With the default pull policy the kubelet then
finds them "already present on machine".

The images stand in for the docs' ones on a root of Debian's `busybox-static`; `node_image_specs` lists
them as data, and the writer (`layer_tar`, `oci_layout`, `layout_tar`) is generic and pure. The output is
reproducible: fixed mtimes and owners, sorted entries, canonical JSON and no timestamps in the configs, so
the same inputs give the same bytes and digests, and `build_node_images` leaves an identical tar alone.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from api.constants import (
    ANNOTATION_CONTAINERD_IMAGE_NAME,
    ANNOTATION_OCI_REF_NAME,
    BUSYBOX_PATH,
    DEFAULT_REGISTRY,
    DEFAULT_REPOSITORY_PREFIX,
    DEFAULT_TAG,
    IMAGE_FEDORA_MINIMAL,
    IMAGE_NGINX_UNPRIVILEGED,
    IMAGE_REDIS,
    IMAGE_TEST_BUSYBOX,
    IMAGE_TEST_NGINX,
    IMAGE_TEST_NGINX_UNPRIVILEGED,
    IMAGE_UBUNTU,
    IMAGES_CACHE_SUBDIR,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
    NODE_IMAGES_TAR,
    OCI_LAYOUT_VERSION,
    SANDBOX_IMAGE,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_SOURCE = REPO_ROOT / "hack" / "images"
PAUSE_SOURCE = IMAGES_SOURCE / "pause"
FILES = IMAGES_SOURCE / "files"

# Any fixed instant would do; 0 keeps layers identical whenever and wherever they are built.
FIXED_MTIME = 0
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT_UID = 0
NGINX_UID = 101  # the uid nginx-unprivileged images run as (the docs' pods set runAsNonRoot)
REDIS_UID = 999  # the official redis image's user
SANDBOX_UID = 65535
NOBODY_UID = 65534
WEB_ROOT = "/usr/share/nginx/html"
REDIS_DATA = "/data"
RUN = "/usr/local/bin/spo-run"
# Go's names for the machine architectures the OCI platform field uses (the same ones).
GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip

_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class ImageBuildError(RuntimeError):
    """An image cannot be built; the message says what is missing or wrong."""


class Kind(Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"  # `target`: the absolute path of a FILE entry of the same layer


@dataclass(frozen=True)
class Entry:
    """One file system object of a layer; `path` is absolute inside the image."""

    path: str
    kind: Kind
    mode: int
    uid: int = ROOT_UID
    gid: int = ROOT_UID
    data: bytes = b""
    target: str = ""


def directory(path: str, mode: int = 0o755, owner: int = ROOT_UID) -> Entry:
    return Entry(path, Kind.DIR, mode, owner, owner)


def regular(path: str, data: bytes, mode: int = 0o644, owner: int = ROOT_UID) -> Entry:
    return Entry(path, Kind.FILE, mode, owner, owner, data=data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0o777, target=target)


# A layer as entries, or as a layer tar already written (e.g. cached by a build from an earlier run).
Layer = tuple[Entry, ...] | bytes


@dataclass(frozen=True)
class ImageSpec:
    """An image: its reference as a pod spells it, its layers (bottom first) and its run configuration."""

    reference: str
    layers: tuple[Layer, ...]
    cmd: tuple[str, ...]
    user: str = ""
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = (DEFAULT_PATH,)
    entrypoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeInputs:
    """What the node images are made of, read from the machine by `read_inputs`."""

    busybox: bytes
    applets: tuple[str, ...]  # paths relative to the root, as `busybox --list-full` prints them
    pause: bytes
    files: Mapping[str, bytes] = field(default_factory=dict)  # file name in hack/images/files -> bytes


# --- references -----------------------------------------------------------------------------------


def normalize_reference(reference: str) -> str:
    """The full name containerd stores an image under: `ubuntu` -> `docker.io/library/ubuntu:latest`.

    The kubelet asks containerd for this form, so an image imported under a short name is never found.
    """
    match = _REFERENCE.match(reference)
    if match is None:
        raise ValueError(f"not a valid image reference: {reference!r}")
    name, tag, digest = match.group("name"), match.group("tag"), match.group("digest")
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        name = f"{DEFAULT_REGISTRY}/{name}"
        first, rest = DEFAULT_REGISTRY, name.partition("/")[2]
    if first == DEFAULT_REGISTRY and "/" not in rest:
        name = f"{DEFAULT_REGISTRY}/{DEFAULT_REPOSITORY_PREFIX}/{rest}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --- the generic writer (pure) --------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _tar(members: Iterable[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in members:
            info.mtime = FIXED_MTIME
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer holding `entries`, sorted so that parents come before their children."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if not entry.path.startswith("/") or entry.path == "/" or entry.path.endswith("/"):
            raise ValueError(f"layer entry path must be absolute and name a file: {entry.path!r}")
        if entry.path in by_path:
            raise ValueError(f"layer lists {entry.path!r} twice")
        by_path[entry.path] = entry
    for entry in by_path.values():
        linked = by_path.get(entry.target)
        # An importer links to a file it has already written: the target must come first.
        if entry.kind is Kind.HARDLINK and (
            linked is None or linked.kind is not Kind.FILE or _order(entry.target) > _order(entry.path)
        ):
            raise ValueError(f"hard link {entry.path!r} must follow the file it links to: {entry.target!r}")

    def member(entry: Entry) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(entry.path.lstrip("/"))
        info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
        if entry.kind is Kind.DIR:
            info.type = tarfile.DIRTYPE
        elif entry.kind is Kind.SYMLINK:
            info.type, info.linkname = tarfile.SYMTYPE, entry.target
        elif entry.kind is Kind.HARDLINK:
            info.type, info.linkname = tarfile.LNKTYPE, entry.target.lstrip("/")
        else:
            info.size = len(entry.data)
        return info, entry.data

    return _tar(member(by_path[path]) for path in sorted(by_path, key=_order))


def _order(path: str) -> list[str]:
    # Sorting by path components (not by string) keeps "/a/b" right after "/a", before "/a-b".
    return path.split("/")


def archive_entries(archive: tarfile.TarFile) -> list[Entry]:
    """The entries of a root file system tar (e.g. mmdebstrap's), owners and modes as they are in it.

    Hard links stay links when their file sorts first (as layer_tar orders them), else become copies;
    device nodes are left out: the container runtime provides /dev.
    """
    entries: list[Entry] = []
    for info in archive:
        path = posixpath.normpath("/" + info.name)
        if path == "/" or info.ischr() or info.isblk() or info.isfifo():
            continue
        if info.isdir():
            entries.append(Entry(path, Kind.DIR, info.mode, info.uid, info.gid))
        elif info.issym():
            entries.append(Entry(path, Kind.SYMLINK, 0o777, info.uid, info.gid, target=info.linkname))
        elif info.islnk() and _order(target := posixpath.normpath("/" + info.linkname)) < _order(path):
            entries.append(Entry(path, Kind.HARDLINK, info.mode, info.uid, info.gid, target=target))
        elif info.isfile() or info.islnk():
            content = archive.extractfile(info)
            if content is None:
                raise ImageBuildError(f"{archive.name!s}: cannot read {info.name}")
            entries.append(Entry(path, Kind.FILE, info.mode, info.uid, info.gid, data=content.read()))
        else:
            raise ImageBuildError(f"{archive.name!s}: unsupported member {info.name} (type {info.type!r})")
    return entries


def tree_entries(root: Path) -> list[Entry]:
    """The entries of a directory tree a build step wrote (pip's target), at the same paths below /.

    Owned by root, with modes normalized (0755 for directories and executables, 0644 otherwise) so that
    neither the builder's uid nor its umask changes the layer.
    """
    entries: list[Entry] = []
    for path in sorted(root.rglob("*")):
        name = "/" + path.relative_to(root).as_posix()
        if path.is_symlink():
            entries.append(symlink(name, os.readlink(path)))
        elif path.is_dir():
            entries.append(directory(name))
        elif path.is_file():
            executable = path.stat().st_mode & 0o100
            entries.append(regular(name, path.read_bytes(), 0o755 if executable else 0o644))
        else:
            raise ImageBuildError(f"{path}: neither a file, a directory nor a symbolic link")
    return entries


def image_config(spec: ImageSpec, diff_ids: Sequence[str], architecture: str) -> dict[str, Any]:
    """The OCI image configuration; it carries no creation time so that it is reproducible."""
    config: dict[str, Any] = {"Cmd": list(spec.cmd)}
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.env:
        config["Env"] = list(spec.env)
    if spec.user:
        config["User"] = spec.user
    if spec.working_dir:
        config["WorkingDir"] = spec.working_dir
    if spec.exposed_ports:
        config["ExposedPorts"] = {port: {} for port in spec.exposed_ports}
    return {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


def oci_layout(specs: Sequence[ImageSpec], architecture: str) -> dict[str, bytes]:
    """The files of an OCI image layout (path -> content) holding every image in `specs`.

    Blobs shared by several images (a common base layer) are stored once. Each manifest's descriptor in
    index.json carries both annotations containerd's import reads an image's name from.
    """
    files: dict[str, bytes] = {"oci-layout": _canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})}

    def blob(media_type: str, data: bytes) -> dict[str, Any]:
        descriptor = _descriptor(media_type, data)
        files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")] = data
        return descriptor

    manifests: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        reference = normalize_reference(spec.reference)
        if reference in seen:
            raise ValueError(f"two images are named {reference}")
        seen.add(reference)
        layers = [layer if isinstance(layer, bytes) else layer_tar(layer) for layer in spec.layers]
        config = image_config(spec, [_digest(layer) for layer in layers], architecture)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": blob(MEDIA_TYPE_OCI_CONFIG, _canonical_json(config)),
            "layers": [blob(MEDIA_TYPE_OCI_LAYER, layer) for layer in layers],
        }
        descriptor = blob(MEDIA_TYPE_OCI_MANIFEST, _canonical_json(manifest))
        descriptor["platform"] = {"architecture": architecture, "os": "linux"}
        descriptor["annotations"] = {
            ANNOTATION_OCI_REF_NAME: reference,
            ANNOTATION_CONTAINERD_IMAGE_NAME: reference,
        }
        manifests.append(descriptor)
    files["index.json"] = _canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": manifests}
    )
    return files


def layout_tar(files: Mapping[str, bytes]) -> bytes:
    """The layout's files as one tar, after the directories that hold them, in a fixed order."""

    def directory_member(path: str) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        return info, b""

    def file_member(path: str) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(path)
        info.size, info.mode = len(files[path]), 0o644
        return info, files[path]

    parents = {path.rsplit("/", depth)[0] for path in files for depth in range(1, path.count("/") + 1)}
    return _tar([directory_member(d) for d in sorted(parents)] + [file_member(p) for p in sorted(files)])


# --- the node's images, as data -------------------------------------------------------------------

USERS = ((ROOT_UID, "root", "/root", "/bin/sh"), (NGINX_UID, "nginx", "/nonexistent", "/sbin/nologin"),
         (REDIS_UID, "redis", REDIS_DATA, "/sbin/nologin"),
         (NOBODY_UID, "nobody", "/nonexistent", "/sbin/nologin"))  # fmt: skip
ROOT_DIRECTORIES = ("/bin", "/dev", "/etc", "/home", "/proc", "/run", "/sbin", "/sys", "/usr", "/usr/bin",
                    "/usr/local", "/usr/local/bin", "/usr/sbin", "/var")  # fmt: skip


def busybox_layer(inputs: NodeInputs) -> tuple[Entry, ...]:
    """A small root: busybox with its applet links, users root/nginx/redis/nobody, a sticky /tmp."""
    passwd = "".join(f"{name}:x:{uid}:{uid}:{name}:{home}:{shell}\n" for uid, name, home, shell in USERS)
    group = "".join(f"{name}:x:{uid}:\n" for uid, name, _, _ in USERS)
    links = ["/" + applet for applet in inputs.applets if "/" + applet != BUSYBOX_PATH]
    parents = {link.rsplit("/", 1)[0] for link in links} - {""}
    return (
        *(directory(path) for path in sorted(parents.union(ROOT_DIRECTORIES))),
        directory("/root", 0o700),
        directory("/tmp", 0o1777),  # noqa: S108 (the image's /tmp, not this machine's)
        regular(BUSYBOX_PATH, inputs.busybox, 0o755),
        *(symlink(link, BUSYBOX_PATH) for link in links),
        regular("/etc/passwd", passwd.encode()),
        regular("/etc/group", group.encode()),
        regular(RUN, _file(inputs, "spo-run"), 0o755),
    )


def _file(inputs: NodeInputs, name: str) -> bytes:
    try:
        return inputs.files[name]
    except KeyError:
        raise ImageBuildError(f"{FILES / name} is missing") from None


def node_image_specs(inputs: NodeInputs) -> list[ImageSpec]:
    """Every image the node needs: the sandbox image, the docs' images and our tests' busybox image."""
    base = busybox_layer(inputs)
    bash = regular("/bin/bash", _file(inputs, "bash"), 0o755)
    site = (
        directory("/usr/share"),
        directory("/usr/share/nginx"),
        directory(WEB_ROOT),
        regular(f"{WEB_ROOT}/index.html", _file(inputs, "index.html")),
    )

    def httpd(port: int) -> tuple[str, ...]:
        return (RUN, "httpd", "-f", "-p", str(port), "-h", WEB_ROOT)

    unprivileged_web = ImageSpec(
        "", (base, site), httpd(8080), f"{NGINX_UID}:{NGINX_UID}", exposed_ports=("8080/tcp",)
    )
    shell = ImageSpec("", (base, (bash,)), ("/bin/bash",))
    return [
        ImageSpec(
            SANDBOX_IMAGE,
            ((regular("/pause", inputs.pause, 0o755),),),
            ("/pause",),
            f"{SANDBOX_UID}:{SANDBOX_UID}",
            env=(),
        ),
        replace(unprivileged_web, reference=IMAGE_TEST_NGINX_UNPRIVILEGED),
        replace(unprivileged_web, reference=IMAGE_NGINX_UNPRIVILEGED),
        ImageSpec(IMAGE_TEST_NGINX, (base, site), httpd(80), exposed_ports=("80/tcp",)),
        ImageSpec(
            IMAGE_REDIS,
            (
                base,
                (
                    directory(REDIS_DATA, owner=REDIS_UID),
                    regular("/usr/local/bin/redis-server", _file(inputs, "redis-server"), 0o755),
                ),
            ),
            (RUN, "redis-server"),
            f"{REDIS_UID}:{REDIS_UID}",
            working_dir=REDIS_DATA,
            exposed_ports=("6379/tcp",),
        ),
        replace(
            shell,
            reference=IMAGE_FEDORA_MINIMAL,
            layers=(base, (bash, regular("/usr/bin/curl", _file(inputs, "curl"), 0o755))),
        ),
        replace(shell, reference=IMAGE_UBUNTU),
        ImageSpec(IMAGE_TEST_BUSYBOX, (base,), (RUN, "sleep", "2147483647")),
    ]


# --- reading the machine and writing the tar (I/O) ------------------------------------------------


def host_architecture() -> str:
    machine = platform.machine()
    if machine not in GO_ARCH:
        raise ImageBuildError(f"no OCI architecture name known for this machine ({machine!r})")
    return GO_ARCH[machine]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / IMAGES_CACHE_SUBDIR


def pause_binary(cache_dir: Path, architecture: str) -> bytes:
    """Our pause binary (hack/images/pause), built once per source and Go version into `cache_dir`."""
    sources = sorted(path for path in PAUSE_SOURCE.glob("*") if path.is_file())
    if not sources:
        raise ImageBuildError(f"{PAUSE_SOURCE} not found: build the node images from a source checkout")
    if shutil.which("go") is None:
        raise ImageBuildError("Go is needed to build the pause image (go1.26+ on PATH)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": architecture}
    # A user's GOFLAGS, a go.work above the checkout or a toolchain download must not change the build.
    env |= {"GOFLAGS": "", "GOWORK": "off", "GOTOOLCHAIN": "local"}
    version = subprocess.run(
        ["go", "env", "GOVERSION"], env=env, capture_output=True, text=True, check=False
    ).stdout.strip()
    key = hashlib.sha256(f"{version} {architecture}".encode())
    for source in sources:
        key.update(source.name.encode() + b"\0" + source.read_bytes())
    binary = cache_dir / f"pause-{key.hexdigest()[:16]}"
    if not binary.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            built = Path(scratch) / "pause"
            result = subprocess.run(
                ["go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(built), "."],
                cwd=PAUSE_SOURCE,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ImageBuildError(f"building the pause binary failed:\n{result.stderr[-4000:]}")
            # Atomic: a concurrent build (another checkout, a parallel test) never sees half a binary.
            built.replace(binary)
    return binary.read_bytes()


def read_inputs(cache_dir: Path, architecture: str) -> NodeInputs:
    busybox = Path(BUSYBOX_PATH)
    if not busybox.is_file():
        raise ImageBuildError(
            f"{BUSYBOX_PATH} not found: install Debian's busybox-static (bash hack/setup.sh does)"
        )
    listing = subprocess.run([BUSYBOX_PATH, "--list-full"], capture_output=True, text=True, check=False)
    if listing.returncode != 0 or not listing.stdout.strip():
        raise ImageBuildError(f"{BUSYBOX_PATH} --list-full failed: {listing.stderr.strip()}")
    return NodeInputs(
        busybox=busybox.read_bytes(),
        applets=tuple(sorted(listing.stdout.split())),
        pause=pause_binary(cache_dir, architecture),
        files={path.name: path.read_bytes() for path in sorted(FILES.glob("*")) if path.is_file()},
    )


def build_node_images(out_dir: Path, cache_dir: Path | None = None) -> Path:
    """Write every image the node needs into `out_dir`/node-images.tar, for `ctr images import`.

    Returns the tar's path; an identical tar already there is left untouched (same inode, same mtime).
    """
    architecture = host_architecture()
    inputs = read_inputs(cache_dir or default_cache_dir(), architecture)
    data = layout_tar(oci_layout(node_image_specs(inputs), architecture))
    target = out_dir / NODE_IMAGES_TAR
    write_if_changed(target, data)
    return target


def write_if_changed(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically (0644), leaving an identical file untouched."""
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as partial:
        partial.write(data)
    os.chmod(partial.name, 0o644)
    Path(partial.name).replace(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spo.images",
        description=f"Build the node's images into OUT_DIR/{NODE_IMAGES_TAR} "
        "(for `ctr -n k8s.io images import`) and print its path.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    args = parser.parse_args(argv)
    try:
        print(build_node_images(args.out_dir))
    except (ImageBuildError, OSError) as error:
        print(f"cannot build the node images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
