"""Peer: real sockets on 127.0.0.1, handshake events, one live connection per strategy, limits."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from position_distributor.dispatcher import Event, EventDispatcher
from position_distributor.peer import Connection, Limits, Peer
from position_distributor.types import Position
from position_distributor.wire import Heartbeat, Hello, SyncDone, encode, encode_positions

from .inproc import FAST_LIMITS
from .procs import free_port
from .rawpeer import RawListener, RawPeer
from .waiting import Recorder, capture_logs, wait_until

FAST = FAST_LIMITS


class Events(Recorder):
    """Every event a Peer fires, as ``(event, conn, *args)`` tuples, in firing order."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        super().__init__()
        for event in Event:
            dispatcher.subscribe(event, lambda *args, event=event: self.append((event, *args)))

    def of(self, event: Event) -> list[tuple[Any, ...]]:
        return [item for item in self.snapshot() if item[0] is event]

    def wait_event(
        self,
        event: Event,
        where: Callable[[tuple[Any, ...]], bool] = lambda item: True,
        timeout: float = 5.0,
        count: int = 1,
    ) -> tuple[Any, ...]:
        """Wait until ``count`` events of this kind matching ``where`` fired; return the last."""

        def found(items: list[Any]) -> tuple[Any, ...] | None:
            matching = [i for i in items if i[0] is event and where(i)]
            return matching[count - 1] if len(matching) >= count else None

        return self.wait_for(found, timeout, f"{count} {event.value} event(s)")

    def messages(self) -> list[Any]:
        return [m for item in self.of(Event.MESSAGE) for m in item[2]]


class Made:
    """One started Peer and what its dispatcher fired."""

    def __init__(self, peer: Peer, events: Events) -> None:
        self.peer = peer
        self.events = events

    @property
    def port(self) -> int:
        return self.peer.port


MakePeer = Callable[..., Made]


@pytest.fixture
def make_peer(no_thread_leak: None) -> Iterator[MakePeer]:
    """Start Peers for a test; each is stopped at the end, before the thread-leak check."""
    made: list[Peer] = []

    def make(
        name: str, *, port: int = 0, dial: tuple[int, ...] = (), limits: Limits = FAST
    ) -> Made:
        dispatcher = EventDispatcher()
        events = Events(dispatcher)
        peer = Peer(
            name,
            dispatcher,
            port=port,
            peers=tuple(("127.0.0.1", p) for p in dial),
            limits=limits,
        )
        made.append(peer)
        peer.start()
        return Made(peer, events)

    yield make
    for peer in made:
        peer.stop()


def position(strategy: str, symbol: str, net: float, ts: int) -> Position:
    return Position(strategy, symbol, net, ts)


def live_names(peer: Peer) -> dict[str, bool]:
    """Each live connection's strategy and whether this side dialled it."""
    return {conn.name: conn.outbound for conn in peer.connections() if conn.name}


# Handshake and events.


def test_handshake_fires_connected_on_the_dialler_and_accepted_on_the_listener(
    make_peer: MakePeer,
) -> None:
    """After both Hellos, the dialler fires CONNECTED and the listener ACCEPTED, naming the peer."""
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port,))

    (_, conn_a) = a.events.wait_event(Event.CONNECTED)
    (_, conn_b) = b.events.wait_event(Event.ACCEPTED)

    assert conn_a.name == "beta" and conn_a.outbound
    assert conn_b.name == "alpha" and not conn_b.outbound
    assert a.events.of(Event.ACCEPTED) == [] and b.events.of(Event.CONNECTED) == []
    assert a.peer.connections() == (conn_a,)
    assert b.peer.connections() == (conn_b,)
    # Each side learnt where the other listens from its Hello.
    assert conn_a.listen_address == f"127.0.0.1:{b.port}"
    assert conn_b.listen_address == f"127.0.0.1:{a.port}"


def test_status_shows_the_configured_peer_as_connected(make_peer: MakePeer) -> None:
    """``status`` lists the configured address once, with the peer's name, state, last heard."""
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port,))
    a.events.wait_event(Event.CONNECTED)
    b.events.wait_event(Event.ACCEPTED)

    rows = a.peer.status()
    assert len(rows) == 1, rows
    [row] = rows
    assert (row.name, row.address, row.state) == (
        "beta",
        f"127.0.0.1:{b.port}",
        "connected (dialled)",
    )
    assert row.last_heard is not None and 0 <= row.last_heard < 5
    [row] = b.peer.status()
    assert (row.name, row.address, row.state) == (
        "alpha",
        f"127.0.0.1:{a.port}",
        "connected (they dialled)",
    )


def test_messages_fire_message_events_in_arrival_order(make_peer: MakePeer) -> None:
    """Positions and SyncDone sent on a connection fire MESSAGE on the other side, in order."""
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port,))
    (_, conn_a) = a.events.wait_event(Event.CONNECTED)
    b.events.wait_event(Event.ACCEPTED)

    sent = [position("alpha", f"S{i}", float(i), i + 1) for i in range(50)]
    conn_a.send(encode_positions(sent[:10]) + encode(SyncDone(10)))
    conn_a.send(encode_positions(sent[10:]))

    b.events.wait_for(lambda _: len(b.events.messages()) == 51, what="51 messages")
    assert b.events.messages() == [*sent[:10], SyncDone(10), *sent[10:]]
    assert all(item[1].name == "alpha" for item in b.events.of(Event.MESSAGE))


def test_broadcast_reaches_every_live_connection_in_order(make_peer: MakePeer) -> None:
    """``broadcast`` queues the frames on every live connection, in the order broadcast."""
    hub = make_peer("hub")
    a = make_peer("alpha", dial=(hub.port,))
    b = make_peer("beta", dial=(hub.port,))
    hub.events.wait_event(Event.ACCEPTED, count=2)
    a.events.wait_event(Event.CONNECTED)
    b.events.wait_event(Event.CONNECTED)

    sent = [position("hub", "AAPL", float(i), i) for i in (1, 2, 3)]
    for one in sent:
        assert hub.peer.broadcast(encode_positions([one])) == 2
    for node in (a, b):
        node.events.wait_for(lambda _, n=node: len(n.events.messages()) == 3, what="3 positions")
        assert node.events.messages() == sent


def test_closed_fires_on_both_sides_when_a_connection_drops(make_peer: MakePeer) -> None:
    """Closing one end fires CLOSED, with a reason, on both nodes, and the live set empties."""
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port,))
    (_, conn_a) = a.events.wait_event(Event.CONNECTED)
    (_, conn_b) = b.events.wait_event(Event.ACCEPTED)

    conn_b.close("test closes it")

    (_, closed_b, reason_b) = b.events.wait_event(Event.CLOSED)
    (_, closed_a, reason_a) = a.events.wait_event(Event.CLOSED)
    assert closed_b is conn_b and reason_b == "test closes it"
    assert closed_a is conn_a and reason_a == "connection closed by the peer"
    wait_until(lambda: conn_b not in b.peer.connections(), what="beta to drop the connection")


def test_the_dialler_redials_with_backoff_after_the_listener_restarts(
    make_peer: MakePeer,
) -> None:
    """When the listener stops and comes back on its port, the dialler reconnects by itself."""
    b1 = make_peer("beta")
    port = b1.port
    a = make_peer("alpha", dial=(port,))
    a.events.wait_event(Event.CONNECTED)

    with capture_logs() as logs:
        b1.peer.stop()
        a.events.wait_event(Event.CLOSED)
        wait_until(
            lambda: a.peer.status()[0].state.startswith(("unreachable", "connecting")),
            what="the dialler to notice the listener is gone",
        )
        b2 = make_peer("beta", port=port)
        (_, conn) = a.events.wait_event(Event.CONNECTED, count=2, timeout=5.0)
        b2.events.wait_event(Event.ACCEPTED)

    assert conn.name == "beta" and not conn.closed
    assert a.peer.status()[0].state == "connected (dialled)"
    # The outage is logged as a change of state, not once per attempt.
    assert len(logs.lines_with(f"cannot reach 127.0.0.1:{port}")) <= 1


def test_redial_backoff_grows_between_failed_attempts(make_peer: MakePeer) -> None:
    """Failed dials are retried forever, each wait at least half of a doubling backoff."""
    limits = replace(FAST, backoff_min=0.02, backoff_max=0.16)
    listener = RawListener()
    try:
        make_peer("alpha", dial=(listener.port,), limits=limits)
        accepted_at = []
        for _ in range(7):
            # Accept and hang up at once: a failed attempt (no Hello), so the backoff grows.
            raw = listener.accept("nobody")
            accepted_at.append(time.monotonic())
            raw.close()
    finally:
        listener.close()

    gaps = [later - earlier for earlier, later in itertools.pairwise(accepted_at)]
    backoffs = [min(0.02 * 2**i, 0.16) for i in range(6)]
    # Jitter waits backoff * uniform(0.5, 1): only the lower bound holds on a loaded machine.
    for gap, backoff in zip(gaps, backoffs, strict=True):
        assert gap >= backoff * 0.5 * 0.9, (gaps, backoffs)
    assert sum(gaps[-3:]) >= 3 * 0.16 * 0.5 * 0.9


def test_a_dialler_logs_repeated_failed_attempts_once(make_peer: MakePeer) -> None:
    """An address that accepts and hangs up at every attempt is logged once, not per attempt."""
    listener = RawListener()
    try:
        with capture_logs("INFO") as logs:
            make_peer("alpha", dial=(listener.port,))
            for _ in range(6):  # the fifth attempt has failed once alpha dials a sixth time
                raw = listener.accept("nobody")
                # Read alpha's Hello first, so that every hang-up is a clean EOF (closing
                # with unread bytes would send a reset: another kind of failure).
                raw.read_until(lambda messages: messages)
                raw.close()
    finally:
        listener.close()
    address = f"127.0.0.1:{listener.port}"
    assert len(logs.lines_with(address)) <= 1, logs.lines_with(address)


# One live connection per strategy.


def test_a_newer_connection_from_the_same_strategy_replaces_the_older(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A second inbound connection claiming a live strategy becomes live; the older is closed."""
    b = make_peer("beta")
    old = RawPeer.connect(b.port, "alpha")
    raw_peers.append(old)
    old.handshake()
    (_, old_conn) = b.events.wait_event(Event.ACCEPTED)

    new = RawPeer.connect(b.port, "alpha")
    raw_peers.append(new)
    new.handshake()
    (_, new_conn) = b.events.wait_event(Event.ACCEPTED, count=2)

    (_, closed, reason) = b.events.wait_event(Event.CLOSED)
    assert closed is old_conn
    assert reason.startswith("replaced by a newer connection from alpha")
    old.read_until_eof()
    assert b.peer.connections() == (new_conn,)
    # The newer connection carries messages on.
    new.send(position("alpha", "AAPL", 1.0, 1))
    b.events.wait_for(lambda _: b.events.messages() == [position("alpha", "AAPL", 1.0, 1)])
    assert b.events.of(Event.MESSAGE)[0][1] is new_conn


def test_when_both_nodes_dial_each_other_both_keep_the_one_dialled_by_the_smaller_name(
    make_peer: MakePeer,
) -> None:
    """Nodes that dial each other keep one connection, the one alpha dialled; beta stands by."""
    port_a, port_b = free_port(), free_port()
    with capture_logs() as logs:
        a = make_peer("alpha", port=port_a, dial=(port_b,))
        b = make_peer("beta", port=port_b, dial=(port_a,))

        wait_until(
            lambda: live_names(a.peer) == {"beta": True} and live_names(b.peer) == {"alpha": False},
            what="alpha's dialled connection to be the live one on both nodes",
        )
        [kept_a] = a.peer.connections()
        [kept_b] = b.peer.connections()
        # Beta's connector stands by: the losing dial of the race may still be logged, then
        # the logs go quiet for many backoff periods (a redialling connector would log a
        # refusal every 0.1s at most).
        deadline = time.monotonic() + 3.0
        while True:
            settled = len(logs.snapshot())
            if not logs.holds_within(lambda lines, n=settled: len(lines) > n, timeout=0.5):
                break
            assert time.monotonic() < deadline, logs.snapshot()

    assert a.peer.connections() == (kept_a,) and b.peer.connections() == (kept_b,)
    # (A connection beta dialled may have been live for a moment and replaced: that is the race.)
    assert not any(item[1] in (kept_a, kept_b) for item in a.events.of(Event.CLOSED))
    assert not any(item[1] in (kept_a, kept_b) for item in b.events.of(Event.CLOSED))
    [row] = b.peer.status()
    assert (row.name, row.state) == ("alpha", "connected (they dialled)")
    # Both sides can talk on the connection they kept.
    kept_b.send(encode_positions([position("beta", "X", 1.0, 1)]))
    a.events.wait_for(lambda _: position("beta", "X", 1.0, 1) in a.events.messages())


def test_the_standing_by_connector_dials_when_the_kept_connection_drops(
    make_peer: MakePeer,
) -> None:
    """If alpha restarts without dialling, beta's standing-by connector dials it instead."""
    port_a, port_b = free_port(), free_port()
    a = make_peer("alpha", port=port_a, dial=(port_b,))
    b = make_peer("beta", port=port_b, dial=(port_a,))
    wait_until(
        lambda: live_names(a.peer) == {"beta": True} and live_names(b.peer) == {"alpha": False},
        what="alpha's dialled connection to be the live one on both nodes",
    )
    [kept_b] = b.peer.connections()

    a.peer.stop()
    b.events.wait_event(Event.CLOSED, where=lambda item: item[1] is kept_b)
    connected_before = len(b.events.of(Event.CONNECTED))  # beta may have won for a moment
    a2 = make_peer("alpha", port=port_a)  # listens only: beta must be the one to dial

    (_, conn) = b.events.wait_event(Event.CONNECTED, count=connected_before + 1)
    a2.events.wait_event(Event.ACCEPTED)
    assert conn.name == "alpha" and conn.outbound
    assert live_names(b.peer) == {"alpha": True}
    assert live_names(a2.peer) == {"beta": False}


# Bounds: slow, silent and mute peers.


def test_a_slow_consumer_is_cut_off_while_another_peer_keeps_receiving(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A peer that never reads is closed once its queue passes max_send_queue; others carry on."""
    limits = replace(FAST, max_send_queue=256 << 10, idle_timeout=30.0)
    hub = make_peer("hub", limits=limits)
    slow = RawPeer.connect(hub.port, "slow", rcvbuf=4096)
    raw_peers.append(slow)
    slow.handshake()
    hub.events.wait_event(Event.ACCEPTED, where=lambda item: item[1].name == "slow")
    fast = make_peer("fast", dial=(hub.port,))
    fast.events.wait_event(Event.CONNECTED)
    hub.events.wait_event(Event.ACCEPTED, where=lambda item: item[1].name == "fast")

    chunk = [position("hub", "SYM", float(i), i + 1) for i in range(1000)]
    data = encode_positions(chunk)
    sent = 0
    deadline = time.monotonic() + 10
    with capture_logs() as logs:
        while not any(i[1].name == "slow" for i in hub.events.of(Event.CLOSED)):
            assert time.monotonic() < deadline, f"slow peer not cut off after {sent} bytes"
            hub.peer.broadcast(data)
            sent += 1
            # Let the fast peer take each chunk, so that only the slow one falls behind.
            expected = sent * 1000
            fast.events.wait_for(lambda _, n=expected: len(fast.events.messages()) >= n)
        (_, _, reason) = hub.events.wait_event(Event.CLOSED)

    assert reason.startswith("peer is not keeping up")
    assert f"above the limit of {256 << 10}" in reason
    assert logs.lines_with("connection with slow at")
    # The fast peer is still live and gets everything, including what is sent afterwards.
    marker = position("hub", "DONE", 1.0, 10**9)
    hub.peer.broadcast(encode_positions([marker]))
    fast.events.wait_for(lambda _: marker in fast.events.messages(), timeout=10)
    assert len(fast.events.messages()) == sent * 1000 + 1
    assert [c.name for c in hub.peer.connections()] == ["fast"]
    assert fast.events.of(Event.CLOSED) == []


def test_a_silent_peer_is_dropped_after_idle_timeout(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A handshaken peer that sends nothing, not even heartbeats, is closed after idle_timeout."""
    # Heartbeats well inside the idle timeout, so some go out before the drop.
    hub = make_peer("hub", limits=replace(FAST, heartbeat_interval=0.05, idle_timeout=0.3))
    raw = RawPeer.connect(hub.port, "mute")
    raw_peers.append(raw)
    raw.handshake()
    (_, conn) = hub.events.wait_event(Event.ACCEPTED)
    started = time.monotonic()

    (_, closed, reason) = hub.events.wait_event(Event.CLOSED, timeout=5)

    assert closed is conn
    assert reason == "peer silent for 0.3s"
    assert time.monotonic() - started >= 0.3 * 0.9
    raw.read_until_eof()
    # The hub sent heartbeats on the idle connection meanwhile.
    assert raw.heartbeats() >= 1


def test_heartbeats_keep_an_idle_connection_alive_past_the_idle_timeout(
    make_peer: MakePeer,
) -> None:
    """Two idle Peers exchanging heartbeats stay connected well past idle_timeout."""
    limits = replace(FAST, heartbeat_interval=0.05, idle_timeout=0.25)
    b = make_peer("beta", limits=limits)
    a = make_peer("alpha", dial=(b.port,), limits=limits)
    a.events.wait_event(Event.CONNECTED)
    (_, conn_b) = b.events.wait_event(Event.ACCEPTED)

    assert not b.events.holds_within(lambda items: b.events.of(Event.CLOSED), timeout=1.0)
    assert a.events.of(Event.CLOSED) == []
    assert b.peer.connections() == (conn_b,)
    assert time.monotonic() - conn_b.last_heard < 0.25


def test_a_peer_that_sends_no_hello_is_closed_after_hello_timeout(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A connection with no Hello within hello_timeout is closed and logged, having been told
    nothing (the side that accepts speaks only after the dialler's Hello); no event fires."""
    hub = make_peer("hub", limits=replace(FAST, hello_timeout=0.2))
    with capture_logs() as logs:
        raw = RawPeer.connect(hub.port, "quiet")
        raw_peers.append(raw)
        received = raw.read_until_eof()
        line = logs.wait_for_text("refused")

    assert received == []
    assert "no Hello within 0.2s" in line
    assert hub.events.snapshot() == []


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello("alpha", protocol_version=99), "protocol version 99"),
        (Hello("hub"), "claims this node's own strategy 'hub'"),
        (Hello("bad name/../x"), "invalid strategy name"),
    ],
)
def test_a_bad_hello_closes_the_connection_with_a_logged_reason(
    make_peer: MakePeer, raw_peers: list[RawPeer], hello: Hello, reason: str
) -> None:
    """A wrong version, our own name or an invalid name in a Hello closes it; no event fires."""
    hub = make_peer("hub")
    with capture_logs() as logs:
        raw = RawPeer.connect(hub.port, hello.strategy)
        raw_peers.append(raw)
        raw.send(hello)
        raw.read_until_eof()
        line = logs.wait_for_text("refused")

    assert line.startswith("WARNING ")
    assert reason in line
    assert hub.events.snapshot() == []


def test_an_oversized_frame_closes_the_connection_before_allocating_it(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A length prefix above max_frame_size closes that connection with a logged reason."""
    hub = make_peer("hub")
    raw = RawPeer.connect(hub.port, "alpha")
    raw_peers.append(raw)
    raw.handshake()
    hub.events.wait_event(Event.ACCEPTED)

    raw.send_bytes((2**31).to_bytes(4, "big") + b"x" * 100)

    (_, _, reason) = hub.events.wait_event(Event.CLOSED)
    assert reason.startswith("protocol error: frame of 2147483648 bytes announced")
    raw.read_until_eof()


def test_connections_beyond_max_connections_are_refused(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """With max_connections open, a further connection is closed at once and logged."""
    hub = make_peer("hub", limits=replace(FAST, max_connections=2))
    with capture_logs() as logs:
        for name in ("one", "two"):
            raw = RawPeer.connect(hub.port, name)
            raw_peers.append(raw)
            raw.handshake()
        hub.events.wait_event(Event.ACCEPTED, count=2)
        extra = RawPeer.connect(hub.port, "three")
        raw_peers.append(extra)
        received = extra.read_until_eof()
        line = logs.wait_for_text("refusing connection")

    assert received == []  # closed before even our Hello
    assert "2 connections open (the maximum)" in line
    assert sorted(c.name or "" for c in hub.peer.connections()) == ["one", "two"]


# Stopping.


def test_stop_flushes_queued_frames_and_the_other_side_sees_the_close(
    make_peer: MakePeer,
) -> None:
    """Frames queued before stop() are delivered; then the peer gets CLOSED."""
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port,))
    a.events.wait_event(Event.CONNECTED)
    b.events.wait_event(Event.ACCEPTED)

    last = [position("beta", f"S{i}", float(i), i + 1) for i in range(2000)]
    b.peer.broadcast(encode_positions(last))
    b.peer.stop()

    a.events.wait_event(Event.CLOSED)
    assert a.events.messages() == last


def test_stop_ends_every_thread_and_is_idempotent(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """stop() joins accept, connectors, readers and writers, whatever they are blocked on."""
    dead_port = free_port()
    b = make_peer("beta")
    a = make_peer("alpha", dial=(b.port, dead_port))
    a.events.wait_event(Event.CONNECTED)
    b.events.wait_event(Event.ACCEPTED)
    # A connection stuck before its Hello, and one stuck after it: readers blocked in recv.
    mute = RawPeer.connect(a.port, "mute")
    raw_peers.append(mute)
    talker = RawPeer.connect(a.port, "talker")
    raw_peers.append(talker)
    talker.handshake()
    a.events.wait_event(Event.ACCEPTED)
    threads_before = {t.name for t in threading.enumerate()}
    assert {"accept", f"redial-127.0.0.1:{dead_port}"} <= threads_before

    started = time.monotonic()
    a.peer.stop()
    a.peer.stop()
    assert time.monotonic() - started < 3.0
    assert a.peer.stopping
    assert a.peer.connections() == ()
    mute.read_until_eof()
    talker.read_until_eof()
    b.events.wait_event(Event.CLOSED)
    # Threads are checked by the no_thread_leak fixture once b is stopped too.


def test_stop_while_connections_are_still_starting_never_raises(no_thread_leak: None) -> None:
    """stop() right after inbound connections arrive closes them all and raises nothing."""
    before = set(threading.enumerate())
    errors: list[BaseException] = []
    for _ in range(50):
        hub = Peer("hub", EventDispatcher(), limits=FAST)
        hub.start()
        socks = [socket.create_connection(("127.0.0.1", hub.port)) for _ in range(10)]
        try:
            hub.stop()
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            for sock in socks:
                sock.close()
        if errors:
            break
    # A failed stop leaves readers behind; they end at the EOF of the sockets closed above.
    wait_until(
        lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()],
        what="every thread of the hubs to end",
    )
    assert errors == []


def test_a_peer_that_cannot_bind_raises_and_starts_no_thread(make_peer: MakePeer) -> None:
    """start() on a port already in use raises OSError and leaves no thread behind."""
    b = make_peer("beta")
    dispatcher = EventDispatcher()
    clash = Peer("alpha", dispatcher, port=b.port, limits=FAST)
    with pytest.raises(OSError):
        clash.start()
    clash.stop()


def test_connection_send_after_close_returns_false(
    make_peer: MakePeer, raw_peers: list[RawPeer]
) -> None:
    """A closed connection refuses new frames instead of queueing them."""
    hub = make_peer("hub")
    raw = RawPeer.connect(hub.port, "alpha")
    raw_peers.append(raw)
    raw.handshake()
    (_, conn) = hub.events.wait_event(Event.ACCEPTED)
    assert isinstance(conn, Connection)
    assert conn.send(encode(Heartbeat()))

    conn.close("test")

    assert conn.closed
    assert not conn.send(encode(Heartbeat()))
    hub.events.wait_event(Event.CLOSED)
