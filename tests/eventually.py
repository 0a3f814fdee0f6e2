"""Waiting for a condition in end-to-end tests: generous timeouts, never a timing assertion."""

import time
from collections.abc import Callable


def eventually(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)
