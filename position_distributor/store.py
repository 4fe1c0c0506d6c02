"""The store: the node's book and clock in a SQLite file (WAL mode), one transaction per batch."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from loguru import logger

from .types import Position

__all__ = [
    "SCHEMA_VERSION",
    "JournalEntry",
    "SnapshotInfo",
    "Store",
    "StoreError",
    "TradeRow",
    "read_book",
]

SCHEMA_VERSION = 2
# Version 2: the positions table is written lazily, from the journal (own trades) and the
# position log (batches of other positions), by ``Store.fold``; a version 1 store (every
# position written in its commit) is taken as it is, folded.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    net_position REAL NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (strategy, symbol)
) WITHOUT ROWID;
-- Every own trade, in the transaction that stores its resulting position. Keyed by the
-- position's timestamp (one clock, strictly increasing): the journal's order, and its one
-- B-tree (an index by symbol would cost a second one on every trade; the rare per-symbol
-- queries scan it from the end instead).
CREATE TABLE IF NOT EXISTS journal (
    timestamp INTEGER PRIMARY KEY,     -- the position's timestamp (the node's clock)
    time_ns INTEGER NOT NULL,          -- wall clock when the trade was applied
    symbol TEXT NOT NULL,
    quantity REAL NOT NULL,
    net_position REAL NOT NULL,        -- the position the trade resulted in
    kind TEXT NOT NULL DEFAULT 'trade' -- 'trade', or 'rebase': a base learnt late (see bases)
);
-- Trade IDs (exactly-once intake): each ID given with an own trade, and the timestamp of
-- that trade's journal entry (what it was, and the position it produced). Written in the
-- trade's own transaction; kept as long as the journal. Only trades with an ID cost a row.
CREATE TABLE IF NOT EXISTS trade_ids (
    trade_id TEXT PRIMARY KEY,
    timestamp INTEGER NOT NULL         -- the journal entry of the trade
) WITHOUT ROWID;
-- Own positions from before this store existed (learnt back from peers after a lost store):
-- the base the journal's trades of a symbol are added to.
CREATE TABLE IF NOT EXISTS bases (
    symbol TEXT PRIMARY KEY,
    net_position REAL NOT NULL,
    timestamp INTEGER NOT NULL
) WITHOUT ROWID;
-- Copies of the whole view (every strategy), taken atomically.
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    taken_at_ns INTEGER NOT NULL,
    label TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_positions (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots (id),
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    net_position REAL NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, strategy, symbol)
) WITHOUT ROWID;
-- Positions committed by ``commit`` (a peer's burst, a repair), a batch per row, in the
-- order committed, not yet written to the positions table: a fold writes them there, in
-- order (see Store.fold). One row per batch instead of a B-tree insert per position.
CREATE TABLE IF NOT EXISTS position_log (
    id INTEGER PRIMARY KEY,
    strategies TEXT NOT NULL,  -- each position's strategy, one per line (one line: all)
    symbols TEXT NOT NULL,     -- each position's symbol, one per line
    nets BLOB NOT NULL,        -- each position's net, IEEE 754 doubles, little-endian
    timestamps BLOB NOT NULL   -- each position's timestamp, signed 64-bit, little-endian
);
"""

# Inserts as (head, one row's placeholders, tail), for _insert_many.
_UPSERT_ROWS = (
    "INSERT INTO positions (strategy, symbol, net_position, timestamp) VALUES ",
    "(?, ?, ?, ?)",
    " ON CONFLICT (strategy, symbol) DO UPDATE"
    " SET net_position = excluded.net_position, timestamp = excluded.timestamp",
)


_ROWS_PER_STATEMENT = 256
_JOURNAL_ROWS = (
    "INSERT INTO journal (time_ns, symbol, quantity, net_position, timestamp, kind) VALUES ",
    "(?, ?, ?, ?, ?, ?)",
    "",
)
_TRADE_ID_ROWS = ("INSERT INTO trade_ids (trade_id, timestamp) VALUES ", "(?, ?)", "")
# Own trades applied at one time (?1): kind is left to its default, 'trade'.
_TRADE_ROWS = (
    "INSERT INTO journal (time_ns, symbol, quantity, net_position, timestamp) VALUES ",
    "(?1, ?, ?, ?, ?)",
    "",
)
# The position each symbol is left at by the journal entries stamped after ?2 (the last
# one of each symbol), stored as the own strategy's (?1) unless the positions table already
# holds a newer one (a base learnt from a peer, written by ``commit``): see ``Store.fold``.
# Two ways, as cheap as each other only where they are not needed: grouped by symbol (a sort
# of the rows, then one write per symbol: 0.33 µs per row when 27 rows share a symbol, 1-2
# when none does), or every row written in timestamp order, the last one winning (0.45 µs
# per row, 0.7 when they share symbols).
_FOLD_GROUPED = (
    "INSERT INTO positions (strategy, symbol, net_position, timestamp)"
    " SELECT ?1, symbol, net_position, max(timestamp) FROM journal"
    " WHERE timestamp > ?2 GROUP BY symbol"
    + _UPSERT_ROWS[2]
    + " WHERE excluded.timestamp > positions.timestamp"
)
_FOLD_IN_ORDER = (
    "INSERT INTO positions (strategy, symbol, net_position, timestamp)"
    " SELECT ?1, symbol, net_position, timestamp FROM journal"
    " WHERE timestamp > ?2 ORDER BY timestamp"
    + _UPSERT_ROWS[2]
    + " WHERE excluded.timestamp > positions.timestamp"
)
_FOLDED = "SELECT value FROM meta WHERE key = 'folded'"
# Journal rows, or logged positions, left unfolded before a fold runs whatever the load (see
# ``fold_due``).
FOLD_MAX_ROWS = 262_144
# A batch of at least this many positions goes to the position log (fewer, while the log is
# empty, straight to the positions table: a lone update costs the same either way, and the
# table then reads as it is).
_LOG_MIN = 8
_STRATEGY_OF: Any = itemgetter(0)
_SYMBOL_OF: Any = itemgetter(1)
_NET_OF: Any = itemgetter(2)
_TIMESTAMP_OF: Any = itemgetter(3)
_INT64: Final = 1 << 63
_AS_POSITION: Any = functools.partial(tuple.__new__, Position)


class JournalEntry(NamedTuple):
    """One change of an own position, as the journal keeps it: a trade, or a rebase.

    A rebase is written when a peer sends back an own position from before this store
    existed (after a lost store) that is newer than the base the position was built on:
    the position becomes that base plus every trade since, and ``quantity`` is the jump.
    """

    time_ns: int
    symbol: str
    quantity: float
    net_position: float
    timestamp: int
    kind: str = "trade"


# One own trade as the trade consumer commits it: (symbol, quantity, the net position it
# resulted in, its timestamp). A plain tuple: a burst builds one per trade.
TradeRow = tuple[str, float, float, int]


class SnapshotInfo(NamedTuple):
    """A snapshot's summary: its id, when it was taken (ns since the epoch), label, size."""

    id: int
    taken_at_ns: int
    label: str
    size: int


class _Checkpointer:
    """Copies the WAL back into the database file in a thread of its own, every ``every``
    commits or sooner once they wrote ``max_rows`` rows, so that no commit waits for it (a
    passive checkpoint on its own connection never blocks the node's writes).

    A checkpoint still slows the commits that run while it flushes (10-50 ms): measured, a
    commit caught in it may take milliseconds. Lone trades write a few rows each, so a
    checkpoint every 1,000 of their commits instead of 200 catches fewer of them; bursts
    write thousands of rows per commit, and ``max_rows`` keeps their WAL about as small as
    before (1,000,000 rows: 120-240 batches of 4,096 trades). See docs/performance.md, "W2
    in round four".
    """

    def __init__(self, path: Path, every: int = 1000, max_rows: int = 1_000_000) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._every = every
        self._max_rows = max_rows
        self._commits = 0  # since the last request, counted by the committing thread
        self._rows_at = 0  # the writer's total_changes at the last request
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()

    def committed(self, total_changes: int) -> None:
        """Count a commit; ``total_changes`` is the writing connection's count of rows
        changed so far (the caller holds the store's publish lock)."""
        self._commits += 1
        if self._commits >= self._every or total_changes - self._rows_at >= self._max_rows:
            self._commits = 0
            self._rows_at = total_changes
            self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._db.close()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # e.g. a full disk: the WAL grows, commits go on
                logger.warning("checkpoint of the store failed: {}; will try again", exc)


# What a commit raises for a bug of ours, not for a fault of the disk (full, read-only, I/O
# errors, a damaged file): those propagate as they are.
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _identity(path: Path) -> tuple[int, int]:
    """The device and inode of the file at ``path`` (raises ``OSError`` if there is none)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class StoreError(Exception):
    """The store cannot be opened or used (a local problem the operator must fix)."""


class Store:
    """One node's SQLite store: ``<data_dir>/<name>.sqlite3``.

    Not thread-safe: the engine calls ``commit`` under its publish lock.
    """

    def __init__(
        self,
        data_dir: Path | str,
        name: str,
        *,
        fsync: bool = False,
        checkpoint_every: int = 1000,
        checkpoint_rows: int = 1_000_000,
    ) -> None:
        self.path = Path(data_dir) / f"{name}.sqlite3"
        self.name = name
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data dir {data_dir}: {exc.strerror or exc}") from exc
        self._lock_file = self._lock(data_dir / f"{name}.lock")
        db = None
        try:
            db = self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            self._check(db)
            # NORMAL in WAL mode survives a crash of this process (kill -9); FULL also
            # survives a power cut, at the cost of an fsync per commit.
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # No checkpoint inside a commit: SQLite's automatic one runs in the commit that
            # fills the WAL and costs milliseconds (an fsync); _Checkpointer does it aside.
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.executescript(_SCHEMA)
            self._init_meta()
            self._identity = _identity(self.path)
            # What waits for a fold (load() folds what a last run left): own trades in the
            # journal, at most this many symbols among them, and positions in the log.
            self._unfolded = 0
            self._unfolded_symbols = 0
            self._logged = 0
            self._log_extra = 0  # positions written to the log beyond one row per batch
            self._checkpointer = _Checkpointer(self.path, checkpoint_every, checkpoint_rows)
        except (sqlite3.Error, StoreError) as exc:
            if db is not None:
                db.close()
            self._lock_file.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use store {self.path}: {exc}") from exc

    def _check(self, db: sqlite3.Connection) -> None:
        """Refuse a store SQLite cannot trust: ``PRAGMA quick_check`` reads every page (the
        b-trees' structure, each cell, each record's format), so damage anywhere is found now,
        not by a later read (measured in docs/operations.md: about 8 ms per MiB from the page
        cache, 30 ms per MiB from disk)."""
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            said = " ".join("; ".join(problems).replace("*** in database main ***", "").split())
            raise StoreError(
                f"store {self.path} is damaged ({said[:200]}): restore it from a"
                " backup, or move it aside and start again to recover this node's positions"
                " from its peers"
            )

    def _lock(self, path: Path) -> IO[bytes]:
        """Take an exclusive lock so that two nodes never share one store."""
        try:
            lock_file = open(path, "ab")  # noqa: SIM115 - held open for the node's lifetime
        except OSError as exc:
            raise StoreError(f"cannot write to data dir {path.parent}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock_file.close()
            raise StoreError(
                f"another node named {self.name!r} is already running on data dir {path.parent}"
            ) from exc
        return lock_file

    def _init_meta(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("strategy", self.name),
                        ("clock", 0),
                        ("recovered", 0),
                        # Journal timestamp after which every trade is this store's own: no
                        # position from before it includes them (see lineage).
                        ("lineage", 0),
                        ("created_at_ns", time.time_ns()),
                        ("folded", 0),
                    ],
                )
            elif rows.get("strategy") == self.name and rows.get("schema_version") == 1:
                # Version 1 wrote each own position in its trade's commit: all folded.
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES"
                    " ('folded', (SELECT coalesce(max(timestamp), 0) FROM journal)),"
                    " ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
            elif rows.get("strategy") != self.name:
                raise StoreError(
                    f"store {self.path} belongs to strategy {rows.get('strategy')!r},"
                    f" not {self.name!r}"
                )
            elif rows.get("schema_version") != SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {rows.get('schema_version')},"
                    f" this program reads version {SCHEMA_VERSION}"
                )
            # A real write now, so a store we cannot write fails here, not on the first trade.
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at_ns', ?)",
                (time.time_ns(),),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @property
    def needs_recovery(self) -> bool:
        """Whether this store has never completed a recovery (new, or created after a loss)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'recovered'").fetchone()
        return row is None or not row[0]

    @property
    def created_at_ns(self) -> int | None:
        """When this store was created (None for a store made before this was recorded)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'created_at_ns'").fetchone()
        return None if row is None else int(row[0])

    def mark_needs_recovery(self) -> None:
        """Make the next start (this one) recover from peers, as a new store would: for a
        store restored from an older copy, whose peers hold newer own positions. The trades
        journalled so far are taken to be in what the peers hold (see ``lineage``)."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value)"
                " VALUES ('lineage', (SELECT coalesce(max(timestamp), 0) FROM journal))"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store in {self.path}: {exc}") from exc
        self._set_meta("recovered", 0)

    @property
    def lineage(self) -> int | None:
        """The journal timestamp after which every trade is this store's own, never in an own
        position learnt back from before this store: 0 for a store created empty (a new or
        lost store), the journal's last timestamp when a restored copy was started with
        ``--recover``; None if unknown (a store made before this was recorded)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'lineage'").fetchone()
        return None if row is None else int(row[0])

    def mark_recovered(self) -> None:
        """Record that the node has its own positions back (or started without them)."""
        self._set_meta("recovered", 1)

    def _set_meta(self, key: str, value: object) -> None:
        try:
            self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store in {self.path}: {exc}") from exc

    def load(self) -> tuple[list[Position], int]:
        """Every stored position, and the clock: the greatest timestamp this node issued or
        learnt of its own, from what is stored (own positions, journal, bases) or the clock
        last committed explicitly. Folds first (see ``fold``): what a crash left unfolded
        is written now."""
        self.fold()
        positions = [
            Position(*row)
            for row in self._db.execute(
                "SELECT strategy, symbol, net_position, timestamp FROM positions"
            )
        ]
        (clock,) = self._db.execute(
            "SELECT max("
            " (SELECT value FROM meta WHERE key = 'clock'),"
            " coalesce((SELECT max(timestamp) FROM positions WHERE strategy = ?), 0),"
            " coalesce((SELECT max(timestamp) FROM journal), 0),"
            " coalesce((SELECT max(timestamp) FROM bases), 0))",
            (self.name,),
        ).fetchone()
        return positions, int(clock)

    def commit(
        self,
        positions: Iterable[Position],
        clock: int | None,
        journal: Iterable[JournalEntry] = (),
        bases: Iterable[Position] = (),
        trade_ids: Iterable[tuple[str, int]] | None = None,
    ) -> None:
        """Store positions (replacing older entries), journal entries, bases, trade IDs
        ``(trade_id, journal timestamp)`` and the clock in one transaction. ``clock`` may be
        None when what is stored implies it (``load`` takes the greatest own timestamp
        stored): the engine's case, one statement less a commit.

        Positions alone (a peer's burst, a repair: no journal entry, base, trade ID or
        clock) go to the position log as one row when there are ``_LOG_MIN`` or more of them,
        or when the log already holds some (its order is the order of the commits); a fold
        writes them to the positions table. Anything else folds the log first."""
        positions = positions if isinstance(positions, list) else list(positions)
        journal = journal if isinstance(journal, list) else list(journal)
        bases = bases if isinstance(bases, list) else list(bases)
        alone = clock is None and not journal and not bases and not trade_ids
        logged = 0
        with self._writing() as db:
            to_log = alone and positions and (self._logged or len(positions) >= _LOG_MIN)
            if to_log and self._log(db, positions):
                logged = len(positions)
                positions = []
            if (positions or not alone) and self._logged:
                self._fold_log(db)
                logged = -self._logged
            self._insert_many(_UPSERT_ROWS, positions)
            self._insert_many(_JOURNAL_ROWS, journal)
            if bases:
                db.executemany(
                    "INSERT OR REPLACE INTO bases (symbol, net_position, timestamp)"
                    " VALUES (?, ?, ?)",
                    [(p.symbol, p.net_position, p.timestamp) for p in bases],
                )
            if trade_ids:
                self._insert_many(_TRADE_ID_ROWS, trade_ids)
            if clock is not None:
                db.execute("UPDATE meta SET value = ? WHERE key = 'clock'", (clock,))
        self._logged += logged

    def _log(self, db: sqlite3.Connection, positions: list[Position]) -> bool:
        """Write ``positions`` to the position log as one row; False (nothing written) if
        they cannot be written so (a timestamp outside 64 bits, a newline in a name)."""
        count = len(positions)
        names = {*map(_STRATEGY_OF, positions)}
        if len(names) == 1:
            (strategies,) = names
        else:
            strategies = "\n".join(map(_STRATEGY_OF, positions))
        symbols = "\n".join(map(_SYMBOL_OF, positions))
        timestamps = list(map(_TIMESTAMP_OF, positions))
        if (
            symbols.count("\n") != count - 1
            or strategies.count("\n") not in (0, count - 1)
            or not -_INT64 <= min(timestamps) <= max(timestamps) < _INT64
        ):
            return False
        db.execute(
            "INSERT INTO position_log (strategies, symbols, nets, timestamps) VALUES (?, ?, ?, ?)",
            (
                strategies,
                symbols,
                struct.pack(f"<{count}d", *map(_NET_OF, positions)),
                struct.pack(f"<{count}q", *timestamps),
            ),
        )
        self._log_extra += count - 1
        return True

    def commit_trades(
        self,
        time_ns: int,
        trades: list[TradeRow],
        trade_ids: Iterable[tuple[str, int]] | None = None,
        symbols: int | None = None,
    ) -> None:
        """Store own trades applied at ``time_ns``, in the order applied (so by increasing
        timestamp), in one transaction: a journal entry each, and the trade IDs given
        ``(trade_id, journal timestamp)``. The trade consumer's commit: each trade's values
        are bound once, for its journal entry. ``symbols``: how many symbols they are in,
        if the caller knows (it chooses how ``fold`` writes them).

        The position each trade leaves is in its journal entry: it is written to the
        positions table later, by ``fold``, for many trades at a time (``committed`` and
        ``read_book`` read the journal meanwhile). A second B-tree written on every trade
        cost as much as the journal's own.
        """
        if not trades:
            return
        with self._writing():
            self._insert_many(_TRADE_ROWS, trades, (time_ns,))
            if trade_ids:
                self._insert_many(_TRADE_ID_ROWS, trade_ids)
        self._unfolded += len(trades)
        self._unfolded_symbols += len(trades) if symbols is None else symbols

    @property
    def unfolded(self) -> int:
        """Positions committed but not yet in the positions table: own trades in the journal
        and positions in the position log, which ``fold`` writes there."""
        return self._unfolded + self._logged

    @property
    def fold_due(self) -> bool:
        """Whether ``fold`` should run now whatever the load: ``FOLD_MAX_ROWS`` own trades or
        logged positions wait for it (which bounds the work a start after a crash finds, and
        a fold's pause)."""
        return self._unfolded >= FOLD_MAX_ROWS or self._logged >= FOLD_MAX_ROWS

    def fold(self) -> None:
        """Write what waits to the positions table, in one transaction: the positions of
        the position log, in the order committed, then the own positions the journal's
        entries since the last fold leave (the last entry of each symbol). What ``load``, a
        snapshot and a reader of the table see. Raises ``StoreError`` if it cannot (the log
        and the journal keep them; a later fold writes them)."""
        with self._writing() as db:
            self._fold(db)
        self._folded()

    def _fold(self, db: sqlite3.Connection) -> None:
        """``fold``'s statements, in the caller's transaction; ``_folded`` once committed."""
        self._fold_log(db)
        # At most this many symbols (the sum over the commits): grouped when rows share them.
        grouped = 2 * self._unfolded_symbols < self._unfolded
        statement = _FOLD_GROUPED if grouped else _FOLD_IN_ORDER
        db.execute(statement, (self.name, db.execute(_FOLDED).fetchone()[0]))
        db.execute(
            "UPDATE meta SET value = (SELECT coalesce(max(timestamp), 0) FROM journal)"
            " WHERE key = 'folded'"
        )

    def _folded(self) -> None:
        self._unfolded = self._unfolded_symbols = self._logged = 0

    def _fold_log(self, db: sqlite3.Connection) -> None:
        """Write the position log's positions to the positions table in the order committed
        (a later one replaces an earlier one of its symbol, as each commit did), and empty
        the log, in the caller's transaction."""
        for positions in _logged_batches(db):
            self._insert_many(_UPSERT_ROWS, positions)
        db.execute("DELETE FROM position_log")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction of the node's commits: the file checked first, rolled back
        on any failure (SQLite's own as a ``StoreError``), counted for the checkpointer once
        committed."""
        db = self._db
        self._check_file()
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            self._roll_back()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, _BUGS):
                raise StoreError(f"cannot store in {self.path}: {exc}") from exc
            raise
        # A logged batch is one row for SQLite but as many for the WAL's size: counted so.
        self._checkpointer.committed(db.total_changes + self._log_extra)

    def _roll_back(self) -> None:
        """Roll back the open transaction, if SQLite has not already (it does by itself on
        a full disk): never hide the cause behind "no transaction is active"."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _check_file(self) -> None:
        """Raise ``StoreError`` if the store's file was removed or replaced since it was
        opened: writes would go to a file that no longer exists under its name (one stat)."""
        try:
            same = _identity(self.path) == self._identity
        except OSError:
            same = False
        if not same:
            raise StoreError(
                f"store {self.path} was removed or replaced under the running node: nothing"
                " more can be stored; restart the node (it recovers its positions from peers)"
            )

    def committed(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Position]:
        """The stored position of each ``(strategy, symbol)`` in ``keys`` that has one: what
        the engine puts back in its book when a commit fails: the positions table's, then the
        position log's in order, then for an own position the last journal entry not folded
        yet if it is newer (one pass over each)."""
        keys = list(keys)
        found: dict[tuple[str, str], Position] = {}
        for strategy, symbol in keys:
            row = self._db.execute(
                "SELECT strategy, symbol, net_position, timestamp FROM positions"
                " WHERE strategy = ? AND symbol = ?",
                (strategy, symbol),
            ).fetchone()
            if row is not None:
                found[strategy, symbol] = Position(*row)
        _add_unfolded(self._db, self.name, found, set(keys))
        return found

    def _insert_many(
        self,
        statement: tuple[str, str, str],
        rows: Iterable[tuple[Any, ...]],
        shared: tuple[Any, ...] = (),
    ) -> None:
        """Run an insert for many rows, ``_ROWS_PER_STATEMENT`` at a time, then the rest in
        halving sizes (128, 64, ... 1 rows): one statement for many rows costs SQLite and the
        sqlite3 module half as much per row as executemany, and the few sizes keep the
        statements in the module's cache.

        ``statement`` is (the insert up to VALUES, one row's placeholders, what follows);
        ``shared`` are the values of numbered parameters every row uses (``?1``...), bound
        once per statement.
        """
        rows = list(rows)
        head, values, tail = statement
        flat = itertools.chain.from_iterable
        execute = self._db.execute
        size = _ROWS_PER_STATEMENT
        start = 0
        while start < len(rows):
            while len(rows) - start < size:
                size //= 2
            sql = head + ", ".join([values] * size) + tail
            execute(sql, [*shared, *flat(rows[start : start + size])])
            start += size

    def history(self, symbol: str, limit: int) -> list[JournalEntry]:
        """The last ``limit`` own trades in ``symbol``, oldest first."""
        rows = self._db.execute(
            "SELECT time_ns, symbol, quantity, net_position, timestamp, kind FROM journal"
            " WHERE symbol = ? ORDER BY timestamp DESC LIMIT ?",
            (symbol, limit),
        ).fetchall()
        return [JournalEntry(*row) for row in reversed(rows)]

    def trades(self, trade_ids: list[str]) -> dict[str, tuple[str, float, float, int]]:
        """The trades applied under any of ``trade_ids``: ID -> (symbol, quantity, and the net
        position and timestamp it produced). One query per 500 IDs: a look-up costs most of
        its time in starting a read, not in the index."""
        found: dict[str, tuple[str, float, float, int]] = {}
        for start in range(0, len(trade_ids), 500):
            chunk = trade_ids[start : start + 500]
            rows = self._db.execute(
                "SELECT t.trade_id, j.symbol, j.quantity, j.net_position, j.timestamp"
                " FROM trade_ids AS t JOIN journal AS j ON j.timestamp = t.timestamp"
                f" WHERE t.trade_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for trade_id, symbol, quantity, net, timestamp in rows:
                found[trade_id] = (symbol, quantity, net, timestamp)
        return found

    def issued(self, symbol: str, timestamp: int) -> bool:
        """Whether this store's journal holds a change of ``symbol`` stamped ``timestamp``."""
        row = self._db.execute(
            "SELECT 1 FROM journal WHERE symbol = ? AND timestamp = ?", (symbol, timestamp)
        ).fetchone()
        return row is not None

    def quantities(self, symbol: str, after: int = 0) -> list[float]:
        """The quantities of the journalled trades (not rebases) in ``symbol`` stamped after
        ``after``, in the order applied."""
        rows = self._db.execute(
            "SELECT quantity FROM journal WHERE timestamp > ? AND symbol = ? AND kind = 'trade'"
            " ORDER BY timestamp",
            (after, symbol),
        )
        return [quantity for (quantity,) in rows]

    def disagreements(self, strategy: str) -> list[tuple[Position, tuple[float, int] | None]]:
        """Own positions that no journal entry or base records as they are stored (a changed
        value or timestamp), each with what the records say it is: (net, timestamp) of the
        latest journal entry or base of its symbol, or None if there is none.

        One pass over the strategy's positions with a lookup of each in the journal (keyed
        by timestamp) and the bases: a handful of milliseconds per 10,000 positions.
        """
        rows = self._db.execute(
            "SELECT p.symbol, p.net_position, p.timestamp FROM positions p"
            " LEFT JOIN journal j ON j.timestamp = p.timestamp"
            " LEFT JOIN bases b ON b.symbol = p.symbol AND b.timestamp = p.timestamp"
            " WHERE p.strategy = ?"
            " AND NOT (j.symbol IS p.symbol AND j.net_position = p.net_position)"
            " AND NOT (b.net_position IS NOT NULL AND b.net_position = p.net_position)",
            (strategy,),
        ).fetchall()
        found: list[tuple[Position, tuple[float, int] | None]] = []
        for symbol, net, timestamp in rows:
            records = [
                self._db.execute(
                    "SELECT net_position, timestamp FROM journal WHERE symbol = ?"
                    " ORDER BY timestamp DESC LIMIT 1",
                    (symbol,),
                ).fetchone(),
                self._db.execute(
                    "SELECT net_position, timestamp FROM bases WHERE symbol = ?", (symbol,)
                ).fetchone(),
            ]
            latest = max((r for r in records if r is not None), key=lambda r: r[1], default=None)
            found.append((Position(strategy, symbol, net, timestamp), latest))
        return found

    def remove(self, strategy: str, symbols: Iterable[str]) -> None:
        """Delete the positions of ``strategy`` in ``symbols`` (a repair from their owner,
        which holds none of them), in one transaction."""
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                if self._logged:
                    self._fold_log(db)  # (its count is reset once committed)
                db.executemany(
                    "DELETE FROM positions WHERE strategy = ? AND symbol = ?",
                    [(strategy, symbol) for symbol in symbols],
                )
                db.execute("COMMIT")
                self._logged = 0
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store in {self.path}: {exc}") from exc

    def bases(self) -> dict[str, int]:
        """Symbol -> timestamp of the base position the journal's trades build on."""
        return dict(self._db.execute("SELECT symbol, timestamp FROM bases").fetchall())

    def snapshot(self, label: str, taken_at_ns: int) -> SnapshotInfo:
        """Copy every stored position into a new snapshot, atomically; return its summary."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._fold(db)
            cursor = db.execute(
                "INSERT INTO snapshots (taken_at_ns, label, size)"
                " VALUES (?, ?, (SELECT count(*) FROM positions))",
                (taken_at_ns, label),
            )
            snapshot_id = cursor.lastrowid
            db.execute(
                "INSERT INTO snapshot_positions"
                " SELECT ?, strategy, symbol, net_position, timestamp FROM positions",
                (snapshot_id,),
            )
            row = db.execute(
                "SELECT id, taken_at_ns, label, size FROM snapshots WHERE id = ?", (snapshot_id,)
            ).fetchone()
            db.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise
        self._folded()
        return SnapshotInfo(*row)

    def close(self) -> None:
        """Close the database and release the lock; idempotent."""
        if self._lock_file.closed:
            return
        if self.unfolded:
            # A store left folded: its positions table is the whole book.
            with contextlib.suppress(StoreError):
                self.fold()
        self._checkpointer.close()
        with contextlib.suppress(sqlite3.Error):  # leave a short WAL behind, if we can
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._lock_file.close()

    def __repr__(self) -> str:
        return f"Store({os.fspath(self.path)!r})"


def _logged_batches(db: sqlite3.Connection) -> Iterator[list[Position]]:
    """The position log's batches, in the order committed."""
    rows = db.execute(
        "SELECT strategies, symbols, nets, timestamps FROM position_log ORDER BY id"
    ).fetchall()
    for strategies, symbols, nets, timestamps in rows:
        names = symbols.split("\n")
        count = len(names)
        yield list(
            map(
                _AS_POSITION,
                zip(
                    strategies.split("\n") if "\n" in strategies else [strategies] * count,
                    names,
                    struct.unpack(f"<{count}d", nets),
                    struct.unpack(f"<{count}q", timestamps),
                    strict=True,
                ),
            )
        )


def _add_unfolded(
    db: sqlite3.Connection,
    own: str,
    book: dict[tuple[str, str], Position],
    wanted: set[tuple[str, str]] | None = None,
) -> None:
    """Bring ``book`` (read from the positions table) up to what waits for a fold, for the
    keys ``wanted`` (None: all): the position log's positions, in the order committed, then
    each own symbol's last journal entry not folded yet (meta 'folded'), where newer. What
    a fold would write, as ``load`` would then read it."""
    for positions in _logged_batches(db):
        for position in positions:
            key = (position[0], position[1])
            if wanted is None or key in wanted:
                book[key] = position
    if wanted is not None and not any(strategy == own for strategy, _ in wanted):
        return
    unfolded = db.execute(
        "SELECT symbol, net_position, max(timestamp) FROM journal"
        f" WHERE timestamp > coalesce(({_FOLDED}), 0) GROUP BY symbol"
    )
    for symbol, net, timestamp in unfolded:
        key = (own, symbol)
        if wanted is not None and key not in wanted:
            continue
        current = book.get(key)
        if current is None or current.timestamp < timestamp:
            book[key] = Position(own, symbol, net, timestamp)


def read_book(path: Path | str) -> dict[tuple[str, str], Position]:
    """Every position a store file holds, as its node sees it, read without opening the
    store (read-only: safe while the node runs): the positions table, with what waits for
    a fold (the position log's positions, in order, and the own positions of the journal
    entries not folded yet, where newer)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        db.execute("BEGIN")  # one read transaction: a consistent view of the three
        book = {
            (strategy, symbol): Position(strategy, symbol, net, timestamp)
            for strategy, symbol, net, timestamp in db.execute(
                "SELECT strategy, symbol, net_position, timestamp FROM positions"
            )
        }
        (own,) = db.execute("SELECT value FROM meta WHERE key = 'strategy'").fetchone()
        _add_unfolded(db, str(own), book)
        db.execute("COMMIT")
        return book
    finally:
        db.close()
