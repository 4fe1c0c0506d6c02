"""Tests of the receiver's fast path (``Decoder.feed_positions``): for any bytes, in any
chunking, a connection gives the same events and the same errors as with every read cut by
``Decoder.feed`` and parsed by protobuf."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from position_distributor import wire
from position_distributor.protocol import Protocol, RemoteProtocolError
from position_distributor.types import MAX_TIMESTAMP, SYMBOL_CHARS, Position
from position_distributor.wire import (
    HEADER_SIZE,
    Decoder,
    Digest,
    Heartbeat,
    Hello,
    Message,
    Repair,
    SyncDone,
    encode,
    encode_position,
    encode_positions,
    parse_many,
)

PEER = "strategy_1"
OWN = "strategy_2"
NOW = 1_796_000_000_000_000_000  # 2026, in ns


class ProtobufOnly(Decoder):
    """The decoder without its fast path: every read cut by ``feed``, parsed by protobuf."""

    def feed_positions(self, data: bytes, strategy: str) -> tuple[None, list[bytes]]:
        return None, self.feed(data)


def connections(*, sync: bool = False, relay: bool = False, max_frame_size: int = 1 << 20):
    """Two connections from PEER in the same state: one with the fast path, one without."""
    pair = []
    for decoder in (Decoder, ProtobufOnly):
        protocol = Protocol(OWN, relay=relay, max_frame_size=max_frame_size)
        protocol._decoder = decoder(protocol._decoder.max_frame_size)
        start = encode(Hello(PEER)) + (b"" if sync else encode(SyncDone(0)))
        assert protocol.receive_data(start)[-1:] != []
        pair.append(protocol)
    return pair


def outcome(protocol: Protocol, chunks: list[bytes]) -> list[str]:
    """What each read gives (its events, or the error that closed the connection), as text
    (so that -0.0 and 0.0 differ), and the bytes left buffered."""
    seen = []
    for chunk in chunks:
        try:
            seen.append(repr(protocol.receive_data(chunk)))
        except RemoteProtocolError as exc:
            seen.append(f"{type(exc.__cause__).__name__}: {exc}")
            break
    return [*seen, f"buffered {protocol._decoder.buffered}"]


def same_outcome(data: bytes, points: list[int] = [], **state: bool) -> list[str]:  # noqa: B006
    """Check that both connections give the same outcome for ``data`` cut at ``points``."""
    fast, slow = connections(**state)
    chunks = cut(data, points)
    got = outcome(fast, chunks)
    assert got == outcome(slow, chunks)
    return got


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def burst(count: int, strategy: str = PEER, start: int = 0) -> list[Position]:
    return [
        Position(strategy, f"S{i:0{1 + i % 9}d}", float(i % 11) - 5.5, NOW + i * 1357)
        for i in range(start, start + count)
    ]


# Golden examples.


def test_a_burst_takes_the_fast_path() -> None:
    """A read of our encoder's frames of the peer's valid positions is cut and parsed by the
    fast path, into exactly the positions sent, the partial frame at its end kept."""
    sent = burst(300)
    data = encode_positions(sent)
    decoder = Decoder()
    positions, payloads = decoder.feed_positions(data[:-7], PEER)
    assert positions == sent[:-1] and payloads == []
    assert decoder.buffered == len(encode_position(sent[-1])) - 7
    last = encode_position(sent[-1])[HEADER_SIZE:]
    assert decoder.feed_positions(data[-7:], PEER) == (None, [last])  # a small read: as feed
    assert decoder.buffered == 0


def test_timestamps_at_the_edges() -> None:
    """Timestamps from 2**56 to just below MAX_TIMESTAMP, every 7-bit group at its extremes,
    decode as protobuf decodes them."""
    stamps = [2**56, 2**56 + 1, MAX_TIMESTAMP - 1, NOW, NOW | 0x7F, NOW & ~0x1FFFFF]
    stamps += [2**56 | (0x7F << (7 * k)) for k in range(8)]
    sent = [Position(PEER, "S", 1.5, t) for t in stamps] * 3
    positions, _ = Decoder().feed_positions(encode_positions(sent), PEER)
    assert positions == sent


def test_negative_zero_is_spelt_zero() -> None:
    """A net of -0.0 written in the canonical form (protobuf writes it) reads as 0.0."""
    head = struct.pack("<d", -0.0)
    sent = burst(20)
    data = bytearray(encode_positions(sent))
    at = data.index(struct.pack("<d", sent[5].net_position))
    data[at : at + 8] = head
    positions, _ = Decoder().feed_positions(bytes(data), PEER)
    assert positions is not None and repr(positions[5].net_position) == "0.0"
    assert repr(positions) == repr(list(parse_many(Decoder().feed(bytes(data)))))


@pytest.mark.parametrize(
    "odd",
    [
        Position(PEER, "ZERO", 0.0, NOW),  # the net left out
        Position(PEER, "SMALL", 1.0, 5),  # a short varint
        Position(PEER, "INF", float("inf"), NOW),
        Position(PEER, "NAN", float("nan"), NOW),
        Position(PEER, "LATE", 1.0, MAX_TIMESTAMP + 1),
        Position(PEER, "bad symbol", 1.0, NOW),
        Position(PEER, "S" * 33, 1.0, NOW),
        Position(PEER, "é", 1.0, NOW),
        Position(OWN, "ECHO", 1.0, NOW),  # of another strategy
        Position("x" * 100, "LONG", 1.0, NOW),  # a frame of 128 bytes or more
    ],
)
def test_any_other_frame_takes_the_general_path(odd: Position) -> None:
    """A read with one position the fast path does not take is cut and parsed as before,
    whole, with the same outcome, in sync and live alike."""
    data = encode_positions([*burst(20), odd, *burst(20, start=20)])
    assert Decoder().feed_positions(data, PEER)[0] is None
    for sync in (False, True):
        same_outcome(data, sync=sync)


def test_other_messages_after_the_positions() -> None:
    """Positions followed by a heartbeat, a Digest or an oversize length prefix read as before."""
    data = encode_positions(burst(30))
    for after in (encode(Heartbeat()), encode(Digest(3, b"h" * 32)), b"\x7f\xff\xff\xff"):
        for points in ([], [len(data) + 1], [len(data) - 3]):
            same_outcome(data + after, points)


def test_a_frame_too_large_for_a_small_maximum() -> None:
    """With a maximum frame size below the fast path's frames, every read is cut by feed."""
    data = encode_positions(burst(30))
    fast, slow = connections(max_frame_size=40)
    assert outcome(fast, [data]) == outcome(slow, [data])
    assert "above the maximum of 40" in outcome(connections(max_frame_size=40)[0], [data])[0]


# Properties: whatever the bytes and their chunking, the same as without the fast path.

_symbols = st.one_of(
    st.text(alphabet="ABCXYZaz09._:/-", min_size=1, max_size=32),
    st.text(alphabet="AB é\x00\x19 ", max_size=40),
)
_nets = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, float("inf"), float("nan")]),
)
_stamps = st.one_of(
    st.integers(NOW - 2**40, NOW + 2**40),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2**56 - 1, 2**56, MAX_TIMESTAMP - 1, MAX_TIMESTAMP, 2**63 - 1]),
)
_strategies = st.sampled_from([PEER, PEER, PEER, OWN, "s", "x" * 64])
_positions = st.builds(Position, _strategies, _symbols, _nets, _stamps)
_common = st.builds(
    Position,
    st.just(PEER),
    st.text(alphabet="ABC09.", min_size=1, max_size=32),
    st.floats(-1e9, 1e9),
    st.integers(2**56, MAX_TIMESTAMP - 1),
)
_messages: st.SearchStrategy[Message] = st.one_of(
    _common,
    _common,
    _common,
    _positions,
    st.just(Heartbeat()),
    st.builds(Digest, st.integers(0, 9), st.just(b"h" * 32)),
    st.builds(Repair, st.booleans()),
)


def _stream(messages: list[Message], filler: int) -> bytes:
    """The messages' frames after ``filler`` common positions (so that the read is large)."""
    return encode_positions(burst(filler)) + b"".join(map(encode, messages))


@given(
    st.lists(_positions, max_size=30),
    st.integers(0, 40),
    st.lists(st.integers(0), max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_any_positions_any_chunking(
    sent: list[Position], filler: int, points: list[int], sync: bool, relay: bool
) -> None:
    """Any positions (of any strategies, nets, timestamps), cut anywhere, read as without the
    fast path, in sync and live, with relay or not."""
    data = encode_positions(burst(filler)) + encode_positions(sent)
    same_outcome(data, points, sync=sync, relay=relay)


@given(st.lists(_common, min_size=1, max_size=60), st.lists(st.integers(0), max_size=6))
def test_common_positions_any_chunking(sent: list[Position], points: list[int]) -> None:
    """The peer's valid positions, cut anywhere, read as the positions sent, all of them."""
    data = encode_positions(sent)
    got = same_outcome(data, points)
    fast, _ = connections()
    received = [p for chunk in cut(data, points) for p in fast.receive_data(chunk)]
    assert repr(received) == repr([p._replace(net_position=p[2] + 0.0) for p in sent])
    assert got[-1] == "buffered 0"


@given(st.lists(_messages, max_size=20), st.integers(0, 30), st.lists(st.integers(0), max_size=4))
def test_any_messages_any_chunking(messages: list[Message], filler: int, points: list[int]) -> None:
    """Positions mixed with other messages, cut anywhere, read as without the fast path."""
    same_outcome(_stream(messages, filler), points)


@given(
    st.lists(_common, min_size=12, max_size=40),
    st.lists(st.tuples(st.integers(0), st.integers(0, 255), st.sampled_from("sdi")), max_size=4),
    st.lists(st.integers(0), max_size=3),
    st.booleans(),
)
def test_any_mutation_of_a_burst(
    sent: list[Position],
    edits: list[tuple[int, int, str]],
    points: list[int],
    sync: bool,
) -> None:
    """A burst with bytes overwritten, deleted or inserted anywhere (lengths, tags, names,
    symbols, nets, varints) reads as without the fast path: the same events or the same error."""
    data = bytearray(encode_positions(sent))
    for where, value, how in edits:
        at = where % len(data)
        if how == "s":
            data[at] = value
        elif how == "d":
            del data[at]
        else:
            data.insert(at, value)
    same_outcome(bytes(data), points, sync=sync)


@given(st.lists(_common, max_size=12), st.lists(st.integers(0), max_size=4))
def test_small_reads_too(sent: list[Position], points: list[int]) -> None:
    """Reads below the fast path's minimum size, taken by it all the same, read alike."""
    minimum = wire._MIN_CANONICAL_READ
    wire._MIN_CANONICAL_READ = 0  # type: ignore[misc]
    try:
        same_outcome(encode_positions(sent) + encode(Heartbeat()), points)
        same_outcome(encode_positions(sent), points)
    finally:
        wire._MIN_CANONICAL_READ = minimum  # type: ignore[misc]


def test_one_byte_at_a_time() -> None:
    """A burst fed one byte at a time reads as the positions sent."""
    sent = burst(40)
    data = encode_positions(sent)
    fast, _ = connections()
    received = [p for i in range(len(data)) for p in fast.receive_data(data[i : i + 1])]
    assert received == sent


def test_symbol_characters_match_the_rule() -> None:
    """The fast path takes symbols of exactly the characters a valid symbol may have."""
    for code in range(128):
        char = chr(code)
        sent = [Position(PEER, f"A{char}", 1.0, NOW + i) for i in range(30)]
        taken = Decoder().feed_positions(encode_positions(sent), PEER)[0] is not None
        assert taken == (char.isalnum() or char in "._:/-"), repr(char)
    assert "._:/-" in SYMBOL_CHARS and HEADER_SIZE == 4


@pytest.mark.parametrize("length", [1, 10, 64, 95, 100, 101, 102, 127, 128])
def test_names_and_symbols_of_every_length(length: int) -> None:
    """For a peer's name of any length, the frames of each length of symbol are taken (those
    under 128 bytes) or declined (the others, which protobuf encodes otherwise), and read as
    protobuf reads them."""
    name = "n" * length
    for size in range(1, 34):
        sent = [Position(name, f"{i:0{size}d}"[-size:], 2.5, NOW + i) for i in range(40)]
        data = encode_positions(sent)
        positions, payloads = Decoder().feed_positions(data, name)
        small = len(encode_position(sent[0])) - HEADER_SIZE < 128
        assert (positions is not None) == (small and size <= 32)
        expected = list(parse_many(Decoder().feed(data)))
        assert positions == expected if positions is not None else payloads == Decoder().feed(data)
