"""Tests of the connection protocol: the rule table, refusals with reasons, chunking, garbage."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor import position_pb2 as pb
from position_distributor.clock import Clock
from position_distributor.protocol import (
    LocalProtocolError,
    Protocol,
    Ready,
    RemoteProtocolError,
    State,
)
from position_distributor.types import MAX_TIMESTAMP, Position
from position_distributor.wire import (
    PROTOCOL_VERSION,
    Auth,
    FrameTooLarge,
    Heartbeat,
    Hello,
    Message,
    SyncDone,
    encode,
    encode_position,
    frame,
    parse,
)

OWN, PEER, THIRD = "strategy_1", "strategy_2", "strategy_3"


def at(state: State, *, relay: bool = False) -> Protocol:
    """A protocol for OWN talking to PEER, driven to ``state`` through the handshake."""
    protocol = Protocol(OWN, relay=relay)
    if state is not State.HELLO:
        protocol.receive_data(encode(Hello(PEER)))
    if state is State.LIVE:
        protocol.receive_data(encode(SyncDone()))
    assert protocol.state is state
    return protocol


def refused(protocol: Protocol, data: bytes) -> str:
    """Feed ``data``, expect a refusal, and return its reason; the connection is then closed."""
    with pytest.raises(RemoteProtocolError) as caught:
        protocol.receive_data(data)
    assert protocol.state is State.CLOSED
    return str(caught.value)


# The rule table, written out from DESIGN.md independently of protocol._RULES: for each
# state and relay setting, the message kinds accepted; any other kind closes the connection.
KINDS = (
    "hello",
    "own_position",
    "peer_position",
    "third_position",
    "sync_done",
    "heartbeat",
    "auth",
)
ALLOWED: dict[tuple[State, bool], set[str]] = {
    (State.HELLO, False): {"hello"},
    (State.SYNC, False): {"own_position", "peer_position", "sync_done", "heartbeat"},
    (State.LIVE, False): {"peer_position", "heartbeat"},
    (State.HELLO, True): {"hello"},
    (State.SYNC, True): {"own_position", "peer_position", "third_position", "sync_done"}
    | {"heartbeat"},
    (State.LIVE, True): {"peer_position", "third_position", "heartbeat"},
}
NEXT_STATE = {"hello": State.SYNC, "sync_done": State.LIVE}


def make(kind: str) -> Message:
    examples: dict[str, Message] = {
        "hello": Hello(PEER, PROTOCOL_VERSION, 4000),
        "own_position": Position(OWN, "AAPL", 100.0, 7),
        "peer_position": Position(PEER, "AAPL", -5.5, 8),
        "third_position": Position(THIRD, "MSFT", 1.0, 9),
        "sync_done": SyncDone(2),
        "heartbeat": Heartbeat(),
        "auth": Auth(b"proof"),
    }
    return examples[kind]


def expected_event(kind: str, message: Message) -> list[object]:
    if kind == "hello":
        assert isinstance(message, Hello)
        return [Ready(message)]
    if kind == "heartbeat":
        return []
    return [message]


def refusal(state: State, message: Message) -> str:
    """The reason a message the table forbids is refused with."""
    if not isinstance(message, Position):
        return f"{type(message).__name__} not allowed while {state.value}"
    if state is State.HELLO:
        return f"Position not allowed while {state.value}"
    if message.strategy == OWN:
        return (
            f"{PEER} sent a position of this node's own strategy outside its sync"
            f" ({message.symbol} {message.net_position} @ {message.timestamp})"
        )
    return f"{PEER} sent a position of {message.strategy} (not its own; relay is off)"


# Golden examples.


def test_hello_frame() -> None:
    """The frame a node sends first is its Hello: strategy, protocol version, listen port,
    then (release 2) its instance id and the features it understands."""
    assert Protocol("strategy_1", listen_port=12345, instance=b"\x01" * 8).hello() == (
        b"\x00\x00\x00\x1f\x2a\x1d\x0a\x0astrategy_1\x10\x01\x18\xb9\x60"
        b"\x3a\x08\x01\x01\x01\x01\x01\x01\x01\x01\x40\x03"
    )


def test_first_release_hello_frame_is_still_understood() -> None:
    """A Hello of the first release (no instance, no features) parses with both empty."""
    hello = parse(b"\x2a\x11\x0a\x0astrategy_1\x10\x01\x18\xb9\x60")
    assert hello == Hello("strategy_1", 1, 12345)
    assert isinstance(hello, Hello) and hello.instance == b"" and hello.features == 0


def test_handshake_sync_and_live() -> None:
    """Hello, then sync (own and echoed positions), then SyncDone, then live updates."""
    protocol = Protocol(OWN)
    assert protocol.state is State.HELLO
    assert protocol.peer_name is None
    hello = Hello(PEER, PROTOCOL_VERSION, 12346)
    theirs = Position(PEER, "AAPL", 10.0, 5)
    echo = Position(OWN, "MSFT", -3.0, 4)
    data = encode(hello) + encode_position(theirs) + encode_position(echo) + encode(SyncDone(2))
    assert protocol.receive_data(data) == [Ready(hello), theirs, echo, SyncDone(2)]
    assert protocol.state is State.LIVE
    assert protocol.peer_name == PEER
    assert protocol.peer == hello
    update = Position(PEER, "AAPL", 20.0, 6)
    assert protocol.receive_data(encode(Heartbeat()) + encode_position(update)) == [update]


@pytest.mark.parametrize("relay", [False, True], ids=["mesh", "relay"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", [State.HELLO, State.SYNC, State.LIVE], ids=lambda s: s.name)
def test_rule_table(state: State, kind: str, relay: bool) -> None:
    """Each message kind in each state is accepted or refused exactly as the rule table says."""
    protocol = at(state, relay=relay)
    message = make(kind)
    if kind in ALLOWED[state, relay]:
        assert protocol.receive_data(encode(message)) == expected_event(kind, message)
        assert protocol.state is NEXT_STATE.get(kind, state)
    else:
        assert refused(protocol, encode(message)) == refusal(state, message)


def test_own_strategy_outside_sync_is_refused_with_the_reason() -> None:
    """A live position of the receiver's own strategy is refused, saying it was outside sync."""
    reason = refused(at(State.LIVE), encode_position(Position(OWN, "AAPL", 1e6, 99)))
    assert reason == (
        f"{PEER} sent a position of this node's own strategy outside its sync (AAPL 1000000.0 @ 99)"
    )


def test_relay_never_lets_a_peer_write_our_own_strategy_live() -> None:
    """Even with relay on, a live position of our own strategy is refused."""
    reason = refused(at(State.LIVE, relay=True), encode_position(Position(OWN, "A", 1.0, 1)))
    assert "outside its sync" in reason


@pytest.mark.parametrize("state", [State.SYNC, State.LIVE], ids=lambda s: s.name)
def test_another_strategy_is_refused_without_relay(state: State) -> None:
    """A position of a third strategy is refused when relay is off, naming both strategies."""
    reason = refused(at(state), encode_position(Position(THIRD, "A", 1.0, 1)))
    assert reason == f"{PEER} sent a position of {THIRD} (not its own; relay is off)"


@pytest.mark.parametrize(
    ("hello", "words"),
    [
        (Hello(PEER, 2), "peer speaks protocol version 2, this node speaks 1"),
        (Hello(PEER, 0), "peer speaks protocol version 0, this node speaks 1"),
        (Hello("bad name"), "invalid strategy name 'bad name' in Hello"),
        (Hello(""), "invalid strategy name '' in Hello"),
        (Hello("../x"), "invalid strategy name '../x' in Hello"),
        (Hello(OWN), f"peer claims this node's own strategy {OWN!r}"),
        (Hello(PEER, PROTOCOL_VERSION, 70000), "invalid listen port 70000 in Hello"),
    ],
)
def test_bad_hellos_are_refused(hello: Hello, words: str) -> None:
    """A version mismatch, an invalid name, our own name or a bad port in Hello is refused."""
    protocol = Protocol(OWN)
    assert words in refused(protocol, encode(hello))
    assert protocol.peer_name is None


def test_after_a_refusal_feeding_more_is_a_local_error() -> None:
    """Once the connection failed, receive_data is a local misuse, not another remote error."""
    protocol = Protocol(OWN)
    refused(protocol, encode(Heartbeat()))
    with pytest.raises(LocalProtocolError):
        protocol.receive_data(encode(Hello(PEER)))


BARE = pb.SymbolPos(
    strategy_name=PEER, symbol="AAPL", net_position=100.0, timestamp=1742308549773254000
).SerializeToString()


@pytest.mark.parametrize("state", [State.HELLO, State.SYNC, State.LIVE], ids=lambda s: s.name)
def test_bare_symbolpos_frame_is_refused_clearly(state: State) -> None:
    """A framed SymbolPos without Envelope, as the C++ original sends, is refused by name."""
    reason = refused(at(state), frame(BARE))
    assert "bare SymbolPos" in reason


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "empty frame"),
        (pb.Trade(symbol="AAPL", position=100.0).SerializeToString(), "carries no known message"),
        (b"\xff\xff\xff", "undecodable frame of 3 bytes"),
    ],
    ids=["empty", "trade", "junk"],
)
@pytest.mark.parametrize("state", [State.HELLO, State.SYNC, State.LIVE], ids=lambda s: s.name)
def test_non_messages_are_refused(state: State, payload: bytes, words: str) -> None:
    """An empty frame, Trade bytes or junk where an Envelope is expected is refused."""
    assert words in refused(at(state), frame(payload))


@pytest.mark.parametrize(
    ("position", "words"),
    [
        (Position(PEER, "AAPL", math.nan, 1), "non-finite net position nan"),
        (Position(PEER, "AAPL", math.inf, 1), "non-finite net position inf"),
        (Position(PEER, "AAPL", -math.inf, 1), "non-finite net position -inf"),
        (Position(PEER, "AA PL", 1.0, 1), "invalid symbol 'AA PL'"),
        (Position(PEER, "", 1.0, 1), "invalid symbol ''"),
        (Position(PEER, "X" * 33, 1.0, 1), "invalid symbol"),
        (Position(PEER, "AAPL", 1.0, 0), "non-positive timestamp 0"),
        (Position(PEER, "AAPL", 1.0, -1), "non-positive timestamp -1"),
        (Position(PEER, "AAPL", 1.0, 2**63 - 1), "is after the year 2116"),
        (Position(OWN, "AAPL", math.nan, 1), "non-finite net position nan"),
        (Position(OWN, "AAPL", 1.0, 2**63 - 1), "is after the year 2116"),
    ],
)
@pytest.mark.parametrize("state", [State.SYNC, State.LIVE], ids=lambda s: s.name)
def test_bad_positions_are_refused(state: State, position: Position, words: str) -> None:
    """NaN or infinite positions, bad symbols and non-positive timestamps are refused."""
    assert words in refused(at(state), encode_position(position))


def test_an_echo_cannot_push_the_clock_past_int64() -> None:
    """An echoed own position stamped near int64's end is refused: the clock stays encodable."""
    protocol = at(State.SYNC)
    latest = Position(OWN, "AAPL", 1.0, MAX_TIMESTAMP)
    assert protocol.receive_data(encode_position(latest)) == [latest]
    clock = Clock()
    clock.observe(latest.timestamp)
    encode_position(latest._replace(timestamp=clock.next()))  # still fits the wire's int64
    reason = refused(protocol, encode_position(Position(OWN, "AAPL", 1.0, 2**63 - 1)))
    assert reason == f"timestamp {2**63 - 1} for AAPL is after the year 2116"


@pytest.mark.parametrize("length", [2**31, 2**32 - 1])
def test_oversize_frame_is_refused_before_its_body(length: int) -> None:
    """A 2 GiB or 4 GiB-1 length prefix closes the connection as soon as the prefix is read."""
    protocol = at(State.LIVE)
    with pytest.raises(RemoteProtocolError, match=f"frame of {length} bytes") as caught:
        protocol.receive_data(length.to_bytes(4, "big"))
    assert isinstance(caught.value.__cause__, FrameTooLarge)
    assert protocol.state is State.CLOSED


def test_max_frame_size_is_the_connections() -> None:
    """The maximum frame size given to the protocol is the limit its decoder enforces."""
    protocol = Protocol(OWN, max_frame_size=64)
    protocol.receive_data(encode(Hello(PEER)))
    biggest = Position(PEER, "X" * 29, 1.0, 2**62)
    assert len(encode_position(biggest)) == 4 + 64
    assert protocol.receive_data(encode_position(biggest)) == [biggest]
    assert "above the maximum of 64" in refused(protocol, frame(b"\x00" * 65))


def test_thousands_of_empty_frames_close_at_the_first() -> None:
    """A flood of zero-length frames is refused as an empty frame, without any event."""
    assert "empty frame" in refused(at(State.LIVE), b"\x00\x00\x00\x00" * 5000)


# Properties.

symbols = st.sampled_from(["AAPL", "MSFT", "7203", "BRK.B"])
any_position = st.builds(
    Position,
    st.sampled_from([OWN, PEER, THIRD]),
    symbols,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(1, MAX_TIMESTAMP),
)
session_messages = st.lists(
    st.one_of(
        any_position.filter(lambda p: p.strategy == PEER),
        st.just(Heartbeat()),
    ),
    max_size=10,
)


def chunks(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    st.lists(any_position.filter(lambda p: p.strategy in (OWN, PEER)), max_size=6),
    session_messages,
    st.lists(st.integers(0), max_size=10),
)
def test_any_chunking_of_a_session_gives_the_same_events(
    sync: list[Position], live: list[Message], points: list[int]
) -> None:
    """A whole session cut into arbitrary chunks gives the same events as fed at once."""
    hello = Hello(PEER, PROTOCOL_VERSION, 1)
    data = encode(hello) + b"".join(map(encode, [*sync, SyncDone(len(sync)), *live]))
    whole = Protocol(OWN).receive_data(data)
    assert whole == [
        Ready(hello),
        *sync,
        SyncDone(len(sync)),
        *(m for m in live if not isinstance(m, Heartbeat)),
    ]
    protocol = Protocol(OWN)
    events = [event for chunk in chunks(data, points) for event in protocol.receive_data(chunk)]
    assert events == whole
    assert protocol.state is State.LIVE


# Positions as a peer may send them: valid, or wrong in one way each rule checks.
risky_position = st.builds(
    Position,
    st.sampled_from([PEER, PEER, PEER, OWN, THIRD, "bad name!"]),
    st.sampled_from(["AAPL", "7203", "BRK.B", "", "x" * 33, "A B", "Ä"]),
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 1e308]),
    ),
    st.one_of(st.integers(1, MAX_TIMESTAMP), st.sampled_from([0, -1, MAX_TIMESTAMP + 1])),
)


def _outcome(protocol: Protocol, data: list[bytes]) -> str:
    """What feeding ``data`` a chunk at a time gives: the events (by repr: a NaN equals
    nothing), or the refusal."""
    events: list[object] = []
    try:
        for chunk in data:
            events += protocol.receive_data(chunk)
    except RemoteProtocolError as exc:
        return f"{events!r} then refused: {exc}"
    return repr(events)


@given(
    st.sampled_from([State.SYNC, State.LIVE]),
    st.booleans(),
    st.lists(risky_position, min_size=1, max_size=12),
)
def test_a_read_of_positions_is_judged_as_each_alone(
    state: State, relay: bool, batch: list[Position]
) -> None:
    """A read of many position frames (checked together) gives what feeding them one frame at
    a time gives: the same positions, or the same refusal (with nothing of that read)."""
    frames = [encode_position(p) for p in batch]
    together = _outcome(at(state, relay=relay), [b"".join(frames)])
    alone = _outcome(at(state, relay=relay), frames)
    if "refused" in alone:
        # A read is refused whole: the positions before the bad one are lost with the
        # connection (as receive_data says), where frame by frame they came first.
        assert together.startswith("[] then refused:")
        assert together.split("refused:")[1] == alone.split("refused:")[1]
    else:
        assert together == alone


kinds = st.sampled_from(KINDS)


@given(st.lists(kinds, max_size=12), st.booleans())
def test_any_message_sequence_follows_the_table(sequence: list[str], relay: bool) -> None:
    """Any sequence of messages is accepted up to the first one the table forbids, then closed."""
    protocol = Protocol(OWN, relay=relay)
    state = State.HELLO
    for kind in sequence:
        message = make(kind)
        if kind not in ALLOWED[state, relay]:
            assert refused(protocol, encode(message)) == refusal(state, message)
            return
        assert protocol.receive_data(encode(message)) == expected_event(kind, message)
        state = NEXT_STATE.get(kind, state)
        assert protocol.state is state


@given(st.binary(max_size=300), st.lists(st.integers(0), max_size=5), st.booleans())
def test_garbage_raises_only_remote_protocol_errors(
    data: bytes, points: list[int], after_hello: bool
) -> None:
    """Random bytes, before or after a valid Hello, raise nothing but RemoteProtocolError."""
    protocol = Protocol(OWN, max_frame_size=256)
    if after_hello:
        protocol.receive_data(encode(Hello(PEER)))
    for chunk in chunks(data, points):
        try:
            protocol.receive_data(chunk)
        except RemoteProtocolError:
            assert protocol.state is State.CLOSED
            return


@given(
    st.lists(st.one_of(kinds.map(make), any_position), min_size=1, max_size=6),
    st.integers(0),
    st.binary(min_size=1, max_size=8),
)
def test_corrupted_sessions_raise_only_remote_protocol_errors(
    batch: list[Message], where: int, junk: bytes
) -> None:
    """A valid session with a few bytes overwritten raises nothing but RemoteProtocolError."""
    data = bytearray(encode(Hello(PEER)) + b"".join(map(encode, batch)))
    at_ = where % len(data)
    data[at_ : at_ + len(junk)] = junk
    protocol = Protocol(OWN)
    try:
        for event in protocol.receive_data(bytes(data)):
            assert isinstance(event, Ready | Position | SyncDone)
    except RemoteProtocolError:
        assert protocol.state is State.CLOSED
