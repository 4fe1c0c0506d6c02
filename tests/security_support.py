"""Helpers of the security tests: secret files, secured in-process nodes, a recording relay,
and an impostor peer that speaks the protocol by hand and keeps every byte it receives."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from position_distributor.node import Node
from position_distributor.peer import Limits
from position_distributor.protocol import Protocol, RemoteProtocolError
from position_distributor.types import Position
from position_distributor.wire import Decoder, Message, WireError, parse

from .certs import NodeCert
from .inproc import FAST_LIMITS, Nodes, Rows

__all__ = [
    "Flow",
    "Impostor",
    "Tap",
    "decode",
    "positions_in",
    "start_node",
    "write_secret",
]


def write_secret(path: Path, *secrets: str, mode: int = 0o600) -> Path:
    """A secret file holding ``secrets``, one per line, with permissions ``mode``."""
    path.write_text("".join(secret + "\n" for secret in secrets))
    path.chmod(mode)
    return path


def start_node(
    nodes: Nodes,
    name: str,
    *,
    peers: tuple[int, ...] = (),
    secret_file: Path | None = None,
    tls: NodeCert | None = None,
    limits: Limits = FAST_LIMITS,
    **changes: Any,
) -> tuple[Node, Rows]:
    """Start an in-process node with these credentials (stopped by ``nodes.close()``)."""
    config = replace(
        nodes.config(name, peers=peers, limits=limits),
        secret_file=secret_file,
        tls_cert=tls.cert if tls else None,
        tls_key=tls.key if tls else None,
        tls_ca=tls.ca if tls else None,
        **changes,
    )
    rows = Rows()
    node = Node(config, out=rows)  # type: ignore[arg-type]  # a text stream, as in inproc.py
    nodes.started.append(node)
    node.start()
    return node, rows


def decode(data: bytes) -> list[Message]:
    """The messages the bytes hold, read with the project's codec, up to the first bytes that
    are not frames (e.g. TLS records, which hold no readable message)."""
    decoder = Decoder()
    messages: list[Message] = []
    try:
        for payload in decoder.feed(data):
            messages.append(parse(payload))
    except WireError:
        pass
    return messages


def positions_in(data: bytes) -> list[Position]:
    return [m for m in decode(data) if isinstance(m, Position)]


class Flow:
    """The bytes of one relayed connection, each way."""

    def __init__(self) -> None:
        # Mutex protecting both byte buffers and the closed flags.
        self._lock = threading.Lock()
        self._to_target = bytearray()
        self._to_dialler = bytearray()
        self._ended = 0  # directions that have ended

    def add(self, to_target: bool, data: bytes) -> None:
        with self._lock:
            (self._to_target if to_target else self._to_dialler).extend(data)

    def end(self) -> None:
        with self._lock:
            self._ended += 1

    @property
    def to_target(self) -> bytes:
        with self._lock:
            return bytes(self._to_target)

    @property
    def to_dialler(self) -> bytes:
        with self._lock:
            return bytes(self._to_dialler)

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._ended == 2


class Tap:
    """A relay on 127.0.0.1 to ``127.0.0.1:target``: forwards each connection both ways,
    unchanged, and records every byte (what a listener on the network would see).

    One accept thread, two pump threads per connection; ``close()`` ends all of them.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # Mutex protecting flows, _sockets and _threads.
        self._lock = threading.Lock()
        self.flows: list[Flow] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, name="tap-accept", daemon=True)
        self._acceptor.start()

    def snapshot(self) -> list[Flow]:
        with self._lock:
            return list(self.flows)

    def all_bytes(self) -> bytes:
        """Everything relayed so far, both ways, every connection (for a plain-text search)."""
        return b"".join(flow.to_target + flow.to_dialler for flow in self.snapshot())

    def finished_flows(self, since: int = 0) -> int:
        """How many connections (from the ``since``-th on) have ended both ways."""
        return sum(flow.finished for flow in self.snapshot()[since:])

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            flow = Flow()
            pumps = [
                threading.Thread(
                    target=self._pump, args=(client, upstream, flow, True), daemon=True
                ),
                threading.Thread(
                    target=self._pump, args=(upstream, client, flow, False), daemon=True
                ),
            ]
            with self._lock:
                if self._closing:
                    client.close()
                    upstream.close()
                    return
                self.flows.append(flow)
                self._sockets += [client, upstream]
                self._threads += pumps
            for pump in pumps:
                pump.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, flow: Flow, to_target: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                flow.add(to_target, data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            flow.end()
            # Pass the end on: the other side sees what this side saw (FIN, or the reset).
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join()
        for sock in sockets:
            sock.close()


class Impostor:
    """A peer driven by the test thread through the project's ``Protocol`` (so it holds, or
    lacks, a secret as a node would), keeping every byte it receives; no threads."""

    def __init__(self, sock: socket.socket, name: str, *, secrets: list[bytes] | None) -> None:
        self.sock = sock
        self.protocol = Protocol(name, secrets=secrets)
        self.raw = bytearray()
        self.events: list[object] = []
        self.error: str | None = None  # why our protocol refused the other side, if it did
        self.eof = False
        local = sock.getsockname()
        self.label = f"{local[0]}:{local[1]}"  # how the node names this connection in logs

    @classmethod
    def dial(cls, port: int, name: str, *, secrets: list[bytes] | None = None) -> Impostor:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        return cls(sock, name, secrets=secrets)

    def say_hello(self) -> None:
        self.send(self.protocol.hello())

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the other side has already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def pump(self, until: Callable[[Impostor], object], timeout: float = 10.0) -> None:
        """Read (and answer, as the protocol says) until ``until(self)`` holds or EOF."""
        deadline = time.monotonic() + timeout
        while not until(self):
            if self.eof:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"impostor timed out after {timeout}s; got {self.raw!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return
            self.raw.extend(data)
            if self.error is None:
                try:
                    self.events.extend(self.protocol.receive_data(data))
                except RemoteProtocolError as exc:
                    self.error = str(exc)
                if out := self.protocol.data_to_send():
                    self.send(out)

    def within(self, until: Callable[[Impostor], object], timeout: float) -> bool:
        """Whether ``until(self)`` comes to hold within ``timeout`` (no failure if not)."""
        try:
            self.pump(until, timeout)
        except AssertionError:
            return False
        return bool(until(self))

    def messages(self) -> list[Message]:
        """Every message received so far (decoded apart from our protocol)."""
        return decode(bytes(self.raw))

    def until_eof(self, timeout: float = 10.0) -> bytes:
        """Read until the other side closes; every byte received."""
        self.pump(lambda _: False, timeout)
        return bytes(self.raw)

    def positions(self) -> list[Position]:
        """The positions among the bytes received (decoded apart from our protocol)."""
        return positions_in(bytes(self.raw))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
