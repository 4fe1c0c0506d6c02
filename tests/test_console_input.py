"""The console's input path: stdin read in chunks of whole lines, bursts of trades at once."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.__main__ import MAX_LINE, _chunks_of_lines, run_console
from position_distributor.console import ConsoleError, TradeCommand, parse_line, trades_of

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


lines = st.text(alphabet=st.sampled_from("AZaz09._:/- \t+-eE.\r\x00\x85é"), min_size=0, max_size=12)


@given(st.lists(lines, min_size=1, max_size=8))
def test_the_burst_path_agrees_with_parse_line(texts: list[str]) -> None:
    """Whenever the burst path takes a chunk, each of its lines is a trade by parse_line, with
    the same symbol and quantity."""
    block = "".join(text.replace("\n", "") + "\n" for text in texts).encode()
    trades = trades_of(block)
    if trades is None:
        return
    for raw, (symbol, quantity, _, trade_id) in zip(block.split(b"\n"), trades, strict=False):
        try:
            parsed = parse_line(raw.decode())
        except ConsoleError as exc:  # pragma: no cover - the assertion below reports it
            raise AssertionError(f"{raw!r} taken as a trade but refused: {exc}") from exc
        assert parsed == TradeCommand(symbol, quantity, trade_id)


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
