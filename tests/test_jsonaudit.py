"""agent/jsonaudit.py: records against the docs' examples (7.9.5, 7.9.9, 7.9.11), aggregation over the
interval with the caller's clock, and the rotating audit log (acceptance 5 of issue 11) on real files."""

from __future__ import annotations

import calendar
import errno
import io
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.jsonaudit import (
    MEBIBYTE,
    Aggregator,
    Record,
    Resource,
    RotatingFile,
    StreamWriter,
    backup_millis,
    backup_name,
    backups_to_remove,
    encode,
    iso_timestamp,
    open_writer,
)
from agent.processinfo import ProcessInfo, describe
from api.constants import EXEC_REQUEST_UID_ENV
from api.types import JsonEnricherOptions
from tests.eventually import eventually
from tests.forked import in_child

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE = "worker-1"
DAY = 24 * 60 * 60

# The docs' records, as printed (pretty, with the docs' `//` remarks), each with the process it describes.
# Docs 7.9.5, "Advanced Audit Logging Output":
DOCS_7_9_5 = """{
  "auditID": "d586679d-xxxx-xxxx-xxxx-9dc8ab273065",
  "cmdLine": "touch /tmp/testfile.txt ",\t\t// Linux command with arguments
  "executable": "/bin/dash",
  "gid": 0,
  "node": {
    "name": "worker-1"
  },
  "pid": 144968,
  "requestUID": "aec3e0e1-xxxx-xxxx-xxxx-a7c58241f1a9", // Correlation key
  "resource": {
    "container": "nginx",
    "namespace": "test-namespace",
    "pod": "test-pod"
  },
  "syscalls": ["execve"],
  "timestamp": "2026-02-16T14:01:07.000Z",
  "uid": 0,
  "version": "spo/v1_alpha"
}"""
# Docs 7.9.9 step 11 (and 7.9.10), the first record of `cat /tmp/logs/audit1.log`:
DOCS_7_9_9 = """{
"auditID": "a1b2c3d4-e5f6-7890-abcd-111111111111",
"cmdLine": "mkdir /tmp/audittest ",
"executable": "/bin/bash",
"gid": 0,
"node": {"name": "worker-1"},
"pid": 27184,
"requestUID": "f011c4a3-b20e-44ed-bb91-23e03ae31b3e",
"resource": {
"container": "nginx",
"namespace": "default",
"pod": "my-pod"
},
"syscalls": ["getpid", "execve"],
"timestamp": "2026-02-16T06:34:53.000Z",
"uid": 0,
"version": "spo/v1_alpha"
}"""
# Docs 7.9.11 step 14, a node debugging session (no request UID found):
DOCS_7_9_11 = """{
  "auditID": "edce381a-998d-4f3f-99d8-d0c4d0c8a613",
  "cmdLine": "touch demonodedebug",
  "executable": "/usr/bin/bash",
  "gid": 0,
  "node": {"name": "worker-1"},
  "pid": 99086,
  "resource": {
    "container": "container-00",
    "namespace": "openshift-security-profiles",
    "pod": "worker-1-debug"
  },
  "syscalls": ["execve", "getpid"],
  "timestamp": "2026-02-12T13:50:11.000Z",
  "uid": 0,
  "version": "spo/v1_alpha"
}"""
DOCS_KEYS = [
    "auditID",
    "cmdLine",
    "executable",
    "gid",
    "node",
    "pid",
    "requestUID",
    "resource",
    "syscalls",
    "timestamp",
    "uid",
    "version",
]


def _docs_record(text: str) -> Record:
    parsed: Record = json.loads(re.sub(r"\s*//[^\n]*", "", text))
    return parsed


def _epoch(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")))


def _no_describe() -> ProcessInfo:
    raise AssertionError("the process was described already")


def _add(aggregator: Aggregator, now: float, **event: Any) -> list[Record]:
    fields: dict[str, Any] = {
        "pid": 1,
        "start_time": 100,
        "syscall": "execve",
        "timestamp": 0.0,
        "uid": 0,
        "gid": 0,
        "executable": "/bin/sh",
        "resource": None,
        "describe": ProcessInfo,
    }
    fields.update(event)
    return aggregator.add(now=now, **fields)


@pytest.mark.parametrize("docs_text", [DOCS_7_9_5, DOCS_7_9_9, DOCS_7_9_11], ids=["7.9.5", "7.9.9", "7.9.11"])
def test_a_process_gives_the_docs_record(docs_text: str) -> None:
    docs = _docs_record(docs_text)
    aggregator = Aggregator(NODE, 30, new_audit_id=lambda: docs["auditID"])
    process = ProcessInfo(cmdline=docs["cmdLine"], request_uid=docs.get("requestUID"))
    where = Resource(**docs["resource"])
    for number, syscall in enumerate([*docs["syscalls"], *docs["syscalls"]]):
        assert (
            _add(
                aggregator,
                1000 + number,
                pid=docs["pid"],
                syscall=syscall,
                timestamp=_epoch(docs["timestamp"]) + number / 10,
                uid=docs["uid"],
                gid=docs["gid"],
                executable=docs["executable"],
                resource=where,
                describe=(lambda: process) if number == 0 else _no_describe,
            )
            == []
        )
    assert aggregator.flush(1029) == []
    [record] = aggregator.flush(1030)
    for key in DOCS_KEYS:
        assert record.get(key) == docs.get(key), key
    assert list(record) == [key for key in DOCS_KEYS if key in docs]
    # One compact line, keys in the docs' order: what upstream's encoder writes.
    assert encode(record) == json.dumps(docs, separators=(",", ":")).encode() + b"\n"


def test_details_missing_from_the_audit_line_come_from_proc() -> None:
    aggregator = Aggregator(NODE, new_audit_id=lambda: "id")
    process = ProcessInfo(cmdline=None, executable="/usr/bin/touch", uid=1000, gid=1001)
    _add(aggregator, 0, uid=None, gid=None, executable=None, describe=lambda: process)
    [record] = aggregator.drain()
    assert (record["cmdLine"], record["executable"], record["uid"], record["gid"]) == (
        "",
        "/usr/bin/touch",
        1000,
        1001,
    )
    assert "requestUID" not in record
    assert record["resource"] is None  # a host process: upstream writes null too


def test_ids_unknown_everywhere_are_null_not_invented() -> None:
    aggregator = Aggregator(NODE)
    _add(aggregator, 0, uid=None, gid=None, executable=None)
    [record] = aggregator.drain()
    assert (record["uid"], record["gid"], record["executable"]) == (None, None, "")


def test_events_of_one_interval_make_one_record_per_process() -> None:
    aggregator = Aggregator(NODE, 10)
    _add(aggregator, 0.0, pid=1, syscall="getpid", timestamp=5.0)
    _add(aggregator, 1.0, pid=2, syscall="clone", timestamp=6.0)
    _add(aggregator, 2.0, pid=1, syscall="execve", timestamp=7.0)
    _add(aggregator, 3.0, pid=1, syscall="getpid", timestamp=8.0)
    _add(aggregator, 4.0, pid=1, start_time=999, syscall="read", timestamp=9.0)  # pid reused
    assert aggregator.flush(9.9) == []
    [first] = aggregator.flush(10.0)
    assert (first["pid"], first["syscalls"], first["timestamp"]) == (
        1,
        ["getpid", "execve"],
        iso_timestamp(5),
    )
    assert [(r["pid"], r["syscalls"]) for r in aggregator.flush(14.0)] == [(2, ["clone"]), (1, ["read"])]
    assert aggregator.flush(1000.0) == []


def test_a_process_active_past_its_interval_gets_a_record_per_interval() -> None:
    aggregator = Aggregator(NODE, 10)
    _add(aggregator, 0.0, syscall="getpid", timestamp=100.0, describe=lambda: ProcessInfo(cmdline="sh "))
    _add(aggregator, 9.0, syscall="clone", timestamp=109.0)
    [first] = aggregator.flush(10.0)
    # The process may be gone by now: its second record says what was read at its first line.
    _add(aggregator, 11.0, syscall="execve", timestamp=111.0, describe=_no_describe)
    [second] = aggregator.flush(21.0)
    assert (first["syscalls"], first["timestamp"]) == (["getpid", "clone"], iso_timestamp(100))
    assert (second["syscalls"], second["timestamp"], second["cmdLine"]) == (
        ["execve"],
        iso_timestamp(111),
        "sh ",
    )
    assert first["auditID"] != second["auditID"]


def test_too_many_open_processes_close_the_oldest_early() -> None:
    aggregator = Aggregator(NODE, 60, max_open=2)
    assert _add(aggregator, 0, pid=1) == []
    assert _add(aggregator, 1, pid=2) == []
    assert _add(aggregator, 2, pid=2, syscall="read") == []
    [closed] = _add(aggregator, 3, pid=3)
    assert closed["pid"] == 1
    assert [r["pid"] for r in aggregator.drain()] == [2, 3]
    assert aggregator.drain() == []


def test_described_processes_are_bounded() -> None:
    aggregator = Aggregator(NODE, 1, max_open=2)
    described: list[int] = []

    def describe(pid: int) -> Callable[[], ProcessInfo]:
        def read() -> ProcessInfo:
            described.append(pid)
            return ProcessInfo()

        return read

    for now, pid in enumerate([1, 2, 1, 3, 1, 2]):
        aggregator.flush(now)
        _add(aggregator, now, pid=pid, describe=describe(pid))
    # 1 stays known while in use; 2 is forgotten when 3 comes, so it is read again.
    assert described == [1, 2, 3, 2]


def test_the_interval_defaults_and_refuses_negatives() -> None:
    assert Aggregator(NODE).interval == 60
    assert Aggregator(NODE, 0).interval == 60
    assert Aggregator(NODE, 30).interval == 30
    with pytest.raises(ValueError, match="auditLogIntervalSeconds"):
        Aggregator(NODE, -1)
    with pytest.raises(ValueError, match="max_open"):
        Aggregator(NODE, max_open=0)


@pytest.mark.parametrize(("pid", "syscall"), [(0, "read"), (-5, "read"), (1, "")])
def test_what_is_not_an_event_is_refused(pid: int, syscall: str) -> None:
    aggregator = Aggregator(NODE)
    with pytest.raises(ValueError, match="not a seccomp event"):
        _add(aggregator, 0, pid=pid, syscall=syscall)
    assert aggregator.drain() == []


def test_audit_ids_are_fresh_uuids() -> None:
    aggregator = Aggregator(NODE)
    for pid in range(1, 4):
        _add(aggregator, 0, pid=pid)
    ids = [record["auditID"] for record in aggregator.drain()]
    assert len(set(ids)) == 3
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids
    )


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1771250467, "2026-02-16T14:01:07.000Z"),
        (1611996299.149, "2021-01-30T08:44:59.149Z"),  # inventory §6.1's first line
        (1611996299.9996, "2021-01-30T08:45:00.000Z"),
    ],
)
def test_iso_timestamp(seconds: float, expected: str) -> None:
    assert iso_timestamp(seconds) == expected


# --- backup names and pruning (pure) ----------------------------------------------------------------

FEB_16 = 1771250467123  # 2026-02-16T14:01:07.123Z in ms


@pytest.mark.parametrize(
    ("path_name", "millis", "expected"),
    [
        ("audit1.log", FEB_16, "audit1-2026-02-16T14-01-07.123.log"),
        ("audit", 5, "audit-1970-01-01T00-00-00.005"),
        ("a.b.json", 0, "a.b-1970-01-01T00-00-00.000.json"),
    ],
)
def test_backup_names_as_lumberjack_writes_them(path_name: str, millis: int, expected: str) -> None:
    assert backup_name(path_name, millis) == expected
    assert backup_millis(path_name, expected) == millis


@pytest.mark.parametrize(
    "name",
    [
        "audit1.log",
        "audit1-.log",
        "audit1-2026-02-16T14-01-07.log",
        "audit1-2026-02-16T14-01-07.1234.log",
        "audit1-2026-13-16T14-01-07.123.log",
        "audit1-2026-02-16T14-01-07.123.json",
        "audit2-2026-02-16T14-01-07.123.log",
        "audit1-x2026-02-16T14-01-07.123.log",
    ],
)
def test_other_names_are_not_backups(name: str) -> None:
    assert backup_millis("audit1.log", name) is None


def _backups(*days: int) -> list[tuple[int, str]]:
    return [(day * DAY * 1000, f"day{day}") for day in days]


@pytest.mark.parametrize(
    ("max_backups", "max_age_days", "now_day", "expected"),
    [
        (0, 0, 10, []),
        (3, 0, 10, ["day1", "day0"]),
        (5, 0, 10, []),
        (1, 0, 10, ["day3", "day2", "day1", "day0"]),
        (0, 2, 4, ["day1", "day0"]),  # older than 2 days at day 4: rotated before day 2
        (0, 4, 4, []),
        (2, 1, 4, ["day2", "day1", "day0"]),  # day3 is exactly one day old: kept (lumberjack's Before)
        (0, 1, 5, ["day3", "day2", "day1", "day0"]),
    ],
)
def test_backups_to_remove(max_backups: int, max_age_days: int, now_day: int, expected: list[str]) -> None:
    backups = _backups(2, 0, 4, 1, 3)
    assert backups_to_remove(backups, max_backups, max_age_days, now_day * DAY * 1000) == expected


# --- the writers on real files ----------------------------------------------------------------------


_TEMPLATE = _docs_record(DOCS_7_9_5)


def _line(number: int) -> bytes:
    # A record as the enricher writes it, numbered so that order and identity can be checked.
    return encode({**_TEMPLATE, "auditID": f"d586679d-0000-4000-8000-{number:012d}", "pid": number})


def _files(directory: Path) -> list[Path]:
    """The log's files oldest first: backups by name (their time), then the file itself."""
    return [*sorted(p for p in directory.iterdir() if p.name != "audit1.log"), directory / "audit1.log"]


def _lines(directory: Path) -> Iterator[bytes]:
    for path in _files(directory):
        content = path.read_bytes()
        assert content.endswith(b"\n") or not content, path
        yield from content.splitlines(keepends=True)


class Clock:
    def __init__(self, now: float = 1771250467.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# 200 MiB of records: about 660,000 lines.
ACCEPTANCE_BYTES = 200 * MEBIBYTE


def test_rotation_keeps_at_most_four_files_of_whole_json_lines(tmp_path: Path) -> None:
    """Acceptance 5: 200 MB through auditLogMaxSize 1, auditLogMaxBackups 3."""
    log = tmp_path / "logs" / "audit1.log"
    writer = RotatingFile(log, max_size_mb=1, max_backups=3)
    written = number = 0
    most_files = 0
    while written < ACCEPTANCE_BYTES:
        line = _line(number)
        writer.write(line)
        written += len(line)
        number += 1
        if number % 2000 == 0:
            most_files = max(most_files, len(os.listdir(log.parent)))
    writer.close()
    files = _files(log.parent)
    assert most_files <= 4
    assert len(files) == 4
    kept = 0
    for path in files:
        assert path.stat().st_size <= MEBIBYTE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        content = path.read_bytes()
        assert content.endswith(b"\n")
        for text in content.splitlines():
            assert orjson.loads(text)["version"] == "spo/v1_alpha"
            kept += 1
    # What is kept is the end of what was written, in order.
    assert [orjson.loads(line)["pid"] for line in _lines(log.parent)] == list(range(number - kept, number))
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_rotation_with_backups_unlimited_keeps_every_line_in_order(tmp_path: Path) -> None:
    """Acceptance 5: 200 MB, backups unlimited: the lines across all files are the lines written. The
    clock stands still, so every rotation falls in the same millisecond: no backup may replace another."""
    log = tmp_path / "audit1.log"
    writer = RotatingFile(log, max_size_mb=1, clock=Clock())
    written = number = 0
    while written < ACCEPTANCE_BYTES:
        line = _line(number)
        writer.write(line)
        written += len(line)
        number += 1
    writer.close()
    files = _files(tmp_path)
    assert len(files) > ACCEPTANCE_BYTES // MEBIBYTE
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    count = 0
    for count, line in enumerate(_lines(tmp_path), start=1):
        assert line == _line(count - 1)
    assert count == number


def test_max_age_prunes_by_the_backups_time(tmp_path: Path) -> None:
    clock = Clock(0.0)
    log = tmp_path / "audit1.log"
    writer = RotatingFile(log, max_size_mb=1, max_age_days=2, clock=clock)
    big = b"x" * (MEBIBYTE // 2 - 1) + b"\n"
    writer.write(big)
    for day in range(5):
        clock.now = day * DAY
        writer.write(big)
        writer.write(big)  # the file is full: rotated now, at `day`
    assert [backup_millis(log.name, p.name) for p in _files(tmp_path)[:-1]] == [
        day * DAY * 1000 for day in (2, 3, 4)
    ]
    clock.now = 7 * DAY
    writer.write(big)  # no rotation, no pruning: lumberjack prunes when it opens or rotates
    assert len(_files(tmp_path)) == 4
    writer.close()
    RotatingFile(log, max_size_mb=1, max_age_days=2, clock=clock).close()
    assert _files(tmp_path) == [log]


def test_opening_prunes_old_backups_and_leaves_other_files(tmp_path: Path) -> None:
    now = FEB_16 / 1000
    names = [backup_name("audit1.log", round((now - age * DAY) * 1000)) for age in (0.5, 1.5, 2.5, 3.5)]
    others = ["audit1.log.1", "audit1-notes.log", "audit2-2026-02-16T14-01-07.123.log"]
    for name in names + others:
        (tmp_path / name).write_bytes(b"old\n")
    RotatingFile(tmp_path / "audit1.log", max_backups=2, max_age_days=3, clock=Clock(now)).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[:2], *others, "audit1.log"])


def test_an_existing_log_is_appended_to_and_made_private(tmp_path: Path) -> None:
    log = tmp_path / "audit1.log"
    log.write_bytes(b"x" * (MEBIBYTE - 10) + b"\n")
    log.chmod(0o644)
    writer = RotatingFile(log, max_size_mb=1, clock=Clock())
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    writer.write(b"short\n")  # fits: MEBIBYTE - 9 + 6 bytes
    writer.write(b"0123456789\n")  # does not: rotated first
    writer.close()
    backup, current = _files(tmp_path)
    assert backup.read_bytes().endswith(b"\nshort\n")
    assert current.read_bytes() == b"0123456789\n"


def test_a_line_longer_than_the_maximum_gets_a_file_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "audit1.log"
    writer = RotatingFile(log, max_size_mb=1, clock=Clock())
    huge = b"{" + b"x" * (MEBIBYTE + 100) + b"}\n"
    writer.write(b"before\n")
    writer.write(huge)
    writer.write(b"after\n")
    writer.close()
    assert [p.read_bytes() for p in _files(tmp_path)] == [b"before\n", huge, b"after\n"]


def test_concurrent_writers_never_split_or_lose_a_line(tmp_path: Path) -> None:
    log = tmp_path / "audit1.log"
    writer = RotatingFile(log, max_size_mb=1, clock=Clock())
    threads_count, per_thread = 8, 4000

    def write(thread: int) -> None:
        for number in range(per_thread):
            writer.write(_line(thread * per_thread + number))

    threads = [threading.Thread(target=write, args=(thread,)) for thread in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert len(_files(tmp_path)) > 3
    seen = [orjson.loads(line)["pid"] for line in _lines(tmp_path)]
    assert sorted(seen) == list(range(threads_count * per_thread))
    for index in range(threads_count):  # each thread's lines in the order it wrote them
        mine = [pid for pid in seen if pid // per_thread == index]
        assert mine == sorted(mine)


@pytest.mark.parametrize("line", [b"no newline", b"two\nnewlines\n", b"\n\n", b""])
def test_writers_refuse_what_is_not_one_line(tmp_path: Path, line: bytes) -> None:
    writer = RotatingFile(tmp_path / "audit1.log")
    with pytest.raises(ValueError, match="newline"):
        writer.write(line)
    with pytest.raises(ValueError, match="newline"):
        StreamWriter(io.BytesIO()).write(line)
    writer.close()
    assert (tmp_path / "audit1.log").read_bytes() == b""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((-1, 0, 0), "auditLogMaxSize"),
        ((0, -1, 0), "auditLogMaxBackups"),
        ((0, 0, -2), "auditLogMaxAge"),
    ],
)
def test_rotating_file_refuses_negative_limits(
    tmp_path: Path, options: tuple[int, int, int], message: str
) -> None:
    size, backups, age = options
    with pytest.raises(ValueError, match=message):
        RotatingFile(tmp_path / "audit1.log", max_size_mb=size, max_backups=backups, max_age_days=age)
    assert not (tmp_path / "audit1.log").exists()


def test_rotating_file_refuses_a_relative_path_and_writes_after_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        RotatingFile(Path("logs/audit1.log"))
    writer = RotatingFile(tmp_path / "audit1.log")
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"late\n")


def test_open_writer_follows_the_spod_options(tmp_path: Path) -> None:
    stdout = io.BytesIO()
    for options in (None, JsonEnricherOptions(), JsonEnricherOptions(audit_log_path="")):
        writer = open_writer(options, stdout)
        assert isinstance(writer, StreamWriter)
        writer.write(b"{}\n")
        writer.close()
    assert stdout.getvalue() == b"{}\n" * 3
    # Docs 7.9.8's patch, under a temporary directory.
    options = JsonEnricherOptions.model_validate(
        {
            "auditLogPath": str(tmp_path / "logs" / "audit1.log"),
            "auditLogMaxSize": 500,
            "auditLogMaxBackups": 2,
            "auditLogMaxAge": 10,
        }
    )
    writer = open_writer(options)
    assert isinstance(writer, RotatingFile)
    assert writer.max_bytes == 500 * MEBIBYTE
    writer.write(b"{}\n")
    writer.close()
    assert (tmp_path / "logs" / "audit1.log").read_bytes() == b"{}\n"
    default = open_writer(JsonEnricherOptions(audit_log_path=str(tmp_path / "a.log"), audit_log_max_size=0))
    assert isinstance(default, RotatingFile)
    assert default.max_bytes == 100 * MEBIBYTE
    default.close()


def test_a_real_process_becomes_a_line_in_the_audit_log(tmp_path: Path) -> None:
    """The pieces together on the real /proc: a process run as the exec webhook runs it is described at
    its first event, and its record reaches the file even though the process has exited by then."""
    child = subprocess.Popen(["env", f"{EXEC_REQUEST_UID_ENV}=uid-1", "sleep", "600"])
    try:
        eventually(
            lambda: Path(f"/proc/{child.pid}/cmdline").read_bytes() == b"sleep\x00600\x00", what="exec"
        )
        aggregator = Aggregator(NODE, 30)
        for now, syscall in enumerate(["execve", "clone", "execve"]):
            aggregator.add(
                pid=child.pid,
                start_time=1,
                syscall=syscall,
                timestamp=_epoch("2026-02-16T14:01:07"),
                uid=None,
                gid=None,
                executable="/usr/bin/env",
                resource=Resource("nginx", "default", "my-pod"),
                now=now,
                describe=lambda: describe(Path("/proc"), child.pid),
            )
    finally:
        child.kill()
        child.wait()
    writer = open_writer(JsonEnricherOptions(audit_log_path=str(tmp_path / "audit1.log")))
    for record in aggregator.flush(30):
        writer.write(encode(record))
    writer.close()
    [line] = (tmp_path / "audit1.log").read_bytes().splitlines()
    record = orjson.loads(line)
    del record["auditID"]
    assert record == {
        "cmdLine": "sleep 600 ",
        "executable": "/usr/bin/env",
        "gid": os.getgid(),
        "node": {"name": NODE},
        "pid": child.pid,
        "requestUID": "uid-1",
        "resource": {"container": "nginx", "namespace": "default", "pod": "my-pod"},
        "syscalls": ["execve", "clone"],
        "timestamp": "2026-02-16T14:01:07.000Z",
        "uid": os.getuid(),
        "version": "spo/v1_alpha",
    }


def test_records_go_to_the_process_stdout_without_a_path() -> None:
    script = "from agent.jsonaudit import open_writer; w = open_writer(None); w.write(b'{}\\n'); w.close()"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    assert out == b"{}\n"


def test_a_line_the_file_cannot_take_is_not_left_half_written(tmp_path: Path) -> None:
    # The kernel's file size limit (RLIMIT_FSIZE) stands in for a full disk: the write that crosses it
    # is cut short, the next one fails (EFBIG). A child takes the limit, not the test process.
    log = tmp_path / "audit1.log"

    def limited() -> bytes:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        writer = RotatingFile(log)
        try:
            for number in range(10):
                writer.write(_line(number))
        except OSError as error:
            return errno.errorcode.get(error.errno or 0, "?").encode()
        return b"no error"

    assert in_child(limited) == b"EFBIG"
    content = log.read_bytes()
    assert content == b"".join(_line(number) for number in range(1000 // len(_line(0))))


def test_a_process_is_described_by_the_program_it_became() -> None:
    """A `kubectl exec` process starts as runc's init (`exe="/"`), then execs the user's command."""
    aggregator = Aggregator(NODE, 30)
    _add(aggregator, 0.0, executable="/", syscall="prctl")
    _add(aggregator, 0.1, executable="/bin/busybox", syscall="execve")
    _add(aggregator, 0.2, executable="", syscall="nanosleep")
    (record,) = aggregator.drain()
    assert record["executable"] == "/bin/busybox"


def test_lines_read_after_the_process_is_gone_join_the_process_seen_alive() -> None:
    """Under load the agent reads a short process's last lines after it exited: they have no start time
    (attributed through the parent), but they are the same process, with the same request uid."""
    aggregator = Aggregator(NODE, 10)
    _add(aggregator, 0.0, syscall="clone", executable="/", describe=lambda: ProcessInfo(request_uid="u"))
    _add(
        aggregator,
        1.0,
        start_time=None,
        syscall="nanosleep",
        executable="/bin/busybox",
        describe=_no_describe,
    )
    _add(aggregator, 2.0, pid=2, start_time=None, syscall="read", describe=ProcessInfo)
    first, other = aggregator.drain()
    assert (first["syscalls"], first["executable"], first["requestUID"]) == (
        ["clone", "nanosleep"],
        "/bin/busybox",
        "u",
    )
    assert (other["pid"], "requestUID" in other) == (2, False)
