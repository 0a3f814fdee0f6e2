"""What the JSON enricher says about a process: its command line, executable, ids and exec request UID.

`describe(proc, pid)` reads `<proc>/<pid>/{cmdline,environ,exe,status}` and returns a `ProcessInfo`.
The audit pipeline's thread calls it once per process, at the process's first audit line: a short-lived
process (`touch`, `mkdir`) is gone a moment later. Whatever cannot be read (the process exited, the
kernel refuses, a kernel thread has no executable) is None in the result; describing never raises for a
process that is gone or hidden.

The request UID (docs 7.9.16-7.9.17) is the value of the request-UID variable (`EXEC_REQUEST_UID_ENV`)
in the process's environment: the exec webhook turns `kubectl exec ... -- cmd` into
`env <VAR>=<uid> cmd`, so `cmd` and everything it starts inherit it, and the debug-pod webhook sets it in
the debug container's env. The first process of an exec is the `env` wrapper itself, whose environment
does not have it yet: its command line does (docs 7.9.13, first listing). Unlike upstream, which takes
`<VAR>=<x>` from anywhere in any command line, only the wrapper's shape counts (`env` followed by the
assignment, as the webhook writes it), so `echo <VAR>=forged` claims nothing.

The parsing helpers are pure and take the raw bytes the kernel gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from api.constants import EXEC_REQUEST_UID_ENV, PROC_CMDLINE, PROC_ENVIRON, PROC_EXE, PROC_STATUS

_ASSIGNMENT: Final = f"{EXEC_REQUEST_UID_ENV}=".encode()
_ENV_PROGRAM: Final = b"env"
_UID_FIELD: Final = "Uid:"
_GID_FIELD: Final = "Gid:"


@dataclass(frozen=True)
class ProcessInfo:
    """A process as read from /proc; None where it could not be read."""

    cmdline: str | None = None
    executable: str | None = None
    uid: int | None = None
    gid: int | None = None
    request_uid: str | None = None


def command_line(raw: bytes) -> str:
    """The command line as the docs print it (7.9.5): every NUL a space, so a trailing one stays."""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def environment_value(raw: bytes, name: bytes) -> str | None:
    """The first `name=value` of a NUL-separated environment (getenv's choice), None when absent or empty."""
    prefix = name + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace") or None
    return None


def wrapper_request_uid(raw_cmdline: bytes) -> str | None:
    """The UID of the webhook's `env <VAR>=<uid> ...` wrapper, from its command line."""
    argv = raw_cmdline.split(b"\0")
    if len(argv) < 2 or os.path.basename(argv[0]) != _ENV_PROGRAM or not argv[1].startswith(_ASSIGNMENT):
        return None
    return argv[1][len(_ASSIGNMENT) :].decode(errors="replace") or None


def request_uid(raw_environ: bytes | None, raw_cmdline: bytes | None) -> str | None:
    from_environ = environment_value(raw_environ, _ASSIGNMENT[:-1]) if raw_environ is not None else None
    if from_environ is not None:
        return from_environ
    return wrapper_request_uid(raw_cmdline) if raw_cmdline is not None else None


def status_ids(text: str) -> tuple[int | None, int | None]:
    """The real uid and gid from a `status` file (`Uid:\\treal\\teffective\\tsaved\\tfs`), the ids the
    kernel's audit lines print."""
    ids: dict[str, int | None] = {_UID_FIELD: None, _GID_FIELD: None}
    for line in text.splitlines():
        field, _, values = line.partition("\t")
        if field in ids:
            first = values.split(maxsplit=1)[:1]
            ids[field] = int(first[0]) if first and first[0].isdigit() else None
    return ids[_UID_FIELD], ids[_GID_FIELD]


def describe(proc: Path, pid: int) -> ProcessInfo:
    """Read what can be read of `<proc>/<pid>`."""
    if pid < 1:
        raise ValueError(f"not a process id: {pid}")
    directory = proc / str(pid)
    raw_cmdline = _read(directory / PROC_CMDLINE)
    raw_environ = _read(directory / PROC_ENVIRON)
    raw_status = _read(directory / PROC_STATUS)
    uid, gid = status_ids(raw_status.decode(errors="replace")) if raw_status is not None else (None, None)
    try:
        executable: str | None = os.readlink(directory / PROC_EXE)
    except OSError:
        executable = None
    return ProcessInfo(
        cmdline=command_line(raw_cmdline) if raw_cmdline is not None else None,
        executable=executable,
        uid=uid,
        gid=gid,
        request_uid=request_uid(raw_environ, raw_cmdline),
    )


def _read(path: Path) -> bytes | None:
    # ENOENT/ESRCH when the process is gone, EACCES for another user's environ without the rights.
    try:
        return path.read_bytes()
    except OSError:
        return None
