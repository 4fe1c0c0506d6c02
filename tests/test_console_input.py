"""The console's input path: stdin read in chunks of whole lines, bursts of trades at once."""

from __future__ import annotations

import io
import os
import string
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.__main__ import MAX_LINE, _chunks_of_lines, run_console
from position_distributor.console import (
    COMMANDS,
    ConsoleError,
    TradeCommand,
    parse_line,
    trades_of,
)

from .inproc import Nodes
from .procs import Cluster


def read_chunks(writes: list[bytes]) -> tuple[list[bytes], str]:
    """Feed ``writes`` through a pipe (one ``write`` each) and collect the chunks of lines."""
    read_end, write_end = os.pipe()
    errors = io.StringIO()

    def feed() -> None:
        with os.fdopen(write_end, "wb", buffering=0) as pipe:
            for data in writes:
                pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        chunks = list(_chunks_of_lines(read_end, errors))
    finally:
        writer.join()
        os.close(read_end)
    return chunks, errors.getvalue()


def test_chunks_hold_whole_lines_whatever_the_writes() -> None:
    """Lines split across writes come out whole, and a last line without newline too."""
    chunks, errors = read_chunks([b"AAPL 1\nMS", b"FT 2\n", b"IBM", b" 3"])
    assert b"".join(chunks) == b"AAPL 1\nMSFT 2\nIBM 3\n"
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert errors == ""


def test_an_endless_line_is_reported_once_and_never_held() -> None:
    """Input that never ends its line is cut off past MAX_LINE with one error line; the lines
    before it still come through."""
    chunks, errors = read_chunks([b"AAPL 1\n", b"X" * (MAX_LINE + 10), b"Y" * MAX_LINE])
    assert b"".join(chunks) == b"AAPL 1\n"
    assert errors == f"error: line longer than {MAX_LINE} characters ignored\n"


def test_an_over_long_line_is_refused_and_the_console_goes_on(nodes: Nodes) -> None:
    """A line over MAX_LINE, however it was read, prints one error line; the trades around it
    apply."""
    node, rows = nodes.start("alpha")
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(b"AAPL 1\n" + b"X" * (MAX_LINE + 1) + b" 5\nMSFT 2\n")
    errors = io.StringIO()
    try:
        run_console(node, read_end, errors)
    finally:
        os.close(read_end)
    node.flush()
    assert errors.getvalue() == f"error: line longer than {MAX_LINE} characters ignored\n"
    assert rows.nets() == {("alpha", "AAPL"): 1.0, ("alpha", "MSFT"): 2.0}


def test_a_burst_of_trades_is_recognised_at_once() -> None:
    """A chunk made only of trade lines gives every trade, in order, as the console parses it."""
    block = b"AAPL 100\n  7203\t-2.5\r\nBRK.A +1e3\n"
    assert trades_of(block + b"IBM 3 fill-42\n") == [
        ("AAPL", 100.0, None, None),
        ("7203", -2.5, None, None),
        ("BRK.A", 1000.0, None, None),
        ("IBM", 3.0, None, "fill-42"),
    ]


@pytest.mark.parametrize(
    "odd_line",
    [
        b"",
        b"positions",
        b"AAPL 0",
        b"AAPL 1e999",
        b"AAPL nan",
        b"AAPL 1 2 3",
        b"positions 5",
        b"EXIT 1",
        b"AAPL \xef\xbc\x91",
        b"AAPL\xc2\xa01",
        b"A$PL 1",
        b"AAPL\x001",
    ],
)
def test_a_chunk_with_anything_but_a_valid_trade_takes_the_line_by_line_path(
    odd_line: bytes,
) -> None:
    """One blank line, command or bad line in a chunk sends the whole chunk line by line."""
    assert trades_of(b"AAPL 1\n" + odd_line + b"\nMSFT 2\n") is None


def any_case(word: str) -> st.SearchStrategy[str]:
    """``word`` with each letter in either case."""
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(c.upper() if up else c for c, up in zip(word, ups, strict=True))
    )


WORD_CHARS = string.ascii_letters + string.digits + "._:/-"
valid_symbols = st.text(alphabet=WORD_CHARS, min_size=1, max_size=6)
valid_ids = st.text(alphabet=WORD_CHARS, min_size=1, max_size=4)
blanks = st.text(alphabet=" \t", min_size=1, max_size=2)
# Numbers as the grammar spells them, none zero or out of range: whole, decimal, exponents,
# signs, leading zeros.
numbers = st.one_of(
    st.tuples(st.sampled_from(["", "+", "-"]), st.integers(1, 10**20)).map(
        lambda drawn: f"{drawn[0]}{drawn[1]}"
    ),
    st.floats(allow_nan=False, allow_infinity=False).filter(bool).map(repr),
    st.from_regex(
        r"[+-]?0{0,2}(?:[1-9][0-9]{0,2}(?:\.[0-9]{0,3})?|\.0?[1-9][0-9]{0,2})(?:[eE][+-]?[0-9]{1,2})?",
        fullmatch=True,
    ),
)
# Each word or gap as the grammar refuses it, or as it may take it but not as a trade:
command_words = st.sampled_from(COMMANDS).flatmap(any_case)
odd_symbols = st.one_of(
    st.text(alphabet="Az9._:/-", min_size=31, max_size=34),  # 32 is the longest
    st.sampled_from(["exits", "quitx", "hel", "positionsx", "Snapshot1"]),  # symbols
    st.text(alphabet="Ae$_+\x00\x85\xa0\xe9\uff11", min_size=1, max_size=4),
)
odd_gaps = st.sampled_from(["", "\xa0", "\r", " \x0b", "\u3000"])
# What float() or int() would take but the grammar does not (inf, nan, 1_000, spaces, other
# scripts' digits), zero, out of range, too long for int(), halves of an ulp.
odd_numbers = st.sampled_from(
    [
        *("0", "-0", "+0.0", "0e999", "000", "1e999", "-1e999", "1e-999", "4e-324"),
        *("9007199254740993", "-9007199254740993", "1" * 309, "-" + "9" * 400),
        *("0" * 5000 + "1", "1" + "0" * 4400, "inf", "-Infinity", "nan", "1_000"),
        *("0x10", "1 000", "\uff11", "1\u0660", "\xb2", "1e", ".", "+-1", "1.2.3"),
    ]
)
odd_quantities = st.one_of(
    odd_numbers, st.floats().map(repr), st.text(alphabet="+-0123456789.eE_", max_size=6)
)
odd_ids = st.one_of(
    st.text(alphabet="Az9._:/-", min_size=63, max_size=66),  # 64 is the longest
    st.text(alphabet="Ae$_+\x00\xa0\xe9", min_size=1, max_size=4),
)


def lines_of(
    symbols: st.SearchStrategy[str],
    gaps: st.SearchStrategy[str],
    quantities: st.SearchStrategy[str],
    ids: st.SearchStrategy[str],
) -> st.SearchStrategy[str]:
    """Lines of SYMBOL QTY [TRADE_ID] from these words and gaps, blanks around, CRs at the end."""
    return st.builds(
        lambda *parts: "".join(parts),
        st.text(alphabet=" \t", max_size=2),
        symbols,
        gaps,
        quantities,
        st.one_of(st.just(""), st.tuples(gaps, ids).map("".join)),
        st.text(alphabet=" \t", max_size=2),
        st.sampled_from(["", "", "\r", "\r\r"]),
    )


valid_lines = lines_of(valid_symbols, blanks, numbers, valid_ids)
odd_lines = st.one_of(
    lines_of(command_words, blanks, numbers, valid_ids),  # one word or gap at a time
    lines_of(odd_symbols, blanks, numbers, valid_ids),
    lines_of(valid_symbols, odd_gaps, numbers, valid_ids),
    lines_of(valid_symbols, blanks, odd_quantities, valid_ids),
    lines_of(valid_symbols, blanks, odd_numbers, valid_ids),
    lines_of(valid_symbols, blanks, numbers, odd_ids),
    lines_of(
        st.one_of(command_words, odd_symbols, valid_symbols),
        st.one_of(odd_gaps, blanks),
        st.one_of(odd_quantities, numbers),
        st.one_of(odd_ids, valid_ids),
    ),
    st.sampled_from(["", " ", "\t", "\r", "AAPL", "AAPL 1 2 3", "AAPL 1 x y", "history AAPL 5"]),
    command_words,
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=12),
).map(str.encode)


def with_odd_line(drawn: tuple[list[bytes], bytes | None, int]) -> list[bytes]:
    """The valid lines, and the odd one if any at its place among them."""
    valid, odd, at = drawn
    return valid if odd is None else [*valid[:at], odd, *valid[at:]]


# A chunk: lines that are valid trades, and maybe one odd line, a trade or not, among them.
chunks = st.tuples(
    st.lists(valid_lines.map(str.encode), max_size=6),
    st.one_of(
        st.none(),
        odd_lines,
        odd_lines,
        odd_lines,
        st.binary(max_size=8).map(lambda raw: raw.replace(b"\n", b"")),  # not always UTF-8
    ),
    st.integers(0, 6),
).map(with_odd_line)


def parsed_one_by_one(block: bytes) -> list[tuple[str, float, None, str | None]] | None:
    """What ``parse_line`` makes of each line of ``block`` as the console decodes it: the
    trades if every line is one, else None."""
    trades = []
    for raw in block.split(b"\n")[:-1]:
        try:
            parsed = parse_line(raw.decode(errors="replace"))
        except ConsoleError:
            return None
        if not isinstance(parsed, TradeCommand):
            return None
        trades.append((parsed.symbol, parsed.quantity, None, parsed.trade_id))
    return trades


@given(chunks)
def test_the_burst_path_is_parse_line_on_every_line(lines: list[bytes]) -> None:
    """For any chunk of lines, valid or not, ``trades_of`` gives exactly the trades
    ``parse_line`` reads in its lines when every line is a trade, and None otherwise (then the
    console parses the chunk line by line, with the same errors)."""
    block = b"".join(line + b"\n" for line in lines)
    burst = trades_of(block)
    assert burst == parsed_one_by_one(block)
    for symbol, quantity, _, trade_id in burst or ():
        assert type(symbol) is str and type(quantity) is float
        assert trade_id is None or type(trade_id) is str


@pytest.mark.parametrize(
    "lines",
    [
        [b"AAPL 1", b"MSFT -2.5 id-1", b"IBM 3"],  # some lines with a trade ID
        [b"AAPL 1 a", b"MSFT -2.5 id-1", b" IBM\t3\tc \r"],  # every line
        [b"AAPL " + b"0" * 5000 + b"1", b"MSFT 9007199254740993"],  # too long for int()
        [b"AAPL 1", b"MSFT 1" + b"0" * 400],  # out of range
        [b"AAPL 1", b"MSFT -1e999"],
        *([b"AAPL 1", b"MSFT " + word] for word in (b"1_000", b"inf", b"nan", b"0x10", b"1e")),
        [b"AAPL 1", b"MSFT -0"],
        [b"AAPL 1", b"pOsItIoNs 1"],
        [b"AAPL 1", b"AAPL 1 2 3"],
    ],
)
def test_the_burst_path_reads_ids_huge_numbers_and_odd_lines_as_parse_line(
    lines: list[bytes],
) -> None:
    """The cases the property above might take long to draw, each compared the same way."""
    block = b"".join(line + b"\n" for line in lines)
    assert trades_of(block) == parsed_one_by_one(block)


def test_a_chunk_must_end_with_its_newline() -> None:
    """A chunk is whole lines: one whose last line has no newline is not a burst (the console
    never passes one)."""
    assert trades_of(b"AAPL 1\nMSFT 2") is None
    assert trades_of(b"AAPL 1\n!") is None
    assert trades_of(b"") == []


def test_odd_keyboards_and_command_words_with_arguments_are_errors_never_trades(
    cluster: Cluster,
) -> None:
    """Full-width digits, a no-break space, ``positions 5``, ``exit 1`` and four fields each
    print one ``error:`` line and nothing else; the node goes on and trades after them."""
    node = cluster.add("alpha", recovery_timeout=0)
    bad = [
        "AAPL \uff11\uff10\uff10",
        "AAPL\u00a0100",
        "positions 5",
        "exit 1",
        "HELP 2",
        "AAPL 1 2 3",
    ]
    node.type(*bad)
    node.type("AAPL 1 2")
    node.wait_for_view({("alpha", "AAPL"): 1.0})
    node.sync_stderr()
    errors = node.log_lines("error: ")
    assert len(errors) == len(bad) + 1  # and the sync marker's
    assert node.rows() == [row for row in node.rows() if row[1] == "AAPL"]
    assert node.alive
    assert node.stop() == 0


def test_a_console_that_fails_inside_stops_the_node_with_exit_status_1(tmp_path: Path) -> None:
    """An internal failure of the console (here: stdin opened for writing only, so reading it
    fails) stops the node with exit status 1, never 0."""
    stdin = os.open(tmp_path / "stdin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "position_distributor", "alpha", "0"),
                *("--data-dir", str(tmp_path / "data"), "--recovery-timeout", "0"),
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=20,
        )
    finally:
        os.close(stdin)
    assert result.returncode == 1, result.stderr
    assert "console failed" in result.stderr
