# ruff: noqa: E501  (real audit lines are quoted whole)
"""Audit-line parsing (agent/auditline.py) and syscall naming (agent/syscalls.py): the real lines of
inventory §6.1, lines the kernel writes here, and ausearch as an oracle on a generated audit.log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import syscalls
from agent.auditline import AvcEvent, SeccompEvent, Unparsable, decode_value, parse_block, parse_line
from agent.auditsource import FileSource, KmsgSource
from agent.syscalls import is_known, native_arch, syscall_name
from api.constants import AUDIT_RECORD_AVC, AUDIT_RECORD_SECCOMP, KMSG_PATH
from tests.auditlog_corpus import audit_log_lines

X86_64 = 0xC000003E
AARCH64 = 0xC00000B7
I386 = 0x40000003
LOG = 0x7FFC0000

# Inventory §6.1, quoted from upstream's internal/pkg/daemon/enricher/auditsource/audit_test.go (note the
# double spaces, and line 3's enriched tail whose \x1d separator the quote lost).
UPSTREAM_LINES = [
    'audit: type=1326 audit(1611996299.149:466250): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=615549 comm="sh" exe="/bin/busybox" sig=0 arch=c000003e syscall=1 compat=0 ip=0x7f61a81c5923 code=0x7ffc0000',
    'Jul  8 10:31:23 ubuntu2004 kernel: [  270.853767] audit: type=1326 audit(1625740283.502:574): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4709 comm="sh" exe="/bin/busybox" sig=0 arch=c000003e syscall=13 compat=0 ip=0x7f3c012e467b code=0x7ffc0000',
    'type=SECCOMP msg=audit(1613596317.899:6461): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=system_u:system_r:spc_t:s0:c284,c594 pid=2039886 comm="ls" exe="/bin/ls" sig=0 arch=c000003e syscall=3 compat=0 ip=0x7f62dce3d4c7 code=0x7ffc0000AUID="unset" UID="root" GID="root" ARCH=x86_64 SYSCALL=close',
    'type=SECCOMP msg=audit(1744780616.598:836036): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=system_u:system_r:container_t:s0:c83,c152 pid=72503 comm="sh" exe="/bin/dash" sig=0 arch=c000003e syscall=56 compat=0 ip=0x7fe2ff5017be code=0x7ffc0000AUID="unset" UID="root" GID="root" ARCH=x86_64 SYSCALL=clone',
    'audit: type=1326 audit(1612299677.115:549067): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=3109464 comm="sh" exe="/bin/busybox" sig=0 arch=c000003e syscall=0 compat=0 ip=0x7fce771ae923 code=0x7ffc0000',
    'type=AVC msg=audit(1613173578.156:2945): avc:  denied  { read } for  pid=75593 comm="security-profil" name="token" dev="tmpfs" ino=612459 scontext=system_u:system_r:container_t:s0:c4,c808 tcontext=system_u:object_r:var_lib_t:s0 tclass=lnk_file permissive=0',
    'type=AVC msg=audit(1666691794.882:1434): avc:  denied  { read write open } for  pid=94509 comm="aide" path="/hostroot/etc/kubernetes/aide.log.new" dev="nvme0n1p4" ino=167774224 scontext=system_u:system_r:selinuxrecording.process:s0:c218,c875 tcontext=system_u:object_r:kubernetes_file_t:s0 tclass=file permissive=1',
    'audit: type=1400 audit(1668191154.949:64): apparmor="DENIED" operation="exec" profile="profile-name" name="/usr/local/bin/sample-app" pid=4166 comm="tini"',
    'audit: type=1400 audit(1668191154.949:64): apparmor="DENIED" operation="exec" profile="profile-name" name="/usr/local/bin/sample-app" pid=4166 comm="tini" requested_mask="x" denied_mask="x" fsuid=65534 ouid=0',
    # json_enricher_test.go's line (assembled from its constants).
    'type=SECCOMP msg=audit(1624537480.360:8477): auid=1000 uid=0 gid=0 ses=1 subj=kernel pid=2060394 comm="sleep" exe="/bin/busybox" sig=0 arch=c000003e syscall=10 compat=0 ip=0x7f4ce626349b code=0x7ffc0000 AUID="user" UID="root" GID="root" ARCH=x86_64 SYSCALL=/bin/busybox',
    # real-components.md §1b: a real kernel-log line of SCMP_ACT_LOG (its exe= shortened there with "…").
    # And one of `dmesg` on this machine: runc's init under the docs' profile1, before it execs.
    'audit: type=1326 audit(1796301057.576:20018): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=8607 comm="runc:[2:INIT]" exe="/" sig=0 arch=c000003e syscall=72 compat=0 ip=0x40828e code=0x7ffc0000',
    'audit: type=1326 audit(1795770396.827:3): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=6597 comm="python" exe="…/bin/python3.11" sig=0 arch=c000003e syscall=83 compat=0 ip=0x7f0cda115f37 code=0x7ffc0000',
]  # fmt: skip


def seccomp(ts: str, serial: int, pid: int, exe: str, comm: str, syscall: int, uid: int = 0) -> SeccompEvent:
    return SeccompEvent(ts, serial, pid, uid, 0, exe, comm, syscall, X86_64, LOG)


EXPECTED: list[SeccompEvent | AvcEvent | None] = [
    seccomp("1611996299.149", 466250, 615549, "/bin/busybox", "sh", 1),
    seccomp("1625740283.502", 574, 4709, "/bin/busybox", "sh", 13),
    seccomp("1613596317.899", 6461, 2039886, "/bin/ls", "ls", 3),
    seccomp("1744780616.598", 836036, 72503, "/bin/dash", "sh", 56),
    seccomp("1612299677.115", 549067, 3109464, "/bin/busybox", "sh", 0),
    AvcEvent(
        "1613173578.156",
        2945,
        75593,
        ("read",),
        "system_u:system_r:container_t:s0:c4,c808",
        "system_u:object_r:var_lib_t:s0",
        "lnk_file",
        "security-profil",
        None,
        denied=True,
    ),
    AvcEvent(
        "1666691794.882",
        1434,
        94509,
        ("read", "write", "open"),
        "system_u:system_r:selinuxrecording.process:s0:c218,c875",
        "system_u:object_r:kubernetes_file_t:s0",
        "file",
        "aide",
        None,
        denied=True,
    ),
    None,  # AppArmor
    None,
    seccomp("1624537480.360", 8477, 2060394, "/bin/busybox", "sleep", 10),
    seccomp("1796301057.576", 20018, 8607, "/", "runc:[2:INIT]", 72),
    seccomp("1795770396.827", 3, 6597, "…/bin/python3.11", "python", 83),
]


@pytest.mark.parametrize(("line", "expected"), list(zip(UPSTREAM_LINES, EXPECTED, strict=True)))
def test_real_lines(line: str, expected: SeccompEvent | AvcEvent | None) -> None:
    assert parse_line(line) == expected


def test_upstream_expectations_in_its_own_terms() -> None:
    """audit_test.go's expected values, as upstream prints them."""
    event = parse_line(UPSTREAM_LINES[4])
    assert isinstance(event, SeccompEvent)
    assert (event.audit_id, event.syscall, event.pid, event.executable) == (
        "1612299677.115:549067",
        0,
        3109464,
        "/bin/busybox",
    )
    avc = parse_line(UPSTREAM_LINES[6])
    assert isinstance(avc, AvcEvent)
    assert (avc.audit_id, avc.perm) == ("1666691794.882:1434", "read write open")


HEX_EXE = "2F746D702F6D7920617070"  # "/tmp/my app": a space, so the kernel hex-encodes it
OTHER_LINES: list[tuple[str, SeccompEvent | AvcEvent | Unparsable | None]] = [
    # The same body under another record type is not ours (audit_test.go's negative case).
    (UPSTREAM_LINES[0].replace("type=1326", "type=1016"), None),
    # Names as the kernel hex-encodes them, a gid-less body, a kill action with a signal.
    (
        f"type=SECCOMP msg=audit(1700000000.123:42): auid=1000 uid=1000 ses=2 pid=77 comm=6D792070726F67 "
        f"exe={HEX_EXE} sig=31 arch=c00000b7 syscall=34 compat=0 ip=0x4005d4 code=0x80000000",
        SeccompEvent("1700000000.123", 42, 77, 1000, None, "/tmp/my app", "my prog", 34, AARCH64, 0x80000000),
    ),
    # auditd's numeric form and its node= prefix.
    (
        "node=worker-1 type=1326 msg=audit(1700000000.5:7): auid=4294967295 uid=0 gid=0 ses=4294967295 "
        'pid=9 comm="sh" exe=(null) sig=0 arch=c000003e syscall=59 compat=0 ip=0x1 code=0x50001',
        SeccompEvent("1700000000.5", 7, 9, 0, 0, "(null)", "sh", 59, X86_64, 0x50001),
    ),
    # syslog as Debian's rsyslog writes it by default (RFC 3339 stamps), without the kernel's own time.
    (
        "2026-12-03T12:59:04.123456+00:00 node-1 kernel: audit: type=1326 audit(1796301057.576:20018): "
        'auid=4294967295 uid=0 gid=0 ses=4294967295 pid=8607 comm="runc:[2:INIT]" exe="/" sig=0 '
        "arch=c000003e syscall=72 compat=0 ip=0x40828e code=0x7ffc0000",
        SeccompEvent("1796301057.576", 20018, 8607, 0, 0, "/", "runc:[2:INIT]", 72, X86_64, LOG),
    ),
    # A granted (auditallow) AVC from the kernel log, with an exe= field.
    (
        "audit: type=1400 audit(1700000001.000:8): avc:  granted  { execute } for  pid=5 comm=\"sh\" "
        'exe="/bin/sh" scontext=a:b:c:s0 tcontext=d:e:f:s0 tclass=file',
        AvcEvent("1700000001.000", 8, 5, ("execute",), "a:b:c:s0", "d:e:f:s0", "file", "sh", "/bin/sh", False),
    ),
    # Broken records of our types are counted, not events.
    *(
        (line, Unparsable(kind, line))
        for kind, line in [
            (AUDIT_RECORD_SECCOMP, "type=1326 syscall=1"),
            (AUDIT_RECORD_SECCOMP, UPSTREAM_LINES[0].split(" ses=")[0]),
            (AUDIT_RECORD_SECCOMP, UPSTREAM_LINES[0].replace("syscall=1", "syscall=x")),
            (AUDIT_RECORD_AVC, 'type=AVC msg=audit(1.2:3): avc:  denied  { read } for  pid=1 comm="x" tclass=file'),
            (AUDIT_RECORD_AVC, UPSTREAM_LINES[5].replace("pid=75593", "pid=x")),
        ]
    ),
    # Other records, near misses included.
    ("[ 3683.829070] kauditd_printk_skb: 1 callbacks suppressed", None),
    ('type=AVC_PATH msg=audit(1.2:3): path="/x"', None),
    (
        "type=USER_AVC msg=audit(1.2:3): pid=1 uid=0 auid=4294967295 ses=4294967295 msg='avc:  denied  "
        "{ status } for auid=-1 uid=0 gid=0 cmdline=\"x\" scontext=a:b:c tcontext=d:e:f tclass=system'",
        None,
    ),
    ("type=SYSCALL msg=audit(1.2:3): arch=c000003e syscall=59 success=yes pid=5 uid=0 gid=0", None),
    ("", None),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), OTHER_LINES)
def test_other_lines(line: str, expected: SeccompEvent | AvcEvent | Unparsable | None) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ('"/bin/ls"', "/bin/ls"),
        (HEX_EXE, "/tmp/my app"),
        ("2F62696E2F22717522", '/bin/"qu"'),
        ("C3A9", "é"),
        ("FF41", "\\xffA"),  # not UTF-8: kept visible, not dropped
        ("(null)", "(null)"),
        ("ABC", "ABC"),  # odd length: not hex
        ("", ""),
        ('"', '"'),
    ],
)
def test_decode_value(value: str, decoded: str) -> None:
    assert decode_value(value) == decoded


@given(st.text(max_size=400))
def test_any_text_parses_without_error(line: str) -> None:
    parse_line(line)


@given(st.sampled_from(UPSTREAM_LINES), st.integers(0, 400), st.text(max_size=20))
def test_damaged_real_lines_parse_without_error(line: str, cut: int, garbage: str) -> None:
    result = parse_line(line[:cut] + garbage + line[cut + len(garbage) :])
    assert result is None or isinstance(result, SeccompEvent | AvcEvent | Unparsable)


# --- blocks of lines ----------------------------------------------------------------------------------


def _line_by_line(lines: list[str]) -> list[SeccompEvent | AvcEvent | Unparsable]:
    return [event for event in map(parse_line, lines) if event is not None]


def test_a_block_gives_what_its_lines_give() -> None:
    lines = list(audit_log_lines(3000))
    events = list(parse_block("\n".join(lines)))
    assert len(events) > 500
    assert events == _line_by_line(lines)


_POOL = UPSTREAM_LINES + [line for line, _ in OTHER_LINES]


@given(
    st.lists(
        st.one_of(st.sampled_from(_POOL), st.text(st.characters(blacklist_characters="\n"), max_size=80)),
        max_size=12,
    )
)
def test_any_block_gives_what_its_lines_give(lines: list[str]) -> None:
    assert list(parse_block("\n".join(lines))) == _line_by_line(lines)


# --- syscall names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "arch", "name"),
    [
        (83, X86_64, "mkdir"),
        (0, X86_64, "read"),
        (56, X86_64, "clone"),
        (34, AARCH64, "mkdirat"),  # `scmp_sys_resolver -a aarch64 mkdirat` (real-components.md §1)
        (5, I386, "open"),  # a 32-bit process on x86_64 is named from its own table
        (9999, X86_64, "unknown-syscall(c000003e:9999)"),
        (-1, X86_64, "unknown-syscall(c000003e:-1)"),
        (2**40, X86_64, f"unknown-syscall(c000003e:{2**40})"),
        (1, 0x12345, "unknown-syscall(12345:1)"),
        (1, 0, "unknown-syscall(0:1)"),  # arch 0 would silently mean "native" to libseccomp
    ],
)
def test_syscall_name(number: int, arch: int, name: str) -> None:
    assert syscall_name(number, arch) == name
    assert is_known(name) == (not name.startswith("unknown-syscall"))


def test_without_libseccomp_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "LIBSECCOMP_SONAME", "libseccomp-absent.so.0")
    syscalls._libseccomp.cache_clear()
    syscall_name.cache_clear()
    try:
        with pytest.raises(syscalls.LibseccompMissingError, match="install libseccomp2"):
            syscall_name(83, X86_64)
    finally:
        syscalls._libseccomp.cache_clear()
        syscall_name.cache_clear()


def test_native_arch_is_this_machine() -> None:
    machine = os.uname().machine
    expected = {"x86_64": X86_64, "aarch64": AARCH64}.get(machine)
    if expected is None:
        pytest.skip(f"no expectation written for {machine}")
    assert native_arch() == expected


# --- lines the kernel writes here ------------------------------------------------------------------


def _mkdir_under_log_filter(directory: str) -> int:
    """Fork a child that loads a filter logging every syscall but what Python needs to run, makes one
    mkdir, and exits; its pid."""
    import pyseccomp as seccomp  # type: ignore[import-untyped]

    quiet = ["exit_group", "exit", "rt_sigreturn", "rt_sigprocmask", "futex", "munmap", "madvise", "brk"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            scfilter = seccomp.SyscallFilter(seccomp.LOG)
            for name in quiet:
                scfilter.add_rule(seccomp.ALLOW, name)
            scfilter.load()
            os.mkdir(os.path.join(directory, "made"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


MKDIR = {"mkdir", "mkdirat"}  # glibc's mkdir() is mkdirat on architectures without mkdir (aarch64)


def _audit_daemon_logs() -> list[Path]:
    """The logs a running auditd writes (it then gets the kernel's audit records, not the kernel log)."""
    logs = []
    for process in Path("/proc").iterdir():
        try:
            if not process.name.isdigit() or (process / "comm").read_text().strip() != "auditd":
                continue
            logs += [Path(os.readlink(fd)) for fd in (process / "fd").iterdir()]
        except OSError:
            continue  # gone, or not ours to look at
    return [log for log in logs if log.suffix == ".log" and log.is_file()]


@pytest.mark.skipif(not os.access(KMSG_PATH, os.R_OK), reason=f"{KMSG_PATH} is not readable (needs root)")
def test_kernel_seccomp_log_line_parses_to_the_child(tmp_path: Path) -> None:
    stop = threading.Event()
    # Wherever the kernel's records go now: its log, or the log of an auditd (the node's, when it runs).
    sources: list[KmsgSource | FileSource] = [KmsgSource(poll_seconds=0.05)]
    sources += [FileSource(log, poll_seconds=0.05) for log in _audit_daemon_logs()]
    seen: list[str] = []
    readers = []
    for source in sources:
        lines = source.lines(stop)  # positioned at the end, before the child runs
        readers.append(threading.Thread(target=seen.extend, args=(lines,), daemon=True))
        readers[-1].start()
    pid = _mkdir_under_log_filter(str(tmp_path))
    assert (tmp_path / "made").is_dir()
    # kauditd and auditd write asynchronously: wait for the line, generously.
    mentions = (f" pid={pid} ", "type=1326 ", "type=SECCOMP ")
    deadline = time.monotonic() + 30
    raw: list[str] = []
    while time.monotonic() < deadline:
        raw = [line for line in list(seen) if mentions[0] in line and any(m in line for m in mentions[1:])]
        events = [parse_line(line) for line in raw]
        if any(isinstance(e, SeccompEvent) and syscall_name(e.syscall, e.arch) in MKDIR for e in events):
            break
        time.sleep(0.1)
    stop.set()
    for reader in readers:
        reader.join(timeout=10)
    if not raw:
        pytest.skip(
            f"the kernel logged no seccomp line for pid {pid} in {[str(s.path) for s in sources]}: "
            "auditing may be off, or the kernel log rate-limited the line"
        )
    events = [parse_line(line) for line in raw]
    assert all(isinstance(e, SeccompEvent) and e.pid == pid for e in events), raw
    seccomp_events = [e for e in events if isinstance(e, SeccompEvent)]
    assert MKDIR & {syscall_name(e.syscall, e.arch) for e in seccomp_events}, raw
    event = seccomp_events[0]
    assert event.code == LOG
    assert event.arch == native_arch()
    assert event.uid == os.getuid()
    assert event.executable == os.path.realpath(f"/proc/{os.getpid()}/exe")


# --- ausearch as the oracle ------------------------------------------------------------------------

AUSEARCH = shutil.which("ausearch") or "/usr/sbin/ausearch"
AUSYSCALL = shutil.which("ausyscall") or "/usr/bin/ausyscall"
_RECORD = re.compile(r"^type=(?P<type>\w+) msg=audit\([^)]*:(?P<serial>\d+)\) : (?P<body>.*)$")


def _ours(lines: list[str]) -> Iterator[tuple[str, int, int, str]]:
    for line in lines:
        event = parse_line(line)
        if isinstance(event, SeccompEvent):
            assert is_known(syscall_name(event.syscall, event.arch)), event
            yield AUDIT_RECORD_SECCOMP, event.serial, event.pid, f"{event.syscall} {event.executable}"
        elif isinstance(event, AvcEvent):
            yield AUDIT_RECORD_AVC, event.serial, event.pid, f"{event.perm} {event.tclass}"
        else:
            assert event is None, event


def _ausearch(interpreted: str, numbers: dict[str, int]) -> Iterator[tuple[str, int, int, str]]:
    """SECCOMP and AVC records of `ausearch -i` output: syscall names and decoded names are its own
    (its names are turned back into numbers with its own table: a few differ from libseccomp's, e.g.
    auditd's `pwrite` is libseccomp's `pwrite64`)."""
    for line in interpreted.splitlines():
        record = _RECORD.match(line)
        if record is None or record["type"] not in (AUDIT_RECORD_SECCOMP, AUDIT_RECORD_AVC):
            continue
        body = record["body"]
        pid = re.search(r"(?<!\w)pid=(\d+)", body)
        assert pid is not None, line
        if record["type"] == AUDIT_RECORD_SECCOMP:
            fields = re.search(r" exe=(.*) sig=\S+ arch=\S+ syscall=(\S+) ", body)
            assert fields is not None, line
            detail = f"{numbers[fields[2]]} {fields[1]}"
        else:
            fields = re.search(r"\{ (.*) \} for .* tclass=(\S+)", body)
            assert fields is not None, line
            detail = f"{fields[1]} {fields[2]}"
        yield record["type"], int(record["serial"]), int(pid[1]), detail


@pytest.mark.skipif(
    not (os.access(AUSEARCH, os.X_OK) and os.access(AUSYSCALL, os.X_OK)),
    reason="ausearch/ausyscall are not installed (apt auditd)",
)
def test_same_events_as_ausearch(tmp_path: Path) -> None:
    lines = list(audit_log_lines(3000))
    log_file = tmp_path / "audit.log"
    log_file.write_text("\n".join(lines) + "\n")
    interpreted = subprocess.run(
        [AUSEARCH, "-if", str(log_file), "-i"], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    table = subprocess.run(
        [AUSYSCALL, "x86_64", "--dump"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    numbers = {name: int(number) for number, name in re.findall(r"^(\d+)\t(\S+)$", table, re.MULTILINE)}
    ours = sorted(_ours(lines))
    theirs = sorted(_ausearch(interpreted, numbers))
    assert len(ours) > 500
    assert {kind for kind, *_ in ours} == {AUDIT_RECORD_SECCOMP, AUDIT_RECORD_AVC}
    assert ours == theirs
