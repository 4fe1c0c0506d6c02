"""A chaos run over NATS: three nodes on one bucket, random trades, ``kill -9`` of nodes (some
restarted with their store wiped) and of the server, in a seeded random order; at the end
every node shows exactly the trades that were acknowledged."""

from __future__ import annotations

import os
import random
from pathlib import Path

from .nats_support import NatsNode, NatsNodes, NatsServer

SEED = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(1 << 30)))
STEPS = 40
SYMBOLS = ("AAPL", "MSFT", "7203.T", "ES:H6")


def test_chaos_over_nats_converges_to_the_acknowledged_trades(tmp_path: Path, bucket: str) -> None:
    """Seeded chaos (print CHAOS_SEED to replay): nothing acknowledged is lost, nothing else
    appears."""
    print(f"CHAOS_SEED={SEED}")
    rng = random.Random(SEED)
    server = NatsServer(tmp_path / "server").start()
    nodes = NatsNodes(tmp_path, server.url, bucket)
    expected: dict[tuple[str, str], float] = {}
    names = ("s1", "s2", "s3")
    try:
        live: dict[str, NatsNode] = {name: nodes.add_nats(name) for name in names}
        for node in live.values():
            node.wait_for_log("on NATS: bucket")
        down: set[str] = set()  # killed nodes waiting for the server to restart them
        server_up = True

        def restart(name: str, wipe: bool = False) -> NatsNode:
            """Start a killed node again; wait until it has read the bucket."""
            node = nodes.restart(name, wipe=wipe)
            node.wait_for_log("on NATS: bucket")
            return node  # type: ignore[return-value]

        def own(name: str) -> dict[tuple[str, str], float]:
            return {k: v for k, v in expected.items() if k[0] == name}

        def acknowledged(name: str) -> None:
            """Wait for the node's own rows of every trade typed into it."""
            node = live[name]
            node.wait_until(
                lambda n: {k: v for k, v in n.nets().items() if k[0] == name} == own(name),
                20,
                f"{name}'s own rows",
            )

        for _ in range(STEPS):
            action = rng.choice(("trade", "trade", "trade", "kill", "server"))
            if action == "trade" and live:
                name = rng.choice(sorted(live))
                symbol, quantity = rng.choice(SYMBOLS), rng.randint(-9, 9) or 1
                live[name].type(f"{symbol} {quantity}")
                expected[(name, symbol)] = expected.get((name, symbol), 0.0) + quantity
            elif action == "kill" and live:
                name = rng.choice(sorted(live))
                acknowledged(name)
                # A wiped store comes back from the bucket: only once the bucket has it.
                wipe = server_up and rng.random() < 0.4
                if wipe:
                    for other in live.values():
                        if other.name != name:
                            other.wait_until(
                                lambda n, name=name: (
                                    {k: v for k, v in n.nets().items() if k[0] == name} == own(name)
                                ),
                                20,
                                f"{name}'s positions in the bucket",
                            )
                live.pop(name).kill()
                if wipe:
                    live[name] = restart(name, wipe=True)
                    acknowledged(name)  # its own positions came back from the bucket
                else:
                    down.add(name)
            elif action == "server":
                if server_up:
                    server.kill()
                else:
                    server.start()
                server_up = not server_up
            if server_up:
                for name in sorted(down):  # a node needs a server to start
                    live[name] = restart(name)
                down.clear()
        if not server_up:
            server.start()
        for name in sorted(down):
            live[name] = restart(name)
        for node in live.values():
            node.wait_for_view({k: v for k, v in expected.items()}, timeout=30)
    finally:
        nodes.close()
        server.stop()
