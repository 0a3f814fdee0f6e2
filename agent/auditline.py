"""Audit lines to events: pure parsing of the kernel's SECCOMP (type 1326) and AVC (type 1400) records.

In: one line of text, without its newline, from any of the sources of inventory §6.1:
- audit.log, written by auditd: `type=SECCOMP msg=audit(1613596317.899:6461): auid=... pid=...` (with
  `log_format=ENRICHED` auditd appends `\\x1d`-separated interpreted fields, which are ignored);
- the kernel log (`/dev/kmsg`, `dmesg`): `audit: type=1326 audit(1611996299.149:466250): auid=...`;
- syslog, the kernel log with a prefix: `Jul  8 10:31:23 host kernel: [  270.853767] audit: type=1326 ...`.
(auditd's numeric form `type=1326 msg=audit(...)` and a `node=<host> ` prefix are accepted as well.)

Out: `parse_line(line)` returns a `SeccompEvent`, an `AvcEvent`, `Unparsable` for a line that names one of
these record types but lacks the kernel's fields (the caller counts and skips it), or None for any other
line. Every other line is rejected by a substring test before any regular expression runs, which is what
keeps the parser above 100k lines/s on one core (bench/audit_bench.py).

Called from the agent's audit thread, one line at a time; holds no state.

Differences from upstream (inventory §6.1): hex-encoded `exe=`/`comm=` values (the kernel's encoding of
names with spaces, quotes or non-ASCII bytes) are decoded as auditd does instead of being missed; uid and
gid are whole numbers (upstream 0.10 kept one digit); AVC events keep `comm` and `exe`; AppArmor lines are
not parsed (no AppArmor on the nodes we support).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from api.constants import (
    AUDIT_TYPE_AVC,
    AUDIT_TYPE_AVC_NUMBER,
    AUDIT_TYPE_SECCOMP,
    AUDIT_TYPE_SECCOMP_NUMBER,
)


@dataclass(frozen=True, slots=True)
class SeccompEvent:
    """One seccomp action the kernel logged (SCMP_ACT_LOG, or a denial): who made which syscall."""

    timestamp: str  # as the kernel writes it in audit(...): seconds.milliseconds, e.g. "1611996299.149"
    serial: int  # the audit serial after the colon; with the timestamp it names the audit event
    pid: int  # the thread group id, i.e. the process
    uid: int
    gid: int | None
    executable: str  # `exe=`, unquoted and hex-decoded; "(null)" for kernel threads
    comm: str
    syscall: int
    arch: int  # the audit arch token, e.g. 0xc000003e for x86_64 (libseccomp's SCMP_ARCH_* values)
    code: int  # the seccomp return value: action | data, e.g. 0x7ffc0000 for SCMP_ACT_LOG

    @property
    def audit_id(self) -> str:
        """`<timestamp>:<serial>`, what upstream's log enricher prints as the timestamp."""
        return f"{self.timestamp}:{self.serial}"


@dataclass(frozen=True, slots=True)
class AvcEvent:
    """One SELinux access vector decision the kernel logged (a denial, or a permissive-mode grant)."""

    timestamp: str
    serial: int
    pid: int
    permissions: tuple[str, ...]  # those inside `{ }`, in the kernel's order
    scontext: str
    tcontext: str
    tclass: str
    comm: str | None
    executable: str | None
    denied: bool  # `avc: denied` (also logged in permissive mode) rather than `avc: granted` (auditallow)

    @property
    def audit_id(self) -> str:
        return f"{self.timestamp}:{self.serial}"

    @property
    def perm(self) -> str:
        """The permissions as upstream reports them: space-separated."""
        return " ".join(self.permissions)


@dataclass(frozen=True, slots=True)
class Unparsable:
    """A line that names a SECCOMP or AVC record but does not have the fields the kernel writes."""

    record_type: str  # AUDIT_TYPE_SECCOMP or AUDIT_TYPE_AVC
    line: str


AuditEvent = SeccompEvent | AvcEvent

_SECCOMP_NAMED = f"type={AUDIT_TYPE_SECCOMP} "
_SECCOMP_NUMBERED = f"type={AUDIT_TYPE_SECCOMP_NUMBER} "
# The trailing space keeps AVC_PATH (1402) records out.
_AVC_NAMED = f"type={AUDIT_TYPE_AVC} "
_AVC_NUMBERED = f"type={AUDIT_TYPE_AVC_NUMBER} "
_AUDITD_PREFIX = "type="

# The kernel's field order (kernel/auditsc.c: audit_log_task, then audit_seccomp). Values of comm= and
# exe= never contain a space: the kernel quotes a name only when it has no space, quote or control byte,
# and hex-encodes it otherwise.
_SECCOMP = re.compile(
    r"audit\((?P<ts>\d+\.\d+):(?P<serial>\d+)\):"
    r".*? uid=(?P<uid>\d+)(?: gid=(?P<gid>\d+))?"
    r".*? pid=(?P<pid>\d+) comm=(?P<comm>\S*) exe=(?P<exe>\S*)"
    r" sig=-?\d+ arch=(?P<arch>[0-9a-f]+) syscall=(?P<syscall>\d+)"
    r".*? code=0x(?P<code>[0-9a-f]+)"
)
# security/selinux/avc.c: "avc:  denied  { read write } for  pid=... comm=... ... scontext=... ".
_AVC = re.compile(
    r"audit\((?P<ts>\d+\.\d+):(?P<serial>\d+)\): avc:\s+(?P<verdict>denied|granted)\s+"
    r"\{\s*(?P<perms>[^}]*?)\s*\} for\s(?P<fields>.*)"
)
_FIELD = re.compile(r"(\w+)=(\S*)")
_AVC_REQUIRED = ("pid", "scontext", "tcontext", "tclass")


def parse_line(line: str) -> SeccompEvent | AvcEvent | Unparsable | None:
    """The event a line records, `Unparsable` for a broken SECCOMP/AVC record, else None (see module)."""
    if line.startswith(_AUDITD_PREFIX):
        # audit.log: the record type comes first, so most lines are decided without a search.
        if line.startswith(_SECCOMP_NAMED) or line.startswith(_SECCOMP_NUMBERED):
            return _seccomp(line)
        if line.startswith(_AVC_NAMED) or line.startswith(_AVC_NUMBERED):
            return _avc(line)
        return None
    if _SECCOMP_NUMBERED in line or _SECCOMP_NAMED in line:
        return _seccomp(line)
    if _AVC_NUMBERED in line or _AVC_NAMED in line:
        return _avc(line)
    return None


def _seccomp(line: str) -> SeccompEvent | Unparsable:
    found = _SECCOMP.search(line)
    if found is None:
        return Unparsable(AUDIT_TYPE_SECCOMP, line)
    gid = found["gid"]
    return SeccompEvent(
        timestamp=found["ts"],
        serial=int(found["serial"]),
        pid=int(found["pid"]),
        uid=int(found["uid"]),
        gid=None if gid is None else int(gid),
        executable=decode_value(found["exe"]),
        comm=decode_value(found["comm"]),
        syscall=int(found["syscall"]),
        arch=int(found["arch"], 16),
        code=int(found["code"], 16),
    )


def _avc(line: str) -> AvcEvent | Unparsable | None:
    found = _AVC.search(line)
    if found is None:
        # Type 1400 is also AppArmor's in the kernel log: only a line that says `avc:` is ours.
        return Unparsable(AUDIT_TYPE_AVC, line) if "avc:" in line else None
    fields = dict(_FIELD.findall(found["fields"]))
    if any(not fields.get(key) for key in _AVC_REQUIRED) or not fields["pid"].isdigit():
        return Unparsable(AUDIT_TYPE_AVC, line)
    comm = fields.get("comm")
    exe = fields.get("exe")
    return AvcEvent(
        timestamp=found["ts"],
        serial=int(found["serial"]),
        pid=int(fields["pid"]),
        permissions=tuple(found["perms"].split()),
        scontext=fields["scontext"],
        tcontext=fields["tcontext"],
        tclass=fields["tclass"],
        comm=None if comm is None else decode_value(comm),
        executable=None if exe is None else decode_value(exe),
        denied=found["verdict"] == "denied",
    )


def decode_value(value: str) -> str:
    """An untrusted string as the kernel logs it, as auditd interprets it: `"text"` is the text; a bare
    value is hex-encoded bytes (UTF-8, other bytes kept as \\x escapes); `(null)` and anything that is not
    hex stay as written."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    if not value or len(value) % 2:
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return value
    return raw.decode("utf-8", "backslashreplace")
