"""Hypothesis fuzzing of the decoder and of the handshake state machine, with and without a
cluster secret: arbitrary bytes, arbitrary orders of messages (Hellos, proofs right and wrong,
positions, SyncDone, heartbeats, garbage), arbitrary chunking.

Whatever arrives, the protocol raises nothing but ``RemoteProtocolError`` and yields no
position before the handshake is complete, which with a secret means after a valid proof.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import event, given
from hypothesis import strategies as st

from position_distributor import auth
from position_distributor.protocol import Protocol, Ready, RemoteProtocolError, State
from position_distributor.types import Position
from position_distributor.wire import (
    HEADER_SIZE,
    Auth,
    Decoder,
    Heartbeat,
    Hello,
    MalformedMessage,
    Message,
    SyncDone,
    WireError,
    encode,
    parse,
)

OWN, PEER, THIRD = "strategy_1", "strategy_2", "strategy_3"
SECRET = b"cluster-secret-0123456789abcdef"
NEW_SECRET = b"rotated-secret-fedcba9876543210"
WRONG = b"another-secret-0123456789abcdef"
NONCE = auth.NONCE_SIZE


def chunks(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (taken modulo its length, sorted)."""
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def own_nonce(protocol: Protocol) -> bytes:
    """The nonce this protocol sent in its Hello."""
    hello = parse(protocol.hello()[HEADER_SIZE:])
    assert isinstance(hello, Hello)
    return hello.nonce


# The decoder.


@given(st.binary(max_size=2000), st.lists(st.integers(0), max_size=8), st.integers(1, 600))
def test_the_decoder_raises_only_wire_errors_and_buffers_a_bounded_amount(
    data: bytes, points: list[int], max_frame_size: int
) -> None:
    """Any bytes in any chunking: the decoder returns payloads of at most max_frame_size or
    raises a WireError, and never holds more than a header and one frame."""
    decoder = Decoder(max_frame_size)
    for chunk in chunks(data, points):
        try:
            payloads = decoder.feed(chunk)
        except WireError:
            return
        assert all(len(p) <= max_frame_size for p in payloads)
        assert decoder.buffered < HEADER_SIZE + max_frame_size


@given(st.binary(max_size=300))
def test_parse_raises_only_malformed_message(payload: bytes) -> None:
    """Any payload parses to a message or raises MalformedMessage, nothing else."""
    try:
        message = parse(payload)
    except MalformedMessage:
        return
    assert isinstance(message, Hello | Auth | SyncDone | Heartbeat | Position)


# The handshake state machine: messages named by kind, resolved against the protocol under
# test (a valid proof depends on its nonce and on the Hello it accepted).

HELLO_KINDS = (
    "hello",  # the peer, with a nonce (as a node with a secret sends it)
    "hello_no_nonce",  # the peer, without (a node with no secret)
    "hello_short_nonce",
    "hello_own_name",
    "hello_bad_version",
    "hello_bad_name",
)
AUTH_KINDS = (
    "auth_valid",  # the peer's proof with the shared secret
    "auth_new_secret",  # with the rotation's second secret (accepted when listed)
    "auth_wrong_secret",
    "auth_reflected",  # our own proof sent back (roles swapped)
    "auth_replayed",  # a proof recorded on another connection (another nonce of ours)
    "auth_random",
    "auth_empty",
)
OTHER_KINDS = (
    "own_position",
    "peer_position",
    "third_position",
    "bad_position",
    "sync_done",
    "heartbeat",
)
KINDS = HELLO_KINDS + AUTH_KINDS + OTHER_KINDS


@dataclass
class Session:
    """What the peer said so far, to build each next message against."""

    protocol: Protocol
    peer_nonce: bytes = b"\x07" * NONCE
    hello_sent: bool = False

    def message(self, kind: str, junk: bytes) -> bytes:
        """The frame of one message of ``kind`` (``junk``: random bytes some kinds use)."""
        nonce = self.peer_nonce
        ours = own_nonce(self.protocol)
        if kind.startswith("hello"):
            hello = {
                "hello": Hello(PEER, nonce=nonce),
                "hello_no_nonce": Hello(PEER),
                "hello_short_nonce": Hello(PEER, nonce=nonce[:-1]),
                "hello_own_name": Hello(OWN, nonce=nonce),
                "hello_bad_version": Hello(PEER, protocol_version=2, nonce=nonce),
                "hello_bad_name": Hello("no/slash", nonce=nonce),
            }[kind]
            return encode(hello)
        if kind.startswith("auth"):

            def proof(secret: bytes, prover: str, verifier: str, pn: bytes, vn: bytes) -> bytes:
                return auth.prove(
                    secret, prover=prover, verifier=verifier, prover_nonce=pn, verifier_nonce=vn
                )

            proofs: dict[str, Callable[[], bytes]] = {
                "auth_valid": lambda: proof(SECRET, PEER, OWN, nonce, ours),
                "auth_new_secret": lambda: proof(NEW_SECRET, PEER, OWN, nonce, ours),
                "auth_wrong_secret": lambda: proof(WRONG, PEER, OWN, nonce, ours),
                "auth_reflected": lambda: proof(SECRET, OWN, PEER, ours, nonce),
                "auth_replayed": lambda: proof(SECRET, PEER, OWN, nonce, b"\x01" * NONCE),
                "auth_random": lambda: junk,
                "auth_empty": lambda: b"",
            }
            return encode(Auth(proofs[kind]()))
        others: dict[str, Message] = {
            "own_position": Position(OWN, "AAPL", 1.5, 10),
            "peer_position": Position(PEER, "MSFT", -2.0, 11),
            "third_position": Position(THIRD, "IBM", 3.0, 12),
            "bad_position": Position(PEER, "bad symbol", 3.0, 12),
            "sync_done": SyncDone(1),
            "heartbeat": Heartbeat(),
        }
        return encode(others[kind])


def model(kinds: list[str], secrets: list[bytes] | None) -> tuple[list[str], bool]:
    """What the protocol must do with these messages, from DESIGN.md and the issue (written
    apart from protocol._RULES): the kinds that yield an event, in order, and whether the
    peer is refused (at the first message not allowed)."""
    state = "hello"
    events: list[str] = []
    valid_proofs = {"auth_valid"} | (
        {"auth_new_secret"} if NEW_SECRET in (secrets or []) else set()
    )
    for kind in kinds:
        if kind == "heartbeat" and state in ("auth", "sync", "live"):
            continue
        if state == "hello":
            if secrets and kind == "hello":
                state = "auth"
                continue
            if not secrets and kind == "hello_no_nonce":
                state = "sync"
                events.append("ready")
                continue
            return events, True
        if state == "auth":
            if kind in valid_proofs:
                state = "sync"
                events.append("ready")
                continue
            return events, True
        if state == "sync" and kind in ("own_position", "peer_position"):
            events.append(kind)
            continue
        if state == "sync" and kind == "sync_done":
            state = "live"
            events.append(kind)
            continue
        if state == "live" and kind == "peer_position":
            events.append(kind)
            continue
        return events, True
    return events, False


def name_of(event: object) -> str:
    if isinstance(event, Ready):
        return "ready"
    if isinstance(event, SyncDone):
        return "sync_done"
    assert isinstance(event, Position), event
    return "own_position" if event.strategy == OWN else "peer_position"


secret_lists = st.sampled_from([None, [SECRET], [SECRET, NEW_SECRET], [NEW_SECRET, SECRET]])


def scripted(data: st.DataObject, secrets: list[bytes] | None) -> list[str]:
    """A session for these secrets, its Hello and proof right or not (each half the time),
    then up to two messages replaced or inserted at random: so the fuzzing reaches every
    state, not only the first."""
    right_hello = "hello" if secrets else "hello_no_nonce"
    hello = data.draw(st.one_of(st.just(right_hello), st.sampled_from(HELLO_KINDS)))
    proof = data.draw(st.one_of(st.just("auth_valid"), st.sampled_from(AUTH_KINDS)))
    handshake = [hello, proof] if secrets else [hello]
    sync = data.draw(st.lists(st.sampled_from(["own_position", "peer_position", "heartbeat"])))
    live = data.draw(st.lists(st.sampled_from(["peer_position", "heartbeat"]), max_size=4))
    kinds = [*handshake, *sync, "sync_done", *live]
    for _ in range(data.draw(st.integers(0, 2))):
        at = data.draw(st.integers(0, len(kinds)))
        kind = data.draw(st.sampled_from(KINDS))
        if data.draw(st.booleans()) and at < len(kinds):
            kinds[at] = kind
        else:
            kinds.insert(at, kind)
    return kinds


@given(secret_lists, st.lists(st.integers(0), max_size=8), st.binary(max_size=40), st.data())
def test_any_message_order_follows_the_handshake_rules(
    secrets: list[bytes] | None, points: list[int], junk: bytes, data: st.DataObject
) -> None:
    """Any order of messages, in any chunking, on either end (dialler or acceptor), yields
    exactly the events of the model up to the first message not allowed, which raises
    RemoteProtocolError and closes."""
    if data.draw(st.booleans()):
        kinds = scripted(data, secrets)
    else:
        kinds = data.draw(st.lists(st.sampled_from(KINDS), max_size=10))
    protocol = Protocol(OWN, secrets=secrets, dialler=data.draw(st.booleans()))
    session = Session(protocol)
    stream = b"".join(session.message(kind, junk) for kind in kinds)
    expected, refused = model(kinds, secrets)
    events: list[object] = []
    raised = False
    for chunk in chunks(stream, points):
        try:
            events += protocol.receive_data(chunk)
        except RemoteProtocolError:
            raised = True
            break
    names = [name_of(e) for e in events]
    event(f"ended {protocol.state.name}")
    assert raised == refused
    if refused:
        # Events completed in the same chunk as the refused message are dropped with it.
        assert names == expected[: len(names)]
        assert protocol.state is State.CLOSED
    else:
        assert names == expected
    assert_no_position_before_ready(events)


def assert_no_position_before_ready(events: list[object]) -> None:
    first_ready = next((i for i, e in enumerate(events) if isinstance(e, Ready)), len(events))
    assert not any(isinstance(e, Position | SyncDone) for e in events[:first_ready])


@given(secret_lists, st.lists(st.integers(0), max_size=10), st.binary(max_size=40), st.data())
def test_garbage_anywhere_raises_only_protocol_errors_and_yields_no_early_position(
    secrets: list[bytes] | None, points: list[int], junk: bytes, data: st.DataObject
) -> None:
    """Messages and raw garbage mixed in any order and chunking: only RemoteProtocolError is
    raised, no position comes before Ready, and with a secret no Ready comes without a valid
    proof having been fed."""
    kinds: list[str] = (
        scripted(data, secrets)
        if data.draw(st.booleans())
        else data.draw(st.lists(st.sampled_from(KINDS), max_size=10))
    )
    protocol = Protocol(OWN, secrets=secrets, max_frame_size=4096)
    session = Session(protocol)
    parts = [session.message(kind, junk) for kind in kinds]
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2, 3]))):
        garbage = data.draw(st.binary(min_size=1, max_size=24))
        parts.insert(data.draw(st.integers(0, len(parts))), garbage)
    stream = b"".join(parts)
    events: list[object] = []
    for chunk in chunks(stream, points):
        try:
            events += protocol.receive_data(chunk)
        except RemoteProtocolError:
            assert protocol.state is State.CLOSED
            break
    assert_no_position_before_ready(events)
    if secrets and any(isinstance(e, Ready) for e in events):
        valid = ["auth_valid"] + (["auth_new_secret"] if NEW_SECRET in secrets else [])
        assert any(session.message(kind, b"") in stream for kind in valid)


@given(st.binary(max_size=400), st.lists(st.integers(0), max_size=6), secret_lists)
def test_random_bytes_never_complete_a_handshake_with_a_secret(
    data: bytes, points: list[int], secrets: list[bytes] | None
) -> None:
    """Random bytes raise nothing but RemoteProtocolError and, with a secret, never yield
    Ready or a position (a proof cannot be guessed)."""
    protocol = Protocol(OWN, secrets=secrets, max_frame_size=1024)
    events: list[object] = []
    for chunk in chunks(data, points):
        try:
            events += protocol.receive_data(chunk)
        except RemoteProtocolError:
            break
    assert_no_position_before_ready(events)
    if secrets:
        assert events == []


@given(secret_lists, st.data())
def test_an_acceptor_says_nothing_before_the_dialler_hello(
    secrets: list[bytes] | None, data: st.DataObject
) -> None:
    """The accepting end sends nothing when the connection opens, nor after anything but an
    accepted Hello (so a relaying outsider must commit to its nonce first)."""
    protocol = Protocol(OWN, secrets=secrets, dialler=False)
    assert protocol.initiate() == b""
    session = Session(protocol)
    kinds = data.draw(st.lists(st.sampled_from(KINDS), max_size=6))
    for kind in kinds:
        accepted_hello = protocol.state is State.HELLO and kind == (
            "hello" if secrets else "hello_no_nonce"
        )
        try:
            protocol.receive_data(session.message(kind, b""))
        except RemoteProtocolError:
            # A refused Hello may still be answered (so that the peer can tell why); anything
            # else, never.
            out = protocol.data_to_send()
            assert not out or kind.startswith("hello"), (kind, out)
            return
        out = protocol.data_to_send()
        if accepted_hello:
            assert out.startswith(protocol.hello())  # our Hello first, then a proof
        else:
            assert out == b"", (kind, out)


# A correct pair, whatever the chunking between them.


@dataclass
class Side:
    protocol: Protocol
    positions: list[Position]  # what this side sends in its sync
    outgoing: bytearray
    events: list[object]
    error: str | None = None

    def receive(self, data: bytes) -> None:
        try:
            events = self.protocol.receive_data(data)
        except RemoteProtocolError as exc:
            self.error = str(exc)
            return
        self.outgoing += self.protocol.data_to_send()
        for received in events:
            self.events.append(received)
            if isinstance(received, Ready):
                # As the engine does once the peer is proven: the sync, then SyncDone.
                sync: list[Message] = [*self.positions, SyncDone(len(self.positions))]
                self.outgoing += b"".join(map(encode, sync))


def side(name: str, secrets: list[bytes] | None, symbol: str, *, dialler: bool) -> Side:
    """One end: the dialler opens with its Hello, the acceptor with nothing."""
    protocol = Protocol(name, secrets=secrets, dialler=dialler)
    position = Position(name, symbol, 1.0, 5)
    return Side(protocol, [position], bytearray(protocol.initiate()), [])


def exchange(a: Side, b: Side, data: st.DataObject) -> None:
    """Deliver bytes both ways, in chunks and an interleaving hypothesis draws, until both
    sides have nothing more to send (or one has refused the other)."""
    while (a.outgoing or b.outgoing) and a.error is None and b.error is None:
        senders = [s for s in (a, b) if s.outgoing]
        sender = data.draw(st.sampled_from(senders))
        receiver = b if sender is a else a
        size = data.draw(st.integers(1, len(sender.outgoing)))
        chunk = bytes(sender.outgoing[:size])
        del sender.outgoing[:size]
        receiver.receive(chunk)


compatible = st.sampled_from(
    [
        ([SECRET], [SECRET]),
        ([SECRET], [SECRET, NEW_SECRET]),
        ([SECRET, NEW_SECRET], [NEW_SECRET, SECRET]),
        ([NEW_SECRET], [NEW_SECRET, SECRET]),
        (None, None),
    ]
)


@given(compatible, st.data())
def test_a_correct_pair_always_completes_whatever_the_chunking(
    secrets: tuple[list[bytes] | None, list[bytes] | None], data: st.DataObject
) -> None:
    """Two protocols holding a common secret (or neither holding one), one dialling, always
    complete the handshake and receive each other's sync, whatever the chunking and
    interleaving."""
    a_dials = data.draw(st.booleans())
    a = side(OWN, secrets[0], "AAPL", dialler=a_dials)
    b = side(PEER, secrets[1], "MSFT", dialler=not a_dials)
    exchange(a, b, data)
    assert a.error is None and b.error is None
    for me, other in ((a, b), (b, a)):
        assert [type(e) for e in me.events] == [Ready, Position, SyncDone]
        assert me.events[1] == other.positions[0]
        assert me.protocol.state is State.LIVE


incompatible = st.sampled_from(
    [
        ([SECRET], [WRONG]),
        ([SECRET], None),
        (None, [SECRET]),
        ([NEW_SECRET, SECRET], [SECRET]),  # the new secret went first too early
        ([SECRET], [NEW_SECRET]),
    ]
)


@given(incompatible, st.data())
def test_a_pair_without_a_common_secret_never_completes(
    secrets: tuple[list[bytes] | None, list[bytes] | None], data: st.DataObject
) -> None:
    """When one side cannot prove itself to the other, that side is refused and the other
    never sees Ready or a position from it, whatever the chunking."""
    a_dials = data.draw(st.booleans())
    a = side(OWN, secrets[0], "AAPL", dialler=a_dials)
    b = side(PEER, secrets[1], "MSFT", dialler=not a_dials)
    exchange(a, b, data)
    assert a.error is not None or b.error is not None
    for s in (a, b):
        assert not any(isinstance(e, Position) for e in s.events)
    # Whoever refused saw no Ready: no position was ever sent to it.
    for s in (a, b):
        if s.error is not None:
            assert s.events == []
