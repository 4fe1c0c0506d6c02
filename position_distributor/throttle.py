"""Throttle: a recurring log line said once per interval per key, with a count of the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Final

__all__ = ["Throttle"]

_FORGET: Final = 0.5  # the share of keys forgotten, oldest first, when there are too many


class Throttle:
    """Decides which of many alike events are said: the first of each key, then at most one
    per ``interval``, which also says how many were left unsaid since the last one.

    Thread-safe. At most ``max_keys`` keys are remembered (the oldest are forgotten, their
    unsaid counts with them), so a flood of distinct keys costs bounded memory.
    """

    def __init__(
        self,
        interval: float,
        *,
        max_keys: int = 1024,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._now = now
        # Mutex protecting _keys: key -> [when last said, events unsaid since].
        self._lock = threading.Lock()
        self._keys: dict[Hashable, list[float]] = {}

    def admit(self, key: Hashable) -> int | None:
        """None if this event is to be left unsaid (it is counted); else say it now, with the
        number of events of this key left unsaid since it was last said."""
        now = self._now()
        with self._lock:
            entry = self._keys.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return None
            unsaid = 0 if entry is None else int(entry[1])
            self._keys[key] = [now, 0]
            if len(self._keys) > self._max_keys:
                oldest = sorted(self._keys, key=lambda k: self._keys[k][0])
                for old in oldest[: int(len(oldest) * _FORGET)]:
                    del self._keys[old]
            return unsaid

    def unsaid(self) -> list[tuple[Hashable, int]]:
        """Every key with events left unsaid, and how many; the counts start again at 0."""
        with self._lock:
            found = [(key, int(entry[1])) for key, entry in self._keys.items() if entry[1]]
            for entry in self._keys.values():
                entry[1] = 0
        return found
