"""The JSON enricher's records (docs 7.9.4-7.9.5, 7.9.13) and where they go (docs 7.9.7-7.9.8).

Records, pure, owned by the audit pipeline's thread (not thread-safe):
  `Aggregator(node_name, interval_seconds)` collects seccomp events per process - the key is
  (pid, process start time); the node is the aggregator's own - and turns each process's events of one
  interval into one record. `add(...)` takes one event's fields as plain values, plus `describe`, which
  it calls (at most once per process, the first time it sees it) for the process's /proc details
  (`agent.processinfo.describe`). A record is due `interval_seconds` after its first event: `flush(now)`
  returns the due records, `drain()` all of them (at shutdown). `now` is the caller's clock, the same
  one for `add` and `flush` (`time.monotonic()`: a wall clock stepping back would hold records).
  `add` returns the records it had to close early: at most `max_open` processes are open at once, and
  the oldest is emitted rather than dropped.
  A record is a dict with exactly the keys of docs 7.9.5, in its order (alphabetical, as upstream's
  encoder writes them), ready for the `jsonEnricherFilters`; `encode(record)` is its JSON line.

Output, thread-safe (`write(line)`, `close()`):
  `open_writer(options, stdout)`: `StreamWriter` on stdout when the spod's `auditLogPath` is empty,
  else `RotatingFile(path, max_size_mb, max_backups, max_age_days)`, which behaves as lumberjack
  (upstream's writer) does: a file that a line would take past `max_size_mb` MiB (0: 100) is renamed to
  `<base>-<UTC 2006-01-02T15-04-05.000><ext>` and a new one started; backups beyond the newest
  `max_backups` (0: all kept) or older than `max_age_days` (0: any age) are removed, at open and after
  every rotation. Ours differs where lumberjack loses data: a line longer than the maximum is written
  alone in a file instead of refused, and two rotations in the same millisecond get distinct backup
  names (lumberjack's second rename overwrites the first backup). Files are 0600, backups included.

Where records differ from upstream (upstream-inventory Appendix A): `timestamp` keeps the audit line's
milliseconds (upstream always writes `.000`); ids unknown to both the audit line and /proc are null
rather than upstream's misparsed digits; `syscalls` are in first-seen order (the docs' examples are not
sorted; upstream's are in set order), each name once.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import orjson

from agent.processinfo import ProcessInfo
from api.constants import (
    AUDIT_LOG_BACKUP_TIME_FORMAT,
    AUDIT_LOG_DIR_MODE,
    AUDIT_LOG_FILE_MODE,
    DEFAULT_AUDIT_LOG_INTERVAL_SECONDS,
    DEFAULT_AUDIT_LOG_MAX_SIZE_MB,
    JSON_AUDIT_VERSION,
)
from api.types import JsonEnricherOptions

Record = dict[str, Any]
# Upstream keeps 1000 processes in each of its caches (buckets and process details).
DEFAULT_MAX_OPEN: Final = 1000
MEBIBYTE: Final = 1024 * 1024  # lumberjack's "megabyte"
_DAY_MS: Final = 24 * 60 * 60 * 1000
_NEWLINE: Final = b"\n"


@dataclass(frozen=True)
class Resource:
    """The container a process runs in (`resource` in a record)."""

    container: str
    namespace: str
    pod: str


@dataclass
class _Bucket:
    opened: float
    timestamp: float
    pid: int
    uid: int | None
    gid: int | None
    executable: str | None
    resource: Resource | None
    process: ProcessInfo
    syscalls: dict[str, None] = field(default_factory=dict)  # an ordered set


def iso_timestamp(seconds: float) -> str:
    """An audit time (seconds since the epoch) as the docs print it: `2026-02-16T14:01:07.000Z`."""
    millis = round(seconds * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(millis // 1000))}.{millis % 1000:03d}Z"


def encode(record: Record) -> bytes:
    """One record as one JSON line, compact as upstream writes it."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class Aggregator:
    """Per-process records of one node's seccomp events (see the module docstring)."""

    def __init__(
        self,
        node_name: str,
        interval_seconds: int = 0,
        *,
        max_open: int = DEFAULT_MAX_OPEN,
        new_audit_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        if interval_seconds < 0:
            raise ValueError(f"auditLogIntervalSeconds must not be negative: {interval_seconds}")
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1: {max_open}")
        self.node_name = node_name
        self.interval = interval_seconds or DEFAULT_AUDIT_LOG_INTERVAL_SECONDS
        self._max_open = max_open
        self._new_audit_id = new_audit_id
        # Both in insertion order: buckets by opening time, described processes by last use.
        self._open: OrderedDict[tuple[int, int | None], _Bucket] = OrderedDict()
        self._described: OrderedDict[tuple[int, int | None], ProcessInfo] = OrderedDict()
        # Each pid's start time when last seen alive, by last use.
        self._last_start: OrderedDict[int, int] = OrderedDict()

    def add(
        self,
        *,
        pid: int,
        start_time: int | None,
        syscall: str,
        timestamp: float,
        uid: int | None,
        gid: int | None,
        executable: str | None,
        resource: Resource | None,
        now: float,
        describe: Callable[[], ProcessInfo],
    ) -> list[Record]:
        """Count one event (`timestamp`: its audit time in seconds); the records closed early."""
        if pid < 1 or not syscall:
            raise ValueError(f"not a seccomp event: pid {pid}, syscall {syscall!r}")
        if start_time is None:
            # Gone before this line was read (attributed through its parent): it is the process this
            # pid named when last seen alive, whose description (its request uid) still holds.
            start_time = self._last_start.get(pid)
        else:
            self._last_start[pid] = start_time
            self._last_start.move_to_end(pid)
            if len(self._last_start) > self._max_open:
                self._last_start.popitem(last=False)
        key = (pid, start_time)
        bucket = self._open.get(key)
        closed: list[Record] = []
        if bucket is None:
            if len(self._open) >= self._max_open:
                closed.append(self._record(self._open.popitem(last=False)[1]))
            bucket = _Bucket(
                now, timestamp, pid, uid, gid, executable, resource, self._process(key, describe)
            )
            self._open[key] = bucket
        bucket.syscalls[syscall] = None
        if executable:
            # The program the process became: a `kubectl exec` starts as runc's init (`exe="/"`).
            bucket.executable = executable
        return closed

    def flush(self, now: float) -> list[Record]:
        """The records whose interval has ended by `now`."""
        due: list[Record] = []
        while self._open:
            key, bucket = next(iter(self._open.items()))
            if bucket.opened + self.interval > now:
                break
            del self._open[key]
            due.append(self._record(bucket))
        return due

    def drain(self) -> list[Record]:
        """Every open record, interval ended or not."""
        records = [self._record(bucket) for bucket in self._open.values()]
        self._open.clear()
        return records

    def _process(self, key: tuple[int, int | None], describe: Callable[[], ProcessInfo]) -> ProcessInfo:
        # Described once: a process's next record, after it may have exited, says the same.
        process = self._described.get(key)
        if process is None:
            process = describe()
            if len(self._described) >= self._max_open:
                self._described.popitem(last=False)
        self._described[key] = process
        self._described.move_to_end(key)
        return process

    def _record(self, bucket: _Bucket) -> Record:
        process = bucket.process
        record: Record = {
            "auditID": self._new_audit_id(),
            "cmdLine": process.cmdline or "",
            "executable": bucket.executable or process.executable or "",
            "gid": bucket.gid if bucket.gid is not None else process.gid,
            "node": {"name": self.node_name},
            "pid": bucket.pid,
        }
        if process.request_uid is not None:
            record["requestUID"] = process.request_uid
        resource = bucket.resource
        record["resource"] = (
            None
            if resource is None
            else {"container": resource.container, "namespace": resource.namespace, "pod": resource.pod}
        )
        record["syscalls"] = list(bucket.syscalls)
        record["timestamp"] = iso_timestamp(bucket.timestamp)
        record["uid"] = bucket.uid if bucket.uid is not None else process.uid
        record["version"] = JSON_AUDIT_VERSION
        return record


# --- output -------------------------------------------------------------------------------------------


class LineWriter(Protocol):
    def write(self, line: bytes) -> None:
        """Append one line (ending in its only newline); safe from any thread."""

    def close(self) -> None: ...


def _check_line(line: bytes) -> None:
    if not line.endswith(_NEWLINE) or line.count(_NEWLINE) != 1:
        raise ValueError("a JSON audit line must end in its only newline")


class StreamWriter:
    """Lines to a stream (the agent's stdout), each flushed as written."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        _check_line(line)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.flush()


_BACKUP_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}")


def backup_name(path_name: str, millis: int) -> str:
    """The name of a backup of `path_name` rotated at `millis` (ms since the epoch, UTC)."""
    base, ext = os.path.splitext(path_name)
    stamp = time.strftime(AUDIT_LOG_BACKUP_TIME_FORMAT, time.gmtime(millis // 1000))
    return f"{base}-{stamp}.{millis % 1000:03d}{ext}"


def backup_millis(path_name: str, name: str) -> int | None:
    """When the backup `name` of `path_name` was rotated, or None when `name` is no such backup."""
    base, ext = os.path.splitext(path_name)
    prefix = f"{base}-"
    if not name.startswith(prefix) or not name.endswith(ext):
        return None
    stamp = name[len(prefix) : len(name) - len(ext)]
    if not _BACKUP_TIME.fullmatch(stamp):
        return None
    seconds, _, millis = stamp.partition(".")
    try:
        parsed = time.strptime(seconds, AUDIT_LOG_BACKUP_TIME_FORMAT)
    except ValueError:
        return None
    return calendar.timegm(parsed) * 1000 + int(millis)


def backups_to_remove(
    backups: Iterable[tuple[int, str]], max_backups: int, max_age_days: int, now_millis: int
) -> list[str]:
    """Which backups (rotation time, name) go: all but the newest `max_backups`, and those older than
    `max_age_days`; 0 means no limit for either."""
    newest_first = sorted(backups, reverse=True)
    doomed = newest_first[max_backups:] if max_backups else []
    if max_age_days:
        cutoff = now_millis - max_age_days * _DAY_MS
        doomed += [backup for backup in newest_first[: max_backups or None] if backup[0] < cutoff]
    return [name for _, name in doomed]


class RotatingFile:
    """An audit log file with lumberjack's rotation (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_size_mb: int = 0,
        max_backups: int = 0,
        max_age_days: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for option, value in (
            ("auditLogMaxSize", max_size_mb),
            ("auditLogMaxBackups", max_backups),
            ("auditLogMaxAge", max_age_days),
        ):
            if value < 0:
                raise ValueError(f"{option} must not be negative: {value}")
        if not path.is_absolute():
            raise ValueError(f"auditLogPath must be an absolute path: {path}")
        self.path = path
        self.max_bytes = (max_size_mb or DEFAULT_AUDIT_LOG_MAX_SIZE_MB) * MEBIBYTE
        self._max_backups = max_backups
        self._max_age_days = max_age_days
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(mode=AUDIT_LOG_DIR_MODE, parents=True, exist_ok=True)
        self._fd: int | None = self._open()
        self._size = os.fstat(self._fd).st_size
        self._prune()

    def write(self, line: bytes) -> None:
        _check_line(line)
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path} is closed")
            if self._size and self._size + len(line) > self.max_bytes:
                self._fd = self._rotate(self._fd)
                self._size = 0
            view = memoryview(line)
            try:
                while view:  # a regular file takes it whole unless it cannot grow (full disk, quota)
                    view = view[os.write(self._fd, view) :]
            except OSError:
                # Take back the part that was written, so the file still ends on a whole line.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def backups(self) -> list[tuple[int, str]]:
        """The backups beside the file: (rotation time in ms, name)."""
        found = []
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                millis = backup_millis(self.path.name, entry.name)
                if millis is not None and entry.is_file(follow_symlinks=False):
                    found.append((millis, entry.name))
        return found

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, AUDIT_LOG_FILE_MODE)
        # Also a file someone else created: the log says who ran what on the node.
        os.fchmod(fd, AUDIT_LOG_FILE_MODE)
        return fd

    def _rotate(self, fd: int) -> int:
        """The new file's descriptor; on an error the old one is still open and in use."""
        # Never reuse a backup's name: renaming over it would lose it (also when the clock steps back).
        millis = max([round(self._clock() * 1000)] + [taken + 1 for taken, _ in self.backups()])
        with contextlib.suppress(FileNotFoundError):  # removed under us: nothing to keep
            os.rename(self.path, self.path.parent / backup_name(self.path.name, millis))
        new_fd = self._open()
        os.close(fd)
        self._prune()
        return new_fd

    def _prune(self) -> None:
        now = round(self._clock() * 1000)
        for name in backups_to_remove(self.backups(), self._max_backups, self._max_age_days, now):
            (self.path.parent / name).unlink(missing_ok=True)


def open_writer(options: JsonEnricherOptions | None, stdout: BinaryIO | None = None) -> LineWriter:
    """Where the spod's `jsonEnricherOptions` send the records (`stdout`: the process's by default)."""
    if options is None or not options.audit_log_path:
        return StreamWriter(stdout if stdout is not None else sys.stdout.buffer)
    return RotatingFile(
        Path(options.audit_log_path),
        max_size_mb=options.audit_log_max_size or 0,
        max_backups=options.audit_log_max_backups or 0,
        max_age_days=options.audit_log_max_age or 0,
    )
