"""Profile the node processes of a workload with py-spy, and say what takes their time.

    python -m benchmarks.profile W1 [--trades 100000] [--rate 250] [--gil]
    python -m benchmarks.profile W1N [--trades 100000]   # a symbol per trade: no coalescing
    python -m benchmarks.profile W3 [--positions 100000]
    python -m benchmarks.profile W2 [--samples 2000]

Needs ``py-spy`` (``.venv/bin/pip install py-spy``; not a dependency of ``make bench``).
py-spy attaches to each running node by PID (``py-spy record --pid``; a node that must be
profiled from its start runs under ``py-spy record -- python -m position_distributor``),
samples every thread's Python stack, and leaves out idle threads (blocked in a syscall or a
lock), so the samples of a thread are the time it was running. ``--gil`` samples only the
thread holding the GIL instead. Writes ``benchmarks/results/profile-<W>.txt`` (the summary
printed) and the raw collapsed stacks ``profile-<W>-<node>.raw`` (open them in speedscope.app
or feed them to flamegraph.pl).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import linecache
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from .harness import ROOT, BenchError, Cluster, NodeProc
from .workloads import (
    Settings,
    _finals,
    _lines,
    _loaded_node,
    _one_at_a_time,
    _pair,
    _random_trades,
    distinct_args,
    distinct_trades,
)

RESULTS = ROOT / "benchmarks" / "results"
_SKIP = ("Thread._bootstrap", "Thread.run ", "_run_module_as_main", "_run_code", "<module>")


def _py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread (task) of ``pid``, from its ``schedstat``."""
    cpu = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                cpu[int(task)] = int(f.read().split()[0]) / 1e9
    return cpu


class Recorder:
    """``py-spy record`` attached to one running process, stopped by its PID (SIGINT).

    ``mark()`` and ``stop()`` also read every thread's CPU time (``schedstat``), the ground
    truth that the samples are spread over.
    """

    def __init__(self, pid: int, out: Path, rate: int, gil: bool) -> None:
        self.out = out
        self.pid = pid
        self.cpu0: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        command = [
            _py_spy(), "record", "--pid", str(pid), "--format", "raw", "--threads",
            "--rate", str(rate), "-o", str(out),
        ]  # fmt: skip
        if gil:
            command.append("--gil")
        self.log = out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.t0 = time.perf_counter()
        self.elapsed = 0.0

    def mark(self) -> None:
        """The measured part starts now."""
        self.cpu0 = task_cpu(self.pid)
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        end = task_cpu(self.pid)
        self.cpu = {tid: t - self.cpu0.get(tid, 0.0) for tid, t in end.items()}
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.elapsed = time.perf_counter() - self.t0
        if not self.out.exists():
            raise BenchError(f"py-spy wrote no profile: {self.log.read_text(errors='replace')}")


def _frame(frame: str, lines: bool) -> str:
    """``func (file.py:123)`` -> ``func (file.py)`` unless lines are wanted."""
    if lines:
        return frame
    head, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{head} ({where.rsplit(':', 1)[0]})" if ":" in where else frame


# Leaf frames where a thread waits rather than runs: a lock (Condition.wait), or a line of
# Python blocked in a C call that releases the GIL (recv, accept, a queue get, a stdin read,
# sendall). py-spy's idle detection misses many of these on this VM (its threads blocked in
# recv or read still sample as running), so without --gil they are counted apart and left out
# of the shares: a thread's CPU (schedstat) is spread over its other samples.
_WAITS = ("Condition.wait (threading.py)", "socket.accept (socket.py)", "Event.wait (")
_BLOCKING = re.compile(
    r"\.recv(_into)?\(|\.accept\(|\bget\((timeout=[^)]*)?\)|\.wait\(|\.join\(|for \w+ in"
    r" \w*stdin|\.readline\(|\.read\(\)|sendall\(|select\(|\.sleep\("
)
_STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _source(frame: str) -> str:
    """The source line of a py-spy frame ``func (path:line)``, or ``""``."""
    _, sep, where = frame.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    if not sep or not line.isdigit():
        return ""
    for base in (ROOT, _STDLIB):
        text = linecache.getline(str(base / path), int(line))
        if text:
            return text.strip()
    return ""


def _waiting(frame: str) -> bool:
    return _frame(frame, False).startswith(_WAITS) or bool(_BLOCKING.search(_source(frame)))


def _threads(
    raw: Path,
) -> tuple[dict[str, collections.Counter[tuple[str, ...]]], dict[str, set[int]]]:
    """Samples per thread kind (stacks without the thread frame) and the thread ids."""
    by_tid: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(
        collections.Counter
    )
    names: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        tid_text, _, name = frames[0].partition(": ")
        by_tid[tid_text][tuple(frames[1:])] += int(count)
        if name:
            names[tid_text][name] += int(count)
    # A thread is named after its most sampled name (the main thread is unnamed while it
    # imports); per-connection names (recv-127.0.0.1:40123) are collapsed to their kind.
    threads: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(
        collections.Counter
    )
    tids: dict[str, set[int]] = collections.defaultdict(set)
    for tid_text, stacks in by_tid.items():
        name = names[tid_text].most_common(1)[0][0] if names[tid_text] else tid_text
        kind = name.split("-127.0.0.1")[0]
        threads[kind].update(stacks)
        with contextlib.suppress(ValueError):
            tids[kind].add(int(tid_text.removeprefix("thread (").removesuffix(")"), 0))
    return threads, tids


def summarize(
    raw: Path,
    title: str,
    rate: int,
    seconds: float,
    cpu: dict[int, float],
    *,
    gil: bool = False,
    top: int = 14,
) -> str:
    """Per thread: its CPU time (schedstat), and the functions taking it (from the samples).

    Without ``gil``, a thread's share of the process is its share of the CPU time, spread
    over its running samples. With ``gil``, only the GIL holder was sampled, so shares are
    of the process's GIL-held time: the serial part that bounds a Python process.
    """
    threads, tids = _threads(raw)
    thread_cpu = {kind: sum(cpu.get(t, 0.0) for t in ts) for kind, ts in tids.items()}
    process_cpu = sum(cpu.values())
    total_samples = sum(sum(c.values()) for c in threads.values())
    out = [
        f"{title}: {process_cpu:.2f} s of CPU over {seconds:.2f} s"
        f" ({process_cpu / seconds * 100:.0f}% of a core), from schedstat",
    ]
    if gil:
        out.append(
            f"  GIL held {total_samples / rate:.2f} s ({total_samples} samples):"
            f" {total_samples / rate / seconds * 100:.0f}% of the time"
        )
    order = sorted(threads.items(), key=lambda kv: -thread_cpu.get(kv[0], 0.0))
    for name, stacks in order:
        t_cpu = thread_cpu.get(name, 0.0)
        if gil:
            running = {f: c for f, c in stacks.items() if f}
            n = sum(running.values())
            share = n / total_samples if total_samples else 0.0
            out.append(
                f"\n  thread {name}: {t_cpu:.2f} s of CPU ({t_cpu / seconds * 100:.0f}% of a"
                f" core), of which {n / rate:.2f} s holding the GIL = {share * 100:.1f}% of the"
                " process's GIL time"
            )
        else:
            running = {f: c for f, c in stacks.items() if f and not _waiting(f[-1])}
            waits = sum(stacks.values()) - sum(running.values())
            n = sum(running.values())
            share = t_cpu / process_cpu if process_cpu else 0.0
            out.append(
                f"\n  thread {name}: {t_cpu:.2f} s of CPU = {share * 100:.1f}% of the process"
                f" ({t_cpu / seconds * 100:.0f}% of a core); {n} samples running"
                + (f", {waits} more waiting (lock or blocking call; left out)" if waits else "")
            )
        if not n or share < 0.01:
            continue
        self_fn: collections.Counter[str] = collections.Counter()
        self_line: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for frames, count in running.items():
            self_fn[_frame(frames[-1], False)] += count
            self_line[frames[-1]] += count
            seen = set()
            for frame in frames:
                fn = _frame(frame, False)
                if fn not in seen and not fn.startswith(_SKIP):
                    seen.add(fn)
                    incl[fn] += count

        def pct(count: int, n: int = n, share: float = share) -> str:
            of_thread = count / n * 100
            return f"{of_thread:5.1f}% of thread, {of_thread * share:5.1f}% of process"

        out.append("    inclusive (the function and what it calls):")
        for fn, count in incl.most_common(top):
            out.append(f"      {pct(count)}  {fn}")
        out.append("    self (the innermost Python function; C calls count in their caller):")
        for fn, count in self_fn.most_common(top):
            out.append(f"      {pct(count)}  {fn}")
        out.append("    hottest lines:")
        for fn, count in self_line.most_common(8):
            out.append(f"      {pct(count)}  {fn}  | {_source(fn)[:60]}")
    return "\n".join(out)


def profile_w1(args: argparse.Namespace) -> str:
    rng = random.Random(0)
    distinct = args.workload == "W1N"
    if distinct:  # a symbol per trade: nothing coalesces
        trades = distinct_trades(rng, args.trades)
        node_args = distinct_args(args.trades)
        over = "a symbol per trade"
    else:
        trades = _random_trades(rng, args.trades, [f"SYM{i:03d}" for i in range(100)])
        node_args = []
        over = "100 symbols"
    finals = _finals("strategy_1", trades)
    with Cluster("profile-w1") as c:
        a, b, expected = _pair(c, args=node_args)
        for name in expected:
            expected[name].update(finals)
        sender_done, receiver_done = a.watch(finals), b.watch(finals)
        recorders = _attach({"sender": a, "receiver": b}, args)
        t0 = time.perf_counter()
        a.write(_lines(trades))
        sender_done.wait(600, "the sender's rows")
        t1 = receiver_done.wait(600, "the receiver's rows")
        elapsed = t1 - t0
        for rec in recorders.values():
            rec.stop()
            rec.elapsed = elapsed  # the measured burst, not the 1 s spent attaching
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    head = (
        f"{args.workload} profile: {len(trades):,} trades over {over} typed into strategy_1"
        " (sender),"
        f" printed by strategy_2 (receiver) after {elapsed:.2f} s:"
        f" {len(trades) / elapsed:,.0f} trades/s under the profiler"
    )
    return _report(head, recorders, args)


def profile_w2(args: argparse.Namespace) -> str:
    with Cluster("profile-w2") as c:
        a, b, expected = _pair(c)
        recorders = _attach({"sender": a, "receiver": b}, args)
        own: list[float] = []
        t0 = time.perf_counter()
        lat = _one_at_a_time(a, b, "strategy_1", args.samples, 0.001, a, own)
        elapsed = time.perf_counter() - t0
        for rec in recorders.values():
            rec.stop()
            rec.elapsed = elapsed
        with b.cond:
            lat_nets = {k: v for k, (v, _) in b.view.items() if k[1].startswith("LAT")}
        for name in expected:
            expected[name].update(lat_nets)
        c.check_views(expected)
        c.stop_and_check_stores(expected)
    lat.sort()
    head = (
        f"W2 profile: {args.samples} trades one at a time in {elapsed:.2f} s;"
        f" p50 {lat[len(lat) // 2] * 1e3:.3f} ms under the profiler"
    )
    return _report(head, recorders, args)


def profile_w3(args: argparse.Namespace) -> str:
    with Cluster("profile-w3") as c:
        a, held, _ = _loaded_node(c, args.positions)
        holder = _attach({"holder": a}, args)
        b = c.node("strategy_2", [a], start=False)
        out = RESULTS / "profile-W3-joiner.raw"
        b.command = [
            _py_spy(), "record", "--format", "raw", "--threads", "--rate", str(args.rate),
            "-o", str(out), *(["--gil"] if args.gil else []), "--", *b.command,
        ]  # fmt: skip
        joined = b.watch(held)
        b.start()
        t = joined.wait(600, "the joiner to hold every position") - b.started_at
        holder["holder"].stop()
        holder["holder"].elapsed = t
        with open(f"/proc/{b.pid}/task/{b.pid}/children") as f:
            child = int(f.read().split()[0])  # the node, py-spy's child
        joiner_cpu = task_cpu(child)  # all of it: the node started with the join
        expected = {a.name: held, b.name: held}
        c.check_views(expected)
        c.stop_and_check_stores(expected)  # the joiner's py-spy writes its file as it exits
        joiner = Recorder.__new__(Recorder)
        joiner.out, joiner.elapsed, joiner.cpu = out, t, joiner_cpu
    head = (
        f"W3 profile: {args.positions:,} positions; the joiner (run under py-spy from its"
        f" start) held them all {t:.2f} s after it was spawned"
    )
    return _report(head, {**holder, "joiner": joiner}, args)


def _attach(nodes: dict[str, NodeProc], args: argparse.Namespace) -> dict[str, Recorder]:
    recorders = {
        role: Recorder(node.pid, RESULTS / f"profile-{args.workload}-{role}.raw", args.rate,
                       args.gil)
        for role, node in nodes.items()
    }  # fmt: skip
    time.sleep(1.0)  # py-spy attaches and starts sampling
    for rec in recorders.values():
        rec.mark()
    return recorders


def _report(head: str, recorders: dict[str, Recorder], args: argparse.Namespace) -> str:
    mode = "GIL holder only (--gil)" if args.gil else "running threads only (idle left out)"
    parts = [head, f"py-spy at {args.rate} Hz, {mode}; % are of each process's samples", ""]
    for role, rec in recorders.items():
        parts.append(
            summarize(rec.out, role.upper(), args.rate, rec.elapsed, rec.cpu, gil=args.gil)
        )
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", choices=["W1", "W1N", "W2", "W3"], type=str.upper)
    parser.add_argument("--trades", type=int, default=100_000, help="W1 trades")
    parser.add_argument("--samples", type=int, default=2_000, help="W2 samples")
    parser.add_argument("--positions", type=int, default=Settings().w3_positions)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--gil", action="store_true", help="sample only the GIL holder")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for old in RESULTS.glob(f"profile-{args.workload}-*.raw"):
        with contextlib.suppress(OSError):
            old.unlink()
    run = {"W1": profile_w1, "W1N": profile_w1, "W2": profile_w2, "W3": profile_w3}[args.workload]
    text = run(args)
    suffix = "-gil" if args.gil else ""
    (RESULTS / f"profile-{args.workload}{suffix}.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
