"""Exactly-once trade intake: a trade ID is applied once, across restarts and kill -9."""

from __future__ import annotations

import pytest

from position_distributor.engine import TradeError

from .inproc import Nodes
from .procs import Cluster


def test_a_replayed_trade_id_is_ignored_across_kill_9_and_a_reused_one_refused(
    cluster: Cluster,
) -> None:
    """``SYMBOL QTY TRADE_ID``: the same ID again (even after kill -9 and a restart) prints a
    notice and no row; the same ID with another trade is an error; new IDs apply."""
    node = cluster.add("alpha", recovery_timeout=0)
    node.type("AAPL 100 fill-1", "AAPL 5 fill-2")
    node.wait_for_view({("alpha", "AAPL"): 105.0})
    first_ts = node.view[("alpha", "AAPL")][1]
    mark = node.mark()
    node.type("AAPL 100 fill-1")
    notice = node.wait_for_log("notice: trade fill-1", start=mark.err)
    assert "already applied" in notice and "100.000000" in notice
    node.kill()

    node.start()
    node.wait_for_view({("alpha", "AAPL"): 105.0})
    mark = node.mark()
    node.type("AAPL 5 fill-2", "AAPL 100 fill-1", "MSFT 7 fill-1")
    node.wait_for_log("notice: trade fill-2", start=mark.err)
    node.wait_for_log("notice: trade fill-1", start=mark.err)
    refused = node.wait_for_log("trade ID fill-1 was already used for AAPL 100", start=mark.err)
    assert "MSFT 7 is not applied" in refused
    node.type("AAPL 1 fill-3")
    node.wait_for_view({("alpha", "AAPL"): 106.0})
    node.sync_stderr()
    assert [row[1:3] for row in node.rows(mark.out)] == [("AAPL", 106.0)]
    assert node.view[("alpha", "AAPL")][1] > first_ts
    history = node.command_output("history AAPL", "History AAPL")
    assert [line.split(" | ")[2] for line in history] == ["+100.000000", "+5.000000", "+1.000000"]


def test_the_api_returns_the_position_the_first_trade_produced(nodes: Nodes) -> None:
    """``Node.trade(..., trade_id=)`` again returns the original position (no new one), and
    fails with TradeError for another trade under the same ID; also after a restart."""
    node, _ = nodes.start("alpha")
    first = node.trade("AAPL", 10, trade_id="T1").result(10)
    node.trade("AAPL", 1).result(10)
    again = node.trade("AAPL", 10, trade_id="T1").result(10)
    assert again == first
    with pytest.raises(TradeError, match="trade ID T1 was already used for AAPL 10"):
        node.trade("AAPL", 11, trade_id="T1").result(10)
    node, _ = nodes.restart(node)
    assert node.trade("AAPL", 10, trade_id="T1").result(10) == first
    with pytest.raises(TradeError, match="already used"):
        node.trade("MSFT", 10, trade_id="T1").result(10)
    assert [(p.symbol, p.net_position) for p in node.positions()] == [("AAPL", 11.0)]


def test_one_id_twice_in_one_batch_applies_once(nodes: Nodes) -> None:
    """Within one burst, the second use of an ID is the replay of the first."""
    node, _ = nodes.start("alpha")
    node.submit_many(
        [
            ("AAPL", 1.0, None, "X"),
            ("AAPL", 1.0, None, "X"),
            ("AAPL", 2.0, None, "X"),
            ("AAPL", 4.0, None, "Y"),
        ]
    )
    assert node.flush(10)
    assert [(p.symbol, p.net_position) for p in node.positions()] == [("AAPL", 5.0)]
    assert [entry.quantity for entry in node.history("AAPL")] == [1.0, 4.0]


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "é", "a$b", "\n"])
def test_an_invalid_trade_id_is_a_value_error(nodes: Nodes, bad: str) -> None:
    """A trade ID outside 1-64 of ``[A-Za-z0-9._:/-]`` is refused before it is queued."""
    node, _ = nodes.start("alpha")
    with pytest.raises(ValueError, match="invalid trade ID"):
        node.trade("AAPL", 1, trade_id=bad)
