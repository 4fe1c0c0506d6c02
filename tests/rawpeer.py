"""A hand-driven peer on a plain socket: sends and reads wire frames exactly as a test says."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from position_distributor.types import Position
from position_distributor.wire import (
    PROTOCOL_VERSION,
    Decoder,
    Heartbeat,
    Hello,
    Message,
    SyncDone,
    encode,
    parse,
)

__all__ = ["RawListener", "RawPeer"]


class RawPeer:
    """One end of a TCP connection driven by the test thread: no threads of its own."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.decoder = Decoder()
        self.received: list[Message] = []
        self.eof = False

    @classmethod
    def connect(cls, port: int, name: str, *, rcvbuf: int | None = None) -> RawPeer:
        """Dial ``127.0.0.1:port``; ``rcvbuf`` shrinks the receive buffer before connecting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", port))
        return cls(sock, name)

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(encode(m) for m in messages))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, *, listen_port: int = 0, version: int = PROTOCOL_VERSION) -> None:
        self.send(Hello(self.name, version, listen_port))

    def handshake(self, *, listen_port: int = 0, timeout: float = 5.0) -> Hello:
        """Send our Hello and read the other side's."""
        self.hello(listen_port=listen_port)
        hello = self.read_until(lambda ms: any(isinstance(m, Hello) for m in ms), timeout)
        assert isinstance(hello[0], Hello), hello
        return hello[0]

    def read_until(
        self, predicate: Callable[[list[Message]], object], timeout: float = 5.0
    ) -> list[Message]:
        """Read frames until ``predicate(received)`` holds (or fail at EOF or the deadline)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            if self.eof:
                raise AssertionError(f"EOF before the expected frames; got {self.received!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s; got {self.received!r}")
            self._read_once(remaining)
        return self.received

    def read_until_eof(self, timeout: float = 5.0) -> list[Message]:
        """Read until the other side closes; return everything received."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no EOF within {timeout}s; got {self.received!r}")
            self._read_once(remaining)
        return self.received

    def read_sync(self, timeout: float = 5.0) -> list[Message]:
        """Read until a SyncDone; return the positions and the SyncDone after the Hello."""
        self.read_until(lambda ms: any(isinstance(m, SyncDone) for m in ms), timeout)
        return [m for m in self.received if isinstance(m, Position | SyncDone)]

    def positions(self) -> list[Position]:
        return [m for m in self.received if isinstance(m, Position)]

    def heartbeats(self) -> int:
        return sum(isinstance(m, Heartbeat) for m in self.received)

    def _read_once(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.received.extend(parse(payload) for payload in self.decoder.feed(data))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RawListener:
    """A listening socket on 127.0.0.1 that the test accepts from by hand."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def accept(self, name: str, timeout: float = 5.0) -> RawPeer:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        return RawPeer(conn, name)

    def close(self) -> None:
        self.sock.close()
