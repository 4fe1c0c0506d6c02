"""Chaos: node processes under random trades, kill -9, wiped stores, partitions and link faults.

Four nodes (``CHAOS_NODES``) in a full mesh, every link through a ``FaultProxy``. For about
``CHAOS_DURATION`` seconds a schedule drawn from ``CHAOS_SEED`` types random trades into every
live node, kills nodes with ``kill -9`` and restarts them (some with the data dir deleted),
partitions the mesh and heals it, and delays, throttles, stalls, pauses, drops, resets and
blocks single links. Then everything is healed and started, trading stops, and every node's
view must equal the ground truth: the sum of every acknowledged trade (a row printed by its
node), plus each unacknowledged trade that the restarted node's store shows was committed.

A store is deleted only once every other node is alive and has printed the node's last
acknowledged positions, with no trade of it outstanding: then a lost store loses nothing, and
anything missing at the end is a bug. (With the issue's weaker rule, "once they have reached
one peer", a node may recover from a stale peer, trade, and only later get the newer position
from the peer that held it, which the node then rebases its trades on: rows of transiently
wrong values that this ledger, which matches rows to trades by value, does not model. That
case is pinned down deterministically in ``test_stateful_nodes.py``.) The seed and the
schedule are printed; replay a failing run with ``CHAOS_SEED=<seed> pytest tests/test_chaos.py``
(with the same ``CHAOS_DURATION``, ``CHAOS_NODES``, ``CHAOS_NODE_ARGS``, options given to
every node, e.g. ``--relay``, and ``CHAOS_TOPOLOGY=ring``, a partial mesh for ``--relay``):
the same random draws, though what
they meet (which node is settled, how far a trade got before a kill) depends on timing.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .chaos_cluster import ChaosCluster, ChaosNode
from .chaos_ledger import Ledger
from .faultproxy import FaultProxy, Partition

pytestmark = pytest.mark.slow

SYMBOLS = ("AAPL", "MSFT", "7203", "BRK.B", "ES:H6")


class Chaos:
    """The random schedule: what to do next, done to a ``ChaosCluster``, and its log."""

    def __init__(self, cluster: ChaosCluster, seed: int, *, echo: bool = True) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seed = seed
        self.echo = echo
        self.schedule: list[str] = []
        self.partitions: list[Partition] = []
        self.faulty: set[FaultProxy] = set()
        self.start = time.monotonic()
        self.counts: dict[str, int] = {}
        # A node to kill and wipe once that loses nothing (see safe_to_wipe), and until when.
        self.wipe_intent: tuple[ChaosNode, float] | None = None

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.start:7.2f}s  {text}"
        self.schedule.append(line)
        if self.echo:
            print(line, flush=True)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # The schedule.

    def run(self, duration: float) -> None:
        cluster = self.cluster
        for node in cluster.nodes.values():
            node.start()
        self.note(f"started {', '.join(cluster.nodes)}")
        deadline = self.start + duration
        actions: list[tuple[float, Callable[[], None]]] = [
            (12.0, self.trade),
            (1.0, self.kill),
            (2.0, self.restart),
            (0.8, self.partition),
            (1.2, self.heal_partition),
            (1.5, self.link_fault),
            (1.5, self.heal_link),
        ]
        weights = [w for w, _ in actions]
        while time.monotonic() < deadline:
            cluster.process_output()
            self.wipe_when_safe()
            action = self.rng.choices([a for _, a in actions], weights)[0]
            action()
            # The pace of the workload (not a wait for anything): output is read meanwhile.
            cluster.wait_for(lambda: False, self.rng.uniform(0.005, 0.06))

    def busy(self) -> bool:
        """Whether a node is recovering a deleted store (no fault may hit it meanwhile)."""
        return any(n.recovering and n.alive for n in self.cluster.nodes.values())

    def tradable(self) -> list[ChaosNode]:
        """Live nodes whose stored view is accounted for, and not about to be wiped."""
        intent = self.wipe_intent[0] if self.wipe_intent else None
        return [n for n in self.cluster.live() if n.settled and n is not intent]

    def trade(self) -> None:
        ready = self.tradable()
        if not ready:
            return
        for node in self.rng.sample(ready, self.rng.randint(1, min(3, len(ready)))):
            for _ in range(self.rng.randint(1, 4)):
                quantity = self.rng.choice((-1, 1)) * self.rng.randint(1, 100)
                node.type_trade(self.rng.choice(SYMBOLS), quantity)
                self.count("trades typed")

    def kill(self) -> None:
        cluster = self.cluster
        candidates = self.tradable()
        if self.busy() or len(cluster.live()) < 2 or not candidates:
            return
        node = self.rng.choice(candidates)
        one_lost_store_at_a_time = not any(n.wipe_next for n in cluster.nodes.values())
        if self.rng.random() < 0.35 and not self.wipe_intent and one_lost_store_at_a_time:
            # Stop trading there; kill and wipe once its trades have reached the others.
            self.wipe_intent = (node, time.monotonic() + 4.0)
            self.note(f"{node.name}: to be killed and wiped once its trades are out")
            return
        if self.rng.random() < 0.5:  # trades typed just before the crash: maybe committed
            for _ in range(self.rng.randint(1, 6)):
                quantity = self.rng.choice((-1, 1)) * self.rng.randint(1, 100)
                node.type_trade(self.rng.choice(SYMBOLS), quantity)
                self.count("trades typed")
        outstanding = node.ledger.outstanding
        node.kill(wipe=False)
        self.count("kill -9")
        self.note(f"kill -9 {node.name} with {outstanding} trade(s) unacknowledged")

    def wipe_when_safe(self) -> None:
        if self.wipe_intent is None:
            return
        node, until = self.wipe_intent
        if not node.alive:
            self.wipe_intent = None
        elif self.safe_to_wipe(node):
            self.wipe_intent = None
            node.kill(wipe=True)
            self.count("kill -9 and delete store")
            self.note(f"kill -9 {node.name} and delete its store")
        elif time.monotonic() > until:
            self.wipe_intent = None
            self.note(f"{node.name}: its trades did not reach the others in time; not wiped")

    def safe_to_wipe(self, node: ChaosNode) -> bool:
        """No trade outstanding, and its last acknowledged positions printed by every other
        node, alive."""
        if node.ledger.outstanding:
            return False
        others = [n for n in self.cluster.nodes.values() if n is not node]
        own = {
            (node.name, symbol): (net, node.ledger.highest_ts[symbol])
            for symbol, net in node.ledger.acked.items()
        }

        def has_all(other: ChaosNode) -> bool:
            return other.alive and all(other.view.get(k) == v for k, v in own.items())

        return all(has_all(o) for o in others)

    def restart(self) -> None:
        dead = [n for n in self.cluster.nodes.values() if not n.alive]
        if not dead or self.busy():
            return
        node = self.rng.choice(dead)
        if node.wipe_next:
            # A lost store is recovered from the peers: give it all of them, unfaulted.
            self.heal_all()
            for other in dead:
                if other is not node:
                    other.start()
                    self.note(f"restart {other.name} (store kept), before a lost store")
            node.start()
            self.count("restart, store deleted")
            self.note(f"restart {node.name} with its store deleted")
        else:
            node.start()
            self.count("restart, store kept")
            self.note(f"restart {node.name} (store kept)")

    def partition(self) -> None:
        if self.busy():
            return
        names = list(self.cluster.nodes)
        self.rng.shuffle(names)
        split = self.rng.randint(1, len(names) - 1)
        side_a, side_b = names[:split], names[split:]
        how = self.rng.choice(("reset", "drop", "stall"))
        partition = Partition(self.cluster.mesh)
        partition.cut(side_a, side_b, how=how)
        self.partitions.append(partition)
        self.count(f"partition ({how})")
        self.note(f"partition {sorted(side_a)} | {sorted(side_b)} ({how})")

    def heal_partition(self) -> None:
        if not self.partitions:
            return
        partition = self.partitions.pop(self.rng.randrange(len(self.partitions)))
        names = sorted(p.name for p in partition.cut_links)
        partition.heal()
        self.note(f"heal partition of {names}")

    def link_fault(self) -> None:
        if self.busy():
            return
        proxy = self.rng.choice(list(self.cluster.mesh.proxies.values()))
        fault = self.rng.choice(("delay", "throttle", "stall", "pause", "drop", "reset", "block"))
        direction = self.rng.choice(("both", "forward", "backward"))
        if fault == "delay":
            seconds = self.rng.uniform(0.01, 0.4)
            proxy.delay(seconds, direction)  # type: ignore[arg-type]
            detail = f"{seconds * 1000:.0f} ms {direction}"
        elif fault == "throttle":
            rate = self.rng.choice((500, 2_000, 20_000))
            proxy.throttle(rate, direction)  # type: ignore[arg-type]
            detail = f"{rate} B/s {direction}"
        elif fault == "stall":
            proxy.stall(direction)  # type: ignore[arg-type]
            detail = direction
        elif fault == "pause":
            proxy.pause(direction)  # type: ignore[arg-type]
            detail = direction
        elif fault == "drop":
            detail = f"{proxy.drop()} connection(s)"
        elif fault == "reset":
            detail = f"{proxy.reset()} connection(s)"
        else:
            proxy.block()
            detail = "new connections"
        if fault not in ("drop", "reset"):
            self.faulty.add(proxy)
        self.count(f"link {fault}")
        self.note(f"link {proxy.name}: {fault} {detail}")

    def heal_link(self) -> None:
        if not self.faulty:
            return
        proxy = self.rng.choice(sorted(self.faulty, key=lambda p: p.name))
        self.faulty.discard(proxy)
        proxy.heal()
        self.note(f"heal link {proxy.name}")

    def heal_all(self) -> None:
        for partition in self.partitions:
            partition.heal()
        self.partitions.clear()
        self.faulty.clear()
        self.cluster.mesh.heal()
        self.note("heal every link")

    # The end.

    def settle(self, timeout: float) -> None:
        """Heal everything, start every node, stop trading; wait until every node has read
        its store, recovered, and acknowledged every trade typed."""
        self.heal_all()
        for node in self.cluster.nodes.values():
            if not node.alive:
                node.start()
                self.note(f"restart {node.name} for the end")
        self.note("trading stopped")

        def quiet() -> bool:
            return bool(self.cluster.violations()) or all(
                n.settled and not n.recovering and not n.ledger.outstanding
                for n in self.cluster.nodes.values()
            )

        if not self.cluster.wait_for(quiet, timeout):
            raise AssertionError(self.report("nodes did not settle", timeout))
        if self.cluster.violations():
            raise AssertionError(self.report("acknowledged trades were lost", timeout))

    def converged(self) -> bool:
        """Every node prints exactly the ground truth, with the same timestamps everywhere."""
        expected = self.cluster.expected()
        views = [n.view for n in self.cluster.nodes.values()]
        if any({k: net for k, (net, _) in view.items()} != expected for view in views):
            return False
        return all(view == views[0] for view in views)

    def report(self, what: str, timeout: float) -> str:
        cluster = self.cluster
        expected = cluster.expected()
        lines = [
            f"{what} (deadline {timeout:g}s; CHAOS_SEED={self.seed})",
            "schedule (tail):",
        ]
        lines += self.schedule[-40:]
        lines.append(f"expected: {sorted(expected.items())}")
        for node in cluster.nodes.values():
            view = {k: net for k, (net, _) in node.view.items()}
            diff = {
                k: (view.get(k), expected.get(k))
                for k in set(view) | set(expected)
                if view.get(k) != expected.get(k)
            }
            lines.append(
                f"{node.name}: alive={node.alive} settled={node.settled}"
                f" recovering={node.recovering} outstanding={node.ledger.outstanding}"
                f" diff (got, expected)={diff}"
            )
        lines.append(f"violations: {cluster.violations()}")
        for node in cluster.nodes.values():
            lines.append(f"--- {node.name} stderr (tail)")
            lines += [line.rstrip() for line in node.all_errors[-25:]]
        return "\n".join(lines)


def run_chaos(
    root: Path, seed: int, *, duration: float, nodes: int, args: tuple[str, ...] = ()
) -> Chaos:
    """Run one chaos schedule to the end and check it; return it for the caller's report."""
    rng = random.Random(seed)
    both_ways = rng.random() < 0.5
    ring = os.environ.get("CHAOS_TOPOLOGY") == "ring"  # a partial mesh: with --relay only
    cluster = ChaosCluster(root, nodes, both_ways=both_ways, ring=ring, args=args)
    chaos = Chaos(cluster, rng.randrange(2**32))
    chaos.seed = seed
    try:
        shape = "each node dials the earlier"
        if ring:
            shape = "a ring"
        elif both_ways:
            shape = "every node dials every other"
        chaos.note(f"CHAOS_SEED={seed}: {nodes} nodes, {duration:g}s, {shape} {' '.join(args)}")
        chaos.run(duration)
        chaos.settle(timeout=60.0)
        start = time.monotonic()
        if not cluster.wait_for(chaos.converged, 30.0):
            raise AssertionError(chaos.report("views did not converge", 30.0))
        chaos.note(f"converged {time.monotonic() - start:.2f}s after settling")
        violations = cluster.violations()
        assert not violations, chaos.report(f"violations: {violations}", 0)

        # A graceful restart of everyone shows the same view at once, from each store.
        for node in cluster.nodes.values():
            assert node.stop() == 0, f"{node.name} exited with an error"
        for node in cluster.nodes.values():
            node.start()
        assert cluster.wait_for(lambda: all(n.settled for n in cluster.nodes.values()), 30.0), (
            chaos.report("restarted nodes did not print their stored view", 30.0)
        )
        expected = cluster.expected()
        with cluster.cond:
            stored = {name: n.stored_view() for name, n in cluster.nodes.items()}
        first = next(iter(stored.values()))
        for name, view in stored.items():
            assert {k: net for k, (net, _) in view.items()} == expected, (
                f"{name}'s stored view {view} is not the truth {expected} (CHAOS_SEED={seed})"
            )
            assert view == first, f"{name}'s stored timestamps differ (CHAOS_SEED={seed})"
        for node in cluster.nodes.values():
            assert node.stop() == 0
        chaos.note(f"stored views equal the truth; counts: {chaos.counts}")
        ledgers = [n.ledger for n in cluster.nodes.values()]
        chaos.note(
            "trades: "
            f"{sum(x.typed for x in ledgers)} typed, {sum(x.acknowledged for x in ledgers)}"
            f" acknowledged, {sum(x.applied_unacked for x in ledgers)} unacknowledged but"
            f" committed, {sum(x.lost_unacked for x in ledgers)} unacknowledged and lost"
            " with their node"
        )
        return chaos
    finally:
        cluster.close()


@pytest.mark.timeout(400)
def test_chaos_converges_to_the_acknowledged_trades(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under random kill -9, deleted stores, partitions and link faults, every node ends with
    exactly the positions of the acknowledged (and provably committed) trades."""
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    duration = float(os.environ.get("CHAOS_DURATION", "35"))
    nodes = int(os.environ.get("CHAOS_NODES", "4"))
    args = tuple(os.environ.get("CHAOS_NODE_ARGS", "").split())  # e.g. "--relay"
    with capsys.disabled():  # the seed shows in every run's output, passed or failed
        print(f" CHAOS_SEED={seed} ", end="", flush=True)
    print(f"CHAOS_SEED={seed}", flush=True)  # and in the captured schedule of a failure
    chaos = run_chaos(tmp_path, seed, duration=duration, nodes=nodes, args=args)
    assert chaos.counts.get("trades typed", 0) > 0
    assert any(k.startswith("kill") for k in chaos.counts)


def test_ledger_accounts_for_unacknowledged_trades_exactly() -> None:
    """The ledger takes a restarted store's value as the committed prefix of unacknowledged
    trades, and flags a value no prefix explains (a lost acknowledged trade)."""
    ledger = Ledger("s")
    ledger.typed_trade("A", 5)
    ledger.own_row("A", 5.0, 10)
    ledger.typed_trade("A", 3)
    ledger.typed_trade("A", -1)
    ledger.typed_trade("B", 7)
    ledger.restarted({"A": (8.0, 11)}, wiped=False)  # A +3 committed, A -1 and B 7 not
    assert ledger.acked == {"A": 8.0}
    assert (ledger.applied_unacked, ledger.lost_unacked, ledger.violations) == (1, 2, [])
    ledger.restarted({}, wiped=False)
    assert ledger.violations == ["s: acknowledged A 8.0 missing from the store"]


def test_ledger_flags_rows_no_trade_explains() -> None:
    """A new own row that no typed trade explains, or an old timestamp with a new value,
    is a violation."""
    ledger = Ledger("s")
    ledger.typed_trade("A", 5)
    ledger.own_row("A", 6.0, 10)
    ledger.own_row("A", 5.0, 11)
    assert ledger.acked == {"A": 5.0} and len(ledger.violations) == 1
    ledger.own_row("A", 4.0, 11)  # same timestamp, another value: forged
    assert len(ledger.violations) == 2
    ledger.own_row("A", 9.0, 3)  # an old echo: not a trade, not a violation
    assert len(ledger.violations) == 2
