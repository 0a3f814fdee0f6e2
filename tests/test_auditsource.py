"""Audit sources (agent/auditsource.py): a followed file across create and copytruncate rotations, with
a concurrent writer (issue 11 acceptance 6) and step by step; /dev/kmsg records."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pytest

from agent import auditsource
from agent.auditsource import MAX_LINE_BYTES, FileSource, KmsgRecord, KmsgSource, parse_kmsg_record
from api.constants import KMSG_PATH

TIMEOUT = 120  # generous: the machine is shared and loaded


class Follower:
    """A FileSource's lines collected by a thread, as the agent's audit thread would read them."""

    def __init__(self, source: FileSource) -> None:
        self.stop = threading.Event()
        self.lines: list[str] = []
        iterator = source.lines(self.stop)  # opened here, before the test writes anything
        self.thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self.thread.start()

    def _run(self, iterator: Iterator[str]) -> None:
        self.lines.extend(iterator)

    def wait_for(self, count: int) -> list[str]:
        deadline = time.monotonic() + TIMEOUT
        while len(self.lines) < count and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        return self.close()

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join(timeout=TIMEOUT)
        assert not self.thread.is_alive()
        return self.lines


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def write(handle: TextIO, text: str, *, close: bool = False) -> None:
    handle.write(text)
    handle.flush()
    if close:
        handle.close()


def numbered(first: int, last: int) -> list[str]:
    return [f"line {i}" for i in range(first, last + 1)]


def text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


# --- acceptance 6: a writer at speed, rotations mid-stream --------------------------------------------

N = 20_000
ROTATE_AT = (N // 3, 2 * N // 3)
OLD_FILE_LINES = 200  # lines the writer still appends to a renamed file before it reopens (as auditd's HUP)


class Writer(threading.Thread):
    """Appends `line 1` .. `line N` (O_APPEND, one write per line); at each ROTATE_AT line it tells the
    test (`reached`) and, OLD_FILE_LINES later, waits until the test says the rotation is done."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lock = threading.Lock()  # held for each write; copytruncate takes it to copy and truncate
        self.reached = threading.Event()
        self.rotated = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for i in range(1, N + 1):
                if i - OLD_FILE_LINES in ROTATE_AT:
                    assert self.rotated.wait(TIMEOUT)
                    self.rotated.clear()
                    os.close(fd)  # reopen the path, as auditd does after its rotation
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with self.lock:
                    os.write(fd, f"line {i}\n".encode())
                if i in ROTATE_AT:
                    self.reached.set()
        finally:
            os.close(fd)


def _run_with_rotations(tmp_path: Path, rotate: Callable[[Path, Writer, int], None]) -> tuple[list[str], int]:
    path = tmp_path / "audit.log"
    path.write_text("history, not replayed\n")
    source = FileSource(path, poll_seconds=0.01)
    follower = Follower(source)
    writer = Writer(path)
    writer.start()
    for generation in range(1, len(ROTATE_AT) + 1):
        assert writer.reached.wait(TIMEOUT)
        writer.reached.clear()
        rotate(path, writer, generation)
        writer.rotated.set()
    writer.join(TIMEOUT)
    return follower.wait_for(N), source.lost_rotations


def _rename_and_create(path: Path, writer: Writer, generation: int) -> None:
    path.rename(path.with_name(f"{path.name}.{generation}"))
    path.touch()  # logrotate's `create`: the writer still appends to the renamed file for a while


def _copy_and_truncate(path: Path, writer: Writer, generation: int) -> None:
    with writer.lock:  # logrotate cannot stop a writer; what it loses between copy and truncate is its own
        copy = path.with_name(f"{path.name}.1")
        if copy.exists():
            copy.rename(path.with_name(f"{path.name}.{generation}"))
        shutil.copyfile(path, copy)
        os.truncate(path, 0)


def test_create_rotation_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines, _ = _run_with_rotations(tmp_path, _rename_and_create)
    assert lines == numbered(1, N)


def test_copytruncate_rotation_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines, lost = _run_with_rotations(tmp_path, _copy_and_truncate)
    assert lines == numbered(1, N)
    assert lost == 0


# --- step by step: what the follower does between two polls ---------------------------------------


class Steps:
    """Changes to the files made each time the follower has caught up (its `on_idle`), one per idle."""

    def __init__(self, *steps: Callable[[], object]) -> None:
        self.steps = list(steps)

    def __call__(self) -> None:
        if self.steps:
            self.steps.pop(0)()

    @property
    def done(self) -> bool:
        return not self.steps


def follow(path: Path, steps: Steps, *, from_start: bool = False) -> tuple[list[str], FileSource]:
    source = FileSource(path, poll_seconds=0.001, from_start=from_start, on_idle=steps)
    follower = Follower(source)
    deadline = time.monotonic() + TIMEOUT
    while not steps.done and time.monotonic() < deadline:
        time.sleep(0.01)
    # Every step ran; a few more polls pick up what the last one wrote.
    polls_after = time.monotonic() + 0.2
    while time.monotonic() < polls_after:
        time.sleep(0.01)
    return follower.close(), source


def test_starts_at_the_end_and_skips_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("old 1\nold 2\nhalf of a li")
    lines, _ = follow(path, Steps(lambda: append(path, "ne\nnew 1\nnew "), lambda: append(path, "2\n")))
    assert lines == ["new 1", "new 2"]


def test_blocks_hold_the_lines_of_one_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    source = FileSource(path, poll_seconds=0.001)
    stop = threading.Event()
    blocks = source.blocks(stop)
    append(path, "a\nb\n\nc")
    assert next(blocks) == "a\nb\n"  # three lines, the last one empty; "c" waits for its newline
    append(path, "\n")
    assert next(blocks) == "c"
    stop.set()
    assert list(blocks) == []


def test_from_start_replays_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("old 1\nold 2\n")
    lines, _ = follow(path, Steps(lambda: append(path, "new 1\n")), from_start=True)
    assert lines == ["old 1", "old 2", "new 1"]


def test_a_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    lines, _ = follow(
        path,
        Steps(lambda: append(path, "a"), lambda: append(path, "b"), lambda: append(path, "c\n\nd\n")),
    )
    assert lines == ["abc", "", "d"]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 4096])
def test_lines_split_across_reads_come_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    # Reads that end inside a line, and inside a character of several bytes.
    monkeypatch.setattr(auditsource, "CHUNK_BYTES", chunk_bytes)
    written = [f"type=SECCOMP {n} h\u00e9llo w\u00f6rld \u2603" * (n % 5) for n in range(300)]
    path = tmp_path / "audit.log"
    path.write_text("\n".join(written) + "\n")
    stop = threading.Event()
    source = FileSource(path, from_start=True, on_idle=stop.set)
    assert [line for block in source.blocks(stop) for line in block.split("\n")] == written


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    steps = Steps(lambda: None, path.parent.mkdir, lambda: path.write_text("first\n"))
    lines, _ = follow(path, steps)
    assert lines == ["first"]


def test_create_rotation_finishes_the_old_file_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    old = tmp_path / "audit.log.1"
    handle = path.open("a")  # the writer's, kept across the rename as auditd's is until its HUP
    steps = Steps(
        lambda: write(handle, "1\n"),
        lambda: path.rename(old),  # renamed: nothing at the path for a poll
        path.touch,  # created, still empty; the writer appends to the old one
        lambda: write(handle, "2\n3"),
        lambda: write(handle, "\n4 unterminated", close=True),  # the writer reopens...
        lambda: append(path, "5\n"),  # ...and writes to the new file
        lambda: append(path, "6\n"),
    )
    lines, _ = follow(path, steps)
    assert lines == ["1", "2", "3", "4 unterminated", "5", "6"]


def test_copytruncate_reads_what_it_had_not_read_from_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    (tmp_path / "audit.log-20240101.gz").write_bytes(b"compressed copies are not read")
    (tmp_path / "unrelated.log").write_text("1\n2\n")

    def rotate() -> None:
        append(path, "2\n3\n")  # written, not read yet, when the file is copied and truncated
        shutil.copyfile(path, tmp_path / "audit.log.1")
        os.truncate(path, 0)
        append(path, "4\n")

    # The file is shorter after the truncation than what had been read.
    lines, source = follow(path, Steps(lambda: append(path, "first\n"), rotate, lambda: append(path, "5\n")))
    assert lines == ["first", "2", "3", "4", "5"]
    assert source.lost_rotations == 0


@pytest.mark.parametrize(
    ("copy_name", "expected", "lost"),
    [
        ("audit.log-20240101", ["a", "unread", "b, longer than a"], 0),  # logrotate's dateext name
        (None, ["a", "b, longer than a"], 1),  # no copy: the unread line is lost, and counted
    ],
)
def test_copytruncate_that_regrows_past_the_offset_is_noticed(
    tmp_path: Path, copy_name: str | None, expected: list[str], lost: int
) -> None:
    path = tmp_path / "audit.log"
    path.touch()

    def rotate() -> None:
        append(path, "unread\n")
        if copy_name is not None:
            shutil.copyfile(path, tmp_path / copy_name)
        os.truncate(path, 0)
        append(path, "b, longer than a\n")  # past the offset again before the follower looks

    lines, source = follow(path, Steps(lambda: append(path, "a\n"), rotate))
    assert lines == expected
    assert source.lost_rotations == lost


def test_an_overlong_line_is_dropped_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    lines, _ = follow(
        path,
        Steps(lambda: append(path, "x" * (MAX_LINE_BYTES + 10)), lambda: append(path, "xxx\nnext\n")),
    )
    assert lines == ["next"]


def test_undecodable_bytes_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.touch()
    lines, _ = follow(path, Steps(lambda: path.write_bytes(b"caf\xe9\n")))
    assert lines == ["caf\ufffd"]


# --- /dev/kmsg -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "parsed"),
    [
        (
            b"5,1234,18665475525,-;audit: type=1326 audit(1796301057.576:20018): auid=4294967295 uid=0\n",
            KmsgRecord(1234, "audit: type=1326 audit(1796301057.576:20018): auid=4294967295 uid=0"),
        ),
        # Continuation (dictionary) lines are not part of the message.
        (
            b"6,77,5,c;usb 1-1: new device\n SUBSYSTEM=usb\n DEVICE=c189:1\n",
            KmsgRecord(77, "usb 1-1: new device"),
        ),
        (b"4,9,1,-,caller=T1;text with ; inside\n", KmsgRecord(9, "text with ; inside")),
        (b"no header at all\n", None),
        (b"6,x,1,-;bad sequence\n", None),
        (b"6,1;too few fields\n", None),
    ],
)
def test_kmsg_records(record: bytes, parsed: KmsgRecord | None) -> None:
    assert parse_kmsg_record(record) == parsed


@pytest.mark.skipif(
    not os.access(KMSG_PATH, os.R_OK | os.W_OK), reason=f"{KMSG_PATH} is not readable and writable (root)"
)
def test_kmsg_source_yields_new_records_only(tmp_path: Path) -> None:
    marker = f"spo-auditsource-test: {uuid.uuid4()}"
    stop = threading.Event()
    source = KmsgSource(poll_seconds=0.05)
    lines = source.lines(stop)  # at the end of the log now: the earlier records are not read
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(lines), daemon=True)
    reader.start()
    with open(KMSG_PATH, "w") as kmsg:  # a record of our own, as root may write
        kmsg.write(f"<6>{marker}\n")
    deadline = time.monotonic() + TIMEOUT
    while marker not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join(timeout=TIMEOUT)
    assert not reader.is_alive()
    assert seen.count(marker) == 1
    assert all(not line.startswith(" ") for line in seen)


def test_kmsg_sequence_gaps_count_lost_records() -> None:
    """The kernel's ring buffer cannot be made to overwrite records without flooding the shared log, so
    the record loop reads a socket that keeps record boundaries as /dev/kmsg does."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    idle = threading.Event()  # the audit thread's housekeeping runs while nothing waits
    source = KmsgSource(poll_seconds=0.01, on_idle=idle.set)
    stop = threading.Event()
    seen: list[str] = []
    records = source._records(reader.detach(), stop)  # closes the descriptor when done
    thread = threading.Thread(target=seen.extend, args=(records,), daemon=True)
    thread.start()
    for record in (b"6,10,1,-;first\n SUBSYSTEM=x\n", b"6,11,2,-;second\n", b"garbage", b"6,14,3,-;third\n"):
        writer.send(record)
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=TIMEOUT)
    writer.close()
    assert seen == ["first", "second", "third"]
    assert source.lost_records == 2  # 12 and 13
    assert idle.is_set()
