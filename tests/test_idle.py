"""An idle node costs next to no CPU: consumers block on their queues, no thread spins."""

from __future__ import annotations

import time

from .procs import Cluster, NodeProcess, cpu_seconds, cpu_seconds_precise

WINDOW = 3.0  # seconds of measurement
MAX_SHARE = 0.02  # of one core


def test_idle_node_with_a_connected_peer_uses_almost_no_cpu(cluster: Cluster) -> None:
    """Idle nodes with a connected peer each use well under 2% of a core (utime + stime),
    with the default 1 s heartbeat and with the tests' 0.2 s."""
    nodes: list[NodeProcess] = []
    for pair, heartbeat in (("ab", 1.0), ("cd", 0.2)):
        first = cluster.add(f"{pair[0]}_{heartbeat:g}s", recovery_timeout=0.2, heartbeat=heartbeat)
        second = cluster.add(
            f"{pair[1]}_{heartbeat:g}s",
            peers=[first.port],
            recovery_timeout=0.2,
            heartbeat=heartbeat,
        )
        first.type("AAPL 1")
        second.type("MSFT 1")
        nodes += [first, second]
    for first, second in (nodes[:2], nodes[2:]):
        settled = {(first.name, "AAPL"): 1.0, (second.name, "MSFT"): 1.0}
        for node in (first, second):
            node.wait_for_view(settled)  # connected, synced, traded: now idle
    marks = [node.mark() for node in nodes]
    ticks = [cpu_seconds(node.pid) for node in nodes]
    precise = [cpu_seconds_precise(node.pid) for node in nodes]
    start = time.monotonic()
    time.sleep(WINDOW)  # a measurement window, not a wait for anything
    elapsed = time.monotonic() - start
    shares = [(cpu_seconds(n.pid) - t) / elapsed for n, t in zip(nodes, ticks, strict=True)]
    fine = [(cpu_seconds_precise(n.pid) - t) / elapsed for n, t in zip(nodes, precise, strict=True)]
    report = "\n".join(
        f"  {n.name} (heartbeat {n.heartbeat:g}s): {share:.2%} of a core ({exact:.3%} by schedstat)"
        for n, share, exact in zip(nodes, shares, fine, strict=True)
    )
    print(f"\nidle CPU over {elapsed:.1f}s:\n{report}")
    for node, share in zip(nodes, shares, strict=True):
        assert share < MAX_SHARE, f"{node.name} used {share:.2%} of a core while idle\n{report}"
    for node, mark in zip(nodes, marks, strict=True):  # idle, not reconnecting
        node.sync_stderr()
        assert node.alive and not node.log_lines("closed", mark.err), node.errors_since(mark.err)
