"""A child process started as a user starts it, and stopped by its PID.

``ChildProcess`` starts a command with pipes: stdin to write to, stdout handed to
``on_stdout`` in chunks as they arrive, stderr handed to ``on_stderr`` line by line (and kept in
a log file if one is given), each read by a thread of its own; it is stopped with an EOF on
stdin, then SIGKILL by PID after a deadline. ``node_command`` is the command line of a node.
The tests' ``NodeProcess`` (``tests/procs.py``) and the benchmarks' ``Proc`` (``benchmarks/
harness.py``) are subclasses: what they differ in is what they make of the output.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "ChildProcess", "cpu_seconds", "free_port", "node_command", "user_env"]

ROOT = Path(__file__).resolve().parent.parent  # the repository
# A child runs in a user's default environment: these two (set in some CI sandboxes) would
# make every start recompile the project (no .pyc written) and change stdout buffering.
_DROPPED_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (their local ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_PORTS = random.Random()  # its own generator: a test seeding `random` gets no shared ports


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the kernel's range of ephemeral ports.

    A port that ``bind(0)`` hands out is an ephemeral one: between this call and the node's
    own bind, another process's outgoing connection (a node dialling its peers) may take it
    as its local port, and the node then fails to start (seen once in a benchmark, as a
    warm-up that waited for a node that had exited). Ports below that range are never given
    to outgoing connections."""
    high = _ephemeral_low()
    low = min(10_000, high // 2)
    for _ in range(1000):
        port = _PORTS.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that range full: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def user_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment as a user's shell would pass it on, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(extra or {})
    return env


def node_command(
    name: str,
    port: int | None,
    peers: Iterable[int | str] = (),
    *,
    data_dir: Path | None = None,
    args: Iterable[str] = (),
) -> list[str]:
    """``python -m position_distributor NAME [PORT] [PEER...] [--data-dir DIR] [ARGS...]``.

    A peer given as a port is ``127.0.0.1:PORT``; a ``port`` of None gives no PORT argument
    (a node that does not listen, e.g. over NATS).
    """
    return [
        sys.executable,
        "-m",
        "position_distributor",
        name,
        *([] if port is None else [str(port)]),
        *(p if isinstance(p, str) else f"127.0.0.1:{p}" for p in peers),
        *([] if data_dir is None else ["--data-dir", str(data_dir)]),
        *args,
    ]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by every live thread of ``pid``, in seconds.

    Summed from each thread's ``schedstat`` (nanoseconds) when the kernel has it, else from
    ``/proc/<pid>/stat`` (clock ticks, usually 10 ms). Threads that have exited are counted
    only by the second: compare over windows where none exit.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        if total:
            return total / 1e9
    except OSError:
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChildProcess:
    """A child process with its pipes and reader threads; see the module docstring.

    ``command``, ``env`` (added to a user's environment), ``cwd`` and ``preexec_fn`` are read
    at each ``start()``, so a subclass may compute them and a restart may change them.
    """

    # Raised when the process does not stop or exit in time (the tests' AssertionError, the
    # benchmarks' BenchError).
    failure: type[Exception] = AssertionError
    command: list[str]

    def __init__(
        self,
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.env = dict(env or {})
        self.cwd = cwd
        self.log = log  # stderr is appended to it, if given
        self.preexec_fn: Callable[[], None] | None = None  # run in the child (drop privileges)
        self.proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Any:
        """Start the process (again, after a stop or a kill); return ``self``."""
        assert not self.alive, f"{self.name} is already running"
        if self.log is not None:
            self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in _finish
        self.proc = proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=user_env(self.env),
            cwd=self.cwd,
            preexec_fn=self.preexec_fn,
        )
        self._readers = [
            threading.Thread(
                target=self._read_stdout, args=(proc,), name=f"out-{self.name}", daemon=True
            ),
            threading.Thread(
                target=self._read_stderr, args=(proc,), name=f"err-{self.name}", daemon=True
            ),
        ]
        for thread in self._readers:
            thread.start()
        return self

    # What a subclass makes of the output (called in the reader threads).

    def on_stdout(self, t: float, chunk: bytes) -> None:
        """A chunk of stdout, read at ``t`` (``time.perf_counter()``)."""

    def on_stderr(self, line: str) -> None:
        """A line of stderr (with its newline), decoded."""

    def _read_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        read = os.read
        clock = time.perf_counter
        on_stdout = self.on_stdout
        while chunk := read(fd, 1 << 17):
            on_stdout(clock(), chunk)

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        log = self._log_file
        for raw in proc.stderr:
            if log is not None:
                log.write(raw)
                log.flush()
            self.on_stderr(raw.decode(errors="replace"))

    # Input.

    def write(self, data: bytes) -> None:
        """Write all of ``data`` to stdin (blocks while the pipe is full)."""
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        with memoryview(data) as view:
            sent = 0
            while sent < len(data):
                sent += os.write(fd, view[sent:])

    def send_signal(self, sig: int) -> None:
        """Send a signal, by PID."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    # The end.

    def stop(self, timeout: float = 10.0) -> int:
        """Graceful stop: close stdin (EOF) and wait; SIGKILL by PID if it does not exit in
        time, then raise ``failure``. The exit status."""
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
                self.kill()
                raise self.failure(f"{self.name} did not stop within {timeout:g}s") from None
        self._finish()
        return proc.returncode

    def kill(self) -> None:
        """kill -9, by PID."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._finish()

    def wait_for_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself; its exit status (``failure`` if it does not
        end in time: it is left running, for the caller to describe and stop)."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.failure(f"{self.name} still running after {timeout:g}s") from None
        self._finish()
        return code

    def _finish(self) -> None:
        """Once the process has ended: join the readers, close the pipes and the log."""
        for thread in self._readers:
            thread.join(timeout=10)
        proc = self.proc
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
