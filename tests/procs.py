"""Run real nodes as a user does (``python -m position_distributor``) and watch their output."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROW_SEPARATOR = " | "

View = dict[tuple[str, str], tuple[float, int]]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class NodeProcess:
    """One node process: stdin to type into, stdout rows parsed as they come, stderr kept."""

    def __init__(
        self,
        name: str,
        port: int,
        peers: Iterable[int | str] = (),
        *,
        data_dir: Path,
        args: Iterable[str] = (),
        recovery_timeout: float = 1.0,
        heartbeat: float = 0.2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.data_dir = data_dir
        self.peers = [p if isinstance(p, str) else f"127.0.0.1:{p}" for p in peers]
        self.args = [
            "--data-dir",
            str(data_dir),
            "--recovery-timeout",
            str(recovery_timeout),
            "--heartbeat",
            str(heartbeat),
            *args,
        ]
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        # Condition guarding everything the stdout/stderr readers update.
        self._cond = threading.Condition()
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.view: View = {}
        self._readers: list[threading.Thread] = []

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "position_distributor",
            self.name,
            str(self.port),
            *self.peers,
            *self.args,
        ]

    def start(self) -> NodeProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        with self._cond:
            self.lines = []
            self.errors = []
            self.view = {}
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True),
        ]
        for thread in self._readers:
            thread.start()
        return self

    def _read_stdout(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            row = parse_row(line)
            with self._cond:
                self.lines.append(line)
                if row is not None:
                    strategy, symbol, net, ts = row
                    self.view[(strategy, symbol)] = (net, ts)
                self._cond.notify_all()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.errors.append(line)
                self._cond.notify_all()

    def type(self, *lines: str) -> None:
        """Type lines at the node's console."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines))
        self.proc.stdin.flush()

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
                    raise AssertionError(
                        f"{self.name}: timed out after {timeout}s waiting for {what}\n"
                        f"view={self.view}\nstderr tail:\n{''.join(self.errors[-30:])}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_for_log(self, text: str, timeout: float = 15.0, start: int = 0) -> str:
        """Wait until a stderr line (from index ``start`` on) contains ``text``."""

        def found(node: NodeProcess) -> str | None:
            return next((line for line in node.errors[start:] if text in line), None)

        return str(self.wait_until(found, timeout, f"log {text!r}"))

    def wait_for_view(self, expected: dict[tuple[str, str], float], timeout: float = 15.0) -> None:
        """Wait until the node's printed view has exactly these net positions."""

        def matches(node: NodeProcess) -> bool:
            return {key: net for key, (net, _) in node.view.items()} == expected

        self.wait_until(matches, timeout, f"view {expected}")

    def nets(self) -> dict[tuple[str, str], float]:
        with self._cond:
            return {key: net for key, (net, _) in self.view.items()}

    def kill(self) -> None:
        """kill -9, by PID."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._join_readers()

    def stop(self, timeout: float = 10.0) -> int:
        """Graceful stop: close stdin (EOF), wait; kill -9 by PID if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise AssertionError(f"{self.name} did not stop within {timeout}s") from None
        self._join_readers()
        return proc.returncode

    def _join_readers(self) -> None:
        for thread in self._readers:
            thread.join(timeout=10)
        proc = self.proc
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Nodes started for one test, every one stopped (by PID) at the end."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self.nodes: dict[str, NodeProcess] = {}

    def add(
        self, name: str, port: int | None = None, peers: Iterable[int | str] = (), **kwargs: Any
    ) -> NodeProcess:
        node = NodeProcess(
            name,
            port or free_port(),
            peers,
            data_dir=kwargs.pop("data_dir", self.data_root / name),
            **kwargs,
        )
        self.nodes[name] = node
        return node.start()

    def restart(self, name: str) -> NodeProcess:
        return self.nodes[name].start()

    def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                with contextlib.suppress(AssertionError):
                    node.stop(timeout=5)
            if node.alive:
                node.kill()
