"""Store: the book and clock in a real SQLite file, one transaction per commit, one owner."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from position_distributor.store import (
    SCHEMA_VERSION,
    JournalEntry,
    Store,
    StoreError,
    read_book,
)
from position_distributor.types import Position

from .procs import run_as_user
from .waiting import wait_until

AAPL = Position("alpha", "AAPL", 100.0, 1_742_308_549_773_254_000)
MSFT = Position("alpha", "MSFT", -5.5, 1_742_308_549_773_254_001)
THEIRS = Position("beta", "7203", 42.0, 1_742_308_549_000_000_000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path, "alpha")
    try:
        yield store
    finally:
        store.close()


def read_rows(path: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """What another process reading the file would see."""
    return {key: (p.net_position, p.timestamp) for key, p in read_book(path).items()}


def read_meta(path: Path) -> dict[str, object]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())


def test_store_file_is_named_after_the_strategy_and_in_wal_mode(
    tmp_path: Path, store: Store
) -> None:
    """The store lives at ``<data_dir>/<name>.sqlite3`` and uses SQLite's WAL journal."""
    assert store.path == tmp_path / "alpha.sqlite3"
    assert store.path.is_file()
    with sqlite3.connect(store.path) as db:
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_a_new_store_is_empty_with_a_zero_clock(store: Store) -> None:
    """A freshly created store holds no position and a clock of 0."""
    assert store.load() == ([], 0)
    meta = read_meta(store.path)
    assert meta["strategy"] == "alpha"
    assert meta["schema_version"] == SCHEMA_VERSION


def test_committed_positions_and_clock_load_back_after_reopening(tmp_path: Path) -> None:
    """What is committed, own and other strategies' positions and the clock, survives a reopen."""
    store = Store(tmp_path, "alpha")
    store.commit([AAPL, THEIRS], clock=AAPL.timestamp)
    store.commit([MSFT], clock=MSFT.timestamp)
    store.close()

    reopened = Store(tmp_path, "alpha")
    try:
        positions, clock = reopened.load()
    finally:
        reopened.close()
    assert sorted(positions) == sorted([AAPL, MSFT, THEIRS])
    assert clock == MSFT.timestamp


def test_commit_replaces_the_older_entry_of_a_position(store: Store) -> None:
    """Committing a position again replaces its net and timestamp, keeping one row per key."""
    store.commit([AAPL], clock=AAPL.timestamp)
    newer = AAPL._replace(net_position=150.0, timestamp=AAPL.timestamp + 10)
    store.commit([newer], clock=newer.timestamp)

    assert store.load() == ([newer], newer.timestamp)
    assert read_rows(store.path) == {("alpha", "AAPL"): (150.0, newer.timestamp)}


def test_a_commit_is_visible_to_another_reader_as_soon_as_it_returns(store: Store) -> None:
    """Once commit returns, a separate connection to the file (another process) sees the rows."""
    store.commit([AAPL, THEIRS], clock=AAPL.timestamp)
    assert read_rows(store.path) == {
        ("alpha", "AAPL"): (100.0, AAPL.timestamp),
        ("beta", "7203"): (42.0, THEIRS.timestamp),
    }
    assert read_meta(store.path)["clock"] == AAPL.timestamp


def test_a_clock_of_nanoseconds_is_stored_exactly(store: Store) -> None:
    """A 19-digit nanosecond clock is stored and loaded without loss of precision."""
    clock = 9_223_372_036_854_775_807  # the largest SQLite integer
    store.commit([], clock=clock)
    assert store.load()[1] == clock


def test_a_failure_inside_a_commit_rolls_the_whole_transaction_back(store: Store) -> None:
    """If one row of a batch fails, no row of that batch and not its clock is stored."""
    store.commit([AAPL], clock=AAPL.timestamp)
    bad = Position("alpha", None, 1.0, 5)  # type: ignore[arg-type]  # NOT NULL symbol

    changed = AAPL._replace(net_position=999.0, timestamp=AAPL.timestamp + 1)
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([changed, THEIRS, bad], clock=AAPL.timestamp + 1)

    assert store.load() == ([AAPL], AAPL.timestamp)
    assert read_rows(store.path) == {("alpha", "AAPL"): (100.0, AAPL.timestamp)}


def test_an_exception_from_the_positions_iterable_rolls_back(store: Store) -> None:
    """A batch whose producer raises half-way leaves the store as it was before the commit."""

    def positions() -> Iterator[Position]:
        yield MSFT
        raise KeyError("producer failed")

    with pytest.raises(KeyError):
        store.commit(positions(), clock=MSFT.timestamp)

    assert store.load() == ([], 0)


def test_the_store_stays_usable_after_a_failed_commit(store: Store) -> None:
    """A rolled-back commit leaves no transaction open: the next commit succeeds."""
    bad = Position("alpha", None, 1.0, 5)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([bad], clock=5)

    store.commit([AAPL], clock=AAPL.timestamp)
    assert read_rows(store.path) == {("alpha", "AAPL"): (100.0, AAPL.timestamp)}


def test_journal_entries_and_bases_commit_with_the_positions_or_not_at_all(store: Store) -> None:
    """A journal entry that cannot be stored rolls back that commit's positions and clock."""
    trade = JournalEntry(1, "AAPL", 100.0, 100.0, AAPL.timestamp)
    bad = JournalEntry(2, None, 1.0, 101.0, AAPL.timestamp + 1)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([AAPL], AAPL.timestamp, [trade, bad], bases=[MSFT])

    assert store.load() == ([], 0)
    assert store.history("AAPL", 10) == []
    assert store.bases() == {}

    store.commit([AAPL], AAPL.timestamp, [trade], bases=[MSFT])
    assert store.history("AAPL", 10) == [trade]
    assert store.bases() == {"MSFT": MSFT.timestamp}


@pytest.mark.parametrize("count", [1, 3, 256, 700])
def test_commit_trades_journals_each_and_stores_each_symbols_last(
    tmp_path: Path, store: Store, count: int
) -> None:
    """Own trades committed together: a journal entry each (kind 'trade', the time given),
    each symbol's last trade as this strategy's position, the trade IDs, and a peer's
    position left as it was; committed in one transaction, as ``commit`` would have."""
    store.commit([THEIRS], None)
    start = AAPL.timestamp
    trades = [(f"S{i % 7}", float(i + 1), float(i * 3), start + i) for i in range(count)]
    store.commit_trades(5, trades, [("id-1", start)])
    last = {symbol: (net, ts) for symbol, _, net, ts in trades}
    expected = {("alpha", symbol): value for symbol, value in last.items()}
    expected[THEIRS[:2]] = THEIRS[2:]
    assert read_rows(store.path) == expected
    assert store.history("S0", 1000) == [
        JournalEntry(5, symbol, quantity, net, ts)
        for symbol, quantity, net, ts in trades
        if symbol == "S0"
    ]
    assert store.trades(["id-1"]) == {"id-1": ("S0", 1.0, 0.0, start)}
    assert store.load()[1] == start + count - 1  # the clock, implied by the journal


def test_commit_trades_is_all_or_nothing(store: Store) -> None:
    """A batch of trades that cannot be stored whole (a trade ID used twice) leaves nothing
    of it: no journal entry, no position."""
    trades = [("AAPL", 1.0, 1.0, 10), ("MSFT", 2.0, 2.0, 11)]
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_trades(5, trades, [("same", 10), ("same", 11)])
    assert store.load() == ([], 0)
    assert store.history("AAPL", 10) == []


def test_the_journal_knows_what_this_store_issued_and_the_trades_since(store: Store) -> None:
    """issued() finds a journalled timestamp; quantities() lists trades in order, not rebases."""
    entries = [
        JournalEntry(1, "AAPL", 10.0, 10.0, 100),
        JournalEntry(2, "MSFT", 1.0, 1.0, 101),
        JournalEntry(3, "AAPL", 90.0, 100.0, 102, "rebase"),
        JournalEntry(4, "AAPL", -3.0, 97.0, 103),
    ]
    store.commit([Position("alpha", "AAPL", 97.0, 103)], 103, entries)

    assert store.issued("AAPL", 100) and store.issued("AAPL", 103)
    assert not store.issued("AAPL", 101)  # MSFT's timestamp
    assert not store.issued("AAPL", 99)
    assert store.quantities("AAPL") == [10.0, -3.0]
    assert [e.kind for e in store.history("AAPL", 10)] == ["trade", "rebase", "trade"]
    assert store.history("AAPL", 2) == entries[2:]


def test_a_new_store_needs_recovery_until_marked_recovered(tmp_path: Path) -> None:
    """A new store needs recovery; mark_recovered clears that, and it persists across reopen."""
    store = Store(tmp_path, "alpha")
    assert store.needs_recovery
    store.commit([AAPL], clock=AAPL.timestamp)
    assert store.needs_recovery  # positions alone do not end the recovery
    store.mark_recovered()
    assert not store.needs_recovery
    store.close()

    reopened = Store(tmp_path, "alpha")
    try:
        assert not reopened.needs_recovery
    finally:
        reopened.close()


def test_a_deleted_store_needs_recovery_again(tmp_path: Path) -> None:
    """Deleting the store file and reopening gives an empty store that needs recovery."""
    store = Store(tmp_path, "alpha")
    store.commit([AAPL], clock=AAPL.timestamp)
    store.mark_recovered()
    store.close()
    for path in tmp_path.glob("alpha.sqlite3*"):
        path.unlink()

    reopened = Store(tmp_path, "alpha")
    try:
        assert reopened.needs_recovery
        assert reopened.load() == ([], 0)
    finally:
        reopened.close()


def test_a_second_store_on_the_same_data_dir_and_name_is_refused(
    tmp_path: Path, store: Store
) -> None:
    """While a store is open, opening the same name in the same dir raises a clear StoreError."""
    with pytest.raises(StoreError, match=r"another node named 'alpha' is already running"):
        Store(tmp_path, "alpha")


def test_the_lock_is_released_by_close(tmp_path: Path) -> None:
    """After close, the same store can be opened again and holds what was committed."""
    first = Store(tmp_path, "alpha")
    first.commit([AAPL], clock=AAPL.timestamp)
    first.close()
    first.close()  # idempotent

    second = Store(tmp_path, "alpha")
    try:
        assert second.load() == ([AAPL], AAPL.timestamp)
    finally:
        second.close()


def test_stores_of_two_strategies_share_a_data_dir(tmp_path: Path, store: Store) -> None:
    """Another strategy's store in the same data dir opens beside ours, with its own file."""
    other = Store(tmp_path, "beta")
    try:
        other.commit([THEIRS], clock=0)
        store.commit([AAPL], clock=AAPL.timestamp)
        assert other.path != store.path
        assert other.load()[0] == [THEIRS]
        assert store.load()[0] == [AAPL]
    finally:
        other.close()


def test_a_store_of_another_strategy_is_refused(tmp_path: Path) -> None:
    """A store file created by strategy alpha, renamed for beta, is refused and left unchanged."""
    alpha = Store(tmp_path / "a", "alpha")
    alpha.commit([AAPL], clock=AAPL.timestamp)
    alpha.close()
    (tmp_path / "b").mkdir()
    os.rename(tmp_path / "a" / "alpha.sqlite3", tmp_path / "b" / "beta.sqlite3")

    with pytest.raises(StoreError, match=r"belongs to strategy 'alpha', not 'beta'"):
        Store(tmp_path / "b", "beta")

    assert read_meta(tmp_path / "b" / "beta.sqlite3")["strategy"] == "alpha"
    # The refused open released its lock: the right name can still be used there.
    Store(tmp_path / "b", "gamma").close()


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    """A store written by a program with another schema version is refused with both versions."""
    Store(tmp_path, "alpha").close()
    with sqlite3.connect(tmp_path / "alpha.sqlite3") as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")

    with pytest.raises(StoreError, match=rf"schema version 99.*version {SCHEMA_VERSION}"):
        Store(tmp_path, "alpha")


def test_a_file_that_is_not_a_database_gives_a_store_error(tmp_path: Path) -> None:
    """A store file holding garbage raises StoreError naming the file, not a raw sqlite3 error."""
    (tmp_path / "alpha.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot use store .*alpha\.sqlite3"):
        Store(tmp_path, "alpha")
    Store(tmp_path, "beta").close()  # the failed open left nothing locked or broken


def test_a_data_dir_that_cannot_be_created_gives_a_clear_store_error(tmp_path: Path) -> None:
    """A data dir below a regular file raises StoreError naming the dir and the reason."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    data_dir = blocker / "data"
    with pytest.raises(
        StoreError, match=rf"(?i)cannot create data dir {re.escape(str(data_dir))}: not a directory"
    ):
        Store(data_dir, "alpha")


def test_a_data_dir_where_the_lock_cannot_be_written_gives_a_store_error(tmp_path: Path) -> None:
    """A data dir where the lock file cannot be created raises StoreError naming the dir."""
    (tmp_path / "alpha.lock").mkdir()
    with pytest.raises(
        StoreError,
        match=rf"(?i)cannot write to data dir {re.escape(str(tmp_path))}: is a directory",
    ):
        Store(tmp_path, "alpha")


def open_store_as_user(data_dir: Path) -> str:
    """Open a Store on ``data_dir`` in a child that obeys file permissions (tests run as
    root); the StoreError's message it printed, or '' if the store opened."""
    result = run_as_user(
        "import sys\n"
        "from pathlib import Path\n"
        "from position_distributor.store import Store, StoreError\n"
        "try:\n"
        f"    Store(Path({str(data_dir)!r}), 'alpha').close()\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_read_only_store_file_is_refused_when_opened(tmp_path: Path) -> None:
    """A store file that cannot be written fails at open, not at the first trade."""
    Store(tmp_path, "alpha").close()
    assert open_store_as_user(tmp_path) == ""  # the child can open a writable store
    for path in tmp_path.glob("alpha.sqlite3*"):
        path.chmod(0o444)
    assert re.search(r"cannot use store .*alpha\.sqlite3", open_store_as_user(tmp_path))


def test_a_read_only_data_dir_gives_a_clear_store_error(tmp_path: Path) -> None:
    """A data dir without write permission raises StoreError saying permission is denied."""
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    data_dir.chmod(0o555)
    message = open_store_as_user(data_dir)
    assert re.search(
        rf"(?i)cannot write to data dir {re.escape(str(data_dir))}: permission", message
    ), message


def _main_file_size(store: Store) -> int:
    """Bytes in the database file itself: only a checkpoint writes there (commits go to the WAL)."""
    return store.path.stat().st_size


def test_lone_commits_are_checkpointed_every_thousand_commits(store: Store) -> None:
    """A commit of one position each: the WAL is copied into the database file at the
    1,000th commit, not before (a checkpoint slows the commits made during it)."""
    before = _main_file_size(store)
    for i in range(999):
        store.commit([AAPL._replace(symbol=f"S{i:04d}", timestamp=AAPL.timestamp + i)], None)
    assert _main_file_size(store) == before
    store.commit([AAPL._replace(symbol="S0999", timestamp=AAPL.timestamp + 999)], None)
    wait_until(lambda: _main_file_size(store) > before, what="a checkpoint after 1,000 commits")


def test_commits_of_many_rows_are_checkpointed_sooner(tmp_path: Path) -> None:
    """Once the commits since the last checkpoint wrote ``checkpoint_rows`` rows, the next
    checkpoint starts, however few commits that took (a burst's WAL stays small)."""
    store = Store(tmp_path, "alpha", checkpoint_rows=500)
    try:
        before = _main_file_size(store)
        rows = [AAPL._replace(symbol=f"S{i:04d}", timestamp=AAPL.timestamp + i) for i in range(500)]
        store.commit(rows, None)
        wait_until(lambda: _main_file_size(store) > before, what="a checkpoint after 500 rows")
    finally:
        store.close()


def read_table(path: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """The positions table alone (without the journal entries not folded into it yet)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT strategy, symbol, net_position, timestamp FROM positions")
        return {(s, sym): (net, ts) for s, sym, net, ts in rows}


def own_trades(start: int, count: int, symbols: int) -> list[tuple[str, float, float, int]]:
    """``count`` own trades over ``symbols`` symbols, stamped from ``start``, each adding 1."""
    nets: dict[str, float] = {}
    trades = []
    for i in range(count):
        symbol = f"S{i % symbols}"
        nets[symbol] = nets.get(symbol, 0.0) + 1.0
        trades.append((symbol, 1.0, nets[symbol], start + i))
    return trades


def test_own_positions_reach_the_positions_table_by_a_fold_and_the_book_view_meanwhile(
    store: Store,
) -> None:
    """A trade's commit writes its journal entry only: the positions table gets the own
    positions when the journal is folded (each symbol's last entry), and the ``book`` view
    shows them from the commit on, as a reader of the file should see them."""
    store.commit([THEIRS], None)
    trades = own_trades(AAPL.timestamp, 50, 7)
    store.commit_trades(5, trades)
    expected = {("alpha", symbol): (net, ts) for symbol, _, net, ts in trades}
    expected[THEIRS[:2]] = THEIRS[2:]
    assert read_table(store.path) == {THEIRS[:2]: THEIRS[2:]}
    assert read_rows(store.path) == expected
    assert store.unfolded == 50
    # What a failed commit puts back in the book: the journal's, not yet in the table.
    keys = [("alpha", "S0"), ("alpha", "S6"), THEIRS[:2], ("alpha", "none")]
    assert store.committed(keys) == {
        key: Position(*key, *expected[key]) for key in keys if key in expected
    }
    store.fold()
    assert store.unfolded == 0
    assert read_table(store.path) == expected == read_rows(store.path)
    assert read_meta(store.path)["folded"] == trades[-1][3]


def test_a_fold_never_takes_a_position_back_to_an_older_journal_entry(store: Store) -> None:
    """A base learnt from a peer (an own position written by ``commit``, stamped after the
    journal's last entry of its symbol) stays: the newer timestamp wins, in the table and in
    the view, as in the book."""
    trades = own_trades(AAPL.timestamp, 3, 1)
    store.commit_trades(5, trades)
    newer = Position("alpha", "S0", 77.0, trades[-1][3] + 10)
    store.commit([newer], None, bases=[newer])
    assert read_rows(store.path)[("alpha", "S0")] == (77.0, newer.timestamp)
    store.fold()
    assert read_table(store.path)[("alpha", "S0")] == (77.0, newer.timestamp)
    assert store.committed([("alpha", "S0")]) == {("alpha", "S0"): newer}


def test_a_crash_before_a_fold_loses_nothing(tmp_path: Path) -> None:
    """A store dropped without ``close`` (the node killed) still holds every committed own
    position in its journal: the next ``load`` folds them and returns them."""
    store = Store(tmp_path, "alpha")
    trades = own_trades(AAPL.timestamp, 10, 4)
    store.commit_trades(5, trades)
    # What kill -9 leaves: the connection is not closed by us, only its lock file.
    store._checkpointer.close()
    store._lock_file.close()
    assert read_table(tmp_path / "alpha.sqlite3") == {}

    again = Store(tmp_path, "alpha")
    try:
        positions, clock = again.load()
        expected = {(p.symbol, p.net_position, p.timestamp) for p in positions}
        assert expected == {(s, net, ts) for s, net, ts in _last_of(trades)}
        assert clock == trades[-1][3]
        assert len(read_table(again.path)) == 4
    finally:
        again.close()
        store._db.close()


def _last_of(trades: list[tuple[str, float, float, int]]) -> set[tuple[str, float, int]]:
    last = {symbol: (net, ts) for symbol, _, net, ts in trades}
    return {(symbol, net, ts) for symbol, (net, ts) in last.items()}


def test_close_folds_and_a_snapshot_includes_what_is_not_folded(tmp_path: Path) -> None:
    """A snapshot copies the whole book, own trades not folded yet included; a store closed
    is left folded (its positions table reads the same as its view)."""
    store = Store(tmp_path, "alpha")
    trades = own_trades(AAPL.timestamp, 20, 5)
    store.commit_trades(5, trades)
    info = store.snapshot("after", 1)
    assert info.size == 5
    more = own_trades(trades[-1][3] + 1, 3, 2)
    store.commit_trades(6, more)
    assert store.unfolded == 3
    store.close()
    assert read_table(tmp_path / "alpha.sqlite3") == read_rows(tmp_path / "alpha.sqlite3")
    assert ("alpha", "S0") in read_table(tmp_path / "alpha.sqlite3")


def test_a_fold_is_due_once_many_trades_wait(store: Store) -> None:
    """``fold_due`` once ``FOLD_MAX_ROWS`` own trades wait for a fold, not before."""
    from position_distributor.store import FOLD_MAX_ROWS

    trades = own_trades(AAPL.timestamp, FOLD_MAX_ROWS - 1, 1000)
    store.commit_trades(5, trades, symbols=1000)
    assert not store.fold_due
    store.commit_trades(5, own_trades(trades[-1][3] + 1, 1, 1))
    assert store.fold_due
    store.fold()
    assert not store.fold_due and store.unfolded == 0
    assert len(read_table(store.path)) == 1000


def test_a_version_1_store_is_upgraded_as_folded(tmp_path: Path) -> None:
    """A store of schema version 1 (own positions written in each trade's commit) opens as
    version 2 with its whole journal folded: its positions table is taken as it is."""
    store = Store(tmp_path, "alpha")
    store.commit([AAPL], None, [JournalEntry(1, "AAPL", 100.0, 100.0, AAPL.timestamp)])
    store.close()
    with sqlite3.connect(tmp_path / "alpha.sqlite3") as db:
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
        db.execute("DELETE FROM meta WHERE key = 'folded'")
    again = Store(tmp_path, "alpha")
    try:
        meta = read_meta(again.path)
        assert meta["schema_version"] == SCHEMA_VERSION == 2
        assert meta["folded"] == AAPL.timestamp
        assert again.load() == ([AAPL], AAPL.timestamp)
    finally:
        again.close()
