"""The NATS key mapping: golden keys, the escape's laws, and refusal of foreign shapes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor import position_pb2 as pb
from position_distributor.natskeys import (
    BadEntry,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
    escape,
    strategy_subject,
    unescape,
)
from position_distributor.types import MAX_TIMESTAMP, Position

# What NATS accepts in a key (nats-py's own check), and in one token of it.
NATS_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
NATS_TOKEN = re.compile(r"[-/_=a-zA-Z0-9]+")

strategies = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
symbols = st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True)


def test_golden_keys() -> None:
    """Real names map to the documented keys."""
    assert encode_key("strategy_1", "AAPL") == "strategy_1.AAPL"
    assert encode_key("desk.fx-1", "EUR/USD") == "desk=2Efx-1.EUR/USD"
    assert encode_key("s", "7203.T") == "s.7203=2ET"
    assert encode_key("s", "ES:H6") == "s.ES=3AH6"
    assert encode_key("_kv", "_X") == "=5Fkv.=5FX"


def test_escape_of_anything_else() -> None:
    """A character outside the safe set, the escape character included, is =XX per byte."""
    assert escape("a=b") == "a=3Db"
    assert escape("é") == "=C3=A9"
    assert escape("a b*>") == "a=20b=2A=3E"


def test_strategy_subject_covers_exactly_one_token() -> None:
    """The permission subject of a strategy names its escaped token."""
    assert strategy_subject("positions", "desk.fx") == "$KV.positions.desk=2Efx.>"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "=2e", "=61", "_kv", "a=", "a=3", "=ZZ", "=FF", "a b", "a*", ">"],
)
def test_non_canonical_tokens_are_refused(token: str) -> None:
    """A token that is not exactly the escape of a string is refused (one position, one key)."""
    with pytest.raises(BadEntry):
        unescape(token)


@pytest.mark.parametrize(
    "key",
    ["AAPL", "a.b.c", "s.", ".AAPL", "s.=2e", "s.a b", "s" * 65 + ".A", "s." + "A" * 33, "s.é"],
)
def test_keys_of_unknown_shape_are_refused(key: str) -> None:
    """Keys that this mapping never writes are refused with BadEntry."""
    with pytest.raises(BadEntry):
        decode_key(key)


@given(st.text(min_size=1))
def test_escape_round_trips_any_text(text: str) -> None:
    """unescape(escape(s)) == s, and the token is one NATS key token."""
    token = escape(text)
    assert NATS_TOKEN.fullmatch(token)
    assert not token.startswith("_")
    assert unescape(token) == text


@given(strategies, symbols)
def test_key_round_trips(strategy: str, symbol: str) -> None:
    """Every valid (strategy, symbol) has a valid two-token NATS key that decodes back."""
    key = encode_key(strategy, symbol)
    assert NATS_KEY.fullmatch(key)
    assert key.count(".") == 1
    assert decode_key(key) == (strategy, symbol)


@given(strategies, symbols, strategies, symbols)
def test_keys_are_distinct(s1: str, y1: str, s2: str, y2: str) -> None:
    """Two different positions never share a key."""
    if (s1, y1) != (s2, y2):
        assert encode_key(s1, y1) != encode_key(s2, y2)


@given(st.text(alphabet="-/_=A-Za-z0-9.", max_size=12))
def test_any_key_decodes_or_is_refused(key: str) -> None:
    """Any string either decodes to a pair that encodes back to it, or raises BadEntry."""
    try:
        strategy, symbol = decode_key(key)
    except BadEntry:
        return
    assert encode_key(strategy, symbol) == key


@given(
    strategies,
    symbols,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(1, MAX_TIMESTAMP),
)
def test_value_round_trips(strategy: str, symbol: str, net: float, ts: int) -> None:
    """The value is the SymbolPos of the position, and decodes back to it under its key."""
    position = Position(strategy, symbol, net + 0.0, ts)
    value = encode_value(position)
    assert pb.SymbolPos.FromString(value).strategy_name == strategy
    assert decode_value(encode_key(strategy, symbol), value) == position


def test_bad_values_are_refused() -> None:
    """Garbage, an invalid position, or a claim of another strategy or symbol is BadEntry."""
    good = Position("s1", "AAPL", 1.0, 5)
    with pytest.raises(BadEntry, match="not a SymbolPos"):
        decode_value("s1.AAPL", b"\xff\xff\xff")
    with pytest.raises(BadEntry, match="claims s2 AAPL"):
        decode_value("s1.AAPL", encode_value(good._replace(strategy="s2")))
    with pytest.raises(BadEntry, match="claims s1 MSFT"):
        decode_value("s1.AAPL", encode_value(good._replace(symbol="MSFT")))
    with pytest.raises(BadEntry, match="non-positive timestamp"):
        decode_value("s1.AAPL", encode_value(good._replace(timestamp=0)))
    with pytest.raises(BadEntry, match="non-finite"):
        decode_value("s1.AAPL", encode_value(good._replace(net_position=float("nan"))))
