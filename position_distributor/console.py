"""The console: parse a line typed at stdin into a command, or say exactly what is wrong."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from .types import MAX_SYMBOL_LENGTH, valid_symbol

__all__ = ["COMMANDS", "HELP", "Command", "ConsoleError", "TradeCommand", "parse_line"]

COMMANDS = ("positions", "exposure", "peers", "help", "exit", "quit")

HELP = """\
Commands:
  SYMBOL QTY   apply a trade: add QTY (signed, e.g. 100 or -25.5) to this strategy's SYMBOL
  positions    every position this node knows, by strategy then symbol
  exposure     the firm's net position per symbol, over every strategy
  peers        each peer: name, address, state, last heard
  help         this text
  exit, quit   stop this node (so does end of input, Ctrl-D, Ctrl-C)
Rows: strategy | symbol | net position | timestamp (ns)
"""

# A plain decimal number, optionally with an exponent: no nan, inf, hex or underscores.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# C0 and C1 control characters but tab and newline (C1 NEL \x85 would otherwise split words).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ConsoleError(ValueError):
    """A line that is not a command; the message says what was expected."""


class TradeCommand(NamedTuple):
    symbol: str
    quantity: float


class Command(NamedTuple):
    name: str  # one of COMMANDS


def parse_line(line: str) -> TradeCommand | Command | None:
    """Parse one console line; None for a blank line; raise ``ConsoleError`` if it is bad."""
    line = line.rstrip("\r\n")
    control = _CONTROL.search(line)
    if control is not None:
        raise ConsoleError(
            f"control character {control.group()!r} in input; expected SYMBOL QTY or a command"
        )
    words = line.split()
    if not words:
        return None
    if len(words) == 1:
        word = words[0]
        if word.lower() in COMMANDS:
            return Command(word.lower())
        raise ConsoleError(
            f"{_show(word)} is not a command; expected SYMBOL QTY (e.g. AAPL 100)"
            f" or one of: {', '.join(COMMANDS)}"
        )
    if len(words) > 2:
        raise ConsoleError(f"too many words in {_show(line)}; expected SYMBOL QTY (e.g. AAPL 100)")
    symbol, text = words
    if not valid_symbol(symbol):
        raise ConsoleError(
            f"invalid symbol {_show(symbol)}: expected 1-{MAX_SYMBOL_LENGTH} of letters,"
            " digits and . _ : / -"
        )
    if _NUMBER.fullmatch(text) is None:
        raise ConsoleError(
            f"invalid quantity {_show(text)}: expected a signed decimal number (e.g. 100, -2.5)"
        )
    quantity = float(text)
    if not math.isfinite(quantity):
        raise ConsoleError(
            f"quantity {_show(text)} is out of range: expected a finite number (e.g. 100, -2.5)"
        )
    if quantity == 0:
        raise ConsoleError(
            f"quantity {_show(text)} is zero: expected a non-zero change (e.g. 100, -2.5)"
        )
    return TradeCommand(symbol, quantity)


def _show(text: str, limit: int = 40) -> str:
    """Quote user input for an error message, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)
