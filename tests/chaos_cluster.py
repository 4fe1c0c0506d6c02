"""Node processes in a full mesh whose every link goes through a ``FaultProxy``, with ledgers.

``ChaosNode`` runs ``python -m position_distributor`` as a user does, restarts it any number
of times, and reads its output life by life: first the stored view a node prints when it
starts (its size is in the log line ``store ... holds N position(s)``), then the rows of
changes. Own rows acknowledge typed trades in the node's ``Ledger``. Every row of every node
is also checked against one global record: a (strategy, symbol, timestamp) must carry the
same net position wherever it is printed. All nodes' reader threads notify one condition, so
the test waits on output, never by sleeping.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testkit import FAST, ChildProcess, free_port, node_command

from .chaos_ledger import Ledger
from .faultproxy import ProxyMesh
from .procs import parse_row

__all__ = ["ChaosCluster", "ChaosNode", "restartable_ports"]

_HOLDS = re.compile(r"store .* holds (\d+) position")
View = dict[tuple[str, str], tuple[float, int]]


def restartable_ports(names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """A distinct port for each name, for nodes restarted on the same port: ``free_port()``
    gives ports below the kernel's ephemeral range, which neither the proxies nor any
    outgoing connection can take while a node is down."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


class ChaosNode(ChildProcess):
    """One node process, restarted any number of times, and the truth about its trades."""

    def __init__(
        self,
        name: str,
        port: int,
        peers: list[int],
        data_dir: Path,
        cond: threading.Condition,
        *,
        recovery_timeout: float,
        heartbeat: float,
        args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name)
        self.port = port
        self.data_dir = data_dir
        self.command = node_command(
            name,
            port,
            peers,
            data_dir=data_dir,
            args=[
                "--recovery-timeout",
                str(recovery_timeout),
                "--heartbeat",
                str(heartbeat),
                *args,
            ],
        )
        self.ledger = Ledger(name)
        self.lives = 0
        # Shared by every node of the cluster: protects lines, errors and view, and is
        # notified by the reader threads whenever one of them grows.
        self.cond = cond
        self.lines: list[str] = []  # stdout of the current life
        self.errors: list[str] = []  # stderr of the current life
        self.all_errors: list[str] = []  # stderr of every life, for the report
        self.view: View = {}  # last row per (strategy, symbol) in the current life
        self._pending = b""  # the start of a stdout line not yet ended (reader thread only)
        self.wipe_next = False  # the data dir was deleted after the last kill
        self.recovering = False  # holding trades until "recovery done" or "recovery timeout"
        self._seen = 0
        self._stored_left: int | None = None  # stored-view rows still to read (None: unknown)
        self._stored: dict[str, tuple[float, int]] = {}
        self._restart_pending = False

    # The process.

    def start(self) -> None:
        with self.cond:
            self.lines = []
            self.errors = []
            self.view = {}
        self.lives += 1
        self._seen = 0
        self._stored_left = None
        self._stored = {}
        self._restart_pending = self.lives > 1
        self.recovering = self.wipe_next or self.lives == 1
        self.all_errors.append(f"----- {self.name} life {self.lives}\n")
        self._pending = b""
        super().start()

    def on_stdout(self, t: float, chunk: bytes) -> None:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        with self.cond:
            for raw in lines:
                line = raw.decode(errors="replace") + "\n"
                self.lines.append(line)
                row = parse_row(line)
                if row is not None:
                    self.view[(row[0], row[1])] = (row[2], row[3])
            self.cond.notify_all()

    def on_stderr(self, line: str) -> None:
        with self.cond:
            self.errors.append(line)
            self.all_errors.append(line)
            self.cond.notify_all()

    def type(self, *lines: str) -> None:
        assert self.proc is not None
        try:
            self.write("".join(line + "\n" for line in lines).encode())
        except BrokenPipeError:
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"{self.name} died unexpectedly (exit status {self.proc.returncode}):\n"
                + "".join(self.errors[-30:])
            ) from None

    def type_trade(self, symbol: str, quantity: int) -> None:
        self.ledger.typed_trade(symbol, quantity)
        self.type(f"{symbol} {quantity}")

    def kill(self, *, wipe: bool = False) -> None:
        """``kill -9`` by PID, read what it printed; with ``wipe``, delete its data dir."""
        super().kill()
        self.wipe_next = wipe
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop(self, timeout: float = 15.0) -> int:
        """Graceful stop (EOF on stdin); kill -9 by PID and fail if it does not exit in time."""
        return super().stop(timeout)

    # The output, read in order.

    def process_output(self, record: dict[tuple[str, str, int], float]) -> None:
        """Account for the stdout and stderr lines of the current life not read yet.

        Caller holds ``cond``.
        """
        if self._stored_left is None:
            match = next((m for line in self.errors if (m := _HOLDS.search(line))), None)
            if match is None:
                return  # the stored view's size is not known yet
            self._stored_left = int(match.group(1))
            if self._stored_left == 0 and self._restart_pending:
                self._finish_restart()
        if self.recovering and any(
            "recovery done" in e or "recovery timeout" in e for e in self.errors
        ):
            self.recovering = False
        while self._seen < len(self.lines):
            line = self.lines[self._seen]
            self._seen += 1
            row = parse_row(line)
            if row is None:
                continue
            strategy, symbol, net, ts = row
            known = record.setdefault((strategy, symbol, ts), net)
            if known != net:
                self.ledger.violations.append(
                    f"{self.name} printed {strategy} {symbol} {net} @ {ts}, elsewhere {known}"
                )
            if self._stored_left:
                self._stored_left -= 1
                if strategy == self.name:
                    self._stored[symbol] = (net, ts)
                if self._stored_left == 0 and self._restart_pending:
                    self._finish_restart()
                continue
            if strategy == self.name:
                self.ledger.own_row(symbol, net, ts)

    def _finish_restart(self) -> None:
        self._restart_pending = False
        self.ledger.restarted(self._stored, wiped=self.wipe_next)
        self.wipe_next = False

    @property
    def settled(self) -> bool:
        """Whether the stored view of the current life has been read and accounted for."""
        return self._stored_left == 0 and not self._restart_pending

    def stored_view(self) -> View:
        """The rows printed at the start of the current life (the whole stored view).

        Caller holds ``cond``; only meaningful once ``settled``.
        """
        assert self._stored_left == 0
        view: View = {}
        count = 0
        for line in self.lines:
            row = parse_row(line)
            if row is None:
                continue
            if count == self._stored_count():
                break
            view[(row[0], row[1])] = (row[2], row[3])
            count += 1
        return view

    def _stored_count(self) -> int:
        match = next((m for line in self.errors if (m := _HOLDS.search(line))), None)
        assert match is not None
        return int(match.group(1))


class ChaosCluster:
    """``n`` nodes, one proxy per directed link, their ledgers; ``close()`` stops everything."""

    def __init__(
        self,
        root: Path,
        n: int,
        *,
        both_ways: bool = False,
        ring: bool = False,
        recovery_timeout: float = 10.0,
        heartbeat: float = FAST.heartbeat,
        args: tuple[str, ...] = (),
    ) -> None:
        # Notified by every node's reader threads; protects every node's output lists.
        self.cond = threading.Condition()
        self.record: dict[tuple[str, str, int], float] = {}
        names = [f"chaos_{i}" for i in range(1, n + 1)]
        ports = restartable_ports(names)
        self.mesh = ProxyMesh.ring(ports) if ring else ProxyMesh.full(ports, both_ways=both_ways)
        self.nodes = {
            name: ChaosNode(
                name,
                ports[name],
                self.mesh.peers_of(name),
                root / name,
                self.cond,
                recovery_timeout=recovery_timeout,
                heartbeat=heartbeat,
                args=args,
            )
            for name in names
        }

    def live(self) -> list[ChaosNode]:
        return [node for node in self.nodes.values() if node.alive]

    def process_output(self) -> None:
        with self.cond:
            for node in self.nodes.values():
                node.process_output(self.record)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Account for output as it comes until ``predicate()`` holds (True), or until the
        deadline (False)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for node in self.nodes.values():
                    node.process_output(self.record)
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)

    def violations(self) -> list[str]:
        return [v for node in self.nodes.values() for v in node.ledger.violations]

    def expected(self) -> dict[tuple[str, str], float]:
        """The ground truth: every node's own positions, from its ledger."""
        truth: dict[tuple[str, str], float] = {}
        for node in self.nodes.values():
            truth.update(node.ledger.expected())
        return truth

    def close(self) -> None:
        """Kill every node still running (by PID) and close every proxy."""
        try:
            for node in self.nodes.values():
                if node.proc is not None:
                    node.kill()  # or, if it ended by itself, only join its readers
        finally:
            self.mesh.close()
