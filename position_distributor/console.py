"""The console: parse a line typed at stdin into a command, or say exactly what is wrong."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from .types import MAX_SYMBOL_LENGTH, valid_symbol

__all__ = ["COMMANDS", "HELP", "Command", "ConsoleError", "TradeCommand", "parse_line"]

COMMANDS = ("positions", "exposure", "peers", "history", "snapshot", "help", "exit", "quit")
MAX_HISTORY = 10_000
MAX_LABEL = 64

HELP = """\
Commands:
  SYMBOL QTY   apply a trade: add QTY (signed, e.g. 100 or -25.5) to this strategy's SYMBOL
  positions    every position this node knows, by strategy then symbol
  exposure     the firm's net position per symbol, over every strategy
  peers        each peer: name, address, state, last heard
  history SYMBOL [N]
               the last N (default 20) trades of this strategy in SYMBOL, from the journal
  snapshot [LABEL]
               copy the whole view (every strategy) into the store's snapshots
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
    args: tuple[str, ...] = ()  # history: (SYMBOL, N); snapshot: (LABEL,), or () for none


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
    if len(words) > 1 and words[0] in ("history", "snapshot"):
        return _parse_command(words)
    if len(words) == 1:
        word = words[0]
        if word.lower() == "history":
            raise ConsoleError("expected history SYMBOL [N], e.g. history AAPL 10")
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


def _parse_command(words: list[str]) -> Command:
    """``history SYMBOL [N]`` or ``snapshot [LABEL]`` (lowercase: ``HISTORY 5`` is a trade)."""
    name, args = words[0], words[1:]
    if name == "snapshot":
        label = " ".join(args)
        if len(label) > MAX_LABEL or not label.isprintable():
            raise ConsoleError(
                f"invalid label {_show(label)}: expected up to {MAX_LABEL} characters"
            )
        return Command(name, (label,))
    if len(args) > 2:
        raise ConsoleError("expected history SYMBOL [N], e.g. history AAPL 10")
    symbol = args[0]
    if not valid_symbol(symbol):
        raise ConsoleError(
            f"invalid symbol {_show(symbol)}: expected 1-{MAX_SYMBOL_LENGTH} of letters,"
            " digits and . _ : / -"
        )
    count = args[1] if len(args) == 2 else "20"
    if not count.isascii() or not count.isdigit() or not 1 <= int(count) <= MAX_HISTORY:
        raise ConsoleError(
            f"invalid count {_show(count)}: expected a whole number of trades, 1-{MAX_HISTORY}"
        )
    return Command(name, (symbol, count))
