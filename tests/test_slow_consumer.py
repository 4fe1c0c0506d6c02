"""A peer that stops reading: cut off with a bounded send queue, others unaffected, resynced.

The sender's bytes for a peer that does not read pile up, first in the kernel (the sender's
socket buffer, a few MiB on loopback, which no option of ours bounds), then in the sender's
send queue for that peer, which ``Limits.max_send_queue`` bounds: past it the peer is cut off
("not keeping up") and resyncs from scratch when it reads again. Frames are made large (a
64-character strategy, 32-character symbols) so that a few tens of thousands of trades get
through the kernel's buffers to the queue.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from position_distributor.node import Config, Node
from position_distributor.peer import Limits
from position_distributor.types import Position

from .faultproxy import FaultProxy
from .rawpeer import RawPeer
from .waiting import LogCapture, capture_logs, wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leak")

SENDER = "sender_" + "x" * 57  # 64 characters: a large frame per update
SYMBOLS = [f"SYMBOL_{i:025d}" for i in range(4_000)]  # 32 characters; 2 bursts to cycle
# (distinct symbols in a burst: the sender sends only the last position of a symbol per
# batch, so repeated symbols would barely add bytes)
MAX_SEND_QUEUE = 1 << 20
BURST = 2_000  # about 250 KB of frames: a healthy peer's queue never nears the limit
MAX_TRADES = 400_000  # bounds the loop: the kernel's buffers hold far less than this
CUT_OFF = re.compile(r"(\d+) bytes would be queued for it, above the limit of (\d+)")


def nets(positions: list[Position], strategy: str) -> dict[str, float]:
    return {p.symbol: p.net_position for p in positions if p.strategy == strategy}


def trade_until_cut_off(
    sender: Node, logs: LogCapture, who: str, healthy: Node | None = None
) -> tuple[int, float]:
    """Trade in bursts until the sender cuts ``who`` off; after each burst, wait until the
    ``healthy`` peer has it. Return the number of trades and the longest such wait."""
    done = 0
    slowest = 0.0
    while not logs.lines_with(f"connection with {who} at") and done < MAX_TRADES:
        futures = [sender.trade(SYMBOLS[(done + i) % len(SYMBOLS)], 1) for i in range(BURST)]
        futures[-1].result(60)
        done += BURST
        if healthy is not None:
            start = time.monotonic()
            truth = nets(sender.positions(), SENDER)
            wait_until(
                lambda truth=truth: nets(healthy.positions(), SENDER) == truth,
                20.0,
                "the healthy peer",
            )
            slowest = max(slowest, time.monotonic() - start)
    return done, slowest


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    with capture_logs("INFO") as capture:
        yield capture


def check_cut_off(logs: LogCapture, who: str) -> None:
    """The sender closed ``who``'s connection because its queue went past the limit, and
    never held more than the limit for it."""
    line = logs.wait_for_text(f"connection with {who} at", 30.0)
    assert "not keeping up" in line, line
    match = CUT_OFF.search(line)
    assert match is not None, line
    would_be, limit = int(match.group(1)), int(match.group(2))
    assert limit == MAX_SEND_QUEUE
    assert would_be > limit  # the batch refused is the one that would have gone past it


def test_a_peer_behind_a_paused_link_is_cut_off_others_unaffected_then_resynced(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A node whose link stops carrying the sender's bytes is cut off ("not keeping up")
    once its queue passes the limit, while a healthy peer gets every update at once and
    keeps its connection; when the link flows again it resyncs to the sender's view."""
    fast_limits = Limits(heartbeat_interval=0.2, idle_timeout=30.0, backoff_max=0.2)
    sender = Node(
        Config(
            SENDER,
            data_dir=tmp_path / "sender",
            recovery_timeout=0,
            limits=Limits(
                max_send_queue=MAX_SEND_QUEUE,
                heartbeat_interval=0.2,
                idle_timeout=30.0,  # a blocked send is cut off by the queue limit, not a timeout
            ),
        )
    ).start()
    to_fast = FaultProxy(sender.port, name="fast->sender")
    to_slow = FaultProxy(sender.port, name="slow->sender", rcvbuf=4096)
    fast = slow = None
    try:
        fast = Node(
            Config(
                "fast",
                peers=(("127.0.0.1", to_fast.port),),
                data_dir=tmp_path / "fast",
                recovery_timeout=0,
                limits=fast_limits,
            )
        ).start()
        slow = Node(
            Config(
                "slow",
                peers=(("127.0.0.1", to_slow.port),),
                data_dir=tmp_path / "slow",
                recovery_timeout=0,
                limits=fast_limits,
            )
        ).start()
        logs.wait_for_text("connected to fast", 10.0)
        logs.wait_for_text("connected to slow", 10.0)
        to_slow.pause(direction="backward")  # the sender's bytes to slow stop moving

        # Every burst reaches the healthy peer while the slow one is stuck.
        trades, slowest = trade_until_cut_off(sender, logs, "slow", healthy=fast)
        check_cut_off(logs, "slow")
        truth = nets(sender.positions(), SENDER)
        assert sum(truth.values()) == trades
        wait_until(lambda: nets(fast.positions(), SENDER) == truth, 20.0, "fast to catch up")
        assert not logs.lines_with("connection with fast at")  # never cut off
        assert nets(slow.positions(), SENDER) != truth  # it really was stuck

        to_slow.heal()  # it reads again: the cut connection ends, it redials and resyncs
        wait_until(lambda: nets(slow.positions(), SENDER) == truth, 30.0, "slow to resync")
        assert not logs.lines_with("connection with fast at")
        print(f"{trades} trades; the healthy peer had each burst within {slowest:.2f}s")
    finally:
        for node in (slow, fast):
            if node is not None:
                node.stop()
        sender.stop()
        to_fast.close()
        to_slow.close()


def test_a_raw_peer_that_never_reads_is_cut_off_and_resyncs_on_return(
    tmp_path: Path, logs: LogCapture
) -> None:
    """A peer that completes the Hello and then never reads is cut off once its queue passes
    the limit; reconnecting, it gets the sender's whole current view in its sync."""
    sender = Node(
        Config(
            SENDER,
            data_dir=tmp_path / "sender",
            recovery_timeout=0,
            limits=Limits(max_send_queue=MAX_SEND_QUEUE, heartbeat_interval=0.2, idle_timeout=30),
        )
    ).start()
    mute = RawPeer.connect(sender.port, "mute", rcvbuf=4096)
    try:
        mute.handshake()
        logs.wait_for_text("connected to mute", 10.0)

        trades, _ = trade_until_cut_off(sender, logs, "mute")
        check_cut_off(logs, "mute")
        truth = nets(sender.positions(), SENDER)
        assert sum(truth.values()) == trades

        # Reading again, it finds what was sent before the cut, then the end of the connection.
        mute.read_until_eof(30.0)
        assert nets(mute.positions(), SENDER) != truth  # it missed updates: a resync is due
        mute.close()

        again = RawPeer.connect(sender.port, "mute")
        try:
            again.handshake()
            again.read_sync(10.0)
            assert nets(again.positions(), SENDER) == truth
        finally:
            again.close()
    finally:
        mute.close()
        sender.stop()
