"""The connection protocol as a pure state machine: what each side may send, and when.

Sans-I/O, in the manner of h11 and websockets: the reader feeds received bytes to
``receive_data`` and gets back the events to act on; the frames to send are returned by
``hello()``. Every rule about who may send what in which state lives in ``_RULES``; anything
not listed there is the peer's fault and raises ``RemoteProtocolError``.

States of one connection, as seen by this side::

    HELLO --Hello--> SYNC --SyncDone--> LIVE
      (any error, in any state) --> CLOSED

In SYNC the peer sends its own positions, then the positions it holds of our strategy (the
echo, so that a node that lost its store gets its positions back), then SyncDone. In LIVE it
sends updates of its own positions only (or, with relay, of any strategy but ours).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

from .types import Position, invalid_position_reason, valid_strategy
from .wire import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Decoder,
    Heartbeat,
    Hello,
    Message,
    SyncDone,
    WireError,
    encode,
    parse,
)

__all__ = [
    "LocalProtocolError",
    "Protocol",
    "Ready",
    "RemoteProtocolError",
    "State",
]


class RemoteProtocolError(Exception):
    """The peer broke the protocol: close that connection and log the reason once."""


class LocalProtocolError(Exception):
    """This side misused the protocol object: a bug, never caused by a peer."""


class State(enum.Enum):
    HELLO = "awaiting hello"
    SYNC = "syncing"
    LIVE = "live"
    CLOSED = "closed"


class Ready(NamedTuple):
    """The handshake is complete: ``hello`` is what the peer said about itself."""

    hello: Hello


Event = Ready | Position | SyncDone


class Protocol:
    """One connection's protocol state, for a node running strategy ``own``.

    ``relay`` lets a live peer send positions of strategies other than its own (a partial
    mesh); positions of our own strategy are accepted only during the peer's initial sync.
    """

    def __init__(
        self,
        own: str,
        *,
        listen_port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        relay: bool = False,
        heartbeat_ms: int = 0,
    ) -> None:
        self.own = own
        self.listen_port = listen_port
        self.relay = relay
        self.heartbeat_ms = heartbeat_ms
        self.state = State.HELLO
        self.peer: Hello | None = None
        self._decoder = Decoder(max_frame_size)

    @property
    def peer_name(self) -> str | None:
        """The strategy the peer said it runs, once its Hello has been accepted."""
        return None if self.peer is None else self.peer.strategy

    @property
    def peer_relays(self) -> bool:
        """Whether the peer accepts positions of strategies other than ours and its own."""
        return self.peer is not None and self.peer.relay

    def hello(self) -> bytes:
        """The frame this side sends first."""
        return encode(
            Hello(
                self.own,
                PROTOCOL_VERSION,
                self.listen_port,
                relay=self.relay,
                heartbeat_ms=self.heartbeat_ms,
            )
        )

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete, in order.

        Raises ``RemoteProtocolError`` (and moves to CLOSED) on anything the peer may not
        send; events before the offending message in ``data`` are lost with the connection.
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("receive_data() after the connection failed")
        try:
            payloads = self._decoder.feed(data)
            events: list[Event] = []
            for payload in payloads:
                message = parse(payload)
                rule = _RULES.get((self.state, type(message)))
                if rule is None:
                    raise RemoteProtocolError(
                        f"{type(message).__name__} not allowed while {self.state.value}"
                    )
                event = rule(self, message)
                if event is not None:
                    events.append(event)
            return events
        except WireError as exc:
            self.state = State.CLOSED
            raise RemoteProtocolError(str(exc)) from exc
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise

    def fail(self) -> None:
        """Mark the connection as failed (closed) from outside."""
        self.state = State.CLOSED

    # Rules: one method per (state, message) pair that is allowed.

    def _on_hello(self, hello: Message) -> Event:
        assert isinstance(hello, Hello)
        if hello.protocol_version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"peer speaks protocol version {hello.protocol_version},"
                f" this node speaks {PROTOCOL_VERSION}"
            )
        if not valid_strategy(hello.strategy):
            raise RemoteProtocolError(f"invalid strategy name {hello.strategy[:80]!r} in Hello")
        if hello.strategy == self.own:
            raise RemoteProtocolError(
                f"peer claims this node's own strategy {self.own!r}"
                " (two nodes started with one name, or a node dialling itself)"
            )
        if hello.listen_port > 65535:
            raise RemoteProtocolError(f"invalid listen port {hello.listen_port} in Hello")
        self.peer = hello
        self.state = State.SYNC
        return Ready(hello)

    def _on_sync_position(self, position: Message) -> Event:
        assert isinstance(position, Position)
        self._check_position(position)
        owner = position.strategy
        if owner == self.peer_name or owner == self.own or self.relay:
            return position
        raise RemoteProtocolError(
            f"{self.peer_name} sent a position of {owner} (not its own; relay is off)"
        )

    def _on_live_position(self, position: Message) -> Event:
        assert isinstance(position, Position)
        self._check_position(position)
        owner = position.strategy
        if owner == self.peer_name or (self.relay and owner != self.own):
            return position
        if owner == self.own:
            raise RemoteProtocolError(
                f"{self.peer_name} sent a position of this node's own strategy outside its sync"
                f" ({position.symbol} {position.net_position} @ {position.timestamp})"
            )
        raise RemoteProtocolError(
            f"{self.peer_name} sent a position of {owner} (not its own; relay is off)"
        )

    def _on_sync_done(self, done: Message) -> Event:
        assert isinstance(done, SyncDone)
        self.state = State.LIVE
        return done

    def _on_heartbeat(self, heartbeat: Message) -> None:
        return None

    def _check_position(self, position: Position) -> None:
        reason = invalid_position_reason(position)
        if reason is not None:
            raise RemoteProtocolError(reason)


_Rule = Callable[[Protocol, Message], "Event | None"]

# Who may send what in which state. Anything absent is a protocol error.
_RULES: dict[tuple[State, type], _Rule] = {
    (State.HELLO, Hello): Protocol._on_hello,
    (State.SYNC, Position): Protocol._on_sync_position,
    (State.SYNC, SyncDone): Protocol._on_sync_done,
    (State.SYNC, Heartbeat): Protocol._on_heartbeat,
    (State.LIVE, Position): Protocol._on_live_position,
    (State.LIVE, Heartbeat): Protocol._on_heartbeat,
}
