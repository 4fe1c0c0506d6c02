"""A loopback TCP proxy between a NATS client and a real nats-server that loses one
acknowledgement: it forwards a chosen publish to the server, then cuts the connection before
anything the server answers reaches the client.

``next_message`` is the small, pure part: where the next client-to-server message of the NATS
text protocol ends (``CONNECT``, ``PING``, ``SUB``... end at their line; ``PUB`` and ``HPUB``
carry a payload whose size their line gives), and which subject it publishes to. The proxy
forwards the client's bytes message by message, so it can stop exactly at a boundary.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import NamedTuple

__all__ = ["LostAckProxy", "Message", "next_message"]

_CRLF = b"\r\n"


class Message(NamedTuple):
    """One client message: its length in the buffer, its operation, its subject (publishes)."""

    length: int
    op: str
    subject: str


def next_message(buffer: bytes | bytearray) -> Message | None:
    """The first complete client message in ``buffer``, or None if more bytes are needed.

    ``PUB <subject> [reply] <size>`` and ``HPUB <subject> [reply] <header size> <total size>``
    are followed by the payload and CRLF; every other operation is one line.
    """
    end = buffer.find(_CRLF)
    if end < 0:
        return None
    words = bytes(buffer[:end]).split()
    op = words[0].upper().decode() if words else ""
    length = end + 2
    if op in ("PUB", "HPUB"):
        length += int(words[-1]) + 2
        if len(buffer) < length:
            return None
        return Message(length, op, words[1].decode())
    return Message(length, op, "")


class LostAckProxy:
    """Listens on 127.0.0.1 and forwards every connection to ``target_port``.

    ``arm(prefix)``: the next client publish to a subject starting with ``prefix`` is forwarded
    to the server, then the connection is cut (the client's side closed, the server's side
    finished with a FIN and drained) before any byte the server sends after it (its
    acknowledgement) is forwarded back. ``cut`` is set then. With ``hold_retry``, the next
    connection (the client's reconnect) is forwarded up to its handshake (``CONNECT`` and the
    first ``PING``), then the client's messages are held until it publishes to ``prefix``
    again (its retry), so the retry reaches the server with what the client knew before the
    cut; ``released`` is set then, and the connection is transparent from there on.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.cut = threading.Event()
        self.released = threading.Event()
        # Mutex protecting _prefix, _hold, _sockets and _threads.
        self._lock = threading.Lock()
        self._prefix: str | None = None
        self._hold: str | None = None  # the prefix whose retry the next connection waits for
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def arm(self, prefix: str, *, hold_retry: bool = False) -> None:
        """Lose the acknowledgement of the client's next publish to ``prefix``."""
        with self._lock:
            self._prefix = prefix
            self._hold = prefix if hold_retry else None
        self.cut.clear()
        self.released.clear()

    def close(self) -> None:
        """Stop accepting, close every socket, end every thread."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(5)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _close(sock)
        for thread in threads:
            thread.join(5)
        assert not any(t.is_alive() for t in [self._accepter, *threads]), "proxy thread alive"

    # Threads.

    def _accept(self) -> None:
        """Thread ``proxy-accept``: one pair of pumps per client connection."""
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                hold, self._hold = (self._hold, None) if self.cut.is_set() else (None, self._hold)
                self._sockets += [client, server]
                # Mutex: after a cut, nothing more from the server goes to the client.
                gate = threading.Lock()
                state = {"cut": False}
                pumps = [
                    threading.Thread(
                        target=self._upstream,
                        args=(client, server, gate, state, hold),
                        name="proxy-up",
                        daemon=True,
                    ),
                    threading.Thread(
                        target=self._downstream,
                        args=(server, client, gate, state),
                        name="proxy-down",
                        daemon=True,
                    ),
                ]
                self._threads += pumps
            for pump in pumps:
                pump.start()

    def _upstream(
        self,
        client: socket.socket,
        server: socket.socket,
        gate: threading.Lock,
        state: dict[str, bool],
        hold: str | None,
    ) -> None:
        """Client to server, message by message: cut after the armed publish, hold if told."""
        buffer = bytearray()
        held = bytearray()
        handshake = hold is not None  # forward until the first PING, then hold
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buffer += data
                out = bytearray()
                while (message := next_message(buffer)) is not None:
                    chunk = bytes(buffer[: message.length])
                    del buffer[: message.length]
                    if hold is not None:
                        if handshake:
                            out += chunk
                            handshake = message.op != "PING"
                            continue
                        held += chunk
                        if message.subject.startswith(hold):
                            out += held
                            held.clear()
                            hold = None
                            self.released.set()
                        continue
                    with self._lock:
                        prefix = self._prefix
                        armed = prefix is not None and message.subject.startswith(prefix)
                        if armed:
                            self._prefix = None
                    if not armed:
                        out += chunk
                        continue
                    with gate:
                        state["cut"] = True  # before the publish leaves: no answer comes back
                    server.sendall(bytes(out) + chunk)
                    self._cut(client, server)
                    return
                if out:
                    server.sendall(bytes(out))
        except OSError:
            pass
        finally:
            _close(client)
            if not state["cut"]:
                _close(server)  # after a cut, the downstream pump drains and closes it

    def _downstream(
        self,
        server: socket.socket,
        client: socket.socket,
        gate: threading.Lock,
        state: dict[str, bool],
    ) -> None:
        """Server to client, unless the connection was cut (then drained and dropped)."""
        try:
            while data := server.recv(65536):
                with gate:
                    if not state["cut"]:
                        client.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)
            if not state["cut"]:
                _close(client)

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        """Close the client's side now; let the server read the publish, then its EOF.

        ``cut`` is set before the client's side is closed: the client reconnects as soon as
        it sees the end, and that connection must find the cut (and its hold) in place.
        """
        self.cut.set()
        _close(client)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)  # the server reads all we sent, then the end


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
