"""Metrics: the node's Prometheus metrics, read at scrape time from what the node already counts.

One ``CollectorRegistry`` per node (never the global one), so several nodes in one process
each expose their own. Nothing is counted twice: the collector reads the engine's ``Stats``,
the peers' states, the risk view's mirror of the book and the limit watcher when scraped.
Labels are bounded: ``source`` (own, peer) and ``state`` (a handful of connection states);
never a label per symbol or per strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .stats import Stats

__all__ = ["CONTENT_TYPE", "NodeMetrics", "Reading"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Reading:
    """What the node says at one scrape, besides the engine's stats."""

    running: bool
    recovering: bool
    peers_connected: int
    peers_by_state: dict[str, int]
    positions: int
    strategies: int
    limits: int  # symbols with a limit (the default row counts as one)
    breached: int  # symbols whose exposure is above their limit now
    breach_crossings: int  # crossings into breach since the start
    streams: int  # open live streams of the page


class NodeMetrics(Collector):
    """The collector of one node; ``render()`` is the text for ``/metrics``."""

    def __init__(self, name: str, stats: Stats, read: Callable[[], Reading]) -> None:
        self.name = name
        self._stats = stats
        self._read = read
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        """The Prometheus text exposition (blocking: call it outside the event loop)."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        reading = self._read()
        info = GaugeMetricFamily(
            "pd_node_info", "This node's strategy (always 1).", labels=["strategy"]
        )
        info.add_metric([self.name], 1)
        yield info
        yield GaugeMetricFamily(
            "pd_up", "1 while the node runs, 0 while it stops.", value=int(reading.running)
        )
        yield CounterMetricFamily(
            "pd_trades",
            "Own trades applied (each printed a row); positions learnt back are not trades.",
            value=stats.trades,
        )
        yield CounterMetricFamily(
            "pd_trades_refused",
            "Own trades refused (a position that would overflow, the symbol cap).",
            value=stats.refused,
        )
        changes = CounterMetricFamily(
            "pd_changes_applied",
            "Changes applied to the book, by where they came from.",
            labels=["source"],
        )
        changes.add_metric(["own"], stats.own_changes)
        changes.add_metric(["peer"], stats.peer_changes)
        yield changes
        latency = stats.latency
        yield HistogramMetricFamily(
            "pd_trade_commit_seconds",
            "Time from a trade's arrival at the engine to its commit, in seconds.",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
        yield GaugeMetricFamily(
            "pd_peers_connected", "Peers connected now.", value=reading.peers_connected
        )
        peers = GaugeMetricFamily(
            "pd_peers", "Peers (configured or seen) by connection state.", labels=["state"]
        )
        for state, count in sorted(reading.peers_by_state.items()):
            peers.add_metric([state], count)
        yield peers
        yield GaugeMetricFamily(
            "pd_positions", "Positions held, every strategy's.", value=reading.positions
        )
        yield GaugeMetricFamily(
            "pd_strategies", "Strategies with positions held.", value=reading.strategies
        )
        yield GaugeMetricFamily(
            "pd_recovering",
            "1 while the node waits for its peers to send its own positions back.",
            value=int(reading.recovering),
        )
        yield GaugeMetricFamily(
            "pd_limits",
            "Symbols with an exposure limit (the * default counts as one).",
            value=reading.limits,
        )
        yield GaugeMetricFamily(
            "pd_limit_breaches",
            "Symbols whose absolute firm-wide exposure is above their limit now.",
            value=reading.breached,
        )
        yield CounterMetricFamily(
            "pd_limit_breach_crossings",
            "Times a symbol's exposure went above its limit.",
            value=reading.breach_crossings,
        )
        yield GaugeMetricFamily(
            "pd_http_streams", "Live streams of the risk view open now.", value=reading.streams
        )
