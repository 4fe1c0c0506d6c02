"""Hub: the risk view's mirror of the book in the asyncio loop, and its live streams.

The engine publishes changes in its own threads; ``Feed`` (an engine subscriber) keeps them,
coalesced per key, until the loop takes them, and wakes the loop at most once per take: the
first change after a take puts one ``_READY`` on a janus queue (``put_nowait``, never blocks);
the changes after it only replace an entry of a dictionary. ``Hub.run`` (a task in the loop)
takes what the feed holds, merges it into ``mirror`` with last-writer-wins, the book's own rule,
so a snapshot and changes overlapping it merge to the same view in any order; then it offers
the changes to every open ``Stream`` and holds off ``interval`` seconds. So a busy engine costs
the loop one wake-up per ``interval`` and a dictionary store per change, whatever the rate.
While no live stream is open the feed is not armed and wakes nobody: the changes wait in it
until a reader of the mirror (an API request, a scrape, a stream opening) calls ``catch_up``.
The hub never takes an engine lock in the loop.

Bounds, so a slow reader never slows the node:

- the feed holds at most one position per key of the book (it is a dictionary), and the janus
  queue only tokens: a ``_READY`` per take at most, and the final ``_END``;
- each stream holds at most one pending change per key (coalesced) and at most
  ``max_pending`` keys; beyond, it drops them and is sent a fresh snapshot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, Final

import janus

from ..engine import Subscriber
from ..types import Position

__all__ = ["Feed", "Hub", "Stream"]

_READY: Final = "ready"  # the feed holds changes: take them
_END: Final = "end"  # the engine stopped

Key = tuple[str, str]


class Feed(Subscriber):
    """The engine's side of the bridge: never blocks, holds at most one position per key."""

    every_change = False  # a burst of trades arrives conflated: the last position per symbol

    def __init__(self, queue: janus.Queue[Any]) -> None:
        self._queue = queue
        # Mutex protecting _pending, _signalled and _armed.
        self._lock = threading.Lock()
        # The changes not taken yet, the newest per key. The engine publishes under its
        # publish lock, and only changes (each beats the book), so a later delivery of a key
        # is always newer under last-writer-wins: a plain store keeps the newest.
        self._pending: dict[Key, Position] = {}
        self._signalled = False  # a _READY is queued and not taken yet
        self._armed = False  # a live stream is open: wake the hub for each change

    def deliver(self, changes: list[Position]) -> None:
        with self._lock:
            pending = self._pending
            for p in changes:
                pending[(p.strategy, p.symbol)] = p
            if self._signalled or not self._armed:
                return
            self._signalled = True
        self._put(_READY)

    def close(self) -> None:
        self._put(_END)

    def _put(self, item: object) -> None:
        # The hub closed its queue (stopping): nothing to deliver to.
        with contextlib.suppress(Exception):
            self._queue.sync_q.put_nowait(item)

    # Loop side.

    def arm(self, armed: bool) -> None:
        """Wake the hub for changes as they come (a live stream is open), or not (nobody
        waits: changes wait in the feed until a reader takes them)."""
        with self._lock:
            self._armed = armed
            if not armed or self._signalled or not self._pending:
                return
            self._signalled = True
        self._put(_READY)

    @property
    def armed(self) -> bool:
        return self._armed

    def take(self) -> list[Position]:
        """The changes delivered since the last take (the newest per key); the next delivery
        signals again."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._signalled = False
        return list(pending.values())


class Stream:
    """One open live stream: changes coalesced per key, waiting to be written."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending: dict[Key, Position] = {}
        self.needs_snapshot = True  # the first thing a stream sends is the whole view
        self.status_changed = True
        self.ping_due = False
        self.closing = False
        self.wake = asyncio.Event()
        self.last_sent = time.monotonic()  # when it last wrote (monotonic), for the pings
        self.resyncs = 0  # times it fell too far behind

    @property
    def due(self) -> bool:
        """Whether there is something to write."""
        return bool(self.needs_snapshot or self.pending or self.status_changed or self.ping_due)

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

    def ping(self) -> None:
        self.ping_due = True
        self.wake.set()

    def take(self) -> tuple[bool, list[Position], bool]:
        """``(send a snapshot?, changes to send, status changed?)``, and start afresh."""
        snapshot, changes, status = (
            self.needs_snapshot,
            list(self.pending.values()),
            (self.status_changed),
        )
        self.needs_snapshot = self.status_changed = self.ping_due = False
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
        *,
        max_pending: int = 20_000,
        interval: float = 0.1,
    ) -> None:
        self.interval = interval
        self._queue = queue
        self._feed = feed
        self.max_pending = max_pending
        self.mirror: dict[Key, Position] = {}
        self.version = 0  # bumped by every change to the mirror
        self.last_change: int | None = None  # the newest timestamp in the mirror (ns)
        self.changed_at: float | None = None  # time.time() the mirror last changed
        self.streams: set[Stream] = set()
        self.wakeups = 0  # takes from the feed (for the tests and the benchmark)
        self.ended = asyncio.Event()

    def load(self, positions: list[Position]) -> None:
        """Merge ``positions`` (a snapshot of the book) into the mirror."""
        self._merge(positions)

    async def run(self) -> None:
        """Take the feed's changes until the engine stops.

        After each take the hub holds off for ``interval`` seconds: changes delivered meanwhile
        wait in the feed, and their ``_READY`` in the queue, without waking the loop (janus
        notifies only a waiting reader), so a busy engine costs the loop at most
        1/``interval`` wake-ups a second, and a lone change after a quiet spell is applied at
        once.
        """
        queue = self._queue.async_q
        feed = self._feed
        try:
            while True:
                item = await queue.get()
                self.wakeups += 1
                changed = self._merge(feed.take())
                if changed:
                    for stream in self.streams:
                        stream.offer(changed)
                if item is _END:
                    break
                await asyncio.sleep(self.interval)
        finally:
            self.ended.set()

    def catch_up(self) -> None:
        """Bring the mirror up to the book before it is read. With no live stream open, the
        feed wakes nobody: the changes wait in it (one per key) until a reader comes; with a
        stream open, the hub keeps the mirror within ``interval`` of the book by itself."""
        if not self._feed.armed:
            self._merge(self._feed.take())

    def open_stream(self) -> Stream:
        self.catch_up()  # the stream's snapshot is taken from an up-to-date mirror
        stream = Stream(self.max_pending)
        self.streams.add(stream)
        self._feed.arm(True)
        return stream

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._feed.arm(False)

    def status_changed(self) -> None:
        for stream in self.streams:
            stream.status_changed = True
            stream.wake.set()

    def ping_idle(self, idle: float) -> None:
        """Have every stream that has written nothing for ``idle`` seconds send a ping."""
        since = time.monotonic() - idle
        for stream in self.streams:
            if stream.last_sent <= since:
                stream.ping()

    def close_streams(self) -> None:
        for stream in list(self.streams):
            stream.close()

    def positions(self, strategy: str | None = None, symbol: str | None = None) -> list[Position]:
        """The mirror's positions, sorted by strategy then symbol, optionally filtered."""
        self.catch_up()
        return [
            p
            for _, p in sorted(self.mirror.items())
            if (strategy is None or p.strategy == strategy)
            and (symbol is None or p.symbol == symbol)
        ]

    def exposure(self) -> dict[str, float]:
        """Net position per symbol over every strategy, sorted by symbol."""
        self.catch_up()
        totals: dict[str, float] = {}
        for p in self.mirror.values():
            totals[p.symbol] = totals.get(p.symbol, 0.0) + p.net_position
        return {symbol: totals[symbol] + 0.0 for symbol in sorted(totals)}

    def strategies(self) -> set[str]:
        self.catch_up()
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
