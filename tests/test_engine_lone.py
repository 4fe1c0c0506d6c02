"""Engine: a lone trade and a lone read of a peer's positions (the batch-of-one paths of
``_apply_trades`` and ``_apply_positions``) do what a batch does, refusals and store faults
included."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from position_distributor.dispatcher import EventDispatcher
from position_distributor.engine import Engine, Output, _Trade
from position_distributor.store import Store, StoreError, read_book
from position_distributor.types import Position, format_rows
from position_distributor.wire import SyncDone

from .waiting import capture_logs


class Links:
    """Stands in for the transport: records what the engine publishes."""

    def __init__(self) -> None:
        self.own: list[Position] = []
        self.relayed: list[tuple[Position, Any]] = []

    def publish(self, own: list[Position], relayed: Sequence[tuple[Position, Any]] = ()) -> int:
        self.own += own
        self.relayed += relayed
        return len(own) + len(relayed)

    def links(self) -> tuple[()]:
        return ()

    def configured(self) -> list[str | None]:
        return []


class FlakyStore(Store):
    """A real store whose commits fail, as a full disk's do, while ``failing`` is set."""

    failing = False
    due = False  # whether a fold is due (else as the store counts)
    folds = 0

    @property
    def fold_due(self) -> bool:
        return self.due or super().fold_due

    def fold(self) -> None:
        self.folds += 1
        self.due = False
        super().fold()

    def commit_trades(self, *args: Any, **kwargs: Any) -> None:
        if self.failing:
            raise StoreError("cannot store: disk full (test)")
        super().commit_trades(*args, **kwargs)

    def commit(self, *args: Any, **kwargs: Any) -> None:
        if self.failing:
            raise StoreError("cannot store: disk full (test)")
        super().commit(*args, **kwargs)


class Link:
    """Stands in for a connection to a peer: its name, and why it was closed."""

    relays = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed: list[str] = []

    def close(self, reason: str) -> None:
        self.closed.append(reason)


class Side:
    """An engine on a flaky store (its consumers not started: the test applies)."""

    def __init__(self, path: Path, name: str, **kwargs: Any) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.links = Links()
        self.store = FlakyStore(path, name)
        self.store.mark_recovered()
        self.engine = Engine(
            name,
            EventDispatcher(),
            self.links,  # type: ignore[arg-type]
            self.store,
            out=Output(self.out),
            err=Output(self.err),
            digest_interval=0,
            **kwargs,
        )

    def trade(self, symbol: str, quantity: float) -> None:
        """One trade typed at the console, applied alone."""
        self.engine._apply_trades([(time.monotonic(), [_Trade(symbol, quantity, None)])])

    def stored(self) -> list[Position]:
        """The positions in the store's file, as another reader sees them."""
        return sorted(read_book(self.store.path).values())


@pytest.fixture
def sides(tmp_path: Path, no_thread_leak: None) -> Iterator[list[Side]]:
    made: list[Side] = []
    yield made
    for side in made:
        side.store.close()


def test_lone_trades_give_what_the_same_trades_in_one_batch_give(
    tmp_path: Path, sides: list[Side]
) -> None:
    """Trades applied one at a time print a row each, publish and store each position, and
    count each trade, as the same trades in one batch do (with their own timestamps)."""
    lone = Side(tmp_path / "lone", "alpha")
    batch = Side(tmp_path / "batch", "alpha")
    sides += [lone, batch]
    trades = [("AAPL", 10.0), ("MSFT", -3.0), ("AAPL", 5.5), ("AAPL", -15.5), ("7203", 1e-6)]
    for symbol, quantity in trades:
        lone.trade(symbol, quantity)
    batch.engine._apply_trades([(time.monotonic(), [_Trade(s, q, None) for s, q in trades])])

    def shown(positions: list[Position]) -> list[tuple[str, str, float]]:
        return [p[:3] for p in positions]

    rows = [line.split(" | ") for line in lone.out.getvalue().splitlines()]
    assert [(s, sym, float(net)) for s, sym, net, _ in rows] == [
        ("alpha", "AAPL", 10.0),
        ("alpha", "MSFT", -3.0),
        ("alpha", "AAPL", 15.5),
        ("alpha", "AAPL", 0.0),
        ("alpha", "7203", 1e-6),
    ]
    assert rows == [line.split(" | ") for line in format_rows(lone.links.own).splitlines()]
    assert [int(ts) for *_, ts in rows] == sorted({int(ts) for *_, ts in rows})
    assert lone.engine.positions() == lone.stored()
    assert shown(lone.engine.positions()) == shown(batch.engine.positions())
    assert shown(lone.stored()) == shown(batch.stored())
    assert [e.quantity for e in lone.store.history("AAPL", 20)] == [10.0, 5.5, -15.5]
    assert [e[1:4] for e in lone.store.history("AAPL", 20)] == [
        e[1:4] for e in batch.store.history("AAPL", 20)
    ]
    for side in (lone, batch):
        stats = side.engine.stats
        assert (stats.trades, stats.own_changes, stats.refused) == (5, 5, 0)
        assert stats.latency.count == 5
    assert lone.err.getvalue() == ""


def test_a_lone_trade_the_book_refuses_is_logged_and_changes_nothing(
    tmp_path: Path, sides: list[Side]
) -> None:
    """A lone trade that would overflow, or take the strategy past its symbol cap, is refused
    with an ERROR, counted, and neither printed, published nor stored."""
    side = Side(tmp_path, "alpha", max_symbols=1)
    sides.append(side)
    side.trade("AAPL", 1e308)
    before = side.engine.positions()
    with capture_logs("ERROR") as logs:
        side.trade("AAPL", 1e308)
        side.trade("MSFT", 1.0)
    assert logs.lines_with("would make the position overflow")
    assert logs.lines_with("already holds 1 symbols")
    assert side.engine.positions() == before == side.stored()
    assert side.links.own == before
    assert len(side.out.getvalue().splitlines()) == 1
    assert (side.engine.stats.trades, side.engine.stats.refused) == (1, 2)


def test_a_lone_trade_the_store_refuses_is_taken_back_and_the_next_one_applies(
    tmp_path: Path, sides: list[Side]
) -> None:
    """A lone trade whose commit fails is refused on the error stream (with the store's
    cause), taken back out of the book, neither printed nor published; once the store takes
    writes again, the next trade applies on top of what is stored."""
    side = Side(tmp_path, "alpha")
    sides.append(side)
    side.trade("AAPL", 1.0)
    side.store.failing = True
    side.trade("AAPL", 5.0)
    side.trade("MSFT", 2.0)
    assert side.err.getvalue().splitlines() == [
        "error: 1 trade(s) refused, not stored: AAPL 5 (cannot store: disk full (test))",
        "error: 1 trade(s) refused, not stored: MSFT 2 (cannot store: disk full (test))",
    ]
    assert [p[:3] for p in side.engine.positions()] == [("alpha", "AAPL", 1.0)]
    assert len(side.links.own) == len(side.out.getvalue().splitlines()) == 1
    assert side.engine.stats.refused == 2
    side.store.failing = False
    side.trade("AAPL", 1.0)
    assert [p[:3] for p in side.stored()] == [("alpha", "AAPL", 2.0)]
    assert side.out.getvalue().splitlines()[-1].startswith("alpha | AAPL | 2.000000 | ")


def test_a_lone_read_of_a_peers_positions_is_applied_printed_stored_and_relayed(
    tmp_path: Path, sides: list[Side]
) -> None:
    """A read holding only the peer's own positions is merged (an older one changes nothing),
    printed, stored, counted and, with relay, passed on; a read holding anything else goes
    the general way (here a SyncDone)."""
    side = Side(tmp_path, "alpha", relay=True)
    sides.append(side)
    link = Link("beta")
    ts = time.time_ns()
    first = Position("beta", "AAPL", 1.0, ts)
    side.engine._apply_positions([(link, [first])])  # type: ignore[list-item]
    side.engine._apply_positions([(link, [first._replace(timestamp=ts - 1, net_position=9.0)])])  # type: ignore[list-item]
    second = Position("beta", "MSFT", 0.0, ts + 1)
    side.engine._apply_positions([(link, [second, SyncDone(0)])])  # type: ignore[list-item]
    assert side.out.getvalue() == format_rows([first, second])
    assert side.engine.positions() == [first, second] == side.stored()
    assert side.links.relayed == [(first, link), (second, link)]
    assert side.engine.stats.peer_changes == 2
    assert link.closed == []


def test_a_lone_read_the_store_refuses_is_taken_back_and_its_link_closed(
    tmp_path: Path, sides: list[Side]
) -> None:
    """A peer's lone position whose commit fails is taken back out of the book, not printed,
    logged as an ERROR, and its connection closed so that its resync sends it again."""
    side = Side(tmp_path, "alpha")
    sides.append(side)
    link = Link("beta")
    kept = Position("beta", "AAPL", 1.0, time.time_ns())
    side.engine._apply_positions([(link, [kept])])  # type: ignore[list-item]
    side.store.failing = True
    with capture_logs("ERROR") as logs:
        side.engine._apply_positions(
            [(link, [kept._replace(net_position=2.0, timestamp=kept.timestamp + 1)])]
        )  # type: ignore[list-item]
    assert logs.lines_with("1 position(s) from peers refused")
    assert side.engine.positions() == [kept]
    assert side.out.getvalue() == format_rows([kept])
    assert link.closed == ["its positions could not be stored; its next sync sends them again"]


def test_a_lone_trade_and_a_lone_read_fold_the_store_when_a_fold_is_due(
    tmp_path: Path, sides: list[Side]
) -> None:
    """After a lone trade's commit, and after a lone read's, the store is folded at once when
    so many positions wait for a fold that one is due, as after a batch; not otherwise."""
    side = Side(tmp_path, "alpha")
    sides.append(side)
    side.store.folds = 0  # those of the start
    side.trade("AAPL", 1.0)
    assert side.store.folds == 0
    side.store.due = True
    side.trade("AAPL", 1.0)
    assert side.store.folds == 1
    link = Link("beta")
    side.engine._apply_positions([(link, [Position("beta", "AAPL", 1.0, time.time_ns())])])  # type: ignore[list-item]
    assert side.store.folds == 1
    side.store.due = True
    side.engine._apply_positions([(link, [Position("beta", "MSFT", 1.0, time.time_ns())])])  # type: ignore[list-item]
    assert side.store.folds == 2
    assert side.store.unfolded == 0
    assert [p[:3] for p in side.stored()] == [
        ("alpha", "AAPL", 2.0),
        ("beta", "AAPL", 1.0),
        ("beta", "MSFT", 1.0),
    ]
