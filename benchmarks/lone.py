"""What one trade on its own costs (W2's path), in CPU microseconds per trade, in one process.

    python -m benchmarks.lone calls     # the node's functions called directly, one thread
    python -m benchmarks.lone nodes     # two in-process nodes over loopback TCP
    python -m benchmarks.lone profile   # Python function calls per lone trade, each side

``calls``: no sockets, no threads: each trade goes through the console's parse and
``Engine.submit_many`` (applied inline, as the console thread does), its frame through
``Protocol.receive_data`` and the dispatcher's MESSAGE (applied inline, as a reader thread
does), one at a time. CPU time of the one thread (``time.thread_time``), best of the repeats.

``nodes``: two ``Node`` objects wired as the CLI wires them (strategy_2 dials strategy_1), one
trade typed every millisecond into strategy_1 from a harness thread, each waited for on
strategy_2; then the CPU each thread of the process spent (``/proc/self/task/*/schedstat``),
per trade. The sender's work is the harness thread's; the receiver's, strategy_2's reader.
"""

from __future__ import annotations

import collections
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from position_distributor.console import trades_of
from position_distributor.dispatcher import Event, EventDispatcher
from position_distributor.engine import Engine, Output
from position_distributor.protocol import Protocol
from position_distributor.store import Store
from position_distributor.wire import Hello, SyncDone, encode

from .micro import _RecordingPeer

SYMBOLS = [f"LAT{i:02d}" for i in range(50)]


class _Link:
    """Stands in for the receiver's Connection to strategy_1."""

    name = "strategy_1"
    relays = False

    def close(self, reason: str) -> None:  # pragma: no cover - never on this path
        raise AssertionError(reason)


def _engine(name: str, path: Path, peer: Any, dispatcher: EventDispatcher, out: Output) -> Engine:
    store = Store(path, name)
    store.mark_recovered()
    try:
        return Engine(name, dispatcher, peer, store, out=out, digest_interval=0)
    except TypeError:  # an older tree: no digest_interval
        return Engine(name, dispatcher, peer, store, out=out)


class Pair:
    """A sender and a receiver engine, and the receiver's protocol, in one process."""

    def __init__(self, tmp: Path) -> None:
        self.sink = Output(open(os.devnull, "w"))  # noqa: SIM115
        self.peer = _RecordingPeer()
        self.sender = _engine("strategy_1", tmp / "a", self.peer, EventDispatcher(), self.sink)
        self.dispatcher = EventDispatcher()
        self.receiver = _engine(
            "strategy_2", tmp / "b", _RecordingPeer(), self.dispatcher, self.sink
        )
        self.protocol = Protocol("strategy_2", dialler=True)
        self.protocol.receive_data(encode(Hello("strategy_1")) + encode(SyncDone(0)))
        self.link = _Link()
        self.sender.start()
        self.receiver.start()
        self.lines = [f"{symbol} 1\n".encode() for symbol in SYMBOLS]
        self.count = 0

    def send(self, n: int) -> None:
        """``n`` lone trades through the sender (parse, submit: applied inline)."""
        lines, submit = self.lines, self.sender.submit_many
        for i in range(self.count, self.count + n):
            trades = trades_of(lines[i % 50])
            assert trades is not None
            submit(trades)
        self.count += n

    def receive(self) -> None:
        """The frames sent so far through the receiver, one read each (applied inline)."""
        receive_data, fire, link = self.protocol.receive_data, self.dispatcher.fire, self.link
        frames, self.peer.stream = self.peer.stream, []
        for frame in frames:
            fire(Event.MESSAGE, link, receive_data(frame))

    def close(self) -> None:
        self.sender.stop()
        self.receiver.stop()
        self.sender._store.close()
        self.receiver._store.close()


def _in_thread(fn: Any) -> Any:
    """Run ``fn`` in a thread other than the main one (the consumers apply inline only there)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def calls(count: int = 2000, repeats: int = 7) -> dict[str, float]:
    """CPU us per lone trade, each side, best of ``repeats`` runs of ``count`` trades."""
    tmp = Path(tempfile.mkdtemp(prefix="pd-lone-"))
    try:
        pair = Pair(tmp)

        def run() -> dict[str, float]:
            pair.send(200)  # warm
            pair.receive()
            best = {"sender": float("inf"), "receiver": float("inf")}
            for _ in range(repeats):
                t0 = time.thread_time()
                pair.send(count)
                t1 = time.thread_time()
                pair.receive()
                t2 = time.thread_time()
                best["sender"] = min(best["sender"], (t1 - t0) / count * 1e6)
                best["receiver"] = min(best["receiver"], (t2 - t1) / count * 1e6)
            return best

        best: dict[str, float] = _in_thread(run)
        pair.close()
        return best
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def profile(count: int = 1000, top: int = 60) -> None:
    """Python function calls per lone trade on each side, and where they are."""
    tmp = Path(tempfile.mkdtemp(prefix="pd-lone-"))
    try:
        pair = Pair(tmp)

        def run() -> None:
            pair.send(100)
            pair.receive()
            steps: list[tuple[str, Callable[[], None]]] = [
                ("sender", lambda: pair.send(count)),
                ("receiver", pair.receive),
            ]
            for side, step in steps:
                prof = cProfile.Profile()
                prof.enable()
                step()
                prof.disable()
                stats = pstats.Stats(prof)
                total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
                print(f"{side}: {total / count:.1f} calls per trade")
                rows = sorted(
                    stats.stats.items(),  # type: ignore[attr-defined]
                    key=lambda kv: -kv[1][2],
                )
                for (file, line, func), (_, ncalls, tt, _, _) in rows[:top]:
                    print(
                        f"  {ncalls / count:6.2f} calls {tt / count * 1e6:7.2f} us own"
                        f"  {Path(file).name}:{line} {func}"
                    )

        _in_thread(run)
        pair.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _thread_cpu() -> dict[int, tuple[str, int]]:
    """Each thread of this process: tid -> (name, CPU ns so far)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        out[int(tid)] = (names.get(int(tid), f"tid {tid}"), ns)
    return out


def nodes(count: int = 2000, gap: float = 0.001) -> dict[str, float]:
    """CPU us per lone trade of each thread of two in-process nodes (strategy_2 dials
    strategy_1), with one trade typed every ``gap`` seconds, each waited for on strategy_2."""
    from position_distributor.engine import Subscriber
    from position_distributor.node import Config, Node

    tmp = Path(tempfile.mkdtemp(prefix="pd-lone-"))
    null = open(os.devnull, "w")  # noqa: SIM115

    class Arrived(Subscriber):
        every_change = False

        def __init__(self) -> None:
            self.event = threading.Event()

        def deliver(self, changes: list[Any]) -> None:
            self.event.set()

        def close(self) -> None:
            pass

    try:
        a = Node(Config("strategy_1", data_dir=tmp / "a"), out=null, err=null).start()
        b = Node(
            Config("strategy_2", data_dir=tmp / "b", peers=(("127.0.0.1", a.port),)),
            out=null,
            err=null,
        ).start()
        arrived = Arrived()
        b._started().add_subscriber(arrived)
        lines = [f"{symbol} 1\n".encode() for symbol in SYMBOLS]

        spent: list[float] = []

        def run(n: int) -> None:
            t0 = time.thread_time()
            for i in range(n):
                arrived.event.clear()
                trades = trades_of(lines[i % 50])
                assert trades is not None
                a.submit_many(trades)
                if not arrived.event.wait(10):
                    raise RuntimeError(f"trade {i} did not arrive")
                time.sleep(gap)
            spent.append(time.thread_time() - t0)

        deadline = time.monotonic() + 30
        while not b.positions() and time.monotonic() < deadline:
            # Until the two are connected and recovered, a trade waits in the queue.
            a.trade("WARM", 1).result(30)
            time.sleep(0.05)
        harness = threading.Thread(target=run, args=(200,), name="harness")
        harness.start()
        harness.join()
        before = _thread_cpu()
        harness = threading.Thread(target=run, args=(count,), name="harness")
        harness.start()
        harness.join()
        after = _thread_cpu()
        per_thread: dict[str, float] = collections.defaultdict(float)
        for tid, (name, ns) in after.items():
            per_thread[name] += (ns - before.get(tid, (name, ns))[1]) / count / 1e3
        b.stop()
        a.stop()
        result = {"harness (sender: parse, apply, commit, send, row)": spent[-1] / count * 1e6}
        result.update(sorted(per_thread.items(), key=lambda kv: -kv[1]))
        return result
    finally:
        null.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from loguru import logger

    logger.remove()  # as the CLI does (its default level)
    logger.add(sys.stderr, level="INFO")
    what = sys.argv[1] if len(sys.argv) > 1 else "calls"
    if what == "calls":
        for side, us in calls().items():
            print(f"{side:<10} {us:7.2f} us per lone trade")
    elif what == "profile":
        profile()
    elif what == "nodes":
        for name, us in nodes().items():
            if us >= 0.05:
                print(f"{name:<60} {us:7.2f} us per trade")
    else:
        raise SystemExit(f"unknown {what!r}: calls, profile or nodes")


if __name__ == "__main__":
    main()
