"""Relay for a partial mesh: chains converge, joiners learn everyone, ownership holds, no storm.

Real processes started with ``--relay`` (the ``cluster`` fixture) and in-process nodes with
``Config(relay=True)``. The messages-per-trade measurement counts twice: the engine's ``sent``
counter (positions queued to peers) and, independently, the ``SymbolPos`` frames that cross
the TCP links, read by a recording ``FaultProxy`` on every link. Run it with
``.venv/bin/pytest -q -s tests/test_relay.py -k sent_per_trade`` to see the numbers.
"""

from __future__ import annotations

import collections
import struct
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import pytest

from position_distributor import position_pb2 as pb
from position_distributor.node import Node
from position_distributor.types import Position
from position_distributor.wire import Hello, SyncDone

from .faultproxy import FaultProxy
from .inproc import Nodes, Rows, nets_of
from .procs import Cluster, Nets, NodeProcess
from .rawpeer import RawPeer
from .waiting import capture_logs, wait_until

RELAY = ["--relay"]
# What a dropped or refused connection logs (see peer.py); relaying must never cause one.
DROP_SIGNS = ("protocol error", " closed: ", " refused: ", "refused the connection")


def drops(node: NodeProcess, start: int = 0) -> list[str]:
    """Every stderr line of ``node`` (from index ``start``) saying a connection was dropped or
    refused, once every line written so far has been read."""
    node.sync_stderr()
    return [line for line in node.errors_since(start) if any(s in line for s in DROP_SIGNS)]


def assert_no_drops(*nodes: NodeProcess) -> None:
    """No node logged a protocol error, a closed or a refused connection."""
    for node in nodes:
        assert drops(node) == [], f"{node.name} dropped a connection:\n{node.describe()}"


def assert_same_rows(*nodes: NodeProcess) -> None:
    """Every node printed the same last row for every position, timestamps included."""
    views = [node.snapshot() for node in nodes]
    for node, view in zip(nodes, views, strict=True):
        assert view == views[0], f"{node.name} differs from {nodes[0].name}: {view} {views[0]}"


def own_rows(node: NodeProcess) -> list[float]:
    """The nets of every row ``node`` printed for its own strategy, in order."""
    return [net for strategy, _symbol, net, _ts in node.rows() if strategy == node.name]


def chain(cluster: Cluster, names: Sequence[str], args: Sequence[str] = RELAY) -> list[NodeProcess]:
    """A chain: each node dials only the one started before it."""
    started: list[NodeProcess] = []
    for name in names:
        peers = [started[-1].port] if started else []
        started.append(cluster.add(name, peers=peers, args=list(args)))
    return started


# Real processes with --relay.


def test_a_chain_converges_with_relay_on_every_node(cluster: Cluster) -> None:
    """In a chain A - B - C with no A - C link, trades on every node reach every node, twice
    over (the first and the later updates), with no connection dropped."""
    a, b, c = nodes = chain(cluster, ["A", "B", "C"])
    a.type("AAPL 100")
    b.type("MSFT -5")
    c.type("IBM 7.5")
    truth: Nets = {("A", "AAPL"): 100.0, ("B", "MSFT"): -5.0, ("C", "IBM"): 7.5}
    cluster.wait_for_view(truth, nodes)
    for node in nodes:  # every node trades again: A's and C's updates cross two hops
        node.type("AAPL 1")
        truth[(node.name, "AAPL")] = truth.get((node.name, "AAPL"), 0.0) + 1
    cluster.wait_for_view(truth, nodes)
    assert_same_rows(a, b, c)
    assert own_rows(a) == [100.0, 101.0]  # a relay never changed A's own position
    assert own_rows(c) == [7.5, 1.0]
    assert_no_drops(a, b, c)


def test_a_node_joining_through_one_peer_learns_every_strategy(cluster: Cluster) -> None:
    """A node that dials a single relaying peer gets every strategy's positions in that
    peer's sync, and its own trades reach the far end of the chain."""
    a, b, c = chain(cluster, ["A", "B", "C"])
    a.type("AAPL 100")
    b.type("MSFT 2")
    c.type("IBM 3")
    truth: Nets = {("A", "AAPL"): 100.0, ("B", "MSFT"): 2.0, ("C", "IBM"): 3.0}
    cluster.wait_for_view(truth, [a, b, c])

    d = cluster.add("D", peers=[c.port], args=RELAY)
    d.wait_for_rows(c.snapshot())  # the rows of C's sync: every strategy, timestamps included
    d.type("TSLA 4")
    truth[("D", "TSLA")] = 4.0
    cluster.wait_for_view(truth, [a, b, c, d])  # three hops to A
    assert_same_rows(a, b, c, d)
    assert_no_drops(a, b, c, d)


def test_a_relay_never_sends_a_node_its_own_positions(cluster: Cluster) -> None:
    """In a relaying triangle (two paths between any two nodes), no relayed copy of a
    node's position ever comes back to it: no protocol error, no dropped connection, and its
    own rows are only its own trades."""
    a = cluster.add("A", args=RELAY)
    b = cluster.add("B", peers=[a.port], args=RELAY)
    c = cluster.add("C", peers=[a.port, b.port], args=RELAY)
    nodes = [a, b, c]
    for quantity in range(1, 6):  # one at a time: each trade relayed on its own
        a.type(f"AAPL {quantity}")
        a.wait_until(lambda n, q=quantity: own_rows(n)[-1:] == [q * (q + 1) / 2], what="row")
    a.type(*[f"AAPL {q}" for q in range(6, 21)], "MSFT 1")  # then a burst
    b.type("AAPL -1")
    c.type("AAPL -2")
    truth: Nets = {
        ("A", "AAPL"): 210.0,
        ("A", "MSFT"): 1.0,
        ("B", "AAPL"): -1.0,
        ("C", "AAPL"): -2.0,
    }
    cluster.wait_for_view(truth, nodes)
    assert_same_rows(*nodes)
    assert_no_drops(*nodes)
    assert own_rows(a)[:5] == [1.0, 3.0, 6.0, 10.0, 15.0]
    assert own_rows(b) == [-1.0]
    assert own_rows(c) == [-2.0]


def test_a_mixed_cluster_converges_and_never_sends_a_relayed_position_to_a_plain_node(
    cluster: Cluster,
) -> None:
    """In a full mesh where only some nodes relay, everyone converges over the direct links,
    and no node without --relay ever receives a third strategy's position, live or in the
    sync after a restart (it would refuse it and drop the connection)."""
    r1 = cluster.add("R1", args=RELAY)
    p1 = cluster.add("P1", peers=[r1.port])
    r2 = cluster.add("R2", peers=[r1.port, p1.port], args=RELAY)
    p2 = cluster.add("P2", peers=[r1.port, p1.port, r2.port])
    nodes = [r1, p1, r2, p2]
    truth: Nets = {}
    for i, node in enumerate(nodes, 1):
        node.type(f"AAPL {i}")
        truth[(node.name, "AAPL")] = float(i)
    cluster.wait_for_view(truth, nodes)
    assert_no_drops(*nodes)

    # P1 restarts: the relaying nodes' syncs to it must hold only their own and P1's positions.
    p1.kill()
    r1.type("AAPL 10")  # R2 has it to relay, and must not pass it to P2 (or to P1, later)
    truth[("R1", "AAPL")] = 11.0
    cluster.wait_for_view(truth, [r1, r2, p2])
    marks = {node.name: node.mark().err for node in (r1, r2, p2)}
    cluster.restart("P1")
    p1.wait_for_view(truth)
    for node in nodes:
        node.type("MSFT 1")
        truth[(node.name, "MSFT")] = 1.0
    cluster.wait_for_view(truth, nodes)
    assert_same_rows(*nodes)
    assert drops(p1) == []
    for node in (r1, r2, p2):
        # Their connection with the killed P1 closed; nothing else may have.
        lines = [line for line in drops(node, marks[node.name]) if "P1" not in line]
        assert lines == [], f"{node.name}:\n{node.describe()}"
        assert [line for line in node.errors if "protocol error" in line] == []


def test_relay_carries_updates_across_a_partition_that_heals(cluster: Cluster) -> None:
    """In a chain A - B - C whose A - B link is cut, C's trades reach B but not A; once the
    link heals, A and C learn each other's trades through B."""
    b = cluster.add("B", args=RELAY)
    with FaultProxy(b.port, name="A->B") as link:
        a = cluster.add("A", peers=[link.port], args=RELAY)
        c = cluster.add("C", peers=[b.port], args=RELAY)
        nodes = [a, b, c]
        a.type("AAPL 1")
        c.type("IBM 1")
        truth: Nets = {("A", "AAPL"): 1.0, ("C", "IBM"): 1.0}
        cluster.wait_for_view(truth, nodes)

        link.cut(how="reset")
        a.type("AAPL 10")
        c.type("IBM 10")
        truth[("A", "AAPL")] = 11.0
        truth[("C", "IBM")] = 11.0
        a.wait_for_view({("A", "AAPL"): 11.0, ("C", "IBM"): 1.0})
        b.wait_for_view({("A", "AAPL"): 1.0, ("C", "IBM"): 11.0})
        c.wait_for_view({("A", "AAPL"): 1.0, ("C", "IBM"): 11.0})

        link.heal()
        cluster.wait_for_view(truth, nodes)
        assert_same_rows(*nodes)
        for node in nodes:
            node.sync_stderr()
            assert node.log_lines("protocol error") == [], node.describe()


# In-process nodes with Config(relay=True).


def start(
    nodes: Nodes, name: str, peers: Sequence[int] = (), *, relay: bool = True
) -> tuple[Node, Rows]:
    """Start an in-process node (``Config(relay=relay)``) that dials ``peers``."""
    config = replace(nodes.config(name, peers=tuple(peers)), relay=relay)
    rows = Rows()
    node = Node(config, out=rows)
    nodes.started.append(node)
    node.start()
    return node, rows


def test_in_process_chain_with_relay_converges_and_a_joiner_learns_everyone(
    nodes: Nodes,
) -> None:
    """With Config(relay=True), a chain A - B - C converges on trades made on every node, and
    a node joining through C alone learns them all and is learnt by A."""
    a, _ = start(nodes, "A")
    b, _ = start(nodes, "B", [a.port])
    c, _ = start(nodes, "C", [b.port])
    with capture_logs("INFO") as logs:
        made = [node.trade("AAPL", q).result(10) for node, q in ((a, 1), (b, 2), (c, 3))]
        for node in (a, b, c):
            wait_until(lambda n=node: n.positions() == made, 10, f"{node.name} has every trade")
        d, d_rows = start(nodes, "D", [c.port])
        wait_until(lambda: d.positions() == made, 10, "D learns every strategy from C's sync")
        made.append(d.trade("AAPL", 4).result(10))
        for node in (a, b, c, d):
            wait_until(lambda n=node: n.positions() == made, 10, f"{node.name} has D's trade")
    assert d_rows.nets() == nets_of(made)
    assert logs.lines_with("protocol error") == []
    assert logs.lines_with(" closed: ") == []


# Messages per trade.


class FrameCountingProxy(FaultProxy):
    """A ``FaultProxy`` that also counts the frames it forwards, by ``Envelope`` body kind.

    Frames are cut from each direction's bytes as they are read (in the proxy's thread), with
    ``struct`` and ``position_pb2``: independent of the node's codec.
    """

    def __init__(self, target_port: int, **kwargs: Any) -> None:
        # Mutex protecting counts (written by the proxy thread, read by the test).
        self._count_lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._partial: dict[object, bytearray] = {}  # per direction of each connection
        super().__init__(target_port, **kwargs)

    def counts(self) -> collections.Counter[str]:
        with self._count_lock:
            return collections.Counter(self._counts)

    def _read(self, link: Any, pipe: Any, now: float) -> None:
        queued = len(pipe.chunks)
        super()._read(link, pipe, now)
        if len(pipe.chunks) > queued:  # a chunk was read to forward: it is the last one
            self._cut_frames(pipe, pipe.chunks[-1][1])

    def _cut_frames(self, pipe: object, data: bytes) -> None:
        buffer = self._partial.setdefault(pipe, bytearray())
        buffer += data
        kinds = []
        while len(buffer) >= 4:
            (length,) = struct.unpack_from(">I", buffer)
            if len(buffer) < 4 + length:
                break
            envelope = pb.Envelope.FromString(bytes(buffer[4 : 4 + length]))
            del buffer[: 4 + length]
            kinds.append(envelope.WhichOneof("body") or "none")
        with self._count_lock:
            self._counts.update(kinds)


def connected_peers(node: Node) -> int:
    return sum(status.state.startswith("connected") for status in node.peers())


class Measure(NamedTuple):
    per_trade: list[int]  # positions sent (queued to peers) for each trade
    frames: int  # SymbolPos frames that crossed the links
    drops: list[str]  # log lines of protocol errors and closed connections, before the stop


def measure_sent_per_trade(
    nodes: Nodes, *, count: int, topology: str, relay: bool, trades: int
) -> Measure:
    """Start ``count`` nodes in a full mesh or a chain, every link through a frame-counting
    proxy; make ``trades`` trades, rotating over the nodes, each its own batch (the next one
    starts once every node has printed the last one's row). Return the positions sent per
    trade (the engines' ``sent`` counters), the ``SymbolPos`` frames that crossed the links,
    and any dropped connection.
    """
    names = [f"n{i}" for i in range(1, count + 1)]
    started: list[tuple[Node, Rows]] = []
    proxies: list[FrameCountingProxy] = []
    expected_links: list[int] = []
    try:
        for i, name in enumerate(names):
            targets = list(range(i)) if topology == "mesh" else [i - 1] if i else []
            links = [
                FrameCountingProxy(started[j][0].port, name=f"{name}->{names[j]}") for j in targets
            ]
            proxies += links
            started.append(start(nodes, name, [p.port for p in links], relay=relay))
        for i in range(count):
            expected_links.append(
                count - 1 if topology == "mesh" else (1 if i in (0, count - 1) else 2)
            )
        for (node, _), links in zip(started, expected_links, strict=True):
            wait_until(lambda n=node, k=links: connected_peers(n) == k, 15, f"{node.name} linked")
        for proxy in proxies:
            # Both syncs done (empty: no node has traded yet), so a trade can only be sent
            # live: a trade made while a sync is being sent may also be in that sync.
            wait_until(lambda p=proxy: p.counts()["sync_done"] == 2, 15, f"syncs through {proxy}")

        def total_sent() -> int:
            return sum(node._engine.sent for node, _ in started)  # type: ignore[union-attr]

        def frames() -> int:
            return sum(proxy.counts()["position"] for proxy in proxies)

        per_trade = []
        with capture_logs("INFO") as logs:
            for k in range(trades):
                before = total_sent()
                node, _ = started[k % count]
                position = node.trade("AAPL", k + 1).result(15)
                for _, rows in started:
                    # A node forwards a change before printing its row: once every node has
                    # printed this one, every copy of it that will ever be sent is counted.
                    rows.wait_for_row(position, 15)
                per_trade.append(total_sent() - before)
            sent = total_sent()
            wait_until(lambda: frames() >= sent, 15, f"{sent} position frames through the links")
        dropped = logs.lines_with("protocol error") + logs.lines_with(" closed: ")
        return Measure(per_trade, frames(), dropped)
    finally:
        for node, _ in started:
            node.stop()
        for proxy in proxies:
            proxy.close()


@pytest.mark.parametrize(
    ("topology", "relay"),
    [("mesh", False), ("mesh", True), ("chain", True)],
    ids=["full-mesh-without-relay", "full-mesh-with-relay", "chain-with-relay"],
)
def test_positions_sent_per_trade(nodes: Nodes, topology: str, relay: bool) -> None:
    """Positions sent per trade in 5 nodes are bounded, so relay causes no storm: exactly
    N-1 = 4 in a full mesh without relay and in a chain with relay; in a full mesh with relay,
    N-1 from the owner, then each receiver forwards its one change to every peer but its
    source and the owner (N-2 for the first receiver, whose copy can only come from the
    owner, N-3 or N-2 for the others): from (N-1) + (N-2)^2 = 13 to (N-1)^2 = 16. The wire
    carries exactly the positions counted."""
    n = 5
    per_trade, frames, dropped = measure_sent_per_trade(
        nodes, count=n, topology=topology, relay=relay, trades=4 * n
    )
    shape = f"5-node {'full mesh' if topology == 'mesh' else 'chain'}"
    print(
        f"\n{shape} {'with' if relay else 'without'} relay: positions sent per trade"
        f" mean {sum(per_trade) / len(per_trade):.2f}, min {min(per_trade)}, max {max(per_trade)}"
        f" over {len(per_trade)} trades ({per_trade}); {frames} SymbolPos frames on the wire"
    )
    assert frames == sum(per_trade), "the wire carried other positions than the counted ones"
    if topology == "mesh" and relay:
        assert all((n - 1) + (n - 2) ** 2 <= sent <= (n - 1) ** 2 for sent in per_trade)
    else:
        assert per_trade == [n - 1] * len(per_trade)
    assert dropped == []


# Ownership against a relaying peer that claims this node's own positions.


def relaying_raw_peer(raw_peers: list[RawPeer], node: Node, name: str) -> RawPeer:
    """A hand-driven peer that dials ``node``, says it relays, and has read its sync."""
    raw = RawPeer.connect(node.port, name)
    raw_peers.append(raw)
    raw.send(Hello(name, relay=True))
    raw.read_sync(10)
    return raw


def test_a_relayed_live_claim_of_a_node_own_position_is_refused(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """A relaying peer that, once live, sends a node a position of the node's own strategy
    (newer than the node's) is cut off, and the node's own position does not change."""
    alpha, rows = start(nodes, "alpha")
    own = alpha.trade("AAPL", 100).result(10)
    raw = relaying_raw_peer(raw_peers, alpha, "mallory")
    with capture_logs("WARNING") as logs:
        raw.send(SyncDone(0), own._replace(net_position=5.0, timestamp=own.timestamp + 10**9))
        raw.read_until_eof(10)
        logs.wait_for_text("of this node's own strategy outside its sync")
    assert alpha.positions() == [own]
    assert [p for p in rows.rows() if p.strategy == "alpha"] == [own]


def test_a_node_refuses_a_claim_of_its_own_position_newer_than_it_wrote(
    nodes: Nodes, raw_peers: list[RawPeer]
) -> None:
    """A node that never lost its store refuses an own position, echoed in a relaying peer's
    sync, that is newer than anything it wrote itself: its position stays as it made it."""
    alpha, rows = start(nodes, "alpha")
    own = alpha.trade("AAPL", 100).result(10)
    assert not alpha.recovering
    raw = relaying_raw_peer(raw_peers, alpha, "mallory")
    theirs = Position("mallory", "MSFT", 1.0, own.timestamp + 2 * 10**9)
    raw.send(own._replace(net_position=5.0, timestamp=own.timestamp + 10**9), theirs, SyncDone(2))
    rows.wait_for_row(theirs)  # applied in order: the claim before it was dealt with
    assert alpha.positions() == [own, theirs]
    assert [p for p in rows.rows() if p.strategy == "alpha"] == [own]
    assert alpha.history("AAPL") == [alpha.history("AAPL")[0]]  # no rebase entry
