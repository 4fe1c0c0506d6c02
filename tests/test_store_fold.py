"""Store: what waits for a fold (own trades in the journal, batches in the position log) is
never lost and never reordered, whatever the order of commits, folds, removals, snapshots
and restarts (a stateful hypothesis test against a plain dict), and the position log's
rules one by one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from position_distributor.store import Store, read_book
from position_distributor.types import Position

from .test_store import AAPL, THEIRS, read_table

START = 1_742_308_549_773_254_000
SYMBOLS = [f"S{i}" for i in range(6)]
PEERS = ["beta", "gamma"]


def logged_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM position_log").fetchone()
        return int(count)


class StoreFolds(RuleBasedStateMachine):
    """A store used as the engine uses it: own trades (commit_trades), peers' batches and
    repairs (commit of positions alone, any timestamps, as the owner's word), removals,
    folds, snapshots, and reopening after a clean close or a crash. The model is the book
    the commits made: the last write of each key wins, in commit order."""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[tuple[str, str], Position] = {}
        self.nets: dict[str, float] = {}
        self.clock = START  # the last own timestamp issued (START: none yet)
        self.stores: list[Store] = []

    @initialize(tmp=st.just(None))
    def open(self, tmp: None) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="pd-fold-"))
        self.store = Store(self.dir, "alpha")

    def teardown(self) -> None:
        self.store.close()
        for store in self.stores:  # crashed ones: their connection only
            store._db.close()

    @rule(
        symbols=st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=12),
        quantity=st.integers(-5, 5).filter(bool),
    )
    def trade(self, symbols: list[str], quantity: int) -> None:
        rows = []
        for symbol in symbols:
            self.clock += 1
            net = self.nets.get(symbol, 0.0) + quantity
            self.nets[symbol] = net
            rows.append((symbol, float(quantity), net, self.clock))
            self.model["alpha", symbol] = Position("alpha", symbol, net, self.clock)
        self.store.commit_trades(1, rows, symbols=len(set(symbols)))

    @rule(
        peer=st.sampled_from(PEERS),
        batch=st.lists(
            st.tuples(st.sampled_from(SYMBOLS), st.integers(-100, 100), st.integers(0, 50)),
            min_size=1,
            max_size=20,
        ),
    )
    def receive(self, peer: str, batch: list[tuple[str, int, int]]) -> None:
        """A batch of a peer's positions (or a repair: timestamps need not increase)."""
        positions = [Position(peer, s, float(n), START + t) for s, n, t in batch]
        self.store.commit(positions, None)
        for position in positions:
            self.model[position.strategy, position.symbol] = position

    @rule(peer=st.sampled_from(PEERS), symbols=st.lists(st.sampled_from(SYMBOLS), max_size=3))
    def remove(self, peer: str, symbols: list[str]) -> None:
        self.store.remove(peer, symbols)
        for symbol in symbols:
            self.model.pop((peer, symbol), None)

    @rule()
    def fold(self) -> None:
        self.store.fold()
        assert self.store.unfolded == 0
        assert logged_rows(self.store.path) == 0
        assert read_table(self.store.path) == {
            k: (p.net_position, p.timestamp) for k, p in self.model.items()
        }

    @rule()
    def snapshot(self) -> None:
        info = self.store.snapshot("s", 1)
        assert info.size == len(self.model)

    @rule()
    def restart(self) -> None:
        self.store.close()
        assert logged_rows(self.store.path) == 0
        self.store = Store(self.dir, "alpha")
        self.check_load()

    @rule()
    def crash(self) -> None:
        """What kill -9 leaves: nothing folded; the next open folds it at load."""
        self.store._checkpointer.close()
        self.store._lock_file.close()
        self.stores.append(self.store)
        self.store = Store(self.dir, "alpha")
        self.check_load()

    def check_load(self) -> None:
        positions, clock = self.store.load()
        assert {(p.strategy, p.symbol): p for p in positions} == self.model
        assert clock == (self.clock if self.clock > START else 0)

    @invariant()
    def the_file_reads_as_the_model(self) -> None:
        if hasattr(self, "store"):
            assert read_book(self.store.path) == self.model
            assert self.store.committed([*self.model, ("beta", "none")]) == self.model

    @precondition(lambda self: hasattr(self, "store"))
    @rule(data=st.data())
    def committed_keys(self, data: st.DataObject) -> None:
        keys = data.draw(
            st.lists(st.sampled_from([(s, y) for s in ["alpha", *PEERS] for y in SYMBOLS]))
        )
        assert self.store.committed(keys) == {k: self.model[k] for k in keys if k in self.model}


StoreFolds.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestStoreFolds = StoreFolds.TestCase


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path, "alpha")
    yield store  # type: ignore[misc]
    store.close()


def batch(strategy: str, count: int, start: int = 0) -> list[Position]:
    return [
        Position(strategy, f"X{i}", float(i + 1), AAPL.timestamp + start + i) for i in range(count)
    ]


def test_a_batch_of_positions_alone_is_one_row_of_the_position_log_until_a_fold(
    store: Store,
) -> None:
    """Eight positions or more, alone (no journal entry, base, trade ID or clock), are one
    row of the position log: the positions table is unchanged until a fold; the node's
    reads (``read_book``, ``committed``, ``load``) see them from the commit on."""
    positions = batch("beta", 8)
    store.commit(positions, None)
    assert logged_rows(store.path) == 1 and read_table(store.path) == {}
    expected = {(p.strategy, p.symbol): p for p in positions}
    assert read_book(store.path) == expected
    assert store.committed(list(expected)) == expected
    store.fold()
    assert logged_rows(store.path) == 0
    assert read_table(store.path) == {k: (p.net_position, p.timestamp) for k, p in expected.items()}


def test_a_small_batch_goes_to_the_table_unless_the_log_holds_some(store: Store) -> None:
    """Fewer than eight positions go straight to the table while the log is empty; once it
    holds some, they go to the log too, so that the later commit still wins at the fold."""
    store.commit([THEIRS], None)
    assert read_table(store.path) == {THEIRS[:2]: THEIRS[2:]} and logged_rows(store.path) == 0
    store.commit(batch("beta", 10), None)
    older = Position("beta", "X3", -1.0, AAPL.timestamp - 10)  # a repair: the owner's word
    store.commit([older], None)
    assert logged_rows(store.path) == 2
    store.fold()
    assert read_table(store.path)[("beta", "X3")] == (-1.0, older.timestamp)


def test_a_commit_with_a_journal_entry_or_a_base_folds_the_log_first(store: Store) -> None:
    """A commit that is not positions alone writes the log to the table first, in its own
    transaction: its positions then replace the logged ones, never the reverse."""
    store.commit(batch("beta", 10), None)
    base = Position("alpha", "X1", 5.0, AAPL.timestamp)
    store.commit([base], None, bases=[base])
    assert logged_rows(store.path) == 0
    assert len(read_table(store.path)) == 11


def test_positions_the_log_cannot_hold_go_to_the_table(store: Store) -> None:
    """A name with a newline (not one the protocol or the console accepts, but the store
    takes any string) cannot be logged one per line: that batch goes to the table."""
    positions = batch("beta", 9)
    positions[4] = positions[4]._replace(symbol="X\n4")
    store.commit(positions, None)
    assert logged_rows(store.path) == 0
    assert read_table(store.path)[("beta", "X\n4")] == (5.0, positions[4].timestamp)


def test_a_batch_of_several_strategies_is_logged_with_each_ones_strategy(store: Store) -> None:
    positions = batch("beta", 4) + batch("gamma", 5, start=100)
    store.commit(positions, None)
    assert logged_rows(store.path) == 1
    assert read_book(store.path) == {(p.strategy, p.symbol): p for p in positions}
