"""The store: the node's book and clock in a SQLite file (WAL mode), one transaction per batch."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .types import Position

__all__ = ["SCHEMA_VERSION", "Store", "StoreError"]

SCHEMA_VERSION = 1

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
"""

_UPSERT = (
    "INSERT INTO positions (strategy, symbol, net_position, timestamp) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (strategy, symbol) DO UPDATE"
    " SET net_position = excluded.net_position, timestamp = excluded.timestamp"
)


class StoreError(Exception):
    """The store cannot be opened or used (a local problem the operator must fix)."""


class Store:
    """One node's SQLite store: ``<data_dir>/<name>.sqlite3``.

    Not thread-safe: the engine calls ``commit`` under its publish lock.
    """

    def __init__(self, data_dir: Path | str, name: str, *, fsync: bool = False) -> None:
        self.path = Path(data_dir) / f"{name}.sqlite3"
        self.name = name
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data dir {data_dir}: {exc.strerror or exc}") from exc
        self._lock_file = self._lock(data_dir / f"{name}.lock")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of this process (kill -9); FULL also
            # survives a power cut, at the cost of an fsync per commit.
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            self._init_meta()
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise StoreError(f"cannot use store {self.path}: {exc}") from exc

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
                    ],
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def needs_recovery(self) -> bool:
        """Whether this store has never completed a recovery (new, or created after a loss)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'recovered'").fetchone()
        return row is None or not row[0]

    def mark_recovered(self) -> None:
        """Record that the node has its own positions back (or started without them)."""
        self._db.execute("UPDATE meta SET value = 1 WHERE key = 'recovered'")

    def load(self) -> tuple[list[Position], int]:
        """Every stored position and the stored clock."""
        positions = [
            Position(*row)
            for row in self._db.execute(
                "SELECT strategy, symbol, net_position, timestamp FROM positions"
            )
        ]
        (clock,) = self._db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()
        return positions, int(clock)

    def commit(self, positions: Iterable[Position], clock: int) -> None:
        """Store ``positions`` (replacing older entries) and the clock in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(_UPSERT, positions)
            db.execute("UPDATE meta SET value = ? WHERE key = 'clock'", (clock,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database and release the lock; idempotent."""
        if self._lock_file.closed:
            return
        self._db.close()
        self._lock_file.close()

    def __repr__(self) -> str:
        return f"Store({os.fspath(self.path)!r})"
