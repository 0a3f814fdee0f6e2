"""Where audit lines come from: a followed log file (audit.log, syslog) or the kernel log (/dev/kmsg).

Both sources have `lines(stop)`: a generator of complete lines (str, without the newline) that runs
until the `threading.Event` `stop` is set, then returns; it is positioned (the file or log opened) when
`lines` is called. It is meant to be iterated by one thread, the agent's audit thread, which feeds each
line to `agent.auditline.parse_line`; while nothing new arrives it waits in short polls (`poll_seconds`,
checking `stop`), which costs a few stat calls a poll. `FileSource.blocks(stop)` gives the same lines
several at a time, for `agent.auditline.parse_block`: the fast way (bench/audit_bench.py). An error
other than a missing file (EACCES, EIO, ...) ends the iteration with that OSError, for the caller to
report.

`FileSource(path)` follows auditd's audit.log or syslog (`AUDIT_LOG_PATH`, `SYSLOG_PATH`) the same way:
- it starts at the end of the file (history is not replayed; a partial last line there is skipped up to
  its newline), or, for a file that does not exist yet, waits for it and reads it from its start;
- a partial last line is kept until its newline arrives;
- `create`-style rotation (the file renamed, a new one created; auditd's own rotation): the old file is
  finished first, then the new one is read from its start. The old file stays open and is read again
  at every poll until the new file has data, since a writer that has not yet reopened (before its
  SIGHUP) still appends to the old one; a single writer wrote all of it before the new file's first
  byte, so nothing is lost and the order holds;
- `copytruncate` rotation (the file copied, then truncated in place; same inode): noticed when the file
  is shorter than what was read or no longer holds the bytes last read; the lines written after the last
  read are then taken from the copy (a sibling named `<file>.1`, `<file>-<date>`, ... whose bytes match
  what was read), and the file is read again from 0. Without such a copy those lines are counted in
  `lost_rotations` and logged. Lines written between copy and truncate are lost by copytruncate itself,
  whoever reads the file.
`KmsgSource()` reads the kernel's log records from `/dev/kmsg`: the fallback for hosts without auditd,
where the kernel prints audit records there itself, rate-limited (`printk_ratelimit_burst`), so lines
can be missing under load. Records the ring buffer overwrote before they were read are counted in
`lost_records`.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from api.constants import KMSG_PATH

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Audit records are under 9 KiB (MAX_AUDIT_MESSAGE_LENGTH 8970); longer "lines" are garbage.
MAX_LINE_BYTES = 1 << 20
# What is compared to notice a copytruncate whose file grew past the old offset again.
TAIL_BYTES = 64
COPY_CANDIDATES = 5
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
KMSG_RECORD_BYTES = 16384  # more than the kernel's record size limit (CONSOLE_EXT_LOG_MAX, 8 KiB)


def _decode(raw: bytes | memoryview) -> str:
    return str(raw, "utf-8", "replace")


@dataclass
class _OpenFile:
    """One open generation of the followed file and how far it was read."""

    fd: int
    key: tuple[int, int]  # (st_dev, st_ino)
    offset: int = 0
    pending: bytearray = field(default_factory=bytearray)  # a line without its newline yet
    tail: bytes = b""  # the last TAIL_BYTES read, ending at offset
    skip_to_newline: bool = False  # started inside a line (at the end of a file) or dropped an overlong one

    def read_blocks(self) -> Iterator[str]:
        """Every complete line now in the file after offset, in blocks (see FileSource.blocks)."""
        while True:
            more, block = self.read_block()
            if block is not None:
                yield block
            if not more:
                return

    def read_block(self) -> tuple[bool, str | None]:
        """Whether there was anything to read after offset, and the lines it completed as one block
        (None if none)."""
        chunk = os.pread(self.fd, CHUNK_BYTES, self.offset)
        if not chunk:
            return False, None
        self.offset += len(chunk)
        self.tail = chunk[-TAIL_BYTES:] if len(chunk) >= TAIL_BYTES else (self.tail + chunk)[-TAIL_BYTES:]
        return True, self.feed(chunk)

    def feed(self, chunk: bytes) -> str | None:
        if self.skip_to_newline:
            newline = chunk.find(b"\n")
            if newline < 0:
                return None
            self.skip_to_newline = False
            chunk = chunk[newline + 1 :]
        end = chunk.rfind(b"\n")
        if end < 0:
            self._keep(chunk)
            return None
        data: bytes | bytearray = chunk
        if self.pending:
            end += len(self.pending)
            self.pending += chunk
            data, self.pending = self.pending, bytearray()
        # One decode for the whole chunk, of a view (no copy of a megabyte): a newline byte is never
        # part of a UTF-8 sequence.
        with memoryview(data) as view:
            text = _decode(view[:end])
        self._keep(data[end + 1 :])
        return text

    def _keep(self, rest: bytes | bytearray) -> None:
        self.pending += rest
        if len(self.pending) > MAX_LINE_BYTES:
            log.warning("dropping a line longer than %d bytes", MAX_LINE_BYTES)
            self.pending.clear()
            self.skip_to_newline = True

    def finish(self) -> Iterator[str]:
        """The unterminated last line of a file no one will write to again, as a block."""
        if self.pending and not self.skip_to_newline:
            yield _decode(bytes(self.pending))
        self.pending.clear()

    def truncated(self) -> bool:
        size = os.fstat(self.fd).st_size
        if size < self.offset:
            return True
        start = self.offset - len(self.tail)
        return bool(self.tail) and os.pread(self.fd, len(self.tail), start) != self.tail

    def close(self) -> None:
        os.close(self.fd)


class FileSource:
    """Follows one log file across rotations (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        from_start: bool = False,
        poll_seconds: float = 0.1,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """`from_start` reads the file from its beginning (the bench replays a log so); `on_idle` is
        called whenever nothing new was found, before waiting (tests rotate the file at a known point)."""
        self.path = Path(path)
        self.from_start = from_start
        self.poll_seconds = poll_seconds
        self.on_idle = on_idle
        self.lost_rotations = 0

    def lines(self, stop: threading.Event) -> Iterator[str]:
        """The lines from now on (the file is opened, at its end, by this call); iterate to the end."""
        return (line for block in self.blocks(stop) for line in block.split("\n"))

    def blocks(self, stop: threading.Event) -> Iterator[str]:
        """The same lines, several at a time: each block is one or more complete lines joined by
        newlines, without the last one (`block.split("\\n")` gives the lines), for
        `agent.auditline.parse_block`, which skips the lines it does not want without looking at each."""
        current = self._open(at_end=not self.from_start)
        if current is None:
            log.info("waiting for %s to appear", self.path)
        return self._follow(current, stop)

    def _follow(self, current: _OpenFile | None, stop: threading.Event) -> Iterator[str]:
        draining: list[_OpenFile] = []  # earlier generations after a create-style rotation, oldest first
        try:
            while not stop.is_set():
                if current is None:
                    current = self._open(at_end=False)
                    if current is None:
                        self._idle(stop)
                        continue
                replacement = self._replacement(current)
                if replacement is not None:
                    log.info("%s was rotated (renamed); finishing the old file", self.path)
                    draining.append(current)
                    current = replacement
                if draining:
                    # Looked at before the old files are read: what the new file holds now was written
                    # after everything in the old ones.
                    new_has_data = os.fstat(current.fd).st_size > 0
                    for old in draining:
                        yield from old.read_blocks()
                    if not new_has_data:
                        self._idle(stop)
                        continue  # the new file is read only once the old ones are complete
                    for old in draining:
                        yield from old.finish()
                        old.close()
                    draining.clear()
                if current.offset and current.truncated():
                    log.info("%s was truncated in place (copytruncate); reading it from the start", self.path)
                    yield from self._rest_from_copy(current)
                    yield from current.finish()
                    current.offset, current.tail, current.skip_to_newline = 0, b"", False
                more, block = current.read_block()
                if not more:
                    self._idle(stop)
                    continue
                if block is not None:
                    yield block
                yield from current.read_blocks()
        finally:
            for generation in [*draining, *([current] if current else [])]:
                generation.close()

    def _idle(self, stop: threading.Event) -> None:
        if self.on_idle is not None:
            self.on_idle()
        stop.wait(self.poll_seconds)

    def _open(self, *, at_end: bool) -> _OpenFile | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        info = os.fstat(fd)
        opened = _OpenFile(fd, (info.st_dev, info.st_ino))
        if at_end and info.st_size:
            opened.offset = info.st_size
            last = os.pread(fd, 1, info.st_size - 1)
            opened.tail = os.pread(fd, TAIL_BYTES, max(0, info.st_size - TAIL_BYTES))
            opened.skip_to_newline = last != b"\n"
            if opened.skip_to_newline:
                opened.tail = b""  # the partial line may still be rewritten; nothing to compare yet
        return opened

    def _replacement(self, current: _OpenFile) -> _OpenFile | None:
        """The file now at the path when it is not the one being read (create-style rotation)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None  # renamed, the new one not created yet: keep reading the old one
        if (info.st_dev, info.st_ino) == current.key:
            return None
        return self._open(at_end=False)

    def _rest_from_copy(self, current: _OpenFile) -> Iterator[str]:
        """What was written after the last read and before the truncation, from the rotated copy."""
        copy = self._find_copy(current)
        if copy is None:
            self.lost_rotations += 1
            log.warning(
                "%s was truncated and no rotated copy holds what was read up to byte %d: "
                "lines written after that are lost",
                self.path,
                current.offset,
            )
            current.pending.clear()
            return
        log.info("reading the rest of %s from its copy %s", self.path, copy)
        fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC)
        try:
            reader = _OpenFile(
                fd, (0, 0), current.offset, current.pending, current.tail, current.skip_to_newline
            )
            yield from reader.read_blocks()
            current.pending, current.skip_to_newline = reader.pending, reader.skip_to_newline
        finally:
            os.close(fd)

    def _find_copy(self, current: _OpenFile) -> Path | None:
        prefix = self.path.name
        candidates = []
        for sibling in self.path.parent.iterdir():
            if sibling.name == prefix or not sibling.name.startswith(prefix):
                continue
            if sibling.name.endswith(_COMPRESSED):
                continue
            try:
                candidates.append((sibling.stat().st_mtime, sibling))
            except OSError:
                continue
        for _, sibling in sorted(candidates, reverse=True)[:COPY_CANDIDATES]:
            if _holds(sibling, current.offset, current.tail):
                return sibling
        return None


def _holds(path: Path, offset: int, tail: bytes) -> bool:
    """Whether the file has `tail` as its bytes just before `offset`."""
    try:
        with path.open("rb") as copy:
            copy.seek(offset - len(tail))
            return copy.read(len(tail)) == tail and len(tail) > 0
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    sequence: int
    text: str  # the message, e.g. "audit: type=1326 audit(...): ..."


def parse_kmsg_record(record: bytes) -> KmsgRecord | None:
    """One /dev/kmsg record (`<prio>,<seq>,<usec>,<flags>[,...];<text>\\n[ KEY=value\\n...]`): its
    sequence number and first line of text, without the continuation (dictionary) lines; None for
    anything else."""
    header, separator, body = record.partition(b";")
    if not separator:
        return None
    fields = header.split(b",")
    if len(fields) < 4 or not fields[1].isdigit():
        return None
    return KmsgRecord(int(fields[1]), _decode(body.split(b"\n", 1)[0]))


class KmsgSource:
    """The kernel's log, record by record (see the module docstring)."""

    def __init__(
        self,
        path: str | Path = KMSG_PATH,
        *,
        from_start: bool = False,
        poll_seconds: float = 0.2,
        on_idle: Callable[[], None] | None = None,
    ):
        """`on_idle` is called whenever no record is waiting, as FileSource's."""
        self.path = Path(path)
        self.from_start = from_start
        self.poll_seconds = poll_seconds
        self.on_idle = on_idle
        self.lost_records = 0

    def blocks(self, stop: threading.Event) -> Iterator[str]:
        """As `lines`: each record is a block of its own (the kernel hands them over one by one)."""
        return self.lines(stop)

    def lines(self, stop: threading.Event) -> Iterator[str]:
        """The records' texts from now on (the log is opened, at its end, by this call); iterate it."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not self.from_start:
            os.lseek(fd, 0, os.SEEK_END)
        return self._records(fd, stop)

    def _records(self, fd: int, stop: threading.Event) -> Iterator[str]:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            last_sequence: int | None = None
            while not stop.is_set():
                try:
                    record = os.read(fd, KMSG_RECORD_BYTES)
                except BlockingIOError:
                    record = b""
                except OSError as error:
                    if error.errno != errno.EPIPE:
                        raise
                    # The ring buffer overwrote the next record; the next read goes on with the oldest
                    # one left, and the sequence gap counts what was lost.
                    continue
                if not record:
                    if self.on_idle is not None:
                        self.on_idle()
                    poller.poll(self.poll_seconds * 1000)
                    continue
                parsed = parse_kmsg_record(record)
                if parsed is None:
                    continue
                if last_sequence is not None and parsed.sequence > last_sequence + 1:
                    self.lost_records += parsed.sequence - last_sequence - 1
                last_sequence = parsed.sequence
                yield parsed.text
        finally:
            os.close(fd)
