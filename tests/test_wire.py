"""Tests of the wire codec: exact frame bytes, round-trips, any chunking, limits and garbage."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor import position_pb2 as pb
from position_distributor.types import Position
from position_distributor.wire import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Decoder,
    Digest,
    FrameTooLarge,
    Heartbeat,
    Hello,
    MalformedMessage,
    Message,
    Repair,
    RepairRequest,
    SyncDone,
    WireError,
    encode,
    encode_position,
    encode_positions,
    frame,
    parse,
    parse_many,
    parse_positions,
)

SEED_TS = 1742308549773254000


def varint(n: int) -> bytes:
    """Protobuf base-128 varint, written out here so the golden bytes do not trust the codec."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode_all(decoder: Decoder, chunks: list[bytes]) -> list[bytes]:
    payloads: list[bytes] = []
    for chunk in chunks:
        payloads.extend(decoder.feed(chunk))
    return payloads


# Golden examples: the exact bytes on the wire.

# Envelope.position (field 6, length-delimited) around SymbolPos fields 1-4 as in the seed.
GOLDEN_POSITION = (
    b"\x00\x00\x00\x27"  # length 39
    b"\x32\x25"  # Envelope field 6 (position), 37 bytes
    b"\x0a\x0astrategy_1"  # SymbolPos.strategy_name = 1
    b"\x12\x04AAPL"  # SymbolPos.symbol = 2
    b"\x19"
    + struct.pack("<d", 100.0)  # SymbolPos.net_position = 3 (double)
    + b"\x20"
    + varint(SEED_TS)  # SymbolPos.timestamp = 4 (varint)
)
GOLDEN_HELLO = (
    b"\x00\x00\x00\x13"  # length 19
    b"\x2a\x11"  # Envelope field 5 (hello), 17 bytes
    b"\x0a\x0astrategy_1"  # Hello.strategy = 1
    b"\x10\x01"  # Hello.protocol_version = 1
    b"\x18\xb9\x60"  # Hello.listen_port = 12345
)


def test_varint_helper() -> None:
    """The test's own varint writer matches the protobuf spec's worked example (300)."""
    assert varint(300) == b"\xac\x02"
    assert varint(SEED_TS) == bytes.fromhex("f0baf1b2d18cfb9618")


def test_golden_position_frame() -> None:
    """A SymbolPos is framed as a 4-byte big-endian length and an Envelope with field 6."""
    position = Position("strategy_1", "AAPL", 100.0, SEED_TS)
    assert encode_position(position) == GOLDEN_POSITION
    assert encode(position) == GOLDEN_POSITION
    assert parse(GOLDEN_POSITION[HEADER_SIZE:]) == position


def test_golden_hello_frame() -> None:
    """A Hello is framed as an Envelope with field 5; an empty nonce takes no bytes."""
    assert PROTOCOL_VERSION == 1
    hello = Hello("strategy_1", 1, 12345)
    assert encode(hello) == GOLDEN_HELLO
    assert parse(GOLDEN_HELLO[HEADER_SIZE:]) == hello


def test_golden_small_frames() -> None:
    """SyncDone, Heartbeat and Auth have fixed, small frames."""
    assert encode(SyncDone(3)) == b"\x00\x00\x00\x04\x3a\x02\x08\x03"
    assert encode(SyncDone()) == b"\x00\x00\x00\x02\x3a\x00"
    assert encode(Heartbeat()) == b"\x00\x00\x00\x02\x42\x00"
    assert encode(Auth(b"\x01\x02")) == b"\x00\x00\x00\x06\x4a\x04\x0a\x02\x01\x02"


def test_frame_prefixes_big_endian_length() -> None:
    """``frame`` puts the payload's length in 4 big-endian bytes in front of it."""
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258


def test_frame_refuses_a_payload_its_header_cannot_express() -> None:
    """A payload of 4 GiB or more cannot be framed: a local ValueError, not a wrapped length."""

    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(ValueError, match="does not fit a frame"):
        frame(Huge())


def test_encode_positions_is_consecutive_frames() -> None:
    """Several positions encode as their frames one after another, ready for one sendall."""
    positions = [Position("s", "A", 1.0, 1), Position("s", "B", -2.0, 2)]
    assert encode_positions(positions) == encode_position(positions[0]) + encode_position(
        positions[1]
    )
    assert encode_positions([]) == b""


def test_negative_zero_parses_as_zero() -> None:
    """A net position of -0.0 on the wire parses as 0.0, so it prints as 0.000000."""
    payload = encode_position(Position("s", "A", -0.0, 1))[HEADER_SIZE:]
    parsed = parse(payload)
    assert isinstance(parsed, Position)
    assert math.copysign(1.0, parsed.net_position) == 1.0
    assert parsed.row() == "s | A | 0.000000 | 1"


# Refused payloads.


def test_bare_symbolpos_is_refused_with_a_reason() -> None:
    """A SymbolPos sent without an Envelope, as the C++ original does, names itself as such."""
    bare = pb.SymbolPos(
        strategy_name="strategy_1", symbol="AAPL", net_position=100.0, timestamp=SEED_TS
    ).SerializeToString()
    with pytest.raises(MalformedMessage, match="bare SymbolPos"):
        parse(bare)


def test_trade_bytes_are_refused() -> None:
    """A serialized Trade where an Envelope is expected carries no known message."""
    trade = pb.Trade(symbol="AAPL", position=100.0).SerializeToString()
    with pytest.raises(MalformedMessage, match=f"frame of {len(trade)} bytes carries no known"):
        parse(trade)


def test_empty_frame_is_refused() -> None:
    """A zero-length frame is no message."""
    with pytest.raises(MalformedMessage, match="empty frame"):
        parse(b"")


@pytest.mark.parametrize(
    "payload",
    [b"\xff", b"\x32\x05\x0a", b"\x32\x02\x0a\xff", b"\x0b" * 100, b"\x2a\x03\x0a\x01\xff"],
)
def test_undecodable_payloads_are_refused(payload: bytes) -> None:
    """Truncated fields, bad tags, unbalanced groups and invalid UTF-8 are MalformedMessage."""
    with pytest.raises(MalformedMessage):
        parse(payload)


def test_thousands_of_empty_frames_decode_as_empty_payloads() -> None:
    """Zero-length frames are cut as empty payloads, each of which parse then refuses."""
    payloads = Decoder().feed(b"\x00\x00\x00\x00" * 5000)
    assert payloads == [b""] * 5000
    with pytest.raises(MalformedMessage):
        parse(payloads[0])


# The decoder: limits.


@pytest.mark.parametrize("length", [DEFAULT_MAX_FRAME_SIZE + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_oversize_prefix_fed_bytewise_raises_before_buffering(length: int) -> None:
    """An oversize length prefix (up to 4 GiB-1) raises once its 4th byte arrives, holding 3."""
    decoder = Decoder()
    header = length.to_bytes(4, "big")
    for i in range(3):
        assert decoder.feed(header[i : i + 1]) == []
        assert decoder.buffered == i + 1
    with pytest.raises(FrameTooLarge, match=f"frame of {length} bytes announced"):
        decoder.feed(header[3:] + b"\x00" * 100)
    assert decoder.buffered <= 3 + 1 + 100


@pytest.mark.parametrize("length", [0x80000000, 0xFFFFFFFF])
def test_oversize_prefix_in_one_chunk_buffers_nothing(length: int) -> None:
    """An oversize prefix with the start of its body in one read is refused with nothing kept."""
    decoder = Decoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(length.to_bytes(4, "big") + b"\x00" * 4096)
    assert decoder.buffered == 0


def test_oversize_prefix_after_good_frames_is_refused() -> None:
    """A good frame followed by an oversize prefix in the same read still raises FrameTooLarge."""
    decoder = Decoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode(Heartbeat()) + (2**31).to_bytes(4, "big"))


def test_frame_of_exactly_the_maximum_is_accepted() -> None:
    """The maximum is inclusive: a frame of exactly max_frame_size bytes is decoded."""
    decoder = Decoder(max_frame_size=10)
    assert decoder.feed(frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameTooLarge, match="above the maximum of 10"):
        decoder.feed(frame(b"x" * 11))


def test_a_frame_trickled_in_is_cut_once_whole() -> None:
    """A large frame arriving in many small reads is only appended to until it is whole (then
    cut once): linear time, however slowly a peer sends it."""

    class Counting(Decoder):
        splits = 0

        def _split(self, data: bytes) -> tuple[list[bytes], int]:
            self.splits += 1
            return super()._split(data)

    decoder = Counting()
    data = frame(b"x" * 100_000) + encode(Heartbeat())
    payloads = []
    for start in range(0, len(data), 100):
        payloads += decoder.feed(data[start : start + 100])
    assert payloads == [b"x" * 100_000, b"\x42\x00"]
    assert decoder.splits <= 3  # the header's read, the frame's last read, the heartbeat's
    assert decoder.buffered == 0


def test_decoder_needs_a_positive_maximum() -> None:
    """A decoder with a maximum frame size below 1 is a local misuse (ValueError)."""
    with pytest.raises(ValueError, match="positive"):
        Decoder(max_frame_size=0)


def test_buffered_counts_an_incomplete_frame() -> None:
    """``buffered`` is the number of bytes of the frame not yet complete, and 0 once it is."""
    data = encode(Heartbeat()) + GOLDEN_POSITION
    decoder = Decoder()
    assert decoder.feed(data[:-5]) == [b"\x42\x00"]
    assert decoder.buffered == len(GOLDEN_POSITION) - 5
    assert decoder.feed(data[-5:]) == [GOLDEN_POSITION[HEADER_SIZE:]]
    assert decoder.buffered == 0


# Properties.

names = st.text(max_size=20)
positions = st.builds(
    Position,
    names,
    names,
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
messages: st.SearchStrategy[Message] = st.one_of(
    positions,
    st.builds(
        Hello,
        names,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=32),
        st.booleans(),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=16),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(SyncDone, st.integers(0, 2**64 - 1)),
    st.just(Heartbeat()),
    st.builds(Auth, st.binary(max_size=32)),
    st.builds(Digest, st.integers(0, 2**64 - 1), st.binary(max_size=16)),
    st.builds(RepairRequest, st.integers(0, 2**64 - 1), st.binary(max_size=16)),
    st.builds(Repair, st.booleans(), st.integers(0, 2**64 - 1)),
    st.builds(Bye, st.text(max_size=40), st.integers(0, 2**32 - 1)),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    """Every message parses back from its frame to an equal message, after one length header."""
    data = encode(message)
    assert int.from_bytes(data[:HEADER_SIZE], "big") == len(data) - HEADER_SIZE
    assert parse(data[HEADER_SIZE:]) == message


@given(positions)
def test_round_trip_keeps_the_printed_form(position: Position) -> None:
    """A position prints the same row before and after the wire, except -0.0 prints as 0.0."""
    parsed = parse(encode_position(position)[HEADER_SIZE:])
    assert isinstance(parsed, Position)
    expected = position._replace(net_position=position.net_position + 0.0)
    assert parsed.row() == expected.row()


wire_positions = st.builds(
    Position,
    st.one_of(st.sampled_from(["strategy_1", "s", "x" * 64, ""]), st.text(max_size=90)),
    st.one_of(st.sampled_from(["AAPL", "a" * 32, "7203.T", ""]), st.text(max_size=90)),
    st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1e-310, math.nan, -math.inf])),
    st.one_of(
        st.integers(min_value=2**56 - 2, max_value=2**56 + 2**22),
        st.integers(min_value=2**56, max_value=2**63 - 1),
        st.integers(min_value=2**63 - 2**22, max_value=2**63 - 1),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ),
)


@given(st.lists(wire_positions, max_size=12))
def test_encode_positions_is_encode_position_of_each(positions: list[Position]) -> None:
    """A batch encoded in one loop is byte for byte the frames of its positions encoded one
    by one, whatever names, values and timestamps they mix."""
    assert encode_positions(positions) == b"".join(map(encode_position, positions))


@given(wire_positions)
def test_encode_position_is_the_envelope_protobuf_writes(position: Position) -> None:
    """The frame written by hand is byte for byte the Envelope protobuf's own serialization:
    any name, any float (zero is left out), any timestamp (a clock reading's 9-byte varint
    and the rest), short or long (128 bytes and more take protobuf's path)."""
    envelope = pb.Envelope(
        position=pb.SymbolPos(
            strategy_name=position.strategy,
            symbol=position.symbol,
            net_position=position.net_position,
            timestamp=position.timestamp,
        )
    )
    assert encode_position(position) == frame(envelope.SerializeToString())


def _parsed_one_by_one(payloads: list[bytes]) -> tuple[list[Message], str | None]:
    out: list[Message] = []
    for payload in payloads:
        try:
            out.append(parse(payload))
        except MalformedMessage as exc:
            return out, str(exc)
    return out, None


def _parsed_together(payloads: list[bytes]) -> tuple[list[Message], str | None]:
    out: list[Message] = []
    try:
        for message in parse_many(payloads):
            out.append(message)
    except MalformedMessage as exc:
        return out, str(exc)
    return out, None


def _mangled(payload: bytes, cut: int, flip: int) -> bytes:
    """``payload`` cut short or with one byte changed: garbage that often still looks like a
    position frame from outside."""
    if not payload:
        return payload
    if cut % 2:
        return payload[: cut % len(payload)]
    data = bytearray(payload)
    data[flip % len(data)] ^= 1 + cut % 255
    return bytes(data)


@given(
    st.lists(
        st.one_of(
            messages.map(lambda m: encode(m)[HEADER_SIZE:]),
            st.tuples(positions, st.integers(0, 300), st.integers(0, 300)).map(
                lambda t: _mangled(encode_position(t[0])[HEADER_SIZE:], t[1], t[2])
            ),
            st.binary(max_size=40).map(lambda b: bytes((0x32, len(b))) + b),
            st.binary(max_size=140),
        ),
        max_size=12,
    )
)
def test_parse_many_is_parse_of_each(payloads: list[bytes]) -> None:
    """Parsing payloads together (runs of positions in one protobuf call) gives exactly what
    parsing each does: the same messages in order, and the same error at the same place."""
    # Compared by repr: a garbage position may carry a NaN, which equals nothing.
    assert repr(_parsed_together(payloads)) == repr(_parsed_one_by_one(payloads))


_payload_lists = st.lists(
    st.one_of(
        messages.map(lambda m: encode(m)[HEADER_SIZE:]),
        positions.map(lambda p: encode_position(p)[HEADER_SIZE:]),
        st.tuples(positions, st.integers(0, 300), st.integers(0, 300)).map(
            lambda t: _mangled(encode_position(t[0])[HEADER_SIZE:], t[1], t[2])
        ),
        st.binary(max_size=40).map(lambda b: bytes((0x32, len(b))) + b),
    ),
    max_size=12,
)


@given(
    st.one_of(
        _payload_lists,
        st.lists(positions, max_size=12).map(
            lambda ps: [encode_position(p)[HEADER_SIZE:] for p in ps]
        ),
    )
)
def test_parse_positions_is_parse_many_or_nothing(payloads: list[bytes]) -> None:
    """Whenever ``parse_positions`` answers, it is what parsing each payload gives, all
    positions (-0.0 spelt 0.0 alike); it declines (None) anything else or what does not
    parse."""
    together = parse_positions(payloads)
    each, error = _parsed_one_by_one(payloads)
    if error is not None or any(type(m) is not Position for m in each):
        assert together is None
    if together is not None:
        assert repr(together) == repr(each)


def test_parse_positions_of_a_burst() -> None:
    """A read of many position frames, -0.0 among them, parses to the positions sent."""
    sent = [Position("s", f"S{i}", float(i % 7) - 3.0, 2**60 + i) for i in range(300)]
    sent.append(Position("s", "Z", -0.0, 2**60))
    payloads = Decoder().feed(b"".join(map(encode_position, sent)))
    got = parse_positions(payloads)
    assert got == sent
    assert got is not None and repr(got[-1].net_position) == "0.0"


@given(st.lists(messages, max_size=8), st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_gives_the_same_frames(batch: list[Message], points: list[int]) -> None:
    """Cutting the byte stream at any points yields the same payloads and leaves nothing over."""
    data = b"".join(map(encode, batch))
    decoder = Decoder()
    payloads = decode_all(decoder, cut(data, points))
    assert [parse(p) for p in payloads] == batch
    assert decoder.buffered == 0


@given(st.lists(messages, max_size=5))
def test_one_byte_at_a_time(batch: list[Message]) -> None:
    """Feeding the stream one byte at a time (as h11's tests do) yields the same payloads."""
    data = b"".join(map(encode, batch))
    decoder = Decoder()
    payloads = decode_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert [parse(p) for p in payloads] == batch
    assert decoder.buffered == 0


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(0), max_size=8))
def test_any_payloads_any_chunking(raw: list[bytes], points: list[int]) -> None:
    """The decoder returns arbitrary payloads intact, whatever the chunking, empty ones included."""
    data = b"".join(map(frame, raw))
    assert decode_all(Decoder(max_frame_size=300), cut(data, points)) == raw


@given(st.binary(max_size=600), st.lists(st.integers(0), max_size=6))
def test_garbage_raises_only_wire_errors(data: bytes, points: list[int]) -> None:
    """Random bytes, in any chunking, decode and parse or raise WireError, nothing else."""
    decoder = Decoder(max_frame_size=256)
    try:
        for payload in decode_all(decoder, cut(data, points)):
            parse(payload)
    except WireError:
        pass
    assert decoder.buffered <= len(data)


@given(st.binary(max_size=400))
def test_garbage_payload_parses_or_is_malformed(payload: bytes) -> None:
    """Any payload inside a well-formed frame parses to a message or raises MalformedMessage."""
    try:
        message = parse(payload)
    except MalformedMessage:
        return
    assert isinstance(
        message,
        Hello | Auth | SyncDone | Heartbeat | Position | Digest | RepairRequest | Repair | Bye,
    )


@given(st.lists(messages, min_size=1, max_size=4), st.integers(0), st.binary(min_size=1))
def test_junk_inside_a_valid_length(batch: list[Message], where: int, junk: bytes) -> None:
    """Overwriting bytes inside a valid frame never raises anything but a WireError."""
    data = bytearray(b"".join(map(encode, batch)))
    start = HEADER_SIZE + where % (len(data) - HEADER_SIZE) if len(data) > HEADER_SIZE else 0
    data[start : start + len(junk)] = junk[: len(data) - start]
    try:
        for payload in Decoder().feed(bytes(data)):
            parse(payload)
    except WireError:
        pass
