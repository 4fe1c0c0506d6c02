"""The console: one grammar for a line typed at stdin, a command, or exactly what is wrong.

Every path that reads the console uses the definitions here: ``parse_line`` for one line, and
``trades_of``, the same grammar over a burst of trade lines at once. Words are separated by
ASCII spaces and tabs only, digits are ASCII digits only: a no-break space or a full-width
digit makes a line an error on every path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from itertools import product, repeat, zip_longest
from typing import NamedTuple

from .types import MAX_SYMBOL_LENGTH, MAX_TRADE_ID_LENGTH, SYMBOL_CHARS

__all__ = [
    "COMMANDS",
    "HELP",
    "MAX_TRADE_ID_LENGTH",
    "Command",
    "ConsoleError",
    "TradeCommand",
    "parse_line",
    "trades_of",
]

COMMANDS = (
    "positions",
    "exposure",
    "limits",
    "peers",
    "history",
    "snapshot",
    "help",
    "exit",
    "quit",
)
MAX_HISTORY = 10_000
MAX_LABEL = 64

HELP = """\
Commands:
  SYMBOL QTY [TRADE_ID]
               apply a trade: add QTY (signed, e.g. 100 or -25.5) to this strategy's SYMBOL;
               with a TRADE_ID (1-64 of letters, digits, . _ : / -) it is applied once:
               the same ID again is ignored, the same ID with another trade is an error
  positions    every position this node knows, by strategy then symbol
  exposure     the firm's net position per symbol, over every strategy
  limits       each symbol's exposure and its --limits limit, breaches marked
  peers        each peer: name, address, state, last heard
  history SYMBOL [N]
               the last N (default 20) trades of this strategy in SYMBOL, from the journal
  snapshot [LABEL]
               copy the whole view (every strategy) into the store's snapshots
  help         this text
  exit, quit   stop this node (so does end of input, Ctrl-D, Ctrl-C)
Command words are commands in any case (a symbol spelt like one cannot be typed here).
Rows: strategy | symbol | net position | timestamp (ns)
"""

# The grammar's pieces, as regular expressions over ASCII text. Every quantifier is possessive
# (``*+``, ``++``, ``?+``, ``{m,n}+``: what it takes it never gives back). No piece could
# give a character to the one after it (a symbol, a number, a trade ID never hold a blank, a
# CR or a newline; a number's parts each start with their own character), so they accept
# exactly what the greedy forms do, and the regex engine keeps no state to backtrack: a
# burst's regex is 40 % faster.
_BLANK = r"[ \t]"  # what separates words: nothing else (no no-break space)
_SYMBOL = rf"[{SYMBOL_CHARS}]{{1,{MAX_SYMBOL_LENGTH}}}+"
# A plain decimal number of ASCII digits, optionally with an exponent: no nan, inf, hex,
# underscores, or digits of other scripts.
_NUMBER = r"[+-]?+(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][+-]?+[0-9]++)?+"
_TRADE_ID = rf"[{SYMBOL_CHARS}]{{1,{MAX_TRADE_ID_LENGTH}}}+"
# A word of the characters a number is spelt with. Over these (no underscore, space, letter of
# inf or nan, or digit of another script) ``float`` takes exactly the words ``_NUMBER``
# matches, and ``int`` exactly the whole ones: the burst path leaves its quantities to them.
_NUMBER_CHARS = r"[-+0-9.eE]++"
# A command word, in any case, followed by a blank or the end: never a symbol. Grouped by
# first letter, so that a line whose first letter starts no command word is past this test
# after one character class.
_BY_FIRST_LETTER = {
    first: [word[1:] for word in COMMANDS if word[0] == first]
    for first in sorted({w[0] for w in COMMANDS})
}
_COMMAND_WORD = "|".join(
    f"[{first}{first.upper()}](?i:{'|'.join(rests)})" for first, rests in _BY_FIRST_LETTER.items()
)
_NOT_A_COMMAND = rf"(?!(?:{_COMMAND_WORD})(?:{_BLANK}|\r?$))"


def _trade_words(group: str, number: str = _NUMBER) -> str:
    """SYMBOL QTY [TRADE_ID] and the blanks after them, an optional CR (a CRLF line ending);
    each word in a capturing group for ``group="("``, in none for ``group="(?:"``."""
    return (
        rf"{group}{_SYMBOL}){_BLANK}++{group}{number})"
        rf"(?:{_BLANK}++{group}{_TRADE_ID}))?+{_BLANK}*+\r?+"
    )


# One trade line, blanks before it: what ``parse_line`` takes as a trade.
_TRADE = re.compile(rf"{_BLANK}*+{_NOT_A_COMMAND}{_trade_words('(')}")
_WORDS = re.compile(rf"{_BLANK}+")
# The burst path (``trades_of``): a chunk made only of trade lines, each ending in a newline,
# the command words left to ``_EVERY_COMMAND_SPELLING`` and the numbers to ``_floats`` (a
# third faster than with ``_NUMBER``).
_LINES = re.compile(rf"(?:{_BLANK}*+{_trade_words('(?:', _NUMBER_CHARS)}\n)*+")
# Every spelling of every command word (1,296 strings): a symbol that is one is a command.
_EVERY_COMMAND_SPELLING = frozenset(
    "".join(letters) for word in COMMANDS for letters in product(*((c, c.upper()) for c in word))
)
# What no trade's quantity may be. ``float`` of a decimal number is finite, zero (either
# sign, equal and hashing alike) or infinite (an exponent out of range), never nan.
_NOT_A_CHANGE = frozenset({0.0, math.inf, -math.inf})
# C0 and C1 control characters but tab and newline (C1 NEL \x85 would otherwise split words).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SYMBOL_ONLY = re.compile(_SYMBOL)
_NUMBER_ONLY = re.compile(_NUMBER)
_TRADE_ID_ONLY = re.compile(_TRADE_ID)
_COUNT = re.compile(r"[0-9]{1,5}")


class ConsoleError(ValueError):
    """A line that is not a command; the message says what was expected."""


class TradeCommand(NamedTuple):
    symbol: str
    quantity: float
    trade_id: str | None = None


class Command(NamedTuple):
    name: str  # one of COMMANDS
    args: tuple[str, ...] = ()  # history: (SYMBOL, N); snapshot: (LABEL,), or () for none


def trades_of(block: bytes) -> list[tuple[str, float, None, str | None]] | None:
    """The trades of a chunk of lines (each ending in a newline) if every line is a valid
    trade, as ``(symbol, quantity, None, trade_id)``; else None (then parse line by line).

    The burst path: the same grammar as ``parse_line``, in a few calls over the whole chunk and
    no Python code per line. The chunk is ASCII, ``_LINES`` matches it whole (the trade line's
    regex, but the command-word lookahead and with any word of a number's characters for the
    quantity), no symbol is a command word in any case, and every quantity is a number to
    ``float``, neither zero nor out of range.
    """
    if not block.isascii():  # the trade grammar is ASCII: a line with another byte is not one
        return None
    text = block.decode("ascii")
    if _LINES.fullmatch(text) is None:
        return None
    words = text.split()  # of valid lines: each line's two or three words, in order
    lines = text.count("\n")
    symbols: Sequence[str]
    texts: Sequence[str]
    trade_ids: Iterable[str | None]
    if len(words) == 2 * lines:  # no trade IDs
        symbols, texts, trade_ids = words[::2], words[1::2], repeat(None)
    elif len(words) == 3 * lines:  # a trade ID on every line
        symbols, texts, trade_ids = words[::3], words[1::3], words[2::3]
    else:  # some: each line's words, the missing third None
        symbols, texts, trade_ids = zip_longest(*map(str.split, text.splitlines()))
    if not _EVERY_COMMAND_SPELLING.isdisjoint(symbols):
        return None
    try:
        quantities = _floats(texts)
    except ValueError:
        return None
    if not _NOT_A_CHANGE.isdisjoint(quantities):
        return None
    return list(zip(symbols, quantities, repeat(None), trade_ids))


def _floats(numbers: Sequence[str]) -> list[float]:
    """``float`` of each of these words of a number's characters (``_NUMBER_CHARS``);
    ValueError if one is not a number. Whole numbers go by ``int``, a third faster, and exact:
    both round to the nearest float (only ``-0`` gives 0.0 where ``float`` gives -0.0, and a
    trade refuses either)."""
    together = "".join(numbers)
    if "." not in together and "e" not in together and "E" not in together:
        try:
            return list(map(float, map(int, numbers)))
        except (ValueError, OverflowError):  # not a number, over int()'s 4,300 digits, or
            pass  # out of range: float() tells which
    return list(map(float, numbers))


def parse_line(line: str) -> TradeCommand | Command | None:
    """Parse one console line; None for a blank line; raise ``ConsoleError`` if it is bad."""
    line = line.rstrip("\n")
    trade = _TRADE.fullmatch(line)
    if trade is not None:
        return _trade(*trade.groups())
    line = line.removesuffix("\r")
    control = _CONTROL.search(line)
    if control is not None:
        raise ConsoleError(
            f"control character {control.group()!r} in input; expected SYMBOL QTY or a command"
        )
    words = [word for word in _WORDS.split(line) if word]
    if not words:
        return None
    if words[0].lower() in COMMANDS:
        return _parse_command(words[0].lower(), words[1:], line)
    odd = next((c for c in line if not c.isascii() or not c.isprintable()), None)
    if odd is not None:
        raise ConsoleError(
            f"character {odd!r} (U+{ord(odd):04X}) in {_show(line)}: expected SYMBOL QTY"
            " [TRADE_ID] in ASCII letters and digits, separated by spaces"
        )
    if len(words) == 1:
        raise ConsoleError(
            f"{_show(words[0])} is not a command; expected SYMBOL QTY [TRADE_ID]"
            f" (e.g. AAPL 100) or one of: {', '.join(COMMANDS)}"
        )
    if len(words) > 3:
        raise ConsoleError(
            f"too many words in {_show(line)}; expected SYMBOL QTY [TRADE_ID] (e.g. AAPL 100)"
        )
    symbol, text = words[:2]
    if _SYMBOL_ONLY.fullmatch(symbol) is None:
        raise ConsoleError(
            f"invalid symbol {_show(symbol)}: expected 1-{MAX_SYMBOL_LENGTH} of letters,"
            " digits and . _ : / -"
        )
    if _NUMBER_ONLY.fullmatch(text) is None:
        raise ConsoleError(
            f"invalid quantity {_show(text)}: expected a signed decimal number (e.g. 100, -2.5)"
        )
    if len(words) == 3 and _TRADE_ID_ONLY.fullmatch(words[2]) is None:
        raise ConsoleError(
            f"invalid trade ID {_show(words[2])}: expected 1-{MAX_TRADE_ID_LENGTH} of letters,"
            " digits and . _ : / -"
        )
    raise AssertionError(f"the trade grammar refused {line!r}")  # pragma: no cover


def _trade(symbol: str, text: str, trade_id: str | None) -> TradeCommand:
    """A trade whose words match the grammar: check what a regex cannot (range, zero)."""
    quantity = float(text)
    if not math.isfinite(quantity):
        raise ConsoleError(
            f"quantity {_show(text)} is out of range: expected a finite number (e.g. 100, -2.5)"
        )
    if quantity == 0:
        raise ConsoleError(
            f"quantity {_show(text)} is zero: expected a non-zero change (e.g. 100, -2.5)"
        )
    return TradeCommand(symbol, quantity, trade_id)


def _show(text: str, limit: int = 40) -> str:
    """Quote user input for an error message, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _parse_command(name: str, args: list[str], line: str) -> Command:
    """A command word (any case) and its arguments: ``history SYMBOL [N]``, ``snapshot
    [LABEL]``; the others take none (``positions 5`` is an error, never a trade)."""
    if name == "snapshot":
        label = line.strip(" \t")[len(name) :].strip(" \t")
        if len(label) > MAX_LABEL or not label.isprintable():
            raise ConsoleError(
                f"invalid label {_show(label)}: expected up to {MAX_LABEL} characters"
            )
        return Command(name, (label,) if label else ())
    if name == "history":
        if not 1 <= len(args) <= 2:
            raise ConsoleError("expected history SYMBOL [N], e.g. history AAPL 10")
        symbol = args[0]
        if _SYMBOL_ONLY.fullmatch(symbol) is None:
            raise ConsoleError(
                f"invalid symbol {_show(symbol)}: expected 1-{MAX_SYMBOL_LENGTH} of letters,"
                " digits and . _ : / -"
            )
        count = args[1] if len(args) == 2 else "20"
        if _COUNT.fullmatch(count) is None or not 1 <= int(count) <= MAX_HISTORY:
            raise ConsoleError(
                f"invalid count {_show(count)}: expected a whole number of trades, 1-{MAX_HISTORY}"
            )
        return Command(name, (symbol, count))
    if args:
        raise ConsoleError(
            f"{name} takes no arguments, got {_show(' '.join(args))}: expected {name} alone"
            f" ({name!r} is a command word, never a symbol)"
        )
    return Command(name)
