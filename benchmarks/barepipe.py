"""The bare pipe: the practical limit of one Python hop, measured beside every workload.

A plain protobuf-over-TCP sender and receiver on loopback, two processes: the sender
builds ``SymbolPos`` messages, frames each with a 4-byte big-endian length (the node's
framing) and writes them; the receiver cuts the frames, parses each ``SymbolPos`` and
applies it to a dict. No queues, no store, no logging, no envelope.

    python -m benchmarks.barepipe recv COUNT [--rows]   # prints "port N", then "done ..."
    python -m benchmarks.barepipe send PORT MODE COUNT  # MODE: each | batched | lines

``each`` writes every frame with its own ``sendall``; ``batched`` joins frames into writes of
about 64 KiB; both start when the line ``go`` arrives on stdin. ``lines`` sends one frame
per ``SYMBOL QTY`` line read from stdin (the latency baseline, with ``recv --rows`` printing
a node-style row per message applied).
"""

from __future__ import annotations

import socket
import sys
import time

from position_distributor import position_pb2 as pb

__all__ = ["BATCH_BYTES", "STRATEGY", "SYMBOLS", "expected_book"]

STRATEGY = "strategy_1"
SYMBOLS = [f"SYM{i:03d}" for i in range(100)]
BATCH_BYTES = 64 * 1024


def expected_book(count: int) -> dict[str, float]:
    """The net per symbol after ``count`` messages (message i adds 1 to symbol i % 100)."""
    return {
        symbol: float(count // len(SYMBOLS) + (1 if i < count % len(SYMBOLS) else 0))
        for i, symbol in enumerate(SYMBOLS)
        if count // len(SYMBOLS) + (1 if i < count % len(SYMBOLS) else 0)
    }


def send(port: int, mode: str, count: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    SymbolPos = pb.SymbolPos
    if mode == "lines":
        print("ready", flush=True)
        nets: dict[str, float] = {}
        for line in sys.stdin:
            symbol, qty = line.split()
            net = nets[symbol] = nets.get(symbol, 0.0) + float(qty)
            payload = SymbolPos(
                strategy_name=STRATEGY, symbol=symbol, net_position=net, timestamp=time.time_ns()
            ).SerializeToString()
            sock.sendall(len(payload).to_bytes(4, "big") + payload)
        sock.close()
        return
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    symbols = SYMBOLS
    n_symbols = len(symbols)
    nets_list = [0.0] * n_symbols
    ts0 = time.time_ns()
    sendall = sock.sendall
    if mode == "each":
        for i in range(count):
            k = i % n_symbols
            nets_list[k] += 1.0
            payload = SymbolPos(
                strategy_name=STRATEGY,
                symbol=symbols[k],
                net_position=nets_list[k],
                timestamp=ts0 + i,
            ).SerializeToString()
            sendall(len(payload).to_bytes(4, "big") + payload)
    elif mode == "batched":
        parts: list[bytes] = []
        size = 0
        for i in range(count):
            k = i % n_symbols
            nets_list[k] += 1.0
            payload = SymbolPos(
                strategy_name=STRATEGY,
                symbol=symbols[k],
                net_position=nets_list[k],
                timestamp=ts0 + i,
            ).SerializeToString()
            frame = len(payload).to_bytes(4, "big") + payload
            parts.append(frame)
            size += len(frame)
            if size >= BATCH_BYTES:
                sendall(b"".join(parts))
                parts.clear()
                size = 0
        if parts:
            sendall(b"".join(parts))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("sent", flush=True)
    sock.close()
    sys.stdin.read()  # stay alive (for the harness to read our CPU time) until EOF


def recv(count: int, rows: bool) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]}", flush=True)
    sock, _ = listener.accept()
    listener.close()
    FromString = pb.SymbolPos.FromString
    book: dict[tuple[str, str], tuple[float, int]] = {}
    buffer = b""
    applied = 0
    out = sys.stdout
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            break
        if buffer:
            data = buffer + data
        offset = 0
        end = len(data)
        printed = []
        while end - offset >= 4:
            length = int.from_bytes(data[offset : offset + 4], "big")
            start = offset + 4
            if end - start < length:
                break
            message = FromString(data[start : start + length])
            key = (message.strategy_name, message.symbol)
            book[key] = (message.net_position, message.timestamp)
            if rows:
                printed.append(
                    f"{key[0]} | {key[1]} | {message.net_position:.6f} | {message.timestamp}\n"
                )
            offset = start + length
            applied += 1
        buffer = data[offset:]
        if printed:
            out.write("".join(printed))
            out.flush()
        if applied == count and not rows:
            nets = {symbol: net for (_, symbol), (net, _) in book.items()}
            ok = "ok" if nets == expected_book(count) else "WRONG"
            print(f"done {applied} {len(book)} {ok}", flush=True)
    sock.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["recv"]:
        recv(int(argv[1]), "--rows" in argv)
    elif argv[:1] == ["send"]:
        send(int(argv[1]), argv[2], int(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
