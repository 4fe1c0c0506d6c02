"""examples/dashboard.py: the live exposure dashboard, run against real in-process nodes."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .inproc import FAST_LIMITS, Nodes
from .waiting import wait_until

FELL_BEHIND = "dashboard fell behind; showing the current view again"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dashboard.py"
LINE = re.compile(r"^exposure: (\(flat\)|(\S+ [+-]\d+\.\d{6}(  |$|   <- ))+)")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dashboard = load_example()


def run(coro: Any, timeout: float = 15.0) -> Any:
    """Run a coroutine on a fresh event loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def shown(line: str) -> dict[str, float]:
    """The exposure a dashboard line shows."""
    body = line.removeprefix("exposure: ").split("   <- ")[0].strip()
    if body == "(flat)":
        return {}
    parts = body.split("  ")
    return {symbol: float(net) for symbol, net in (part.split(" ") for part in parts)}


def test_format_exposure_lists_symbols_sorted_with_the_change_that_caused_it() -> None:
    """A dashboard line shows each symbol's signed net, sorted, then the change's row."""
    change = dashboard.Position("alpha", "AAPL", 70.0, 123)
    line = dashboard.format_exposure({"MSFT": -5.0, "AAPL": 70.0}, change)
    assert line == "exposure: AAPL +70.000000  MSFT -5.000000   <- alpha | AAPL | 70.000000 | 123\n"
    assert dashboard.format_exposure({}) == "exposure: (flat)\n"


def test_the_dashboard_prints_the_firms_exposure_live_from_a_cluster(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Watching two nodes by address, the dashboard prints each change until it shows the truth."""
    a, _ = nodes.start("alpha")
    b, _ = nodes.start("beta", peers=(a.port,))
    a.trade("AAPL", 100).result(timeout=5)  # before the dashboard: it comes in the sync
    expected = {"AAPL": 71.0, "MSFT": 5.0, "7203": -2.0}
    out = io.StringIO()

    def trade_while_watched() -> None:
        wait_until(lambda: "exposure:" in out.getvalue(), what="the dashboard's first line")
        b.trade("AAPL", -30).result(timeout=5)
        b.trade("MSFT", 5).result(timeout=5)
        a.trade("7203", -2).result(timeout=5)
        a.trade("AAPL", 1).result(timeout=5)

    async def scenario() -> dict[str, float]:
        trading = asyncio.to_thread(trade_while_watched)
        watching = dashboard.watch(
            [("127.0.0.1", a.port), ("127.0.0.1", b.port)],
            out,
            until=lambda exposure: exposure == expected,
            data_dir=tmp_path / "dashboard",
            limits=FAST_LIMITS,
        )
        result, _ = await asyncio.gather(watching, trading)
        return dict(result)

    result = run(scenario())

    assert result == expected
    # The dashboard showed the truth: the nodes themselves converge on it too.
    wait_until(lambda: a.exposure() == b.exposure() == expected, what="the nodes to converge")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert shown(lines[-1]) == expected
    # Live: every change made while it watched shows, each node's in the order it made them
    # (two nodes' changes reach the dashboard on two connections, in either order).
    changes = [line.split("   <- ")[1].split(" | ")[:3] for line in lines if "   <- " in line]
    synced = ["alpha", "AAPL", "100.000000"]  # a change, or already in the first view
    assert [c for c in changes if c[0] == "alpha" and c != synced] == [
        ["alpha", "7203", "-2.000000"],
        ["alpha", "AAPL", "101.000000"],
    ]
    assert [c for c in changes if c[0] == "beta"] == [
        ["beta", "AAPL", "-30.000000"],
        ["beta", "MSFT", "5.000000"],
    ]


async def poll(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """In a coroutine: poll ``predicate`` with a deadline, letting the event loop run."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.005)


def test_the_dashboard_shows_the_current_view_again_after_falling_behind(nodes: Nodes) -> None:
    """A dashboard cut off by UpdatesOverflow says so, resubscribes and shows the current view."""
    node, _ = nodes.start("alpha")
    out = io.StringIO()

    async def scenario() -> dict[str, float]:
        watching = asyncio.ensure_future(
            dashboard.watch_exposure(
                node, out, until=lambda exposure: exposure == {"AAPL": 11.0}, maxsize=2
            )
        )
        await poll(lambda: out.getvalue(), what="the dashboard's first line")
        assert out.getvalue() == "exposure: (flat)\n"
        # Block the event loop while ten changes commit: the dashboard cannot keep up.
        for _ in range(10):
            node.trade("AAPL", 1).result(timeout=5)
        await poll(lambda: out.getvalue().endswith(f"{FELL_BEHIND}\nexposure: AAPL +10.000000\n"))
        node.trade("AAPL", 1)  # seen by the new subscription
        return dict(await watching)

    result = run(scenario())

    assert result == {"AAPL": 11.0}
    lines = out.getvalue().splitlines()
    assert lines.count(FELL_BEHIND) == 1
    # Before the cut: what was queued within maxsize; after: the current view, then live.
    assert [line.split("   <- ")[1].split(" | ")[2] for line in lines[1:3]] == [
        "1.000000",
        "2.000000",
    ]
    assert lines[3:5] == [FELL_BEHIND, "exposure: AAPL +10.000000"]
    assert lines[5].startswith("exposure: AAPL +11.000000   <- alpha | AAPL | 11.000000 |")
    assert len(lines) == 6


def test_the_dashboard_returns_the_last_exposure_when_the_node_stops(nodes: Nodes) -> None:
    """A dashboard watching without an end returns what it last showed once the node stops."""
    node, _ = nodes.start("alpha")
    node.trade("AAPL", 5).result(timeout=5)
    out = io.StringIO()

    async def scenario() -> dict[str, float]:
        watching = asyncio.ensure_future(dashboard.watch_exposure(node, out))
        await poll(lambda: out.getvalue(), what="the dashboard's first line")
        await asyncio.wrap_future(node.trade("MSFT", -1))
        await asyncio.to_thread(node.stop)
        return dict(await watching)

    assert run(scenario()) == {"AAPL": 5.0, "MSFT": -1.0}
    first, second = out.getvalue().splitlines()
    assert first == "exposure: AAPL +5.000000"
    assert second.startswith(
        "exposure: AAPL +5.000000  MSFT -1.000000   <- alpha | MSFT | -1.000000 |"
    )


def test_the_view_never_rolls_back_to_an_older_change() -> None:
    """A change older than what the dashboard's view holds leaves the view as it is."""
    newer = dashboard.Position("alpha", "AAPL", 2.0, 20)
    view = dashboard.View([newer])
    view.apply(dashboard.Position("alpha", "AAPL", 1.0, 10))
    assert view.exposure() == {"AAPL": 2.0}
    view.apply(dashboard.Position("alpha", "AAPL", 3.0, 30))
    view.apply(dashboard.Position("beta", "AAPL", -0.5, 5))
    assert view.exposure() == {"AAPL": 2.5}


def test_the_demo_dashboard_catches_up_with_its_traders() -> None:
    """The demo's dashboard ends showing exactly the exposure its three traders made."""
    out = io.StringIO()
    made, seen = run(dashboard.run_demo(out, seconds=0.5, seed=7, limits=FAST_LIMITS), 20)

    assert made and seen == made
    lines = out.getvalue().splitlines()
    assert len(lines) > 3
    assert shown(lines[-1]) == made


def test_the_dashboard_script_runs_as_a_user_runs_it(tmp_path: Path) -> None:
    """``python examples/dashboard.py --demo`` prints exposure lines and exits 0 when caught up."""
    # PYTHONPATH: the package from this checkout, whatever the state of the venv's install.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--demo", "--seconds", "0.5", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "demo done: the dashboard shows the exposure the traders made"
    assert all(LINE.match(line) for line in lines[:-1])


def test_the_dashboard_script_needs_an_address_or_demo(tmp_path: Path) -> None:
    """Without addresses or --demo, the script exits 2 with a one-line usage error."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "give the HOST:PORT of at least one node, or --demo" in result.stderr
    assert "Traceback" not in result.stderr
