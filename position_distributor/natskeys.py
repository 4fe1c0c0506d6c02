"""The NATS key mapping: one key-value entry per position, ``STRATEGY.SYMBOL`` -> ``SymbolPos``.

Pure: strings and bytes in and out, no I/O. NATS keys allow only ``-/_=.A-Za-z0-9``, and
``.`` separates the tokens of the subject the key is stored under, so each of the strategy
and the symbol is escaped into one token that never holds a ``.``:

- ``A-Z a-z 0-9 - _ /`` stand for themselves, except a ``_`` that starts a token (NATS
  reserves keys beginning with ``_kv``, and a token of ours never looks like one);
- every other character (``.`` and ``:`` in real names; anything else, should it come) is
  ``=`` followed by two upper-case hex digits per UTF-8 byte: ``.`` is ``=2E``, ``:`` ``=3A``,
  ``=`` itself ``=3D``.

The escape is a bijection onto canonical tokens: ``unescape(escape(s)) == s`` for every
string, and a token is accepted only if it is exactly the escape of what it decodes to
(``=2e``, ``=61`` or a raw leading ``_`` are refused), so one position has one key.

The key is ``escape(strategy) + "." + escape(symbol)``: exactly two tokens, so a server
permission on ``$KV.BUCKET.<escaped strategy>.>`` gives a strategy's user its own keys and
nothing else. The value is the protobuf ``SymbolPos`` of ``protos/position.proto``.
"""

from __future__ import annotations

import re
from typing import Final

from google.protobuf.message import DecodeError

from . import position_pb2 as pb
from .types import Position, invalid_position_reason, valid_strategy, valid_symbol

__all__ = [
    "BadEntry",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
    "escape",
    "strategy_subject",
    "unescape",
]

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/")
_TOKEN: Final = re.compile(r"[-/_=A-Za-z0-9]+")
_ESCAPE: Final = re.compile(r"=([0-9A-F]{2})")


class BadEntry(ValueError):
    """A key or value in the bucket that is not the shape this mapping writes."""


def escape(text: str) -> str:
    """``text`` as one NATS key token (see the module docstring); ``text`` must not be empty."""
    if not text:
        raise ValueError("an empty name has no key token")
    out: list[str] = []
    for index, char in enumerate(text):
        if char in _SAFE and not (char == "_" and index == 0):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def unescape(token: str) -> str:
    """The text a token stands for; raises ``BadEntry`` unless the token is canonical."""
    if not _TOKEN.fullmatch(token):
        raise BadEntry(f"token {token[:80]!r} holds characters a key token never has")
    parts: list[bytes] = []
    position = 0
    for match in _ESCAPE.finditer(token):
        parts.append(token[position : match.start()].encode())
        parts.append(bytes([int(match[1], 16)]))
        position = match.end()
    parts.append(token[position:].encode())
    try:
        text = b"".join(parts).decode()
    except UnicodeDecodeError:
        raise BadEntry(f"token {token[:80]!r} does not decode to UTF-8") from None
    if not text or escape(text) != token:
        raise BadEntry(f"token {token[:80]!r} is not in canonical form")
    return text


def encode_key(strategy: str, symbol: str) -> str:
    """The key of one strategy's position in one symbol."""
    return f"{escape(strategy)}.{escape(symbol)}"


def decode_key(key: str) -> tuple[str, str]:
    """``(strategy, symbol)`` of a key; raises ``BadEntry`` for any other shape."""
    tokens = key.split(".")
    if len(tokens) != 2:
        raise BadEntry(f"key {key[:80]!r} is not STRATEGY.SYMBOL")
    strategy, symbol = unescape(tokens[0]), unescape(tokens[1])
    if not valid_strategy(strategy):
        raise BadEntry(f"key {key[:80]!r}: invalid strategy name {strategy[:80]!r}")
    if not valid_symbol(symbol):
        raise BadEntry(f"key {key[:80]!r}: invalid symbol {symbol[:80]!r}")
    return strategy, symbol


def strategy_subject(bucket: str, strategy: str) -> str:
    """The subject pattern covering every key of ``strategy`` (for server permissions)."""
    return f"$KV.{bucket}.{escape(strategy)}.>"


def encode_value(position: Position) -> bytes:
    """The value stored for ``position``: its protobuf ``SymbolPos``."""
    return pb.SymbolPos(
        strategy_name=position.strategy,
        symbol=position.symbol,
        net_position=position.net_position,
        timestamp=position.timestamp,
    ).SerializeToString()


def decode_value(key: str, value: bytes) -> Position:
    """The position stored under ``key``; raises ``BadEntry`` if the key is of an unknown
    shape, the value does not decode, the position is invalid, or it claims another strategy
    or symbol than its key's."""
    strategy, symbol = decode_key(key)
    try:
        message = pb.SymbolPos.FromString(value)
    except DecodeError:
        raise BadEntry(f"value of {len(value)} bytes under {key!r} is not a SymbolPos") from None
    position = Position(
        message.strategy_name, message.symbol, message.net_position + 0.0, message.timestamp
    )
    if (why := invalid_position_reason(position)) is not None:
        raise BadEntry(f"value under {key!r}: {why}")
    if position.strategy != strategy or position.symbol != symbol:
        raise BadEntry(
            f"value under {key!r} claims {position.strategy[:80]} {position.symbol[:80]},"
            " not its key's strategy and symbol"
        )
    return position
