"""Engine: the book, its two queues and their consumer threads, the sync, the recovery window.

Two consumers, as in the original (see ``consumer.py``): ``consume-trades`` applies own
trades, ``consume-positions`` applies positions received from peers. Each blocks on its queue,
drains whatever is queued, applies it under the book lock, then publishes the changes: one
store transaction for the batch, one broadcast, one write of rows. (When a consumer is idle,
the thread that puts an item applies it itself, in the same order.) Each consumer holds the
publish lock from before it applies until it has published, so changes are stored, sent and
printed in the order they were applied; the book lock is held only while the book changes,
so readers never wait for the disk, and nothing calls out while holding it.

Storage failures refuse, never guess: when the store cannot commit a batch (a full disk, a
read-only or removed data dir), the batch's changes are taken back out of the book (which
stays equal to the store), its trades are refused (an ``error:`` line, their futures fail
with ``TradeNotStored``), and the next batch tries again: the node trades again by itself
once the fault is fixed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from itertools import repeat
from typing import IO, Any, Final, NamedTuple, cast

from loguru import logger

from .book import Book, Refused
from .clock import Clock
from .consumer import Consumer
from .dispatcher import Event, EventDispatcher
from .links import Link, LinkTransport
from .stats import Stats
from .store import JournalEntry, SnapshotInfo, Store, StoreError, TradeRow
from .types import Position, format_rows
from .wire import Digest, Repair, RepairRequest, SyncDone

__all__ = [
    "DEFAULT_MAX_SYMBOLS",
    "Engine",
    "Output",
    "Subscriber",
    "TradeError",
    "TradeNotStored",
]

DEFAULT_MAX_SYMBOLS: Final = 200_000  # per strategy: bounds what a peer can make us hold
_MAX_BATCH: Final = 8192  # messages per batch: bounds a transaction and a write
# Trades per batch: a busy trade consumer takes at most this many of the reads queued (a
# burst's slices stay slices, so the peers apply one while the next is committed).
_MAX_TRADE_BATCH: Final = 4096
_MAX_QUEUED: Final = 64  # items waiting in each consumer's queue (a read of stdin or a socket)
_STORE_ERROR_EVERY: Final = 60.0  # seconds between ERROR lines while the store keeps failing
# Symbols hashed into the digests at a time by the anti-entropy thread (about 8 ms of the
# book lock; see Engine._hash_in_slices).
_HASH_SLICE: Final = 8192
_REFUSED_SHOWN: Final = 5  # trades named in the error line of a refused batch
# An own position sent back stamped further ahead of this machine's clock than this was
# stamped by a clock that ran ahead (in this node's past), not by a live node: see _learn_own.
_MAX_CLOCK_SKEW_NS: Final = 60 * 10**9
_CLOSED: Final = object()  # put on the positions queue after a connection's last message
_POSITION_TYPE: Final = {Position}
_STRATEGY_OF: Final = operator.itemgetter(0)
_SYMBOL_OF: Final = operator.itemgetter(1)
_NET_OF: Final = operator.itemgetter(2)
_TIMESTAMP_OF: Final = operator.itemgetter(3)
# Of a trade (_Trade, or the console's tuple of the same shape).
_SYMBOL_OF_TRADE: Final = operator.itemgetter(0)
_QUANTITY_OF: Final = operator.itemgetter(1)
_FUTURE_OF: Final = operator.itemgetter(2)
_TRADE_ID_OF: Final = operator.itemgetter(3)
_SHOWN: Final = 5  # repaired positions named in the log line of a repair
# What to do about an own position a peer sent back that this node did not write.
_NOT_OURS: Final = (
    "if a second node runs this strategy's name (an ERROR 'two nodes claim' on a peer),"
    " stop that node and do not use --recover here; if this store was restored from an older"
    " copy, restart with --recover"
)


class TradeError(Exception):
    """A trade that cannot be applied: its result would not be a finite number, or its symbol
    would take the strategy past the symbol cap."""


class TradeNotStored(TradeError):
    """A trade refused because the store could not commit it (a full disk, a read-only or
    removed data dir): nothing of it was applied; the message gives the store's cause."""


class Output:
    """A text stream shared by threads: each ``write`` is written and flushed whole."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        # Mutex serializing writes, so rows from two threads never interleave.
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Write and flush ``text``; if the stream fails (a closed pipe), say so once and stop
        writing: rows are a view, and a reader that went away must not stop trading."""
        if self._stream is None or not text:
            return
        with self._lock:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._stream = None
                logger.error("cannot write to the output ({}): rows are no longer printed", exc)


class Subscriber:
    """Receives every batch of applied changes; ``deliver`` must not block.

    With ``every_change`` False, a batch of own trades is delivered conflated: the last
    position of each symbol in the batch (what the store and the peers get), enough for a
    view of the book and much cheaper for a burst; otherwise one position per trade.
    """

    every_change = True

    def deliver(self, changes: list[Position]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        """The engine stopped: no change will be delivered any more."""
        raise NotImplementedError


@dataclasses.dataclass(slots=True)
class _Publication:
    """What one applied batch publishes: see ``Engine._publish``."""

    changes: list[Position]  # to the subscribers; printed, unless rows are given
    broadcast: list[Position] = dataclasses.field(default_factory=list)  # own: to every peer
    stored: list[Position] | None = None  # what the store gets, if not the changes
    rows: str | None = None  # the rows to print, if not those of the changes
    relayed: list[tuple[Position, Link]] = dataclasses.field(default_factory=list)
    journal: list[JournalEntry] = dataclasses.field(default_factory=list)
    bases: list[Position] = dataclasses.field(default_factory=list)
    trade_ids: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    # Own trades applied at ``applied_at``: the store journals them and derives the own
    # positions from them (``stored`` then goes to the subscribers only).
    trades: list[TradeRow] = dataclasses.field(default_factory=list)
    applied_at: int = 0


class _Repairing:
    """A repair under way on one connection: what its owner sent so far."""

    __slots__ = ("kept", "newest", "symbols")

    def __init__(self) -> None:
        self.symbols: set[str] = set()
        self.newest = 0  # the greatest timestamp among them
        self.kept: list[Position] = []  # our copies newer than the owner's, kept


class _Trade(NamedTuple):
    symbol: str  # "" for a barrier (see Engine.barrier)
    quantity: float
    future: Future[Any] | None
    trade_id: str | None = None  # makes the trade's intake exactly-once (see _replayed)


class Engine:
    """The book of one node running strategy ``name``, and the threads that change it."""

    def __init__(
        self,
        name: str,
        dispatcher: EventDispatcher,
        links: LinkTransport,
        store: Store,
        *,
        out: Output,
        err: Output | None = None,
        recovery_timeout: float = 5.0,
        recovery_grace: float = 0.5,
        relay: bool = False,
        max_queue: int = _MAX_QUEUED,
        max_symbols: int = DEFAULT_MAX_SYMBOLS,
        on_fatal: Callable[[str], None] | None = None,
        digest_interval: float = 2.0,
    ) -> None:
        self.name = name
        self._on_fatal = on_fatal
        self._max_symbols = max_symbols
        self._capped: set[str] = set()  # strategies whose extra symbols were dropped (logged)
        self.relay = relay
        self.sent = 0  # positions queued to peers (each copy counts), under the publish lock
        self.stats = Stats()  # counters for /metrics, updated under the publish lock
        self._links = links
        self._store = store
        self._out = out
        self._err = err or Output(None)
        # Failing commits in a row, and when the last ERROR line said so (publish lock).
        self._store_failures = 0
        self._store_error_at = -_STORE_ERROR_EVERY
        positions, last_ts = store.load()
        # Mutex protecting the book and the clock.
        self._book_lock = threading.Lock()
        self._book = Book(positions)
        self._clock = Clock(last_ts)
        self._check_journal()
        # Own positions from before this store (see _learn_own): symbol -> base timestamp.
        # Read and written under both the book lock and the publish lock.
        self._bases = store.bases()
        self._lineage = store.lineage  # see Store.lineage and _learn_own
        created = store.created_at_ns
        self._created_at_ns = math.inf if created is None else created
        # Mutex ordering the applies and what follows each: store commit, broadcast, rows,
        # subscribers; protects _subscribers, _bases and the store. Lock order: publish, then
        # book (see _apply_trades, _apply_positions).
        self._publish_lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._every_change = False  # whether a subscriber wants every change (publish lock)
        # Lists of trades (a console burst of up to one 32 KiB read, or one API trade);
        # bounded, so typing faster than trades apply blocks the console (backpressure)
        # instead of growing memory: at most 64 reads are waiting.
        # Each item also carries the time.monotonic() of its submission (for /metrics).
        self._trades: Consumer[tuple[float, list[_Trade]]] = Consumer(
            "consume-trades",
            self._apply_trades,
            size=_trade_count,
            maxsize=max_queue,
            max_batch=_MAX_TRADE_BATCH,
            # A burst is applied by the thread while the console reads the next one.
            max_inline=256,
            on_error=self._fail,
        )
        # One item per read of a peer's socket: 64 reads of up to 64 KiB in waiting at most.
        self._positions: Consumer[tuple[Link, list[Any]]] = Consumer(
            "consume-positions",
            self._apply_positions,
            size=_message_count,
            maxsize=_MAX_QUEUED,
            max_batch=_MAX_BATCH,
            on_error=self._fail,
        )
        self._stopping = False  # the trade consumer is to apply what is queued, then end
        # Recovery window (a store that has never had its own positions back).
        self.recovering = store.needs_recovery
        self._recovery_timeout = recovery_timeout
        self._recovery_grace = recovery_grace
        # Condition signalling a peer's completed sync; its lock protects _synced.
        self._synced_cond = threading.Condition()
        self._synced: set[str] = set()
        self._first_sync_at: float | None = None
        # Anti-entropy: every digest_interval, the digest of our own positions goes to every
        # peer that understands it, after every change it covers (see _send_digest).
        self._digest_interval = digest_interval
        self._digest_stop = threading.Event()
        self._digest_thread = threading.Thread(
            target=self._send_digests, name="anti-entropy", daemon=True
        )
        # Strategies whose last digest was left uncompared (see _defer_digest).
        self._deferred_digests: set[str] = set()
        # Trades and peers' changes committed as of the last tick of that thread: a tick
        # that finds no more folds the store (see _fold_when_quiet).
        self._activity_at_tick = (-1, -1)
        # Read and written by the positions consumer only: the repairs under way (connection
        # -> the symbols its owner sent so far), and when each strategy was last asked for one.
        self._repairs: dict[Link, _Repairing] = {}
        self._asked: dict[str, float] = {}
        self._repaired: set[str] = set()  # strategies repaired since we last asked
        dispatcher.subscribe(Event.ACCEPTED, self._send_sync)
        dispatcher.subscribe(Event.CONNECTED, self._send_sync)
        dispatcher.subscribe(Event.MESSAGE, self._on_message)
        dispatcher.subscribe(Event.IDENTIFIED, self._on_identified)
        dispatcher.subscribe(Event.CLOSED, self._on_closed)

    # Lifecycle.

    def start(self) -> None:
        """Start the two consumer threads (the trade consumer first waits for recovery)."""
        self._trades.start(before=self._await_recovery if self.recovering else None)
        self._positions.start()
        if self._digest_interval > 0:
            self._digest_thread.start()

    def _fail(self, what: str) -> None:
        """A consumer failed (a bug): a node that cannot apply changes must not pretend to run."""
        if self._on_fatal is not None:
            self._on_fatal(f"{what} failed")

    def stop_trades(self) -> None:
        """Apply the trades already queued, then stop the trade consumer; refuse new trades.

        While recovering, queued trades are applied once recovery ends (at most the
        recovery timeout); with none queued the consumer stops at once.
        """
        with self._synced_cond:
            self._stopping = True
            self._synced_cond.notify_all()
        self._trades.close()

    def stop(self) -> None:
        """Stop both consumers (after applying what is queued). Idempotent."""
        self.stop_trades()
        self._digest_stop.set()
        if self._digest_thread.ident is not None:
            self._digest_thread.join()
        self._positions.close()
        with self._publish_lock:
            subscribers, self._subscribers = self._subscribers, ()
        for subscriber in subscribers:
            subscriber.close()

    # What the node is asked for.

    def submit(
        self,
        symbol: str,
        quantity: float,
        future: Future[Any] | None = None,
        trade_id: str | None = None,
    ) -> bool:
        """Queue a validated trade; False if the trade consumer is stopping (not queued).

        Blocks while the trade queue is full (backpressure).
        """
        return self._trades.put((time.monotonic(), [_Trade(symbol, quantity, future, trade_id)]))

    def submit_many(self, trades: list[tuple[str, float, None, str | None]]) -> bool:
        """Queue validated ``(symbol, quantity, None, trade_id)`` trades at once (the
        console's burst path, which builds them so); False if stopping."""
        # The same shape as _Trade.
        return self._trades.put((time.monotonic(), trades))  # type: ignore[arg-type]

    def barrier(self) -> Future[None]:
        """A future done once every trade submitted before it is applied and published."""
        future: Future[None] = Future()
        if not self.submit("", 0.0, future):
            future.set_result(None)  # stopping: everything queued applies before the stop
        return future

    def positions(self) -> list[Position]:
        """Every position held, sorted by strategy then symbol."""
        with self._book_lock:
            return self._book.positions()

    def exposure(self) -> dict[str, float]:
        """Net position per symbol over every strategy."""
        with self._book_lock:
            return self._book.exposure()

    def history(self, symbol: str, limit: int = 20) -> list[JournalEntry]:
        """The last ``limit`` own trades in ``symbol``, oldest first, from the journal."""
        with self._publish_lock:
            return self._store.history(symbol, limit)

    def snapshot(self, label: str) -> SnapshotInfo:
        """Copy the whole view into the store's snapshots, atomically.

        Taken under the publish lock, so it holds exactly the changes published so far.
        """
        with self._publish_lock:
            return self._store.snapshot(label, time.time_ns())

    def add_subscriber(self, subscriber: Subscriber) -> None:
        with self._publish_lock:
            self._subscribers = (*self._subscribers, subscriber)
            self._every_change = any(s.every_change for s in self._subscribers)

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        with self._publish_lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
            self._every_change = any(s.every_change for s in self._subscribers)

    # Peer event handlers (run in Peer threads).

    def _send_sync(self, link: Link) -> None:
        """Send a new link our own positions, then the echo of its own, then SyncDone.

        The link is already live when this runs, so an update applied after the snapshot
        below is published to it as well: nothing falls between the two.
        """
        other = link.name
        assert other is not None
        relayed: list[Position] = []
        with self._book_lock:
            own = self._book.of_strategy(self.name)
            if self.relay and link.relays:
                relayed = self._book.not_of(self.name, other)
            echo = self._book.of_strategy(other)
        link.send_sync(own, relayed, echo)

    def _on_identified(self, address: str, strategy: str) -> None:
        with self._synced_cond:
            self._synced_cond.notify_all()  # the recovery wait re-checks its configured peers

    def _on_message(self, link: Link, messages: list[Any]) -> None:
        self._positions.put((link, messages))  # dropped once the node is stopping

    def _on_closed(self, link: Link, reason: str) -> None:
        self._positions.put((link, [_CLOSED]))  # forget a repair left unfinished

    # Consumer threads.

    def _apply_trades(self, batches: list[tuple[float, list[_Trade]]]) -> None:
        """Apply a batch of own trades: one transaction, one broadcast, one write of rows.

        The book applies them (``Book.trade_many``, stamped by the clock). Every trade gets
        its journal entry and its row; the store and the peers get the last position of each
        symbol in the batch (the ones before it are already superseded). A trade whose ID
        was applied before is not applied again (see ``_replayed``). If the store cannot
        commit, every trade of the batch is refused and the book is put back as it was (see
        ``_refuse_batch``).
        """
        if len(batches) == 1:
            arrived, only = batches[0]
            if len(only) == 1:
                trade = only[0]
                if trade[0] and trade[2] is None and trade[3] is None:
                    self._apply_lone_trade(arrived, trade[0], trade[1])
                    return
        name = self.name
        orders: list[_Trade] = []  # the trades for the book, in order
        # Each order's (future, trade ID), or None; no list while no order has either (a
        # burst typed at the console), so that the common case carries nothing per trade.
        waiting: list[tuple[Future[Any] | None, str | None] | None] | None = None
        repeats: list[tuple[int, _Trade]] = []  # an ID used again in this batch: its first
        futures: list[tuple[Future[Any], Position | TradeError | None]] = []
        now_ns = time.time_ns()
        with self._publish_lock:
            every_change = self._every_change
            # Submissions of plain trades (no barrier, future or ID: a burst typed at the
            # console), told apart by C loops: they go to the book as they are.
            plain = [
                all(map(_SYMBOL_OF_TRADE, batch))
                and not any(map(_FUTURE_OF, batch))
                and not any(map(_TRADE_ID_OF, batch))
                for _, batch in batches
            ]
            given = [
                trade[3]
                for (_, batch), simple in zip(batches, plain, strict=True)
                if not simple
                for trade in batch
                if trade[3] is not None
            ]
            known = self._store.trades(given) if given else {}
            first: dict[str, int] = {}  # trade ID -> the index of its order in this batch
            submissions: list[tuple[float, int]] = []  # (submitted at, its first order)
            for (arrived, batch), simple in zip(batches, plain, strict=True):
                submissions.append((arrived, len(orders)))
                if simple:
                    orders += batch
                    if waiting is not None:
                        waiting += [None] * len(batch)
                    continue
                for trade in batch:
                    symbol, quantity, future, trade_id = trade
                    if not symbol:  # a barrier: done once everything before is published
                        if future is not None:
                            futures.append((future, None))
                        continue
                    if trade_id is not None:
                        if trade_id in known:
                            self._replayed(trade, known[trade_id], futures)
                            continue
                        if trade_id in first:
                            repeats.append((first[trade_id], trade))
                            continue
                        first[trade_id] = len(orders)
                    if waiting is None and (future is not None or trade_id is not None):
                        waiting = [None] * len(orders)  # from now on, one per order
                    orders.append(trade)  # the book reads its symbol and quantity
                    if waiting is not None:
                        waiting.append((future, trade_id) if future or trade_id else None)
            with self._book_lock:
                results = self._book.trade_many(name, orders, self._clock, self._max_symbols)
            trade_ids: list[tuple[str, int]] = []
            if waiting is None and {*map(type, results)} == _POSITION_TYPE:
                # The common batch (a burst typed at the console): every trade applied, none
                # with a future or an ID; its journal rows and last positions built by C loops.
                applied = cast(list[Position], results)
                trades: list[TradeRow] = list(
                    zip(
                        map(_SYMBOL_OF, applied),
                        map(_QUANTITY_OF, orders),
                        map(_NET_OF, applied),
                        map(_TIMESTAMP_OF, applied),
                        strict=True,
                    )
                )
                latest: dict[str, Position] = dict(
                    zip(map(_SYMBOL_OF, applied), applied, strict=True)
                )
            else:
                trades = []
                latest = {}
                for trade, result, extra in zip(
                    orders, results, repeat(None) if waiting is None else waiting, strict=False
                ):
                    symbol = trade[0]
                    quantity = trade[1]
                    if type(result) is not Position:
                        future = None if extra is None else extra[0]
                        self._refuse(future, futures, self._refusal(result, symbol, quantity))
                        continue
                    latest[symbol] = result
                    trades.append((symbol, quantity, result[2], result[3]))
                    if extra is not None:
                        future, trade_id = extra
                        if future is not None:
                            futures.append((future, result))
                        if trade_id is not None:
                            trade_ids.append((trade_id, result[3]))
                applied = [result for result in results if type(result) is Position]
            for index, trade in repeats:
                result = results[index]
                self._replayed(
                    trade,
                    (*orders[index][:2], *result[2:]) if type(result) is Position else None,
                    futures,
                )
            # Trades applied per submission, with when it was submitted (the stats).
            if len(submissions) == 1:
                counts = [(submissions[0][0], len(applied))]
            else:
                ends = [start for _, start in submissions[1:]] + [len(results)]
                counts = [
                    (arrived, sum(type(r) is Position for r in results[start:end]))
                    for (arrived, start), end in zip(submissions, ends, strict=True)
                ]
            stored = list(latest.values())
            try:
                self._publish(
                    _Publication(
                        applied if every_change else stored,
                        stored=stored,
                        broadcast=stored,
                        rows=format_rows(applied),
                        trades=trades,
                        applied_at=now_ns,
                        trade_ids=trade_ids,
                    )
                )
            except StoreError as exc:
                self._put_back([(name, symbol) for symbol in latest])
                futures = self._refuse_batch(trades, futures, exc)
                self.stats.refused += len(trades)
            else:
                self._count_trades([(arrived, n) for arrived, n in counts if n])
        for future, outcome in futures:
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fold_when_quiet(self) -> None:
        """Fold the store (see ``_fold``) once no trade and no peer's change was committed
        for a whole digest interval: the work a burst leaves is done when it is over, not
        while it runs."""
        activity = (self.stats.trades, self.stats.peer_changes)
        quiet = activity == self._activity_at_tick
        self._activity_at_tick = activity
        if quiet and self._store.unfolded:
            with self._publish_lock:
                if self._store.unfolded:
                    self._fold()

    def _fold(self) -> None:
        """Write the positions committed to the store's journal and position log to its
        positions table (``Store.fold``): once the node is quiet for a digest interval, or
        at once when ``Store.fold_due`` (so many wait). Caller holds the publish lock."""
        try:
            self._store.fold()
        except StoreError as exc:
            logger.warning(
                "cannot fold committed positions into the positions table ({}); the journal"
                " and the position log hold them, and the next fold writes them",
                exc,
            )

    def _apply_lone_trade(self, arrived: float, symbol: str, quantity: float) -> None:
        """``_apply_trades`` for a batch of one plain trade (no barrier, future or ID: one
        line typed at the console), with what a batch of one needs and nothing else: the
        same steps, results and errors, without the batch's lists (see performance.md,
        "Round five")."""
        name = self.name
        now_ns = time.time_ns()
        with self._publish_lock:
            with self._book_lock:
                result = self._book.trade_many(
                    name, [(symbol, quantity)], self._clock, self._max_symbols
                )[0]
            if type(result) is not Position:
                self._refuse(None, [], self._refusal(result, symbol, quantity))
                return
            applied = [result]
            trades: list[TradeRow] = [(symbol, quantity, result[2], result[3])]
            try:
                self._publish(
                    _Publication(
                        applied, stored=applied, broadcast=applied, trades=trades, applied_at=now_ns
                    )
                )
            except StoreError as exc:
                self._put_back([(name, symbol)])
                self._refuse_batch(trades, [], exc)
                self.stats.refused += 1
                return
            stats = self.stats
            stats.latency.observe(time.monotonic() - arrived)
            stats.trades += 1
            stats.own_changes += 1

    def _refusal(self, refused: Position | Refused, symbol: str, quantity: float) -> str:
        """What to say of an own trade the book refused."""
        if refused is Refused.MAX_SYMBOLS:
            return (
                f"{symbol}: this strategy already holds {self._max_symbols} symbols, the most"
                " a node accepts (--max-symbols)"
            )
        return f"{symbol} {quantity:g} would make the position overflow"

    def _replayed(
        self,
        trade: _Trade,
        applied: tuple[str, float, float, int] | None,
        futures: list[tuple[Future[Any], Position | TradeError | None]],
    ) -> None:
        """A trade whose ID was applied before (``applied``: that trade's symbol and quantity,
        and the net position and timestamp it produced; None if it was refused): it is not
        applied again. The same trade again is ignored with a notice, and its future gets the
        position that trade produced; another trade under the same ID is refused."""
        symbol, quantity, future, trade_id = trade
        if applied is None:
            self._refuse(future, futures, f"trade ID {trade_id} was given to a refused trade")
            return
        first_symbol, first_quantity, net, timestamp = applied
        if first_symbol == symbol and first_quantity == quantity:
            self._err.write(
                f"notice: trade {trade_id} ({symbol} {quantity:g}) was already applied,"
                f" giving {net:.6f} at {timestamp}; ignored\n"
            )
            if future is not None:
                futures.append((future, Position(self.name, symbol, net, timestamp)))
        else:
            self._refuse(
                future,
                futures,
                f"trade ID {trade_id} was already used for {first_symbol}"
                f" {first_quantity:g}; {symbol} {quantity:g} is not applied",
            )

    def _refuse_batch(
        self,
        trades: list[TradeRow],
        futures: list[tuple[Future[Any], Position | TradeError | None]],
        exc: StoreError,
    ) -> list[tuple[Future[Any], Position | TradeError | None]]:
        """The store could not commit these trades (already taken back out of the book):
        say so on the error stream, and fail their futures. Caller holds the publish lock."""
        cause = str(exc.__cause__ or exc)
        shown = ", ".join(f"{trade[0]} {trade[1]:g}" for trade in trades[:_REFUSED_SHOWN])
        more = len(trades) - _REFUSED_SHOWN
        self._err.write(
            f"error: {len(trades)} trade(s) refused, not stored: {shown}"
            f"{f' and {more} more' if more > 0 else ''} ({cause})\n"
        )
        self._store_failed(exc, f"{len(trades)} trade(s)")
        return [
            (future, TradeNotStored(f"{result.symbol} not stored: {cause}"))
            if isinstance(result, Position)
            else (future, result)
            for future, result in futures
        ]

    def _store_failed(self, exc: StoreError, what: str) -> None:
        """Say that a commit failed: an ERROR line at the first failure, then at most one a
        minute while the store keeps failing. Caller holds the publish lock."""
        self._store_failures += 1
        now = time.monotonic()
        if now - self._store_error_at < _STORE_ERROR_EVERY:
            return
        self._store_error_at = now
        logger.error(
            "{} refused: {}; nothing of them is applied, and every new batch tries the store"
            " again ({} failed commit(s) so far)",
            what,
            exc,
            self._store_failures,
        )

    def _put_back(self, keys: list[tuple[str, str]]) -> None:
        """Put the book's ``keys`` back to what the store holds, after a failed commit.
        Caller holds the publish lock (so nothing else changes them meanwhile)."""
        assert self._publish_lock.locked()
        committed = self._store.committed(keys)
        with self._book_lock:
            self._book.put_back(keys, committed)
            self._bases = self._store.bases()

    def _count_trades(self, applied: list[tuple[float, int]]) -> None:
        """Count committed trades and their time from submission. Caller holds the publish
        lock."""
        stats = self.stats
        now = time.monotonic()
        observe = stats.latency.observe
        total = 0
        for arrived, count in applied:
            observe(now - arrived, count)
            total += count
        stats.trades += total
        stats.own_changes += total

    def _refuse(
        self,
        future: Future[Any] | None,
        futures: list[tuple[Future[Any], Position | TradeError | None]],
        reason: str,
    ) -> None:
        self.stats.refused += 1
        error = TradeError(reason)
        logger.error("trade refused: {}", error)
        if future is not None:
            futures.append((future, error))

    def _apply_positions(self, batch: list[tuple[Link, list[Any]]]) -> None:
        """Apply a batch of peers' messages: positions, and their SyncDone.

        If the store cannot commit, the batch's changes are taken back out of the book and
        the links they came from are closed: their sync, once redialled, sends them
        again.
        """
        if len(batch) == 1 and self._apply_peer_read(*batch[0]):
            return
        name = self.name
        book = self._book
        changes: list[Position] = []
        own_changes: list[Position] = []
        relayed: list[tuple[Position, Link]] = []
        relay = self.relay
        bases: list[Position] = []
        journal: list[JournalEntry] = []
        synced: list[str] = []
        max_symbols = self._max_symbols
        repairs = self._repairs
        mismatched: list[tuple[Link, Digest]] = []  # digests unlike our copy
        asked: list[Link] = []  # peers that asked for our positions
        repaired: list[tuple[Position | None, Position]] = []  # (before, after)
        removed: list[Position] = []  # copies of symbols their owner does not hold
        kept: list[tuple[str, list[Position]]] = []  # copies newer than their owner's
        with self._publish_lock:
            with self._book_lock:
                apply = book.apply
                count = book.count
                merge_many = book.merge_many
                for link, messages in batch:
                    repairing = repairs.get(link) if repairs else None
                    peer = link.name
                    if (
                        repairing is None
                        and peer is not None
                        and peer != name
                        and count(peer) + len(messages) <= max_symbols
                        and {*map(type, messages)} == _POSITION_TYPE
                        and all(map(peer.__eq__, map(_STRATEGY_OF, messages)))
                    ):
                        # The common batch: the peer's own positions, none of which can reach
                        # the symbol cap: merged together.
                        merged = merge_many(peer, messages)
                        changes += merged
                        if relay:
                            relayed += [(position, link) for position in merged]
                        continue
                    for message in messages:
                        if type(message) is Position:
                            if repairing is not None and message.strategy == link.name:
                                self._repair_one(message, repairing, changes, repaired)
                                continue
                            if message.strategy != name:
                                if count(message.strategy) >= max_symbols and self._over_cap(
                                    message
                                ):
                                    continue
                                if apply(message):
                                    changes.append(message)
                                    if relay:
                                        relayed.append((message, link))
                                continue
                            position = self._learn_own(message, bases, journal)
                            if position is not None:
                                changes.append(position)
                                own_changes.append(position)
                        elif type(message) is SyncDone and link.name is not None:
                            synced.append(link.name)
                        elif type(message) is Digest and link.name is not None:
                            if self._defer_digest(link.name):
                                continue
                            if book.digest(link.name) != (message.count, message.hash):
                                mismatched.append((link, message))
                        elif type(message) is RepairRequest:
                            asked.append(link)
                        elif type(message) is Repair and link.name is not None:
                            if not message.done:
                                repairing = repairs[link] = _Repairing()
                            elif repairing is not None:
                                del repairs[link]
                                self._repaired.add(link.name)
                                self._end_repair(link.name, repairing, removed, kept)
                                repairing = None
                        elif message is _CLOSED:
                            repairs.pop(link, None)
                            repairing = None
            try:
                # Own positions learnt back are broadcast: a peer may have missed them too.
                self._publish(
                    _Publication(
                        changes,
                        broadcast=own_changes,
                        relayed=relayed,
                        journal=journal,
                        bases=bases,
                    )
                )
                self.stats.peer_changes += len(changes)
                if removed:
                    self._store.remove(removed[0].strategy, [p.symbol for p in removed])
            except StoreError as exc:
                self._put_back([(p.strategy, p.symbol) for p in changes + removed])
                self._store_failed(exc, f"{len(changes)} position(s) from peers")
                for link in {link for link, _ in batch}:
                    link.close("its positions could not be stored; its next sync sends them again")
                return
        if synced:
            self._note_synced(synced)
        if repaired or removed:
            self._say_repaired(repaired, removed)
        for owner, newer in kept:
            self._say_kept(owner, newer)
        for link, digest in mismatched:
            self._ask_repair(link, digest)
        for link in asked:
            self._send_repair(link)

    def _apply_peer_read(self, link: Link, messages: list[Any]) -> bool:
        """``_apply_positions`` for a batch of one read made only of the peer's own positions
        (W2's case: one position) outside a repair, none of which can reach the symbol cap:
        the same steps and results, without the general batch's bookkeeping. False (nothing
        done) for any other read, which the general path then applies."""
        peer = link.name
        if (
            peer is None
            or peer == self.name
            or (self._repairs and link in self._repairs)
            or {*map(type, messages)} != _POSITION_TYPE
            or not all(map(peer.__eq__, map(_STRATEGY_OF, messages)))
        ):
            return False
        with self._publish_lock:
            with self._book_lock:
                if self._book.count(peer) + len(messages) > self._max_symbols:
                    return False
                changes = self._book.merge_many(peer, messages)
            relayed = [(position, link) for position in changes] if self.relay else []
            try:
                self._publish(_Publication(changes, relayed=relayed))
                self.stats.peer_changes += len(changes)
            except StoreError as exc:
                self._put_back([(p.strategy, p.symbol) for p in changes])
                self._store_failed(exc, f"{len(changes)} position(s) from peers")
                link.close("its positions could not be stored; its next sync sends them again")
        return True

    def _over_cap(self, position: Position) -> bool:
        """Whether ``position`` is a new symbol of a strategy already at the symbol cap
        (then it is dropped, and that said once per strategy). Caller holds the book lock."""
        if self._book.get(position.strategy, position.symbol) is not None:
            return False
        if position.strategy not in self._capped:
            self._capped.add(position.strategy)
            logger.error(
                "{} holds {} symbols, the most this node accepts (--max-symbols): its new"
                " symbols are dropped, starting with {}",
                position.strategy,
                self._max_symbols,
                position.symbol,
            )
        return True

    def _learn_own(
        self,
        echo: Position,
        bases: list[Position],
        journal: list[JournalEntry],
    ) -> Position | None:
        """A peer sent back one of our own positions (the echo in its sync): apply it.

        Returns the change it makes, if any. An echo this store issued is old news. An echo
        from before this store existed (the store was lost) is a base: the position is that
        base plus every trade journalled since, so a base learnt after trades resumed (a peer
        that was late, or partitioned, at recovery) still loses no acknowledged trade.
        Caller holds the book lock and the publish lock.
        """
        assert self._book_lock.locked() and self._publish_lock.locked()
        self._clock.observe(echo.timestamp)  # never stamp older than our own past again
        symbol = echo.symbol
        if echo == self._book.get(self.name, symbol):
            return None
        if echo.timestamp <= self._bases.get(symbol, 0) or self._store.issued(
            symbol, echo.timestamp
        ):
            return None
        current = self._book.get(self.name, symbol)
        ahead = echo.timestamp - time.time_ns()  # > 0: stamped by a clock that ran ahead
        if (
            current is not None
            and echo.timestamp > current.timestamp
            and not self.recovering
            and ahead <= _MAX_CLOCK_SKEW_NS
            and self._store.issued(symbol, current.timestamp)
        ):
            # Newer than what this node wrote itself, outside recovery: never its own past.
            # (A store restored from an old copy looks the same: start it with --recover.)
            # Not when it is stamped well in the future: no node with a right clock wrote it,
            # so it comes from this node's past, when its clock ran ahead (then its store was
            # lost), and the timestamps cannot say which came first.
            logger.error(
                "refused {} {} @ {} sent back as ours: newer than this node's own {} @ {}; {}",
                symbol,
                echo.net_position,
                echo.timestamp,
                current.net_position,
                current.timestamp,
                _NOT_OURS,
            )
            return None
        if (
            current is None
            and not self.recovering
            and echo.timestamp >= self._created_at_ns
            and ahead <= _MAX_CLOCK_SKEW_NS
        ):
            # A symbol this store never held, stamped after the store was made: not a base
            # from before a lost store, so some other node wrote it (or a store was edited).
            # (Stamped well in the future, it comes from this node's past, as above.)
            logger.error(
                "refused {} {} @ {} sent back as ours: this node never held {}, and it is"
                " stamped after this store was created; {}",
                symbol,
                echo.net_position,
                echo.timestamp,
                symbol,
                _NOT_OURS,
            )
            return None
        if self._book.count(self.name) >= self._max_symbols and self._over_cap(echo):
            return None
        self._bases[symbol] = echo.timestamp
        bases.append(echo)
        # Only the trades the base cannot include: those of this store's own lineage (all of
        # a store created empty, whatever the clocks said), and those made after the base (a
        # store restored from an old copy holds trades that the base already includes).
        after = echo.timestamp if self._lineage is None else min(echo.timestamp, self._lineage)
        quantities = self._store.quantities(symbol, after=after)
        if not quantities:
            return echo if self._book.apply(echo) else None
        net = echo.net_position
        for quantity in quantities:
            net += quantity
        previous = self._book.get(self.name, symbol)
        position = Position(self.name, symbol, net + 0.0, self._clock.next())
        self._book.apply(position)
        jump = net - (0.0 if previous is None else previous.net_position)
        journal.append(
            JournalEntry(
                time.time_ns(), symbol, jump, position.net_position, position.timestamp, "rebase"
            )
        )
        logger.warning(
            "{}: a peer sent back {} from before this store{}; with the {} trade(s) since,"
            " the position is now {}",
            symbol,
            echo.net_position,
            f" (stamped {ahead / 1e9:.0f}s ahead of this machine's clock)"
            if ahead > _MAX_CLOCK_SKEW_NS
            else "",
            len(quantities),
            position.net_position,
        )
        return position

    def _publish(self, batch: _Publication) -> None:
        """Commit, send, print and notify. Caller holds the publish lock.

        Raises ``StoreError`` (before anything is sent or printed) if the commit fails.

        ``changes`` go to subscribers and are printed (unless ``rows`` is given) and stored
        (unless ``stored`` is given; with ``trades``, the store journals them and takes the
        own positions from them). ``broadcast`` (own positions) goes to every peer; with
        relay, each of ``relayed`` (a change received from a connection) goes to every
        relaying peer but the one it came from and its owner. Only changes are sent, so
        relaying stops by itself.
        """
        assert self._publish_lock.locked()
        changes = batch.changes
        if not changes and not batch.bases:
            return
        # The clock is implied by what is stored (every timestamp issued or learnt is in a
        # journal entry, a base or an own position): no clock write per commit.
        if batch.trades:
            self._store.commit_trades(
                batch.applied_at,
                batch.trades,
                batch.trade_ids,
                None if batch.stored is None else len(batch.stored),
            )
        else:
            self._store.commit(
                changes if batch.stored is None else batch.stored,
                None,
                batch.journal,
                batch.bases,
                batch.trade_ids,
            )
        if self._store_failures:
            logger.warning(
                "store {} takes writes again: changes are stored again ({} failed commit(s)"
                " before)",
                self._store.path,
                self._store_failures,
            )
            self._store_failures = 0
            self._store_error_at = -_STORE_ERROR_EVERY
        if changes:
            if batch.broadcast or batch.relayed:
                self.sent += self._links.publish(batch.broadcast, batch.relayed)
            self._out.write(format_rows(changes) if batch.rows is None else batch.rows)
            latest = changes if batch.stored is None else batch.stored
            for subscriber in self._subscribers:
                subscriber.deliver(changes if subscriber.every_change else latest)
        if self._store.fold_due:  # so many wait that the fold cannot wait for a quiet moment
            self._fold()

    # Anti-entropy.

    def _check_journal(self) -> None:
        """At start: each own position must be what the journal (or a base) records; where it
        is not (a bad disk, a hand edit), say so and take the record's value."""
        fixed = []
        for stored, record in self._store.disagreements(self.name):
            if record is None:
                logger.error(
                    "{}: the store holds {} @ {} for this node's own strategy, but its journal"
                    " has no entry for the symbol; kept as it is",
                    stored.symbol,
                    stored.net_position,
                    stored.timestamp,
                )
                continue
            net, timestamp = record
            logger.error(
                "{}: the store holds {} @ {} for this node's own strategy, but its journal"
                " says {} @ {}: the journal wins",
                stored.symbol,
                stored.net_position,
                stored.timestamp,
                net,
                timestamp,
            )
            fixed.append(Position(self.name, stored.symbol, net + 0.0, timestamp))
        if fixed:
            for position in fixed:
                self._book.replace(position)
            self._store.commit(fixed, None)

    def _repair_one(
        self,
        position: Position,
        repairing: _Repairing,
        changes: list[Position],
        repaired: list[tuple[Position | None, Position]],
    ) -> None:
        """A position from its owner, in a repair: it beats any copy that is not newer than
        it (a copy newer than the owner's own is kept: the owner's store may be older than
        what it wrote, see _learn_own). Caller holds the book lock."""
        repairing.symbols.add(position.symbol)
        repairing.newest = max(repairing.newest, position.timestamp)
        before = self._book.get(position.strategy, position.symbol)
        if before is not None and before.timestamp > position.timestamp:
            repairing.kept.append(before)
        elif self._book.replace(position):
            changes.append(position)
            repaired.append((before, position))

    def _end_repair(
        self,
        owner: str,
        repairing: _Repairing,
        removed: list[Position],
        kept: list[tuple[str, list[Position]]],
    ) -> None:
        """The owner sent all its positions: drop our copies of symbols it did not send,
        unless newer than its newest (kept, as above). Caller holds the book lock."""
        held = self._book.symbols(owner)
        for symbol in set(held) - repairing.symbols:
            if held[symbol].timestamp > repairing.newest:
                repairing.kept.append(held[symbol])
            elif (gone := self._book.discard(owner, symbol)) is not None:
                removed.append(gone)
        if repairing.kept:
            kept.append((owner, repairing.kept))

    def _send_digests(self) -> None:
        """Anti-entropy thread: the digest of our own positions to every peer, periodically
        (after hashing what changed since the last one, in slices), and the store's fold
        once the node is quiet."""
        try:
            while not self._digest_stop.wait(self._digest_interval):
                self._hash_in_slices()
                self._send_digest()
                self._fold_when_quiet()
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("anti-entropy thread failed")

    def _hash_in_slices(self) -> None:
        """Hash the book's changes since the last digest read into the digests, a slice at a
        time under the book lock (see ``Book.fold_some``): after a burst of many symbols,
        neither the next digest sent nor a peer's digest compared hashes them all at once
        in the path of the changes."""
        with self._book_lock:
            left = self._book.waiting()
        # What waited at the start: what changes meanwhile is for the next digest read, so a
        # steady flood of changes cannot keep this thread from sending its digest.
        while left > 0:
            with self._book_lock:
                self._book.fold_some(_HASH_SLICE)
            left -= _HASH_SLICE

    def _defer_digest(self, strategy: str) -> bool:
        """Whether to leave a peer's digest uncompared, this once: when more than a slice of
        that strategy's changes wait to be hashed (a burst just received) and this node's
        anti-entropy thread hashes them in slices before the peer's next digest; never two
        in a row. Caller holds the book lock."""
        if (
            self._digest_interval > 0
            and strategy not in self._deferred_digests
            and self._book.waiting(strategy) > _HASH_SLICE
        ):
            self._deferred_digests.add(strategy)
            return True
        self._deferred_digests.discard(strategy)
        return False

    def _send_digest(self) -> None:
        """Send the digest of our own positions to every link (each sends it only if the
        other end compares them). Under the publish lock, after every change it covers, so a
        peer compares like with like, under load as when idle."""
        links = self._links.links()
        if not links:
            return
        with self._publish_lock:
            with self._book_lock:
                count, digest = self._book.digest(self.name)
            for link in links:
                link.send_digest(count, digest)

    def _ask_repair(self, link: Link, digest: Digest) -> None:
        """Our copy of ``link``'s positions differs from its digest: ask it for all of them
        (at most once per two digest intervals per strategy, so a repair in flight is not
        asked for again)."""
        name = link.name
        assert name is not None
        now = time.monotonic()
        if now - self._asked.get(name, -math.inf) < 2 * self._digest_interval:
            return
        with self._book_lock:
            count, ours = self._book.digest(name)
        if name in self._repaired:
            # Repaired, and still different (a copy we keep, a symbol cap): asking again at
            # once would only send everything again. Once a minute.
            self._repaired.discard(name)
            self._asked[name] = now + 60.0 - 2 * self._digest_interval
            logger.warning(
                "our copy of {}'s positions ({} here) still differs from its own ({} there)"
                " after a repair; asking again in a minute",
                name,
                count,
                digest.count,
            )
            return
        self._asked[name] = now
        logger.warning(
            "our copy of {}'s positions ({} here) differs from its own ({} there): asking it"
            " for them",
            name,
            count,
            digest.count,
        )
        link.ask_repair(count, ours)

    def _send_repair(self, link: Link) -> None:
        """A peer's copy of our positions differs from ours: send it every one (it takes them
        as they are, and drops what we do not hold). Under the publish lock, so no live update
        falls inside or overtakes it."""
        with self._publish_lock:
            with self._book_lock:
                own = self._book.of_strategy(self.name)
            link.send_repair(own)
        logger.info(
            "{} asked for our positions (its copy differs): sent all {}", link.name, len(own)
        )

    @staticmethod
    def _say_repaired(
        repaired: list[tuple[Position | None, Position]], removed: list[Position]
    ) -> None:
        owner = (repaired[0][1] if repaired else removed[0]).strategy
        shown = [
            f"{after.symbol} {'-' if before is None else before.net_position} @"
            f" {'-' if before is None else before.timestamp} -> {after.net_position} @"
            f" {after.timestamp}"
            for before, after in repaired[:_SHOWN]
        ]
        shown += [f"{p.symbol} {p.net_position} @ {p.timestamp} dropped" for p in removed[:_SHOWN]]
        logger.warning(
            "repaired our copy of {}'s positions from {} itself: {} changed, {} dropped ({}{})",
            owner,
            owner,
            len(repaired),
            len(removed),
            "; ".join(shown),
            "; ..." if len(repaired) > _SHOWN or len(removed) > _SHOWN else "",
        )

    def _say_kept(self, owner: str, newer: list[Position]) -> None:
        """After a repair, we still hold copies newer than their owner's own: say so, once a
        minute at most (the owner refuses them as its own and says what to do), and ask it
        for no repair for a minute (our digests will differ until then)."""
        self._asked[owner] = time.monotonic() + 60.0 - 2 * self._digest_interval
        shown = "; ".join(f"{p.symbol} {p.net_position} @ {p.timestamp}" for p in newer[:_SHOWN])
        logger.warning(
            "kept {} position(s) of {} newer than {}'s own ({}{}): its store may be older than"
            " what it wrote, or another node runs its name; {}'s log says which",
            len(newer),
            owner,
            owner,
            shown,
            "; ..." if len(newer) > _SHOWN else "",
            owner,
        )

    # Recovery window.

    def _note_synced(self, strategies: list[str]) -> None:
        with self._synced_cond:
            self._synced.update(strategies)
            if self._first_sync_at is None:
                self._first_sync_at = time.monotonic()
            self._synced_cond.notify_all()

    def _configured_synced(self) -> bool:
        """Whether every configured peer is known and has completed a sync with us.

        Only configured peers count: an unconfigured peer that happens to sync first may
        hold nothing of ours. Caller holds the recovery condition's lock.
        """
        names = self._links.configured()
        return all(name is not None and name in self._synced for name in names)

    def _await_recovery(self) -> bool:
        """Hold trades until the peers have synced our own positions back, or time runs out.

        Returns False if the node is stopping with no trade waiting (then there is nothing to
        recover for); a stop with trades waiting still waits, so they apply on what is known.
        """
        expected = len(self._links.configured())
        with self._book_lock:
            held = self._book.count(self.name)
        what = (
            f"store holds {held} own position(s) and is to recover (--recover)"
            if held
            else "store is new or was lost"
        )
        if self._recovery_timeout > 0:
            # INFO: the first start of every node looks like this; only the outcome may warn.
            logger.info(
                "{}: holding trades until {} sent our positions back (at most {:g}s)",
                what,
                f"{expected} configured peer(s) have"
                if expected
                else "the first peer to connect has",
                self._recovery_timeout,
            )
        deadline = time.monotonic() + self._recovery_timeout
        with self._synced_cond:
            while True:
                if self._stopping and not self._trades.pending:
                    break
                now = time.monotonic()
                if expected and self._configured_synced():
                    break
                wait = deadline - now
                if not expected and self._first_sync_at is not None:
                    wait = min(wait, self._first_sync_at + self._recovery_grace - now)
                if wait <= 0:
                    break
                self._synced_cond.wait(wait)
            synced = sorted(self._synced)
            if self._stopping and not self._trades.pending:
                return False
        with self._book_lock:
            own = self._book.count(self.name)
        self._say_how_recovery_ended(synced, expected, own, what)
        with self._publish_lock:
            try:
                self._store.mark_recovered()
            except StoreError as exc:
                logger.warning("{}; the next start holds trades for recovery again", exc)
        self.recovering = False
        return True

    def _say_how_recovery_ended(
        self, synced: list[str], expected: int, own: int, what: str
    ) -> None:
        """Log the end of the recovery window in words that match what happened; ``what``
        says what the store was (new or lost, or one to recover).

        A warning only when something may be missing (a configured peer never synced) or
        was missing (own positions came back: the store had lost them); the first start of
        a new cluster, or a window of 0s, is told at INFO.
        """
        timeout = self._recovery_timeout
        if timeout <= 0:
            logger.info(
                "{}; --recovery-timeout 0: applying trades at once, without waiting for peers"
                " ({} own position(s) held)",
                what,
                own,
            )
            return
        with self._synced_cond:
            missing = sum(1 for name in self._links.configured() if name not in self._synced)
        if synced and not missing:
            log = logger.warning if own else logger.info
            log(
                "recovery done: synced with {}; {} own position(s) recovered; applying trades",
                ", ".join(synced),
                own,
            )
        elif synced:
            logger.warning(
                "recovery timeout after {:g}s: synced with {}, not with {} configured peer(s);"
                " starting with {} own position(s)",
                timeout,
                ", ".join(synced),
                missing,
                own,
            )
        elif expected:
            logger.warning(
                "recovery timeout after {:g}s: no peer synced; starting with {} own position(s)",
                timeout,
                own,
            )
        else:
            logger.info(
                "recovery timeout after {:g}s: no peer synced; starting with {} own position(s)"
                " (no peer is configured: the first node of a new cluster)",
                timeout,
                own,
            )


def _trade_count(item: tuple[float, list[_Trade]]) -> int:
    return len(item[1])


def _message_count(item: tuple[Link, list[Any]]) -> int:
    return len(item[1])
