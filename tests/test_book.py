"""Tests of the book: last-writer-wins merge as a semilattice, and the views the console prints."""

from __future__ import annotations

import itertools
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.book import DIGEST_SIZE, Book, Refused, entry_hash, merge
from position_distributor.clock import Clock
from position_distributor.types import Position


def printed(book: Book) -> list[str]:
    """The book as the ``positions`` command prints it (row text shows -0.0 and 0.0 apart)."""
    return [p.row() for p in book.positions()]


def printed_exposure(book: Book) -> list[str]:
    """The book's exposure as the ``exposure`` command prints it."""
    return [f"{symbol} | {net:.6f}" for symbol, net in book.exposure().items()]


def spelled(position: Position | None) -> str:
    """A position's exact spelling, which tells -0.0 from 0.0."""
    return repr(position)


# Golden examples.


def test_newer_timestamp_wins() -> None:
    """An update with a greater timestamp replaces the entry; an older one is ignored."""
    book = Book()
    assert book.apply(Position("s1", "AAPL", 100.0, 10))
    assert book.apply(Position("s1", "AAPL", 150.0, 20))
    assert not book.apply(Position("s1", "AAPL", 999.0, 15))
    assert book.get("s1", "AAPL") == Position("s1", "AAPL", 150.0, 20)


def test_equal_timestamps_keep_the_greater_net() -> None:
    """On equal timestamps the greater net position wins, so the tie never depends on order."""
    book = Book()
    assert book.apply(Position("s1", "AAPL", 5.0, 10))
    assert book.apply(Position("s1", "AAPL", 7.0, 10))
    assert not book.apply(Position("s1", "AAPL", 6.0, 10))
    assert book.get("s1", "AAPL") == Position("s1", "AAPL", 7.0, 10)


def test_replaying_the_same_update_changes_nothing() -> None:
    """Applying the entry already held returns False: nothing to store, send or print."""
    book = Book()
    position = Position("s1", "AAPL", 100.0, 10)
    assert book.apply(position)
    assert not book.apply(position)
    assert len(book) == 1


def test_merge_examples() -> None:
    """``merge`` keeps the greater (timestamp, net) and takes the update when there is none."""
    old, new = Position("s", "A", 9.0, 1), Position("s", "A", 1.0, 2)
    assert merge(None, old) == old
    assert merge(old, new) == new
    assert merge(new, old) == new


def test_negative_zero_is_stored_as_zero() -> None:
    """An update of -0.0 is held and printed as 0.0, whichever zero arrives first."""
    for first, second in [(-0.0, 0.0), (0.0, -0.0)]:
        book = Book()
        assert book.apply(Position("s", "A", first, 5))
        assert not book.apply(Position("s", "A", second, 5))
        assert printed(book) == ["s | A | 0.000000 | 5"]


def test_merge_of_zeros_is_order_independent_in_print() -> None:
    """``merge`` of -0.0 and 0.0 at one timestamp prints 0.000000 in either order."""
    neg, pos = Position("s", "A", -0.0, 5), Position("s", "A", 0.0, 5)
    assert merge(neg, pos).row() == merge(pos, neg).row() == "s | A | 0.000000 | 5"
    assert merge(None, neg).row() == "s | A | 0.000000 | 5"


def test_views() -> None:
    """len, iteration, get, of_strategy, not_of, count and positions see the same entries."""
    entries = [
        Position("s2", "MSFT", 1.0, 3),
        Position("s1", "MSFT", 2.0, 2),
        Position("s1", "AAPL", 3.0, 1),
        Position("s3", "AAPL", 4.0, 4),
    ]
    book = Book(entries)
    assert len(book) == 4
    assert sorted(book) == sorted(entries)
    assert book.get("s1", "AAPL") == entries[2]
    assert book.get("s1", "GOOG") is None
    assert book.get("nobody", "AAPL") is None
    assert sorted(book.of_strategy("s1")) == sorted(entries[1:3])
    assert book.of_strategy("nobody") == []
    assert sorted(book.not_of("s1", "s3")) == [entries[0]]
    assert (book.count("s1"), book.count("s2"), book.count("nobody")) == (2, 1, 0)
    assert [(p.strategy, p.symbol) for p in book.positions()] == [
        ("s1", "AAPL"),
        ("s1", "MSFT"),
        ("s2", "MSFT"),
        ("s3", "AAPL"),
    ]


def test_exposure_sums_each_symbol_over_strategies() -> None:
    """Exposure is the net position per symbol over every strategy, sorted by symbol."""
    book = Book(
        [
            Position("s1", "MSFT", -5.0, 1),
            Position("s1", "AAPL", 100.0, 1),
            Position("s2", "AAPL", 50.0, 1),
        ]
    )
    assert book.exposure() == {"AAPL": 150.0, "MSFT": -5.0}
    assert list(book.exposure()) == ["AAPL", "MSFT"]
    assert Book().exposure() == {}


def test_exposure_prints_alike_whatever_order_strategies_arrived() -> None:
    """0.1 + 0.3 - 0.4 over three strategies prints one way, whichever strategy came first."""
    nets = {"s1": 0.1, "s2": 0.3, "s3": -0.4}
    shown = set()
    for order in itertools.permutations(nets):
        book = Book(Position(s, "AAPL", nets[s], 1) for s in order)
        shown.add(tuple(printed_exposure(book)))
    assert len(shown) == 1


def test_exposure_of_huge_positions_does_not_raise() -> None:
    """Exposure of finite positions whose sum overflows is infinite, not an exception."""
    book = Book([Position(f"s{i}", "X", 1e308, 1) for i in range(3)])
    assert book.exposure() == {"X": math.inf}
    book.apply(Position("s3", "X", -1e308, 1))
    book.apply(Position("s4", "X", -1e308, 1))
    assert book.exposure() == {"X": 1e308}


# Properties.

# Few timestamps and values, so that ties and zeros of both signs are common.
nets = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0]),
    st.sampled_from([0.1, 0.3, -0.4, -1.0]),
    st.floats(allow_nan=False, allow_infinity=False),
)
stamps = st.integers(min_value=1, max_value=3)
same_key = st.builds(Position, st.just("s"), st.just("A"), nets, stamps)
updates = st.builds(
    Position, st.sampled_from(["s1", "s2", "s3"]), st.sampled_from(["A", "B"]), nets, stamps
)


@given(same_key, same_key)
def test_merge_is_commutative(a: Position, b: Position) -> None:
    """merge(a, b) and merge(b, a) are the same entry, spelled the same."""
    assert spelled(merge(a, b)) == spelled(merge(b, a))


@given(same_key, same_key, same_key)
def test_merge_is_associative(a: Position, b: Position, c: Position) -> None:
    """merge(merge(a, b), c) and merge(a, merge(b, c)) are the same entry, spelled the same."""
    assert spelled(merge(merge(a, b), c)) == spelled(merge(a, merge(b, c)))


@given(same_key)
def test_merge_is_idempotent(a: Position) -> None:
    """Merging an entry with itself gives it back (with -0.0 spelled 0.0)."""
    assert merge(a, a) == a
    assert spelled(merge(a, a)) == spelled(merge(None, a))


@given(same_key, same_key)
def test_merge_is_an_upper_bound(a: Position, b: Position) -> None:
    """The merge is one of its inputs and is at least as great as both by (timestamp, net)."""
    m = merge(a, b)
    assert m in (a, b)
    for x in (a, b):
        assert (m.timestamp, m.net_position) >= (x.timestamp, x.net_position)


@given(st.lists(updates, max_size=20), st.data())
def test_any_order_and_duplication_gives_the_same_book(
    batch: list[Position], data: st.DataObject
) -> None:
    """Shuffling, duplicating and replaying a list of updates yields the same printed book."""
    reference = Book(batch)
    replay = data.draw(st.lists(st.sampled_from(batch), max_size=20)) if batch else []
    mixed = data.draw(st.permutations(batch + replay))
    other = Book(mixed)
    assert printed(other) == printed(reference)
    assert printed_exposure(other) == printed_exposure(reference)
    assert other.exposure() == reference.exposure()


@given(st.lists(updates, max_size=20), st.data())
def test_book_is_the_merge_of_its_updates(batch: list[Position], data: st.DataObject) -> None:
    """Each entry of the book is the fold of ``merge`` over that key's updates, in any order."""
    book = Book(data.draw(st.permutations(batch)))
    expected: dict[tuple[str, str], Position] = {}
    for p in batch:
        key = (p.strategy, p.symbol)
        expected[key] = merge(expected.get(key), p)
    assert sorted(map(spelled, book)) == sorted(map(spelled, expected.values()))
    assert len(book) == len(expected)


@given(st.lists(updates, max_size=20))
def test_apply_says_exactly_when_the_entry_changed(batch: list[Position]) -> None:
    """``apply`` returns True exactly when the held entry's spelling changed."""
    book = Book()
    for p in batch:
        before = spelled(book.get(p.strategy, p.symbol))
        changed = book.apply(p)
        after = spelled(book.get(p.strategy, p.symbol))
        assert changed is (before != after)


@given(st.lists(updates, max_size=20), st.lists(updates, max_size=20))
def test_merge_many_is_apply_of_each(before: list[Position], batch: list[Position]) -> None:
    """``merge_many`` of one strategy's positions leaves the book, and its digest, as
    ``apply`` of each in turn does, and returns exactly the ones that changed it, as stored."""
    batch = [p._replace(strategy="s1") for p in batch]
    one_by_one, together = Book(before), Book(before)
    changed = [
        one_by_one.get("s1", p.symbol) for p in batch if one_by_one.apply(p)
    ]  # the entry each change left
    merged = together.merge_many("s1", batch)
    assert list(map(spelled, merged)) == list(map(spelled, changed))
    assert sorted(map(spelled, together)) == sorted(map(spelled, one_by_one))
    for strategy in ("s1", "s2", "s3"):
        assert together.digest(strategy) == one_by_one.digest(strategy)
    assert together.digest("s1") == recomputed(together, "s1")


@given(st.lists(updates, max_size=20), st.data())
def test_exposure_does_not_depend_on_arrival_order(
    batch: list[Position], data: st.DataObject
) -> None:
    """Two books holding the same entries have bit-identical exposure, never -0.0 against 0.0."""
    a, b = Book(batch), Book(data.draw(st.permutations(batch)))
    assert repr(a.exposure()) == repr(b.exposure())
    for symbol, total in a.exposure().items():
        parts = [p.net_position for p in a if p.symbol == symbol]
        assert total == pytest.approx(sum(parts), rel=1e-9, abs=1e-9 * max(map(abs, parts)))


# The owner's own trades: Book.trade_many with a Clock.

own_trades = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT", "7203", "EUR/USD"]),
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
            st.sampled_from([1e308, -1e308, 1.0, -1.0]),
        ).filter(lambda q: q != 0),
    ),
    max_size=40,
)


class SteppingClock(Clock):
    """A clock over a wall clock that a test steps back and forth."""

    def __init__(self, walls: list[int], last: int = 0) -> None:
        self._walls = iter(walls)
        super().__init__(last, now_ns=lambda: next(self._walls, 0))


@given(own_trades, st.lists(st.integers(0, 10**6), max_size=40), st.integers(1, 4))
def test_own_trades_add_up_in_order_with_strictly_increasing_stamps(
    trades: list[tuple[str, float]], walls: list[int], max_symbols: int
) -> None:
    """Each applied trade's position is the symbol's previous net plus its quantity, stamped
    after everything before it (whatever the wall clock does), and the clock after them all;
    a refused one changes nothing; the book ends with each symbol's last applied position."""
    book = Book([Position("alpha", "AAPL", 5.0, 7)])
    clock = SteppingClock(walls, last=7)
    expected: dict[str, float] = {"AAPL": 5.0}
    last = 7
    results = book.trade_many("alpha", trades, clock, max_symbols)
    assert len(results) == len(trades)
    for (symbol, quantity), result in zip(trades, results, strict=True):
        if symbol not in expected and len(expected) >= max_symbols:
            assert result is Refused.MAX_SYMBOLS
            continue
        net = expected.get(symbol, 0.0) + quantity + 0.0
        if not math.isfinite(net):
            assert result is Refused.OVERFLOW
            continue
        assert isinstance(result, Position)
        assert result[:3] == ("alpha", symbol, net)
        assert result.timestamp > last
        last = result.timestamp
        expected[symbol] = net
    assert {p.symbol: p.net_position for p in book.of_strategy("alpha")} == expected
    # The batch is stamped as of its start: a refused trade's stamp is left unused.
    assert clock.last >= last
    assert clock.next() > last
    assert all(spelled(p) == spelled(p._replace(net_position=p.net_position + 0.0)) for p in book)


@given(own_trades)
def test_put_back_undoes_a_batch_of_own_trades(trades: list[tuple[str, float]]) -> None:
    """Putting a batch's symbols back to what was committed before it gives the book as it
    was: the undo of a batch the store could not commit."""
    before = [Position("alpha", "AAPL", 5.0, 7), Position("beta", "AAPL", 1.0, 3)]
    book = Book(before)
    committed = {(p.strategy, p.symbol): p for p in before}
    book.trade_many("alpha", trades, Clock(7), max_symbols=3)
    book.put_back([("alpha", symbol) for symbol, _ in trades], committed)
    assert printed(book) == printed(Book(before))


def test_a_trade_to_zero_stores_zero_not_minus_zero() -> None:
    """An own trade that brings a position to zero stores 0.0, never -0.0."""
    book = Book([Position("alpha", "AAPL", -1.0, 1)])
    (result,) = book.trade_many("alpha", [("AAPL", 1.0)], Clock(1), 10)
    assert spelled(result) == spelled(Position("alpha", "AAPL", 0.0, result.timestamp))


# Digests: the XOR of a hash of each position, kept up to date in O(1) per change.

digest_positions = st.builds(
    Position,
    st.sampled_from(["s1", "s2"]),
    st.sampled_from(["AAPL", "MSFT", "7203", "X"]),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: x + 0.0),
    st.integers(1, 50),
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["apply", "replace", "discard", "owner", "merge", "read", "slice"]),
        digest_positions,
    ),
    max_size=60,
)


def recomputed(book: Book, strategy: str) -> tuple[int, bytes]:
    """The digest of ``strategy`` computed from scratch."""
    xor = 0
    for position in book.of_strategy(strategy):
        xor ^= entry_hash(position)
    return book.count(strategy), xor.to_bytes(DIGEST_SIZE, "little")


@given(operations)
def test_digest_is_the_xor_of_the_entries_whatever_the_changes(
    ops: list[tuple[str, Position]],
) -> None:
    """After any mix of merges, repairs, removals and the owner's own trades, with the
    digest read at any points in between (the changes are hashed when it is read) and some
    of the changes hashed ahead in slices (``fold_some``), each strategy's digest equals the
    one computed from its entries."""
    book = Book()
    clock = Clock(100)
    for op, position in ops:
        if op == "read":
            assert book.digest(position.strategy) == recomputed(book, position.strategy)
            assert book.waiting(position.strategy) == 0
        elif op == "slice":
            before = book.waiting()
            left = book.fold_some(position.timestamp % 3 + 1)
            assert left == book.waiting() == max(0, before - (position.timestamp % 3 + 1))
        elif op == "merge":
            book.merge_many(position.strategy, [position, position._replace(symbol="Y")])
        elif op == "apply":
            book.apply(position)
        elif op == "replace":
            book.replace(position)
        elif op == "discard":
            book.discard(position.strategy, position.symbol)
        else:
            book.trade_many(
                position.strategy, [(position.symbol, position.net_position)], clock, 10
            )
    for strategy in ("s1", "s2"):
        assert book.digest(strategy) == recomputed(book, strategy)


def test_a_burst_beyond_the_changes_kept_is_hashed_as_it_goes() -> None:
    """More changed symbols than the digest keeps for later are hashed during the burst, not
    all at the next read; the digest is the same as computed from the entries."""
    book = Book()
    positions = [Position("s1", f"S{i}", float(i), 10 + i) for i in range(40_000)]
    for start in range(0, len(positions), 5_000):
        book.merge_many("s1", positions[start : start + 5_000])
    book.trade_many("s1", [("S1", 1.0), ("NEW", 2.0)], Clock(10**6), 10**6)
    assert book.digest("s1") == recomputed(book, "s1")


def test_a_loaded_book_is_hashed_at_once() -> None:
    """A book built from stored positions has its digests hashed when built (not at the first
    read), and they are those computed from its entries."""
    positions = [Position(s, f"S{i}", float(i), 10 + i) for s in ("s1", "s2") for i in range(50)]
    book = Book(positions)
    assert book._changed == {}
    assert book.digest("s1") == recomputed(book, "s1")
    assert book.digest("s2") == recomputed(book, "s2")


@given(st.lists(digest_positions, max_size=40), st.randoms())
def test_equal_books_have_equal_digests(positions: list[Position], rng: object) -> None:
    """Two books built from the same updates in any order have the same digests; a book
    with one value changed, timestamp kept, has another."""
    shuffled = list(positions)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Book(positions), Book(shuffled)
    for strategy in ("s1", "s2"):
        assert a.digest(strategy) == b.digest(strategy)
    if positions:
        first = a.positions()[0]
        a.replace(first._replace(net_position=first.net_position + 1.0))
        assert a.digest(first.strategy) != b.digest(first.strategy)


def test_digest_cost_at_100000_positions() -> None:
    """At 100,000 positions, reading a digest costs a microsecond or so (it is kept, not
    computed), and keeping it costs a couple of hashes per change (measured, printed)."""
    book = Book(Position("s1", f"SYM{i}", float(i), i + 1) for i in range(100_000))
    reads = 10_000
    start = time.perf_counter()
    for _ in range(reads):
        book.digest("s1")
    read_us = (time.perf_counter() - start) / reads * 1e6
    changes = 100_000
    start = time.perf_counter()
    for i in range(changes):
        book.apply(Position("s1", f"SYM{i}", float(i) + 0.5, 200_000 + i))
    apply_us = (time.perf_counter() - start) / changes * 1e6
    sample = Position("s1", "SYM1", 1.5, 1)
    start = time.perf_counter()
    for _ in range(changes):
        entry_hash(sample)
    hash_us = (time.perf_counter() - start) / changes * 1e6
    start = time.perf_counter()
    scratch = recomputed(book, "s1")
    scratch_ms = (time.perf_counter() - start) * 1e3
    print(
        f"\nat 100,000 positions: digest read {read_us:.2f} us, apply with digest"
        f" {apply_us:.2f} us per change, of which two entry hashes of {hash_us:.2f} us,"
        f" a digest from scratch {scratch_ms:.0f} ms"
    )
    assert book.digest("s1") == scratch
    assert read_us < 100
