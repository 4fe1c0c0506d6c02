"""Tests of console parsing: trades, commands, blank lines, and errors saying what was expected."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor import console
from position_distributor.console import (
    COMMANDS,
    HELP,
    Command,
    ConsoleError,
    TradeCommand,
    parse_line,
    trades_of,
)
from position_distributor.types import valid_symbol

# Golden examples.


@pytest.mark.parametrize(
    ("line", "trade"),
    [
        ("AAPL 100", TradeCommand("AAPL", 100.0)),
        ("AAPL 100\n", TradeCommand("AAPL", 100.0)),
        ("AAPL 100\r\n", TradeCommand("AAPL", 100.0)),
        ("7203 100", TradeCommand("7203", 100.0)),
        ("MSFT -25.5", TradeCommand("MSFT", -25.5)),
        ("BRK.B +1e3", TradeCommand("BRK.B", 1000.0)),
        ("EUR/USD .5", TradeCommand("EUR/USD", 0.5)),
        ("ES:CME 5.", TradeCommand("ES:CME", 5.0)),
        ("  AAPL\t\t-2E-1  ", TradeCommand("AAPL", -0.2)),
        ("aapl 1", TradeCommand("aapl", 1.0)),
        ("A" * 32 + " 1", TradeCommand("A" * 32, 1.0)),
    ],
)
def test_trades(line: str, trade: TradeCommand) -> None:
    """``SYMBOL QTY`` with a signed decimal quantity is a trade, surrounding blanks ignored."""
    assert parse_line(line) == trade


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "history"])
def test_commands(name: str) -> None:
    """Each command word that takes no argument is a command, in any case, with a line ending."""
    assert parse_line(name) == Command(name)
    assert parse_line(f"  {name.upper()}\n") == Command(name)


def test_command_list() -> None:
    """The console knows DESIGN.md's commands plus history, snapshot and limits; help mentions
    each."""
    assert set(COMMANDS) == {
        "positions",
        "exposure",
        "limits",
        "peers",
        "history",
        "snapshot",
        "help",
        "exit",
        "quit",
    }
    for name in COMMANDS:
        assert name in HELP
    assert "SYMBOL QTY" in HELP


@pytest.mark.parametrize("line", ["", "\n", "   ", "\t \r\n", "\r\n"])
def test_blank_lines_are_nothing(line: str) -> None:
    """A blank line is ignored: parse_line returns None."""
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("AAPL", "'AAPL' is not a command; expected SYMBOL QTY [TRADE_ID] (e.g. AAPL 100) or"),
        ("positons", "'positons' is not a command; expected SYMBOL QTY"),
        ("AAPL abc", "invalid quantity 'abc': expected a signed decimal number"),
        ("AAPL 1 2 3", "too many words in 'AAPL 1 2 3'; expected SYMBOL QTY [TRADE_ID]"),
        ("AAPL 1 ID 4", "too many words in 'AAPL 1 ID 4'"),
        ("AAPL 1 $X", "invalid trade ID '$X': expected 1-64 of letters"),
        ("AAPL 1 " + "X" * 65, "invalid trade ID 'XXXXXXXX"),
        ("AAPL \uff11\uff10\uff10", "character '\uff11' (U+FF11)"),
        ("AAPL\u00a0100", "character '\\xa0' (U+00A0)"),
        ("AAPL 1\u00a0X1", "character '\\xa0' (U+00A0)"),
        ("AAPL \u0661", "character '\u0661' (U+0661)"),
        ("positions 5", "positions takes no arguments, got '5'"),
        ("POSITIONS 5", "positions takes no arguments"),
        ("exit 1", "exit takes no arguments"),
        ("quit now", "quit takes no arguments"),
        ("help me", "help takes no arguments"),
        ("peers 1 2", "peers takes no arguments"),
        ("AAPL nan", "invalid quantity 'nan': expected a signed decimal number"),
        ("AAPL NaN", "invalid quantity 'NaN': expected a signed decimal number"),
        ("AAPL inf", "invalid quantity 'inf': expected a signed decimal number"),
        ("AAPL -Infinity", "invalid quantity '-Infinity': expected a signed decimal number"),
        ("AAPL 1e999", "quantity '1e999' is out of range: expected a finite number"),
        ("AAPL -1e999", "quantity '-1e999' is out of range: expected a finite number"),
        ("MSFT 10abc", "invalid quantity '10abc': expected a signed decimal number"),
        ("MSFT 0x10", "invalid quantity '0x10': expected a signed decimal number"),
        ("MSFT 1_000", "invalid quantity '1_000': expected a signed decimal number"),
        ("MSFT 1,5", "invalid quantity '1,5': expected a signed decimal number"),
        ("MSFT --1", "invalid quantity '--1': expected a signed decimal number"),
        ("MSFT 0", "quantity '0' is zero: expected a non-zero change"),
        ("MSFT -0.0", "quantity '-0.0' is zero: expected a non-zero change"),
        ("A" * 33 + " 1", "expected 1-32 of letters, digits and . _ : / -"),
        ("AA$PL 1", "invalid symbol 'AA$PL': expected 1-32 of letters"),
        ("\u00c4PPL 1", "character '\u00c4' (U+00C4)"),
        ("AAPL\x00 1", "control character '\\x00' in input; expected SYMBOL QTY or a command"),
        ("\x1b[A", "control character '\\x1b' in input; expected SYMBOL QTY"),
        ("AAPL 1\x7f", "control character '\\x7f' in input"),
        ("AAPL\r100", "control character '\\r' in input"),
        ("AAPL\x85100", "control character '\\x85' in input"),
    ],
)
def test_errors_say_what_was_expected(line: str, words: str) -> None:
    """Each kind of bad line raises ConsoleError whose message names the problem and the fix."""
    with pytest.raises(ConsoleError) as caught:
        parse_line(line)
    assert words in str(caught.value)


def test_huge_input_is_quoted_short() -> None:
    """An over-long word is cut in the error message, which stays one short line."""
    with pytest.raises(ConsoleError) as caught:
        parse_line("X" * 100_000 + " 1")
    message = str(caught.value)
    assert "'" + "X" * 40 + "...'" in message
    assert len(message) < 200


# Properties.

symbols = st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True).filter(
    lambda s: s.lower() not in COMMANDS
)
quantities = st.floats(allow_nan=False, allow_infinity=False).filter(lambda q: q != 0)


@given(symbols, quantities, st.sampled_from([" ", "\t", "  "]))
def test_any_symbol_and_finite_quantity(symbol: str, quantity: float, gap: str) -> None:
    """Any valid symbol and non-zero finite quantity, as Python prints it, parse as that trade."""
    assert parse_line(f"{symbol}{gap}{quantity!r}\n") == TradeCommand(symbol, quantity)


printable_ish = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.ascii_letters + string.digits + " \t.-+eE_:/$"),
        st.characters(),
    ),
    max_size=40,
)


@given(printable_ish)
def test_any_line_is_a_command_or_a_console_error(line: str) -> None:
    """Any text gives None, a command, a valid trade, or ConsoleError with a one-line message."""
    try:
        result = parse_line(line)
    except ConsoleError as exc:
        message = str(exc)
        assert "expected" in message
        assert "\n" not in message
        return
    if result is None:
        assert line.split() == []
    elif isinstance(result, Command):
        assert result.name in COMMANDS
    else:
        assert valid_symbol(result.symbol)
        assert math.isfinite(result.quantity)
        assert result.quantity != 0


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("history AAPL", Command("history", ("AAPL", "20"))),
        ("history 7203 5", Command("history", ("7203", "5"))),
        ("snapshot", Command("snapshot")),
        ("snapshot end of day", Command("snapshot", ("end of day",))),
    ],
)
def test_history_and_snapshot_take_arguments(line: str, command: Command) -> None:
    """``history SYMBOL [N]`` (N defaults to 20) and ``snapshot [LABEL]`` parse their arguments."""
    assert parse_line(line) == command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("history", "history SYMBOL [N]"),
        ("history AAPL 1 2", "history SYMBOL [N]"),
        ("history AAPL x", "whole number"),
        ("history AAPL 0", "whole number"),
        ("history AAPL 10001", "whole number"),
        ("history A$PL", "invalid symbol"),
        ("snapshot " + "x" * 65, "up to 64 characters"),
    ],
)
def test_bad_history_and_snapshot_say_what_is_expected(line: str, expected: str) -> None:
    """A malformed ``history`` or ``snapshot`` line is refused with what was expected."""
    with pytest.raises(ConsoleError, match=re.escape(expected)):
        parse_line(line)


def test_a_command_word_in_any_case_is_the_command_never_a_trade() -> None:
    """A command word is a command in any case, with or without arguments: ``HISTORY 5`` is
    the history of the symbol 5, never a trade of a symbol named HISTORY."""
    assert parse_line("HISTORY 5") == Command("history", ("5", "20"))
    assert parse_line("Snapshot eod") == Command("snapshot", ("eod",))


@pytest.mark.parametrize(
    ("line", "trade"),
    [
        ("AAPL 1 2", TradeCommand("AAPL", 1.0, "2")),
        ("AAPL 100 fill-2026-12-02/000123", TradeCommand("AAPL", 100.0, "fill-2026-12-02/000123")),
        ("  7203\t-5\tX:Y.Z_1 \r\n", TradeCommand("7203", -5.0, "X:Y.Z_1")),
        ("AAPL 1 " + "i" * 64, TradeCommand("AAPL", 1.0, "i" * 64)),
    ],
)
def test_a_third_word_is_the_trade_id(line: str, trade: TradeCommand) -> None:
    """``SYMBOL QTY TRADE_ID``: the third word is the trade's ID (1-64 of the symbol's
    characters)."""
    assert parse_line(line) == trade


@given(
    st.one_of(
        st.sampled_from(COMMANDS).flatmap(
            lambda word: st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
                lambda ups: "".join(c.upper() if up else c for c, up in zip(word, ups, strict=True))
            )
        ),
        st.text(alphabet="eEhHlLpPqQsSxXiIoOtTnNmMrRuUaA", min_size=1, max_size=10),
    ),
    st.sampled_from([" 1\n", "\t-2.5 ID-1\n", "\n", " \r\n"]),
)
def test_a_command_word_in_any_case_is_never_a_symbol(word: str, rest: str) -> None:
    """A line starting with a command word, in any mix of cases, is never a trade, on either
    path; a word that merely looks like one (another letter, one more or less) is a symbol."""
    line = word + rest
    burst = trades_of(line.encode())
    try:
        parsed: object = parse_line(line)
    except ConsoleError:
        parsed = None
    if word.lower() in COMMANDS:
        assert burst is None
        assert not isinstance(parsed, TradeCommand)
    elif rest in (" 1\n", "\t-2.5 ID-1\n"):
        assert burst is not None and burst[0][0] == word
        assert isinstance(parsed, TradeCommand) and parsed.symbol == word


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_the_burst_path_and_parse_line_agree_on_any_line(text: str) -> None:
    """For any line, the burst regex takes it exactly when parse_line says it is a trade, and
    as the same trade: one grammar on every path."""
    line = text.replace("\n", "") + "\n"
    burst = trades_of(line.encode())
    try:
        parsed = parse_line(line)
    except ConsoleError:
        parsed = None
    if burst is None:
        assert not isinstance(parsed, TradeCommand)
    else:
        ((symbol, quantity, _, trade_id),) = burst
        assert parsed == TradeCommand(symbol, quantity, trade_id)


def greedy(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """``pattern`` with each possessive quantifier (``*+``, ``++``, ``?+``, ``{m,n}+``) greedy."""
    return re.compile(re.sub(r"(?<=[*+?}])\+", "", pattern.pattern), pattern.flags)


@pytest.mark.parametrize(
    "pattern",
    [console._TRADE, console._SYMBOL_ONLY, console._NUMBER_ONLY, console._TRADE_ID_ONLY],
    ids=lambda pattern: pattern.pattern[:20],
)
@given(data=st.data())
def test_the_possessive_grammar_takes_what_the_greedy_one_does(
    pattern: re.Pattern[str], data: st.DataObject
) -> None:
    """The grammar's quantifiers are possessive (faster, and never giving back what they took):
    each regex matches a line, or a word, exactly as its greedy form does, with the same
    groups: for any text the greedy form matches, and for any text at all."""
    text = data.draw(
        st.one_of(
            st.from_regex(greedy(pattern), fullmatch=True),
            st.text(
                alphabet=st.one_of(st.sampled_from(" \t\r+-.eE0123456789_:/xXpP"), st.characters()),
                max_size=40,
            ),
        )
    )
    possessive, plain = pattern.fullmatch(text), greedy(pattern).fullmatch(text)
    assert (possessive is None) == (plain is None)
    if possessive is not None and plain is not None:
        assert possessive.groups() == plain.groups()


def test_the_greedy_form_of_the_grammar_is_the_one_it_was() -> None:
    """``greedy`` undoes exactly the possessive quantifiers: the number is the one it was."""
    assert greedy(console._NUMBER_ONLY).pattern == (
        r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    )


def takes(convert: Callable[[str], object], word: str) -> bool:
    """Whether ``convert(word)`` takes ``word`` as a number."""
    try:
        convert(word)
    except ValueError:
        return False
    return True


def all_words(alphabet: str, longest: int) -> Iterator[str]:
    """Every word of ``alphabet`` up to ``longest`` characters."""
    for length in range(1, longest + 1):
        yield from map("".join, itertools.product(alphabet, repeat=length))


def test_float_and_int_take_exactly_the_grammar_s_numbers_over_their_characters() -> None:
    """The burst path checks only that a quantity is a word of a number's characters
    (``_NUMBER_CHARS``) and leaves the rest to ``float`` (``int`` for whole numbers): over
    those characters each takes exactly the numbers ``_NUMBER`` matches. Every word of up to 6
    of them (two digits stand for ten)."""
    for word in all_words("+-09.eE", 6):
        number = console._NUMBER_ONLY.fullmatch(word) is not None
        assert takes(float, word) == number, word
        if not {".", "e", "E"} & set(word):
            assert takes(int, word) == number, word


@given(st.text(alphabet="+-0123456789.eE", min_size=1, max_size=30))
def test_float_and_int_take_exactly_the_grammar_s_numbers_of_any_length(word: str) -> None:
    """As above, for longer words."""
    assert console._NUMBER_CHARS == r"[-+0-9.eE]++"
    number = console._NUMBER_ONLY.fullmatch(word) is not None
    assert takes(float, word) == number
    if not {".", "e", "E"} & set(word):
        assert takes(int, word) == number
