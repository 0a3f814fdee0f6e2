"""The controller runtime's pure parts: the work queue's guarantees and the lease timing rules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from api.kube import api_client
from reconciler.cli import build_manager
from reconciler.profiles_controller import PROFILE_WORKERS
from reconciler.runtime import LeaseTiming, WorkQueue, split_key
from spo.cli import build_parser
from tests.test_webhook_tls import UNREACHABLE_KUBECONFIG


def test_a_key_added_twice_is_queued_once() -> None:
    queue = WorkQueue()
    queue.add("ns/a")
    queue.add("ns/b")
    queue.add("ns/a")
    assert len(queue) == 2
    assert [queue.get(), queue.get()] == ["ns/a", "ns/b"]


def test_a_key_added_while_processing_waits_until_done() -> None:
    queue = WorkQueue()
    queue.add("k")
    assert queue.get() == "k"
    queue.add("k")
    assert len(queue) == 0, "handed out again while a worker still holds it"
    queue.done("k")
    assert len(queue) == 1
    assert queue.get() == "k"


def test_a_key_done_without_re_add_is_gone() -> None:
    queue = WorkQueue()
    queue.add("k")
    assert queue.get() == "k"
    queue.done("k")
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (20, 60.0)],
)
def test_backoff_doubles_per_failure_up_to_the_cap(failures: int, expected: float) -> None:
    queue = WorkQueue(base_delay=0.05, max_delay=60.0)
    delays = [queue.add_rate_limited("k") for _ in range(failures)]
    assert delays[-1] == pytest.approx(expected)


def test_forget_restarts_the_backoff_of_that_key_only() -> None:
    queue = WorkQueue(base_delay=1.0)
    for _ in range(3):
        queue.add_rate_limited("a")
        queue.add_rate_limited("b")
    queue.forget("a")
    assert queue.add_rate_limited("a") == 1.0
    assert queue.add_rate_limited("b") == 8.0


def test_a_delayed_key_arrives_and_merges_with_a_direct_add() -> None:
    queue = WorkQueue()
    queue.add_after("k", 0.01)
    queue.add("k")
    assert queue.get() == "k"
    queue.done("k")
    # The delayed copy comes due later and is queued once more: level-triggered, so harmless.
    assert queue.get() == "k"


def test_shut_down_wakes_a_waiting_worker() -> None:
    queue = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    queue.shut_down()
    worker.join(10)
    assert got == [None]
    queue.add("k")
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "valid"),
    [(15, 10, 2, True), (15, 15, 2, False), (15, 10, 10, False), (15, 20, 2, False), (15, 10, 0, False)],
)
def test_lease_timing_keeps_the_renew_deadline_inside_the_lease(
    duration: float, deadline: float, retry: float, valid: bool
) -> None:
    if valid:
        LeaseTiming(duration, deadline, retry)
    else:
        with pytest.raises(ValueError, match="renew_deadline"):
            LeaseTiming(duration, deadline, retry)


@pytest.mark.parametrize(("key", "parts"), [("ns/a", ("ns", "a")), ("/cluster", ("", "cluster"))])
def test_split_key(key: str, parts: tuple[str, str]) -> None:
    assert split_key(key) == parts


def test_the_client_keeps_a_connection_for_every_worker(tmp_path: Path) -> None:
    # With fewer, the workers' requests would open and close a TLS connection each time.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    command = ["reconciler", "--kubeconfig", str(kubeconfig), "--ca-file", str(tmp_path / "ca.crt")]
    args = build_parser().parse_args([*command, "--webhook-url", "https://127.0.0.1:1"])
    workers = sum(controller.workers for controller in build_manager(args).controllers)
    pool = api_client(str(kubeconfig)).rest_client.pool_manager.connection_pool_kw["maxsize"]
    assert workers > PROFILE_WORKERS
    assert pool >= workers
