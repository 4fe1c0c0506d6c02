"""Strangers before the handshake: what a connection that never proves itself can cost a node.

Real node processes, real sockets: many connections that send most of a large frame before
any Hello, connections that stay silent, a Hello asking for an endless heartbeat, and floods
of refusals, which the node summarises instead of logging one line each.
"""

from __future__ import annotations

import re
import struct
import time

from position_distributor import position_pb2 as pb

from .procs import Cluster, HostilePeer, frame, proc_status_kib
from .waiting import wait_until

STRANGERS = 200
MIB = 1 << 20


def test_strangers_sending_most_of_a_large_frame_before_hello_hold_little_memory(
    cluster: Cluster,
) -> None:
    """200 connections that each announce a frame of nearly 1 MiB before any Hello and send
    most of it take the node's peak memory up by a few MiB at most (the first frame of a
    peer that has not proven itself may be 4 KiB), not by the 200 MiB they send."""
    node = cluster.add("strategy_1", recovery_timeout=0, args=["--hello-timeout", "30"])
    node.type("AAPL 1")
    node.wait_for_view({("strategy_1", "AAPL"): 1.0})
    before = proc_status_kib(node.pid, "VmRSS")
    size = MIB - 64
    body = b"\x00" * (size - 4096)
    peers = []
    try:
        for _ in range(STRANGERS):
            peer = HostilePeer(node.port)
            peers.append(peer)
            peer.send(struct.pack(">I", size) + body, may_fail=True)
        deadline = time.monotonic() + 10
        still_open = 0
        for peer in peers:
            try:
                peer.wait_closed(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                still_open += 1
        peak = proc_status_kib(node.pid, "VmHWM")
    finally:
        for peer in peers:
            peer.close()
    per_stranger = (peak - before) / STRANGERS
    print(f"peak RSS {before} -> {peak} KiB: {per_stranger:.1f} KiB per stranger")
    assert peak - before < 32 * 1024, f"RSS {before} -> {peak} KiB for {STRANGERS} strangers"
    assert not still_open, f"{still_open} strangers still connected after 10 s"
    node.type("AAPL 1")
    node.wait_for_view({("strategy_1", "AAPL"): 2.0})


def test_silent_strangers_hold_a_bounded_amount_each(cluster: Cluster) -> None:
    """200 connections that each send 4,000 bytes of a frame that fits the first-frame limit,
    then stay silent, are all held at once for a bounded memory each (measured), and are all
    closed at the Hello timeout."""
    node = cluster.add("strategy_1", recovery_timeout=0, args=["--hello-timeout", "6"])
    node.type("AAPL 1")
    node.wait_for_view({("strategy_1", "AAPL"): 1.0})
    before = proc_status_kib(node.pid, "VmRSS")
    threads = proc_status_kib(node.pid, "Threads")
    peers = []
    try:
        for _ in range(STRANGERS):
            peer = HostilePeer(node.port)
            peers.append(peer)
            peer.send(struct.pack(">I", 4090) + b"\x00" * 4000)
        # Each stranger held has a reader thread of its own (and a writer).
        wait_until(
            lambda: proc_status_kib(node.pid, "Threads") >= threads + STRANGERS,
            10,
            "a reader thread for every stranger",
        )
        held = proc_status_kib(node.pid, "VmRSS")
        for peer in peers:
            assert peer.wait_closed(15) in ("eof", "reset")
    finally:
        for peer in peers:
            peer.close()
    per_stranger = (held - before) / STRANGERS
    print(f"RSS {before} -> {held} KiB: {per_stranger:.1f} KiB per silent stranger")
    assert per_stranger < 160, f"{per_stranger:.1f} KiB per stranger"


def test_a_hello_asking_for_an_endless_heartbeat_is_refused(cluster: Cluster) -> None:
    """A Hello whose heartbeat interval is above a minute (here 2^32-1 ms, which would keep a
    silent connection open for ~250 days) is refused, and the node says why."""
    node = cluster.add("strategy_1", recovery_timeout=0)
    hello = pb.Envelope(
        hello=pb.Hello(
            strategy="strategy_9", protocol_version=1, listen_port=0, heartbeat_ms=2**32 - 1
        )
    )
    with HostilePeer(node.port) as peer:
        peer.send(frame(hello.SerializeToString()))
        peer.wait_closed(10)
    line = node.wait_for_log("heartbeat")
    assert "refused" in line and "60" in line, line


def test_a_flood_of_refused_strangers_is_summarised(cluster: Cluster) -> None:
    """100 connections from one address that send garbage are logged as one refusal line,
    then a summary that counts the rest, not as 100 lines."""
    node = cluster.add("strategy_1", recovery_timeout=0)
    start = node.mark().err
    for _ in range(100):
        with HostilePeer(node.port) as peer:
            peer.send(struct.pack(">I", 2) + b"\xff\xff", may_fail=True)
            peer.wait_closed(10)
    # A stop says what was left unsaid.
    node.stop()
    lines = [line for line in node.errors_since(start) if "refused" in line]
    assert 1 <= len(lines) <= 3, lines
    # "connection from ... refused: ... (N more like it ...)" stands for N + 1 refusals;
    # the summary at the stop, "N more connections from ... refused", for N.
    told = sum(int(m.group(1)) if (m := re.search(r"(\d+) more", line)) else 0 for line in lines)
    told += sum("connection from" in line for line in lines)
    assert told == 100, lines
