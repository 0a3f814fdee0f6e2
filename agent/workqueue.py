"""A tiny controller work queue: de-duplicated keys, one worker per key at a time, retries with a
capped exponential backoff (controller-runtime's shape, without its rate limiters)."""

from __future__ import annotations

import collections
import heapq
import threading
import time
from collections.abc import Callable

_BASE_BACKOFF = 0.5
_MAX_BACKOFF = 30.0


class WorkQueue:
    def __init__(self) -> None:
        self._pending: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()  # re-added while being processed: queued again when done
        self._delayed: list[tuple[float, str]] = []
        self._failures: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stopped = False

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._active:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._pending.append(key)
                self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, key))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run_worker(self, handle: Callable[[str], None], on_error: Callable[[str, Exception], None]) -> None:
        """Process keys until stopped; a failing key is retried after a growing delay."""
        while True:
            key = self._next()
            if key is None:
                return
            try:
                handle(key)
            except Exception as error:
                on_error(key, error)
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                self.add_after(key, min(_BASE_BACKOFF * 2 ** (failures - 1), _MAX_BACKOFF))
            else:
                self._failures.pop(key, None)
            finally:
                self._done(key)

    def _next(self) -> str | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, key = heapq.heappop(self._delayed)
                    if key not in self._queued and key not in self._active:
                        self._queued.add(key)
                        self._pending.append(key)
                    elif key in self._active:
                        self._dirty.add(key)
                if self._pending:
                    key = self._pending.popleft()
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)
            return None

    def _done(self, key: str) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._queued.add(key)
                self._pending.append(key)
                self._cond.notify()
