"""A clock that ran ahead, then a lost store: the late base plus every trade since (301)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from .procs import Cluster

AHEAD_NS = 2 * 3600 * 10**9  # the clock ran two hours ahead


def set_clock_ahead(data_dir: Path, name: str) -> None:
    """Make a stopped node's next timestamps two hours ahead of the wall clock, as a clock
    that ran ahead would have (the store's clock is where a node's clock starts)."""
    with contextlib.closing(sqlite3.connect(data_dir / f"{name}.sqlite3")) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'clock'", (time.time_ns() + AHEAD_NS,))


@pytest.mark.parametrize("recover", [False, True], ids=["plain restart", "--recover"])
def test_a_store_lost_after_the_clock_ran_ahead_recovers_the_base_plus_the_trades_since(
    cluster: Cluster, recover: bool
) -> None:
    """alpha traded AAPL 300 with its clock 2 h ahead; its store was lost; with a normal clock
    it started without its peer and traded AAPL 1; when the peer came back with 300, both
    nodes show 301 (with or without --recover), and the journal's +1 is kept; a symbol it
    did not trade since (TSLA) comes back as it was."""
    beta = cluster.add("beta", recovery_timeout=0)
    alpha = cluster.add("alpha", peers=[beta.port], recovery_timeout=0, start=False)
    alpha.start()
    alpha.type("MSFT 1")  # a store exists
    alpha.wait_for_view({("alpha", "MSFT"): 1.0})
    alpha.stop()
    set_clock_ahead(alpha.data_dir, "alpha")
    alpha.start()
    alpha.type("AAPL 300", "TSLA 7")
    cluster.wait_for_view(
        {("alpha", "MSFT"): 1.0, ("alpha", "AAPL"): 300.0, ("alpha", "TSLA"): 7.0}, [alpha, beta]
    )
    assert alpha.view[("alpha", "AAPL")][1] > time.time_ns() + AHEAD_NS / 2
    beta.stop()
    alpha.kill()

    # The store is lost; the clock is back to normal. The peer is away: the recovery window
    # times out, and the node trades on what it has.
    alpha.recovery_timeout = 0.2
    if recover:
        alpha.extra_args = ["--recover"]
    cluster.restart("alpha", wipe=True)
    alpha.wait_for_log("recovery timeout")
    alpha.type("AAPL 1")
    alpha.wait_for_view({("alpha", "AAPL"): 1.0})

    beta.start()
    # TSLA, stamped in the future and not traded since: recovered as it was.
    expected = {("alpha", "MSFT"): 1.0, ("alpha", "AAPL"): 301.0, ("alpha", "TSLA"): 7.0}
    cluster.wait_for_view(expected, [alpha, beta])
    assert not alpha.log_lines("refused AAPL")
    history = alpha.command_output("history AAPL", "History AAPL")
    assert [line.split(" | ")[2] for line in history] == ["+1.000000", "+300.000000"]
    assert history[-1].endswith("| rebase")
