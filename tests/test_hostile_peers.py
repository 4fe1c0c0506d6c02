"""Hostile and broken peers on a raw socket against a running node that has a real peer.

Each test drives one bad connection by hand (plain ``socket`` and ``struct``, messages built
with ``position_pb2``, independent of the node's codec) against node A, which has a real
peer B connected, and checks the same four things: the bad connection is closed, A logs one
line naming the reason, A's view is unchanged (no forged row is printed) and B notices
nothing (a trade on each still converges over their untouched connection).
"""

from __future__ import annotations

import random
import re
import selectors
import struct
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from google.protobuf.message import DecodeError

from position_distributor import position_pb2 as pb

from .procs import (
    Cluster,
    HostilePeer,
    Mark,
    NodeProcess,
    frame,
    position_payload,
    proc_status_kib,
)

A, B = "strategy_1", "strategy_2"
STRANGER = "strategy_9"  # a strategy no node runs
START = {(A, "AAPL"): 100.0, (B, "MSFT"): 50.0}
AFTER = {(A, "AAPL"): 101.0, (B, "MSFT"): 51.0}
HELLO_TIMEOUT = 5.0  # the node's default, not settable from the command line
FAR_FUTURE = 4_000_000_000_000_000_000  # a timestamp in 2096: wins any LWW merge


class Pair(NamedTuple):
    a: NodeProcess
    b: NodeProcess
    marks: tuple[Mark, Mark]


@pytest.fixture
def pair(cluster: Cluster) -> Iterator[Pair]:
    """A (listening) and B (dialling A), each with one position, converged.

    A logs at DEBUG: refusals after the first from one address are throttled to DEBUG lines
    (see test_strangers.py), and each test here checks A's line about every connection.
    """
    a = cluster.add(A, recovery_timeout=0.5, args=["--log-level", "DEBUG"])
    b = cluster.add(B, peers=[a.port], recovery_timeout=0.5)
    a.type("AAPL 100")
    b.type("MSFT 50")
    cluster.wait_for_view(START, [a, b])
    for node in (a, b):  # the marks come after every line logged so far (e.g. "connected to")
        node.sync_stderr()
    yield Pair(a, b, (a.mark(), b.mark()))


def closing_line(pair: Pair, peer: HostilePeer, reason: str) -> str:
    """Wait for A's log line about ``peer``'s connection and check it names ``reason``."""
    line = pair.a.wait_for_log(f" at {peer.label} ", start=pair.marks[0].err)
    assert re.search(reason, line, re.IGNORECASE), f"reason {reason!r} not in: {line}"
    assert re.search(r"closed|refused", line), line
    return line


def assert_unharmed(pair: Pair, *hostile: HostilePeer) -> None:
    """A and B still trade over their untouched connection; nothing forged was printed.

    Also checks that A wrote exactly one log line about each hostile connection.
    """
    a, b, (mark_a, mark_b) = pair
    a.type("AAPL 1")
    b.type("MSFT 1")
    for node in (a, b):
        node.wait_for_view(AFTER)
    for node, mark in ((a, mark_a), (b, mark_b)):
        printed = sorted((s, sym, net) for s, sym, net, _ in node.rows(mark.out))
        assert printed == [(A, "AAPL", 101.0), (B, "MSFT", 51.0)], (
            f"{node.name} printed more than the two real trades: {printed}"
        )
    # Everything either node logged until now, read in full (stderr has its own reader).
    b_log = b.errors_since(mark_b.err)[: b.sync_stderr() - mark_b.err]
    a_log = a.errors_since(mark_a.err)[: a.sync_stderr() - mark_a.err]
    noise = [line for line in b_log if re.search(r"WARNING|ERROR|CRITI", line)]
    assert not noise, f"the real peer noticed something: {noise}"
    assert not [line for line in b_log if "connected to" in line], "the real peer reconnected"
    about_b = [line for line in a_log if re.search(f"(connected to|connection with) {B} ", line)]
    assert not about_b, f"A's connection with B changed: {about_b}"
    assert not [line for line in a_log if re.search(r"ERROR|CRITICAL|Traceback", line)], a_log
    for peer in hostile:
        about = [line for line in a_log if f" at {peer.label} " in line]
        assert len(about) == 1, f"expected one log line about {peer.label}, got {about}"
    assert a.alive and b.alive


def test_random_bytes_close_the_connection(pair: Pair) -> None:
    """Random bytes, before or after a valid Hello, close that connection with a protocol error."""
    peers = []
    for seed in range(6):
        peer = HostilePeer(pair.a.port)
        peers.append(peer)
        if seed % 2:
            peer.hello(STRANGER)
        peer.send(random.Random(seed).randbytes(4096), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "protocol error")
        peer.close()
    assert_unharmed(pair, *peers)


@pytest.mark.parametrize("length", [0x7FFF_FFFF, 0xFFFF_FFFF], ids=["2GiB", "4GiB-1"])
def test_huge_length_prefix_allocates_nothing(pair: Pair, length: int) -> None:
    """A length prefix of 2 GiB or 4 GiB-1 closes the connection before any allocation of it."""
    pid = pair.a.pid
    before = {field: proc_status_kib(pid, field) for field in ("VmRSS", "VmHWM", "VmPeak")}
    with HostilePeer(pair.a.port) as peer:
        peer.send(struct.pack(">I", length) + bytes(64 * 1024), may_fail=True)
        peer.wait_closed()
        line = closing_line(pair, peer, str(length))
    after = {field: proc_status_kib(pid, field) for field in ("VmRSS", "VmHWM", "VmPeak")}
    print(f"\n{length:#x}: memory of node A before {before} kB, after {after} kB; {line.strip()}")
    grown = {field: after[field] - before[field] for field in after}
    original = f"the C++ original allocated the announced {length} bytes"
    assert grown["VmRSS"] < 32 * 1024 and grown["VmHWM"] < 32 * 1024, f"{grown} kB; {original}"
    assert grown["VmPeak"] < 1024 * 1024, f"address space grew {grown['VmPeak']} kB; {original}"
    assert_unharmed(pair, peer)


@pytest.mark.parametrize("after_hello", [False, True], ids=["before-hello", "after-hello"])
def test_valid_length_with_junk_inside(pair: Pair, after_hello: bool) -> None:
    """A frame of a valid length whose payload is not a protobuf closes the connection."""
    junk = b"\xff" * 64
    with pytest.raises(DecodeError):
        pb.Envelope.FromString(junk)
    with HostilePeer(pair.a.port) as peer:
        if after_hello:
            peer.hello(STRANGER)
        peer.send(frame(junk), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "undecodable|malformed|invalid")
    assert_unharmed(pair, peer)


@pytest.mark.parametrize("enveloped", [False, True], ids=["bare", "enveloped"])
def test_position_without_hello(pair: Pair, enveloped: bool) -> None:
    """A SymbolPos sent without a Hello (bare, as the C++ original sends it) is refused."""
    symbol_pos = pb.SymbolPos(
        strategy_name=B, symbol="MSFT", net_position=666.0, timestamp=FAR_FUTURE
    )
    payload = (
        position_payload(B, "MSFT", 666.0, FAR_FUTURE)
        if enveloped
        else symbol_pos.SerializeToString()
    )
    with HostilePeer(pair.a.port) as peer:
        peer.send(frame(payload), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "no known message|not allowed|hello")
    assert_unharmed(pair, peer)


@pytest.mark.parametrize("after_hello", [False, True], ids=["before-hello", "after-hello"])
def test_thousands_of_zero_length_frames(pair: Pair, after_hello: bool) -> None:
    """Ten thousand zero-length frames close the connection once, with one log line."""
    with HostilePeer(pair.a.port) as peer:
        if after_hello:
            peer.hello(STRANGER)
        peer.send(frame(b"") * 10_000, may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "empty")
    assert_unharmed(pair, peer)


@pytest.mark.parametrize("phase", ["sync", "live"])
@pytest.mark.parametrize("kind", ["trade", "empty"])
def test_trade_or_empty_message_where_a_position_is_expected(
    pair: Pair, kind: str, phase: str
) -> None:
    """A bare Trade or an empty message, after the Hello, closes the connection."""
    payload = b""
    if kind == "trade":
        payload = pb.Trade(symbol="MSFT", position=666.0).SerializeToString()
    with HostilePeer(pair.a.port) as peer:
        peer.hello(STRANGER)
        if phase == "live":
            peer.sync_done()
        peer.send(frame(payload), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "no known message" if kind == "trade" else "empty")
    assert_unharmed(pair, peer)


def test_silent_or_trickling_peer_is_closed_after_the_hello_timeout(pair: Pair) -> None:
    """A peer that says nothing, and one that sends a byte a second but never completes its
    Hello, are both closed once the Hello timeout has passed, each with a log line."""
    silent, trickler = HostilePeer(pair.a.port), HostilePeer(pair.a.port)
    start = time.monotonic()
    trickler.send(struct.pack(">I", 64))  # a Hello of 64 bytes announced, never completed
    deadline = start + HELLO_TIMEOUT + 5
    closed_after: dict[str, float] = {}
    next_byte = start + 1.0
    with silent, trickler, selectors.DefaultSelector() as selector:
        selector.register(silent.sock, selectors.EVENT_READ, ("silent", silent))
        selector.register(trickler.sock, selectors.EVENT_READ, ("trickling", trickler))
        # The one-byte-a-second pace is the stimulus under test, not a wait for anything.
        while len(closed_after) < 2 and (now := time.monotonic()) < deadline:
            if now >= next_byte and trickler.how_closed is None:
                trickler.send(b"\n", may_fail=True)
                next_byte += 1.0
            for key, _ in selector.select(max(0.0, min(next_byte, deadline) - now)):
                what, peer = key.data
                peer.read_once(0)
                if peer.how_closed is not None:
                    closed_after[what] = time.monotonic() - start
                    selector.unregister(peer.sock)
        assert len(closed_after) == 2, f"still open {HELLO_TIMEOUT + 5:g}s later: {closed_after}"
        assert closed_after["silent"] >= HELLO_TIMEOUT - 0.5, f"closed too early: {closed_after}"
        print(f"\nclosed after (s): {closed_after}")
        for peer in (silent, trickler):
            closing_line(pair, peer, "no Hello within")
    assert_unharmed(pair, silent, trickler)


def test_reset_with_data_in_flight(pair: Pair) -> None:
    """A peer that resets its connection (RST) with data in flight leaves the node trading."""
    a = pair.a
    with HostilePeer(a.port) as peer:
        peer.hello(STRANGER)
        peer.sync_done()
        a.wait_for_log(f"connected to {STRANGER}", start=pair.marks[0].err)
        # The node sends to us (its rows as live updates), we never read; we send a burst.
        mark = a.mark()
        a.type(*["TSLA 1"] * 50)
        a.wait_until(lambda n: (A, "TSLA") in n.view and n.view[(A, "TSLA")][0] == 50.0)
        peer.send(peer.heartbeat_frame() * 50_000, may_fail=True)
        peer.reset()
        # The original aborted on the next trade after an RST: trade at once.
        a.type("TSLA 1")
        a.wait_until(lambda n: n.view[(A, "TSLA")][0] == 51.0, what="TSLA 51 after the RST")
        closing_line(pair, peer, "reset|broken pipe")
    a_log = a.errors_since(mark.err)[: a.sync_stderr() - mark.err]
    assert len([line for line in a_log if f" at {peer.label} " in line]) == 1, a_log
    pair.b.wait_for_view({**START, (A, "TSLA"): 51.0})
    a.type("TSLA -51")  # back to a flat TSLA position, then the usual checks
    for node in (a, pair.b):
        node.wait_for_view({**START, (A, "TSLA"): 0.0})
    expected = {**AFTER, (A, "TSLA"): 0.0}
    a.type("AAPL 1")
    pair.b.type("MSFT 1")
    for node in (a, pair.b):
        node.wait_for_view(expected)
    assert a.alive


@pytest.mark.parametrize("phase", ["sync", "live"])
def test_peer_sending_a_third_strategys_position(pair: Pair, phase: str) -> None:
    """A peer claiming one strategy that sends another strategy's position is refused."""
    impostor = "strategy_3"  # a strategy that is not connected to A
    with HostilePeer(pair.a.port) as peer:
        peer.hello(impostor)
        if phase == "live":
            peer.sync_done()
        # A position of the real peer B, stamped to win any merge.
        peer.send_frames(position_payload(B, "MSFT", 666.0, FAR_FUTURE), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, f"position of {B}")
    assert_unharmed(pair, peer)


def test_peer_sending_our_own_strategy_outside_its_sync(pair: Pair) -> None:
    """A live peer sending a position of the node's own strategy is refused; trades build on
    the real value and the node's clock is not pushed to the forged timestamp."""
    a = pair.a
    with HostilePeer(a.port) as peer:
        peer.hello(STRANGER)
        peer.sync_done()
        peer.send_frames(position_payload(A, "AAPL", 1_000_000.0, FAR_FUTURE), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "own strategy")
    assert_unharmed(pair, peer)
    assert a.view[(A, "AAPL")][1] < FAR_FUTURE, "the forged timestamp moved the node's clock"


def test_impostor_of_the_connected_peer_forges_nothing(pair: Pair) -> None:
    """A peer claiming the connected peer's own name (no secret to check it yet) may displace
    that connection, but its position of a third strategy is refused and the real peer
    reconnects by itself."""
    a, b = pair.a, pair.b
    with HostilePeer(a.port) as peer:
        peer.hello(B)
        peer.send_frames(position_payload("strategy_3", "MSFT", 666.0, FAR_FUTURE), may_fail=True)
        peer.wait_closed()
        closing_line(pair, peer, "position of strategy_3")
    a.type("AAPL 1")
    b.type("MSFT 1")
    for node in (a, b):
        node.wait_for_view(AFTER)
    for node, mark in ((a, pair.marks[0]), (b, pair.marks[1])):
        assert not [row for row in node.rows(mark.out) if row[0] == "strategy_3"], node.name
