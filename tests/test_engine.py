"""Engine, through in-process Nodes: apply, commit before print, sync, recovery, ownership."""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from pathlib import Path

from position_distributor.node import Node
from position_distributor.store import Store, read_book
from position_distributor.types import Position
from position_distributor.wire import SyncDone

from .inproc import Nodes, Rows, nets_of
from .rawpeer import RawListener, RawPeer
from .waiting import Recorder, capture_logs, wait_until

ROW = re.compile(r"^(\S+) \| (\S+) \| (-?\d+\.\d{6}) \| (\d+)$")


def seed_store(data_dir: Path, name: str, positions: list[Position], *, recovered: bool) -> None:
    """Write a node's store before it starts, as a previous run would have left it."""
    store = Store(data_dir, name)
    try:
        store.commit(positions, max((p.timestamp for p in positions), default=0))
        if recovered:
            store.mark_recovered()
    finally:
        store.close()


def stored(path: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """The positions in a store file, read through a separate connection (as another process,
    with ``store.read_book``: what waits for a fold included)."""
    return {key: (p.net_position, p.timestamp) for key, p in read_book(path).items()}


def connected(node: Node) -> int:
    """How many peers the node is connected to."""
    return sum(row.state.startswith("connected") for row in node.peers())


# Applying trades and printing rows.


def test_a_trade_applies_and_prints_one_row_in_the_seed_format(nodes: Nodes) -> None:
    """A trade prints ``strategy | SYMBOL | net with six decimals | timestamp ns``, once."""
    node, rows = nodes.start("strategy_1")
    before = time.time_ns()

    first = node.trade("AAPL", 100).result(timeout=5)
    second = node.trade("AAPL", -30.25).result(timeout=5)

    rows.wait_for_row(second)
    lines = rows.lines.snapshot()
    assert lines == [first.row(), second.row()]
    assert lines[0] == f"strategy_1 | AAPL | 100.000000 | {first.timestamp}"
    assert lines[1] == f"strategy_1 | AAPL | 69.750000 | {second.timestamp}"
    assert all(ROW.match(line) for line in lines)
    assert before <= first.timestamp < second.timestamp


def test_each_trade_is_a_delta_on_the_position_of_its_symbol(nodes: Nodes) -> None:
    """Trades add signed quantities per symbol; symbols are independent."""
    node, rows = nodes.start("alpha")
    trades = [("AAPL", 10), ("MSFT", -3), ("AAPL", 5.5), ("7203", 100), ("MSFT", 3), ("AAPL", -1)]
    futures = [node.trade(symbol, qty) for symbol, qty in trades]
    results = [f.result(timeout=5) for f in futures]

    assert [r.net_position for r in results] == [10, -3, 15.5, 100, 0, 14.5]
    expected = {("alpha", "AAPL"): 14.5, ("alpha", "MSFT"): 0.0, ("alpha", "7203"): 100.0}
    assert nets_of(node.positions()) == expected
    rows.wait_for_nets(expected)
    assert [r.timestamp for r in results] == sorted({r.timestamp for r in results})


def test_a_row_is_printed_only_after_its_commit(nodes: Nodes, tmp_path: Path) -> None:
    """At the moment any row is written, the store file already holds that position."""
    problems: list[str] = []
    checked = Recorder()

    def check_store(lines: list[str]) -> None:
        # Runs in the engine thread that prints, before the rows show. One write is one
        # committed batch: its last row per position is exactly what the store holds, and
        # earlier rows of the batch are older than that.
        store = stored(tmp_path / "alpha" / "alpha.sqlite3")
        last: dict[tuple[str, str], tuple[float, int]] = {}
        for line in lines:
            match = ROW.match(line)
            assert match, line
            strategy, symbol, net, ts = match.groups()
            key = (strategy, symbol)
            found = store.get(key)
            if found is None or found[1] < int(ts):
                problems.append(f"{line!r} printed while the store holds {found}")
            last[key] = (float(net), int(ts))
            checked.append(line)
        for key, value in last.items():
            if store.get(key) != value:
                problems.append(f"{key} printed as {value} while the store holds {store.get(key)}")

    node, _ = nodes.start("alpha", rows=Rows(before_write=check_store))
    beta, _ = nodes.start("beta", peers=(node.port,))
    futures = [node.trade(f"S{i % 7}", i + 1) for i in range(200)]
    beta_futures = [beta.trade(f"B{i % 5}", i + 1) for i in range(100)]
    for future in futures + beta_futures:
        future.result(timeout=10)

    # Every own trade and every change from beta was printed, each after its commit.
    checked.wait_for(
        lambda lines: (
            {("beta", f"B{i}") for i in range(5)} <= {tuple(ln.split(" | ")[:2]) for ln in lines}
            and len([ln for ln in lines if ln.startswith("alpha |")]) == 200
        ),
        timeout=10,
    )
    assert problems == []


class BrokenPipe(Rows):
    """A stdout whose reader went away (``position-distributor ... | head -2``)."""

    def __init__(self, rows_before: int) -> None:
        super().__init__()
        self.rows_before = rows_before

    def write(self, text: str) -> int:
        if len(self.lines.snapshot()) >= self.rows_before:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_trading_goes_on_when_the_output_stream_breaks(nodes: Nodes) -> None:
    """Rows that cannot be printed do not stop trades from applying and their futures resolving."""
    node, out = nodes.start("alpha", rows=BrokenPipe(rows_before=2))
    results = [node.trade("AAPL", 1).result(timeout=2) for _ in range(5)]

    assert [p.net_position for p in results] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert out.lines.snapshot() == [results[0].row(), results[1].row()]


def test_a_change_that_changes_nothing_prints_nothing(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """A peer's duplicate or older position prints no row; a newer one prints one."""
    node, rows = nodes.start("alpha")
    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()
    x1 = Position("beta", "X", 1.0, 10)
    x2 = Position("beta", "X", 2.0, 11)
    older = Position("beta", "X", 5.0, 9)
    marker = Position("beta", "Y", 1.0, 1)

    raw.send(x1, x1, SyncDone(1), x1, x2, older, x2, marker)

    rows.wait_for_row(marker)
    assert rows.lines.snapshot() == [x1.row(), x2.row(), marker.row()]
    assert nets_of(node.positions()) == {("beta", "X"): 2.0, ("beta", "Y"): 1.0}


# Convergence and the sync on connect.


def test_three_nodes_in_a_full_mesh_converge(nodes: Nodes) -> None:
    """Trades on three connected nodes end up in every node's book and printed view."""
    a, rows_a = nodes.start("strategy_1")
    b, rows_b = nodes.start("strategy_2", peers=(a.port,))
    c, rows_c = nodes.start("strategy_3", peers=(a.port, b.port))
    wait_until(lambda: all(connected(node) == 2 for node in (a, b, c)), what="a full mesh")

    a.trade("AAPL", 100)
    b.trade("AAPL", -50)
    c.trade("MSFT", 7)
    b.trade("GOOG", 1).result(timeout=5)
    a.trade("AAPL", 1).result(timeout=5)

    expected = {
        ("strategy_1", "AAPL"): 101.0,
        ("strategy_2", "AAPL"): -50.0,
        ("strategy_2", "GOOG"): 1.0,
        ("strategy_3", "MSFT"): 7.0,
    }
    for node, rows in ((a, rows_a), (b, rows_b), (c, rows_c)):
        rows.wait_for_nets(expected)
        assert nets_of(node.positions()) == expected
    assert a.positions() == b.positions() == c.positions()


def test_positions_made_before_connecting_are_synced_from_both_ends(nodes: Nodes) -> None:
    """Two nodes that traded alone exchange their own positions when they connect."""
    a, rows_a = nodes.start("alpha")
    a.trade("AAPL", 1).result(timeout=5)
    b, rows_b = nodes.start("beta")
    b.trade("MSFT", 2).result(timeout=5)

    c, _ = nodes.start("gamma", peers=(a.port, b.port))  # the dialler has positions too
    c.trade("GOOG", 3).result(timeout=5)
    d, rows_d = nodes.start("delta", peers=(c.port,))

    expected_a = {("alpha", "AAPL"): 1.0, ("gamma", "GOOG"): 3.0}
    rows_a.wait_for_nets(expected_a)
    rows_b.wait_for_nets({("beta", "MSFT"): 2.0, ("gamma", "GOOG"): 3.0})
    rows_d.wait_for_nets({("gamma", "GOOG"): 3.0})
    assert nets_of(c.positions()) == {
        ("alpha", "AAPL"): 1.0,
        ("beta", "MSFT"): 2.0,
        ("gamma", "GOOG"): 3.0,
    }
    assert d.positions() == [p for p in c.positions() if p.strategy == "gamma"]


def test_an_accepting_node_syncs_own_positions_then_the_echo_then_syncdone(
    nodes: Nodes, raw_peers: list[RawPeer], tmp_path: Path
) -> None:
    """On accept, a node sends its own positions, the peer's own (echo), then SyncDone."""
    own = [Position("alpha", "AAPL", 100.0, 1000), Position("alpha", "MSFT", -5.0, 1001)]
    echo = [Position("beta", "7203", 42.0, 500)]
    third = [Position("gamma", "GOOG", 1.0, 700)]
    seed_store(tmp_path / "alpha", "alpha", own + echo + third, recovered=True)
    node, _ = nodes.start("alpha")

    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()
    sync = raw.read_sync()

    assert sorted(sync[:2]) == own
    assert sync[2:] == [*echo, SyncDone(3)]  # gamma's position is not beta's to have
    # Then live updates follow on the same connection.
    new = node.trade("AAPL", 1).result(timeout=5)
    raw.read_until(lambda messages: new in messages)


def test_a_dialling_node_syncs_own_positions_then_the_echo_then_syncdone(
    nodes: Nodes, tmp_path: Path
) -> None:
    """On connect, the dialling node sends the same sync: own, echo, SyncDone."""
    own = [Position("alpha", "AAPL", 100.0, 1000)]
    echo = [Position("beta", "X", 1.0, 500), Position("beta", "Y", 2.0, 501)]
    seed_store(tmp_path / "alpha", "alpha", own + echo, recovered=True)
    listener = RawListener()
    try:
        nodes.start("alpha", peers=(listener.port,))
        raw = listener.accept("beta")
        try:
            raw.handshake()
            sync = raw.read_sync()
        finally:
            raw.close()
    finally:
        listener.close()

    assert sync[0] == own[0]
    assert sorted(sync[1:3]) == echo
    assert sync[3:] == [SyncDone(3)]


def test_own_positions_learnt_in_a_sync_are_broadcast_to_other_peers(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """An own position recovered from one peer's echo is passed on to the other peers."""
    node, rows = nodes.start("alpha", recovery_timeout=0.0)
    other = RawPeer.connect(node.port, "gamma")
    raw_peers.append(other)
    other.handshake()
    other.read_sync()
    recovered = Position("alpha", "AAPL", 7.0, 1234)

    holder = RawPeer.connect(node.port, "beta")
    raw_peers.append(holder)
    holder.handshake()
    holder.send(recovered, SyncDone(1))

    rows.wait_for_row(recovered)
    other.read_until(lambda messages: recovered in messages)


# The recovery window.


def test_an_empty_store_holds_trades_until_the_configured_peers_synced(
    nodes: Nodes, tmp_path: Path
) -> None:
    """A new node applies no trade before its peer sent its positions back, then trades on them."""
    listener = RawListener()
    try:
        with capture_logs("INFO") as logs:
            node, rows = nodes.start("alpha", peers=(listener.port,), recovery_timeout=30)
            held = node.trade("AAPL", 10)
            logs.wait_for_text("holding trades until 1 configured peer(s) have sent")
            raw = listener.accept("beta")
            try:
                raw.handshake()
                raw.read_sync()
                # Connected and handshaken, but beta has not finished its sync: still held.
                assert node.recovering and not held.done()
                assert rows.lines.snapshot() == []
                echo = Position("alpha", "AAPL", 100.0, time.time_ns())
                raw.send(echo, SyncDone(1))
                result = held.result(timeout=5)
                line = logs.wait_for_text("recovery done")
            finally:
                raw.close()
    finally:
        listener.close()

    assert result.net_position == 110.0 and result.timestamp > echo.timestamp
    assert "synced with beta; 1 own position(s) recovered" in line
    assert not node.recovering
    rows.wait_for_row(result)
    assert rows.rows() == [echo, result]
    assert stored(tmp_path / "alpha" / "alpha.sqlite3") == {
        ("alpha", "AAPL"): (110.0, result.timestamp)
    }


def test_recovery_ends_after_the_timeout_when_no_peer_syncs(nodes: Nodes) -> None:
    """With its peer unreachable, a new node waits recovery_timeout, says so, then trades."""
    listener = RawListener()
    dead_port = listener.port
    listener.close()  # nothing listens there any more
    with capture_logs("INFO") as logs:
        started = time.monotonic()
        node, _ = nodes.start("alpha", peers=(dead_port,), recovery_timeout=0.3)
        future = node.trade("AAPL", 1)
        # Recorded in the same list as the log lines, so their order shows.
        future.add_done_callback(lambda _: logs.append("TRADE applied"))
        result = future.result(timeout=5)
        elapsed = time.monotonic() - started
        logs.wait_for_text("TRADE applied")

    assert elapsed >= 0.3 * 0.9
    assert result.net_position == 1.0
    lines = logs.snapshot()
    [timeout_line] = [i for i, line in enumerate(lines) if "recovery timeout" in line]
    assert "after 0.3s: no peer synced; starting with 0 own position(s)" in lines[timeout_line]
    assert timeout_line < lines.index("TRADE applied")


def test_a_timeout_with_some_configured_peers_synced_names_them_and_counts_the_rest(
    nodes: Nodes,
) -> None:
    """A window that times out with one of two configured peers synced says just that."""
    listener = RawListener()
    dead_port = listener.port
    listener.close()  # nothing listens there any more
    beta, _ = nodes.start("beta")
    with capture_logs("INFO") as logs:
        node, _ = nodes.start("alpha", peers=(beta.port, dead_port), recovery_timeout=0.5)
        result = node.trade("AAPL", 1).result(timeout=5)
        line = logs.wait_for_text("recovery timeout")

    assert result.net_position == 1.0
    assert "after 0.5s: synced with beta, not with 1 configured peer(s)" in line
    assert "starting with 0 own position(s)" in line
    assert logs.lines_with("recovery done") == []


def test_a_node_without_configured_peers_waits_for_the_first_sync_plus_a_grace(
    nodes: Nodes, tmp_path: Path
) -> None:
    """A new node with no peers configured stops holding trades shortly after a first sync."""
    seed_store(tmp_path / "beta", "beta", [Position("alpha", "AAPL", 5.0, 100)], recovered=True)
    with capture_logs("INFO") as logs:
        node, _ = nodes.start("alpha", recovery_timeout=30)
        held = node.trade("AAPL", 1)
        logs.wait_for_text("holding trades until the first peer to connect has sent")
        assert not held.done()
        nodes.start("beta", peers=(node.port,))
        result = held.result(timeout=5)  # well before the 30s timeout
        line = logs.wait_for_text("recovery done")

    assert result.net_position == 6.0
    assert "synced with beta" in line


def test_a_node_with_a_store_applies_trades_at_once(nodes: Nodes, tmp_path: Path) -> None:
    """A node whose store completed recovery before does not hold trades, peers or not."""
    seed_store(tmp_path / "alpha", "alpha", [Position("alpha", "AAPL", 5.0, 100)], recovered=True)
    listener = RawListener()  # a configured peer that never answers
    try:
        with capture_logs("INFO") as logs:
            node, rows = nodes.start("alpha", peers=(listener.port,), recovery_timeout=30)
            assert not node.recovering
            result = node.trade("AAPL", 1).result(timeout=5)
    finally:
        listener.close()

    assert result.net_position == 6.0
    assert logs.lines_with("holding trades") == []
    assert rows.rows()[0] == Position("alpha", "AAPL", 5.0, 100)  # the stored view first


def test_trades_typed_before_a_stop_during_recovery_still_apply(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Stopping a recovering node with trades held waits out the recovery, then applies them."""
    listener = RawListener()  # the configured peer accepts nothing: recovery can only time out
    try:
        node, rows = nodes.start("alpha", peers=(listener.port,), recovery_timeout=0.3)
        held = [node.trade("AAPL", 1), node.trade("MSFT", 2)]
        with capture_logs("INFO") as logs:
            node.stop()
    finally:
        listener.close()

    results = [future.result(timeout=0) for future in held]
    assert [(p.symbol, p.net_position) for p in results] == [("AAPL", 1.0), ("MSFT", 2.0)]
    assert logs.lines_with("recovery timeout after 0.3s")
    assert rows.rows() == results
    assert stored(tmp_path / "alpha" / "alpha.sqlite3") == {
        (p.strategy, p.symbol): (p.net_position, p.timestamp) for p in results
    }


def test_a_recovering_node_with_no_trade_held_stops_at_once(nodes: Nodes, tmp_path: Path) -> None:
    """With nothing held, stop() does not wait out recovery, and the store still needs it."""
    listener = RawListener()
    try:
        node, _ = nodes.start("alpha", peers=(listener.port,), recovery_timeout=30)
        assert node.recovering
        started = time.monotonic()
        with capture_logs("INFO") as logs:
            node.stop()
        elapsed = time.monotonic() - started
    finally:
        listener.close()

    assert elapsed < 5
    assert logs.lines_with("recovery") == []
    store = Store(tmp_path / "alpha", "alpha")
    try:
        assert store.needs_recovery  # the next start recovers again
    finally:
        store.close()


def test_a_node_restarted_with_its_data_dir_deleted_recovers_then_trades_on_top(
    nodes: Nodes, tmp_path: Path
) -> None:
    """After losing its store, a node gets its positions back from peers and trades on them."""
    a, _ = nodes.start("alpha", recovery_timeout=0.0)
    b, rows_b = nodes.start("beta", peers=(a.port,))
    _, rows_c = nodes.start("gamma", peers=(a.port, b.port))
    a.trade("AAPL", 100).result(timeout=5)
    last = a.trade("MSFT", -5).result(timeout=5)
    b.trade("GOOG", 1).result(timeout=5)
    rows_b.wait_for_row(last)
    rows_c.wait_for_row(last)

    a.stop()
    shutil.rmtree(tmp_path / "alpha")
    with capture_logs("INFO") as logs:
        a2, _ = nodes.restart(a, recovery_timeout=30)
        after = a2.trade("AAPL", 10)  # typed at once, held until the peers' sync
        result = after.result(timeout=10)
        logs.wait_for_text("recovery done")

    assert result.net_position == 110.0
    assert result.timestamp > last.timestamp
    expected = {("alpha", "AAPL"): 110.0, ("alpha", "MSFT"): -5.0, ("beta", "GOOG"): 1.0}
    wait_until(lambda: nets_of(a2.positions()) == expected, what="alpha's book")
    rows_b.wait_for_nets(expected)
    rows_c.wait_for_nets(expected)


def test_a_late_echo_from_before_the_store_is_a_base_under_the_trades_since(
    nodes: Nodes, raw_peers: list[RawPeer], tmp_path: Path
) -> None:
    """An own position sent back after trades resumed becomes the base they add to."""
    node, rows = nodes.start("alpha", recovery_timeout=0.0)  # trades apply at once
    acked = node.trade("AAPL", 10).result(timeout=5)
    assert acked.net_position == 10.0
    # A peer that was away at recovery comes back with what alpha held before its loss.
    base = Position("alpha", "AAPL", 100.0, acked.timestamp - 10**9)
    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()
    raw.read_sync()

    raw.send(base, SyncDone(1))

    rebased = raw.read_until(lambda ms: any(m.net_position == 110.0 for m in positions_in(ms)))
    [position] = [m for m in positions_in(rebased) if m.net_position == 110.0]
    assert position.timestamp > acked.timestamp
    rows.wait_for_row(position)
    assert node.positions() == [position]
    assert stored(tmp_path / "alpha" / "alpha.sqlite3") == {
        ("alpha", "AAPL"): (110.0, position.timestamp)
    }
    # The same base sent again changes nothing; the next trade adds to the rebased position.
    again = RawPeer.connect(node.port, "gamma")
    raw_peers.append(again)
    again.handshake()
    again.read_sync()
    marker = Position("gamma", "Z", 1.0, 1)
    again.send(base, SyncDone(1), marker)
    rows.wait_for_row(marker)  # applied in order: the base before it was handled too
    assert nets_of(node.positions()) == {("alpha", "AAPL"): 110.0, ("gamma", "Z"): 1.0}
    assert node.trade("AAPL", 1).result(timeout=5).net_position == 111.0


def positions_in(messages: list[object]) -> list[Position]:
    return [m for m in messages if isinstance(m, Position)]


# Ownership and the clock.


def test_a_peer_cannot_overwrite_our_own_position_after_its_sync(
    nodes: Nodes, raw_peers: list[RawPeer], tmp_path: Path
) -> None:
    """Our strategy's position sent live by a peer closes that connection; our book stays."""
    node, rows = nodes.start("alpha")
    mine = node.trade("AAPL", 100).result(timeout=5)
    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()
    raw.send(SyncDone(0))

    with capture_logs() as logs:
        raw.send(Position("alpha", "AAPL", -999.0, mine.timestamp + 10**15))
        raw.read_until_eof()
        line = logs.wait_for_text("closed")

    assert "sent a position of this node's own strategy outside its sync" in line
    assert node.positions() == [mine]
    assert stored(tmp_path / "alpha" / "alpha.sqlite3") == {
        ("alpha", "AAPL"): (100.0, mine.timestamp)
    }
    assert rows.rows() == [mine]


def test_a_peer_cannot_send_positions_of_a_third_strategy(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """A peer sending another strategy's position is cut off and the position dropped."""
    node, rows = nodes.start("alpha")
    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()

    with capture_logs() as logs:
        raw.send(Position("gamma", "AAPL", 1.0, 10))
        raw.read_until_eof()
        line = logs.wait_for_text("closed")

    assert "beta sent a position of gamma" in line
    assert node.positions() == []
    assert rows.lines.snapshot() == []


def test_an_echoed_timestamp_from_the_future_raises_the_clock(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """After learning an own position stamped ahead of the wall clock, new trades stamp later."""
    node, _ = nodes.start("alpha", recovery_timeout=30)
    ahead = Position("alpha", "AAPL", 5.0, time.time_ns() + 10**12)  # 1000 s ahead
    raw = RawPeer.connect(node.port, "beta")
    raw_peers.append(raw)
    raw.handshake()
    raw.send(ahead, SyncDone(1))

    result = node.trade("MSFT", 1).result(timeout=5)

    assert result.timestamp > ahead.timestamp
    assert nets_of(node.positions()) == {("alpha", "AAPL"): 5.0, ("alpha", "MSFT"): 1.0}


def test_a_second_node_of_one_name_is_refused_and_nothing_runs_away(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Two nodes started with one name, both dialling a third: the one connected first keeps
    its place, the second is refused (an ERROR naming both addresses at the third, and its own
    ERROR saying why), the third never takes the second's position, and neither dup changes
    the other's positions or journal."""
    hub, _ = nodes.start("hub")

    def own(node: Node) -> list[tuple[str, float]]:
        return [(p.symbol, p.net_position) for p in node.positions() if p.strategy == "dup"]

    with capture_logs("WARNING") as logs:
        first, _ = nodes.start("dup", peers=(hub.port,), data_dir=tmp_path / "one")
        assert first.trade("AAPL", 10).result(10).net_position == 10.0
        wait_until(lambda: ("dup", "AAPL", 10.0) in [p[:3] for p in hub.positions()], 10)
        second, _ = nodes.start("dup", peers=(hub.port,), data_dir=tmp_path / "two")
        assert second.trade("AAPL", 5).result(10).net_position == 5.0
        logs.wait_for_text("two nodes claim strategy dup", 10)
        logs.wait_for_text("refused this node", 10)
        assert first.trade("AAPL", 1).result(10).net_position == 11.0
        wait_until(lambda: ("dup", "AAPL", 11.0) in [p[:3] for p in hub.positions()], 10)
        assert len(logs.lines_with("two nodes claim strategy dup")) == 1
    assert own(first) == [("AAPL", 11.0)]
    assert own(second) == [("AAPL", 5.0)]
    assert [e.kind for e in first.history("AAPL")] == ["trade", "trade"]
    assert [e.kind for e in second.history("AAPL")] == ["trade"]
    assert not logs.lines_with("sent back as ours")


def table(path: Path) -> dict[tuple[str, str], tuple[float, int]]:
    """The store's positions table alone (own positions not yet folded from the journal are
    only in the ``book`` view)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT strategy, symbol, net_position, timestamp FROM positions")
        return {(s, sym): (net, ts) for s, sym, net, ts in rows}


def test_own_positions_are_folded_into_the_positions_table_when_the_trades_stop(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Trades are journalled (``read_book`` shows them) and wait for a fold: none while
    trades keep coming, then one once a whole digest interval passed without any."""
    node, _ = nodes.start("alpha", digest_interval=0.5)
    path = tmp_path / "alpha" / "alpha.sqlite3"
    deadline = time.monotonic() + 2.0  # four intervals, each with trades committed
    count = 0
    while time.monotonic() < deadline:
        node.trade(f"L{count % 50}", 1).result(timeout=10)
        count += 1
        assert table(path) == {}, f"folded while trading, after {count} trades"
    assert len(stored(path)) == min(count, 50)
    assert wait_until(lambda: table(path) == stored(path), timeout=5)


def test_a_burst_is_hashed_into_the_digests_in_slices_and_a_digest_waits_once_at_most(
    nodes: Nodes,
) -> None:
    """After a burst of more changed symbols than a slice, a peer's digest is left
    uncompared once (never twice in a row), and the anti-entropy thread's pass hashes every
    change into the digests a slice at a time, the digest then as computed from scratch."""
    from position_distributor.book import entry_hash
    from position_distributor.engine import _HASH_SLICE

    node, _ = nodes.start("alpha")
    engine = node._engine
    assert engine is not None
    burst = [Position("beta", f"S{i}", 1.0, i + 1) for i in range(_HASH_SLICE * 2 + 5)]
    with engine._book_lock:
        engine._book.merge_many("beta", burst)
        assert engine._book.waiting("beta") == len(burst)
        assert engine._defer_digest("beta")
        assert not engine._defer_digest("beta")
        assert engine._defer_digest("beta")  # compared once since: may wait again
    engine._hash_in_slices()
    with engine._book_lock:
        assert engine._book.waiting() == 0
        xor = 0
        for position in burst:
            xor ^= entry_hash(position)
        assert engine._book.digest("beta") == (len(burst), xor.to_bytes(16, "little"))
        assert not engine._defer_digest("beta")
