"""Issue 8, item 3: the node's images, built without a registry or a daemon (spo/images.py).

The layout is checked the way an importer reads it (index -> manifest -> config and layers, every digest and
size recomputed); the images' processes are run for real: the pause binary, and each service image's command
as its user in a fresh network namespace (root only), the way a runtime would start it.
"""

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.constants import (
    ANNOTATION_CONTAINERD_IMAGE_NAME,
    ANNOTATION_OCI_REF_NAME,
    BUSYBOX_PATH,
    DOCS_IMAGES,
    IMAGE_FEDORA_MINIMAL,
    IMAGE_NGINX_UNPRIVILEGED,
    IMAGE_REDIS,
    IMAGE_TEST_BUSYBOX,
    IMAGE_TEST_NGINX,
    IMAGE_TEST_NGINX_UNPRIVILEGED,
    IMAGE_UBUNTU,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
    NODE_IMAGES_TAR,
    OCI_LAYOUT_VERSION,
    SANDBOX_IMAGE,
)
from spo import images
from spo.images import (
    Entry,
    ImageSpec,
    NodeInputs,
    build_node_images,
    directory,
    layer_tar,
    layout_tar,
    normalize_reference,
    oci_layout,
    regular,
    symlink,
)
from tests.docs_examples import DOCS

HAS_BUSYBOX = Path(BUSYBOX_PATH).is_file()
HAS_GO = shutil.which("go") is not None


# --- reading a layout back, as an importer does -------------------------------------------------------


@dataclass
class Image:
    reference: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[bytes]

    def members(self) -> dict[str, tarfile.TarInfo]:
        """The image's file system, upper layers over lower ones."""
        merged: dict[str, tarfile.TarInfo] = {}
        for layer in self.layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
                merged |= {info.name: info for info in archive.getmembers()}
        return merged

    def read(self, path: str) -> bytes:
        for layer in reversed(self.layers):
            with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
                if path in archive.getnames():
                    extracted = archive.extractfile(path)
                    assert extracted is not None
                    return extracted.read()
        raise KeyError(path)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_layout(tar_bytes: bytes) -> dict[str, Image]:
    """Every image of an OCI-layout tar by reference, failing on anything an importer would reject."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": OCI_LAYOUT_VERSION}
    referenced = {"oci-layout", "index.json"}

    def blob(descriptor: dict[str, Any], media_type: str) -> bytes:
        assert descriptor["mediaType"] == media_type
        path = "blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")
        data = files[path]
        assert (sha256(data), len(data)) == (descriptor["digest"], descriptor["size"])
        referenced.add(path)
        return data

    index = json.loads(files["index.json"])
    assert (index["schemaVersion"], index["mediaType"]) == (2, MEDIA_TYPE_OCI_INDEX)
    found: dict[str, Image] = {}
    for descriptor in index["manifests"]:
        reference = descriptor["annotations"][ANNOTATION_CONTAINERD_IMAGE_NAME]
        assert descriptor["annotations"][ANNOTATION_OCI_REF_NAME] == reference
        assert descriptor["platform"] == {"architecture": images.host_architecture(), "os": "linux"}
        manifest = json.loads(blob(descriptor, MEDIA_TYPE_OCI_MANIFEST))
        assert (manifest["schemaVersion"], manifest["mediaType"]) == (2, MEDIA_TYPE_OCI_MANIFEST)
        config = json.loads(blob(manifest["config"], MEDIA_TYPE_OCI_CONFIG))
        layers = [blob(layer, MEDIA_TYPE_OCI_LAYER) for layer in manifest["layers"]]
        # Uncompressed layers: each diff_id is the digest of the layer blob itself.
        assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]}
        assert (config["architecture"], config["os"]) == (images.host_architecture(), "linux")
        assert "created" not in config
        assert reference not in found
        found[reference] = Image(reference, manifest, config, layers)
    assert set(files) == referenced, "blobs nothing refers to"
    return found


# --- fixtures -----------------------------------------------------------------------------------------

FILES = {path.name: path.read_bytes() for path in images.FILES.iterdir()}
FAKE_INPUTS = NodeInputs(
    busybox=b"\x7fELF busybox",
    applets=("bin/busybox", "bin/sh", "linuxrc", "usr/bin/wget"),
    pause=b"\x7fELF pause",
    files=FILES,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (HAS_BUSYBOX and HAS_GO):
        pytest.skip("needs Debian's busybox-static and Go (bash hack/setup.sh)")
    return build_node_images(tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def node_images(built: Path) -> dict[str, Image]:
    return read_layout(built.read_bytes())


# --- references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "normalized"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("nginxinc/nginx-unprivileged:1.21", "docker.io/nginxinc/nginx-unprivileged:1.21"),
        ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("quay.io/security-profiles-operator/redis:6.2.1", "quay.io/security-profiles-operator/redis:6.2.1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
    ],
)
def test_reference_is_normalized_as_the_kubelet_asks_containerd(reference: str, normalized: str) -> None:
    assert normalize_reference(reference) == normalized


@pytest.mark.parametrize("reference", ["", "Ubuntu", "ubuntu:", "a b", "ubuntu@sha256:12", "/ubuntu", "*"])
def test_invalid_reference_is_rejected(reference: str) -> None:
    with pytest.raises(ValueError, match="not a valid image reference"):
        normalize_reference(reference)


# --- the generic writer ---------------------------------------------------------------------------------


def test_layout_of_every_image_is_valid() -> None:
    specs = images.node_image_specs(FAKE_INPUTS)
    found = read_layout(layout_tar(oci_layout(specs, images.host_architecture())))
    assert list(found) == [normalize_reference(spec.reference) for spec in specs]


def test_shared_base_layer_is_stored_once() -> None:
    files = oci_layout(images.node_image_specs(FAKE_INPUTS), "amd64")
    blobs = [data for path, data in files.items() if path.startswith("blobs/")]
    assert sum(FAKE_INPUTS.busybox in blob for blob in blobs) == 1


def test_layer_lists_parents_first_with_fixed_times_and_owners() -> None:
    entries = [
        regular("/a-b", b"x"),
        regular("/a/file", b"data", 0o600, owner=101),
        directory("/a", 0o1777),
        symlink("/a/link", "/a/file"),
    ]
    with tarfile.open(fileobj=io.BytesIO(layer_tar(entries))) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["a", "a/file", "a/link", "a-b"]
    assert [(m.mode, m.uid, m.gid, m.mtime, m.uname) for m in members] == [
        (0o1777, 0, 0, 0, ""),
        (0o600, 101, 101, 0, ""),
        (0o777, 0, 0, 0, ""),
        (0o644, 0, 0, 0, ""),
    ]
    assert (members[0].isdir(), members[2].issym(), members[2].linkname) == (True, True, "/a/file")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([regular("etc/passwd", b"")], "must be absolute"),
        ([directory("/")], "must be absolute"),
        ([regular("/x", b""), regular("/x", b"y")], "twice"),
    ],
)
def test_bad_layer_is_refused(entries: list[Entry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layer_tar(entries)


def test_two_images_with_one_name_are_refused() -> None:
    spec = ImageSpec("ubuntu", (), ("sh",))
    with pytest.raises(ValueError, match=r"two images are named docker.io/library/ubuntu:latest"):
        oci_layout([spec, ImageSpec("docker.io/library/ubuntu:latest", (), ("sh",))], "amd64")


def test_config_carries_the_run_settings() -> None:
    spec = ImageSpec("x", (), ("serve",), "101:101", "/data", ("8080/tcp",), ("A=1",), entrypoint=("/init",))
    assert images.image_config(spec, ["sha256:0"], "arm64") == {
        "architecture": "arm64",
        "os": "linux",
        "config": {
            "Cmd": ["serve"],
            "Entrypoint": ["/init"],
            "Env": ["A=1"],
            "User": "101:101",
            "WorkingDir": "/data",
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:0"]},
    }


def test_prebuilt_layer_is_stored_as_given() -> None:
    layer = layer_tar([regular("/a", b"a")])
    files = oci_layout([ImageSpec("x", (layer, (regular("/b", b"b"),)), ("sh",))], "amd64")
    (image,) = read_layout(layout_tar(files)).values()
    assert image.layers[0] == layer
    assert image.read("b") == b"b"


def _tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def _member(name: str, kind: bytes, mode: int = 0o644, owner: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, owner, owner, link
    return info


def test_root_archive_keeps_owners_and_modes_copies_hard_links_and_drops_devices() -> None:
    archive = _tar_of(
        (_member("./", tarfile.DIRTYPE, 0o755), b""),
        (_member("./var/mail/", tarfile.DIRTYPE, 0o2775, 8), b""),
        (_member("./usr/bin/su", tarfile.REGTYPE, 0o4755), b"su"),
        (_member("./usr/bin/su2", tarfile.LNKTYPE, 0o4755, link="./usr/bin/su"), b""),
        (_member("./usr/bin/as", tarfile.LNKTYPE, 0o4755, link="./usr/bin/su"), b""),
        (_member("./bin", tarfile.SYMTYPE, 0o777, link="usr/bin"), b""),
        (_member("./dev/null", tarfile.CHRTYPE, 0o666), b""),
    )
    assert images.archive_entries(archive) == [
        Entry("/var/mail", images.Kind.DIR, 0o2775, 8, 8),
        Entry("/usr/bin/su", images.Kind.FILE, 0o4755, data=b"su"),
        Entry("/usr/bin/su2", images.Kind.HARDLINK, 0o4755, target="/usr/bin/su"),
        # Sorted before its file, a link would come first in the layer: it is copied instead.
        Entry("/usr/bin/as", images.Kind.FILE, 0o4755, data=b"su"),
        symlink("/bin", "usr/bin"),
    ]


def test_hard_link_is_written_after_its_file_and_reads_back_as_it() -> None:
    layer = layer_tar(
        [Entry("/b/link", images.Kind.HARDLINK, 0o755, target="/a/file"), regular("/a/file", b"x")]
    )
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        assert archive.getnames() == ["a/file", "b/link"]
        link = archive.extractfile("b/link")
        assert link is not None and link.read() == b"x"


@pytest.mark.parametrize(
    "entries",
    [
        [Entry("/a/link", images.Kind.HARDLINK, 0o755, target="/b/file"), regular("/b/file", b"x")],
        [Entry("/b/link", images.Kind.HARDLINK, 0o755, target="/a/missing")],
        [Entry("/b/link", images.Kind.HARDLINK, 0o755, target="/a"), directory("/a")],
    ],
)
def test_hard_link_before_or_without_its_file_is_refused(entries: list[Entry]) -> None:
    with pytest.raises(ValueError, match="must follow the file it links to"):
        layer_tar(entries)


def test_tree_is_read_with_normalized_owners_and_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)  # a restrictive umask must not change the layer
    try:
        (tmp_path / "lib" / "pkg").mkdir(parents=True)
        (tmp_path / "lib" / "pkg" / "mod.py").write_text("x = 1\n")
        (tmp_path / "lib" / "tool").write_text("#!/bin/sh\n")
        (tmp_path / "lib" / "tool").chmod(0o700)
        (tmp_path / "lib" / "link").symlink_to("pkg")
    finally:
        os.umask(old)
    assert images.tree_entries(tmp_path) == [
        directory("/lib"),
        symlink("/lib/link", "pkg"),
        directory("/lib/pkg"),
        regular("/lib/pkg/mod.py", b"x = 1\n"),
        regular("/lib/tool", b"#!/bin/sh\n", 0o755),
    ]


def test_special_file_in_a_tree_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(images.ImageBuildError, match="fifo: neither a file, a directory nor a symbolic link"):
        images.tree_entries(tmp_path)


def test_missing_image_file_is_named() -> None:
    inputs = NodeInputs(FAKE_INPUTS.busybox, FAKE_INPUTS.applets, FAKE_INPUTS.pause, files={})
    with pytest.raises(images.ImageBuildError, match=r"hack/images/files/spo-run is missing"):
        images.node_image_specs(inputs)


# --- the docs' images -----------------------------------------------------------------------------------


@pytest.mark.skipif(not DOCS.exists(), reason=f"{DOCS} is absent (the docs live beside the clone)")
def test_committed_list_is_every_image_the_docs_run() -> None:
    text = DOCS.read_text()
    named = set(re.findall(r"(?:\bimage:\s*|--image=)\"?([^\s\"\\]+)", text)) - {"*"}
    assert named == set(DOCS_IMAGES)


def test_every_docs_image_and_the_sandbox_image_are_built() -> None:
    references = [normalize_reference(s.reference) for s in images.node_image_specs(FAKE_INPUTS)]
    wanted = [SANDBOX_IMAGE, *DOCS_IMAGES, IMAGE_TEST_BUSYBOX]
    assert sorted(references) == sorted(normalize_reference(r) for r in wanted)
    assert "docker.io/library/ubuntu:latest" in references


# --- the real build -------------------------------------------------------------------------------------


def test_two_builds_in_different_directories_are_identical(tmp_path: Path, built: Path) -> None:
    again = build_node_images(tmp_path / "out", tmp_path / "cache")
    assert again.name == NODE_IMAGES_TAR
    assert again.read_bytes() == built.read_bytes()


def test_identical_tar_is_left_alone(built: Path) -> None:
    before = built.stat()
    assert build_node_images(built.parent) == built
    after = built.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_tar_is_replaced(tmp_path: Path, built: Path) -> None:
    stale = tmp_path / NODE_IMAGES_TAR
    stale.write_bytes(b"an older build")
    assert build_node_images(tmp_path).read_bytes() == built.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [NODE_IMAGES_TAR]
    assert stale.stat().st_mode & 0o777 == 0o644


def test_base_root_files_modes_and_owners(node_images: dict[str, Image]) -> None:
    image = node_images[normalize_reference(IMAGE_TEST_BUSYBOX)]
    members = image.members()
    busybox = members["bin/busybox"]
    assert (busybox.mode, busybox.uid, busybox.gid, busybox.size) == (
        0o755,
        0,
        0,
        Path(BUSYBOX_PATH).stat().st_size,
    )
    assert (members["tmp"].isdir(), members["tmp"].mode) == (True, 0o1777)
    assert members["root"].mode == 0o700
    for applet in ("bin/sh", "bin/sleep", "usr/bin/wget", "bin/mkdir", "usr/sbin/httpd"):
        assert (members[applet].issym(), members[applet].linkname) == (True, BUSYBOX_PATH)
    assert all(m.mtime == 0 and m.uname == "" for m in members.values())
    passwd = image.read("etc/passwd").decode()
    assert "root:x:0:0:" in passwd
    assert "nginx:x:101:101:" in passwd
    assert "nginx:x:101:" in image.read("etc/group").decode()


@pytest.mark.parametrize(
    ("reference", "user", "port"),
    [
        (IMAGE_TEST_NGINX_UNPRIVILEGED, "101:101", "8080/tcp"),
        (IMAGE_NGINX_UNPRIVILEGED, "101:101", "8080/tcp"),
        (IMAGE_TEST_NGINX, None, "80/tcp"),
        (IMAGE_REDIS, "999:999", "6379/tcp"),
    ],
)
def test_service_images_run_as_their_user(
    node_images: dict[str, Image], reference: str, user: str | None, port: str
) -> None:
    config = node_images[normalize_reference(reference)].config["config"]
    assert config.get("User") == user
    assert list(config["ExposedPorts"]) == [port]


def test_sandbox_image_is_only_the_pause_binary(node_images: dict[str, Image]) -> None:
    image = node_images[SANDBOX_IMAGE]
    assert image.config["config"] == {"Cmd": ["/pause"], "User": "65535:65535"}
    pause = image.members()["pause"]
    assert list(image.members()) == ["pause"]
    assert (pause.mode, pause.uid) == (0o755, 0)
    assert image.read("pause").startswith(b"\x7fELF")


def test_shell_images_have_bash(node_images: dict[str, Image]) -> None:
    for reference in (IMAGE_UBUNTU, IMAGE_FEDORA_MINIMAL):
        image = node_images[normalize_reference(reference)]
        assert image.config["config"]["Cmd"] == ["/bin/bash"]
        assert image.members()["bin/bash"].mode == 0o755
    assert "usr/bin/curl" in node_images[normalize_reference(IMAGE_FEDORA_MINIMAL)].members()


# --- the pause binary -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pause(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_GO:
        pytest.skip("needs Go to build the pause binary")
    path = tmp_path_factory.mktemp("pause") / "pause"
    path.write_bytes(images.pause_binary(path.parent / "cache", images.host_architecture()))
    path.chmod(0o755)
    return path


@dataclass
class Pause:
    process: subprocess.Popen[str]
    child: int  # a child of pause that exits when `release` is closed
    release: int


@pytest.fixture
def running_pause(pause: Path) -> Iterator[Pause]:
    """pause with one child of its own: the shell starts `cat`, then becomes pause."""
    reader, writer = os.pipe()
    # Through fd 3: a background job's stdin is /dev/null, whatever the shell's is.
    process = subprocess.Popen(
        ["sh", "-c", f"exec 3<&0; cat <&3 >/dev/null & echo $!; exec {shlex.quote(str(pause))}"],
        stdin=reader,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(reader)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    # Once the shell has become pause, no one else can reap the child.
    assert _eventually(lambda: Path(f"/proc/{process.pid}/exe").resolve() == pause)
    yield Pause(process, child, writer)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_pause_reaps_its_children(running_pause: Pause) -> None:
    assert _state(running_pause.child) not in {None, "Z"}
    os.close(running_pause.release)  # cat reads end-of-file and exits
    if not _eventually(lambda: _state(running_pause.child) is None):
        pytest.fail(f"child {running_pause.child} of pause was never reaped")
    assert running_pause.process.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_pause_exits_zero_when_told_to_stop(running_pause: Pause, signum: signal.Signals) -> None:
    # pause reaps only after it has asked for its signals, so once its child is gone the signal cannot
    # arrive before the handler (Go's default action for TERM and INT would kill it).
    os.close(running_pause.release)
    assert _eventually(lambda: _state(running_pause.child) is None)
    running_pause.process.send_signal(signum)
    assert running_pause.process.wait(timeout=30) == 0


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _eventually(condition: Callable[[], bool]) -> bool:
    """Poll until `condition` holds or a generous deadline passes (a condition to wait for, not a timing)."""
    for _ in range(600):
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- the images' processes, started as a runtime starts them (root: chroot in a network namespace) -----


@pytest.fixture(scope="module")
def unpacked(node_images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("runs images with chroot as their user in a network namespace: needs root and unshare")
    roots: dict[str, Path] = {}
    for reference, image in node_images.items():
        root = roots[reference] = tmp_path_factory.mktemp("root")
        root.chmod(0o755)  # as a runtime's root file system is; an image's user must be able to enter it
        for layer in image.layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
                archive.extractall(root, numeric_owner=True, filter="fully_trusted")  # noqa: S202 (ours)
    return roots


# coreutils' chroot (it sets the user): busybox's shell would run its own applet for a bare "chroot".
CHROOT = shutil.which("chroot") or "chroot"


def image_command(image: Image, root: Path, args: list[str] | None = None) -> str:
    """The image's process as a runtime starts it: its user, its environment only, its working directory,
    Entrypoint + Cmd (or + args, as a pod's `args` and `kubectl run ... -- args` replace Cmd)."""
    config = image.config["config"]
    argv = [
        *(CHROOT, f"--userspec={config.get('User', '0:0')}", str(root)),
        *("/usr/bin/env", "-i", *config.get("Env", [])),
        *("/bin/sh", "-c", 'cd "$0" && exec "$@"', config.get("WorkingDir") or "/"),
        *config.get("Entrypoint", []),
        *(config["Cmd"] if args is None else args),
    ]
    return shlex.join(argv)


def in_namespaces(root: Path, script: str) -> str:
    """Run a busybox shell script in fresh network, mount and pid namespaces, as a runtime would set up a
    container: loopback up, /dev and a /proc of its own bound into `root`. Everything it starts dies with it.
    The script may call `retry COMMAND...` to wait (with a generous deadline) for a service to answer."""
    setup = f"""{BUSYBOX_PATH} ip link set lo up
{BUSYBOX_PATH} mount --bind /dev {shlex.quote(str(root / "dev"))}
{BUSYBOX_PATH} mount --bind /proc {shlex.quote(str(root / "proc"))}
retry() {{
  tries=0
  until "$@"; do
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || return 1
    {BUSYBOX_PATH} sleep 0.1
  done
}}
"""
    result = subprocess.run(
        [
            "unshare",
            "--net",
            "--pid",
            "--mount-proc",
            "--fork",
            "--",
            BUSYBOX_PATH,
            "sh",
            "-ec",
            setup + script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def serve_and_probe(image: Image, root: Path, probe: str) -> str:
    """Start the image's service, retry `probe` (which may use $server) until it answers, print the
    answer and the service's uid, then stop it with TERM and print its exit status."""
    return in_namespaces(
        root,
        f"""{image_command(image, root)} &
server=$!
probe() {{
  {probe}
}}
answer=$(retry probe)
echo "$answer"
echo "uid=$({BUSYBOX_PATH} stat -c %u /proc/$server)"
status=0
kill -TERM "$server"
wait "$server" || status=$?
echo "exit=$status"
""",
    )


@pytest.mark.parametrize(
    ("reference", "port", "uid"),
    [
        (IMAGE_TEST_NGINX_UNPRIVILEGED, 8080, 101),
        (IMAGE_NGINX_UNPRIVILEGED, 8080, 101),
        (IMAGE_TEST_NGINX, 80, 0),
    ],
)
def test_web_image_serves_http_as_its_user(
    node_images: dict[str, Image], unpacked: dict[str, Path], reference: str, port: int, uid: int
) -> None:
    name = normalize_reference(reference)
    output = serve_and_probe(
        node_images[name], unpacked[name], f"{BUSYBOX_PATH} wget -q -O - http://127.0.0.1:{port}/"
    )
    assert "<h1>Welcome to nginx!</h1>" in output
    assert f"uid={uid}\nexit=0\n" in output


def test_redis_image_answers_ping_as_redis(node_images: dict[str, Image], unpacked: dict[str, Path]) -> None:
    name = normalize_reference(IMAGE_REDIS)
    probe = rf"printf 'PING\r\nQUIT\r\n' | {BUSYBOX_PATH} nc 127.0.0.1 6379"
    output = serve_and_probe(node_images[name], unpacked[name], probe)
    assert "+PONG\n+OK\n" in output  # text mode reads the replies' CRLF as newlines
    assert "uid=999\nexit=0\n" in output


def test_test_image_sleeps_until_terminated(node_images: dict[str, Image], unpacked: dict[str, Path]) -> None:
    name = normalize_reference(IMAGE_TEST_BUSYBOX)
    # The probe answers once the service's shell has started its child (busybox may not exec `sleep`).
    probe = f"{BUSYBOX_PATH} grep . /proc/$server/task/$server/children"
    output = serve_and_probe(node_images[name], unpacked[name], probe)
    assert re.fullmatch(r"\d+ \nuid=0\nexit=0\n", output), output


def test_fedora_image_runs_the_docs_curl_command(
    node_images: dict[str, Image], unpacked: dict[str, Path], tmp_path: Path
) -> None:
    # The docs' metrics query, pointed at a local CGI that echoes the Authorization header it received.
    cgi = tmp_path / "cgi-bin" / "echo"
    cgi.parent.mkdir()
    cgi.write_text(
        f'#!{BUSYBOX_PATH} sh\necho "Content-Type: text/plain"\necho\necho "auth=$HTTP_AUTHORIZATION"\n'
    )
    cgi.chmod(0o755)
    name = normalize_reference(IMAGE_FEDORA_MINIMAL)
    docs_command = [
        "bash",
        "-c",
        'curl -ks -H "Authorization: Bearer $(echo token)" http://127.0.0.1:8081/cgi-bin/echo',
    ]
    output = in_namespaces(
        unpacked[name],
        f"""{BUSYBOX_PATH} httpd -f -p 127.0.0.1:8081 -h {tmp_path} &
retry {BUSYBOX_PATH} wget -q --spider http://127.0.0.1:8081/cgi-bin/echo
{image_command(node_images[name], unpacked[name], docs_command)}
kill %1
""",
    )
    assert output == "auth=Bearer token\n"


def test_ubuntu_image_runs_bash(node_images: dict[str, Image], unpacked: dict[str, Path]) -> None:
    name = normalize_reference(IMAGE_UBUNTU)
    command = ["bash", "-c", "cd /tmp && touch x && ls /tmp && id -u"]
    root = unpacked[name]
    assert in_namespaces(root, image_command(node_images[name], root, command)) == "x\n0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-X", "POST", "http://x/"], "curl: only GET is supported by this stand-in"),
        (["--data", "a", "http://x/"], "curl: option --data: not supported by this stand-in"),
        (["-ksd", "http://x/"], "curl: option -d: not supported by this stand-in"),
        (["-H"], "curl: option -H: requires parameter"),
        (["-s"], "curl: no URL specified"),
        (["http://x/", "http://y/"], "curl: one URL at a time with this stand-in"),
    ],
)
def test_curl_stand_in_refuses_what_it_cannot_do(args: list[str], message: str) -> None:
    if not HAS_BUSYBOX:
        pytest.skip("needs Debian's busybox-static")
    result = subprocess.run(
        [BUSYBOX_PATH, "sh", str(images.FILES / "curl"), *args], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (2, message + "\n")


# --- what a machine without the prerequisites is told ---------------------------------------------------


def test_missing_busybox_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(images, "BUSYBOX_PATH", str(tmp_path / "busybox"))
    with pytest.raises(images.ImageBuildError, match="install Debian's busybox-static"):
        build_node_images(tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_missing_go_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(images.ImageBuildError, match="Go is needed to build the pause image"):
        images.pause_binary(tmp_path, "amd64")


def test_missing_pause_source_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(images, "PAUSE_SOURCE", tmp_path / "pause")
    with pytest.raises(images.ImageBuildError, match="pause not found: build the node images from a source"):
        images.pause_binary(tmp_path, "amd64")


def test_failed_pause_build_shows_the_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not HAS_GO:
        pytest.skip("needs Go")
    source = tmp_path / "pause"
    source.mkdir()
    (source / "go.mod").write_text("module broken\n\ngo 1.22\n")
    (source / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    monkeypatch.setattr(images, "PAUSE_SOURCE", source)
    with pytest.raises(images.ImageBuildError, match=r"(?s)building the pause binary failed:.*undefined"):
        images.pause_binary(tmp_path / "cache", images.host_architecture())
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_machine_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "vax")
    with pytest.raises(images.ImageBuildError, match="no OCI architecture name known for this machine"):
        images.host_architecture()


def test_command_prints_the_tar(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert images.main([str(built.parent)]) == 0
    assert capsys.readouterr().out == f"{built}\n"


def test_command_explains_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(images, "BUSYBOX_PATH", str(tmp_path / "busybox"))
    assert images.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"cannot build the node images: {tmp_path}/busybox not found")
