"""Tests of limits.py: the --limits file, breach crossings and their throttled log lines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.limits import (
    BreachLog,
    LimitsError,
    LimitTable,
    LimitWatcher,
    load_limits,
    parse_limits,
)
from position_distributor.types import Position

from .waiting import capture_logs


def test_a_file_with_a_header_comments_and_a_default() -> None:
    """Header, comments, blank lines and a ``*`` row parse into per-symbol limits and a default."""
    table = parse_limits("symbol,limit\n# firm limits\nAAPL, 1000\n\n7203,5e5\n*,100\n")
    assert table.limits == {"AAPL": 1000.0, "7203": 500000.0}
    assert table.default == 100.0
    assert table.limit("AAPL") == 1000.0
    assert table.limit("MSFT") == 100.0
    assert len(table) == 3


def test_without_a_default_other_symbols_have_no_limit() -> None:
    """A symbol not listed has no limit when the file has no ``*`` row, and never breaches."""
    table = parse_limits("AAPL,10\n")
    assert table.limit("MSFT") is None
    assert not table.breached("MSFT", 1e300)


def test_a_breach_is_strictly_above_the_absolute_limit() -> None:
    """Long or short, a breach is an absolute exposure above the limit, not at it."""
    table = parse_limits("AAPL,100\n")
    assert not table.breached("AAPL", 100.0)
    assert not table.breached("AAPL", -100.0)
    assert table.breached("AAPL", 100.5)
    assert table.breached("AAPL", -100.5)


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("AAPL,100\nMSFT\n", 2, "expected SYMBOL,LIMIT"),
        ("AAPL,100,3\n", 1, "expected SYMBOL,LIMIT"),
        ("AAPL,abc\n", 1, "invalid limit 'abc'"),
        ("AAPL,-5\n", 1, "invalid limit '-5'"),
        ("AAPL,nan\n", 1, "invalid limit 'nan'"),
        ("AAPL,inf\n", 1, "invalid limit 'inf'"),
        ("AA$PL,5\n", 1, "invalid symbol 'AA$PL'"),
        ("# c\nAAPL,1\nAAPL,2\n", 3, "AAPL is given a limit twice"),
        ("*,1\n*,2\n", 2, "* is given a limit twice"),
    ],
)
def test_a_bad_line_is_named(text: str, line: int, what: str) -> None:
    """Each kind of bad line gives one error naming the file, the line and what is wrong."""
    with pytest.raises(LimitsError) as caught:
        parse_limits(text, "limits file x.csv")
    message = str(caught.value)
    assert message.startswith(f"limits file x.csv line {line}: ")
    assert what in message


def test_load_limits_says_why_a_file_cannot_be_read(tmp_path: Path) -> None:
    """A missing file and a file that is not UTF-8 are named in the error."""
    with pytest.raises(LimitsError, match=r"cannot read limits file .*missing\.csv"):
        load_limits(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"AAPL,1\n\xff\xfe,2\n")
    with pytest.raises(LimitsError, match="line 2: not UTF-8"):
        load_limits(bad)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True),
        st.floats(min_value=0, max_value=1e15, allow_nan=False),
        max_size=20,
    ),
    st.none() | st.floats(min_value=0, max_value=1e15),
)
def test_a_written_table_parses_back(limits: dict[str, float], default: float | None) -> None:
    """Any table written as ``symbol,limit`` lines (repr of the float) parses back equal."""
    lines = [f"{symbol},{limit!r}" for symbol, limit in limits.items()]
    if default is not None:
        lines.append(f"*,{default!r}")
    table = parse_limits("\n".join(lines))
    assert table.limits == limits
    assert table.default == default


def test_crossings_are_logged_at_most_once_a_minute_per_symbol() -> None:
    """The first crossing is logged at once; a flicker within a minute is counted, not logged;
    the next logged crossing says how many were not."""
    table = parse_limits("AAPL,100\nMSFT,100\n")
    log = BreachLog(interval=60.0)
    first = log.update("AAPL", 150.0, table, now=0.0)
    assert first is not None and first.breached and first.unlogged == 0
    assert log.update("AAPL", 50.0, table, now=1.0) is None  # back under: throttled
    assert log.update("AAPL", 150.0, table, now=2.0) is None  # over again: throttled
    assert log.update("AAPL", 160.0, table, now=3.0) is None  # still over: no crossing
    assert log.breached == {"AAPL"}
    assert log.crossings == 2
    other = log.update("MSFT", -101.0, table, now=3.0)  # another symbol is not throttled
    assert other is not None and other.breached
    back = log.update("AAPL", 10.0, table, now=61.0)
    assert back is not None and not back.breached and back.unlogged == 2
    assert log.breached == {"MSFT"}


def test_the_watcher_logs_a_warning_on_breach_and_info_on_return() -> None:
    """Changes crossing a limit log one WARNING naming symbol, exposure and limit; going back
    under logs INFO; the rows of the limits command show it."""
    clock = [0.0]
    with capture_logs("INFO") as logs:
        watcher = LimitWatcher(
            parse_limits("AAPL,100\n*,1000\n"),
            [Position("s2", "AAPL", 60.0, 1)],
            now=lambda: clock[0],
        )
        watcher.deliver([Position("s1", "AAPL", 50.0, 2)])
        line = logs.wait_for_text("limit breach")
        assert line == "WARNING limit breach: AAPL exposure 110.000000 is above its limit 100"
        assert watcher.breached == {"AAPL"}
        rows = watcher.rows()
        assert [(r.symbol, r.exposure, r.limit, r.breached) for r in rows] == [
            ("AAPL", 110.0, 100.0, True),
            ("*", None, 1000.0, False),
        ]
        clock[0] = 120.0
        watcher.deliver([Position("s1", "AAPL", -10.0, 3)])
        back = logs.wait_for_text("limit ok")
        assert back.startswith("INFO limit ok: AAPL exposure 50.000000 is back within its limit")
    assert watcher.breached == frozenset()


def test_a_reload_checks_every_symbol_again() -> None:
    """New limits apply at once to the exposure already held: a tighter limit logs a breach."""
    watcher = LimitWatcher(LimitTable(), [Position("s1", "MSFT", -500.0, 1)])
    assert watcher.breached == frozenset()
    with capture_logs("WARNING") as logs:
        watcher.reload(parse_limits("*,100\n"))
        logs.wait_for_text("limit breach: MSFT exposure -500.000000 is above its limit 100")
    assert watcher.breached == {"MSFT"}
    assert watcher.crossings == 1


def test_exposure_is_exact_for_offsetting_strategies() -> None:
    """Exposure is summed afresh per symbol, so offsetting positions give exactly zero."""
    watcher = LimitWatcher(parse_limits("X,0\n"), [])
    watcher.deliver([Position("a", "X", 0.1, 1), Position("b", "X", 0.2, 1)])
    watcher.deliver([Position("a", "X", -0.2, 2), Position("b", "X", 0.2, 2)])
    row = watcher.rows()[0]
    assert row.exposure is not None and math.isclose(row.exposure, 0.0, abs_tol=0)
    assert not row.breached
