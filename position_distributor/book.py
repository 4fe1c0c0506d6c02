"""The book: every strategy's positions, merged last-writer-wins as a semilattice."""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Final

from .clock import Clock
from .types import Position

__all__ = ["DIGEST_SIZE", "Book", "Refused", "entry_hash", "merge"]


class Refused(enum.Enum):
    """Why ``Book.trade_many`` did not apply an own trade (the book unchanged by it)."""

    OVERFLOW = "the position would not be a finite number"
    MAX_SYMBOLS = "a new symbol beyond the strategy's maximum"


DIGEST_SIZE: Final = 16  # bytes of a strategy's digest
# Symbols of one strategy changed and not yet hashed into its digest, at most: beyond, they
# are hashed at once (bounds the memory; a burst below it applies without hashing, and the
# node hashes the changes in slices once it is over: see fold_some).
_MAX_CHANGED: Final = 262_144
_PACK = struct.Struct("<dq").pack
_BLAKE2B = hashlib.blake2b


def entry_hash(position: Position | None) -> int:
    """A 128-bit hash of one position's symbol, net position and timestamp (0 for none).

    A strategy's digest is the XOR of its positions' hashes: kept up to date in O(1) per
    change, and equal on two nodes exactly when they hold the same positions (but for a
    2^-128 chance). The strategy is not hashed: each digest covers one strategy.
    """
    if position is None:
        return 0
    data = position[1].encode() + _PACK(position[2], position[3])
    return int.from_bytes(_BLAKE2B(data, digest_size=DIGEST_SIZE).digest(), "little")


def _key(position: Position) -> tuple[int, float]:
    return (position.timestamp, position.net_position)


def _one_zero(position: Position) -> Position:
    """``position`` with -0.0 spelt 0.0: they compare equal but print differently."""
    if position.net_position == 0.0:
        return position._replace(net_position=0.0)
    return position


def merge(a: Position | None, b: Position) -> Position:
    """Return the greater of two entries for one ``(strategy, symbol)`` by ``(timestamp, net)``.

    Commutative, associative and idempotent, so any order or duplication of the same updates
    gives the same result.
    """
    if a is None or _key(b) > _key(a):
        return _one_zero(b)
    return _one_zero(a)


class Book:
    """Maps ``(strategy, symbol)`` to the greatest ``Position`` seen for it.

    Pure and single-threaded: the engine holds a lock around it.
    """

    def __init__(self, positions: Iterable[Position] = ()) -> None:
        # strategy -> symbol -> position, so one strategy's positions are one lookup away.
        self._by_strategy: dict[str, dict[str, Position]] = {}
        # strategy -> XOR of entry_hash() of its positions as they were at the last fold.
        self._xor: dict[str, int] = {}
        # strategy -> symbol -> its entry at the last fold (None: absent), for every symbol
        # changed since: the digest hashes them when it is read (see digest()), so a burst
        # applies without hashing, and a symbol changed many times in between is hashed once.
        self._changed: dict[str, dict[str, Position | None]] = {}
        for position in positions:
            self.apply(position)
        for strategy in list(self._changed):
            self._fold(strategy)  # a loaded book: hashed now, not at the first digest read

    def __len__(self) -> int:
        return sum(map(len, self._by_strategy.values()))

    def __iter__(self) -> Iterator[Position]:
        for symbols in self._by_strategy.values():
            yield from symbols.values()

    def apply(self, position: Position) -> bool:
        """Merge ``position`` into the book; return whether it changed anything."""
        # merge(), spelt out: this runs once per position received.
        strategy, symbol, net, timestamp = position
        symbols = self._by_strategy.get(strategy)
        if symbols is None:
            symbols = self._by_strategy[strategy] = {}
        current = symbols.get(symbol)
        if current is not None and (
            timestamp < current[3] or (timestamp == current[3] and net <= current[2])
        ):
            return False  # (timestamp, net) <= the current entry's
        symbols[symbol] = position if net != 0.0 else _one_zero(position)
        changed = self._changed.get(strategy)
        if changed is None:
            self._changed[strategy] = {symbol: current}
        elif symbol not in changed:
            changed[symbol] = current
            if len(changed) > _MAX_CHANGED:
                self._fold(strategy)
        return True

    def merge_many(self, strategy: str, positions: Iterable[Position]) -> list[Position]:
        """Merge ``positions``, each of ``strategy``, in order, as ``apply`` does each; return
        those that changed the book, as stored (-0.0 spelt 0.0).

        The receiver's path for a read of a peer's positions (the changes are hashed when
        the digest is next read).
        """
        symbols = self.symbols(strategy)
        get = symbols.get
        changed: list[Position] = []
        append = changed.append
        previous: dict[str, Position | None] = {}  # each changed symbol's entry before
        for position in positions:
            symbol = position[1]
            net = position[2]
            timestamp = position[3]
            current = get(symbol)
            if current is not None and (
                timestamp < current[3] or (timestamp == current[3] and net <= current[2])
            ):
                continue  # (timestamp, net) <= the current entry's
            if symbol not in previous:
                previous[symbol] = current
            if net == 0.0:
                position = _one_zero(position)
            symbols[symbol] = position
            append(position)
        self.rehash(strategy, previous)
        return changed

    def trade_many(
        self,
        strategy: str,
        trades: Iterable[Sequence[Any]],
        clock: Clock,
        max_symbols: int,
    ) -> list[Position | Refused]:
        """Apply the owner's own trades, in order: each (its symbol, its quantity, and anything
        after them, ignored) adds its quantity to ``strategy``'s
        position in its symbol, stamped by ``clock.next_many()``. Returns, for each trade, the
        position it produced, or why it was refused (a result that is not finite, or a new
        symbol once the strategy holds ``max_symbols``), which changes nothing.

        The owner's path: each position it writes is newer than the one it replaces (the
        clock only goes forward), so it replaces it without a merge.
        """
        own = self.symbols(strategy)
        get = own.get
        trades = trades if isinstance(trades, list) else list(trades)
        new = tuple.__new__  # Position(...) without NamedTuple's slower __new__
        results: list[Position | Refused] = []
        append = results.append
        previous: dict[str, Position | None] = {}  # each changed symbol's entry before
        room = max_symbols - len(own)  # new symbols the strategy may still take
        # The batch is stamped as of its start (one clock reading): a refused trade's
        # timestamp is left unused.
        for trade, timestamp in zip(trades, clock.next_many(len(trades)), strict=True):
            symbol = trade[0]
            current = get(symbol)
            if current is not None:
                net = current[2] + trade[1] + 0.0  # + 0.0: never -0.0
            elif room > 0:
                net = trade[1] + 0.0
            else:
                append(Refused.MAX_SYMBOLS)
                continue
            if net - net != 0.0:  # inf or nan: not finite
                append(Refused.OVERFLOW)
                continue
            if current is None:
                room -= 1
            if symbol not in previous:
                previous[symbol] = current
            own[symbol] = position = new(Position, (strategy, symbol, net, timestamp))
            append(position)
        self.rehash(strategy, previous)  # the digest hashes them when it is next read
        return results

    def replace(self, position: Position) -> bool:
        """Set the entry to ``position`` whatever the current one (the owner's word, in a
        repair); return whether it changed anything."""
        position = _one_zero(position)
        symbols = self.symbols(position.strategy)
        current = symbols.get(position.symbol)
        if current == position:
            return False
        symbols[position.symbol] = position
        self.rehash(position.strategy, {position.symbol: current})
        return True

    def discard(self, strategy: str, symbol: str) -> Position | None:
        """Remove the entry for ``(strategy, symbol)``; return it, if there was one."""
        symbols = self._by_strategy.get(strategy)
        current = None if symbols is None else symbols.pop(symbol, None)
        if current is not None:
            self.rehash(strategy, {symbol: current})
        return current

    def rehash(self, strategy: str, previous: Mapping[str, Position | None]) -> None:
        """Keep the digest of ``strategy`` right after its entries for the symbols of
        ``previous`` were changed through ``symbols()``: ``previous`` holds what each one was
        before the change (None: absent). The hashing is done when the digest is next read
        (or once more than ``_MAX_CHANGED`` symbols wait for it)."""
        changed = self._changed.get(strategy)
        if changed is None:
            self._changed[strategy] = dict(previous)
            changed = self._changed[strategy]
        else:
            # The entry at the last fold wins over a later one: setdefault, in one C loop.
            deque(map(changed.setdefault, previous.keys(), previous.values()), maxlen=0)
        if len(changed) > _MAX_CHANGED:
            self._fold(strategy)

    def waiting(self, strategy: str | None = None) -> int:
        """Symbols changed and not yet hashed into their digest: of ``strategy``, or of all."""
        if strategy is not None:
            return len(self._changed.get(strategy, ()))
        return sum(map(len, self._changed.values()))

    def fold_some(self, limit: int) -> int:
        """Hash up to ``limit`` of the symbols changed since the last fold (of any strategy)
        into their digests; return how many still wait. A thread hashes a burst's changes
        in slices this way, letting go of the book between them, so that the next digest
        read has few left to hash at once."""
        for strategy, changed in list(self._changed.items()):
            if limit <= 0:
                break
            if len(changed) <= limit:
                del self._changed[strategy]
                self._hash(strategy, changed.items())
                limit -= len(changed)
                continue
            items = list(islice(changed.items(), limit))
            for symbol, _ in items:
                del changed[symbol]
            self._hash(strategy, items)
            limit = 0
        return self.waiting()

    def _fold(self, strategy: str) -> None:
        """Hash the symbols of ``strategy`` changed since the last fold into its digest."""
        changed = self._changed.pop(strategy, None)
        if changed:
            self._hash(strategy, changed.items())

    def _hash(self, strategy: str, changed: Iterable[tuple[str, Position | None]]) -> None:
        """Hash ``changed`` symbols of ``strategy`` (each with its entry at the last fold)
        into its digest: out with each one's entry then, in with its entry now."""
        get = self._by_strategy.get(strategy, {}).get
        xor = self._xor.get(strategy, 0)
        # entry_hash() of each entry before and after, written out (no call for an absent
        # one): this runs once per symbol changed between two digests.
        pack = _PACK
        blake2b = _BLAKE2B
        from_bytes = int.from_bytes
        for symbol, old in changed:
            if old is not None:
                data = old[1].encode() + pack(old[2], old[3])
                xor ^= from_bytes(blake2b(data, digest_size=DIGEST_SIZE).digest(), "little")
            new = get(symbol)
            if new is not None:
                data = new[1].encode() + pack(new[2], new[3])
                xor ^= from_bytes(blake2b(data, digest_size=DIGEST_SIZE).digest(), "little")
        self._xor[strategy] = xor

    def digest(self, strategy: str) -> tuple[int, bytes]:
        """How many positions of ``strategy`` are held, and the XOR of their hashes (the
        changes since the last read hashed first)."""
        self._fold(strategy)
        count = len(self._by_strategy.get(strategy, ()))
        return count, self._xor.get(strategy, 0).to_bytes(DIGEST_SIZE, "little")

    def symbols(self, strategy: str) -> dict[str, Position]:
        """The live map symbol -> position of ``strategy`` (created empty if new): whoever
        writes to it must only ever replace an entry by a greater one, never store -0.0, and
        then call ``rehash`` with what the changed entries were before.
        """
        symbols = self._by_strategy.get(strategy)
        if symbols is None:
            symbols = self._by_strategy[strategy] = {}
        return symbols

    def put_back(
        self, keys: Iterable[tuple[str, str]], committed: dict[tuple[str, str], Position]
    ) -> None:
        """Set each ``(strategy, symbol)`` of ``keys`` back to its entry in ``committed``, or
        remove it if it has none: undoes the changes of a batch the store could not commit.
        The one way an entry goes back to an older one (or away)."""
        for key in keys:
            strategy, symbol = key
            position = committed.get(key)
            symbols = self._by_strategy.get(strategy)
            before = None if symbols is None else symbols.get(symbol)
            if position is not None:
                self.symbols(strategy)[symbol] = _one_zero(position)
            elif symbols is not None:
                symbols.pop(symbol, None)
            self.rehash(strategy, {symbol: before})

    def get(self, strategy: str, symbol: str) -> Position | None:
        """The current entry for ``(strategy, symbol)``, if any."""
        symbols = self._by_strategy.get(strategy)
        return None if symbols is None else symbols.get(symbol)

    def of_strategy(self, strategy: str) -> list[Position]:
        """Every position held for ``strategy``, in no particular order."""
        return list(self._by_strategy.get(strategy, {}).values())

    def not_of(self, *strategies: str) -> list[Position]:
        """Every position held for strategies other than ``strategies``."""
        return [
            position
            for strategy, symbols in self._by_strategy.items()
            if strategy not in strategies
            for position in symbols.values()
        ]

    def count(self, strategy: str) -> int:
        """How many symbols are held for ``strategy``."""
        return len(self._by_strategy.get(strategy, ()))

    def positions(self) -> list[Position]:
        """Every position, sorted by strategy then symbol."""
        return sorted(self, key=lambda p: (p.strategy, p.symbol))

    def exposure(self) -> dict[str, float]:
        """Net position per symbol summed over every strategy, sorted by symbol.

        Each sum is exactly rounded (``math.fsum``), so it does not depend on the order in
        which strategies entered the book: every node with the same book prints the same.
        """
        terms: dict[str, list[float]] = {}
        for position in self:
            terms.setdefault(position.symbol, []).append(position.net_position)
        return {symbol: _total(terms[symbol]) for symbol in sorted(terms)}


def _total(values: list[float]) -> float:
    """The exactly rounded sum of ``values``, whatever their order, never -0.0."""
    try:
        return math.fsum(values) + 0.0
    except OverflowError:  # a partial sum is out of range: add scaled down, then scale up
        return math.fsum(math.ldexp(v, -64) for v in values) * 2.0**64 + 0.0
