"""Clusters of real node processes on 127.0.0.1: convergence, kill -9, lost stores, durability."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import pytest

from .faultproxy import FaultProxy
from .procs import Cluster, Nets, NodeProcess

S1, S2, S3 = "strategy_1", "strategy_2", "strategy_3"
ROW = re.compile(r"strategy_\d \| [A-Z]+ \| -?\d+\.\d{6} \| \d{19}\n")


def three_nodes(cluster: Cluster, **kwargs: float) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    """The seed's full mesh: strategy_1 listens, strategy_2 dials it, strategy_3 dials both."""
    s1 = cluster.add(S1, **kwargs)
    s2 = cluster.add(S2, peers=[s1.port], **kwargs)
    s3 = cluster.add(S3, peers=[s1.port, s2.port], **kwargs)
    return s1, s2, s3


def assert_same_rows(*nodes: NodeProcess) -> None:
    """Every node holds the same rows, timestamps included."""
    views = [node.snapshot() for node in nodes]
    for node, view in zip(nodes, views, strict=True):
        assert view == views[0], f"{node.name} differs from {nodes[0].name}: {view} {views[0]}"


def test_seed_transcript_converges_on_every_node(cluster: Cluster) -> None:
    """The seed README's three terminals end with the same positions on all three nodes."""
    s1 = cluster.add(S1, recovery_timeout=0.3)
    s1.type("AAPL 100", "BTC 500", "AAPL 200")
    first = {(S1, "AAPL"): 300.0, (S1, "BTC"): 500.0}
    s1.wait_for_view(first)
    s2 = cluster.add(S2, peers=[s1.port])
    s2.wait_for_view(first)  # strategy_1 sent its positions on accept
    s2.type("AAPL 100")
    expected = {**first, (S2, "AAPL"): 100.0}
    s3 = cluster.add(S3, peers=[s1.port, s2.port])
    cluster.wait_for_view(expected, [s1, s2, s3])
    assert_same_rows(s1, s2, s3)
    tables = [node.command_output("positions", "Current positions") for node in (s1, s2, s3)]
    assert tables[0] == tables[1] == tables[2], tables
    for node in (s1, s2, s3):
        for line in node.lines:
            if " | " in line and line.count(" | ") == 3:
                assert ROW.fullmatch(line), f"not the seed's row format: {line!r}"


@pytest.mark.parametrize(
    "victim", [S1, S2, S3], ids=["listening-node", "dialling-and-listening", "dialling-node"]
)
def test_kill_9_and_restart_converges(cluster: Cluster, victim: str) -> None:
    """After ``kill -9`` and a restart of any node, everyone reconnects by itself and
    converges, including the updates made while it was down; prints the time it took."""
    nodes = three_nodes(cluster, recovery_timeout=1.0)
    s1, s2, s3 = nodes
    s1.type("AAPL 100", "BTC 500")
    s2.type("AAPL 100")
    s3.type("MSFT -3")
    truth: Nets = {
        (S1, "AAPL"): 100.0,
        (S1, "BTC"): 500.0,
        (S2, "AAPL"): 100.0,
        (S3, "MSFT"): -3.0,
    }
    cluster.wait_for_view(truth, nodes)

    down = cluster.nodes[victim]
    down.kill()
    survivors = [node for node in nodes if node is not down]
    for node in survivors:  # updates while it is down
        node.type("AAPL 1")
        truth[(node.name, "AAPL")] = truth.get((node.name, "AAPL"), 0.0) + 1
    cluster.wait_for_view(truth, survivors)

    started = time.monotonic()
    cluster.restart(victim)
    down.type("ETH 2")  # the restarted node trades at once (its store is intact)
    truth[(victim, "ETH")] = 2.0
    cluster.wait_for_view(truth, nodes)
    converged = time.monotonic()
    assert_same_rows(*nodes)
    listening = down.log_time(" listening on ")
    print(
        f"\nkill -9 of {victim}: 3 nodes converged {(converged - started) * 1000:.0f} ms after"
        f" the restart ({(converged - listening) * 1000:.0f} ms after it was listening)"
    )

    # Every connection is live again, both ways: one more trade from each node reaches all.
    for node in nodes:
        node.type("AAPL 1")
        truth[(node.name, "AAPL")] = truth.get((node.name, "AAPL"), 0.0) + 1
    cluster.wait_for_view(truth, nodes)
    assert_same_rows(*nodes)


@pytest.mark.parametrize("victim", [S1, S3], ids=["listening-node", "dialling-node"])
def test_lost_store_is_recovered_from_peers_before_trading(cluster: Cluster, victim: str) -> None:
    """A node restarted with its data dir deleted gets its own positions back from its
    peers, and a trade typed at once applies on top of them (100, wipe, +1: 101)."""
    nodes = three_nodes(cluster, recovery_timeout=1.0)
    s1, s2, s3 = nodes
    s1.type("AAPL 100")
    s2.type("MSFT 5")
    s3.type("AAPL 100")
    truth: Nets = {(S1, "AAPL"): 100.0, (S2, "MSFT"): 5.0, (S3, "AAPL"): 100.0}
    cluster.wait_for_view(truth, nodes)
    before = s1.snapshot()

    node = cluster.nodes[victim]
    node.kill()
    # Long enough that passing proves the peers' sync, not the timeout, ended the wait.
    node.recovery_timeout = 30.0
    with contextlib.ExitStack() as stack:
        if node.peers:
            # A dialler's sync would otherwise often win the race with its first typed trade
            # even without a recovery window: make its peers' replies 0.3 s late.
            proxies = [stack.enter_context(FaultProxy(int(port))) for port in node.peers]
            for proxy in proxies:
                proxy.delay(0.3, "backward")
            node.peers = [proxy.port for proxy in proxies]
        cluster.restart(victim, wipe=True)
        node.type("AAPL 1")
        truth[(victim, "AAPL")] = 101.0
        cluster.wait_for_view(truth, nodes)
        assert_same_rows(*nodes)
    recovered = node.rows()
    assert (victim, "AAPL", 100.0, before[(victim, "AAPL")][1]) in recovered, recovered
    node.sync_stderr()
    assert not node.log_lines("recovery timeout")


def test_dialling_node_pushes_its_earlier_positions(cluster: Cluster) -> None:
    """A node that dials a peer sends it the positions it made before (the original sent
    its own positions only when it accepted a connection)."""
    a = cluster.add(S1, recovery_timeout=0)
    a.type("AAPL 100", "BTC 5")
    a_view = {(S1, "AAPL"): 100.0, (S1, "BTC"): 5.0}
    a.wait_for_view(a_view)
    rows = a.snapshot()
    b = cluster.add(S2, recovery_timeout=0)  # listens, dials nobody, never heard of A
    b.type("MSFT 7")
    b.wait_for_view({(S2, "MSFT"): 7.0})
    assert a.stop() == 0

    assert not [key for key in b.snapshot() if key[0] == S1], "B heard of A too early"

    # A comes back dialling B. A makes no new trade and B never dials A: the only way B can
    # learn A's positions is A's own sync on the connection A dialled.
    mark = b.mark()
    cluster.restart(S1, peers=[b.port])
    b.wait_until(
        lambda n: all(n.view.get(key) == value for key, value in rows.items()),
        what="A's earlier rows on B",
    )
    pushed = sorted(row for row in b.rows(mark.out) if row[0] == S1)
    assert pushed == sorted((s, sym, net, ts) for (s, sym), (net, ts) in rows.items())
    a.wait_for_view({**a_view, (S2, "MSFT"): 7.0})  # and B's positions went to A on accept
    assert {key: a.snapshot()[key] for key in rows} == rows, "A traded again"


def feed(node: NodeProcess, line: str, count: int, chunk: int = 100) -> None:
    """Type ``line`` ``count`` times, in chunks; stop quietly when the node is gone."""
    with contextlib.suppress(OSError, ValueError):
        for _ in range(count // chunk):
            node.type(*[line] * chunk)


def test_printed_own_trade_survives_kill_9(cluster: Cluster) -> None:
    """Every row printed for an own trade is in the store: ``kill -9`` right after the row
    and a restart show it (the stored view is at least as new as the last printed row)."""
    node = cluster.add(S1, recovery_timeout=0)
    node.wait_for_log("listening")
    # Trades keep coming from another thread, so that the kill lands amid commits.
    feeder = threading.Thread(target=feed, args=(node, "AAPL 1", 20_000), daemon=True)
    feeder.start()
    node.wait_until(
        lambda n: n.view.get((S1, "AAPL"), (0.0, 0))[0] >= 1000, what="AAPL rows up to 1000"
    )
    node.kill()  # right after a row is seen, with trades still being applied
    feeder.join(timeout=15)
    printed = [row for row in node.rows() if row[1] == "AAPL"]
    last_net, last_ts = printed[-1][2], printed[-1][3]
    cluster.restart(S1)
    stored = node.wait_until(lambda n: n.view.get((S1, "AAPL")), what="the stored AAPL row")
    assert stored[1] >= last_ts and stored[0] >= last_net, (
        f"printed {last_net} @ {last_ts} before kill -9, stored {stored}"
    )
    print(f"\nlast row printed before kill -9: {last_net} @ {last_ts}; stored: {stored}")
    node.type("AAPL 1")  # and trading goes on from the stored value
    node.wait_for_view({(S1, "AAPL"): stored[0] + 1})


LEVEL = re.compile(r"^\S+ \S+ \| (\w+)\s*\|")


def closed_lines(node: NodeProcess, peer: str, start: int = 0) -> list[tuple[str, str]]:
    """(level, line) of each ``connection with PEER ... closed`` line ``node`` logged."""
    lines = node.log_lines(f"connection with {peer} at ", start)
    return [
        (found[1] if (found := LEVEL.match(line)) else "?", line)
        for line in lines
        if " closed: " in line
    ]


def test_a_graceful_stop_is_logged_calmly_by_its_peers_and_a_crash_is_not(
    cluster: Cluster,
) -> None:
    """A peer that stops gracefully is logged at INFO as stopped by each end (dialled or
    accepted), with no WARNING; a peer killed with -9 is still a WARNING."""
    s1 = cluster.add(S1, recovery_timeout=0)
    s2 = cluster.add(S2, peers=[s1.port], recovery_timeout=0)
    s1.wait_for_log(f"connected to {S2} at ")
    s2.wait_for_log(f"connected to {S1} at ")
    assert s2.stop() == 0  # the dialling node stops: the accepting one sees it
    s1.wait_until(lambda n: closed_lines(n, S2), what=f"{S2}'s connection closed")
    assert [level for level, _ in closed_lines(s1, S2)] == ["INFO"], closed_lines(s1, S2)
    assert "closed: the peer stopped" in closed_lines(s1, S2)[0][1]

    s1_mark = s1.mark().err
    cluster.restart(S2)
    s2.wait_for_log(f"connected to {S1} at ")
    s1.wait_for_log(f"connected to {S2} at ", start=s1_mark)
    assert s1.stop() == 0  # the accepting node stops: the dialling one sees it
    s2.wait_until(lambda n: closed_lines(n, S1), what=f"{S1}'s connection closed")
    assert [level for level, _ in closed_lines(s2, S1)] == ["INFO"], closed_lines(s2, S1)
    assert "closed: the peer stopped" in closed_lines(s2, S1)[0][1]
    s2.sync_stderr()
    loud = [
        line for line in s2.errors_since() if (found := LEVEL.match(line)) and found[1] != "INFO"
    ]
    assert loud == [], loud

    cluster.restart(S1)
    s1.wait_for_log(f"connected to {S2} at ")
    s1_mark = s1.mark().err
    s2.kill()  # a crash: no Bye, the socket just ends
    s1.wait_until(lambda n: closed_lines(n, S2, s1_mark), what=f"{S2}'s connection lost")
    [(level, line)] = closed_lines(s1, S2, s1_mark)
    lost = ("closed: connection closed by the peer", "closed: connection reset by peer")
    assert level == "WARNING" and line.rstrip().endswith(lost), line
