"""A stateful test: in-process replicas exchanging frames through the codec, against a model.

Each replica is what an engine keeps, without its threads: a book, a clock on a shared fake
wall clock that may step back, its own strategy, and the trades it holds while it recovers.
Replicas talk in a full mesh through ``wire`` frames and one ``protocol.Protocol`` per
direction of each connection. In-flight frames may be delivered in any order, dropped or
duplicated; connections drop and resync (own positions, then the echo, then SyncDone, from
both sides, as DESIGN.md says); replicas restart keeping their store or losing it. The
model is the ground truth of the trades applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from position_distributor.book import Book
from position_distributor.clock import Clock
from position_distributor.protocol import Protocol, Ready, State
from position_distributor.types import Position
from position_distributor.wire import SyncDone, encode, encode_position, encode_positions

# A few seconds with the default profile; the "long" one runs 20 times as many examples.
pytestmark = pytest.mark.timeout(900)

NAMES = ("strategy_1", "strategy_2", "strategy_3")
PAIRS = tuple(itertools.combinations(NAMES, 2))
SYMBOLS = ("AAPL", "MSFT", "7203")

quantities = st.one_of(
    st.integers(-1000, 1000).filter(bool).map(float),
    st.sampled_from([0.1, -0.3, 2.5, 1e-6]),
)


class WallClock:
    """A fake ``time.time_ns`` that the test moves forward and back."""

    def __init__(self) -> None:
        self.now = 1_742_308_549_773_254_000

    def __call__(self) -> int:
        return self.now


def key(position: Position) -> tuple[int, float]:
    return (position.timestamp, position.net_position)


@dataclass
class Replica:
    """One node's state as its engine keeps it, applied synchronously."""

    name: str
    wall: WallClock
    book: Book = field(default_factory=Book)
    clock: Clock = field(init=False)
    # A replica that lost its store holds trades until every peer has synced with it.
    recovering: bool = False
    synced: set[str] = field(default_factory=set)
    held: list[tuple[str, float]] = field(default_factory=list)
    # Every new timestamp must exceed this: the greatest one issued that still exists.
    last_issued: int = 0

    def __post_init__(self) -> None:
        self.clock = Clock(now_ns=self.wall)

    def trade(self, symbol: str, quantity: float) -> Position:
        """Apply an own trade as the engine's trade consumer does; return the new position."""
        current = self.book.get(self.name, symbol)
        net = (0.0 if current is None else current.net_position) + quantity
        position = Position(self.name, symbol, net + 0.0, self.clock.next())
        assert position.timestamp > self.last_issued
        self.last_issued = position.timestamp
        assert self.book.apply(position)
        return position

    def sync_data(self, protocol: Protocol, peer: str) -> bytes:
        """What this replica sends on a new connection: Hello, own, echo, SyncDone."""
        own = self.book.of_strategy(self.name)
        echo = self.book.of_strategy(peer)
        return (
            protocol.hello()
            + encode_positions(own)
            + encode_positions(echo)
            + encode(SyncDone(len(own) + len(echo)))
        )

    def receive(self, peer: str, events: Sequence[object]) -> list[Position]:
        """Apply events from ``peer``; return own positions learnt back, to be broadcast."""
        learnt: list[Position] = []
        for event in events:
            if isinstance(event, Ready):
                assert event.hello.strategy == peer
            elif isinstance(event, SyncDone):
                self.synced.add(peer)
            else:
                assert isinstance(event, Position)
                if event.strategy == self.name:
                    self.clock.observe(event.timestamp)
                    if self.book.apply(event):
                        learnt.append(event)
                else:
                    self.book.apply(event)
        return learnt


@dataclass
class Link:
    """One direction of a connection: the receiver's protocol and the frames in flight."""

    protocol: Protocol
    inflight: list[bytes] = field(default_factory=list)
    # A frame lost on a live TCP connection means the connection is broken: until it is
    # redialled, its receiver may stay behind.
    lossy: bool = False


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class Replicas(RuleBasedStateMachine):
    """Three replicas, their links, and the model of every strategy's true positions."""

    def __init__(self) -> None:
        super().__init__()
        self.wall = WallClock()
        self.replicas = {name: Replica(name, self.wall) for name in NAMES}
        self.model: dict[str, dict[str, float]] = {name: {} for name in NAMES}
        self.links: dict[tuple[str, str], Link] = {}  # (sender, receiver) -> link

    # Helpers.

    def broadcast(self, sender: str, positions: list[Position]) -> None:
        frames = [encode_position(p) for p in positions]
        for (src, _dst), link in self.links.items():
            if src == sender:
                link.inflight.extend(frames)

    def apply_trade(self, name: str, symbol: str, quantity: float) -> None:
        replica = self.replicas[name]
        existing = [p.timestamp for r in self.replicas.values() for p in r.book.of_strategy(name)]
        position = replica.trade(symbol, quantity)
        assert all(position.timestamp > ts for ts in existing)
        self.model[name][symbol] = self.model[name].get(symbol, 0.0) + quantity
        self.broadcast(name, [position])

    def finish_recovery(self, name: str) -> None:
        """Once every peer has synced, a recovering replica applies the trades it held."""
        replica = self.replicas[name]
        if replica.recovering and replica.synced >= set(NAMES) - {name}:
            replica.recovering = False
            held, replica.held = replica.held, []
            for symbol, quantity in held:
                self.apply_trade(name, symbol, quantity)

    def disconnect_pair(self, a: str, b: str) -> None:
        self.links.pop((a, b), None)
        self.links.pop((b, a), None)

    def connect_pair(self, a: str, b: str, points_ab: list[int], points_ba: list[int]) -> None:
        """A new connection: both sides send their sync, received in arbitrary chunks."""
        self.disconnect_pair(a, b)
        ra, rb = self.replicas[a], self.replicas[b]
        self.links[a, b] = Link(Protocol(b))
        self.links[b, a] = Link(Protocol(a))
        # Both sides snapshot and send before either has read the other's sync.
        data_ab = ra.sync_data(self.links[b, a].protocol, b)
        data_ba = rb.sync_data(self.links[a, b].protocol, a)
        for sender, receiver, data, points in (
            (a, b, data_ab, points_ab),
            (b, a, data_ba, points_ba),
        ):
            protocol = self.links[sender, receiver].protocol
            events = [e for chunk in cut(data, points) for e in protocol.receive_data(chunk)]
            assert protocol.state is State.LIVE
            assert protocol.peer_name == sender
            learnt = self.replicas[receiver].receive(sender, events)
            self.broadcast(receiver, learnt)
        self.finish_recovery(a)
        self.finish_recovery(b)

    def deliver(self, sender: str, receiver: str, frames: list[bytes], points: list[int]) -> None:
        link = self.links[sender, receiver]
        data = b"".join(frames)
        events = [e for chunk in cut(data, points) for e in link.protocol.receive_data(chunk)]
        learnt = self.replicas[receiver].receive(sender, events)
        assert learnt == [], "a live peer never sends our own positions"

    def restart(self, name: str) -> None:
        for other in NAMES:
            if other != name:
                self.disconnect_pair(name, other)
        replica = self.replicas[name]
        replica.synced = set()
        replica.held = []  # typed but never applied, so never printed: lost, as documented

    def nonempty_links(self) -> list[tuple[str, str]]:
        return sorted(pair for pair, link in self.links.items() if link.inflight)

    # Rules.

    @initialize()
    def connect_everyone(self) -> None:
        """The replicas start as a full mesh, as nodes started with every peer configured."""
        for a, b in PAIRS:
            self.connect_pair(a, b, [], [])

    @rule(name=st.sampled_from(NAMES), symbol=st.sampled_from(SYMBOLS), quantity=quantities)
    def trade(self, name: str, symbol: str, quantity: float) -> None:
        """A trade typed at a replica: applied and broadcast, or held while it recovers."""
        replica = self.replicas[name]
        if replica.recovering:
            replica.held.append((symbol, quantity))
        else:
            self.apply_trade(name, symbol, quantity)

    @rule(step=st.integers(-(10**9), 10**9))
    def move_wall_clock(self, step: int) -> None:
        """The wall clock jumps forward or back (NTP step, VM migration)."""
        self.wall.now = max(1, self.wall.now + step)

    @precondition(lambda self: self.nonempty_links())
    @rule(data=st.data())
    def deliver_any_frame(self, data: st.DataObject) -> None:
        """One in-flight frame arrives, not necessarily the oldest (reordering)."""
        sender, receiver = data.draw(st.sampled_from(self.nonempty_links()))
        inflight = self.links[sender, receiver].inflight
        frame = inflight.pop(data.draw(st.integers(0, len(inflight) - 1)))
        self.deliver(sender, receiver, [frame], [])

    @precondition(lambda self: self.nonempty_links())
    @rule(data=st.data())
    def deliver_stream(self, data: st.DataObject) -> None:
        """The oldest in-flight frames arrive as a byte stream cut at arbitrary points."""
        sender, receiver = data.draw(st.sampled_from(self.nonempty_links()))
        inflight = self.links[sender, receiver].inflight
        count = data.draw(st.integers(1, len(inflight)))
        frames, inflight[:count] = inflight[:count], []
        self.deliver(sender, receiver, frames, data.draw(st.lists(st.integers(0), max_size=4)))

    @precondition(lambda self: self.nonempty_links())
    @rule(data=st.data())
    def drop_frame(self, data: st.DataObject) -> None:
        """An in-flight frame is lost."""
        link = self.links[data.draw(st.sampled_from(self.nonempty_links()))]
        del link.inflight[data.draw(st.integers(0, len(link.inflight) - 1))]
        link.lossy = True

    @precondition(lambda self: self.nonempty_links())
    @rule(data=st.data())
    def duplicate_frame(self, data: st.DataObject) -> None:
        """An in-flight frame is duplicated, the copy arriving at any later point."""
        inflight = self.links[data.draw(st.sampled_from(self.nonempty_links()))].inflight
        frame = inflight[data.draw(st.integers(0, len(inflight) - 1))]
        inflight.insert(data.draw(st.integers(0, len(inflight))), frame)

    @rule(pair=st.sampled_from(PAIRS))
    def disconnect(self, pair: tuple[str, str]) -> None:
        """A connection drops; whatever was in flight on it is lost."""
        self.disconnect_pair(*pair)

    @rule(
        pair=st.sampled_from(PAIRS),
        points_ab=st.lists(st.integers(0), max_size=4),
        points_ba=st.lists(st.integers(0), max_size=4),
    )
    def resync(self, pair: tuple[str, str], points_ab: list[int], points_ba: list[int]) -> None:
        """A connection drops (if up) and is redialled; both sides sync."""
        self.connect_pair(*pair, points_ab, points_ba)

    @rule(name=st.sampled_from(NAMES))
    def restart_keeping_store(self, name: str) -> None:
        """A replica is killed and restarted with its store: book and clock come back."""
        self.restart(name)
        replica = self.replicas[name]
        replica.book = Book(replica.book)
        replica.clock = Clock(replica.clock.last, now_ns=self.wall)

    @precondition(lambda self: not any(r.recovering for r in self.replicas.values()))
    @rule(name=st.sampled_from(NAMES))
    def restart_losing_store(self, name: str) -> None:
        """A replica restarts with its store deleted; its truth is what its peers still hold."""
        self.restart(name)
        best: dict[str, Position] = {}
        for other in NAMES:
            if other != name:
                for p in self.replicas[other].book.of_strategy(name):
                    if p.symbol not in best or key(p) > key(best[p.symbol]):
                        best[p.symbol] = p
        # Trades no peer ever heard of are gone with the store, as DESIGN.md accepts.
        self.model[name] = {symbol: p.net_position for symbol, p in best.items()}
        fresh = Replica(name, self.wall, recovering=True)
        fresh.last_issued = max((p.timestamp for p in best.values()), default=0)
        self.replicas[name] = fresh

    @rule(data=st.data())
    def full_resync(self, data: st.DataObject) -> None:
        """Every connection is redialled and every frame delivered: all books equal the model."""
        for a, b in PAIRS:
            self.connect_pair(a, b, [], data.draw(st.lists(st.integers(0), max_size=3)))
        self.deliver_everything()
        self.check_converged()

    @rule()
    def settle(self) -> None:
        """Every in-flight frame arrives; a full mesh that lost no frame then agrees."""
        self.deliver_everything()
        if len(self.links) == 2 * len(PAIRS) and not any(k.lossy for k in self.links.values()):
            self.check_converged()

    def deliver_everything(self) -> None:
        while pairs := self.nonempty_links():
            sender, receiver = pairs[0]
            frames = self.links[sender, receiver].inflight
            self.links[sender, receiver].inflight = []
            self.deliver(sender, receiver, frames, [])

    def check_converged(self) -> None:
        """Every book holds the model's positions, with the same timestamps everywhere."""
        truth = sorted(
            (name, symbol, repr(net))
            for name, symbols in self.model.items()
            for symbol, net in symbols.items()
        )
        views = []
        for replica in self.replicas.values():
            assert not replica.recovering
            held = sorted((p.strategy, p.symbol, repr(p.net_position)) for p in replica.book)
            assert held == truth, replica.name
            views.append([p.row() for p in replica.book.positions()])
        assert all(view == views[0] for view in views)

    # Invariants.

    @invariant()
    def own_positions_are_the_truth(self) -> None:
        """Each replica not recovering holds exactly the model's positions of its strategy."""
        for name, replica in self.replicas.items():
            if not replica.recovering:
                own = {p.symbol: repr(p.net_position) for p in replica.book.of_strategy(name)}
                assert own == {s: repr(net) for s, net in self.model[name].items()}

    @invariant()
    def no_one_knows_newer_than_the_owner(self) -> None:
        """No replica holds a position newer than its owner's, and the owner's clock is past it."""
        for owner in NAMES:
            origin = self.replicas[owner]
            if origin.recovering:
                continue
            for replica in self.replicas.values():
                for p in replica.book.of_strategy(owner):
                    mine = origin.book.get(owner, p.symbol)
                    assert mine is not None and key(mine) >= key(p)
                    assert origin.clock.last >= p.timestamp

    @invariant()
    def recovering_replicas_apply_no_trade(self) -> None:
        """A replica that lost its store has applied no trade of its own since."""
        for name, replica in self.replicas.items():
            if replica.recovering:
                for p in replica.book.of_strategy(name):
                    assert p.timestamp <= replica.last_issued


TestReplicas = Replicas.TestCase


def test_recovered_position_reaches_the_peer_that_missed_it() -> None:
    """A position a replica gets back from one peer is sent on to a peer that never had it."""
    s1, s2, s3 = NAMES
    machine = Replicas()
    machine.connect_everyone()
    machine.trade(s1, "AAPL", 100.0)
    machine.deliver(s1, s3, machine.links[s1, s3].inflight, [])
    machine.links[s1, s3].inflight = []
    machine.restart_losing_store(s1)  # the frame to s2 dies with the connection
    assert machine.replicas[s2].book.get(s1, "AAPL") is None
    machine.resync((s1, s2), [], [])
    assert machine.replicas[s1].recovering
    machine.trade(s1, "MSFT", 5.0)  # held until recovery ends
    machine.resync((s1, s3), [], [])
    assert not machine.replicas[s1].recovering
    machine.settle()  # the mesh is whole and lost no frame: it must agree
    for replica in machine.replicas.values():
        assert [p.row().rsplit(" | ", 1)[0] for p in replica.book.positions()] == [
            f"{s1} | AAPL | 100.000000",
            f"{s1} | MSFT | 5.000000",
        ]
    machine.teardown()


def test_trade_held_while_recovering_applies_on_top_of_the_recovered_position() -> None:
    """A trade typed before recovery ends adds to the position recovered, not to zero."""
    s1, s2, s3 = NAMES
    machine = Replicas()
    machine.connect_everyone()
    machine.trade(s1, "AAPL", 100.0)
    machine.settle()
    machine.move_wall_clock(-(10**9))  # and the wall clock steps back across the restart
    machine.restart_losing_store(s1)
    machine.trade(s1, "AAPL", 5.0)
    assert machine.replicas[s1].book.get(s1, "AAPL") is None
    machine.resync((s1, s2), [], [])
    machine.resync((s1, s3), [], [])
    own = machine.replicas[s1].book.get(s1, "AAPL")
    assert own is not None
    assert own.net_position == 105.0
    machine.settle()
    machine.teardown()
