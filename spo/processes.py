"""Processes we started, identified beyond their pid, and stopped politely."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RecordedProcess:
    name: str
    pid: int
    start_time: str

    def running(self) -> bool:
        """Alive and still the same process (a recycled pid has another start time)."""
        return start_time(self.pid) == self.start_time


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, or "" when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses; the fields after it do not.
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]


def stop_process(pid: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; for processes we started (possibly by an earlier `spo up`)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(5)


def _alive(pid: int) -> bool:
    # A child of ours that exited stays a zombie until reaped; reap it so it does not look alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return start_time(pid) != ""
