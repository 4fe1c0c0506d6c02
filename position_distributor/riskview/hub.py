"""Hub: the risk view's mirror of the book in the asyncio loop, and its live streams.

The engine publishes changes in its own threads; ``Feed`` (an engine subscriber) hands each
batch to the loop through a janus queue with ``put_nowait`` and returns. ``Hub.run`` (a task
in the loop) merges the batches into ``mirror`` with last-writer-wins, the book's own rule, so
a snapshot and changes overlapping it merge to the same view in any order; then it offers the
changes to every open ``Stream``. The hub never takes an engine lock in the loop: snapshots of
the book are read in a worker thread (``asyncio.to_thread``).

Bounds, so a slow reader never slows the node:

- the janus queue holds at most ``max_batches`` batches; beyond, the feed drops what comes
  and asks for a resync (a fresh snapshot of the book, merged in);
- each stream holds at most one pending change per key (coalesced) and at most
  ``max_pending`` keys; beyond, it drops them and is sent a fresh snapshot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import janus
from loguru import logger

from ..engine import Subscriber
from ..types import Position

__all__ = ["Feed", "Hub", "Stream"]

_RESYNC: Final = "resync"  # the feed dropped batches: read the book again
_END: Final = "end"  # the engine stopped

Key = tuple[str, str]


class Feed(Subscriber):
    """The engine's side of the bridge: never blocks, never grows beyond ``max_batches``."""

    every_change = False  # a burst of trades arrives conflated: the last position per symbol

    def __init__(self, queue: janus.Queue[Any], max_batches: int) -> None:
        self._queue = queue
        self._max = max_batches
        # Mutex protecting _queued and _overflowed.
        self._lock = threading.Lock()
        self._queued = 0
        self._overflowed = False

    def deliver(self, changes: list[Position]) -> None:
        with self._lock:
            if self._overflowed:
                return
            if self._queued >= self._max:
                self._overflowed = True
                self._put(_RESYNC)
                return
            self._queued += 1
        self._put(changes)

    def close(self) -> None:
        self._put(_END)

    def _put(self, item: object) -> None:
        # The hub closed its queue (stopping): nothing to deliver to.
        with contextlib.suppress(Exception):
            self._queue.sync_q.put_nowait(item)

    # Loop side.

    def taken(self) -> None:
        with self._lock:
            self._queued -= 1

    def resynced(self) -> None:
        """The hub is about to read the book again: deliver changes from now on."""
        with self._lock:
            self._overflowed = False


class Stream:
    """One open live stream: changes coalesced per key, waiting to be written."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending: dict[Key, Position] = {}
        self.needs_snapshot = True  # the first thing a stream sends is the whole view
        self.status_changed = True
        self.closing = False
        self.wake = asyncio.Event()
        self.resyncs = 0  # times it fell too far behind

    def offer(self, changes: list[Position]) -> None:
        if self.needs_snapshot or not changes:
            return
        pending = self.pending
        for p in changes:
            pending[(p.strategy, p.symbol)] = p
        if len(pending) > self.max_pending:
            pending.clear()
            self.needs_snapshot = True
            self.resyncs += 1
        self.wake.set()

    def resync(self) -> None:
        self.pending.clear()
        self.needs_snapshot = True
        self.wake.set()

    def take(self) -> tuple[bool, list[Position], bool]:
        """``(send a snapshot?, changes to send, status changed?)``, and start afresh."""
        snapshot, changes, status = (
            self.needs_snapshot,
            list(self.pending.values()),
            (self.status_changed),
        )
        self.needs_snapshot = self.status_changed = False
        self.pending = {}
        self.wake.clear()
        return snapshot, ([] if snapshot else changes), status

    def close(self) -> None:
        self.closing = True
        self.wake.set()


def newer(a: Position, b: Position) -> bool:
    """Whether ``a`` beats ``b`` under last-writer-wins: the greater (timestamp, net)."""
    return (a.timestamp, a.net_position) > (b.timestamp, b.net_position)


class Hub:
    """The mirror of the book, the streams, and the task that feeds them (loop thread only)."""

    def __init__(
        self,
        queue: janus.Queue[Any],
        feed: Feed,
        read_book: Callable[[], list[Position]],
        *,
        max_pending: int = 20_000,
        interval: float = 0.1,
    ) -> None:
        self.interval = interval
        self._queue = queue
        self._feed = feed
        self._read_book = read_book
        self.max_pending = max_pending
        self.mirror: dict[Key, Position] = {}
        self.version = 0  # bumped by every change to the mirror
        self.last_change: int | None = None  # the newest timestamp in the mirror (ns)
        self.changed_at: float | None = None  # time.time() the mirror last changed
        self.streams: set[Stream] = set()
        self.resyncs = 0
        self.ended = asyncio.Event()

    def load(self, positions: list[Position]) -> None:
        """Merge ``positions`` (a snapshot of the book) into the mirror."""
        self._merge(positions)

    async def run(self) -> None:
        """Apply the feed's batches until the engine stops.

        After each wake-up the hub takes everything queued, then holds off for ``interval``
        seconds: batches put meanwhile wait in the queue without waking the loop (janus
        notifies only a waiting reader), so a busy engine costs the loop at most
        1/``interval`` wake-ups a second, and a lone change after a quiet spell is applied at
        once.
        """
        queue = self._queue.async_q
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                if not await self._apply(items):
                    break
                await asyncio.sleep(self.interval)
        finally:
            self.ended.set()

    async def _apply(self, items: list[Any]) -> bool:
        """Apply a run of queued items; False once the engine has stopped."""
        changed: list[Position] = []
        for item in items:
            if item is _END:
                self._offer(changed)
                return False
            if item is _RESYNC:
                self.resyncs += 1
                logger.warning("risk view fell behind the engine: reading the book again")
                self._feed.resynced()
                positions = await asyncio.to_thread(self._read_book)
                self._merge(positions)
                for stream in self.streams:
                    stream.resync()
                changed = []
                continue
            self._feed.taken()
            changed += self._merge(item)
        self._offer(changed)
        return True

    def _offer(self, changed: list[Position]) -> None:
        if changed:
            for stream in self.streams:
                stream.offer(changed)

    def open_stream(self) -> Stream:
        stream = Stream(self.max_pending)
        self.streams.add(stream)
        return stream

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def status_changed(self) -> None:
        for stream in self.streams:
            stream.status_changed = True
            stream.wake.set()

    def close_streams(self) -> None:
        for stream in list(self.streams):
            stream.close()

    def positions(self, strategy: str | None = None, symbol: str | None = None) -> list[Position]:
        """The mirror's positions, sorted by strategy then symbol, optionally filtered."""
        return [
            p
            for _, p in sorted(self.mirror.items())
            if (strategy is None or p.strategy == strategy)
            and (symbol is None or p.symbol == symbol)
        ]

    def exposure(self) -> dict[str, float]:
        """Net position per symbol over every strategy, sorted by symbol."""
        totals: dict[str, float] = {}
        for p in self.mirror.values():
            totals[p.symbol] = totals.get(p.symbol, 0.0) + p.net_position
        return {symbol: totals[symbol] + 0.0 for symbol in sorted(totals)}

    def strategies(self) -> set[str]:
        return {strategy for strategy, _ in self.mirror}

    def _merge(self, positions: list[Position]) -> list[Position]:
        mirror = self.mirror
        changed = []
        last = self.last_change or 0
        for p in positions:
            key = (p.strategy, p.symbol)
            current = mirror.get(key)
            if current is None or newer(p, current):
                mirror[key] = p
                changed.append(p)
                if p.timestamp > last:
                    last = p.timestamp
        if changed:
            self.version += 1
            self.last_change = last
            self.changed_at = time.time()
        return changed
