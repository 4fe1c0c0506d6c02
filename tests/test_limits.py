"""Tests of limits.py: the --limits file, breach crossings and their throttled log lines."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor.limits import (
    BreachLog,
    Crossing,
    LimitsError,
    LimitTable,
    LimitWatcher,
    load_limits,
    parse_limits,
)
from position_distributor.types import Position

from .procs import Cluster, NodeProcess
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


def test_a_crossing_left_unsaid_is_said_when_the_window_ends() -> None:
    """A back-under throttled within the minute is said when the symbol's minute ends, as the
    last of the crossings unsaid; a flicker that ends where the log left it says nothing then,
    and its count goes with the next line."""
    table = parse_limits("AAPL,100\n")
    log = BreachLog(interval=60.0)
    assert log.update("AAPL", 150.0, table, now=0.0) is not None  # breach: said
    assert log.due_at() is None
    assert log.update("AAPL", 50.0, table, now=1.0) is None  # under
    assert log.update("AAPL", 150.0, table, now=2.0) is None  # over
    assert log.update("AAPL", 40.0, table, now=3.0) is None  # under
    assert log.due_at() == 60.0
    assert log.settle(59.9, table, {"AAPL": 40.0}) == []
    [said] = log.settle(60.0, table, {"AAPL": 40.0})
    assert (said.symbol, said.breached, said.exposure, said.unlogged) == ("AAPL", False, 40.0, 2)
    assert log.due_at() is None
    # A flicker back to the state logged last: nothing at the window's end.
    assert log.update("AAPL", 150.0, table, now=70.0) is None  # over (within 60 s of 60)
    assert log.update("AAPL", 10.0, table, now=71.0) is None  # under, as logged
    assert log.settle(120.0, table, {"AAPL": 10.0}) == []
    later = log.update("AAPL", 150.0, table, now=500.0)
    assert later is not None and later.breached and later.unlogged == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["AAPL", "MSFT"]),
            st.sampled_from([-150.0, -50.0, 0.0, 50.0, 150.0]),
            st.floats(min_value=0.0, max_value=30.0),
        ),
        max_size=60,
    )
)
def test_the_log_always_ends_in_the_true_state(
    steps: list[tuple[str, float, float]],
) -> None:
    """Whatever the exposures and their timing, once every window has ended the last line said
    of each symbol is its true state, and no symbol is said twice within one interval."""
    table = parse_limits("*,100\n")
    log = BreachLog(interval=60.0)
    exposures: dict[str, float] = {}
    said: dict[str, list[tuple[float, bool]]] = {}
    now = 0.0

    def record(crossings: list[Crossing | None]) -> None:
        for crossing in crossings:
            if crossing is not None:
                said.setdefault(crossing.symbol, []).append((now, crossing.breached))

    for symbol, exposure, gap in steps:
        now += gap
        record(log.settle(now, table, exposures))
        exposures[symbol] = exposure
        record([log.update(symbol, exposure, table, now)])
    while (due := log.due_at()) is not None:
        now = max(now, due)
        record(log.settle(now, table, exposures))
    for symbol, exposure in exposures.items():
        truth = abs(exposure) > 100
        assert (said[symbol][-1][1] if symbol in said else False) == truth
    for lines in said.values():
        assert all(b[0] - a[0] >= 60.0 - 1e-9 for a, b in itertools.pairwise(lines)), lines


def test_the_watcher_says_the_back_under_when_the_window_ends(no_thread_leak: None) -> None:
    """With a 0.3 s window, a breach then a back-under right after: the WARNING at once, the
    INFO when the window ends (from the limits-log thread), and close() ends that thread."""
    watcher = LimitWatcher(parse_limits("AAPL,100\n"), [], interval=0.3)
    try:
        with capture_logs("INFO") as logs:
            started = time.monotonic()
            watcher.deliver([Position("s1", "AAPL", 150.0, 1)])
            logs.wait_for_text("limit breach: AAPL")
            watcher.deliver([Position("s1", "AAPL", 50.0, 2)])
            assert watcher.breached == frozenset()
            back = logs.wait_for_text("limit ok: AAPL", timeout=10)
            assert time.monotonic() - started >= 0.3
            assert back == "INFO limit ok: AAPL exposure 50.000000 is back within its limit 100"
    finally:
        watcher.close()


def test_closing_says_a_crossing_still_unsaid(no_thread_leak: None) -> None:
    """A back-under still inside its window when the engine stops is said by close()."""
    watcher = LimitWatcher(parse_limits("AAPL,100\n"), [], interval=3600.0)
    with capture_logs("INFO") as logs:
        watcher.deliver([Position("s1", "AAPL", 150.0, 1)])
        watcher.deliver([Position("s1", "AAPL", 50.0, 2)])
        assert logs.lines_with("limit ok") == []
        watcher.close()
        assert logs.lines_with("limit ok") == [
            "INFO limit ok: AAPL exposure 50.000000 is back within its limit 100"
        ]


def _limit_lines(node: NodeProcess, symbol: str) -> list[str]:
    """The node's breach and back-under lines of ``symbol``, in order."""
    lines = node.log_lines(f": {symbol} exposure")
    return [line for line in lines if "limit breach" in line or "limit ok" in line]


def test_a_node_logs_the_back_under_when_the_window_ends(cluster: Cluster, tmp_path: Path) -> None:
    """A node with --limits-log-interval 2 flickers AAPL over, under, over, under: the breach
    is logged at once, then, when the window ends, one INFO back-under that counts the two
    crossings not logged; the log ends in the true state."""
    limits = tmp_path / "limits.csv"
    limits.write_text("AAPL,100\n")
    node = cluster.add("s1", args=["--limits", str(limits), "--limits-log-interval", "2"])
    net = 0.0
    for quantity in (150, -100, 100, -100):  # 150 over, 50 under, 150 over, 50 under
        net += quantity
        node.type(f"AAPL {quantity}")
        node.wait_for_view({("s1", "AAPL"): net})
    line = node.wait_for_log("limit ok: AAPL", timeout=15)
    assert "INFO" in line
    assert line.rstrip("\n").endswith(
        "AAPL exposure 50.000000 is back within its limit 100 (2 more crossing(s) since the"
        " last line about it not logged)"
    )
    lines = _limit_lines(node, "AAPL")
    assert len(lines) == 2 and "limit breach: AAPL exposure 150.000000" in lines[0]


def test_a_node_stopping_inside_the_window_logs_the_true_state(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Over then under within the default minute, then the node stops: the back-under is
    logged before it exits, so the log does not end in a breach."""
    limits = tmp_path / "limits.csv"
    limits.write_text("AAPL,100\n")
    node = cluster.add("s1", args=["--limits", str(limits)])
    node.type("AAPL 150")
    node.wait_for_log("limit breach: AAPL")
    node.type("AAPL -100")
    node.wait_for_view({("s1", "AAPL"): 50.0})
    assert node.stop() == 0
    lines = _limit_lines(node, "AAPL")
    assert len(lines) == 2
    assert "INFO" in lines[1] and "limit ok: AAPL exposure 50.000000" in lines[1]


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
