"""What each step of the message path costs, in microseconds per trade, in one process.

    python -m benchmarks.micro

No sockets and no threads: the node's own functions called in a loop (best of 5 repeats),
and the two consumers' batch methods (``Engine._apply_trades``, ``Engine._apply_positions``)
run on a real store in a temp dir with a recording stand-in for the Peer. Beside them,
small prototypes of faster ways to do the same step (marked "proto"), to size what an
optimisation could buy. The numbers are CPU time of one thread (``time.thread_time``), so
they add up to a budget per trade that the profiles of W1 can be checked against.
"""

from __future__ import annotations

import io
import math
import queue
import re
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from position_distributor import position_pb2 as pb
from position_distributor.console import parse_line
from position_distributor.dispatcher import EventDispatcher
from position_distributor.engine import Engine, Output
from position_distributor.protocol import Protocol
from position_distributor.store import JournalEntry, Store
from position_distributor.types import Position, format_row, invalid_position_reason
from position_distributor.wire import (
    Decoder,
    Hello,
    SyncDone,
    encode,
    encode_position,
    encode_positions,
    parse,
)

BATCH = 4096
_CLOCK = 2**62
SYMBOLS = [f"SYM{i:03d}" for i in range(100)]


def per_call(fn: Callable[[], Any], calls: int, repeats: int = 7) -> float:
    """Least CPU time of ``repeats`` runs of ``fn`` (which does ``calls`` operations), in us
    per operation. Thread CPU time, not wall time: a busy machine preempting us costs
    nothing here (it still pollutes caches)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best / calls * 1e6


class _FakePeer:
    """Stands in for Peer (the engine's LinkTransport): encodes what it is given to publish,
    as Peer does once for all its connections, and records it as broadcast."""

    def __init__(self) -> None:
        self.sent = 0

    def publish(self, own: list[Position], relayed: Any = ()) -> int:
        if not own:
            return 0
        return len(own) * self.broadcast(encode_positions(own))

    def broadcast(self, data: bytes) -> int:
        self.sent += len(data)
        return 1

    def links(self) -> tuple[()]:
        return ()

    def configured(self) -> list[str | None]:
        return []


class _FakeConn:
    name = "strategy_2"


# Prototypes of faster steps (not the node's code).

_TRADE = re.compile(
    rb"([A-Za-z0-9._:/-]{1,32})[ \t]+([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)


def proto_parse_chunk(data: bytes) -> list[tuple[str, float]]:
    """Parse a chunk of ``SYMBOL QTY`` lines with one regex per line (slow path elsewhere)."""
    out = []
    fullmatch = _TRADE.fullmatch
    for line in data.split(b"\n"):
        m = fullmatch(line.rstrip(b"\r"))
        if m is not None:
            out.append((m.group(1).decode(), float(m.group(2))))
    return out


class ProtoEncoder:
    """SymbolPos in an Envelope by hand: the strategy and symbol prefixes cached."""

    def __init__(self, strategy: str) -> None:
        s = strategy.encode()
        self._strategy = b"\x0a" + bytes([len(s)]) + s
        self._symbols: dict[str, bytes] = {}
        self._pack = struct.Struct("<d").pack

    def encode(self, symbol: str, net: float, ts: int) -> bytes:
        prefix = self._symbols.get(symbol)
        if prefix is None:
            b = symbol.encode()
            prefix = self._symbols[symbol] = self._strategy + b"\x12" + bytes([len(b)]) + b
        body = prefix
        if net != 0.0:
            body += b"\x19" + self._pack(net)
        if ts:
            body += b"\x20" + _varint(ts)
        inner = b"\x32" + _varint(len(body)) + body  # Envelope.position = 6
        return len(inner).to_bytes(4, "big") + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def main() -> None:
    rows: list[tuple[str, str, float]] = []

    def add(path: str, what: str, us: float) -> None:
        rows.append((path, what, us))
        print(f"{path:<9} {what:<66} {us:8.2f} us", flush=True)

    positions = [
        Position("strategy_1", SYMBOLS[i % 100], float(i), 1_742_308_549_773_254_000 + i)
        for i in range(BATCH)
    ]
    lines = [f"{SYMBOLS[i % 100]} {i % 1000 + 1}\n" for i in range(BATCH)]
    chunk = "".join(lines).encode()

    # Sender: console.
    add(
        "sender",
        "console.parse_line (per line)",
        per_call(lambda: [parse_line(x) for x in lines], BATCH),
    )
    add(
        "sender",
        "proto: one regex per line over a read chunk",
        per_call(lambda: proto_parse_chunk(chunk), BATCH),
    )
    add(
        "sender",
        "for line in TextIOWrapper (stdin iteration, per line)",
        per_call(lambda: [None for _ in io.TextIOWrapper(io.BytesIO(chunk))], BATCH),
    )

    def queue_round_trip() -> None:
        q: queue.Queue[Any] = queue.Queue(65536)
        for x in lines:
            q.put(x)
        for _ in lines:
            q.get_nowait()

    add("sender", "queue.Queue put + get_nowait (per item)", per_call(queue_round_trip, BATCH))

    def queue_batched() -> None:
        q: queue.Queue[Any] = queue.Queue(65536)
        for i in range(0, BATCH, 256):
            q.put(lines[i : i + 256])
        while not q.empty():
            q.get_nowait()

    add("sender", "proto: queue.Queue of lists of 256 (per item)", per_call(queue_batched, BATCH))

    # Encoding, rows.
    add(
        "both",
        "wire.encode_position (per position)",
        per_call(lambda: [encode_position(p) for p in positions], BATCH),
    )
    enc = ProtoEncoder("strategy_1")
    add(
        "both",
        "proto: hand-rolled Envelope{SymbolPos}, cached prefixes",
        per_call(lambda: [enc.encode(p[1], p[2], p[3]) for p in positions], BATCH),
    )
    SymbolPos = pb.SymbolPos

    def one_message(p: Position) -> bytes:
        body = SymbolPos(
            strategy_name=p[0], symbol=p[1], net_position=p[2], timestamp=p[3]
        ).SerializeToString()
        inner = b"\x32" + _varint(len(body)) + body
        return len(inner).to_bytes(4, "big") + inner

    add(
        "both",
        "proto: SymbolPos only, Envelope header by hand",
        per_call(lambda: [one_message(p) for p in positions], BATCH),
    )
    assert one_message(positions[5]) == encode_position(positions[5])
    assert enc.encode(positions[5][1], positions[5][2], positions[5][3]) == encode_position(
        positions[5]
    )
    add(
        "both",
        "types.format_row (per row)",
        per_call(lambda: [format_row(p) for p in positions], BATCH),
    )
    add(
        "both",
        "Position(...) NamedTuple construction",
        per_call(lambda: [Position("strategy_1", "SYM001", 1.0, 5) for _ in range(BATCH)], BATCH),
    )

    # Receiver: wire and protocol.
    frames = b"".join(encode_position(p) for p in positions)
    payloads = Decoder().feed(frames)
    add(
        "receiver",
        "Decoder.feed (per frame, one 150 KB chunk)",
        per_call(lambda: Decoder().feed(frames), BATCH),
    )
    add(
        "receiver",
        "wire.parse (per payload)",
        per_call(lambda: [parse(x) for x in payloads], BATCH),
    )
    add(
        "receiver",
        "pb.SymbolPos in Envelope: FromString only (per payload)",
        per_call(lambda: [pb.Envelope.FromString(x) for x in payloads], BATCH),
    )
    add(
        "receiver",
        "types.invalid_position_reason (per position)",
        per_call(lambda: [invalid_position_reason(p) for p in positions], BATCH),
    )
    valid_symbols: set[str] = set()

    def cached_check(p: Position, peer: str = "strategy_1") -> str | None:
        # The strategy was validated in the Hello; symbols seen before need no regex.
        if p[0] != peer or p[1] not in valid_symbols:
            reason = invalid_position_reason(p)
            if reason is not None:
                return reason
            if len(valid_symbols) < 100_000:
                valid_symbols.add(p[1])
            return None
        if not (p[3] > 0 and math.isfinite(p[2])):
            return invalid_position_reason(p)
        return None

    add(
        "receiver",
        "proto: same check, strategy known from Hello, symbols cached",
        per_call(lambda: [cached_check(p) for p in positions], BATCH),
    )
    peer_positions = [p._replace(strategy="strategy_2") for p in positions]
    live = b"".join(encode_position(p) for p in peer_positions)

    def receive_all() -> None:
        proto = Protocol("strategy_1")
        proto.receive_data(encode(Hello("strategy_2")) + encode(SyncDone(0)))
        proto.receive_data(live)

    add(
        "receiver",
        "Protocol.receive_data, live positions (per message)",
        per_call(receive_all, BATCH),
    )

    # Store and the two consumers, on a real SQLite file.
    tmp = Path(tempfile.mkdtemp(prefix="pd-micro-"))
    try:
        store = Store(tmp / "s", "strategy_1")
        journal = [JournalEntry(p[3], p[1], 1.0, p[2], p[3]) for p in positions]
        # The journal is keyed by timestamp: each measured commit gets rows of its own.
        journals = iter(
            [
                [entry._replace(timestamp=entry.timestamp + k * 2 * BATCH) for entry in journal]
                for k in range(1, 240)
            ]
        )
        add(
            "sender",
            "Store.commit(4096 positions + 4096 journal rows) per trade",
            per_call(lambda: store.commit(positions, _CLOCK, next(journals)), BATCH),
        )
        last = list({p[1]: p for p in positions}.values())
        add(
            "sender",
            "proto: Store.commit(last of each of 100 symbols + 4096 journal)",
            per_call(lambda: store.commit(last, _CLOCK, next(journals)), BATCH),
        )
        add(
            "receiver",
            "Store.commit(4096 positions) per position",
            per_call(lambda: store.commit(positions, _CLOCK), BATCH),
        )
        add(
            "receiver",
            "proto: Store.commit(last of each of 100 symbols) per position",
            per_call(lambda: store.commit(last, _CLOCK), BATCH),
        )
        for index in (True, False):
            db = sqlite3.connect(tmp / f"j{index}.sqlite3", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE journal (id INTEGER PRIMARY KEY, time_ns INTEGER, symbol TEXT,"
                " quantity REAL, net_position REAL, timestamp INTEGER)"
            )
            if index:
                db.execute("CREATE INDEX journal_by_symbol ON journal (symbol, id)")

            def insert(db: sqlite3.Connection = db) -> None:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO journal (time_ns, symbol, quantity, net_position, timestamp)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [entry[:5] for entry in journal],
                )
                db.execute("COMMIT")

            add(
                "sender",
                f"  journal rows alone, {'with' if index else 'without'} the symbol index",
                per_call(insert, BATCH),
            )
            db.close()

        def commit_one_each() -> None:
            # No clock, as the engine commits (the clock is implied by what is stored).
            for _ in range(25):
                store.commit(positions[:1], None, next(journals)[:1])

        add(
            "both",
            "Store.commit(1 position + 1 journal row): one transaction",
            per_call(commit_one_each, 25),
        )
        store.close()

        sink = Output(open("/dev/null", "w"))  # noqa: SIM115
        peer = _FakePeer()
        store = Store(tmp / "e", "strategy_1")
        store.mark_recovered()
        engine = Engine("strategy_1", EventDispatcher(), peer, store, out=sink)  # type: ignore[arg-type]
        trades = [(SYMBOLS[i % 100], float(i % 1000 + 1), None) for i in range(BATCH)]
        from position_distributor.engine import _Trade

        batch = [_Trade(*t) for t in trades]
        add(
            "sender",
            "Engine._apply_trades, batch of 4096 (per trade; store, encode, rows)",
            per_call(lambda: engine._apply_trades([(0.0, batch)]), BATCH),
        )
        conn = _FakeConn()
        counter = [10**18]

        def apply_positions() -> None:
            counter[0] += BATCH
            base = counter[0]
            msgs = [
                p._replace(strategy="strategy_2", timestamp=base + i)
                for i, p in enumerate(positions)
            ]
            engine._apply_positions([(conn, msgs)])  # type: ignore[list-item]

        add(
            "receiver",
            "Engine._apply_positions, batch of 4096 (per position; incl. _replace)",
            per_call(apply_positions, BATCH),
        )
        add(
            "receiver",
            "  of which building the 4096 test positions (_replace)",
            per_call(
                lambda: [
                    p._replace(strategy="strategy_2", timestamp=i) for i, p in enumerate(positions)
                ],
                BATCH,
            ),
        )
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _RecordingPeer(_FakePeer):
    """Stands in for Peer: keeps what would be broadcast (the byte stream a peer receives)."""

    def __init__(self) -> None:
        super().__init__()
        self.stream: list[bytes] = []

    def broadcast(self, data: bytes) -> int:
        self.stream.append(data)
        return 1


def _console_reads(text: bytes, size: int = 1 << 15) -> list[bytes]:
    """``text`` as the console takes it from stdin: reads of ``size`` bytes, each cut after
    its last newline, the rest carried into the next."""
    reads = []
    tail = b""
    for start in range(0, len(text), size):
        data = tail + text[start : start + size]
        end = data.rfind(b"\n") + 1
        reads.append(data[:end])
        tail = data[end:]
    return reads


def no_coalescing(count: int = 20_000, repeats: int = 5) -> dict[str, float]:
    """W1N's path in one process, step by step, in CPU us per trade (best of ``repeats``):
    a symbol per trade, so every trade is stored, encoded, sent, received, stored and printed
    on its own. The sender: the console's parse of 64 KiB reads, ``Engine._apply_trades``
    (book, clock, journal, store, encode, rows); the receiver: ``Protocol.receive_data``
    of 64 KiB reads (cut, parse, check), ``Engine._apply_positions`` (book, store, rows).
    Each repeat uses fresh symbols, as W1N does."""
    from position_distributor.console import trades_of
    from position_distributor.engine import _Trade

    tmp = Path(tempfile.mkdtemp(prefix="pd-micro-"))
    sink = Output(open("/dev/null", "w"))  # noqa: SIM115
    best: dict[str, float] = {}
    try:
        peer = _RecordingPeer()
        sender = Engine(
            "strategy_1", EventDispatcher(), peer, Store(tmp / "a", "strategy_1"),  # type: ignore[arg-type]
            out=sink, max_symbols=10**7,
        )  # fmt: skip
        receiver = Engine(
            "strategy_2", EventDispatcher(), _FakePeer(), Store(tmp / "b", "strategy_2"),  # type: ignore[arg-type]
            out=sink, max_symbols=10**7,
        )  # fmt: skip
        protocol = Protocol("strategy_2", dialler=True)
        protocol.receive_data(encode(Hello("strategy_1")) + encode(SyncDone(0)))
        conn = _FakeConn()
        conn.name = "strategy_1"
        for rep in range(repeats):
            text = "".join(f"U{rep}{i:06d} {i % 1000 + 1}\n" for i in range(count)).encode()
            reads = _console_reads(text)
            timings: dict[str, float] = {}
            clock = time.thread_time
            t0 = clock()
            chunks = [trades_of(r) for r in reads]
            t1 = clock()
            timings["sender: console parse (console.trades_of)"] = t1 - t0
            batches = [[_Trade(*t) for t in chunk or ()] for chunk in chunks]
            peer.stream.clear()
            # A node folds the journal once trading is quiet: timed apart, after the burst.
            store = sender._store
            t0 = clock()
            for batch in batches:
                sender._apply_trades([(0.0, batch)])
            t1 = clock()
            timings["sender: Engine._apply_trades (book, store, encode, rows)"] = t1 - t0
            t0 = clock()
            store.fold()
            timings["sender: Store.fold after the burst (own positions)"] = clock() - t0
            stream = b"".join(peer.stream)
            pieces = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
            t0 = clock()
            events = [protocol.receive_data(piece) for piece in pieces]
            t1 = clock()
            timings["receiver: Protocol.receive_data (cut, parse, check)"] = t1 - t0
            t0 = clock()
            for received in events:
                receiver._apply_positions([(conn, received)])  # type: ignore[list-item]
            t1 = clock()
            timings["receiver: Engine._apply_positions (book, store, rows)"] = t1 - t0
            positions = [p for received in events for p in received]
            assert len(positions) == count, len(positions)
            t0 = clock()
            encode_positions(positions)  # type: ignore[arg-type]
            timings["  of which encode_positions"] = clock() - t0
            timings = {name: seconds / count * 1e6 for name, seconds in timings.items()}
            for name, us in timings.items():
                best[name] = min(best.get(name, float("inf")), us)
        sender._store.close()
        receiver._store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["W1N"]:
        for name, us in no_coalescing().items():
            print(f"{name:<60} {us:6.2f} us per trade")
    else:
        main()
