"""The connection protocol as a pure state machine: what each side may send, and when.

Sans-I/O, in the manner of h11 and websockets: the reader feeds received bytes to
``receive_data`` and gets back the events to act on; the frames to send are ``initiate()``
first, then whatever ``data_to_send()`` returns after each ``receive_data``. Every rule about
who may send what in which state lives in ``_RULES``; anything not listed there is the peer's
fault and raises ``RemoteProtocolError``.

States of one connection, as seen by this side::

    HELLO --Hello--> SYNC --SyncDone--> LIVE
      |                ^
      +--Hello--> AUTH +--Auth (valid proof)     (with a cluster secret)
      (any error, in any state) --> CLOSED

The side that dialled speaks first; the side that accepted sends its Hello only once it has
the dialler's. With a cluster secret, both Hellos carry a fresh nonce, each side then sends
an ``Auth`` proof (see ``auth.py``), and the connection is Ready only once the peer's proof
verifies: not one position is sent or accepted before that. Speaking in turn is what defeats
a relay: an outsider that dials two nodes must commit to a nonce on each connection before it
learns the nonce it would need there, so it cannot make one node's proof valid for the other.

In SYNC the peer sends its own positions, then the positions it holds of our strategy (the
echo, so that a node that lost its store gets its positions back), then SyncDone. In LIVE it
sends updates of its own positions only (or, with relay, of any strategy but ours), and, if
both Hellos have the digest feature, Digests of its own positions, RepairRequests, and
repairs (its own positions between two Repair messages). A Bye, in any state, closes.

Before the peer has proven itself (HELLO, AUTH) a frame may be 4 KiB at most; its Hello may
not ask for a heartbeat slower than a minute.
"""

from __future__ import annotations

import enum
import math
import operator
import re
from collections.abc import Callable
from typing import Final, NamedTuple

from . import auth
from .types import (
    MAX_SYMBOL_LENGTH,
    MAX_TIMESTAMP,
    SYMBOL_CHARS,
    Position,
    invalid_position_reason,
    valid_strategy,
    valid_symbol,
)
from .wire import (
    DEFAULT_MAX_FRAME_SIZE,
    FEATURES,
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Decoder,
    Digest,
    Heartbeat,
    Hello,
    Message,
    Repair,
    RepairRequest,
    SyncDone,
    WireError,
    encode,
    parse_many,
    parse_positions,
)

__all__ = [
    "MAX_FIRST_FRAME",
    "MAX_PEER_HEARTBEAT_MS",
    "LocalProtocolError",
    "Protocol",
    "Ready",
    "RemoteProtocolError",
    "State",
]


# Before a peer has proven itself (its Hello accepted and, with a cluster secret, its proof
# verified) its frames may be this large at most: a Hello or an Auth takes well under 200
# bytes, so a stranger cannot make the node buffer more than this before it is known.
MAX_FIRST_FRAME: Final = 4096
# Valid symbols, each followed by a newline: a whole read's symbols checked in one call.
_SYMBOL_LINES: Final = re.compile(rf"(?:[{SYMBOL_CHARS}]{{1,{MAX_SYMBOL_LENGTH}}}\n)*")
_STRATEGY_OF: Final = operator.itemgetter(0)
_SYMBOL_OF: Final = operator.itemgetter(1)
_NET_OF: Final = operator.itemgetter(2)
_TIMESTAMP_OF: Final = operator.itemgetter(3)
# The slowest heartbeat a peer may announce (the node's own --heartbeat has the same bound):
# silence is judged over 5 of the peer's intervals, so this bounds how long a silent
# connection is kept.
MAX_PEER_HEARTBEAT_MS: Final = 60_000


class RemoteProtocolError(Exception):
    """The peer broke the protocol: close that connection and log the reason once.

    ``tell``, when given, is what the peer may be told of it (in a ``Bye``): only for a peer
    whose Hello passed the checks that keep strangers out, and only what it cannot abuse.
    ``answer``, when given, is sent as it is: to a peer that speaks TLS to a node that does
    not, so that its TLS layer fails at once with a reason that says so.
    """

    def __init__(self, message: str, *, tell: str | None = None, answer: bytes = b"") -> None:
        super().__init__(message)
        self.tell = tell
        self.answer = answer


class LocalProtocolError(Exception):
    """This side misused the protocol object: a bug, never caused by a peer."""


class State(enum.Enum):
    HELLO = "awaiting hello"
    AUTH = "authenticating"
    SYNC = "syncing"
    LIVE = "live"
    CLOSED = "closed"

    # Members are singletons: hashed by identity in C (Enum's own hash is a Python call, and
    # receive_data looks the state up in a set at every read).
    __hash__ = object.__hash__


# The states in which the peer sends its own positions, each taken as it is if valid.
_POSITIONS_STATES: Final = frozenset({State.SYNC, State.LIVE})


class Ready(NamedTuple):
    """The handshake is complete: ``hello`` is what the peer said about itself."""

    hello: Hello


Event = Ready | Position | SyncDone | Digest | RepairRequest | Repair | Bye

_MAX_BYE_REASON = 300  # characters of a peer's Bye reason that are logged


def bye_reason(bye: Bye) -> str:
    """A peer's Bye reason, fit for one log line: printable ASCII, at most 300 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in bye.reason[:_MAX_BYE_REASON])
    return text or "no reason given"


class Protocol:
    """One connection's protocol state, for a node running strategy ``own``.

    ``relay`` lets a live peer send positions of strategies other than its own (a partial
    mesh); positions of our own strategy are accepted only during the peer's initial sync.
    With ``secrets`` (the first proves, all are accepted) the peer must prove it holds one.
    ``certified_names``, when TLS verified the peer's certificate, are the strategies that
    certificate may claim in its Hello.
    """

    def __init__(
        self,
        own: str,
        *,
        listen_port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        relay: bool = False,
        heartbeat_ms: int = 0,
        secrets: list[bytes] | None = None,
        dialler: bool = True,
        instance: bytes = b"",
        features: int = FEATURES,
    ) -> None:
        self.own = own
        self.instance = instance
        self.features = features
        self.dialler = dialler
        self.listen_port = listen_port
        self.relay = relay
        self.heartbeat_ms = heartbeat_ms
        self.secrets = secrets
        self.certified_names: frozenset[str] | None = None
        self.claimed: str | None = None  # the name in the peer's Hello, even if refused
        self.claimed_features = 0  # the features in the peer's Hello, even if refused
        self.claimed_port = 0  # the listen port in the peer's Hello, even if refused
        self.repairing = False  # between the peer's Repair{done=false} and Repair{done=true}
        self.state = State.HELLO
        self.peer: Hello | None = None
        self._nonce = auth.new_nonce() if secrets else b""
        self._max_frame_size = max_frame_size  # once the peer has proven itself
        self._decoder = Decoder(min(max_frame_size, MAX_FIRST_FRAME))
        self._outgoing: list[bytes] = []

    @property
    def peer_name(self) -> str | None:
        """The strategy the peer said it runs, once its Hello has been accepted."""
        return None if self.peer is None else self.peer.strategy

    def peer_understands(self, feature: int) -> bool:
        """Whether the peer's Hello says it understands ``feature`` (a ``FEATURE_*`` bit)."""
        return bool(self.claimed_features & feature)

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
                nonce=self._nonce,
                relay=self.relay,
                heartbeat_ms=self.heartbeat_ms,
                instance=self.instance,
                features=self.features,
            )
        )

    def initiate(self) -> bytes:
        """What this side sends as the connection opens: its Hello if it dialled, else
        nothing (it answers the dialler's Hello)."""
        return self.hello() if self.dialler else b""

    def data_to_send(self) -> bytes:
        """Frames this side must send now (the Auth proof), emptied by the call."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete, in order.

        Raises ``RemoteProtocolError`` (and moves to CLOSED) on anything the peer may not
        send; events before the offending message in ``data`` are lost with the connection.
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("receive_data() after the connection failed")
        if (
            self.state is State.HELLO
            and data[:2] in (b"\x16\x03", b"\x15\x03")  # a TLS handshake or alert record
            and not self._decoder.buffered
        ):
            self.state = State.CLOSED
            raise RemoteProtocolError(
                "the peer speaks TLS and this node does not: give both the same --tls-* options",
                answer=encode(Bye("this node does not speak TLS")),
            )
        try:
            if self.state in _POSITIONS_STATES and self.peer is not None:
                # The common read once live (or syncing): nothing but the peer's own valid
                # positions, as our encoder writes them, cut and parsed together (what the
                # rules below accept of each, one at a time); then the same in any encoding,
                # checked together.
                fast, payloads = self._decoder.feed_positions(data, self.peer.strategy)
                if fast is not None:
                    return fast  # type: ignore[return-value]
                positions = parse_positions(payloads)
                if positions is not None and self._own_and_valid(positions):
                    return positions  # type: ignore[return-value]
            else:
                payloads = self._decoder.feed(data)
            events: list[Event] = []
            state = None
            rules: dict[type, _Rule] = {}
            for message in parse_many(payloads):
                if self.state is not state:
                    state = self.state
                    rules = _RULES_BY_STATE[state]
                rule = rules.get(type(message))
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

    def _own_and_valid(self, positions: list[Position]) -> bool:
        """Whether every one of ``positions`` is the peer's own and valid, as
        ``_on_live_position`` and ``_on_sync_position`` would each find it: checked by C
        loops over the whole list (False may only mean: check them one at a time)."""
        peer = self.peer
        if len(positions) == 1:  # a lone position (W2's case): checked as one
            strategy, symbol, net, timestamp = positions[0]
            return (
                peer is not None
                and strategy == peer.strategy
                and net - net == 0.0  # finite
                and 0 < timestamp <= MAX_TIMESTAMP
                and valid_symbol(symbol)
            )
        if not positions:
            return True
        if peer is None:
            return False
        return (
            all(map(peer.strategy.__eq__, map(_STRATEGY_OF, positions)))
            # A sum of finite numbers may overflow (then one at a time): an infinite or NaN
            # term always makes the sum so.
            and math.isfinite(sum(map(_NET_OF, positions)))
            and min(map(_TIMESTAMP_OF, positions)) > 0
            and max(map(_TIMESTAMP_OF, positions)) <= MAX_TIMESTAMP
            and _SYMBOL_LINES.fullmatch("\n".join(map(_SYMBOL_OF, positions)) + "\n") is not None
        )

    # Rules: one method per (state, message) pair that is allowed.

    def _on_hello(self, hello: Message) -> Event | None:
        assert isinstance(hello, Hello)
        self.claimed = hello.strategy[:80]  # for the log, before any check
        self.claimed_features = hello.features
        self.claimed_port = hello.listen_port if hello.listen_port <= 65535 else 0
        if not self.dialler:
            # Our answer, queued before any check: the dialler has committed its nonce, and a
            # peer we refuse can then tell for itself why (our Hello says what we require).
            self._outgoing.append(self.hello())
        if hello.protocol_version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"peer speaks protocol version {hello.protocol_version},"
                f" this node speaks {PROTOCOL_VERSION}",
                tell=f"{self.own} speaks protocol version {PROTOCOL_VERSION} only",
            )
        if not valid_strategy(hello.strategy):
            raise RemoteProtocolError(f"invalid strategy name {hello.strategy[:80]!r} in Hello")
        if hello.strategy == self.own:
            raise RemoteProtocolError(
                f"peer claims this node's own strategy {self.own!r}"
                " (two nodes started with one name, or a node dialling itself)",
                tell=f"this node runs {self.own} too: two nodes started with one name, or a"
                " node dialling itself",
            )
        if hello.listen_port > 65535:
            raise RemoteProtocolError(f"invalid listen port {hello.listen_port} in Hello")
        if hello.heartbeat_ms > MAX_PEER_HEARTBEAT_MS:
            raise RemoteProtocolError(
                f"peer asks for a heartbeat interval of {hello.heartbeat_ms / 1000:g}s, above"
                f" the {MAX_PEER_HEARTBEAT_MS // 1000}s this node allows",
                tell=f"{self.own} allows a heartbeat of {MAX_PEER_HEARTBEAT_MS // 1000}s at most",
            )
        names = self.certified_names
        if names is not None and hello.strategy not in names:
            certified = ", ".join(sorted(names)) or "no name"
            raise RemoteProtocolError(
                f"peer claims strategy {hello.strategy!r} but its certificate is for {certified}",
                tell=f"{self.own} refuses this node's certificate: it is for {certified},"
                f" not for the strategy {hello.strategy} in its Hello",
            )
        self.peer = hello
        if not self.secrets:
            if hello.nonce:
                raise RemoteProtocolError(
                    "peer requires a cluster secret and this node has none (--secret-file)"
                )
            return self._ready()
        if len(hello.nonce) != auth.NONCE_SIZE:
            raise RemoteProtocolError(
                "peer sent no authentication nonce: it has no cluster secret, this node"
                " requires one"
            )
        proof = auth.prove(
            self.secrets[0],
            prover=self.own,
            verifier=hello.strategy,
            prover_nonce=self._nonce,
            verifier_nonce=hello.nonce,
        )
        self._outgoing.append(encode(Auth(proof)))
        self.state = State.AUTH
        return None

    def _on_auth(self, message: Message) -> Event:
        assert isinstance(message, Auth) and self.peer is not None and self.secrets
        ok = auth.verify(
            self.secrets,
            message.proof,
            prover=self.peer.strategy,
            verifier=self.own,
            prover_nonce=self.peer.nonce,
            verifier_nonce=self._nonce,
        )
        if not ok:
            raise RemoteProtocolError(
                "authentication failed: the peer's proof does not match the cluster secret"
            )
        return self._ready()

    def _ready(self) -> Ready:
        """The peer has proven itself: its frames may now be as large as any."""
        assert self.peer is not None
        self.state = State.SYNC
        self._decoder.max_frame_size = self._max_frame_size
        return Ready(self.peer)

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
        strategy, symbol, net, timestamp = position
        peer = self.peer
        if (  # the common case first: the peer's own, valid (the Hello checked its name)
            peer is not None
            and strategy == peer.strategy
            and valid_symbol(symbol)
            and net - net == 0.0  # finite
            and 0 < timestamp <= MAX_TIMESTAMP
        ):
            return position
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

    def _on_digest(self, digest: Message) -> Event:
        assert isinstance(digest, Digest)
        return digest

    def _on_repair_request(self, request: Message) -> Event:
        assert isinstance(request, RepairRequest)
        return request

    def _on_repair(self, repair: Message) -> Event:
        assert isinstance(repair, Repair)
        if repair.done != self.repairing:
            raise RemoteProtocolError(
                "Repair end without its start" if repair.done else "Repair start inside a repair"
            )
        self.repairing = not repair.done
        return repair

    def _on_bye(self, bye: Message) -> Event:
        assert isinstance(bye, Bye)
        return bye

    def _check_position(self, position: Position) -> None:
        strategy, symbol, net, timestamp = position
        peer = self.peer
        if (
            ((peer is not None and strategy == peer.strategy) or valid_strategy(strategy))
            and valid_symbol(symbol)
            and net - net == 0.0  # finite
            and 0 < timestamp <= MAX_TIMESTAMP
        ):
            return  # the common case, without building a reason (the Hello checked the name)
        reason = invalid_position_reason(position)
        if reason is not None:
            raise RemoteProtocolError(reason)


_Rule = Callable[[Protocol, Message], "Event | None"]

# Who may send what in which state. Anything absent is a protocol error.
_RULES: dict[tuple[State, type], _Rule] = {
    (State.HELLO, Hello): Protocol._on_hello,
    (State.AUTH, Auth): Protocol._on_auth,
    (State.AUTH, Heartbeat): Protocol._on_heartbeat,
    (State.SYNC, Position): Protocol._on_sync_position,
    (State.SYNC, SyncDone): Protocol._on_sync_done,
    (State.SYNC, Heartbeat): Protocol._on_heartbeat,
    (State.LIVE, Position): Protocol._on_live_position,
    (State.LIVE, Heartbeat): Protocol._on_heartbeat,
    (State.LIVE, Digest): Protocol._on_digest,
    (State.LIVE, RepairRequest): Protocol._on_repair_request,
    (State.LIVE, Repair): Protocol._on_repair,
    (State.HELLO, Bye): Protocol._on_bye,
    (State.AUTH, Bye): Protocol._on_bye,
    (State.SYNC, Bye): Protocol._on_bye,
    (State.LIVE, Bye): Protocol._on_bye,
}
# The same table by state, for receive_data's loop: message type -> rule.
_RULES_BY_STATE: dict[State, dict[type, _Rule]] = {
    state: {kind: rule for (s, kind), rule in _RULES.items() if s is state} for state in State
}
