"""Who forked whom, from the kernel's process events, so that a process already gone when its audit line is
read can be attributed through its parent.

A container's short-lived processes (a shell's `mkdir`, which lives about a millisecond) have exited long
before auditd has written their lines and the agent has read them, so `<proc>/<pid>/cgroup` cannot say
whose they were. Their parent (the shell) usually still runs, and a forked child starts in its parent's
cgroup. The kernel announces every fork on the proc connector (a netlink socket, `NETLINK_CONNECTOR`,
multicast group `CN_IDX_PROC`; root, in the host's network namespace): `ForkWatch` keeps the latest
parent of each process id in a bounded map, which `attribution.ContainerIds` consults when a pid is gone.
A pid the kernel reuses gets its new parent with the new fork, so the map always names the parent of
the latest process of that number.

Where the socket cannot be opened (no privilege, another network namespace), `parent` answers None and
the agent attributes only processes that are still running, as upstream does; this is logged once.
`parse_event` is pure; `ForkWatch` runs one thread that only reads the socket.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections import OrderedDict
from typing import NamedTuple

from api import constants

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=IIII")  # parent_pid, parent_tgid, child_pid, child_tgid
_EVENT_OFFSET = _NLMSGHDR.size + _CN_MSG.size
_FORK_OFFSET = _EVENT_OFFSET + _EVENT_HEADER.size
_RECEIVE_BYTES = 65536
_POLL_SECONDS = 0.5


class Fork(NamedTuple):
    parent: int  # the forking process (thread group id)
    child: int  # the new process


def parse_event(data: bytes) -> Fork | None:
    """The new process a proc connector message announces; None for any other event, a new thread
    (which is not a new process) or a message too short to be one."""
    if len(data) < _FORK_OFFSET + _FORK.size:
        return None
    what, _cpu, _time = _EVENT_HEADER.unpack_from(data, _EVENT_OFFSET)
    if what != PROC_EVENT_FORK:
        return None
    _parent_pid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data, _FORK_OFFSET)
    return Fork(parent_tgid, child_tgid) if child_pid == child_tgid else None


def listen_message() -> bytes:
    """The request that subscribes a proc connector socket to process events."""
    operation = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    body = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(operation), 0) + operation
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), NLMSG_DONE, 0, 0, 0) + body


class ForkWatch:
    """The latest parent of each process id, as the kernel announces forks (see the module docstring)."""

    def __init__(self, max_entries: int = constants.PID_CACHE_MAX_ENTRIES * 4) -> None:
        self._max_entries = max_entries
        self._parents: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> bool:
        """Subscribe and start reading; False (and logged) where the kernel's events are not available."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            sock.send(listen_message())
        except OSError as error:
            log.warning("no process events (%s): only running processes are attributed", error)
            return False
        sock.settimeout(_POLL_SECONDS)
        self._socket = sock
        self._thread = threading.Thread(target=self._read, name="forks", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()

    def parent(self, pid: int) -> int | None:
        with self._lock:
            return self._parents.get(pid)

    def _read(self) -> None:
        assert self._socket is not None
        while not self._stop.is_set():
            try:
                data = self._socket.recv(_RECEIVE_BYTES)
            except TimeoutError:
                continue
            except OSError as error:
                # ENOBUFS: the kernel dropped events we were too slow for; the next ones still come.
                log.debug("process events: %s", error)
                continue
            fork = parse_event(data)
            if fork is not None:
                self._remember(fork)

    def _remember(self, fork: Fork) -> None:
        with self._lock:
            self._parents[fork.child] = fork.parent
            self._parents.move_to_end(fork.child)
            if len(self._parents) > self._max_entries:
                self._parents.popitem(last=False)
