"""The workloads W1-W6 and the bare-pipe baseline: one function per run, each returning metrics.

Every node run ends with ``check_views`` (every node's printed view is exactly the expected
net positions, and nodes agree on timestamps) and ``stop_and_check_stores`` (a graceful stop
with exit status 0, and each store holds exactly that view). A failure raises ``BenchError``.
Trades use positive quantities, so each symbol's net only grows and the final value of a
symbol is printed exactly once: that is how a ``Watch`` knows a symbol is done.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import (
    TRANSPORTS,
    BenchError,
    Cluster,
    NodeProc,
    RowsProc,
    Transport,
    cpu_seconds,
    rss_bytes,
    wait_all,
)

__all__ = ["WORKLOADS", "Settings", "Workload", "baseline_latency", "baseline_pipe"]

Key = tuple[str, str]
Metrics = dict[str, float]
MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Sizes of the workloads; ``quick()`` for a smoke run of the whole suite."""

    runs: int = 3
    pipe_messages: int = 100_000
    w1_trades: int = 20_000
    w1_symbols: int = 100
    w1n_trades: int = 20_000  # W1N: one symbol per trade, nothing coalesces
    w1n_large_trades: int = 200_000  # W1N200K
    w2_samples: int = 2_000  # enough for a p99.9 (the 2 slowest samples)
    w2_runs: int = 5  # W2's p99 is judged on the median of 5 runs
    w2_gap: float = 0.001  # idle time between two latency samples (s)
    w3_positions: int = 100_000
    w4_seconds: float = 10.0
    w4_peers: int = 4
    w5_sizes: tuple[int, ...] = (4, 8, 16)  # nodes in each mesh, one after the other
    w5_burst_trades: int = 20_000  # in all, split over the nodes
    w5_rate: float = 100.0  # total trades/s of the paced latency phase
    w5_seconds: float = 4.0
    w5_idle_seconds: float = 5.0
    transport: str = "mesh"  # how the nodes of W1, W2 and W5 reach each other (TRANSPORTS)
    w6_positions: int = 100_000

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            runs=1,
            pipe_messages=20_000,
            w1_trades=5_000,
            w1n_trades=5_000,
            w1n_large_trades=20_000,
            w2_samples=200,
            w2_runs=1,
            w3_positions=20_000,
            w4_seconds=3.0,
            w5_sizes=(4, 8),
            w5_burst_trades=2_000,
            w5_seconds=1.5,
            w5_idle_seconds=2.0,
            w6_positions=20_000,
        )


@contextlib.contextmanager
def patched_cluster(cls: type[Cluster]) -> Iterator[None]:
    """Run this module's workloads with ``cls`` (a Cluster subclass that adds flags or
    streams to every node) as their Cluster, and put the plain one back after."""
    global Cluster
    saved = Cluster
    Cluster = cls  # type: ignore[misc]
    try:
        yield
    finally:
        Cluster = saved  # type: ignore[misc]


def _percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no samples")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency_metrics(samples: list[float], prefix: str = "") -> Metrics:
    return {
        f"{prefix}p50_ms": _percentile(samples, 50) * 1e3,
        f"{prefix}p99_ms": _percentile(samples, 99) * 1e3,
        f"{prefix}p999_ms": _percentile(samples, 99.9) * 1e3,
        f"{prefix}max_ms": max(samples) * 1e3,
        f"{prefix}mean_ms": statistics.fmean(samples) * 1e3,
    }


def _random_trades(rng: random.Random, count: int, symbols: list[str]) -> list[tuple[str, int]]:
    return [(rng.choice(symbols), rng.randint(1, 1000)) for _ in range(count)]


def _finals(strategy: str, trades: list[tuple[str, int]]) -> dict[Key, float]:
    nets: dict[Key, float] = {}
    for symbol, qty in trades:
        key = (strategy, symbol)
        nets[key] = nets.get(key, 0.0) + qty
    return nets


def _lines(trades: list[tuple[str, int]]) -> bytes:
    return "".join(f"{symbol} {qty}\n" for symbol, qty in trades).encode()


def _warm_up(
    nodes: list[NodeProc], links: dict[str, list[str]], timeout: float = 60.0
) -> dict[str, dict[Key, float]]:
    """Each node trades ``WARM 1``; wait until every node sees it from every linked node.

    Proves every connection is up (and synced) before the measured part starts. Returns the
    expected view so far, per node.
    """
    expected = {
        node.name: {(name, "WARM"): 1.0 for name in [node.name, *links[node.name]]}
        for node in nodes
    }
    watches = [node.watch(expected[node.name]) for node in nodes]
    for node in nodes:
        node.write(b"WARM 1\n")
    wait_all(watches, timeout, "warm-up trades (connections up)")
    for node, watch in zip(nodes, watches, strict=True):
        node.unhook(watch.on_row)
    return expected


def _pair(
    c: Cluster, settings: Settings | None = None, args: list[str] | None = None
) -> tuple[NodeProc, NodeProc, dict[str, dict[Key, float]]]:
    """Two connected nodes (``args`` added to both command lines), through the settings'
    transport (in a mesh, strategy_2 dials strategy_1); both warmed up."""
    transport = TRANSPORTS[settings.transport if settings else "mesh"]
    a, b = transport.nodes(c, ["strategy_1", "strategy_2"], args or ())
    expected = _warm_up([a, b], transport.links([a.name, b.name]))
    return a, b, expected


# The bare pipe.


def baseline_pipe(settings: Settings, mode: str, run: int) -> Metrics:
    """Messages/s through the bare pipe, from ``go`` typed to the sender until the receiver
    has applied them all (and checked its dict)."""
    count = settings.pipe_messages
    with Cluster(f"pipe-{mode}") as c:
        receiver = c.proc("recv", [sys.executable, "-m", "benchmarks.barepipe", "recv", str(count)])
        port = receiver.wait_line("port ", 30).split()[1]
        sender = c.proc(
            "send", [sys.executable, "-m", "benchmarks.barepipe", "send", port, mode, str(count)]
        )
        sender.wait_line("ready", 30)
        cpu_s, cpu_r = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
        t0 = time.perf_counter()
        sender.write(b"go\n")
        done = receiver.wait_line("done ", 120)
        t1 = time.perf_counter()
        cpu_r = cpu_seconds(receiver.pid) - cpu_r
        sender.wait_line("sent", 30)
        cpu_s = cpu_seconds(sender.pid) - cpu_s
        if not done.endswith(" ok"):
            raise BenchError(f"bare pipe ({mode}) receiver's final dict is wrong: {done}")
        for proc in (sender, receiver):
            if proc.stop() != 0:
                raise BenchError(f"bare pipe {proc.name} failed\n{proc.log_tail()}")
    return {
        "msgs_per_s": count / (t1 - t0),
        "elapsed_s": t1 - t0,
        "sender_cpu_us": cpu_s / count * 1e6,
        "receiver_cpu_us": cpu_r / count * 1e6,
        # What the pipe would do with a core per process: its busier side's CPU per message.
        "cpu_bound_per_s": count / max(cpu_s, cpu_r),
    }


def baseline_latency(settings: Settings, run: int) -> Metrics:
    """W2's method on the bare pipe: a ``SYMBOL QTY`` line written to the sender's stdin, to
    the receiver's row; one at a time."""
    samples = settings.w2_samples
    with Cluster("pipe-lat") as c:
        receiver = c.proc(
            "recv",
            [sys.executable, "-m", "benchmarks.barepipe", "recv", "0", "--rows"],
            rows=True,
        )
        assert isinstance(receiver, RowsProc)
        port = receiver.wait_line("port ", 30).split()[1]
        sender = c.proc(
            "send", [sys.executable, "-m", "benchmarks.barepipe", "send", port, "lines", "0"]
        )
        sender.wait_line("ready", 30)
        warm = receiver.watch({("strategy_1", "WARM"): 1.0})
        sender.write(b"WARM 1\n")
        warm.wait(30, "the bare pipe's warm-up message")
        receiver.unhook(warm.on_row)
        latencies = _one_at_a_time(sender, receiver, "strategy_1", samples, settings.w2_gap)
        for proc in (sender, receiver):
            if proc.stop() != 0:
                raise BenchError(f"bare pipe {proc.name} failed\n{proc.log_tail()}")
    return _latency_metrics(latencies)


def _one_at_a_time(
    writer: Any,
    receiver: RowsProc,
    strategy: str,
    samples: int,
    gap: float,
    sender_rows: RowsProc | None = None,
    sender_latencies: list[float] | None = None,
) -> list[float]:
    """Write one trade line, wait for its row on ``receiver``; ``samples`` times."""
    latencies = []
    symbols = 50
    expected: dict[Key, float] = {}
    for i in range(samples):
        key = (strategy, f"LAT{i % symbols:02d}")
        expected[key] = expected.get(key, 0.0) + 1.0
        watch = receiver.watch({key: expected[key]})
        own = sender_rows.watch({key: expected[key]}) if sender_rows is not None else None
        t0 = time.perf_counter()
        writer.write(f"{key[1]} 1\n".encode())
        t1 = watch.wait(10, f"latency sample {i}")
        receiver.unhook(watch.on_row)
        latencies.append(t1 - t0)
        if own is not None and sender_rows is not None and sender_latencies is not None:
            sender_latencies.append(own.wait(10, f"latency sample {i} (sender)") - t0)
            sender_rows.unhook(own.on_row)
        time.sleep(gap)
    with receiver.cond:
        nets = {k: net for k, (net, _) in receiver.view.items() if k[1].startswith("LAT")}
    if nets != expected:
        raise BenchError(f"latency receiver's view is wrong: {nets} != {expected}")
    return latencies


# W1-W6.


def w1_throughput(settings: Settings, run: int) -> Metrics:
    """20,000 trades over 100 symbols typed into strategy_1's stdin at once; time until its
    peer strategy_2 has printed the final position of every symbol."""
    rng = random.Random(run)
    symbols = [f"SYM{i:03d}" for i in range(settings.w1_symbols)]
    trades = _random_trades(rng, settings.w1_trades, symbols)
    finals = _finals("strategy_1", trades)
    with Cluster("w1") as c:
        a, b, expected = _pair(c, settings)
        for name in expected:
            expected[name].update(finals)
        sender_done = a.watch(finals)
        receiver_done = b.watch(finals)
        data = _lines(trades)
        cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
        t0 = time.perf_counter()
        a.write(data)
        t_taken = time.perf_counter()
        t_sender = sender_done.wait(300, "strategy_1 to print its own trades")
        t_receiver = receiver_done.wait(300, "strategy_2 to print strategy_1's final positions")
        cpu_a, cpu_b = cpu_seconds(a.pid) - cpu_a, cpu_seconds(b.pid) - cpu_b
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    elapsed = t_receiver - t0
    n = len(trades)
    return {
        "trades_per_s": n / elapsed,
        "elapsed_s": elapsed,
        "stdin_taken_s": t_taken - t0,
        "sender_printed_s": t_sender - t0,
        "sender_cpu_us": cpu_a / n * 1e6,
        "receiver_cpu_us": cpu_b / n * 1e6,
        # What the node would do with a core per process: its busier side's CPU per trade.
        "cpu_bound_per_s": n / max(cpu_a, cpu_b),
    }


def distinct_trades(rng: random.Random, count: int) -> list[tuple[str, int]]:
    """``count`` trades, each in a symbol of its own: nothing a node can coalesce."""
    return [(f"U{i:06d}", rng.randint(1, 1000)) for i in range(count)]


def distinct_args(count: int) -> list[str]:
    """Room for ``count`` symbols (and the warm-up's) above the default cap of 200,000."""
    return ["--max-symbols", str(max(200_000, 2 * count))]


def _w1n(settings: Settings, count: int, run: int) -> Metrics:
    """``count`` trades, each in a symbol of its own, typed into strategy_1's stdin at once;
    time until strategy_2 has printed every one. Nothing can coalesce: the receiver must
    print exactly ``count`` rows (one per position it received), which is checked."""
    rng = random.Random(run)
    trades = distinct_trades(rng, count)
    finals = _finals("strategy_1", trades)
    args = distinct_args(count)
    with Cluster("w1n") as c:
        a, b, expected = _pair(c, settings, args)
        for name in expected:
            expected[name].update(finals)
        data = _lines(trades)
        rows_a, rows_b = a.rows, b.rows
        other_a, other_b = len(a.other), len(b.other)
        # Both nodes' rows are counted as they come and parsed after the burst (each is
        # printed once: a symbol per trade), so the harness takes little CPU meanwhile.
        a.defer()
        b.defer()
        cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
        t0 = time.perf_counter()
        a.write(data)
        t_taken = time.perf_counter()
        t_sender = a.wait_lines(count, 300, "strategy_1 to print its own trades")
        t_receiver = b.wait_lines(count, 300, "strategy_2 to print strategy_1's positions")
        cpu_a, cpu_b = cpu_seconds(a.pid) - cpu_a, cpu_seconds(b.pid) - cpu_b
        a.resume()
        b.resume()
        c.check_views(expected)
        with a.cond, b.cond:
            printed = (a.rows - rows_a, b.rows - rows_b)
            stray = a.other[other_a:] + b.other[other_b:]
        c.stop_and_check_stores(expected)
    if printed != (count, count) or stray:
        raise BenchError(
            f"W1N: the sender printed {printed[0]} rows and the receiver {printed[1]},"
            f" not {count} each (something coalesced or repeated), and {len(stray)} other"
            f" lines, e.g. {stray[:3]}"
        )
    elapsed = t_receiver - t0
    return {
        "trades_per_s": count / elapsed,
        "elapsed_s": elapsed,
        "stdin_taken_s": t_taken - t0,
        "sender_printed_s": t_sender - t0,
        "sender_cpu_us": cpu_a / count * 1e6,
        "receiver_cpu_us": cpu_b / count * 1e6,
        "cpu_bound_per_s": count / max(cpu_a, cpu_b),
        "receiver_rows": printed[1],
    }


def w1n_throughput(settings: Settings, run: int) -> Metrics:
    """W1 with a symbol per trade (20,000 trades): nothing coalesces."""
    return _w1n(settings, settings.w1n_trades, run)


def w1n_large_throughput(settings: Settings, run: int) -> Metrics:
    """W1 with a symbol per trade (200,000 trades): nothing coalesces."""
    return _w1n(settings, settings.w1n_large_trades, run)


def w2_latency(settings: Settings, run: int) -> Metrics:
    """One trade at a time, typed into strategy_1; time to strategy_2's row (and, as a
    breakdown, to strategy_1's own row)."""
    samples = settings.w2_samples
    with Cluster("w2") as c:
        a, b, expected = _pair(c, settings)
        own: list[float] = []
        cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
        latencies = _one_at_a_time(a, b, "strategy_1", samples, settings.w2_gap, a, own)
        cpu_a, cpu_b = cpu_seconds(a.pid) - cpu_a, cpu_seconds(b.pid) - cpu_b
        with b.cond:
            lat_nets = {k: net for k, (net, _) in b.view.items() if k[1].startswith("LAT")}
        for name in expected:
            expected[name].update(lat_nets)
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    return {
        **_latency_metrics(latencies),
        **_latency_metrics(own, "sender_row_"),
        # A trade alone pays every fixed cost (wake-ups, a transaction, syscalls) by itself.
        "sender_cpu_us": cpu_a / samples * 1e6,
        "receiver_cpu_us": cpu_b / samples * 1e6,
    }


def _prepare_store(data_dir: Path, name: str, count: int) -> dict[Key, float]:
    """A store holding ``count`` positions of ``name``, made with the project's Store as the
    node makes it: each position with the journal entry of the trade that made it (a store
    without them would have the node log an ERROR per position at its start, the journal
    check's)."""
    from position_distributor.store import Store
    from position_distributor.types import Position

    ts = time.time_ns()
    positions = [Position(name, f"S{i:06d}", float(i % 1000) + 0.25, ts + i) for i in range(count)]
    store = Store(data_dir, name)
    try:
        store.commit_trades(
            ts, [(p.symbol, p.net_position, p.net_position, p.timestamp) for p in positions]
        )
        store.mark_recovered()
    finally:
        store.close()
    return {(p.strategy, p.symbol): p.net_position for p in positions}


def _loaded_node(c: Cluster, count: int) -> tuple[NodeProc, dict[Key, float], float]:
    """strategy_1 started from a store of ``count`` positions; returns the time it took to
    print them all."""
    data_dir = c.root / "strategy_1"
    held = _prepare_store(data_dir, "strategy_1", count)
    a = c.node("strategy_1", data_dir=data_dir, start=False)
    loaded = a.watch(held)
    a.start()
    t_loaded = loaded.wait(300, f"strategy_1 to load {count} positions") - a.started_at
    a.unhook(loaded.on_row)
    return a, held, t_loaded


def _spawn_to_dial(c: Cluster) -> float:
    """Seconds from spawning a node (empty store, one peer) until it dials that peer."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        node = c.node("strategy_9", [listener.getsockname()[1]])
        sock, _ = listener.accept()
        t = time.perf_counter() - node.started_at
        sock.close()
    node.stop()
    return t


def w3_join(settings: Settings, run: int) -> Metrics:
    """strategy_1 holds 100,000 positions (from its store); strategy_2, new, joins it. Time
    from spawning strategy_2 until it has printed all of them."""
    count = settings.w3_positions
    with Cluster("w3") as c:
        startup = _spawn_to_dial(c)
        a, held, t_loaded = _loaded_node(c, count)
        b = c.node("strategy_2", [a], start=False)
        joined = b.watch(held)
        first: list[float] = []
        b.hooks.append(lambda t, key, net: first.append(t) if not first else None)
        holder_cpu = cpu_seconds(a.pid)
        b.start()
        t_join = joined.wait(300, f"strategy_2 to receive {count} positions") - b.started_at
        holder_cpu = cpu_seconds(a.pid) - holder_cpu
        joiner_cpu = cpu_seconds(b.pid)  # all of it: the process started with the join
        expected = {a.name: held, b.name: held}
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    return {
        "join_s": t_join,
        "spawn_to_dial_s": startup,
        "join_after_dial_s": t_join - startup,
        "first_row_s": first[0] - b.started_at,
        "holder_cpu_s": holder_cpu,
        "joiner_cpu_s": joiner_cpu,
        "load_from_store_s": t_loaded,
        "positions": count,
    }


def w4_idle(settings: Settings, run: int) -> Metrics:
    """A hub with 4 connected peers, all idle (default 1 s heartbeats); CPU % of a core."""
    with Cluster("w4") as c:
        hub = c.node("strategy_0")
        peers = [c.node(f"strategy_{i + 1}", [hub]) for i in range(settings.w4_peers)]
        links = {hub.name: [p.name for p in peers], **{p.name: [hub.name] for p in peers}}
        expected = _warm_up([hub, *peers], links)
        time.sleep(1.0)  # let the warm-up's last writes and commits settle
        nodes = [hub, *peers]
        before = [cpu_seconds(n.pid) for n in nodes]
        t0 = time.perf_counter()
        time.sleep(settings.w4_seconds)
        after = [cpu_seconds(n.pid) for n in nodes]
        elapsed = time.perf_counter() - t0
        pct = [(b - a) / elapsed * 100 for a, b in zip(before, after, strict=True)]
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    return {"hub_cpu_pct": pct[0], "peer_cpu_pct_max": max(pct[1:]), "seconds": elapsed}


def w5_scaling(settings: Settings, run: int) -> Metrics:
    """Full meshes of 4, 8 and 16 nodes (``w5_sizes``), one after the other; each measured
    idle, in a burst and paced (see ``_mesh``). Metrics are prefixed ``n<size>_``."""
    transport = TRANSPORTS[settings.transport]
    metrics: Metrics = {}
    for size in settings.w5_sizes:
        rng = random.Random(run * 1000 + size)
        for key, value in _mesh(settings, transport, size, rng).items():
            metrics[f"n{size}_{key}"] = value
    return metrics


def _mesh(settings: Settings, transport: Transport, n: int, rng: random.Random) -> Metrics:
    """``n`` nodes reaching each other through ``transport``, all warmed up. Idle: each
    node's CPU % of a core over ``w5_idle_seconds`` (heartbeats only). Burst: the
    ``w5_burst_trades`` split over the nodes, typed at once; trades/s until every node holds
    every final position, and the CPU of all nodes per trade. Paced: ``w5_rate`` trades/s in
    all, round robin; latency from each line written to each other node's row, and the CPU
    of all nodes per trade (what a trade costs the machine when nothing batches)."""
    symbols = [f"SYM{i:03d}" for i in range(100)]
    with Cluster(f"w5-{n}") as c:
        names = [f"strategy_{i + 1}" for i in range(n)]
        nodes = transport.nodes(c, names)
        expected = _warm_up(nodes, transport.links(names), timeout=300)

        # Idle.
        time.sleep(1.0)  # let the warm-up's last writes and commits settle
        before = [cpu_seconds(node.pid) for node in nodes]
        t_idle = time.perf_counter()
        time.sleep(settings.w5_idle_seconds)
        idle_elapsed = time.perf_counter() - t_idle
        idle = [
            (cpu_seconds(node.pid) - b) / idle_elapsed * 100
            for node, b in zip(nodes, before, strict=True)
        ]

        # Burst.
        per_node = {
            node.name: _random_trades(rng, settings.w5_burst_trades // n, symbols) for node in nodes
        }
        finals: dict[Key, float] = {}
        for name, trades in per_node.items():
            finals.update(_finals(name, trades))
        watches = [node.watch(finals) for node in nodes]
        payloads = {node.name: _lines(per_node[node.name]) for node in nodes}
        start = threading.Barrier(n + 1)
        errors: list[BaseException] = []

        def type_all(node: NodeProc) -> None:
            start.wait()
            try:
                node.write(payloads[node.name])
            except BaseException as exc:  # reported below
                errors.append(exc)

        writers = [threading.Thread(target=type_all, args=(node,)) for node in nodes]
        for writer in writers:
            writer.start()
        cpu0 = sum(cpu_seconds(node.pid) for node in nodes)
        t0 = time.perf_counter()
        start.wait()
        t_done = wait_all(watches, 600, "every node to hold every final position (burst)")
        burst_cpu = sum(cpu_seconds(node.pid) for node in nodes) - cpu0
        for writer in writers:
            writer.join(60)
        if errors:
            raise BenchError(f"typing into a node failed: {errors[0]!r}")
        total = sum(len(trades) for trades in per_node.values())
        for node, watch in zip(nodes, watches, strict=True):
            node.unhook(watch.on_row)
            expected[node.name].update(finals)

        # Paced latency.
        latencies, own, paced_finals, cost = _paced(nodes, settings.w5_rate, settings.w5_seconds)
        for name in expected:
            expected[name].update(paced_finals)
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    return {
        "idle_cpu_pct_max": max(idle),
        "idle_cpu_pct_mean": statistics.fmean(idle),
        "trades_per_s": total / (t_done - t0),
        "burst_cpu_us_per_trade": burst_cpu / total * 1e6,
        **_latency_metrics(latencies),
        **_latency_metrics(own, "own_row_"),
        **cost,
        "latency_samples": len(latencies),
    }


def _paced(
    nodes: list[NodeProc], rate: float, seconds: float
) -> tuple[list[float], list[float], dict[Key, float], Metrics]:
    """Trades of 1 at ``rate`` per second in total, round robin over the nodes; for each
    trade and each other node, the time from the line written to that node's row showing it."""
    count = int(rate * seconds)
    symbols = [f"PACE{i:02d}" for i in range(20)]
    written: dict[Key, list[float]] = {}  # key -> write time of its 1st, 2nd... trade
    samples: list[float] = []
    own: list[float] = []  # to the trading node's own row (stored, sent, printed)
    lock = threading.Lock()

    def tracker(node: NodeProc) -> Callable[[float, Key, float], None]:
        seen: dict[Key, int] = {}

        def on_row(t: float, key: Key, net: float) -> None:
            if not key[1].startswith("PACE"):
                return
            reached = int(net)
            last = seen.get(key, 0)
            if reached > last:
                times = written[key]
                with lock:
                    (own if key[0] == node.name else samples).extend(
                        t - times[m] for m in range(last, reached)
                    )
                seen[key] = reached

        return on_row

    plan: list[tuple[NodeProc, Key]] = []
    finals: dict[Key, float] = {}
    for k in range(count):
        node = nodes[k % len(nodes)]
        key = (node.name, symbols[(k // len(nodes)) % len(symbols)])
        finals[key] = finals.get(key, 0.0) + 1.0
        plan.append((node, key))
        written.setdefault(key, [])
    hooks = [tracker(node) for node in nodes]
    for node, hook in zip(nodes, hooks, strict=True):
        node.hooks.append(hook)
    watches = [node.watch(finals) for node in nodes]
    interval = 1.0 / rate
    cpu0 = sum(cpu_seconds(node.pid) for node in nodes)
    t_start = time.perf_counter()
    for k, (node, key) in enumerate(plan):
        delay = t_start + k * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        written[key].append(time.perf_counter())
        node.write(f"{key[1]} 1\n".encode())
    t_done = wait_all(watches, 120, "every node to hold every paced trade")
    cpu = sum(cpu_seconds(node.pid) for node in nodes) - cpu0
    cost = {
        "paced_cpu_cores": cpu / (t_done - t_start),
        "paced_cpu_us_per_trade": cpu / count * 1e6,
    }
    for node, hook, watch in zip(nodes, hooks, watches, strict=True):
        node.unhook(hook)
        node.unhook(watch.on_row)
    expected_samples = count * (len(nodes) - 1)
    if len(samples) != expected_samples or len(own) != count:
        raise BenchError(
            f"paced phase: {len(samples)} + {len(own)} latency samples,"
            f" not {expected_samples} + {count}"
        )
    return samples, own, finals, cost


def w6_footprint(settings: Settings, run: int) -> Metrics:
    """RSS of a node holding 100,000 positions (loaded from its store; and a node that
    received them by joining) above the RSS of an empty node, per 100,000 positions."""
    count = settings.w6_positions
    with Cluster("w6") as c:
        empty = c.node("strategy_0")
        _warm_up([empty], {empty.name: []})
        a, held, _ = _loaded_node(c, count)
        b = c.node("strategy_2", [a], start=False)
        joined = b.watch(held)
        b.start()
        joined.wait(300, f"strategy_2 to receive {count} positions")
        time.sleep(0.5)
        rss = {node.name: rss_bytes(node.pid) for node in (empty, a, b)}
        expected = {
            empty.name: {(empty.name, "WARM"): 1.0},
            a.name: held,
            b.name: held,
        }
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    scale = 100_000 / count
    loaded = (rss["strategy_1"] - rss["strategy_0"]) * scale / MiB
    joined_mib = (rss["strategy_2"] - rss["strategy_0"]) * scale / MiB
    return {
        "mib_per_100k": max(loaded, joined_mib),
        "loaded_mib_per_100k": loaded,
        "joined_mib_per_100k": joined_mib,
        "empty_rss_mib": rss["strategy_0"] / MiB,
        "loaded_rss_mib": rss["strategy_1"] / MiB,
        "joined_rss_mib": rss["strategy_2"] / MiB,
    }


@dataclass(frozen=True)
class Workload:
    """A workload: its function, the metric the target is about, and the target."""

    key: str
    title: str
    run: Callable[[Settings, int], Metrics]
    metric: str
    unit: str
    target: str

    def runs(self, settings: Settings) -> int:
        """How many runs (rounds) this workload takes part in."""
        return settings.w2_runs if self.key == "W2" else settings.runs


WORKLOADS = {
    w.key: w
    for w in [
        Workload(
            "W1",
            "throughput, 2 nodes",
            w1_throughput,
            "trades_per_s",
            "trades/s",
            ">= 0.5 x batched bare pipe",
        ),
        Workload(
            "W1N",
            "no coalescing, 20k trades",
            w1n_throughput,
            "trades_per_s",
            "trades/s",
            ">= 0.35 x batched bare pipe",
        ),
        Workload(
            "W1N200K",
            "no coalescing, 200k trades",
            w1n_large_throughput,
            "trades_per_s",
            "trades/s",
            ">= 0.35 x batched bare pipe",
        ),
        Workload("W2", "latency, 1 trade at a time", w2_latency, "p99_ms", "ms", "p99 < 1 ms"),
        Workload("W3", "join, 100k positions", w3_join, "join_s", "s", "< 2 s"),
        Workload("W4", "idle, hub with 4 peers", w4_idle, "hub_cpu_pct", "% of a core", "< 0.5 %"),
        Workload(
            "W5",
            "scaling, 4/8/16-node mesh",
            w5_scaling,
            "n16_idle_cpu_pct_max",
            "% of a core",
            "idle < 1 % of a core per node at 16 nodes",
        ),
        Workload("W6", "footprint", w6_footprint, "mib_per_100k", "MiB/100k positions", "< 50 MiB"),
    ]
}
