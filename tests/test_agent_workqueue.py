"""The agent's work queue: keys are de-duplicated, a key is never processed twice at once, a key added
while it is processed is processed again, and a failing key is retried."""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.workqueue import WorkQueue


def _drain(queue: WorkQueue, handle: Callable[[str], None]) -> threading.Thread:
    def on_error(_key: str, _error: Exception) -> None:
        return None

    thread = threading.Thread(target=queue.run_worker, args=(handle, on_error), daemon=True)
    thread.start()
    return thread


def test_keys_added_while_queued_are_processed_once() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    seen: list[str] = []
    done = threading.Event()

    def handle(key: str) -> None:
        seen.append(key)
        if len(seen) == 2:
            done.set()

    thread = _drain(queue, handle)
    assert done.wait(10)
    queue.stop()
    thread.join(10)
    assert seen == ["a", "b"]


def test_a_key_added_during_processing_runs_again_after() -> None:
    queue = WorkQueue()
    queue.add("a")
    inside, release, second = threading.Event(), threading.Event(), threading.Event()
    calls: list[str] = []

    def handle(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            inside.set()
            release.wait(10)
        else:
            second.set()

    thread = _drain(queue, handle)
    assert inside.wait(10)
    queue.add("a")  # while "a" is being processed: not concurrently, but again afterwards
    release.set()
    assert second.wait(10)
    queue.stop()
    thread.join(10)
    assert calls == ["a", "a"]


def test_a_failing_key_is_retried_until_it_succeeds() -> None:
    queue = WorkQueue()
    queue.add("flaky")
    attempts: list[int] = []
    succeeded = threading.Event()

    def handle(_key: str) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        succeeded.set()

    thread = _drain(queue, handle)
    assert succeeded.wait(30)
    queue.stop()
    thread.join(10)
    assert len(attempts) == 3
