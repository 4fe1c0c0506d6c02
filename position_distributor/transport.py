"""Byte transports under a connection: plain TCP, or TLS with mutual certificates.

A connection has two threads on one socket: a reader and a writer. A Python ``SSLSocket`` is
not safe to read and write from two threads at once, so TLS runs over memory BIOs
(``ssl.SSLObject``) behind a lock held only for memory operations, never for socket I/O. After
the handshake, only the writer thread writes to the socket, so TLS records leave in order;
the reader asks the writer to flush when reading produced TLS output of its own.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "TlsError",
    "TlsTransport",
    "Transport",
    "certified_names",
    "make_tls_contexts",
    "tls_hint",
]

# 64 KiB: below the size at which each read would map and unmap fresh memory (malloc's
# mmap threshold), which costs more than the read itself for a small message.
_READ_SIZE: Final = 64 * 1024
# A TLS record: a fatal alert, protocol_version (RFC 8446, 6.2).
_PROTOCOL_VERSION_ALERT: Final = b"\x15\x03\x01\x00\x02\x02\x46"


class TlsError(Exception):
    """Certificates or keys that cannot be loaded (a local problem the operator must fix)."""


class Transport:
    """Plain TCP: what the reader receives and the writer sends, unchanged."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def handshake(self, deadline: float) -> frozenset[str] | None:
        """Run the transport's own handshake; return the names the peer is certified for."""
        return None

    def recv(self) -> bytes:
        """Received bytes (b"" at end of stream); raises ``OSError`` / ``TimeoutError``."""
        return self.sock.recv(_READ_SIZE)

    def sendall(self, data: bytes | memoryview) -> None:
        """Send ``data`` (the writer thread only, after the handshake)."""
        self.sock.sendall(data)


class TlsTransport(Transport):
    """TLS over memory BIOs, shared safely by the reader and writer threads."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        wake_writer: Callable[[], None],
    ) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._wake_writer = wake_writer
        # Mutex protecting the SSLObject and its two BIOs (memory operations only).
        self._lock = threading.Lock()

    def handshake(self, deadline: float) -> frozenset[str]:
        """Complete the TLS handshake (before the writer starts) and name the peer."""
        sock = self.sock
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    # The alert TLS has for the peer (an unknown CA, a bad certificate) tells
                    # it why: send it before giving up (best effort). A peer that does not
                    # speak TLS gets none from OpenSSL: send it one, which it recognises.
                    out = self._outgoing.read()
                    if not out and tls_hint(str(exc.reason)) == tls_hint("WRONG_VERSION_NUMBER"):
                        out = _PROTOCOL_VERSION_ALERT
                    if out:
                        with contextlib.suppress(OSError):
                            sock.sendall(out)
                    raise
                out = self._outgoing.read()
            if out:
                sock.sendall(out)
            if done:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS handshake timed out")
            sock.settimeout(left)
            data = sock.recv(_READ_SIZE)
            if not data:
                raise ConnectionError(
                    "connection closed during the TLS handshake (does the peer use TLS too,"
                    " and trust this node's certificate?)"
                )
            with self._lock:
                self._incoming.write(data)
        return certified_names(self._tls.getpeercert())

    def recv(self) -> bytes:
        while True:
            chunks = []
            with self._lock:
                try:
                    # Every record already received, not one 16 KiB record per call.
                    size = 0
                    while size < _READ_SIZE:
                        chunk = self._tls.read(_READ_SIZE - size)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    if not chunks:
                        return b""  # the peer closed TLS cleanly
                pending = self._outgoing.pending
            if pending:
                self._wake_writer()  # e.g. a TLS 1.3 key update to answer
            if chunks:
                return b"".join(chunks)
            received = self.sock.recv(_READ_SIZE)
            if not received:
                return b""
            with self._lock:
                self._incoming.write(received)

    def sendall(self, data: bytes | memoryview) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = self._tls.write(view)
                view = view[written:]
            out = self._outgoing.read()
        if out:
            self.sock.sendall(out)


# What a TLS failure most likely means, by the reason OpenSSL gives.
_HINTS: Final = (
    (
        ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"),
        "the peer does not speak TLS: is it started without --tls-cert?",
    ),
    (
        ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_REQUIRED"),
        "the peer does not trust this node's certificate: are both signed by the same --tls-ca?",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED",),
        "this node does not trust the peer's certificate: are both signed by the same --tls-ca?",
    ),
)


def tls_hint(reason: str) -> str:
    """What a TLS failure's reason most likely means, in parentheses (or "")."""
    for marks, hint in _HINTS:
        if any(mark in reason for mark in marks):
            return f" ({hint})"
    return ""


def certified_names(certificate: Mapping[str, Any] | None) -> frozenset[str]:
    """The common names and DNS names a verified peer certificate is issued for."""
    if not certificate:
        return frozenset()
    names = set()
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(value)
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "DNS":
            names.add(value)
    return frozenset(names)


def make_tls_contexts(cert: Path, key: Path, ca: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for mutual TLS: each side presents ``cert`` and requires a
    peer certificate signed by ``ca``. Host names are not checked (peers are dialled by
    address); instead the certificate must name the strategy the peer claims in its Hello.
    """
    contexts = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        context = ssl.SSLContext(purpose)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load certificate {cert} with key {key}: {_why(exc)}") from exc
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load CA certificate {ca}: {_why(exc)}") from exc
        contexts.append(context)
    return contexts[0], contexts[1]


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
