"""A small process harness: start nodes as a user does, type into stdin, watch stdout rows.

Starting and stopping a process is ``testkit.ChildProcess``'s, shared with the tests: every
process is started with pipes, its stdout and stderr read by a thread each (stderr kept in
a log file), and stopped by its PID (EOF first, then SIGKILL after a deadline). Every wait has
a deadline. Times are ``time.perf_counter()`` taken in the reader thread as soon as a chunk
of output arrives.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from position_distributor.store import read_book
from testkit import ROOT, ChildProcess, cpu_seconds, free_port, node_command

__all__ = [
    "ROOT",
    "TRANSPORTS",
    "BenchError",
    "Cluster",
    "NodeProc",
    "Proc",
    "RowsProc",
    "Transport",
    "Watch",
    "cpu_seconds",
    "free_port",
    "rss_bytes",
    "wait_all",
]

SEP = b" | "

Key = tuple[str, str]  # (strategy, symbol)
RowHook = Callable[[float, Key, float], None]


class BenchError(Exception):
    """A benchmark run failed: a wrong final view, a deadline passed, a process misbehaved."""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


class Watch:
    """Done when a node has printed each target ``(strategy, symbol) -> net`` at least once.

    Register it before typing the trades it waits for. Only correct for nets reached once
    (the workloads trade positive quantities, so each symbol's net only grows).
    """

    def __init__(self, targets: dict[Key, float], proc: Proc | None = None) -> None:
        self.proc = proc  # whose rows these are: waiting ends early if it dies
        self.targets = targets
        self.remaining = set(targets)
        self.done = threading.Event()
        self.done_at: float | None = None
        if not self.remaining:
            self.done_at = time.perf_counter()
            self.done.set()

    def on_row(self, t: float, key: Key, net: float) -> None:
        if key in self.remaining and self.targets[key] == net:
            self.remaining.discard(key)
            if not self.remaining:
                self.done_at = t
                self.done.set()

    def wait(self, timeout: float, what: str) -> float:
        """Wait until done; return the time it was done; raise ``BenchError`` at the deadline
        or as soon as the process printing the rows has died (e.g. its port was taken)."""
        deadline = time.monotonic() + timeout
        while not self.done.wait(max(0.0, min(0.5, deadline - time.monotonic()))):
            proc = self.proc
            if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
                raise BenchError(
                    f"{proc.name} exited with status {proc.proc.returncode} while waiting for"
                    f" {what}\n{proc.log_tail()}"
                )
            if time.monotonic() >= deadline:
                missing = sorted(self.remaining)[:5]
                raise BenchError(
                    f"timed out after {timeout:g}s waiting for {what}: {len(self.remaining)}"
                    f" of {len(self.targets)} positions missing, e.g. {missing}"
                )
        assert self.done_at is not None
        return self.done_at


def wait_all(watches: Iterable[Watch], timeout: float, what: str) -> float:
    """Wait for every watch (one shared deadline); return when the last was done. On a
    failure, say which watched process has exited, if any: a row one node waits for may be
    missing because the node that trades it died (its log tail is then given)."""
    watches = list(watches)
    deadline = time.monotonic() + timeout
    done = 0.0
    try:
        for watch in watches:
            done = max(done, watch.wait(max(0.0, deadline - time.monotonic()), what))
    except BenchError as exc:
        dead = [
            watch.proc
            for watch in watches
            if watch.proc is not None
            and watch.proc.proc is not None
            and watch.proc.proc.poll() is not None
        ]
        if not dead:
            raise
        raise BenchError(
            f"{exc}\n"
            + "".join(
                f"{proc.name} had exited with status {proc.proc.returncode}:\n{proc.log_tail()}"
                for proc in dead
                if proc.proc is not None
            )
        ) from exc
    return done


class Proc(ChildProcess):
    """A child process: stdin to write to, stdout lines handed to ``on_lines`` as they come."""

    failure = BenchError

    def __init__(self, name: str, command: Sequence[str], *, log: Path) -> None:
        super().__init__(name, cwd=ROOT, log=log)
        self.command = list(command)
        self.started_at = 0.0
        # Condition guarding what the reader thread updates (in subclasses too).
        self.cond = threading.Condition()
        self.other: list[str] = []  # stdout lines that are not rows (bounded)
        # Mutex serializing the handling of stdout chunks, read or deferred (see defer()).
        self._feed_lock = threading.Lock()
        self._pending = b""  # the start of a line not yet ended, under the feed lock
        self._deferred: list[tuple[float, bytes]] | None = None  # under cond's lock
        self._lines_read = 0  # newlines read while deferring, under cond's lock
        self._lines_at: list[tuple[int, float]] = []  # (newlines so far, time) per chunk

    def start(self) -> Proc:
        self.started_at = time.perf_counter()
        super().start()
        return self

    def on_stdout(self, t: float, chunk: bytes) -> None:
        with self._feed_lock:
            if self._deferred is not None:
                with self.cond:
                    self._deferred.append((t, chunk))
                    self._lines_read += chunk.count(b"\n")
                    self._lines_at.append((self._lines_read, t))
                    self.cond.notify_all()
                return
            self._feed(t, chunk)

    def _feed(self, t: float, chunk: bytes) -> None:
        """Hand the complete lines of ``chunk`` to ``on_lines``; caller holds the feed lock."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        self.on_lines(t, lines)

    def defer(self) -> None:
        """Keep stdout chunks aside, only counting their lines, until ``resume()``: a
        measured burst then costs the harness a ``count`` per chunk instead of parsing each
        row, CPU that would be taken from the processes measured on a shared machine."""
        with self._feed_lock, self.cond:
            self._deferred = []
            self._lines_read = 0
            self._lines_at = []

    def wait_lines(self, count: int, timeout: float, what: str) -> float:
        """While deferring: wait until ``count`` lines were read; return when the chunk that
        completed them arrived."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._lines_read < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive:
                    raise BenchError(
                        f"{self.name}: {self._lines_read} of {count} lines within {timeout:g}s"
                        f" waiting for {what}\n{self.log_tail()}"
                    )
                self.cond.wait(min(remaining, 0.2))
            return next(t for lines, t in self._lines_at if lines >= count)

    def resume(self) -> None:
        """Stop deferring: parse the chunks kept aside (with the times they arrived), then
        go on parsing as they come."""
        with self._feed_lock:
            with self.cond:
                deferred, self._deferred = self._deferred or [], None
            for t, chunk in deferred:
                self._feed(t, chunk)

    def on_lines(self, t: float, lines: list[bytes]) -> None:
        with self.cond:
            if len(self.other) < 10_000:
                self.other.extend(line.decode(errors="replace") for line in lines)
            self.cond.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> str:
        """Wait for a non-row stdout line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.other:
                    if line.startswith(prefix):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive:
                    raise BenchError(
                        f"{self.name}: no line {prefix!r} within {timeout:g}s\n{self.log_tail()}"
                    )
                self.cond.wait(min(remaining, 0.2))

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None:
            return ""
        with contextlib.suppress(OSError):
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-lines:])
        return ""

    def stop(self, timeout: float = 20.0) -> int:
        """Close stdin (EOF: a graceful stop) and wait; SIGKILL by PID after ``timeout``."""
        return super().stop(timeout)


class RowsProc(Proc):
    """A process printing node-style rows ``strategy | symbol | net | ts``: the view they show."""

    def __init__(self, name: str, command: Sequence[str], *, log: Path) -> None:
        super().__init__(name, command, log=log)
        self.view: dict[Key, tuple[float, bytes]] = {}
        self.rows = 0
        self.hooks: list[RowHook] = []

    def on_lines(self, t: float, lines: list[bytes]) -> None:
        # Kept lean: at 100,000 rows a second this is the harness's own hot loop.
        view = self.view
        rows = 0
        other = []
        with self.cond:
            hooks = self.hooks
            for line in lines:
                parts = line.split(SEP)
                if len(parts) != 4:
                    other.append(line)
                    continue
                try:
                    net = float(parts[2])
                except ValueError:
                    other.append(line)
                    continue
                key = (parts[0].decode(), parts[1].decode())
                view[key] = (net, parts[3])  # the timestamp only compared, left as bytes
                rows += 1
                for hook in hooks:
                    hook(t, key, net)
            self.rows += rows
            if other and len(self.other) < 10_000:
                self.other.extend(line.decode(errors="replace") for line in other)
            self.cond.notify_all()

    def watch(self, targets: dict[Key, float]) -> Watch:
        """A watch on this node's rows, registered now (before the trades it waits for)."""
        watch = Watch(targets, self)
        with self.cond:
            now = time.perf_counter()
            for key, (net, _) in self.view.items():
                watch.on_row(now, key, net)
            self.hooks.append(watch.on_row)
        return watch

    def unhook(self, hook: RowHook) -> None:
        with self.cond, contextlib.suppress(ValueError):
            self.hooks.remove(hook)

    def trade_lines(self, trades: Iterable[tuple[str, float]]) -> bytes:
        return "".join(f"{symbol} {qty:g}\n" for symbol, qty in trades).encode()

    def nets(self) -> dict[Key, float]:
        with self.cond:
            return {key: net for key, (net, _) in self.view.items()}


class NodeProc(RowsProc):
    """A node (``python -m position_distributor``) and the view its stdout rows show."""

    def __init__(
        self,
        name: str,
        port: int | None,
        peers: Iterable[int] = (),
        *,
        data_dir: Path,
        log: Path,
        recovery_timeout: float = 0.0,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.peer_ports = list(peers)
        self.data_dir = data_dir
        # The limits users get (a benchmark measures them), but no recovery window: every
        # node of a run starts new, and waiting for peers would only delay the start.
        command = node_command(
            name,
            port,  # None: a node without a listener
            self.peer_ports,
            data_dir=data_dir,
            args=["--recovery-timeout", f"{recovery_timeout:g}", "--log-level", "WARNING", *args],
        )
        super().__init__(name, command, log=log)

    def stored_nets(self) -> dict[Key, float]:
        """The positions in the node's SQLite store (read after the node has stopped)."""
        path = self.data_dir / f"{self.name}.sqlite3"
        return {key: position.net_position for key, position in read_book(path).items()}


def _port_of(peer: NodeProc | int) -> int:
    """The port to dial ``peer`` at; a node without a listener cannot be dialled."""
    if not isinstance(peer, NodeProc):
        return peer
    if peer.port is None:
        raise BenchError(f"{peer.name} does not listen: it cannot be a peer to dial")
    return peer.port


def _diff(got: dict[Key, float], expected: dict[Key, float], limit: int = 5) -> str:
    wrong = [k for k in expected if got.get(k) != expected[k]]
    extra = [k for k in got if k not in expected]
    parts = []
    if wrong:
        parts.append(
            f"{len(wrong)} wrong or missing, e.g. "
            + ", ".join(f"{k}: {got.get(k)} != {expected[k]}" for k in wrong[:limit])
        )
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[:limit]}")
    return "; ".join(parts)


class Transport:
    """How the nodes of a run reach each other: a full TCP mesh, the node's own transport.

    Every multi-node workload starts its nodes through ``nodes()``, so another transport
    (for instance NATS: a server started in the cluster, and ``--nats URL`` on each node's
    command line instead of a port and peers) is a subclass registered in ``TRANSPORTS``
    and chosen with ``python -m benchmarks --transport NAME``; the workloads, their
    measurements and their correctness checks stay the same.
    """

    name = "mesh"

    def nodes(self, c: Cluster, names: Sequence[str], args: Sequence[str] = ()) -> list[NodeProc]:
        """Start one node per name, all reaching each other: here each dials every node
        started before it (a full mesh: n(n-1)/2 connections)."""
        nodes: list[NodeProc] = []
        for name in names:
            nodes.append(c.node(name, list(nodes), args=args))
        return nodes

    def links(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Whose positions each node is expected to print: every other node's."""
        return {name: [other for other in names if other != name] for name in names}


TRANSPORTS: dict[str, Transport] = {"mesh": Transport()}


class Cluster:
    """The processes of one run, in a temp dir removed at the end; every one stopped by PID."""

    def __init__(self, label: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"pd-bench-{label}-"))
        self.procs: list[Proc] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node(
        self,
        name: str,
        peers: Iterable[NodeProc | int] = (),
        *,
        port: int | None = None,
        listen: bool = True,
        data_dir: Path | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> NodeProc:
        """A node started as a user does; ``listen=False`` gives it no PORT argument (a
        transport that needs none)."""
        node = NodeProc(
            name,
            (port or free_port()) if listen else None,
            [_port_of(p) for p in peers],
            data_dir=data_dir or self.root / name,
            log=self.root / f"{name}.log",
            **kwargs,
        )
        self.procs.append(node)
        if start:
            node.start()
        return node

    def proc(self, name: str, command: Sequence[str], *, rows: bool = False) -> Proc:
        cls = RowsProc if rows else Proc
        proc = cls(name, command, log=self.root / f"{name}.log")
        self.procs.append(proc)
        return proc.start()

    def check_views(self, expected: dict[str, dict[Key, float]], *, timeout: float = 20.0) -> None:
        """Every node's printed view is exactly ``expected[name]``; all nodes agree on the
        timestamps of the entries they share. Waits up to ``timeout`` for late rows."""
        deadline = time.monotonic() + timeout
        nodes = [p for p in self.procs if isinstance(p, NodeProc) and p.name in expected]
        for node in nodes:
            want = expected[node.name]
            with node.cond:
                while {k: net for k, (net, _) in node.view.items()} != want:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        got = {k: net for k, (net, _) in node.view.items()}
                        raise BenchError(
                            f"WRONG FINAL VIEW on {node.name}: {_diff(got, want)}\n"
                            f"{node.log_tail()}"
                        )
                    node.cond.wait(min(remaining, 0.2))
        stamps: dict[Key, tuple[bytes, str]] = {}
        for node in nodes:
            with node.cond:
                for key, (_, ts) in node.view.items():
                    seen = stamps.setdefault(key, (ts, node.name))
                    if seen[0] != ts:
                        raise BenchError(
                            f"NODES DISAGREE on {key}: timestamp {ts.decode()} on {node.name},"
                            f" {seen[0].decode()} on {seen[1]}"
                        )

    def stop_and_check_stores(self, expected: dict[str, dict[Key, float]]) -> None:
        """Stop every node gracefully (exit status 0), then check each store holds exactly
        the expected view: what was printed was committed."""
        errors = []
        for proc in self.procs:
            if proc.alive:
                code = proc.stop()
                if code != 0:
                    errors.append(f"{proc.name} exited with status {code}\n{proc.log_tail()}")
        for proc in self.procs:
            if isinstance(proc, NodeProc) and proc.name in expected:
                stored = proc.stored_nets()
                if stored != expected[proc.name]:
                    errors.append(
                        f"WRONG STORE of {proc.name}: {_diff(stored, expected[proc.name])}"
                    )
        if errors:
            raise BenchError("\n".join(errors))

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive:
                with contextlib.suppress(BenchError):
                    proc.stop(timeout=10)
            proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def source_commit() -> str:
    """The commit the benchmarks ran on, and whether the package had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "position_distributor"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes to position_distributor/" if dirty else "")
