"""Consumer: a queue and the thread that applies what is put on it, in order, in batches.

The engine has two, as the original had: one for trades, one for positions from peers. The
thread blocks on the queue (no busy wait), takes everything queued (a batch), and applies it
with one call, so a burst costs one transaction, one send and one write, not one per item.

One refinement for latency: when nothing is queued or being applied, ``put`` applies its item
at once in the calling thread, under the same lock the thread applies under, instead of
waking the thread (a hand-off costs tens of microseconds); an item above ``max_inline`` (a
burst of trades) goes to the thread, so that the producer's next read overlaps with its
commit. Items put while anything is pending queue up behind it, so the order of application
is the order of ``put`` either way.
Never in the main thread: a signal there (Ctrl-C) raises between any two bytecodes, and an
apply must not stop half-way.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Final, Generic, TypeVar

from loguru import logger

__all__ = ["Consumer"]

T = TypeVar("T")

_STOP: Final = object()  # the sentinel the thread reads from its own queue to end
_MAIN_IDENT: Final = threading.main_thread().ident
_get_ident: Final = threading.get_ident


class Consumer(Generic[T]):
    """Applies items in the order they are put: inline when idle, else by its thread."""

    def __init__(
        self,
        name: str,
        apply: Callable[[list[T]], None],
        *,
        size: Callable[[T], int] | None = None,
        maxsize: int = 0,
        max_batch: int = 8192,
        max_inline: int | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._apply = apply
        self._size = size
        self._max_batch = max_batch
        # Items larger than this (by ``size``) always go to the thread, even when it is idle:
        # the producer then reads and parses its next burst while the thread applies this one
        # (SQLite runs without the GIL), where applying inline would do one after the other.
        self._max_inline = max_inline
        self._on_error = on_error
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        # Mutex held by whoever applies (the thread, or a producer inline): one at a time.
        self._applying = threading.Lock()
        # Mutex protecting _pending, _inline and _closed.
        self._lock = threading.Lock()
        self._pending = 0  # items put and not yet applied (queued, or being applied)
        self._inline = False  # whether put() may apply in the caller's thread when idle
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Items put and not yet applied."""
        with self._lock:
            return self._pending

    def start(self, before: Callable[[], bool] | None = None) -> None:
        """Start the thread. It first runs ``before`` (the engine's recovery wait), holding
        items back until it returns; if it returns False, the thread ends at once."""
        self._thread = threading.Thread(
            target=self._consume, args=(before,), name=self.name, daemon=True
        )
        self._thread.start()

    def put(self, item: T) -> bool:
        """Apply ``item`` after everything put before it; False if closed (not applied).

        Blocks while the queue is full (backpressure on the producer).
        """
        with self._lock:
            if self._closed:
                return False
            self._pending += 1
            inline = (
                self._inline
                and self._pending == 1
                and (
                    self._max_inline is None
                    or self._size is None
                    or self._size(item) <= self._max_inline
                )
                and _get_ident() != _MAIN_IDENT
                and self._applying.acquire(False)
            )
        if not inline:
            self._queue.put(item)
            return True
        try:
            self._apply([item])
        except Exception:
            self._fail()
        finally:
            with self._lock:
                self._pending -= 1
            self._applying.release()
        return True

    def close(self) -> None:
        """Refuse new items, let the thread apply what is queued, and wait for it to end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()
        # A producer blocked on a full queue is released by emptying it (its item is dropped:
        # the consumer is closed); it sees _closed on its next put.
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _consume(self, before: Callable[[], bool] | None) -> None:
        try:
            if before is not None and not before():
                return
            with self._lock:
                self._inline = True
            for batch in self._batches():
                with self._applying:
                    self._run(batch)
                with self._lock:
                    self._pending -= len(batch)
        except Exception:  # a safety net: this branch should never run
            self._fail()

    def _run(self, batch: list[T]) -> None:
        try:
            self._apply(batch)
        except Exception:
            self._fail()

    def _fail(self) -> None:
        logger.opt(exception=True).critical("{} failed", self.name)
        if self._on_error is not None:
            self._on_error(self.name)

    def _batches(self) -> Iterator[list[T]]:
        """Block for one item, then take whatever else is queued, up to ``max_batch`` (by
        ``size`` of each item); end at the sentinel."""
        get, get_nowait, size = self._queue.get, self._queue.get_nowait, self._size
        while True:
            item = get()
            if item is _STOP:
                return
            batch: list[T] = [item]  # type: ignore[list-item]
            total = 1 if size is None else size(item)  # type: ignore[arg-type]
            with contextlib.suppress(queue.Empty):
                while total < self._max_batch:
                    item = get_nowait()
                    if item is _STOP:
                        yield batch
                        return
                    batch.append(item)  # type: ignore[arg-type]
                    total += 1 if size is None else size(item)  # type: ignore[arg-type]
            yield batch
