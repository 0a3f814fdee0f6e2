"""Process lineage from the kernel's proc connector: the message format (pure) and, on this machine's
kernel, that a shell's short-lived child is announced with the shell as its parent; and attribution of a
process that is gone through its running parent."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from agent.attribution import ContainerIds
from agent.lineage import PROC_EVENT_FORK, Fork, ForkWatch, listen_message, parse_event
from tests.test_attribution import CRIO_ID, FakeProc, _cgroup

PROC_EVENT_EXEC = 0x00000002


def message(what: int, *fields: int) -> bytes:
    """A proc connector message as the kernel sends it: netlink header, connector header, event."""
    event = struct.pack("=IIQ", what, 0, 123456789) + struct.pack(f"={len(fields)}I", *fields)
    connector = struct.pack("=IIIIHH", 1, 1, 7, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(connector), 3, 0, 7, 0) + connector


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (message(PROC_EVENT_FORK, 100, 100, 200, 200), Fork(100, 200)),
        # A thread of process 100 (forked by its thread 101): no new process.
        (message(PROC_EVENT_FORK, 101, 100, 201, 100), None),
        # A thread forking a process: the parent is the thread's process.
        (message(PROC_EVENT_FORK, 101, 100, 202, 202), Fork(100, 202)),
        (message(PROC_EVENT_EXEC, 200, 200, 0, 0), None),
        (message(PROC_EVENT_FORK, 100, 100)[:-4], None),
        (b"", None),
    ],
    ids=["process", "thread", "from a thread", "exec", "short", "empty"],
)
def test_parse_event(data: bytes, expected: Fork | None) -> None:
    assert parse_event(data) == expected


def test_the_listen_request_is_one_netlink_message() -> None:
    request = listen_message()
    length, kind = struct.unpack_from("=IH", request)
    assert length == len(request) == 16 + 20 + 4 and kind == 3
    assert struct.unpack_from("=II", request, 16) == (1, 1)
    assert struct.unpack_from("=I", request, 36) == (1,)


def test_the_kernel_announces_a_shells_child() -> None:
    forks = ForkWatch()
    if not forks.start():
        pytest.skip("the proc connector is not available here (needs root in the host's network namespace)")
    try:
        shell = subprocess.run(
            ["sh", "-c", "sleep 0 & echo $! $$; wait"], capture_output=True, text=True, check=True
        )
        child, parent = map(int, shell.stdout.split())
        deadline = time.monotonic() + 30
        while forks.parent(child) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert forks.parent(child) == parent
    finally:
        forks.stop()


def test_a_gone_process_is_attributed_through_its_running_parent(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.process(10, 500, _cgroup(CRIO_ID))  # the container's shell
    proc.process(30, 500, "0::/system.slice/containerd.service\n")  # runc, on the host
    parents = {11: 10, 12: 11, 31: 30}
    ids = ContainerIds(tmp_path, parent_of=parents.get)
    assert ids.lookup_process(11) == (CRIO_ID, None)  # the shell's child, gone
    assert ids.lookup_process(12) == (CRIO_ID, None)  # and its gone grandchild
    assert ids.lookup_process(31) is None  # a child of a host process is not a container's
    assert ids.lookup_process(99) is None  # no parent known
    assert ContainerIds(tmp_path).lookup_process(11) is None  # without lineage
