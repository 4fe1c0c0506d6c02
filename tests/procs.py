"""Run real nodes as a user does (``python -m position_distributor``) and watch their output.

Starting and stopping a process is ``testkit.ChildProcess``'s, shared with the benchmarks;
``NodeProcess`` parses what the node prints. Also a peer typed by hand (``HostilePeer``: a
plain socket, frames built with ``struct`` and ``position_pb2``, independent of the codec
under test) and readers of ``/proc`` for memory and CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from position_distributor import position_pb2 as pb
from testkit import FAST, ChildProcess, free_port, node_command, user_env

__all__ = [
    "Cluster",
    "HostilePeer",
    "Mark",
    "NodeProcess",
    "View",
    "cpu_seconds",
    "cpu_seconds_precise",
    "frame",
    "free_port",
    "hello_payload",
    "parse_row",
    "position_payload",
    "proc_status_kib",
    "run_as_user",
    "run_cli",
    "without_root_powers",
]

ROW_SEPARATOR = " | "
# Console command output comes in blocks: a header line, lines, a blank line. Rows inside a
# block are a snapshot, not changes, so they do not update the parsed view.
BLOCK_HEADERS = frozenset({"Current positions", "Exposure", "Peers"})

View = dict[tuple[str, str], tuple[float, int]]
Nets = dict[tuple[str, str], float]


def parse_row(line: str) -> tuple[str, str, float, int] | None:
    """Parse ``strategy | symbol | 100.000000 | 1742308549773254000``; None if not a row."""
    parts = line.rstrip("\n").split(ROW_SEPARATOR)
    if len(parts) != 4:
        return None
    strategy, symbol, net, ts = parts
    try:
        return strategy, symbol, float(net), int(ts)
    except ValueError:
        return None


# Capabilities that let root read and write where the permission bits say no
# (linux/capability.h), and prctl's operation that drops one from the bounding set.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3
_PR_CAPBSET_DROP = 24


def without_root_powers() -> None:
    """In a child before exec: drop the capabilities that let root ignore permission bits,
    so the program obeys them as any user's process does (tests run as root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_as_user(code: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a child that obeys file permissions even when we are root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=without_root_powers if os.geteuid() == 0 else None,
    )


def run_cli(
    *args: str,
    timeout: float = 20.0,
    input: str | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m position_distributor ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "position_distributor", *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=user_env(),
        preexec_fn=preexec_fn,
    )


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ``VmPeak``...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return int(value.split()[0])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid``, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields after the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    utime, stime = int(fields[14 - 3]), int(fields[15 - 3])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid: int) -> float:
    """CPU time of every live thread of ``pid`` in ns resolution (``/proc/<pid>/task/*/schedstat``).

    Threads that have exited are not counted: use it over windows where none do.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class Mark(NamedTuple):
    """How many stdout and stderr lines a node had printed at some moment."""

    out: int
    err: int


class NodeProcess(ChildProcess):
    """One node process: stdin to type into, stdout rows parsed as they come, stderr kept.

    ``recovery_timeout``, ``heartbeat``, ``peers`` and ``extra_args`` are read at each
    ``start()``, so a restart can change them. Their defaults are the fast limits (``FAST``).
    """

    def __init__(
        self,
        name: str,
        port: int,
        peers: Iterable[int | str] = (),
        *,
        data_dir: Path,
        args: Iterable[str] = (),
        recovery_timeout: float = FAST.recovery_timeout,
        heartbeat: float = FAST.heartbeat,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        # ``cwd``: where the process runs: ``python -m`` imports the package found there first
        # (a directory holding another release's ``position_distributor`` runs that release).
        super().__init__(name, env=env, cwd=cwd)
        # The listen port; 0 lets the node bind any free port, learnt from its log (no race
        # with other processes between choosing a port and binding it) and kept for restarts.
        self._port = port
        self.data_dir = data_dir
        self.peers: list[int | str] = list(peers)
        self.recovery_timeout = recovery_timeout
        self.heartbeat = heartbeat
        self.extra_args = list(args)
        self.cluster: Cluster | None = None  # to describe every node when a wait fails
        self.started_at = 0.0  # time.monotonic() of the last start()
        self._syncs = 0  # sync_stderr() calls, to make each marker unique
        # Condition guarding everything the stdout/stderr readers update.
        self._cond = threading.Condition()
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.error_times: list[float] = []  # time.monotonic() each stderr line was read
        self.view: View = {}
        self._pending = b""  # the start of a stdout line not yet ended (reader thread only)
        self._in_block = False  # inside a command's output block (reader thread only)

    @property
    def args(self) -> list[str]:
        return [
            "--data-dir",
            str(self.data_dir),
            "--recovery-timeout",
            str(self.recovery_timeout),
            "--heartbeat",
            str(self.heartbeat),
            *self.extra_args,
        ]

    @property
    def command(self) -> list[str]:
        return node_command(self.name, self._port, self.peers, args=self.args)

    @property
    def port(self) -> int:
        """The port the node listens on (waiting for its log line if the OS chose it)."""
        if self._port == 0:
            self.wait_for_log(" listening on ")
            self._learn_port()
        return self._port

    def _learn_port(self) -> None:
        """Take the port from the node's ``listening on HOST:PORT`` line, if it is there."""
        with self._cond:
            lines = [line for line in self.errors if " listening on " in line]
        found = re.search(r" listening on \S+:(\d+)", lines[0]) if lines else None
        if found is not None:
            self._port = int(found.group(1))

    def start(self) -> NodeProcess:
        """Start the process (again, after a stop or a kill: output starts afresh)."""
        assert not self.alive, f"{self.name} is already running"
        if self._port == 0 and self.proc is not None:
            self._learn_port()  # a restart listens where the last run did, as a user's would
        with self._cond:
            self.lines = []
            self.errors = []
            self.error_times = []
            self.view = {}
        self._pending = b""
        self._in_block = False
        self.started_at = time.monotonic()
        super().start()
        return self

    def on_stdout(self, t: float, chunk: bytes) -> None:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace") + "\n"
            row = None if self._in_block else parse_row(line)
            if line.rstrip("\n") in BLOCK_HEADERS:
                self._in_block = True
            elif self._in_block and line == "\n":
                self._in_block = False
            with self._cond:
                self.lines.append(line)
                if row is not None:
                    strategy, symbol, net, ts = row
                    self.view[(strategy, symbol)] = (net, ts)
                self._cond.notify_all()

    def on_stderr(self, line: str) -> None:
        with self._cond:
            self.errors.append(line)
            self.error_times.append(time.monotonic())
            self._cond.notify_all()

    def type(self, *lines: str) -> None:
        """Type lines at the node's console."""
        self.write("".join(line + "\n" for line in lines).encode())

    def type_bytes(self, data: bytes) -> None:
        """Write raw bytes (not necessarily UTF-8) to the node's stdin."""
        self.write(data)

    def sync_stderr(self, timeout: float = 15.0) -> int:
        """Make sure every stderr line the node wrote so far has been read; return the count.

        stdout and stderr are read by two threads, so a row seen on stdout says nothing about
        the stderr lines written before it. This types a line the console refuses, unique to
        this call, and waits for its ``error:`` line: everything written before is read.
        """
        self._syncs += 1
        marker = f"sync-marker-{self._syncs}"
        self.type(marker)
        self.wait_for_log(f"'{marker}'", timeout)
        with self._cond:
            return next(i for i, line in enumerate(self.errors) if f"'{marker}'" in line)

    def mark(self) -> Mark:
        """Where stdout and stderr are now, to look only at what comes after."""
        with self._cond:
            return Mark(len(self.lines), len(self.errors))

    def rows(self, start: int = 0) -> list[tuple[str, str, float, int]]:
        """Rows printed on stdout from line ``start`` on (command output included)."""
        with self._cond:
            lines = self.lines[start:]
        return [row for row in map(parse_row, lines) if row is not None]

    def errors_since(self, start: int = 0) -> list[str]:
        with self._cond:
            return self.errors[start:]

    def log_lines(self, text: str, start: int = 0) -> list[str]:
        """Stderr lines from index ``start`` on that contain ``text``."""
        return [line for line in self.errors_since(start) if text in line]

    def wait_until(
        self,
        predicate: Callable[[NodeProcess], Any],
        timeout: float = 15.0,
        what: str = "condition",
    ) -> Any:
        """Wait (on output events, with a deadline) until ``predicate(self)`` is truthy."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        others = [n for n in (self.cluster.nodes.values() if self.cluster else ()) if n is not self]
        raise AssertionError(
            f"{self.name}: timed out after {timeout}s waiting for {what}\n{self.describe()}"
            + "".join(f"\n--- and {node.name}:\n{node.describe()}" for node in others)
        )

    def describe(self, lines: int = 30) -> str:
        """State, view and output tails, for a failure message."""
        state = "not started"
        if self.proc is not None:
            code = self.proc.poll()
            state = f"pid {self.proc.pid}, " + ("running" if code is None else f"exit {code}")
        with self._cond:
            return (
                f"{self.name} on port {self._port or '?'}, peers {self.peers}: {state}\n"
                f"view={self.view}\nstdout tail:\n{''.join(self.lines[-10:])}"
                f"stderr tail:\n{''.join(self.errors[-lines:])}"
            )

    def wait_for_log(self, text: str, timeout: float = 15.0, start: int = 0) -> str:
        """Wait until a stderr line (from index ``start`` on) contains ``text``."""

        def found(node: NodeProcess) -> str | None:
            return next((line for line in node.errors[start:] if text in line), None)

        return str(self.wait_until(found, timeout, f"log {text!r}"))

    def log_time(self, text: str) -> float:
        """When (``time.monotonic()``) the first stderr line containing ``text`` was read."""
        with self._cond:
            return next(
                t for line, t in zip(self.errors, self.error_times, strict=True) if text in line
            )

    def wait_for_output(self, text: str, timeout: float = 15.0, start: int = 0) -> int:
        """Wait until a stdout line (from index ``start`` on) contains ``text``; its index."""

        def found(node: NodeProcess) -> list[int] | None:
            hits = (i for i in range(start, len(node.lines)) if text in node.lines[i])
            first = next(hits, None)
            return None if first is None else [first]

        return int(self.wait_until(found, timeout, f"output {text!r}")[0])

    def wait_for_view(self, expected: Nets, timeout: float = 15.0) -> None:
        """Wait until the node's printed view has exactly these net positions."""

        def matches(node: NodeProcess) -> bool:
            return {key: net for key, (net, _) in node.view.items()} == expected

        self.wait_until(matches, timeout, f"view {expected}")

    def wait_for_rows(self, expected: View, timeout: float = 15.0) -> None:
        """Wait until the node's printed view is exactly ``expected``, timestamps included."""
        self.wait_until(lambda node: node.view == expected, timeout, f"rows {expected}")

    def wait_for_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself; its exit status."""
        try:
            return super().wait_for_exit(timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstderr tail:\n{''.join(self.errors_since()[-30:])}"
            ) from None

    def command_output(self, command: str, header: str, timeout: float = 15.0) -> list[str]:
        """Type a console command; the lines of its output block (after the header)."""
        start = self.mark().out
        self.type(command)
        first = self.wait_for_output(header, timeout, start)

        def block(node: NodeProcess) -> list[str] | None:
            lines = node.lines[first + 1 :]
            if "\n" not in lines:
                return None
            return [line.rstrip("\n") for line in lines[: lines.index("\n")]]

        return list(self.wait_until(block, timeout, f"end of {header!r} block"))

    def snapshot(self) -> View:
        with self._cond:
            return dict(self.view)

    def nets(self) -> Nets:
        with self._cond:
            return {key: net for key, (net, _) in self.view.items()}


class Cluster:
    """Nodes started for one test, every one stopped (by PID) at the end."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self.nodes: dict[str, NodeProcess] = {}

    def add(
        self,
        name: str,
        port: int | None = None,
        peers: Iterable[int | str] = (),
        *,
        start: bool = True,
        **kwargs: Any,
    ) -> NodeProcess:
        node = NodeProcess(
            name,
            port or 0,
            peers,
            data_dir=kwargs.pop("data_dir", self.data_root / name),
            **kwargs,
        )
        node.cluster = self
        self.nodes[name] = node
        return node.start() if start else node

    def restart(
        self, name: str, *, peers: Iterable[int | str] | None = None, wipe: bool = False
    ) -> NodeProcess:
        """Start a stopped or killed node again; ``wipe`` deletes its data dir first."""
        node = self.nodes[name]
        if peers is not None:
            node.peers = list(peers)
        if wipe:
            shutil.rmtree(node.data_dir)
        return node.start()

    def wait_for_view(
        self, expected: Nets, nodes: Sequence[NodeProcess] | None = None, timeout: float = 15.0
    ) -> None:
        """Wait until every node (default: every running node) prints exactly ``expected``."""
        for node in nodes if nodes is not None else self.running():
            node.wait_for_view(expected, timeout)

    def running(self) -> list[NodeProcess]:
        return [node for node in self.nodes.values() if node.alive]

    def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                with contextlib.suppress(AssertionError):
                    node.stop(timeout=5)
            if node.alive:
                node.kill()


# A peer typed by hand.


def frame(payload: bytes) -> bytes:
    """A 4-byte big-endian length, then ``payload``."""
    return struct.pack(">I", len(payload)) + payload


def hello_payload(strategy: str, *, version: int = 1, listen_port: int = 0) -> bytes:
    envelope = pb.Envelope(
        hello=pb.Hello(strategy=strategy, protocol_version=version, listen_port=listen_port)
    )
    return envelope.SerializeToString()


def position_payload(strategy: str, symbol: str, net: float, timestamp: int) -> bytes:
    """An ``Envelope`` carrying one ``SymbolPos``."""
    position = pb.SymbolPos(
        strategy_name=strategy, symbol=symbol, net_position=net, timestamp=timestamp
    )
    return pb.Envelope(position=position).SerializeToString()


class HostilePeer:
    """A TCP connection to a node that the test drives byte by byte; no threads of its own."""

    def __init__(self, port: int, *, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        local_port = self.sock.getsockname()[1]
        # How the node names this connection: "... at LABEL closed: REASON" in its log lines
        # (the thread name column, "recv-LABEL", holds it too).
        self.label = f"127.0.0.1:{local_port}"
        self.received = bytearray()
        self.how_closed: str | None = None

    def send(self, data: bytes, *, may_fail: bool = False) -> None:
        """Send raw bytes; with ``may_fail``, the node closing the connection is fine."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            if not may_fail:
                raise

    def send_frames(self, *payloads: bytes, may_fail: bool = False) -> None:
        self.send(b"".join(map(frame, payloads)), may_fail=may_fail)

    def hello(self, strategy: str, *, version: int = 1, listen_port: int = 0) -> None:
        self.send_frames(hello_payload(strategy, version=version, listen_port=listen_port))

    def sync_done(self) -> None:
        self.send_frames(pb.Envelope(sync_done=pb.SyncDone(count=0)).SerializeToString())

    def heartbeat_frame(self) -> bytes:
        return frame(pb.Envelope(heartbeat=pb.Heartbeat()).SerializeToString())

    def envelopes(self) -> list[pb.Envelope]:
        """Every complete frame received so far, parsed."""
        out = []
        offset = 0
        data = bytes(self.received)
        while len(data) - offset >= 4:
            (length,) = struct.unpack_from(">I", data, offset)
            if len(data) - offset - 4 < length:
                break
            out.append(pb.Envelope.FromString(data[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        return out

    def read_until(
        self, predicate: Callable[[list[pb.Envelope]], Any], timeout: float | None = None
    ) -> list[pb.Envelope]:
        """Read until ``predicate(envelopes received)`` holds; fail at EOF or the deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not predicate(envelopes := self.envelopes()):
            remaining = deadline - time.monotonic()
            if self.how_closed is not None or remaining <= 0:
                kinds = [e.WhichOneof("body") for e in envelopes]
                raise AssertionError(f"expected frames never came ({self.how_closed}): {kinds}")
            self.read_once(remaining)
        return envelopes

    def wait_closed(self, timeout: float | None = None) -> str:
        """Read (and keep) everything until the node closes: ``"eof"`` or ``"reset"``."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        while self.how_closed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the node kept {self.label} open for {timeout}s")
            self.read_once(remaining)
        return self.how_closed

    def read_once(self, timeout: float) -> None:
        """Read what has arrived within ``timeout`` seconds (0: only what is there now)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except (TimeoutError, BlockingIOError):
            return
        except ConnectionResetError:
            self.how_closed = "reset"
            return
        if not data:
            self.how_closed = "eof"
        self.received += data

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, discarding data in flight."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> HostilePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
