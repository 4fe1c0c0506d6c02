"""Peer: the node's sockets, and the registry of its connections. It fires events and knows
nothing of positions.

Threads, one job each:

- ``accept``: accepts inbound connections and starts a reader thread for each;
- ``redial-HOST:PORT``: one per configured address; dials, runs that connection's reader loop
  in place, and redials forever after a drop, with exponential backoff and jitter.

Each connection (``connection.py``) has its reader and its writer thread. At most one live
connection per peer strategy (see ``Peer.register``).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Final

from loguru import logger

from .connection import (
    _STOPPING,
    CloseReason,
    Closing,
    Connection,
    Limits,
    _describe,
    _more,
)
from .dispatcher import EventDispatcher
from .links import Link, PeerStatus
from .throttle import Throttle
from .types import Position
from .wire import BYE_DUPLICATE, BYE_STOPPING, encode_position, encode_positions

__all__ = ["Connection", "Limits", "Peer", "PeerStatus"]

_REFUSAL_LOG_INTERVAL: Final = 60.0  # seconds before the same refusal is logged again


class _Connector:
    """A configured address and what we know of it; its thread redials it forever."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.strategy: str | None = None  # learnt from the first Hello received there
        self.state = "not yet dialled"
        # The last attempt ended with the peer's Bye saying another node has this name.
        self.refused_as_duplicate = False
        self.conn: Connection | None = None
        self.thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


class Peer:
    """The listening socket, the connectors and every live connection of one node."""

    def __init__(
        self,
        name: str,
        dispatcher: EventDispatcher,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        peers: tuple[tuple[str, int], ...] = (),
        limits: Limits | None = None,
        relay: bool = False,
        secrets: list[bytes] | None = None,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.limits = limits or Limits()
        self.relay = relay
        self.secrets = secrets  # the cluster secrets: the first proves, all are accepted
        self.tls = tls  # (server, client) contexts for mutual TLS
        # Random per start: a peer tells this process from another claiming the same name.
        self.instance = os.urandom(8)
        self.bind = bind
        self.port = port
        self._connectors = [_Connector(host, p) for host, p in peers]
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._random = random.Random()  # redial jitter (its own: never the global generator)
        # Mutex protecting _live, _all and _readers; _changed signals a change of _live.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._live: dict[str, Connection] = {}  # peer strategy -> its one live connection
        self._all: set[Connection] = set()  # every open connection, handshaken or not
        self._readers: set[threading.Thread] = set()
        # Inbound refusals: said once per interval per (host, who, reason), or per host for
        # unidentified peers; see Connection._finish.
        self.refusals = Throttle(_REFUSAL_LOG_INTERVAL)
        # Second nodes claiming a connected strategy: (strategy, address) once per interval.
        self.duplicates = Throttle(_REFUSAL_LOG_INTERVAL)
        # Peers that dialled us and left: strategy -> (address, state), for status().
        self._departed: dict[str, tuple[str, str]] = {}
        # Snapshot of _live's values, replaced (never mutated) under the lock, read without it.
        self._live_snapshot: tuple[Connection, ...] = ()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def listen(self) -> None:
        """Bind the listening socket; raises ``OSError`` if that fails (e.g. port in use)."""
        listener = socket.create_server((self.bind, self.port), backlog=128)
        self._listener = listener
        self.port = listener.getsockname()[1]

    def start(self) -> None:
        """Start accepting (``listen()`` first if not done yet) and dialling."""
        if self._listener is None:
            self.listen()
        logger.info("{} listening on {}:{}", self.name, self.bind, self.port)
        self._accept_thread = threading.Thread(target=self._accept, name="accept", daemon=True)
        self._accept_thread.start()
        for connector in self._connectors:
            connector.thread = threading.Thread(
                target=self._redial,
                args=(connector,),
                name=f"redial-{connector.label}",
                daemon=True,
            )
            connector.thread.start()

    def stop(self, *, flush_timeout: float = 1.0) -> None:
        """Close everything and join every thread this Peer started. Idempotent.

        Frames already queued are flushed for up to ``flush_timeout`` seconds first.
        """
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._changed.notify_all()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join()
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            # Tell the peer (if it understands) that this is a stop, not a loss: it logs it
            # calmly. Also mid-handshake: its end of the connection may be live already.
            conn.say_bye(f"{self.name} is stopping", BYE_STOPPING)
            conn.close(_STOPPING, flush=True)
        deadline = time.monotonic() + flush_timeout
        for conn in conns:
            conn.join_writer(max(0.0, deadline - time.monotonic()))
            conn.shutdown()
        for connector in self._connectors:
            if connector.thread is not None:
                connector.thread.join()
        with self._lock:
            readers = list(self._readers)
        for thread in readers:
            thread.join()
        for key, count in self.refusals.unsaid():
            what = f"{count} more connection(s)"
            if isinstance(key, tuple) and len(key) == 3:
                host, who, reason = key
                what += f" from {who or 'unidentified peers'} at {host} refused"
                what += f" ({reason})" if reason else ""
            else:
                what += " refused for want of room"
            logger.info("{} (not shown)", what)

    def configured(self) -> list[str | None]:
        """The strategy at each configured address, as far as known (None: not yet)."""
        return [connector.strategy for connector in self._connectors]

    def connections(self) -> tuple[Connection, ...]:
        """Every live connection (handshake complete), one per peer strategy."""
        return self._live_snapshot

    def links(self) -> tuple[Connection, ...]:
        """The seam's name for ``connections()``."""
        return self._live_snapshot

    def publish(self, own: list[Position], relayed: Sequence[tuple[Position, Link]] = ()) -> int:
        """Queue ``own`` on every live connection, and each of ``relayed`` on every relaying
        connection but its source's and its owner's; return the positions queued, each copy
        counted. Only changes are sent, so relaying stops by itself."""
        if not relayed:
            if not own:
                return 0
            return len(own) * self.broadcast(encode_positions(own))
        frames = [(encode_position(p), p.strategy, source) for p, source in relayed]
        data = encode_positions(own)
        sent = 0
        for conn in self._live_snapshot:
            parts = [data] if data else []
            count = len(own)
            if conn.relays:
                for frame, owner, source in frames:
                    if source is not conn and owner != conn.name:
                        parts.append(frame)
                        count += 1
            if parts and conn.send(b"".join(parts)):
                sent += count
        return sent

    def broadcast(self, data: bytes) -> int:
        """Queue ``data`` on every live connection; return on how many."""
        return sum(conn.send(data) for conn in self._live_snapshot)

    def status(self) -> list[PeerStatus]:
        """What ``peers`` shows: configured addresses, then peers that dialled us (or left)."""
        now = time.monotonic()
        with self._lock:
            live = dict(self._live)
            departed = dict(self._departed)
        rows = []
        for connector in self._connectors:
            conn = live.pop(connector.strategy, None) if connector.strategy else None
            if conn is not None:
                how = "dialled" if conn.outbound else "they dialled"
                rows.append(
                    PeerStatus(
                        conn.name, connector.label, f"connected ({how})", now - conn.last_heard
                    )
                )
            else:
                rows.append(PeerStatus(connector.strategy, connector.label, connector.state, None))
        known = {row.name for row in rows} | live.keys()
        for name, (address, state) in sorted(departed.items()):
            if name not in known:
                rows.append(PeerStatus(name, address, state, None))
        for conn in live.values():
            how = "dialled" if conn.outbound else "they dialled"
            rows.append(
                PeerStatus(
                    conn.name, conn.listen_address, f"connected ({how})", now - conn.last_heard
                )
            )
        return rows

    # Connection registry.

    def _track(self, conn: Connection) -> bool:
        """Add a new connection to the open set; False if the node is stopping."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._all.add(conn)
            return True

    def register(self, conn: Connection) -> tuple[Closing, str, int] | None:
        """Make ``conn`` the live connection of its strategy; if refused, return why (for
        our log), what to tell the peer (if anything) and the ``Bye`` code. Called by the
        connection's reader when its handshake completes.

        One live connection per strategy. When both Hellos carry an instance id (random per
        process start) and they differ, ``conn`` comes from another process than the live
        connection: if that one is alive (heard from within a few of its heartbeats), a
        second node claims the name, and the one already connected keeps its place; if it
        is silent (a half-open connection), the node restarted, and ``conn`` replaces it.
        Otherwise (the same process, or a peer of the first release, which sends no
        instance): a newer connection in the same direction replaces the older (a restarted
        peer redials before its old socket's EOF is read), and between two connections in
        opposite directions (both nodes dialled), both nodes keep the one dialled by the
        smaller strategy name.
        """
        name = conn.name
        hello = conn.protocol.peer
        assert name is not None and hello is not None
        with self._lock:
            if self._stopping.is_set():
                return _STOPPING, "", 0
            old = self._live.get(name)
            why = None  # why ``old`` is replaced, if it is
            if old is not None:
                assert old.protocol.peer is not None
                instance = old.protocol.peer.instance
                silent = time.monotonic() - old.last_heard
                if hello.instance and instance and hello.instance != instance:
                    if not old.closed and silent < old.alive_for():
                        return self._second_node(conn, old, silent)
                    why = f"replaced by {name} restarted (this one silent for {silent:.1f}s)"
                elif old.outbound != conn.outbound:
                    keep_outbound = self.name < name
                    if conn.outbound != keep_outbound:
                        dialler = self.name if keep_outbound else name
                        duplicate = (
                            f"already connected to {name}; keeping the connection dialled by"
                            f" {dialler}"
                        )
                        return Closing(CloseReason.DUPLICATE, duplicate), "", 0
                    why = f"replaced by the connection dialled by {min(self.name, name)}"
                elif old.listen_address != conn.listen_address and not old.closed:
                    # A peer of the first release (no instance id): a restarted peer comes
                    # back where it listened before; another address, while the first is
                    # still connected, is a second node with the same name.
                    self._say_second_node(name, old.listen_address, conn.listen_address)
                    why = f"replaced by a connection from another node claiming {name}"
                else:
                    why = f"replaced by a newer connection from {name}"
            self._live[name] = conn
            self._live_snapshot = tuple(self._live.values())
            self._changed.notify_all()
        if old is not None and why is not None:
            old.close(Closing(CloseReason.REPLACED, why))
        return None

    def _say_second_node(self, name: str, first: str, second: str) -> None:
        """The ERROR for two first-release nodes of one name (no instance ids): throttled."""
        unsaid = self.duplicates.admit((name, second))
        if unsaid is not None:
            logger.error(
                "two nodes claim strategy {}: one at {}, another at {}; they replace each"
                " other's connection: give every node its own name{}",
                name,
                first,
                second,
                _more(unsaid, self.duplicates.interval),
            )

    def _second_node(
        self, conn: Connection, old: Connection, silent: float
    ) -> tuple[Closing, str, int]:
        """Why ``conn`` is refused: another process claims the strategy of the live ``old``,
        which keeps its place. Said in a throttled ERROR. Caller holds the registry lock."""
        name = conn.name
        unsaid = self.duplicates.admit((name, conn.listen_address))
        if unsaid is not None:
            logger.error(
                "two nodes claim strategy {}: the one at {} (connected, heard {:.1f}s ago)"
                " keeps its place; refused the other at {} ({}): give every node its own"
                " name, and stop the one that should not run{}",
                name,
                old.listen_address,
                silent,
                conn.listen_address,
                "dialled" if conn.outbound else "it dialled",
                _more(unsaid, self.duplicates.interval),
            )
        why = f"another node named {name} is already connected, from {old.listen_address}"
        tell = (
            f"{self.name} is already connected to another node named {name}, at"
            f" {old.listen_address}: give every node its own name"
        )
        return Closing(CloseReason.SECOND_NODE, why), tell, BYE_DUPLICATE

    def unregister(self, conn: Connection, reason: Closing) -> None:
        """Forget ``conn``, which ended for ``reason``; called by the connection as it ends."""
        with self._lock:
            self._all.discard(conn)
            if conn.name is not None and self._live.get(conn.name) is conn:
                del self._live[conn.name]
                self._live_snapshot = tuple(self._live.values())
                self._changed.notify_all()
                if not conn.outbound:
                    self._departed[conn.name] = (conn.listen_address, f"disconnected ({reason})")

    # Thread bodies.

    def _accept(self) -> None:
        """Accept thread: one reader thread per inbound connection."""
        assert self._listener is not None
        try:
            while True:
                try:
                    sock, address = self._listener.accept()
                except OSError as exc:
                    if self._stopping.is_set():
                        return
                    logger.warning("accept failed: {}", _describe(exc))
                    self._stopping.wait(0.1)  # e.g. out of file descriptors: do not spin
                    continue
                with self._lock:
                    full = len(self._all) >= self.limits.max_connections
                if full:
                    unsaid = self.refusals.admit(("full",))
                    if unsaid is not None:
                        logger.warning(
                            "refusing connection from {}:{}: {} connections open (the maximum){}",
                            address[0],
                            address[1],
                            self.limits.max_connections,
                            _more(unsaid, self.refusals.interval),
                        )
                    sock.close()
                    continue
                conn = Connection(self, sock, address[:2])
                if not self._track(conn):
                    sock.close()
                    return
                thread = threading.Thread(
                    target=self._read_accepted,
                    args=(conn,),
                    name=f"recv-{conn.label}",
                    daemon=True,
                )
                with self._lock:
                    self._readers.add(thread)
                thread.start()
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("accept thread failed")

    def _read_accepted(self, conn: Connection) -> None:
        try:
            conn.run()
        finally:
            with self._lock:
                self._readers.discard(threading.current_thread())

    def _redial(self, connector: _Connector) -> None:
        """Connector thread: dial, run the connection, and redial forever after it ends.

        Logs changes of state (first failure of a kind, reconnection), not every attempt.
        """
        limits = self.limits
        backoff = limits.backoff_min
        reported = ""  # the kind of failure last logged: "unreachable" or "refused"
        try:
            while not self._stopping.is_set():
                self._stand_by(connector)
                if self._stopping.is_set():
                    break
                connector.state = "connecting"
                try:
                    sock = socket.create_connection(
                        (connector.host, connector.port), timeout=limits.connect_timeout
                    )
                except OSError as exc:
                    connector.state = f"unreachable ({_describe(exc)})"
                    if reported != "unreachable":
                        reported = "unreachable"
                        logger.info(
                            "cannot reach {}: {}; will keep trying",
                            connector.label,
                            _describe(exc),
                        )
                else:
                    conn = Connection(
                        self, sock, (connector.host, connector.port), connector=connector
                    )
                    if not self._track(conn):
                        sock.close()
                        break
                    connector.conn = conn
                    closing = conn.run()
                    connector.conn = None
                    reason = closing.detail
                    refused = closing.kind is CloseReason.REFUSED
                    connector.refused_as_duplicate = (
                        refused and conn.bye is not None and conn.bye.code == BYE_DUPLICATE
                    )
                    if refused and not self._stopping.is_set():
                        # The peer said why it refuses us, even if the handshake completed: no
                        # quick redial, and said once, not at each attempt (at ERROR for a
                        # second node of one name: one of the two must not run).
                        connector.state = f"refused ({reason})"
                        if reported != reason:
                            reported = reason
                            logger.log(
                                "ERROR" if connector.refused_as_duplicate else "WARNING",
                                "{} refused this node: {}; will keep trying",
                                connector.label,
                                reason,
                            )
                    elif conn.ready or closing.kind is CloseReason.PEER_STOPPED:
                        backoff = limits.backoff_min
                        reported = ""
                        connector.state = f"disconnected ({reason})"
                    elif not self._stopping.is_set():
                        connector.state = f"refused ({reason})"
                        duplicate = closing.kind is CloseReason.DUPLICATE
                        if reported != "refused" and not duplicate:
                            reported = "refused"
                            logger.warning(
                                "{} refused the connection: {}; will keep trying",
                                connector.label,
                                reason,
                            )
                if self._stopping.wait(backoff * self._random.uniform(0.5, 1.0)):
                    break
                backoff = min(backoff * 2, limits.backoff_max)
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("connector for {} failed", connector.label)

    def _stand_by(self, connector: _Connector) -> None:
        """Wait while the strategy at this address is connected through another connection."""
        with self._changed:
            while (
                not self._stopping.is_set()
                and connector.strategy is not None
                and connector.strategy in self._live
            ):
                connector.state = "standing by (connected the other way)"
                self._changed.wait()
