"""Connection: one TCP connection to another node, its reader loop and its writer thread.

Threads, one job each:

- ``recv-…``: a connection's blocking reader: bytes -> protocol -> events fired (for a dialled
  connection, the ``redial-`` thread of ``peer.py`` runs the reader loop in place);
- ``send-…``: a connection's writer: drains its queue and writes everything queued in one
  ``sendall``; sends a heartbeat when the connection has been idle. (When the writer has
  nothing queued, ``Connection.send`` writes at once, in the caller's thread, what the socket
  takes without blocking, and queues the rest: one wake-up less per message.)

A connection knows its ``Peer`` (the registry of connections, ``peer.py``), which decides
whether a handshaken connection may be the live one of its strategy. The side that accepts a
connection speaks only after the dialler's Hello (see ``protocol.py``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from loguru import logger

from .dispatcher import Event
from .protocol import Protocol, Ready, RemoteProtocolError, State, bye_reason
from .transport import TlsTransport, Transport, tls_hint
from .types import Position
from .wire import (
    BYE_STOPPING,
    DEFAULT_MAX_FRAME_SIZE,
    FEATURE_BYE,
    FEATURE_DIGEST,
    Bye,
    Digest,
    Heartbeat,
    Repair,
    RepairRequest,
    SyncDone,
    encode,
    encode_positions,
)

if TYPE_CHECKING:
    from .peer import Peer, _Connector

__all__ = ["CloseReason", "Closing", "Connection", "Limits"]

_SEND_SLICE: Final = 1 << 20  # each sendall is bounded in time by the socket timeout
_HEARTBEAT: Final = encode(Heartbeat())
_POSITIONS: Final = {Position}  # the types of a read that holds positions only
_SYNC_SLICE: Final = 2048  # positions encoded and queued at a time by a sync
_STOP: Final = None  # writer sentinel: send what is queued before it, then shut down
_BYE: Final = "closed by the peer: "
_TCP_CLOSE: Final = 7  # linux/tcp_states.h: TCP_CLOSE, where an RST leaves a socket
# A connection heard from within this many of its peer's heartbeat intervals is alive: a
# second process claiming its strategy is a duplicate, not the same node restarted.
_ALIVE_HEARTBEATS: Final = 3
_IDLE_HEARTBEATS: Final = 5  # a peer silent for this many of its heartbeat intervals is dead


class CloseReason(enum.Enum):
    """What kind of end a connection came to: what the node decides by (how loud the log
    line is, whether a refusal is counted, how soon the connector redials)."""

    DROPPED = "dropped"  # the peer went away or failed: EOF, reset, silence, an error
    STOPPING = "stopping"  # this node stops
    REPLACED = "replaced"  # a newer connection of the same strategy takes its place
    DUPLICATE = "duplicate"  # refused: both nodes dialled, the other direction's is kept
    SECOND_NODE = "second node"  # refused: another process claims a connected strategy
    REFUSED = "refused"  # the peer said, in a Bye, why it refuses this node
    PEER_STOPPED = "peer stopped"  # the peer said, in a Bye, that it stops


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a connection closed: its kind, and the text the logs show (``str()``)."""

    kind: CloseReason
    detail: str

    def __str__(self) -> str:
        return self.detail


_STOPPING: Final = Closing(CloseReason.STOPPING, "node stopping")
_PEER_STOPPED: Final = Closing(CloseReason.PEER_STOPPED, "the peer stopped")


@dataclass(frozen=True)
class Limits:
    """Timeouts and bounds for every connection (seconds and bytes)."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    # Bytes queued for one peer before it is cut off as too slow (it resyncs on return).
    max_send_queue: int = 32 << 20
    heartbeat_interval: float = 1.0
    # A connection silent this long is closed (half-open TCP, a hung peer).
    idle_timeout: float = 5.0
    hello_timeout: float = 5.0
    connect_timeout: float = 2.0
    max_connections: int = 256
    backoff_min: float = 0.05
    backoff_max: float = 1.0
    # A peer sending faster than max_peer_rate bytes/s for longer than max_peer_burst bytes
    # allow (a token bucket) is flooding: it is cut off. A sync of 100,000 positions is ~5 MB.
    max_peer_rate: int = 32 << 20
    max_peer_burst: int = 256 << 20


def _more(unsaid: int, interval: float) -> str:
    """What a throttled line adds: how many like it were left unsaid."""
    if not unsaid:
        return ""
    return f" ({unsaid} more like it in the last {interval:g}s, not shown)"


def _reset(sock: socket.socket) -> bool:
    """Whether the connection ended with the peer's RST (TCP state CLOSE), not its FIN
    (CLOSE_WAIT). After an RST, ``recv`` returns the error once, to whichever thread asks
    first: when the writer's ``send`` took it, the reader's ``recv`` sees only an end."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, AttributeError):  # not Linux, or not TCP
        return False
    return info[0] == _TCP_CLOSE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Connection:
    """One TCP connection to another node: its protocol state, reader loop and writer thread."""

    def __init__(
        self,
        peer: Peer,
        sock: socket.socket,
        address: tuple[str, int],
        *,
        connector: _Connector | None = None,
    ) -> None:
        self.address = address
        self.outbound = connector is not None
        self.connector = connector
        self.protocol = Protocol(
            peer.name,
            listen_port=peer.port,
            max_frame_size=peer.limits.max_frame_size,
            relay=peer.relay,
            heartbeat_ms=round(peer.limits.heartbeat_interval * 1000),
            secrets=peer.secrets,
            dialler=connector is not None,
            instance=peer.instance,
        )
        self.ready = False  # handshake complete and registered as the live connection
        self.bye: Bye | None = None  # the peer's reason for closing, if it sent one
        self.synced_out = False  # our sync is queued in full (set by the engine)
        self.last_heard = time.monotonic()
        self._tokens = float(peer.limits.max_peer_burst)  # the rate guard's bucket
        # Direct writes bypass the writer, so not with TLS (whose records the writer orders).
        self._direct = peer.tls is None
        self._transport: Transport
        if peer.tls is None:
            self._transport = Transport(sock)
        else:
            server, client = peer.tls
            self._transport = TlsTransport(
                sock,
                client if connector is not None else server,
                server_side=connector is None,
                wake_writer=self._wake_writer,
            )
        self._peer = peer
        self._sock = sock
        # Each frame goes out when written: no Nagle delay waiting for the peer's ACK.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Mutex protecting the byte counts and _closing (the send side's state).
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # Cumulative byte counts: queued, written, and the end of the last unbounded send.
        # Bytes up to _exempt_until (a sync) do not count against max_send_queue.
        self._enqueued = 0
        self._written = 0
        self._exempt_until = 0
        # Items queued for the writer and not yet being written, and whether it is writing:
        # when neither, send() writes directly (one thread hand-off less per message).
        self._items = 0
        self._writing = False
        self._last_direct = 0.0  # when send() last wrote directly (monotonic)
        self._spoke = False  # our Hello is out: heartbeats may follow it
        self._closing: Closing | None = None
        self._writer = threading.Thread(
            target=self._send_frames, name=f"send-{self.label}", daemon=True
        )

    @property
    def name(self) -> str | None:
        """The peer's strategy, once its Hello has been accepted."""
        return self.protocol.peer_name

    @property
    def label(self) -> str:
        """``host:port`` of the other end, for logs and thread names."""
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def peer_address(self) -> str:
        """The peer's one address in the logs: where it listens, as its Hello said (even a
        refused one), or the socket's other end if it said none."""
        port = self.protocol.claimed_port
        return f"{self.address[0]}:{port}" if port and not self.outbound else self.label

    @property
    def listen_address(self) -> str:
        """Where the peer can be dialled, as it said in its Hello."""
        hello = self.protocol.peer
        port = hello.listen_port if hello is not None else self.address[1]
        return f"{self.address[0]}:{port}" if port else f"{self.address[0]} (not listening)"

    @property
    def closed(self) -> bool:
        return self._closing is not None

    @property
    def relays(self) -> bool:
        """Whether the peer said (in its Hello) that it takes and forwards third strategies."""
        return self.protocol.peer_relays

    def send_sync(self, own: list[Position], relayed: list[Position], echo: list[Position]) -> None:
        """Send the peer our own positions, the relayed ones, the echo of its own, then SyncDone.

        Sent in slices as they are encoded, so the peer starts applying the first while this
        thread encodes the rest (a large book takes a while either way). Unbounded: a sync is
        as large as the book, and exempt from the send queue's limit.
        """
        positions = own + relayed + echo
        for start in range(0, len(positions), _SYNC_SLICE):
            chunk = positions[start : start + _SYNC_SLICE]
            if not self.send(encode_positions(chunk), bounded=False):
                return  # closed meanwhile
        self.send(encode(SyncDone(len(positions))), bounded=False)
        self.synced_out = True  # digests may follow
        logger.debug(
            "sent {} own, {} relayed and {} echoed positions to {}",
            len(own),
            len(relayed),
            len(echo),
            self.name,
        )

    def send_digest(self, count: int, digest: bytes) -> None:
        """Send the digest of our own positions, if the peer compares them (its Hello has the
        digest feature) and has had our sync. Called under the engine's publish lock, so it
        follows every change it covers."""
        if self.synced_out and self.protocol.peer_understands(FEATURE_DIGEST):
            self.send(encode(Digest(count, digest)))

    def ask_repair(self, count: int, digest: bytes) -> None:
        """Ask the peer for all its positions: our copy (``count``, ``digest``) differs."""
        if self.protocol.peer_understands(FEATURE_DIGEST):
            self.send(encode(RepairRequest(count, digest)), bounded=False)

    def send_repair(self, own: list[Position]) -> None:
        """Send the peer every one of our positions, bracketed by ``Repair``: it takes them as
        they are. Called under the engine's publish lock, so no live update falls inside."""
        if not self.protocol.peer_understands(FEATURE_DIGEST):
            return
        self.send(encode(Repair(False)), bounded=False)
        for start in range(0, len(own), _SYNC_SLICE):
            chunk = own[start : start + _SYNC_SLICE]
            if not self.send(encode_positions(chunk), bounded=False):
                return
        self.send(encode(Repair(True, len(own))), bounded=False)

    def alive_for(self) -> float:
        """How long this connection may stay silent and still count as alive: a few of the
        peer's heartbeat intervals (ours if it gave none)."""
        hello = self.protocol.peer
        interval = hello.heartbeat_ms / 1000 if hello and hello.heartbeat_ms else 0.0
        return _ALIVE_HEARTBEATS * (interval or self._peer.limits.heartbeat_interval)

    def say_bye(self, reason: str, code: int = 0) -> None:
        """Tell the peer why this side closes, if its Hello says it understands a Bye."""
        if self.protocol.peer_understands(FEATURE_BYE):
            self.send(encode(Bye(reason, code)), bounded=False)

    def __repr__(self) -> str:
        direction = "dialled" if self.outbound else "accepted"
        return f"<Connection {self.name or '?'} {self.label} {direction}>"

    def send(self, data: bytes, *, bounded: bool = True) -> bool:
        """Queue ``data`` (whole frames) for the writer; return False if the connection is closed.

        A bounded send that would take the queue above ``max_send_queue`` bytes closes the
        connection instead: a peer that cannot keep up is cut off, and resyncs when it returns.
        """
        size = len(data)
        with self._lock:
            if self._closing is not None:
                return False
            limit = self._peer.limits.max_send_queue
            pending = self._enqueued - max(self._written, self._exempt_until)
            # One batch larger than the limit still goes to a peer with nothing pending: the
            # limit bounds what waits for a peer, not the size of one send.
            overflow = bounded and pending > 0 and pending + size > limit
            if not overflow:
                self._enqueued += size
                if not bounded:
                    self._exempt_until = self._enqueued
                if self._direct and not self._items and not self._writing:
                    # The writer is idle: write now, without waking it, as much as the
                    # socket takes at once; the writer sends the rest, in order.
                    sent = self._write_now(data)
                    self._written += sent
                    self._last_direct = time.monotonic()
                    if sent < size:
                        self._items += 1
                        self._queue.put(data[sent:])
                else:
                    self._items += 1
                    self._queue.put(data)
        if overflow:
            self.close(
                f"peer is not keeping up: {pending + size} bytes would be queued for it,"
                f" above the limit of {limit}; it will resync when it reconnects"
            )
            return False
        return True

    def _wake_writer(self) -> None:
        with self._lock:
            self._items += 1
            self._queue.put(b"")

    def _write_now(self, data: bytes) -> int:
        """Write what the socket takes without blocking; caller holds the send lock.

        The socket has a timeout, so its file descriptor is non-blocking: ``os.write`` on it
        returns at once (``socket.send`` would first wait, up to the timeout, to be writable).
        """
        try:
            return os.write(self._sock.fileno(), data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0  # the writer meets the error on the rest, and reports it

    def close(self, reason: str | Closing, *, flush: bool = False) -> None:
        """Close the connection for ``reason`` (the first reason given is the one logged); a
        bare text is a connection dropped (``CloseReason.DROPPED``).

        With ``flush``, frames already queued are sent first; otherwise the socket is shut down
        at once, which wakes the reader's ``recv`` and the writer's ``sendall``. Idempotent.
        """
        if isinstance(reason, str):
            reason = Closing(CloseReason.DROPPED, reason)
        with self._lock:
            if self._closing is not None:
                return
            self._closing = reason
            self._items += 1
            self._queue.put(_STOP)
        if not flush:
            self.shutdown()

    def run(self) -> Closing:
        """Handshake, then read until the connection ends; return why it ended.

        Runs in the calling thread (an accepted connection's reader thread, or the connector
        that dialled it). Fires ACCEPTED or CONNECTED after the handshake, MESSAGE for each
        chunk of positions and SyncDone received, and CLOSED at the end if it was live.
        """
        self._run()
        assert self._closing is not None  # closed as the reader ended
        return self._closing

    def _run(self) -> str | Closing:
        """The reader loop of ``run()``: why it ended (``_finish`` has closed the connection)."""
        peer = self._peer
        limits = peer.limits
        sock = self._sock
        protocol = self.protocol
        reason: str | Closing = "closed"
        hello_deadline = time.monotonic() + limits.hello_timeout
        try:
            if isinstance(self._transport, TlsTransport):
                try:
                    protocol.certified_names = self._transport.handshake(hello_deadline)
                except ssl.SSLError as exc:
                    why = str(exc.reason or exc)
                    reason = f"TLS handshake failed: {why}{tls_hint(why)}"
                    return reason
                except TimeoutError:
                    reason = f"no TLS handshake within {limits.hello_timeout:g}s"
                    return reason
            self._writer.start()
            if hello := protocol.initiate():
                self.send(hello, bounded=False)
                self._spoke = True
            receive_data = protocol.receive_data
            data_to_send = protocol.data_to_send
            recv = self._transport.recv
            fire = peer.dispatcher.fire
            while True:
                if not self.ready:
                    # The Hello deadline is absolute: trickling bytes do not extend it.
                    left = hello_deadline - time.monotonic()
                    if left <= 0:
                        reason = f"no Hello within {limits.hello_timeout:g}s"
                        break
                    sock.settimeout(left)
                try:
                    data = recv()
                except TimeoutError:
                    if self.ready:
                        reason = f"peer silent for {self._idle_timeout():g}s"
                    else:
                        reason = f"no Hello within {limits.hello_timeout:g}s"
                    break
                if not data:
                    reason = (
                        "connection reset by peer"
                        if _reset(sock)
                        else "connection closed by the peer"
                    )
                    break
                if self._closing is not None:
                    break  # closed by another thread (replaced, too slow, stopping)
                now = time.monotonic()
                # Token bucket: refill for the time since the last read, then spend.
                self._tokens = min(
                    limits.max_peer_burst,
                    self._tokens + (now - self.last_heard) * limits.max_peer_rate,
                ) - len(data)
                self.last_heard = now
                if self._tokens < 0:
                    reason = (
                        f"peer is flooding: more than {limits.max_peer_rate} bytes/s"
                        f" beyond a burst of {limits.max_peer_burst}"
                    )
                    break
                events = receive_data(data)
                if self.ready and events and {*map(type, events)} == _POSITIONS:
                    fire(Event.MESSAGE, self, events)  # the common read: positions only
                    continue
                messages = []
                if not self.ready and (out := data_to_send()):
                    # Our Hello (if we accepted) and Auth proof, before anything after them.
                    self.send(out, bounded=False)
                    self._spoke = True
                bye = next((event for event in events if type(event) is Bye), None)
                if bye is not None:
                    # The peer says why it closes: nothing it sent with it counts.
                    self.bye = bye
                    if bye.code == BYE_STOPPING:
                        reason = _PEER_STOPPED
                    else:
                        reason = Closing(CloseReason.REFUSED, _BYE + bye_reason(bye))
                    break
                for event in events:
                    if type(event) is Ready:
                        connector = self.connector
                        if connector is not None and connector.strategy != self.name:
                            # Known even if refused: the connector then stands by.
                            connector.strategy = self.name
                            fire(Event.IDENTIFIED, connector.label, self.name)
                        refusal = peer.register(self)
                        if refusal is not None:
                            # Flushed, so the other side reads our Hello and learns who we are.
                            refused, tell, code = refusal
                            if tell:
                                self.say_bye(tell, code)
                            self.close(refused, flush=True)
                            reason = refused
                            return reason
                        self.ready = True
                        sock.settimeout(self._idle_timeout())
                        connector = self.connector
                        logger.log(
                            "DEBUG"
                            if connector is not None and connector.refused_as_duplicate
                            else "INFO",
                            "connected to {} at {} ({})",
                            self.name,
                            self.listen_address,
                            "dialled" if self.outbound else "accepted",
                        )
                        fire(Event.CONNECTED if self.outbound else Event.ACCEPTED, self)
                    else:
                        messages.append(event)
                if messages:
                    fire(Event.MESSAGE, self, messages)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            # What we have to say (our Hello, our Auth proof) still goes out, so the peer can
            # tell for itself what went wrong; and why we close, when that tells a stranger
            # nothing (see RemoteProtocolError.tell) and the peer understands a Bye.
            if out := protocol.data_to_send():
                self.send(out, bounded=False)
            if exc.tell:
                self.say_bye(exc.tell)
            if exc.answer:
                self.send(exc.answer, bounded=False)
            self.close(reason, flush=True)
        except ssl.SSLError as exc:  # after the handshake: e.g. the peer's alert
            why = str(exc.reason or exc)
            reason = f"TLS failed: {why}{tls_hint(why)}"
        except OSError as exc:
            reason = _describe(exc)
        except Exception as exc:  # a safety net: this branch should never run
            logger.opt(exception=True).error("reader for {} failed", self.label)
            reason = f"internal error: {exc!r}"
        finally:
            self._finish(reason)
        return reason

    def _idle_timeout(self) -> float:
        """Silence tolerated: our idle timeout, or longer for a peer with a slower heartbeat."""
        hello = self.protocol.peer
        peer_interval = 0.0 if hello is None else hello.heartbeat_ms / 1000
        return max(self._peer.limits.idle_timeout, _IDLE_HEARTBEATS * peer_interval)

    def join_writer(self, timeout: float | None = None) -> None:
        """Wait for the writer thread to end, if it was started (the reader starts it)."""
        if self._writer.ident is not None:
            self._writer.join(timeout)

    def _finish(self, reason: str | Closing) -> None:
        self.close(reason)
        self.join_writer()
        with contextlib.suppress(OSError):
            self._sock.close()
        peer = self._peer
        final = self._closing
        assert final is not None  # closed just now, if not before
        kind = final.kind
        peer.unregister(self, final)
        claimed = self.protocol.claimed
        # A name (and the address it gave) is the peer's claim until the handshake completes.
        proven = self.ready or self.protocol.state in (State.SYNC, State.LIVE)
        who = (
            self.name if proven else (f"{claimed!r} (claimed)" if claimed else "unidentified peer")
        )
        if self.ready:
            # Routine ends (stopping, a connection replaced, the peer said it stops) are INFO;
            # a loss is a WARNING.
            routine = kind in (CloseReason.REPLACED, CloseReason.PEER_STOPPED)
            level = "INFO" if peer.stopping or routine else "WARNING"
            if kind is CloseReason.REFUSED and self.outbound:
                # A refusal with a reason: said once by the connector, not at every redial.
                level = "DEBUG"
            logger.log(level, "connection with {} at {} closed: {}", who, self.peer_address, final)
            peer.dispatcher.fire(Event.CLOSED, self, final.detail)
        elif kind not in (CloseReason.STOPPING, CloseReason.PEER_STOPPED) and not self.outbound:
            # A dialled connection that failed is reported by its connector, once per change.
            # A refusal is counted even when the stop began since (its reader may finish
            # after the stop started): stop() joins the readers before it sums the unsaid.
            # Refusals of inbound connections are throttled: a named peer once a minute per
            # address and reason, anything unidentified once a minute per address, each
            # line saying how many like it went unsaid; the rest at DEBUG.
            level = "INFO" if kind is CloseReason.DUPLICATE else "WARNING"
            detail = final.detail
            key = (self.address[0], who, detail) if claimed else (self.address[0], None, None)
            # A second node of a connected name was already named in an ERROR (throttled).
            unsaid = None if kind is CloseReason.SECOND_NODE else peer.refusals.admit(key)
            if unsaid is None:
                logger.debug("connection from {} at {} refused: {}", who, self.peer_address, final)
            else:
                logger.log(
                    level,
                    "connection from {} at {} refused: {}{}",
                    who,
                    self.peer_address,
                    final,
                    _more(unsaid, peer.refusals.interval),
                )

    def _send_frames(self) -> None:
        """Writer thread: drain the queue, write everything queued in one ``sendall``."""
        sendall = self._transport.sendall
        get = self._queue.get
        interval = self._peer.limits.heartbeat_interval
        try:
            while True:
                try:
                    item = get(timeout=interval)
                except queue.Empty:
                    with self._lock:
                        if self._items or not self._spoke:  # queued just now, or no Hello yet
                            continue
                        if time.monotonic() - self._last_direct < interval:
                            continue  # not idle: frames went out directly meanwhile
                        self._writing = True
                    sendall(_HEARTBEAT)
                    with self._lock:
                        self._writing = False
                    continue
                chunks = [item]
                with contextlib.suppress(queue.Empty):
                    while True:
                        chunks.append(self._queue.get_nowait())
                with self._lock:
                    self._items -= len(chunks)
                    self._writing = True
                stop = _STOP in chunks
                data = b"".join(chunk for chunk in chunks if chunk is not _STOP)
                if not data:
                    sendall(b"")  # a wake-up: flush what TLS has to send on its own
                with memoryview(data) as view:
                    for start in range(0, len(data), _SEND_SLICE):
                        sendall(view[start : start + _SEND_SLICE])
                with self._lock:
                    self._written += len(data)
                    self._writing = False
                if stop:
                    break
        except OSError as exc:
            self.close(f"send failed: {_describe(exc)}")
        except Exception as exc:  # a safety net: this branch should never run
            logger.opt(exception=True).error("writer for {} failed", self.label)
            self.close(f"internal error: {exc!r}")
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Shut the socket down both ways: wakes a blocked ``recv`` and ``sendall``."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
