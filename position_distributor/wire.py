"""The wire codec: length-prefixed protobuf frames, parsed into small value types.

Pure: bytes in, messages out, bytes out. It never touches a socket. A frame is a 4-byte
big-endian length followed by a serialized ``Envelope`` (see ``protos/position.proto``).
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.message import DecodeError

from . import position_pb2 as pb
from .types import MAX_SYMBOL_LENGTH, MAX_TIMESTAMP, SYMBOL_CHARS, Position

__all__ = [
    "BYE_DUPLICATE",
    "BYE_STOPPING",
    "DEFAULT_MAX_FRAME_SIZE",
    "FEATURES",
    "FEATURE_BYE",
    "FEATURE_DIGEST",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "Auth",
    "Bye",
    "Decoder",
    "Digest",
    "FrameTooLarge",
    "Heartbeat",
    "Hello",
    "MalformedMessage",
    "Message",
    "Repair",
    "RepairRequest",
    "SyncDone",
    "WireError",
    "encode",
    "encode_position",
    "encode_positions",
    "frame",
    "parse",
    "parse_many",
    "parse_positions",
]

PROTOCOL_VERSION: Final = 1
HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20  # 1 MiB
# Bits of Hello.features: what else a node understands. A node sends these messages only to a
# peer whose Hello has the bit (a node of the first release has none, and ignores the field).
FEATURE_DIGEST: Final = 1  # Digest, RepairRequest, Repair
FEATURE_BYE: Final = 2  # Bye
FEATURES: Final = FEATURE_DIGEST | FEATURE_BYE  # what this release understands
BYE_DUPLICATE: Final = 1  # Bye.code: another node of the same name is already connected
BYE_STOPPING: Final = 2  # Bye.code: the sender stops (a graceful stop, not a failure)


class WireError(Exception):
    """The bytes received from a peer are not a valid stream of frames (the peer's fault)."""


class FrameTooLarge(WireError):
    """A length prefix exceeds the maximum frame size; raised before anything is buffered."""


class MalformedMessage(WireError):
    """A frame's payload is not a valid ``Envelope`` with a known body."""


class Hello(NamedTuple):
    """First message on a connection, sent by both sides."""

    strategy: str
    protocol_version: int = PROTOCOL_VERSION
    listen_port: int = 0
    nonce: bytes = b""
    relay: bool = False
    heartbeat_ms: int = 0
    instance: bytes = b""  # random per process start (empty from a first-release node)
    features: int = 0  # FEATURE_* bits


class Auth(NamedTuple):
    """Proof that the sender holds the cluster secret."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class SyncDone:
    """Marks the end of the sender's initial sync."""

    count: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Keeps an idle connection observably alive."""


@dataclass(frozen=True, slots=True)
class Digest:
    """The owner's digest of its own positions, after every position it covers."""

    count: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """The receiver's copy of the sender's positions differs from its Digest (the receiver's
    own digest of them, for the log)."""

    count: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Repair:
    """Starts (``done`` False) or ends a repair: every own position of the sender, between."""

    done: bool
    count: int = 0


class Bye(NamedTuple):
    """Why the sender closes the connection."""

    reason: str
    code: int = 0


Message = Hello | Auth | SyncDone | Heartbeat | Position | Digest | RepairRequest | Repair | Bye

_HEADER_MAX: Final = 1 << 32


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    if len(payload) >= _HEADER_MAX:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a frame")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def encode(message: Message) -> bytes:
    """Encode one message as a complete frame."""
    envelope = pb.Envelope()
    if isinstance(message, Position):
        return encode_position(message)
    if isinstance(message, Hello):
        envelope.hello.strategy = message.strategy
        envelope.hello.protocol_version = message.protocol_version
        envelope.hello.listen_port = message.listen_port
        envelope.hello.nonce = message.nonce
        envelope.hello.relay = message.relay
        envelope.hello.heartbeat_ms = message.heartbeat_ms
        envelope.hello.instance = message.instance
        envelope.hello.features = message.features
    elif isinstance(message, SyncDone):
        envelope.sync_done.count = message.count
    elif isinstance(message, Heartbeat):
        envelope.heartbeat.SetInParent()
    elif isinstance(message, Auth):
        envelope.auth.proof = message.proof
    elif isinstance(message, Digest):
        envelope.digest.count = message.count
        envelope.digest.hash = message.hash
    elif isinstance(message, RepairRequest):
        envelope.repair_request.count = message.count
        envelope.repair_request.hash = message.hash
    elif isinstance(message, Repair):
        envelope.repair.done = message.done
        envelope.repair.count = message.count
    elif isinstance(message, Bye):
        envelope.bye.reason = message.reason
        envelope.bye.code = message.code
    else:  # pragma: no cover - the type checker proves this unreachable
        raise TypeError(f"cannot encode {message!r}")
    return frame(envelope.SerializeToString())


# An Envelope holding only a position is the position field's tag (6, length-delimited),
# the SymbolPos's length and the SymbolPos: for a SymbolPos under 128 bytes (one byte of
# length; names and symbols are bounded well below that), the frame's first 6 bytes are
# these, so the Envelope need not be built (it would copy the SymbolPos into itself).
_POSITION_HEADS: Final = [bytes((0, 0, 0, size + 2, 0x32, size)) for size in range(128)]


_PACK_DOUBLE: Final = struct.Struct("<d").pack
_UNPACK_LENGTH: Final = struct.Struct(">I").unpack_from
# The start of a SymbolPos of each strategy seen: its field 1 and the tag of field 2. Bounded.
_STRATEGY_PREFIXES: dict[str, bytes] = {}
_MAX_PREFIXES: Final = 1024
# A timestamp's varint, for one in [2**56, 2**63) (every clock reading from 1972 to 2262),
# is 9 bytes: 3 for its low 21 bits, 6 for the rest, which a burst shares; the last 6 seen.
_high_varint: tuple[int, bytes] = (-1, b"")


def _high_varint_of(high: int) -> bytes:
    """The last 6 bytes of a timestamp's 9-byte varint, from its bits above the low 21."""
    return bytes(((high >> shift) & 0x7F) | 0x80 for shift in range(0, 35, 7)) + bytes(
        (high >> 35,)
    )


def encode_position(position: Position) -> bytes:
    """Encode one position as a complete frame (an ``Envelope`` holding a ``SymbolPos``).

    Written by hand for the common case (what protobuf writes, byte for byte: see the
    tests), by protobuf otherwise: an empty name, a zero net (left out of the message), a
    timestamp outside [2**56, 2**63), a message of 128 bytes or more.
    """
    global _high_varint
    strategy, symbol, net, timestamp = position
    if net != 0.0 and 0x100000000000000 <= timestamp < 0x8000000000000000 and symbol:
        prefix = _STRATEGY_PREFIXES.get(strategy)
        if prefix is None:
            name = strategy.encode()
            if not 0 < len(name) < 128:
                return _encode_position(position)
            if len(_STRATEGY_PREFIXES) >= _MAX_PREFIXES:
                _STRATEGY_PREFIXES.clear()
            prefix = _STRATEGY_PREFIXES[strategy] = b"\x0a%c%s\x12" % (len(name), name)
        high, varint = _high_varint
        if timestamp >> 21 != high:
            high = timestamp >> 21
            varint = _high_varint_of(high)
            _high_varint = (high, varint)
        encoded = symbol.encode()
        # prefix, symbol length, symbol, tag 3, double, tag 4, 9-byte varint
        size = len(prefix) + len(encoded) + 20
        if size < 128:
            low = timestamp & 0x1FFFFF
            return b"\x00\x00\x00%c\x32%c%s%c%s\x19%s %c%c%c%s" % (
                size + 2,  # the frame's length: the Envelope's 2-byte header and the body
                size,
                prefix,
                len(encoded),
                encoded,
                _PACK_DOUBLE(net),
                (low & 0x7F) | 0x80,
                ((low >> 7) & 0x7F) | 0x80,
                (low >> 14) | 0x80,
                varint,
            )
    return _encode_position(position)


def _encode_position(position: Position) -> bytes:
    """``encode_position`` by protobuf: the general case."""
    body = pb.SymbolPos(
        strategy_name=position[0],
        symbol=position[1],
        net_position=position[2],
        timestamp=position[3],
    ).SerializeToString()
    if len(body) < 128:
        return _POSITION_HEADS[len(body)] + body
    envelope = pb.Envelope()
    envelope.position.ParseFromString(body)
    return frame(envelope.SerializeToString())


_POSITION_FRAME: Final = b"\x00\x00\x00%c\x32%c%s%c%s\x19%s %c%c%c%s"  # see encode_position


# For _encode_alike: a byte's low 7 bits with the continuation bit; its top 1 and 2 bits;
# its low 6 and 5 bits moved up by 1 and 2 with the continuation bit (a varint's 7-bit
# groups straddle the bytes of the little-endian integer).
_LOW7: Final = bytes((b & 0x7F) | 0x80 for b in range(256))
_TOP1: Final = bytes(b >> 7 for b in range(256))
_TOP2: Final = bytes(b >> 6 for b in range(256))
_UP1: Final = bytes(((b << 1) & 0x7F) | 0x80 for b in range(256))
_UP2: Final = bytes(((b << 2) & 0x7F) | 0x80 for b in range(256))
_STRATEGY: Final = operator.itemgetter(0)
_SYMBOL: Final = operator.itemgetter(1)
_TIMESTAMP: Final = operator.itemgetter(3)
_ALIKE_MIN: Final = 16  # positions in a batch before _encode_alike pays


def _encode_alike(positions: list[Position]) -> bytes | None:
    """``encode_positions`` of a batch whose frames all have one size, column by column:
    one strategy (whose prefix ``encode_position`` learnt), ASCII symbols of one length,
    no zero net, timestamps sharing their varint's high 6 bytes (within one 2**21 ns, as a
    batch stamped by one clock reading is). Each field is written into every frame at once
    by a strided copy, the timestamps' low 7-bit groups taken from their packed bytes by
    translation tables: no Python per position. None for any other batch."""
    count = len(positions)
    (strategy, *others) = {*map(_STRATEGY, positions)}
    prefix = _STRATEGY_PREFIXES.get(strategy)
    if others or prefix is None:
        return None
    stamps = list(map(_TIMESTAMP, positions))
    first, last = min(stamps), max(stamps)
    if first < 0x100000000000000 or last >= 0x8000000000000000 or first >> 21 != last >> 21:
        return None
    nets = list(map(_NET, positions))
    text = "".join(map(_SYMBOL, positions))
    length, rest = divmod(len(text), count)
    size = len(prefix) + length + 20
    if (
        0.0 in nets
        or rest
        or not length
        or size >= 128
        or not text.isascii()
        or {*map(len, map(_SYMBOL, positions))} != {length}
    ):
        return None
    high = first >> 21
    varint = _high_varint_of(high)
    record = size + 6  # the 4-byte length, the Envelope's tag and size, the body
    buffer = bytearray(
        b"\x00\x00\x00%c\x32%c%s%c%s\x19%s %s%s"
        % (size + 2, size, prefix, length, bytes(length), bytes(8), bytes(3), varint)
        * count
    )
    at = 6 + len(prefix) + 1  # the symbol
    symbols = text.encode()
    for k in range(length):
        buffer[at + k :: record] = symbols[k::length]
    at += length + 1  # the net
    packed = struct.pack(f"<{count}d", *nets)
    for k in range(8):
        buffer[at + k :: record] = packed[k::8]
    at += 9  # the timestamp's low 21 bits, 7 at a time
    packed = struct.pack(f"<{count}Q", *stamps)
    byte0, byte1, byte2 = packed[0::8], packed[1::8], packed[2::8]
    buffer[at::record] = byte0.translate(_LOW7)
    for k, (low, up) in enumerate(((byte0, byte1), (byte1, byte2)), start=1):
        top = low.translate(_TOP1 if k == 1 else _TOP2)
        shifted = up.translate(_UP1 if k == 1 else _UP2)
        # Their bits do not overlap: one addition of the whole columns is a bytewise OR.
        total = int.from_bytes(top, "little") + int.from_bytes(shifted, "little")
        buffer[at + k :: record] = total.to_bytes(count, "little")
    return bytes(buffer)


def encode_positions(positions: Iterable[Position]) -> bytes:
    """Encode positions as consecutive frames, ready for a single ``sendall``: what
    ``encode_position`` gives for each, with its common case written out in one loop (the
    sender's path for a batch of changes), and a batch whose frames all have one size
    written column by column (``_encode_alike``)."""
    global _high_varint
    if isinstance(positions, list) and len(positions) >= _ALIKE_MIN:
        alike = _encode_alike(positions)
        if alike is not None:
            return alike
    frames: list[bytes] = []
    append = frames.append
    prefixes = _STRATEGY_PREFIXES
    pack = _PACK_DOUBLE
    high_seen, varint = _high_varint
    for position in positions:
        strategy, symbol, net, timestamp = position
        prefix = prefixes.get(strategy)
        if (
            prefix is None
            or net == 0.0
            or not 0x100000000000000 <= timestamp < 0x8000000000000000
            or not symbol
        ):
            append(encode_position(position))  # it also learns the strategy's prefix
            continue
        high = timestamp >> 21
        if high != high_seen:
            high_seen = high
            varint = _high_varint_of(high)
            _high_varint = (high, varint)
        encoded = symbol.encode()
        size = len(prefix) + len(encoded) + 20
        if size >= 128:
            append(encode_position(position))
            continue
        low = timestamp & 0x1FFFFF
        append(
            _POSITION_FRAME
            % (
                size + 2,
                size,
                prefix,
                len(encoded),
                encoded,
                pack(net),
                (low & 0x7F) | 0x80,
                ((low >> 7) & 0x7F) | 0x80,
                (low >> 14) | 0x80,
                varint,
            )
        )
    return b"".join(frames)


def parse(payload: bytes) -> Message:
    """Parse one frame's payload into a message; raise ``MalformedMessage`` if it is not one."""
    try:
        envelope = pb.Envelope.FromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"undecodable frame of {len(payload)} bytes") from exc
    kind = envelope.WhichOneof("body")
    if kind == "position":
        p = envelope.position
        # Adding 0.0 turns -0.0 into 0.0, so equal positions always print alike.
        return Position(p.strategy_name, p.symbol, p.net_position + 0.0, p.timestamp)
    if kind == "heartbeat":
        return Heartbeat()
    if kind == "hello":
        h = envelope.hello
        return Hello(
            h.strategy,
            h.protocol_version,
            h.listen_port,
            h.nonce,
            h.relay,
            h.heartbeat_ms,
            h.instance,
            h.features,
        )
    if kind == "sync_done":
        return SyncDone(envelope.sync_done.count)
    if kind == "auth":
        return Auth(envelope.auth.proof)
    if kind == "digest":
        return Digest(envelope.digest.count, envelope.digest.hash)
    if kind == "repair_request":
        return RepairRequest(envelope.repair_request.count, envelope.repair_request.hash)
    if kind == "repair":
        return Repair(envelope.repair.done, envelope.repair.count)
    if kind == "bye":
        return Bye(envelope.bye.reason, envelope.bye.code)
    if payload:
        raise MalformedMessage(
            f"frame of {len(payload)} bytes carries no known message"
            " (a bare SymbolPos from a peer that does not speak this protocol?)"
        )
    raise MalformedMessage("empty frame")


def _position_run_class() -> Any:
    """``message PositionRun { repeated SymbolPos position = 6; }``, never sent: an Envelope
    holding one position is the same bytes as a PositionRun of one, so the payloads of many
    such frames joined together are one PositionRun, parsed by protobuf in a single call."""
    file = descriptor_pb2.FileDescriptorProto(
        name="position_distributor/position_run.proto",
        package="position_distributor",
        dependency=[pb.DESCRIPTOR.name],
        syntax="proto3",
    )
    file.message_type.add(name="PositionRun").field.add(
        name="position",
        number=pb.Envelope.DESCRIPTOR.fields_by_name["position"].number,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".position_distributor.SymbolPos",
    )
    pool = pb.DESCRIPTOR.pool
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("position_distributor.PositionRun")
    )


_PositionRun: Final[Any] = _position_run_class()
_POSITION_TAG: Final = 0x32  # field 6 (position), length-delimited


def parse_many(payloads: list[bytes]) -> Iterator[Message]:
    """Parse frames' payloads in order, as ``parse`` does each; raise ``MalformedMessage`` at
    the first that is not a message, after yielding every message before it.

    Consecutive payloads that are each exactly one position (the tag of the Envelope's
    position field, a one-byte length, and that many bytes) are parsed together, in one call
    to protobuf; anything else, or a run that does not parse, goes through ``parse``.
    """
    run: list[bytes] = []
    for payload in payloads:
        size = len(payload)
        if 2 < size < 130 and payload[0] == _POSITION_TAG and payload[1] == size - 2:
            run.append(payload)
            continue
        if run:
            yield from _parse_run(run)
            run = []
        yield parse(payload)
    if run:
        yield from _parse_run(run)


def parse_positions(payloads: list[bytes]) -> list[Position] | None:
    """The positions of ``payloads`` if each is exactly one position, as ``parse_many`` yields
    them, parsed in one call to protobuf; None if any is something else or the run does not
    parse (then ``parse_many`` says which). The receiver's path for a read of live updates.
    """
    for payload in payloads:
        size = len(payload)
        if not (2 < size < 130 and payload[0] == _POSITION_TAG and payload[1] == size - 2):
            return None
    try:
        return _positions_of(_PositionRun.FromString(b"".join(payloads)).position)
    except DecodeError:
        return None


# A parsed SymbolPos's fields in a Position's order, and tuples of them made Positions by
# map(tuple.__new__, _POSITION_TYPE, tuples): converting a run costs no Python code per
# position (0.03 us a position less than through a partial of tuple.__new__).
_FIELDS: Final = operator.attrgetter("strategy_name", "symbol", "net_position", "timestamp")
_POSITION_TYPE: Final = itertools.repeat(Position)
_NET: Final = operator.itemgetter(2)


def _positions_of(parsed: Iterable[Any]) -> list[Position]:
    """Positions of parsed ``SymbolPos`` messages; a net of -0.0 is spelt 0.0 (they compare
    equal but print differently), so equal positions always print alike."""
    positions = list(map(tuple.__new__, _POSITION_TYPE, map(_FIELDS, parsed)))
    if 0.0 in map(_NET, positions):  # rare: only then look for -0.0 among the zeros
        positions = [p if p[2] != 0.0 else p._replace(net_position=0.0) for p in positions]
    return positions


def _parse_run(run: list[bytes]) -> Iterator[Message]:
    try:
        parsed = _PositionRun.FromString(b"".join(run)).position
    except DecodeError:
        for payload in run:  # says which one, after the ones before it
            yield parse(payload)
        return
    yield from _positions_of(parsed)


# The receiver's fast path: a read of frames that are each one valid position of the peer's
# strategy in the canonical encoding (what encode_position writes: a frame of 0 0 0 L, then
# 0x32 and S = L - 2, the Envelope's position field; 0x0a and the name's length and bytes;
# 0x12 and the symbol's; 0x19 and the net's 8 bytes, little-endian; 0x20 and a 9-byte varint
# timestamp), cut and decoded by C loops over the whole read: no protobuf object, no Python
# code per frame. The pattern's split of a read is [b"", head, symbol, tail] per frame, then
# what follows the last: bytes between two frames mean one of another kind.
_TOP_BYTE: Final = MAX_TIMESTAMP >> 56  # a 9th varint byte below it: 2**56 <= t < MAX
assert _TOP_BYTE << 56 == MAX_TIMESTAMP and 1 < _TOP_BYTE < 0x80
_CANONICAL_FRAME: Final = (
    rb"\x00\x00\x00(.\x32.\x0a%s\x12.)"  # the head: its lengths, the name, the symbol's tag
    + rb"([%s]{1,%%d})" % SYMBOL_CHARS.encode()  # a valid symbol, its frame under 128 bytes
    + rb"\x19(.{8}\x20.{9})"  # the net, the timestamp (its varint checked after)
)
_TAIL: Final = 18  # the net's 8 bytes, the timestamp's tag and 9 bytes
_MIN_CANONICAL_READ: Final = 512  # bytes of a read below which protobuf parses it faster


class _Canonical(NamedTuple):
    """One strategy's canonical frames: ``split`` by their pattern, the size of a head, and
    a frame's length and its SymbolPos's by the length of its symbol (``bytes.translate``
    tables)."""

    split: Any
    head: int
    frame_sizes: bytes
    body_sizes: bytes


_CANONICAL: dict[str, _Canonical | None] = {}  # by strategy, bounded as _STRATEGY_PREFIXES


def _canonical(strategy: str) -> _Canonical | None:
    """``strategy``'s canonical frames (None for a name too long for any), cached."""
    form = _CANONICAL.get(strategy)
    if form is None and strategy not in _CANONICAL:
        name = strategy.encode()
        body = len(name) + 23  # a SymbolPos's bytes besides its symbol's
        longest = min(MAX_SYMBOL_LENGTH, 127 - 2 - body)  # a frame's length is one byte
        if longest > 0:
            prefix = b"%c%s" % (len(name), name)
            pattern = _CANONICAL_FRAME % (re.escape(prefix), longest)
            form = _Canonical(
                re.compile(pattern, re.DOTALL).split,
                len(prefix) + 6,
                bytes((body + 2 + length) & 0xFF for length in range(256)),
                bytes((body + length) & 0xFF for length in range(256)),
            )
        if len(_CANONICAL) >= _MAX_PREFIXES:
            _CANONICAL.clear()
        _CANONICAL[strategy] = form
    return form


# Masks over a read's timestamps in 8-byte slots (see _nets_and_timestamps): the low 7 bits of each
# byte, then each slot's low and high 8-, 16- and 32-bit halves of its 16-, 32-, 64-bit parts.
_SLOT_MASKS: Final = (
    b"\x7f" * 8,
    b"\xff\x00" * 4,
    b"\x00\xff" * 4,
    b"\xff\xff\x00\x00" * 2,
    b"\x00\x00\xff\xff" * 2,
    b"\xff" * 4 + b"\x00" * 4,
    b"\x00" * 4 + b"\xff" * 4,
)
_masks: tuple[int, list[int]] = (0, [])  # for how many slots, the masks
_FLIP_TOP_BIT: Final = bytes(byte ^ 0x80 for byte in range(256))  # then ASCII: all had it
_NINTH_BYTES: Final = bytes(range(1, _TOP_BYTE))  # a 9th varint byte for 2**56 <= t < MAX


def _nets_and_timestamps(
    tails: bytearray, count: int
) -> tuple[tuple[float, ...], tuple[int, ...]] | None:
    """The nets and timestamps of ``count`` frames' tails (a net's 8 bytes, 0x20 and 9 bytes
    each), decoded together, if each timestamp is a 9-byte varint from 2**56 to MAX_TIMESTAMP:
    the nets' bytes gathered by strided copies, the varints' first 8 bytes laid in 8-byte
    slots of one big integer, whose 7-bit groups are packed by 4 rounds of masks and shifts
    over all the slots at once, then their 9th bytes added. None if one is not."""
    global _masks
    size, masks = _masks
    if size < count:  # grown to the largest read seen, then reused
        size = max(count, 2 * size)
        masks = [int.from_bytes(mask * size, "little") for mask in _SLOT_MASKS]
        _masks = (size, masks)
    low7, low8, high8, low16, high16, low32, high32 = masks
    slots = bytearray(8 * count)
    for i in range(8):
        slots[i::8] = tails[i::_TAIL]
    nets = struct.unpack(f"<{count}d", slots)
    for i in range(8):
        slots[i::8] = tails[9 + i :: _TAIL]
    ninth = tails[17::_TAIL]
    if not slots.translate(_FLIP_TOP_BIT).isascii() or ninth.translate(None, _NINTH_BYTES):
        return None
    x = int.from_bytes(slots, "little") & low7
    x = (x & high8) >> 1 | (x & low8)
    x = (x & high16) >> 2 | (x & low16)
    x = (x & high32) >> 4 | (x & low32)
    slots = bytearray(8 * count)
    slots[7::8] = ninth  # the 9th byte: the value's bits 56 to 62
    x |= int.from_bytes(slots, "little")
    return nets, struct.unpack(f"<{count}Q", x.to_bytes(8 * count, "little"))


def _canonical_positions(data: bytes, strategy: str) -> tuple[list[Position] | None, int]:
    """The positions of the frames at the start of ``data`` and the bytes they take, if each
    is a valid position of ``strategy`` in the canonical encoding, up to what follows them,
    which is not such a frame (the caller cuts it as any frames); (None, 0) if anything
    before is not: then cut and parse ``data`` as any frames."""
    form = _CANONICAL.get(strategy) or _canonical(strategy)
    if form is None:
        return None, 0
    parts = form.split(data)
    if any(parts[0:-1:4]):  # bytes before a frame: one of another kind
        return None, 0
    symbols = parts[2::4]
    if not symbols:
        return [], 0
    # Each frame's lengths (its header's, its SymbolPos's, its symbol's: the first, third
    # and last bytes of its head) are those its symbol makes: then it is whole and no more.
    heads = b"".join(parts[1::4])
    lengths = bytes(map(len, symbols))
    size = form.head
    if (
        heads[size - 1 :: size] != lengths
        or heads[::size] != lengths.translate(form.frame_sizes)
        or heads[2::size] != lengths.translate(form.body_sizes)
    ):
        return None, 0
    count = len(symbols)
    # (A bytearray: a strided copy from one costs half as much as from bytes.)
    decoded = _nets_and_timestamps(bytearray().join(parts[3::4]), count)
    if decoded is None:
        return None, 0
    nets, timestamps = decoded
    if not math.isfinite(sum(nets)):  # an infinite or NaN one (or a sum that overflows)
        return None, 0
    if 0.0 in nets:  # a net of -0.0 is spelt 0.0, as _positions_of does
        nets = tuple([net + 0.0 for net in nets])
    positions = list(
        map(
            tuple.__new__,
            _POSITION_TYPE,
            zip(
                itertools.repeat(strategy, count),
                b" ".join(symbols).decode("ascii").split(" "),
                nets,
                timestamps,
                strict=True,
            ),
        )
    )
    return positions, len(data) - len(parts[-1])


class Decoder:
    """Splits a byte stream into frame payloads, whatever the chunking of the bytes.

    ``feed(data)`` returns every payload completed by ``data``. A length prefix above
    ``max_frame_size`` raises ``FrameTooLarge`` before any of its body is buffered, so a peer
    can never make us allocate more than ``max_frame_size`` plus one read.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        # Bytes the first frame in _buffer needs in all (its header's 4 until that is whole):
        # until then a read is only appended, so a frame trickled in costs linear time.
        self._needed = HEADER_SIZE

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of the frames they complete."""
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return []
            data = bytes(buffer)
            buffer.clear()
        payloads, consumed = self._split(data)
        if consumed < len(data):
            rest = data[consumed:]
            buffer += rest
            self._needed = (
                HEADER_SIZE + _UNPACK_LENGTH(rest)[0] if len(rest) >= HEADER_SIZE else HEADER_SIZE
            )
        return payloads

    def feed_positions(
        self, data: bytes, strategy: str
    ) -> tuple[list[Position] | None, list[bytes]]:
        """``feed`` for the common read of live updates: (positions, []) if every frame that
        ``data`` completes is a valid position of ``strategy`` in the canonical encoding (a
        symbol of 1 to 32 of the valid characters, a finite net, a timestamp from 2**56 to
        ``MAX_TIMESTAMP``: what ``encode_position`` writes), cut and parsed as the frames'
        ``parse_many`` would; else (None, the payloads ``feed`` returns). The bytes after the
        last whole frame are kept, and a length prefix above the maximum raises, as ``feed``.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return [], []
            data = bytes(buffer)
            buffer.clear()
        # A frame found there is under 128 bytes (if that could be too large, cut as feed);
        # its fixed cost is that of some 10 frames parsed by protobuf (then they are).
        positions, consumed = (
            _canonical_positions(data, strategy)
            if len(data) >= _MIN_CANONICAL_READ and self.max_frame_size >= 127
            else (None, 0)
        )
        if positions is None:
            payloads, consumed = self._split(data)
        else:
            payloads, used = self._split(data[consumed:] if consumed else data)
            consumed += used
            if payloads:  # frames of another kind after the positions: cut them all as feed
                if positions:
                    payloads, consumed = self._split(data)
                positions = None
        if consumed < len(data):
            rest = data[consumed:]
            buffer += rest
            self._needed = (
                HEADER_SIZE + _UNPACK_LENGTH(rest)[0] if len(rest) >= HEADER_SIZE else HEADER_SIZE
            )
        return positions, payloads

    def _split(self, data: bytes) -> tuple[list[bytes], int]:
        """Cut complete frames off the front of ``data``; return them and the bytes used."""
        payloads: list[bytes] = []
        append = payloads.append
        unpack = _UNPACK_LENGTH
        offset = 0
        end = len(data)
        limit = self.max_frame_size
        while end - offset >= HEADER_SIZE:
            (length,) = unpack(data, offset)
            if length > limit:
                raise FrameTooLarge(
                    f"frame of {length} bytes announced, above the maximum of {limit}"
                )
            start = offset + HEADER_SIZE
            if end - start < length:
                break
            offset = start + length
            append(data[start:offset])
        return payloads, offset
