"""Tests of the small value types: the seed's row format and the validity of names and values."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.types import (
    MAX_STRATEGY_LENGTH,
    MAX_SYMBOL_LENGTH,
    MAX_TIMESTAMP,
    ROW_LINE,
    Position,
    format_row,
    invalid_position_reason,
    valid_strategy,
    valid_symbol,
)

SYMBOL_CHARS = frozenset(string.ascii_letters + string.digits + "._:/-")
STRATEGY_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
# Characters near the allowed ones: spaces, path and shell characters, look-alike digits.
NEAR_MISSES = " \t\n\x00\x7f$;,|\\'\"+*~\u00e9\u0661\u0660\uff21"


# Golden examples.


def test_row_is_the_seeds_format() -> None:
    """A position prints as the seed's row: strategy, symbol, six decimals, timestamp in ns."""
    position = Position("strategy_1", "AAPL", 100.0, 1742308549773254000)
    assert position.row() == "strategy_1 | AAPL | 100.000000 | 1742308549773254000"
    assert format_row(position) == position.row()


@pytest.mark.parametrize(
    ("net", "shown"),
    [
        (-25.5, "-25.500000"),
        (0.0, "0.000000"),
        (1e-7, "0.000000"),
        (123456.1234567, "123456.123457"),
    ],
)
def test_row_rounds_to_six_decimals(net: float, shown: str) -> None:
    """The net position in a row is rounded to exactly six decimals, sign included."""
    assert format_row(Position("s", "X", net, 7)) == f"s | X | {shown} | 7"


def test_position_fields_by_name() -> None:
    """A position is an immutable tuple whose fields read by name in the wire's order."""
    position = Position("strategy_2", "MSFT", -3.0, 42)
    assert (position.strategy, position.symbol, position.net_position, position.timestamp) == (
        "strategy_2",
        "MSFT",
        -3.0,
        42,
    )
    with pytest.raises(AttributeError):
        position.net_position = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "symbol",
    ["AAPL", "7203", "BRK.B", "ES:CME", "EUR/USD", "a_b-c", "x", "A" * MAX_SYMBOL_LENGTH],
)
def test_valid_symbols(symbol: str) -> None:
    """Exchange spellings, numeric Tokyo codes and 32-character symbols are valid."""
    assert valid_symbol(symbol)


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        "A" * (MAX_SYMBOL_LENGTH + 1),
        "AA PL",
        "AAPL\n",
        "\nAAPL",
        "ÄPPL",
        "AAPL;",
        "\u0661\u0660\u0660",  # Arabic-Indic 100
        "AAPL\x00",
        "\uff21\uff21\uff30\uff2c",  # full-width AAPL
    ],
)
def test_invalid_symbols(symbol: str) -> None:
    """Empty, over-long, non-ASCII or punctuated symbols are invalid, trailing newline included."""
    assert not valid_symbol(symbol)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("strategy_1", True),
        ("a", True),
        ("S" * MAX_STRATEGY_LENGTH, True),
        ("S" * (MAX_STRATEGY_LENGTH + 1), False),
        ("", False),
        ("../etc", False),
        ("a/b", False),
        ("a:b", False),
        ("strategy 1", False),
        ("strategy_1\n", False),
    ],
)
def test_strategy_names(name: str, valid: bool) -> None:
    """Strategy names are 1-64 of letters, digits and . _ - (no path separators: files)."""
    assert valid_strategy(name) is valid


# Properties.


@given(
    st.builds(
        Position,
        st.text(max_size=70),
        st.text(max_size=40),
        st.floats(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
    )
)
def test_row_line_is_the_row_and_a_newline(position: Position) -> None:
    """The engine's ``ROW_LINE % position`` prints exactly ``format_row`` and a newline, for
    any float (rounding, huge, infinite, NaN, -0.0) and any timestamp."""
    assert ROW_LINE % position == format_row(position) + "\n"


@given(st.text(alphabet=st.sampled_from(sorted(SYMBOL_CHARS | set(NEAR_MISSES))), max_size=40))
def test_valid_symbol_is_its_character_set_and_length(symbol: str) -> None:
    """A symbol is valid exactly when it has 1-32 characters, each from [A-Za-z0-9._:/-]."""
    expected = 1 <= len(symbol) <= MAX_SYMBOL_LENGTH and set(symbol) <= SYMBOL_CHARS
    assert valid_symbol(symbol) is expected


@given(st.text(alphabet=st.sampled_from(sorted(SYMBOL_CHARS | set(NEAR_MISSES))), max_size=70))
def test_valid_strategy_is_its_character_set_and_length(name: str) -> None:
    """A strategy name is valid exactly when it has 1-64 characters, each from [A-Za-z0-9._-]."""
    expected = 1 <= len(name) <= MAX_STRATEGY_LENGTH and set(name) <= STRATEGY_CHARS
    assert valid_strategy(name) is expected


@given(
    st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=MAX_TIMESTAMP),
)
def test_well_formed_positions_have_no_reason(
    strategy: str, symbol: str, net: float, ts: int
) -> None:
    """A position with valid names, a finite net and a positive timestamp is accepted."""
    assert invalid_position_reason(Position(strategy, symbol, net, ts)) is None


@pytest.mark.parametrize(
    ("position", "words"),
    [
        (Position("bad name", "AAPL", 1.0, 1), "invalid strategy name 'bad name'"),
        (Position("", "AAPL", 1.0, 1), "invalid strategy name ''"),
        (Position("s", "AA PL", 1.0, 1), "invalid symbol 'AA PL'"),
        (Position("s", "", 1.0, 1), "invalid symbol ''"),
        (Position("s", "AAPL", math.nan, 1), "non-finite net position nan for AAPL"),
        (Position("s", "AAPL", math.inf, 1), "non-finite net position inf for AAPL"),
        (Position("s", "AAPL", -math.inf, 1), "non-finite net position -inf for AAPL"),
        (Position("s", "AAPL", 1.0, 0), "non-positive timestamp 0 for AAPL"),
        (Position("s", "AAPL", 1.0, -5), "non-positive timestamp -5 for AAPL"),
        (
            Position("s", "AAPL", 1.0, 2**62 + 1),
            f"timestamp {2**62 + 1} for AAPL is after the year 2116",
        ),
        (
            Position("s", "AAPL", 1.0, 2**63 - 1),
            f"timestamp {2**63 - 1} for AAPL is after the year 2116",
        ),
    ],
)
def test_invalid_position_reasons(position: Position, words: str) -> None:
    """Each kind of bad position from a peer is named in the reason returned for it."""
    assert invalid_position_reason(position) == words


def test_latest_timestamp_leaves_the_clock_room() -> None:
    """The latest accepted timestamp is past 2100 and leaves 2**62 ticks before int64 ends."""
    assert MAX_TIMESTAMP >= 4_102_444_800 * 10**9  # 2100-01-01
    assert 2**63 - 1 - MAX_TIMESTAMP >= 2**62 - 1
    assert invalid_position_reason(Position("s", "AAPL", 1.0, MAX_TIMESTAMP)) is None


def test_reason_quotes_at_most_80_characters_of_a_bad_name() -> None:
    """A huge bad name from a peer is cut in the reason, so a log line stays short."""
    reason = invalid_position_reason(Position("!" * 10_000, "AAPL", 1.0, 1))
    assert reason == f"invalid strategy name {'!' * 80!r}"
    reason = invalid_position_reason(Position("s", "?" * 10_000, 1.0, 1))
    assert reason == f"invalid symbol {'?' * 80!r}"
