"""Waiting without bare sleeps: deadline polls, recorded events and captured log lines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from loguru import logger

__all__ = ["LogCapture", "Recorder", "capture_logs", "wait_until"]

T = TypeVar("T")

_POLL_INTERVAL = 0.005


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds.

    For state with no event to wait on (a socket's view, a SQLite file); anything that can
    notify uses ``Recorder`` instead.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: its wait() is the poll interval
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(_POLL_INTERVAL)


class Recorder:
    """A list appended to by other threads, and a condition to wait for what it holds."""

    def __init__(self) -> None:
        # Condition whose lock protects items.
        self._cond = threading.Condition()
        self.items: list[Any] = []

    def append(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.items)

    def wait_for(
        self, predicate: Callable[[list[Any]], T], timeout: float = 5.0, what: str = "items"
    ) -> T:
        """Wait until ``predicate(items)`` is truthy and return it; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self.items)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; got {self.items!r}"
                    )
                self._cond.wait(remaining)

    def holds_within(self, predicate: Callable[[list[Any]], Any], timeout: float) -> bool:
        """Whether ``predicate(items)`` becomes truthy within ``timeout`` (no failure if not)."""
        try:
            self.wait_for(predicate, timeout)
        except AssertionError:
            return False
        return True


class LogCapture(Recorder):
    """Loguru messages (``"LEVEL message"``) recorded while the capture is installed."""

    def sink(self, message: Any) -> None:
        record = message.record
        self.append(f"{record['level'].name} {record['message']}")

    def wait_for_text(self, text: str, timeout: float = 5.0) -> str:
        """Wait for a log line containing ``text`` and return it."""

        def found(lines: list[str]) -> str | None:
            return next((line for line in lines if text in line), None)

        return self.wait_for(found, timeout, f"a log line containing {text!r}")

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.snapshot() if text in line]


@contextmanager
def capture_logs(level: str = "DEBUG") -> Iterator[LogCapture]:
    """Record loguru messages of ``level`` and above for the duration of the block."""
    capture = LogCapture()
    handler_id = logger.add(capture.sink, level=level, format="{message}")
    try:
        yield capture
    finally:
        logger.remove(handler_id)
