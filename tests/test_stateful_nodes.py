"""A hypothesis state machine of whole in-process nodes (real threads, real sockets, proxies).

Three ``Node``s in a full mesh, every link through a ``FaultProxy``. Rules: trade, disconnect
a link (drop or reset), kill a node, restart it with its store or with its store deleted,
partition the mesh, heal it. The model is the sum of acknowledged trades per node and symbol
(a trade's future resolved: committed). Checked: each trade's resulting position is the model
plus the trade (nothing acknowledged was lost, even across a lost store); every running node's
own positions equal the model at every step; and after healing, every node's whole view
equals the model.

"Kill" is as close to a crash as the in-process API allows: every link of the node is blocked
and reset first (so nothing it flushes on the way out reaches anyone), then ``stop()``. Trades
are acknowledged before the next step, so no trade is in flight at a kill.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from position_distributor.node import Config, Node
from position_distributor.peer import Limits
from position_distributor.types import Position

from .chaos_cluster import restartable_ports
from .faultproxy import ProxyMesh
from .waiting import wait_until

NAMES = ("n1", "n2", "n3")
SYMBOLS = ("AAPL", "7203")
ACK_TIMEOUT = 15.0  # a trade on a node recovering from a lost store waits for its peers
CONVERGE_TIMEOUT = 20.0
LIMITS = Limits(
    heartbeat_interval=0.1,
    idle_timeout=0.6,
    hello_timeout=1.0,
    connect_timeout=1.0,
    backoff_min=0.02,
    backoff_max=0.2,
)
_LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"

Cut = Literal["reset", "drop", "stall"]


class NodesMachine(RuleBasedStateMachine):
    """Whole nodes under trades, link faults, crashes, lost stores and partitions."""

    def __init__(self) -> None:
        super().__init__()
        self.threads_before = set(threading.enumerate())
        self.root = Path(tempfile.mkdtemp(prefix="stateful-nodes-"))
        ports = restartable_ports(NAMES)
        self.mesh = ProxyMesh.full(ports)
        self.configs = {
            name: Config(
                name,
                port=ports[name],
                peers=tuple(("127.0.0.1", p) for p in self.mesh.peers_of(name)),
                data_dir=self.root / name,
                recovery_timeout=10.0,
                limits=LIMITS,
            )
            for name in NAMES
        }
        self.nodes: dict[str, Node | None] = dict.fromkeys(NAMES)
        self.model: dict[str, dict[str, float]] = {name: {} for name in NAMES}
        self.partition: tuple[frozenset[str], Cut] | None = None

    @initialize()
    def start_everyone(self) -> None:
        for name in NAMES:
            self._start(name)

    # Rules.

    @rule(data=st.data(), symbol=st.sampled_from(SYMBOLS), qty=st.integers(-50, 50))
    def trade(self, data: st.DataObject, symbol: str, qty: int) -> None:
        if qty == 0 or not self.running:
            return
        name = data.draw(st.sampled_from(self.running), label="node")
        node = self.nodes[name]
        assert node is not None
        position = node.trade(symbol, qty).result(ACK_TIMEOUT)
        expected = self.model[name].get(symbol, 0.0) + qty
        assert position.net_position == expected, (
            f"{name} {symbol} {qty:+}: position {position.net_position}, expected {expected}"
            " (an acknowledged trade was lost)"
        )
        self.model[name][symbol] = expected

    @rule(data=st.data(), how=st.sampled_from(["drop", "reset"]))
    def disconnect(self, data: st.DataObject, how: str) -> None:
        link = data.draw(st.sampled_from(sorted(self.mesh.proxies)), label="link")
        proxy = self.mesh.proxies[link]
        proxy.drop() if how == "drop" else proxy.reset()

    @precondition(lambda self: len(self.running) > 1)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        self.kill_node(data.draw(st.sampled_from(self.running), label="node"))

    @precondition(lambda self: len(self.running) < len(NAMES))
    @rule(data=st.data())
    def restart_with_store(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.dead), label="node")
        self._start(name)

    @precondition(lambda self: len(self.running) == len(NAMES) - 1)
    @rule()
    def restart_without_store(self) -> None:
        """Restart the dead node with its store deleted, once every other node holds its
        positions (a lost store may lose only what no peer has): if they may not, it first
        comes back with its store and gives them its positions, then crashes again."""
        (name,) = self.dead
        # Whether the others hold its positions depends on how far they got before the kill,
        # a matter of timing: make it so, whatever the timing, to keep the rule deterministic.
        self.heal()
        self._start(name)
        self._spread(name)
        self.kill_node(name)
        self._lose_store_and_recover(name)

    @precondition(lambda self: len(self.running) == len(NAMES))
    @rule(data=st.data())
    def crash_and_lose_store(self, data: st.DataObject) -> None:
        """Once every other node holds a node's positions, kill it, delete its store and
        restart it: it must get every position back from its peers."""
        name = data.draw(st.sampled_from(self.running), label="node")
        self.heal()
        self._spread(name)
        self.kill_node(name)
        self._lose_store_and_recover(name)

    @rule(
        side=st.frozensets(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES) - 1),
        how=st.sampled_from(["reset", "drop", "stall"]),
    )
    def partition_nodes(self, side: frozenset[str], how: Cut) -> None:
        self.mesh.heal()
        self.partition = (side, how)
        self._apply_partition()

    @rule()
    def heal(self) -> None:
        self.partition = None
        self.mesh.heal()

    @rule()
    def heal_and_converge(self) -> None:
        """Heal every link, start every dead node (with its store): every view converges."""
        self.heal()
        for name in self.dead:
            self._start(name)
        expected = {
            (name, symbol): net for name, book in self.model.items() for symbol, net in book.items()
        }
        for name in NAMES:
            node = self.nodes[name]
            assert node is not None
            wait_until(
                lambda node=node: _nets(node.positions()) == expected,
                CONVERGE_TIMEOUT,
                f"{name}'s view to converge to {expected}",
            )

    # Invariants.

    @invariant()
    def own_positions_equal_the_model(self) -> None:
        """A node's own positions change only by its own trades: always equal to the model."""
        for name in self.running:
            node = self.nodes[name]
            assert node is not None
            assert {sym: net for (_, sym), net in self._view_of(node, name).items()} == (
                self.model[name]
            ), f"{name}'s own positions differ from the model"

    # Helpers.

    def kill_node(self, name: str) -> None:
        """As close to a crash as in-process allows: block and reset its links, then stop."""
        node = self.nodes[name]
        assert node is not None
        for proxy in self.mesh.touching(name):
            proxy.block()
            proxy.reset()
        node.stop()
        self.nodes[name] = None
        self._apply_partition()

    def _spread(self, name: str) -> None:
        """Wait until every other node holds ``name``'s positions (all running, links healed)."""
        for other in NAMES:
            if other != name:
                wait_until(
                    lambda other=other: self._holds(other, name),
                    CONVERGE_TIMEOUT,
                    f"{other} to hold {name}'s positions",
                )

    def _lose_store_and_recover(self, name: str) -> None:
        self.heal()
        expected = self._own_view(name)
        shutil.rmtree(self.configs[name].data_dir)
        node = self._start(name)
        wait_until(lambda: not node.recovering, CONVERGE_TIMEOUT, f"{name} to recover")
        assert self._view_of(node, name) == expected, f"{name} did not recover its positions"

    def _holds(self, holder: str, owner: str) -> bool:
        """Whether node ``holder`` is running and holds every position of ``owner``."""
        node = self.nodes[holder]
        return node is not None and self._view_of(node, owner) == self._own_view(owner)

    @property
    def running(self) -> list[str]:
        return [name for name in NAMES if self.nodes[name] is not None]

    @property
    def dead(self) -> list[str]:
        return [name for name in NAMES if self.nodes[name] is None]

    def _start(self, name: str) -> Node:
        """Start ``name`` on its port; its links follow the current partition."""
        for proxy in self.mesh.touching(name):
            proxy.heal()
        self._apply_partition()
        node = Node(self.configs[name]).start()
        self.nodes[name] = node
        return node

    def _apply_partition(self) -> None:
        if self.partition is None:
            return
        side, how = self.partition
        for proxy in self.mesh.between(side, set(NAMES) - side):
            proxy.cut(how=how)

    def _own_view(self, name: str) -> dict[tuple[str, str], float]:
        return {(name, symbol): net for symbol, net in self.model[name].items()}

    @staticmethod
    def _view_of(node: Node, strategy: str) -> dict[tuple[str, str], float]:
        return {k: v for k, v in _nets(node.positions()).items() if k[0] == strategy}

    def teardown(self) -> None:
        try:
            for node in self.nodes.values():
                if node is not None:
                    node.stop()
        finally:
            self.mesh.close()
            shutil.rmtree(self.root, ignore_errors=True)
        leaked = [t for t in threading.enumerate() if t not in self.threads_before and t.is_alive()]
        deadline = time.monotonic() + 5.0
        while leaked and time.monotonic() < deadline:  # janus/loop threads end on their own
            leaked[0].join(max(0.0, deadline - time.monotonic()))
            leaked = [t for t in leaked if t.is_alive()]
        assert not leaked, f"threads still alive: {[t.name for t in leaked]}"


def _nets(positions: list[Position]) -> dict[tuple[str, str], float]:
    return {(p.strategy, p.symbol): p.net_position for p in positions}


NodesMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("STATEFUL_NODES_EXAMPLES", 200 if _LONG else 40)),
    stateful_step_count=40 if _LONG else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestNodesMachine = pytest.mark.timeout(3600 if _LONG else 600)(NodesMachine.TestCase)
# The nodes' redial jitter draws from the module-level ``random`` in their own threads; when
# that happens during one of hypothesis's draws, hypothesis warns as if a strategy used it.
TestNodesMachine = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
)(TestNodesMachine)
TestNodesMachine.__doc__ = (
    "Under trades, link faults, crashes, lost stores and partitions, every node agrees with"
    " the model of acknowledged trades once healed."
)


# Scenarios that the machine above reaches only by a lucky timing, made deterministic with the
# proxies: a node recovering a lost store, whose last trade only one peer holds, while a stale
# peer syncs first. (Found by the chaos test with the wipe rule; the first was a
# strict xfail until a9380bd, the other two lost the trade for good before it.)


# Timeouts well above the 1 s delay the scenarios put on a link, so that the delayed link
# still connects and syncs: what the recovering node must wait for.
TRIO_LIMITS = Limits(
    heartbeat_interval=0.1, idle_timeout=5.0, hello_timeout=5.0, backoff_min=0.02, backoff_max=0.2
)


class Trio:
    """s1, s2, s3 in the seed's full mesh (each dials the earlier ones) through proxies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ports = restartable_ports(("s1", "s2", "s3"))
        self.mesh = ProxyMesh.full(ports)
        self.configs = {
            name: Config(
                name,
                port=port,
                peers=tuple(("127.0.0.1", p) for p in self.mesh.peers_of(name)),
                data_dir=root / name,
                recovery_timeout=10.0,
                limits=TRIO_LIMITS,
            )
            for name, port in ports.items()
        }
        self.nodes: dict[str, Node] = {}

    def start(self, name: str) -> Node:
        self.nodes[name] = Node(self.configs[name]).start()
        return self.nodes[name]

    def holds(self, holder: str, owner: str) -> dict[tuple[str, str], float]:
        return NodesMachine._view_of(self.nodes[holder], owner)

    def lose_store(self, name: str) -> None:
        self.nodes[name].stop()
        shutil.rmtree(self.configs[name].data_dir)

    def close(self) -> None:
        try:
            for node in self.nodes.values():
                node.stop()
        finally:
            self.mesh.close()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    nodes = Trio(tmp_path)
    try:
        for name in ("s1", "s2", "s3"):
            nodes.start(name)
        wait_until(
            lambda: not any(n.recovering for n in nodes.nodes.values()), 15.0, "first recovery"
        )
        yield nodes
    finally:
        nodes.close()


def trade_reaching_only(trio: Trio, owner: str, holder: str, stale: str) -> None:
    """``owner`` trades AAPL 100 while cut off from ``stale``: only ``holder`` gets it."""
    trio.mesh.between({owner}, {stale})[0].cut()
    assert trio.nodes[owner].trade("AAPL", 100).result(ACK_TIMEOUT).net_position == 100.0
    wait_until(
        lambda: trio.holds(holder, owner) == {(owner, "AAPL"): 100.0},
        CONVERGE_TIMEOUT,
        f"{holder} to hold the trade",
    )
    assert trio.holds(stale, owner) == {}
    trio.lose_store(owner)
    trio.mesh.heal()


@pytest.mark.usefixtures("no_thread_leak")
def test_recovery_waits_for_its_configured_peer_not_any_peer(trio: Trio) -> None:
    """A node with a lost store keeps holding trades until its configured peer has synced,
    even when another, stale peer syncs first: its acknowledged trade is not lost."""
    trade_reaching_only(trio, "s2", holder="s1", stale="s3")
    trio.mesh.proxies[("s2", "s1")].delay(1.0)  # its one configured peer answers late
    s2 = trio.start("s2")  # s3 (which dials s2, unconfigured there) syncs first
    assert s2.trade("AAPL", 1).result(ACK_TIMEOUT).net_position == 101.0


def converges_to(trio: Trio, owner: str, expected: dict[tuple[str, str], float]) -> None:
    for holder in ("s1", "s2", "s3"):
        wait_until(
            lambda holder=holder: trio.holds(holder, owner) == expected,
            CONVERGE_TIMEOUT,
            f"{holder} to hold {expected}",
        )


@pytest.mark.usefixtures("no_thread_leak")
def test_recovery_without_configured_peers_loses_no_trade_a_late_peer_holds(
    trio: Trio,
) -> None:
    """A node with no configured peers and a lost store ends with every acknowledged trade
    when a stale peer syncs first and the peer holding its last trade a second later: the
    late position is the base of the trades made since."""
    trade_reaching_only(trio, "s1", holder="s2", stale="s3")
    trio.mesh.proxies[("s2", "s1")].delay(1.0)  # the holder reaches s1 late
    s1 = trio.start("s1")  # s3 syncs first, with nothing of s1
    s1.trade("AAPL", 1).result(ACK_TIMEOUT)
    converges_to(trio, "s1", {("s1", "AAPL"): 101.0})


@pytest.mark.usefixtures("no_thread_leak")
def test_recovery_loses_no_trade_held_by_a_peer_that_dials_in_late(trio: Trio) -> None:
    """A node with a lost store ends with every acknowledged trade when only a peer that
    dials it holds its last trade, and its configured peer, stale, syncs first."""
    trade_reaching_only(trio, "s2", holder="s3", stale="s1")
    trio.mesh.proxies[("s3", "s2")].delay(1.0)  # the holder dials in late
    s2 = trio.start("s2")  # s1, its configured peer, syncs first with nothing of s2
    s2.trade("AAPL", 1).result(ACK_TIMEOUT)
    converges_to(trio, "s2", {("s2", "AAPL"): 101.0})
