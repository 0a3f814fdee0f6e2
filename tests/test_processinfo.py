"""agent/processinfo.py: the parsing on the kernel's bytes, then `describe` on the real /proc (children
started here) and on fake proc trees for what the real one cannot show on demand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from agent.processinfo import (
    ProcessInfo,
    command_line,
    describe,
    environment_value,
    request_uid,
    status_ids,
    wrapper_request_uid,
)
from api.constants import EXEC_REQUEST_UID_ENV
from tests.eventually import eventually
from tests.forked import in_child

ENV = EXEC_REQUEST_UID_ENV.encode()
# Docs 7.9.13, first listing: the exec webhook's wrapper, then the command it runs.
DOCS_UID = "aec3e0e1-xxxx-xxxx-xxxx-a7c58241f1a9"
DOCS_WRAPPER_ARGV = ["env", f"{EXEC_REQUEST_UID_ENV}={DOCS_UID}", "sh", "-c", "touch /tmp/testfile.txt"]
DOCS_WRAPPER_CMDLINE = f"env {EXEC_REQUEST_UID_ENV}={DOCS_UID} sh -c touch /tmp/testfile.txt "
NOBODY = 65534


def _nul(*argv: str) -> bytes:
    return b"".join(arg.encode() + b"\0" for arg in argv)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_nul("touch", "/tmp/testfile.txt"), "touch /tmp/testfile.txt "),  # docs 7.9.5
        (_nul(*DOCS_WRAPPER_ARGV), DOCS_WRAPPER_CMDLINE),  # docs 7.9.13
        (b"", ""),  # a kernel thread
        (_nul("echo", "café"), "echo café "),
        (b"bad\xff\0", "bad\ufffd "),
    ],
)
def test_command_line(raw: bytes, expected: str) -> None:
    assert command_line(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_nul("PATH=/bin", f"{EXEC_REQUEST_UID_ENV}=u1", "HOME=/"), "u1"),
        (_nul(f"{EXEC_REQUEST_UID_ENV}=first", f"{EXEC_REQUEST_UID_ENV}=second"), "first"),
        (_nul(f"X{EXEC_REQUEST_UID_ENV}=no"), None),
        (_nul(f"{EXEC_REQUEST_UID_ENV}X=no"), None),
        (_nul(f"{EXEC_REQUEST_UID_ENV}="), None),
        (_nul("PATH=/bin"), None),
        (b"", None),
    ],
)
def test_environment_value(raw: bytes, expected: str | None) -> None:
    assert environment_value(raw, ENV) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (DOCS_WRAPPER_ARGV, DOCS_UID),
        (["/usr/bin/env", f"{EXEC_REQUEST_UID_ENV}=u2", "id"], "u2"),
        # Only the wrapper's shape counts: anyone can type the assignment elsewhere.
        (["echo", f"{EXEC_REQUEST_UID_ENV}=forged"], None),
        (["sh", "-c", "id", f"{EXEC_REQUEST_UID_ENV}=forged"], None),
        (["env", "A=1", f"{EXEC_REQUEST_UID_ENV}=late"], None),
        (["env", f"{EXEC_REQUEST_UID_ENV}="], None),
        (["printenv", f"{EXEC_REQUEST_UID_ENV}=x"], None),
        (["env"], None),
        ([], None),
    ],
)
def test_wrapper_request_uid(argv: list[str], expected: str | None) -> None:
    assert wrapper_request_uid(_nul(*argv)) == expected


@pytest.mark.parametrize(
    ("environ", "cmdline", "expected"),
    [
        (_nul(f"{EXEC_REQUEST_UID_ENV}=env-uid"), _nul("env", f"{EXEC_REQUEST_UID_ENV}=cmd-uid"), "env-uid"),
        (_nul("PATH=/bin"), _nul("env", f"{EXEC_REQUEST_UID_ENV}=cmd-uid", "id"), "cmd-uid"),
        (None, _nul("env", f"{EXEC_REQUEST_UID_ENV}=cmd-uid", "id"), "cmd-uid"),
        (_nul(f"{EXEC_REQUEST_UID_ENV}=env-uid"), None, "env-uid"),
        (None, None, None),
    ],
)
def test_request_uid_prefers_the_environment(
    environ: bytes | None, cmdline: bytes | None, expected: str | None
) -> None:
    assert request_uid(environ, cmdline) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Name:\tsh\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n", (1000, 100)),
        ("Uid:\t0\t0\t0\t0\n", (0, None)),
        ("Name:\tsh\n", (None, None)),
        ("Uid:\t\nGid:\tx\t1\n", (None, None)),
        ("", (None, None)),
    ],
)
def test_status_ids(text: str, expected: tuple[int | None, int | None]) -> None:
    assert status_ids(text) == expected


# --- the real /proc -------------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(
        ["sleep", "600"], env={"PATH": os.environ["PATH"], EXEC_REQUEST_UID_ENV: "uid-from-environ"}
    )
    try:
        # Popen returns once exec has begun; the kernel sets the new command line a moment later.
        eventually(lambda: Path(f"/proc/{child.pid}/cmdline").read_bytes(), what="sleep started")
        yield child
    finally:
        child.kill()
        child.wait()


def test_describe_a_real_process(sleeper: subprocess.Popen[bytes]) -> None:
    info = describe(Path("/proc"), sleeper.pid)
    sleep = shutil.which("sleep")
    assert sleep is not None
    assert info == ProcessInfo(
        cmdline="sleep 600 ",
        executable=os.path.realpath(sleep),
        uid=os.getuid(),
        gid=os.getgid(),
        request_uid="uid-from-environ",
    )


def test_describe_the_real_wrapper_once_it_ran() -> None:
    # `env` execs the command with the assignment in its environment: the same pid, now described by it.
    child = subprocess.Popen(["env", f"{EXEC_REQUEST_UID_ENV}=uid-of-wrapper", "sleep", "600"])
    try:
        info = _eventually_describe(child.pid, lambda i: i.cmdline == "sleep 600 ")
        assert info.request_uid == "uid-of-wrapper"
    finally:
        child.kill()
        child.wait()


def _eventually_describe(pid: int, done: Callable[[ProcessInfo], bool]) -> ProcessInfo:
    result: list[ProcessInfo] = []

    def described() -> bool:
        result[:] = [describe(Path("/proc"), pid)]
        return done(result[0])

    eventually(described, what=f"process {pid} described")
    return result[0]


def test_describe_a_process_that_is_gone() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert describe(Path("/proc"), child.pid) == ProcessInfo()


def test_describe_without_the_rights_gives_what_is_readable(sleeper: subprocess.Popen[bytes]) -> None:
    # As nobody, another user's environ and exe link are refused (EACCES); cmdline and status are not.
    assert _describe_as_nobody(Path("/proc"), sleeper.pid) == ProcessInfo(
        cmdline="sleep 600 ", executable=None, uid=os.getuid(), gid=os.getgid(), request_uid=None
    )


def _describe_as_nobody(proc: Path, pid: int) -> ProcessInfo:
    def as_nobody() -> bytes:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return json.dumps(asdict(describe(proc, pid))).encode()

    return ProcessInfo(**json.loads(in_child(as_nobody)))


# --- fake proc trees --------------------------------------------------------------------------------


def _fake_process(proc: Path, pid: int, files: dict[str, bytes], exe: str | None) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    if exe is not None:
        (directory / "exe").symlink_to(exe)


def test_describe_a_kernel_thread(tmp_path: Path) -> None:
    _fake_process(
        tmp_path, 2, {"cmdline": b"", "environ": b"", "status": b"Name:\tkthreadd\nUid:\t0\t0\t0\t0\n"}, None
    )
    assert describe(tmp_path, 2) == ProcessInfo(
        cmdline="", executable=None, uid=0, gid=None, request_uid=None
    )


def test_describe_the_docs_wrapper_before_it_ran(tmp_path: Path) -> None:
    # Docs 7.9.13, first listing: the runtime's child is still `env` with the container's environment.
    _fake_process(
        tmp_path,
        144966,
        {
            "cmdline": _nul(*DOCS_WRAPPER_ARGV),
            "environ": _nul("PATH=/usr/bin"),
            "status": b"Uid:\t0\t0\t0\t0\n",
        },
        "/usr/bin/crun",
    )
    assert describe(tmp_path, 144966) == ProcessInfo(
        cmdline=DOCS_WRAPPER_CMDLINE, executable="/usr/bin/crun", uid=0, gid=None, request_uid=DOCS_UID
    )


def test_describe_a_process_whose_files_went_missing(tmp_path: Path) -> None:
    # The directory outlives some reads: each file is read on its own, what is left is reported.
    _fake_process(tmp_path, 7, {"cmdline": _nul("sh")}, None)
    assert describe(tmp_path, 7) == ProcessInfo(cmdline="sh ")
    assert describe(tmp_path, 8) == ProcessInfo()


def test_describe_a_fake_process_without_the_rights() -> None:
    # Root reads any file, so nobody reads the tree: environ and status are root's alone. The tree is
    # outside pytest's tmp_path, which only root may enter.
    with tempfile.TemporaryDirectory() as directory:
        proc = Path(directory)
        proc.chmod(0o755)
        files = {
            "cmdline": _nul("sh"),
            "environ": _nul(f"{EXEC_REQUEST_UID_ENV}=u"),
            "status": b"Uid:\t0\t0\t0\t0\n",
        }
        _fake_process(proc, 11, files, "/bin/sh")
        for name in ("environ", "status"):
            (proc / "11" / name).chmod(0o600)
        assert _describe_as_nobody(proc, 11) == ProcessInfo(cmdline="sh ", executable="/bin/sh")


def test_describe_with_unreadable_entries(tmp_path: Path) -> None:
    # Entries of the wrong type stand in for the kernel refusing a read: an error, never an exception.
    directory = tmp_path / "9"
    for name in ("cmdline", "environ", "status", "exe"):
        (directory / name).mkdir(parents=True)
    assert describe(tmp_path, 9) == ProcessInfo()


@pytest.mark.parametrize("pid", [0, -1])
def test_describe_refuses_what_is_not_a_pid(tmp_path: Path, pid: int) -> None:
    with pytest.raises(ValueError, match="not a process id"):
        describe(tmp_path, pid)
