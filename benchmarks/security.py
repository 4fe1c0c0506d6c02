"""The cost of security: handshake time and W1 throughput with each security option.

    python -m benchmarks.security                       # both measurements, every mode
    python -m benchmarks.security --modes none,secret   # some modes
    python -m benchmarks.security --connections 50 --runs 3
    python -m benchmarks.security --workloads none      # the handshake only (a few seconds)

Modes: ``none`` (plain TCP, no secret), ``secret`` (a cluster secret), ``tls`` (mutual TLS,
certificates naming each strategy), ``both`` (TLS and a secret).

1. **Handshake** (in one process, on loopback): a node (``Node``, in-process) holds one
   position; a client built on the project's ``Protocol`` (and ``ssl`` for TLS) dials it,
   does the TLS handshake if any, exchanges Hellos (and Auth proofs), and reads until the
   node's first position. Timed from before the TCP connect to Ready (the handshake
   complete, as the client sees it) and to the first position received. The modes are
   interleaved connection by connection, so each sees the same machine load.
2. **The transport alone**: a sync of 100,000 positions (about 5 MB) through the node's own
   ``Transport`` and ``TlsTransport`` over a socket pair, received and cut into frames: MB/s,
   CPU per position (both ends, one process) and how many chunks ``recv`` returned.
3. **W1 and W3 with security**: the workloads exactly as ``make bench`` runs them
   (``workloads.WORKLOADS``), each node started with the mode's options; modes interleaved
   run by run. W1 (20,000 trades typed into one node) sends few frames since the sender
   coalesces a burst to the last position of each symbol; W3 (a join: 100,000 positions
   sent in one sync) is the one that pushes every byte through the security layers.

Results go to ``benchmarks/results/security.json`` and are printed as a table; the numbers
for the docs are copied by hand into docs/security.md and docs/performance.md with the
commit measured. Certificates and secrets are made with ``openssl`` in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import report, workloads
from .harness import ROOT, source_commit
from .harness import Cluster as _Cluster

MODES = ("none", "secret", "tls", "both")
RESULTS = ROOT / "benchmarks" / "results" / "security.json"
SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"


class Credentials:
    """A secret file and test certificates (strategy_1..3) in a temp dir."""

    def __init__(self, root: Path) -> None:
        from tests.certs import make_certs

        self.root = root
        self.secret = root / "secret"
        self.secret.write_text(SECRET + "\n")
        self.secret.chmod(0o600)
        self.certs = make_certs(root / "certs", ("strategy_1", "strategy_2", "strategy_9"))

    def args(self, mode: str, name: str) -> list[str]:
        """Command-line options of node ``name`` in ``mode``."""
        args: list[str] = []
        if mode in ("secret", "both"):
            args += ["--secret-file", str(self.secret)]
        if mode in ("tls", "both"):
            args += self.certs.nodes[name].args()
        return args


# 1. Handshake time.


def _handshake_once(port: int, mode: str, creds: Credentials) -> tuple[float, float]:
    """One connection: seconds from before the connect to Ready, and to the first position."""
    from position_distributor.protocol import Protocol, Ready
    from position_distributor.types import Position

    secrets = [SECRET.encode()] if mode in ("secret", "both") else None
    protocol = Protocol("strategy_2", secrets=secrets)
    context = None
    if mode in ("tls", "both"):
        files = creds.certs.nodes["strategy_2"]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(cafile=files.ca)
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock: socket.socket = raw if context is None else context.wrap_socket(raw)
    t_ready = 0.0
    try:
        sock.sendall(protocol.hello())
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError(f"{mode}: the node closed the connection")
            events = protocol.receive_data(data)
            if out := protocol.data_to_send():
                sock.sendall(out)
            for event in events:
                if isinstance(event, Ready):
                    t_ready = time.perf_counter()
                elif isinstance(event, Position):
                    return t_ready - t0, time.perf_counter() - t0
    finally:
        sock.close()


@contextlib.contextmanager
def _servers(modes: list[str], creds: Credentials) -> Iterator[dict[str, Any]]:
    """One in-process node per mode, each holding one position."""
    from loguru import logger

    from position_distributor.node import Config, Node

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    nodes = []
    try:
        servers = {}
        for mode in modes:
            secret = creds.secret if mode in ("secret", "both") else None
            files = creds.certs.nodes["strategy_1"] if mode in ("tls", "both") else None
            config = Config(
                "strategy_1",
                data_dir=creds.root / f"node-{mode}",
                recovery_timeout=0.0,
                secret_file=secret,
                tls_cert=files.cert if files else None,
                tls_key=files.key if files else None,
                tls_ca=files.ca if files else None,
            )
            node = Node(config).start()
            nodes.append(node)
            node.trade("AAPL", 100).result(10)
            servers[mode] = node
        yield servers
    finally:
        for node in nodes:
            node.stop()


def _settled(node: Any) -> None:
    """Wait until ``node`` has finished with every connection (its threads are done with the
    last one), so that a measurement never pays for the teardown of the one before."""
    deadline = time.monotonic() + 10
    while node._peer._all:  # the open connections (private: a benchmark's view)
        if time.monotonic() > deadline:
            raise RuntimeError("a closed connection was not torn down within 10 s")
        time.sleep(0.001)


def measure_handshakes(modes: list[str], connections: int, creds: Credentials) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {m: {"ready": [], "first": []} for m in modes}
    order = list(modes)
    rng = random.Random(0)
    with _servers(modes, creds) as servers:
        for mode in modes:  # a warm-up connection each (imports, first TLS context)
            _handshake_once(servers[mode].port, mode, creds)
            _settled(servers[mode])
        for _ in range(connections):
            rng.shuffle(order)  # no mode always follows the same one
            for mode in order:
                ready, first = _handshake_once(servers[mode].port, mode, creds)
                samples[mode]["ready"].append(ready)
                samples[mode]["first"].append(first)
                _settled(servers[mode])
    out: dict[str, Any] = {}
    for mode in modes:
        to_ready, to_first = samples[mode]["ready"], samples[mode]["first"]
        out[mode] = {
            "ready_median_ms": statistics.median(to_ready) * 1e3,
            "first_position_median_ms": statistics.median(to_first) * 1e3,
            "first_position_p90_ms": workloads._percentile(to_first, 90) * 1e3,
            "connections": len(to_first),
        }
    return out


# 2. The bytes of a sync through the transport alone.


def _transports(tls: bool, creds: Credentials) -> tuple[Any, Any, socket.socket, socket.socket]:
    """Two connected transports (the node's own classes) over a socket pair."""
    import threading

    from position_distributor.transport import TlsTransport, Transport, make_tls_contexts

    a, b = socket.socketpair()
    if not tls:
        return Transport(a), Transport(b), a, b
    one, two = creds.certs.nodes["strategy_1"], creds.certs.nodes["strategy_2"]
    server, _ = make_tls_contexts(one.cert, one.key, one.ca)
    _, client = make_tls_contexts(two.cert, two.key, two.ca)
    ta = TlsTransport(a, client, server_side=False, wake_writer=lambda: None)
    tb = TlsTransport(b, server, server_side=True, wake_writer=lambda: None)
    deadline = time.monotonic() + 10
    other = threading.Thread(target=tb.handshake, args=(deadline,))
    other.start()
    ta.handshake(deadline)
    other.join()
    a.settimeout(None)
    b.settimeout(None)
    return ta, tb, a, b


def _bulk_once(tls: bool, creds: Credentials, positions: int) -> dict[str, float]:
    """Send a sync of ``positions`` frames through a transport pair; wall and CPU time to
    receive and cut them into frames, and how many chunks ``recv`` returned."""
    import threading

    from position_distributor.types import Position
    from position_distributor.wire import Decoder, encode_positions

    ts = time.time_ns()
    data = encode_positions(
        Position("strategy_1", f"S{i:06d}", float(i), ts + i) for i in range(positions)
    )
    sender, receiver, a, b = _transports(tls, creds)
    slice_ = 1 << 20  # as the node's writer: at most 1 MiB per sendall

    def send() -> None:
        for start in range(0, len(data), slice_):
            sender.sendall(data[start : start + slice_])

    decoder = Decoder()
    frames = chunks = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    writer = threading.Thread(target=send)
    writer.start()
    while frames < positions:
        chunk = receiver.recv()
        chunks += 1
        frames += len(decoder.feed(chunk))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    writer.join()
    a.close()
    b.close()
    return {
        "mb_per_s": len(data) / elapsed / 1e6,
        "us_per_position_cpu": cpu / positions * 1e6,
        "chunks": chunks,
        "bytes": len(data),
    }


def measure_bulk(creds: Credentials, positions: int, repeats: int) -> dict[str, Any]:
    """Plain and TLS transports, interleaved ``repeats`` times; medians."""
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    for _ in range(repeats):
        runs["plain"].append(_bulk_once(False, creds, positions))
        runs["tls"].append(_bulk_once(True, creds, positions))
    return {kind: report.summarize(r) for kind, r in runs.items()}


# 3. Workloads with each mode.


def _cluster_with(mode: str, creds: Credentials) -> type[_Cluster]:
    """A harness Cluster whose nodes start with ``mode``'s security options."""

    class SecureCluster(_Cluster):
        def node(self, name: str, peers: Any = (), **kwargs: Any) -> Any:
            kwargs["args"] = [*kwargs.get("args", ()), *creds.args(mode, name)]
            return super().node(name, peers, **kwargs)

    return SecureCluster


SHOWN = {
    "W1": ("trades_per_s", "sender_cpu_us", "receiver_cpu_us"),
    "W3": ("join_s", "join_after_dial_s", "holder_cpu_s", "joiner_cpu_s"),
}


def measure_workload(
    key: str, modes: list[str], runs: int, creds: Credentials, quick: bool
) -> dict[str, Any]:
    """``runs`` runs of workload ``key`` per mode, modes interleaved; min/median/max."""
    settings = workloads.Settings.quick() if quick else workloads.Settings()
    per_mode: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for rnd in range(runs):
        for mode in modes:
            with workloads.patched_cluster(_cluster_with(mode, creds)):
                metrics = workloads.WORKLOADS[key].run(settings, rnd)
            per_mode[mode].append(metrics)
            shown = ", ".join(f"{k}={metrics[k]:,.4g}" for k in SHOWN[key])
            print(f"  {key} {mode:6} run {rnd + 1}: {shown}", flush=True)
    return {mode: report.summarize(r) for mode, r in per_mode.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.security",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--connections", type=int, default=50, help="handshakes per mode")
    parser.add_argument(
        "--workloads", default="W1,W3", help="workloads to run per mode (W1, W3), or none"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each workload per mode")
    parser.add_argument("--quick", action="store_true", help="the workloads' quick settings")
    parser.add_argument(
        "--positions", type=int, default=100_000, help="positions in the transport measurement"
    )
    parser.add_argument("--repeats", type=int, default=5, help="transport measurements")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    keys = [k.strip().upper() for k in args.workloads.split(",") if k.strip()]
    keys = [k for k in keys if k != "NONE"]
    if any(k not in SHOWN for k in keys):
        parser.error(f"--workloads: choose from {', '.join(SHOWN)} (or none)")
    root = Path(tempfile.mkdtemp(prefix="pd-bench-security-"))
    results: dict[str, Any] = {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": source_commit(),
        "machine": report.machine(),
        "modes": modes,
    }
    try:
        creds = Credentials(root)
        print(f"handshake: {args.connections} connections per mode", flush=True)
        results["handshake"] = measure_handshakes(modes, args.connections, creds)
        for mode, h in results["handshake"].items():
            print(
                f"  {mode:6} ready {h['ready_median_ms']:.2f} ms,"
                f" first position {h['first_position_median_ms']:.2f} ms"
                f" (p90 {h['first_position_p90_ms']:.2f} ms)",
                flush=True,
            )
        print(f"transport: a sync of {args.positions:,} positions, plain and TLS", flush=True)
        results["bulk"] = measure_bulk(creds, args.positions, args.repeats)
        for kind, summary in results["bulk"].items():
            print(
                f"  {kind:6} {summary['mb_per_s']['median']:.0f} MB/s,"
                f" {summary['us_per_position_cpu']['median']:.2f} µs CPU per position,"
                f" {summary['chunks']['median']:.0f} chunks for"
                f" {summary['bytes']['median'] / 1e6:.1f} MB",
                flush=True,
            )
        for key in keys:
            print(f"{key}: {args.runs} run(s) per mode", flush=True)
            results[key] = measure_workload(key, modes, args.runs, creds, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ncommit {results['commit']}")
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """Markdown tables of the medians, for the docs."""
    lines = [
        "| mode | TCP connect to Ready | to the first position | p90 to the first position |",
        "|---|---|---|---|",
    ]
    for mode in results["modes"]:
        h = results["handshake"][mode]
        lines.append(
            f"| {mode} | {h['ready_median_ms']:.2f} ms | {h['first_position_median_ms']:.2f} ms"
            f" | {h['first_position_p90_ms']:.2f} ms |"
        )
    if "bulk" in results:
        lines += [
            "",
            "| transport | MB/s | CPU µs per position (both ends) | recv chunks |",
            "|---|---|---|---|",
        ]
        for kind, summary in results["bulk"].items():
            lines.append(
                f"| {kind} | {summary['mb_per_s']['median']:.0f}"
                f" | {summary['us_per_position_cpu']['median']:.2f}"
                f" | {summary['chunks']['median']:.0f} |"
            )
    for key, metrics in SHOWN.items():
        if key not in results:
            continue
        lines += [
            "",
            f"| {key} mode | " + " | ".join(metrics) + " |",
            "|---" * (1 + len(metrics)) + "|",
        ]
        for mode in results["modes"]:
            summary = results[key][mode]
            cells = [
                "{median:,.4g} ({min:,.4g} to {max:,.4g})".format(**summary[m]) for m in metrics
            ]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
