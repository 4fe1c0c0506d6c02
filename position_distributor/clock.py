"""The per-node clock: timestamps that strictly increase even when the wall clock steps back."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock"]


class Clock:
    """Hands out strictly increasing nanosecond timestamps.

    ``next()`` returns ``max(now_ns(), last + 1)``; ``observe(ts)`` raises ``last`` to a
    timestamp learnt elsewhere (an own position echoed back by a peer, or the stored value at
    start), so that a node which lost its store never stamps a new update older than one it
    made before. Not thread-safe: the engine calls it under its book lock.
    """

    def __init__(self, last: int = 0, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._last = last
        self._now_ns = now_ns

    @property
    def last(self) -> int:
        """The greatest timestamp handed out or observed so far."""
        return self._last

    def next(self) -> int:
        """Return a timestamp greater than every one before it."""
        now = self._now_ns()
        ts = now if now > self._last else self._last + 1
        self._last = ts
        return ts

    def next_many(self, count: int) -> range:
        """Return ``count`` timestamps, increasing, each greater than every one before them:
        ``next()`` once, then the nanoseconds after it (a batch is stamped as of its start)."""
        if count <= 0:
            return range(0)
        first = self.next()
        self._last = first + count - 1
        return range(first, first + count)

    def observe(self, ts: int) -> None:
        """Never hand out a timestamp at or below ``ts`` from now on."""
        if ts > self._last:
            self._last = ts
