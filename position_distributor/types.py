"""Small value types shared by the codec, the book, the engine and the API."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

__all__ = [
    "MAX_PORT",
    "MAX_STRATEGY_LENGTH",
    "MAX_SYMBOL_LENGTH",
    "MAX_TIMESTAMP",
    "MAX_TRADE_ID_LENGTH",
    "ROW_LINE",
    "SYMBOL_CHARS",
    "Position",
    "format_row",
    "format_rows",
    "invalid_position_reason",
    "valid_strategy",
    "valid_symbol",
    "valid_trade_id",
]

MAX_PORT = 65535
MAX_SYMBOL_LENGTH = 32
MAX_STRATEGY_LENGTH = 64
MAX_TRADE_ID_LENGTH = 64
# Nanoseconds since the epoch, in the year 2116: beyond any real clock, and far enough below
# int64's end that a clock raised to it (by an echoed position) never overflows the wire.
MAX_TIMESTAMP = 1 << 62

# Symbols as exchanges spell them (and trade IDs): letters, digits (Tokyo's 7203), . _ : / -
SYMBOL_CHARS = "A-Za-z0-9._:/-"  # a regex character class's contents
_SYMBOL = re.compile(rf"[{SYMBOL_CHARS}]{{1,{MAX_SYMBOL_LENGTH}}}")
_TRADE_ID = re.compile(rf"[{SYMBOL_CHARS}]{{1,{MAX_TRADE_ID_LENGTH}}}")
# Strategy names also name the store file, so no path separators.
_STRATEGY = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_STRATEGY_LENGTH}}}")


class Position(NamedTuple):
    """One strategy's net position in one symbol, stamped by its owner's clock (ns)."""

    strategy: str
    symbol: str
    net_position: float
    timestamp: int

    def row(self) -> str:
        """The seed's console row: ``strategy_1 | AAPL | 100.000000 | 1742308549773254000``."""
        return format_row(self)


# A row and its newline, for ``ROW_LINE % position`` (a Position is the 4-tuple it formats):
# one C call per row, where the f-string below indexes the tuple four times.
ROW_LINE = "%s | %s | %.6f | %d\n"


def format_row(position: Position) -> str:
    """Format a position as the original program printed it (without a newline)."""
    return format_rows([position])[:-1]


def format_rows(positions: list[Position]) -> str:
    """The rows of ``positions``, each ended by a newline, for one write: the one place a
    row is formatted. (One ``%`` over a whole batch's values was 0.05-0.1 µs a row cheaper,
    but its 400,000-item tuple for the start's 100,000 rows left the process 2-4 MiB larger.)"""
    return "".join([ROW_LINE % p for p in positions])


def valid_symbol(symbol: str) -> bool:
    """Whether ``symbol`` is 1-32 characters of ``[A-Za-z0-9._:/-]``."""
    return _SYMBOL.fullmatch(symbol) is not None


def valid_trade_id(trade_id: str) -> bool:
    """Whether ``trade_id`` is 1-64 characters of ``[A-Za-z0-9._:/-]``."""
    return _TRADE_ID.fullmatch(trade_id) is not None


def valid_strategy(name: str) -> bool:
    """Whether ``name`` is 1-64 characters of ``[A-Za-z0-9._-]``."""
    return _STRATEGY.fullmatch(name) is not None


def invalid_position_reason(position: Position) -> str | None:
    """Say what is wrong with a position received from outside, or None if it is valid."""
    if not valid_strategy(position.strategy):
        return f"invalid strategy name {position.strategy[:80]!r}"
    if not valid_symbol(position.symbol):
        return f"invalid symbol {position.symbol[:80]!r}"
    if not math.isfinite(position.net_position):
        return f"non-finite net position {position.net_position!r} for {position.symbol}"
    if position.timestamp <= 0:
        return f"non-positive timestamp {position.timestamp} for {position.symbol}"
    if position.timestamp > MAX_TIMESTAMP:
        return f"timestamp {position.timestamp} for {position.symbol} is after the year 2116"
    return None
