"""An idle node costs next to no CPU: consumers block on their queues, no thread spins."""

from __future__ import annotations

import time

import pytest

from .procs import Cluster, cpu_seconds, cpu_seconds_precise

A, B = "strategy_1", "strategy_2"
WINDOW = 3.0  # seconds of measurement
MAX_SHARE = 0.02  # of one core


@pytest.mark.parametrize("heartbeat", [1.0, 0.2], ids=["default-heartbeat", "heartbeat-0.2s"])
def test_idle_node_with_a_connected_peer_uses_almost_no_cpu(
    cluster: Cluster, heartbeat: float
) -> None:
    """Two connected, idle nodes each use well under 2% of a core (utime + stime)."""
    a = cluster.add(A, recovery_timeout=0.2, heartbeat=heartbeat)
    b = cluster.add(B, peers=[a.port], recovery_timeout=0.2, heartbeat=heartbeat)
    a.type("AAPL 1")
    b.type("MSFT 1")
    for node in (a, b):
        node.wait_for_view({(A, "AAPL"): 1.0, (B, "MSFT"): 1.0})  # connected and settled
    nodes = (a, b)
    mark = [node.mark() for node in nodes]
    ticks = [cpu_seconds(node.pid) for node in nodes]
    precise = [cpu_seconds_precise(node.pid) for node in nodes]
    start = time.monotonic()
    time.sleep(WINDOW)  # a measurement window, not a wait for anything
    elapsed = time.monotonic() - start
    shares = [(cpu_seconds(n.pid) - t) / elapsed for n, t in zip(nodes, ticks, strict=True)]
    fine = [(cpu_seconds_precise(n.pid) - t) / elapsed for n, t in zip(nodes, precise, strict=True)]
    report = ", ".join(
        f"{n.name} {share:.2%} ({exact:.3%} by schedstat)"
        for n, share, exact in zip(nodes, shares, fine, strict=True)
    )
    print(f"\nidle CPU of a core over {elapsed:.1f}s, heartbeat {heartbeat:g}s: {report}")
    for node, share in zip(nodes, shares, strict=True):
        assert share < MAX_SHARE, f"{node.name} used {share:.2%} of a core while idle"
    for node, at in zip(nodes, mark, strict=True):  # idle, not reconnecting
        node.sync_stderr()
        assert node.alive and not node.log_lines("closed", at.err), node.errors_since(at.err)
