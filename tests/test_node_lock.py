"""The machine-wide node lock, on a lock file of the test's own: one holder, held by inheriting
processes after `spo up` returns, waited for, and gone from disk once released."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from spo.node import NodeBusy, NodeLock, lock_holder


def test_second_holder_is_refused_with_the_first_ones_state_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "node.lock")
    first = NodeLock.acquire(Path("/state/one"), path=path)
    with pytest.raises(NodeBusy, match=r"state directory /state/one\); stop it first"):
        NodeLock.acquire(Path("/state/two"), path=path)
    first.release()
    assert not Path(path).exists()
    NodeLock.acquire(Path("/state/two"), path=path).release()


def test_processes_that_inherit_it_hold_it_after_hand_over(tmp_path: Path) -> None:
    path = str(tmp_path / "node.lock")
    lock = NodeLock.acquire(Path("/state/one"), path=path)
    child = subprocess.Popen(["sleep", "600"], pass_fds=(lock.fd,))
    try:
        lock.hand_over()
        with pytest.raises(NodeBusy):
            NodeLock.acquire(Path("/state/two"), path=path)
        assert lock_holder(path) == "/state/one"
    finally:
        child.kill()
        child.wait()
    NodeLock.acquire(Path("/state/two"), path=path).release()


def test_a_waiting_holder_gets_it_once_released(tmp_path: Path) -> None:
    path = str(tmp_path / "node.lock")
    first = NodeLock.acquire(Path("/state/one"), path=path)
    got: list[NodeLock] = []
    waiter = threading.Thread(target=lambda: got.append(NodeLock.acquire(Path("/state/two"), 60, path)))
    waiter.start()
    first.release()
    waiter.join(90)
    assert len(got) == 1
    assert lock_holder(path) == "/state/two"
    got[0].release()
