"""Generated audit.log content in auditd's exact format: SECCOMP events (some with auditd's ENRICHED tail,
some with hex-encoded names), AVC events (AVC + SYSCALL + PROCTITLE records of one serial, as the kernel
emits them), and noise (SYSCALL/CWD/PATH/PROCTITLE events, USER_LOGIN, USER_CMD). Used by the ausearch
cross-check (tests/test_auditline.py) and the bench (bench/audit_bench.py).

The record templates follow real records: SECCOMP and AVC from inventory §6.1 (upstream's
audit_test.go), the others from auditd 3.0.9's own output on Debian bookworm.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

X86_64 = "c000003e"
# x86_64 numbers 0-334 are all defined, so ausearch and libseccomp both name every one of them.
MAX_X86_64_SYSCALL = 334
GROUP_SEPARATOR = "\x1d"  # auditd's ENRICHED format appends interpreted fields after it

_COMMS = ["sh", "nginx", "ls", "python3", "my prog"]  # a space: the kernel hex-encodes the name
_EXES = ["/bin/dash", "/usr/sbin/nginx", "/bin/ls", "/usr/bin/python3.11", "/tmp/my app"]
_PERMS = ["read", "write", "open", "getattr", "execute", "map"]
_TCLASSES = ["file", "dir", "lnk_file", "sock_file", "tcp_socket"]


def kernel_string(text: str) -> str:
    """A name as the kernel logs it: quoted, or hex-encoded when it has a space, quote or control byte."""
    if any(c <= " " or c == '"' or c > "~" for c in text):
        return text.encode().hex().upper()
    return f'"{text}"'


def _stamp(serial: int) -> str:
    seconds, millis = divmod(serial * 7, 1000)
    return f"audit({1_744_780_000 + seconds}.{millis:03d}:{serial})"


def seccomp_record(serial: int, pid: int, syscall: int, process: int, *, enriched: bool) -> str:
    line = (
        f"type=SECCOMP msg={_stamp(serial)}: auid=4294967295 uid={pid % 3 * 500} gid={pid % 5} "
        f"ses=4294967295 subj=system_u:system_r:container_t:s0:c83,c152 pid={pid} "
        f"comm={kernel_string(_COMMS[process])} exe={kernel_string(_EXES[process])} sig=0 "
        f"arch={X86_64} syscall={syscall} compat=0 ip=0x7fe2ff5017be code=0x7ffc0000"
    )
    if enriched:
        line += f'{GROUP_SEPARATOR}AUID="unset" UID="root" GID="root" ARCH=x86_64 SYSCALL=unknown-syscall(-1)'
    return line


def avc_event(serial: int, pid: int, perms: list[str], tclass: str) -> list[str]:
    stamp = _stamp(serial)
    return [
        f'type=AVC msg={stamp}: avc:  denied  {{ {" ".join(perms)} }} for  pid={pid} comm="aide" '
        f'path="/hostroot/etc/kubernetes/aide.log.new" dev="nvme0n1p4" ino=167774224 '
        f"scontext=system_u:system_r:selinuxrecording.process:s0:c218,c875 "
        f"tcontext=system_u:object_r:kubernetes_file_t:s0 tclass={tclass} permissive=1",
        _syscall_record(stamp, pid, 257),
        f"type=PROCTITLE msg={stamp}: proctitle=61696465002D2D636865636B",
    ]


def _syscall_record(stamp: str, pid: int, syscall: int) -> str:
    return (
        f"type=SYSCALL msg={stamp}: arch={X86_64} syscall={syscall} success=yes exit=3 a0=ffffff9c "
        f"a1=55d0a8e2c4a0 a2=241 a3=1b6 items=2 ppid=1 pid={pid} auid=4294967295 uid=0 gid=0 euid=0 "
        f'suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="ls" exe="/bin/ls" '
        f"subj=unconfined key=(null)"
    )


def noise_event(serial: int, pid: int, rng: random.Random) -> list[str]:
    stamp = _stamp(serial)
    kind = rng.randrange(3)
    if kind == 0:
        return [
            _syscall_record(stamp, pid, 59),
            f'type=CWD msg={stamp}: cwd="/root"',
            f'type=PATH msg={stamp}: item=0 name="/bin/ls" inode=1835 dev=08:01 mode=0100755 ouid=0 '
            f"ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0",
            f"type=PROCTITLE msg={stamp}: proctitle=6C73002D6C61",
        ]
    if kind == 1:
        return [
            f"type=USER_LOGIN msg={stamp}: pid={pid} uid=0 auid=1000 ses=3 msg='op=login id=1000 "
            f'exe="/usr/sbin/sshd" hostname=? addr=10.0.0.1 terminal=/dev/pts/0 res=success\''
        ]
    return [
        f'type=USER_CMD msg={stamp}: pid={pid} uid=1000 auid=1000 ses=3 msg=\'cwd="/home/u" '
        f'cmd=6C73 exe="/usr/bin/sudo" terminal=pts/0 res=success\''
    ]


def audit_log_lines(count: int, seed: int = 11, pids: Sequence[int] = ()) -> Iterator[str]:
    """About `count` lines (whole events, so up to 3 more), reproducible for a seed: 40% of the events
    SECCOMP, 10% AVC, the rest noise; the events of the processes `pids` (a node's, for attribution),
    or of random pids."""
    rng = random.Random(seed)
    serial = 1000
    produced = 0
    while produced < count:
        serial += 1
        pid = rng.randrange(300, 4_000_000)
        if pids:
            pid = pids[pid % len(pids)]
        roll = rng.random()
        if roll < 0.4:
            lines = [
                seccomp_record(
                    serial,
                    pid,
                    rng.randrange(MAX_X86_64_SYSCALL + 1),
                    rng.randrange(len(_COMMS)),
                    enriched=roll < 0.1,
                )
            ]
        elif roll < 0.5:
            lines = avc_event(serial, pid, rng.sample(_PERMS, rng.randrange(1, 4)), rng.choice(_TCLASSES))
        else:
            lines = noise_event(serial, pid, rng)
        produced += len(lines)
        yield from lines
