"""Stats: the engine's counters and its trade latency histogram, read by ``/metrics``.

Plain integers and a fixed-bucket histogram, updated by the consumer threads under the
engine's publish lock and read without it at scrape time (a read of an int is atomic; a scrape
may see one batch half counted, which the next scrape corrects). Pure: no I/O, no threads, no
dependency on prometheus_client, so a node without ``--http`` pays a few additions per batch.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = ["LATENCY_BUCKETS", "LatencyHistogram", "Stats"]

# Seconds from a trade's arrival (its submission to the engine) to its commit.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Counts per bucket (not cumulative; ``cumulative()`` gives Prometheus's form) and a sum."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Record ``times`` observations of ``seconds`` (the trades of one submission)."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += times
        self.sum += seconds * times
        self.count += times

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, count of observations <= it), ..., ("+Inf", total)]``."""
        out = []
        total = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class Stats:
    """What the engine counts (see ``metrics.py`` for their names as metrics)."""

    def __init__(self) -> None:
        self.trades = 0  # own trades applied (each printed a row)
        self.refused = 0  # own trades refused (overflow, symbol cap, storage)
        self.own_changes = 0  # changes applied from own trades
        self.peer_changes = 0  # changes applied from peers' positions (own ones learnt back too)
        self.latency = LatencyHistogram()  # trade arrival -> commit, seconds
