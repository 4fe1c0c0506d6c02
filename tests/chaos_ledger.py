"""Ground truth for chaos tests: each node's own positions, from the trades typed and rows printed.

Pure bookkeeping, no I/O. A trade is *typed* (sent to a node's console), then *acknowledged*
when its row appears on that node's stdout (the row is printed only after the commit). A
trade typed but not acknowledged when its node is killed may or may not have been committed:
the restarted node's stored view (the rows it prints first) says which, exactly, and any
value it shows that no prefix of those trades explains is a violation (a lost or invented
update). Quantities are integers, so every sum is exact in floating point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Ledger"]


@dataclass
class Ledger:
    """The truth about one node's own positions, kept across its lives."""

    name: str
    acked: dict[str, float] = field(default_factory=dict)  # symbol -> true net position
    pending: dict[str, list[float]] = field(default_factory=dict)  # typed, not acknowledged
    highest_ts: dict[str, int] = field(default_factory=dict)  # newest own timestamp seen
    violations: list[str] = field(default_factory=list)
    typed: int = 0
    acknowledged: int = 0
    applied_unacked: int = 0  # typed before a kill, not printed, found committed on restart
    lost_unacked: int = 0  # typed before a kill, not printed, not committed: never applied

    @property
    def outstanding(self) -> int:
        """Trades typed in this life and not acknowledged yet."""
        return sum(len(qs) for qs in self.pending.values())

    def typed_trade(self, symbol: str, quantity: int) -> None:
        self.typed += 1
        self.pending.setdefault(symbol, []).append(float(quantity))

    def own_row(self, symbol: str, net: float, ts: int) -> None:
        """A row of this node's own strategy printed after its stored view (a trade's row, or
        its own position echoed back by a peer during recovery)."""
        highest = self.highest_ts.get(symbol, 0)
        if ts <= highest:
            # An echo of an older own position: it must not be a forgery of the newest one.
            if ts == highest and net != self.acked.get(symbol):
                was = self.acked.get(symbol)
                self.violations.append(f"{self.name}: {symbol} printed {net} at ts {ts}, was {was}")
            return
        queue = self.pending.get(symbol, [])
        base = self.acked.get(symbol, 0.0)
        total = base
        for k, quantity in enumerate(queue, start=1):
            total += quantity
            if total == net:
                del queue[:k]
                self.acknowledged += k
                self.acked[symbol] = net
                self.highest_ts[symbol] = ts
                return
        self.violations.append(
            f"{self.name}: new own row {symbol} {net} @ {ts} explained by no typed trade"
            f" (acknowledged {base}, pending {queue})"
        )
        self.highest_ts[symbol] = ts

    def restarted(self, stored: Mapping[str, tuple[float, int]], *, wiped: bool) -> None:
        """The node was killed and started again; ``stored`` is the own part of the stored view
        it printed first (empty if its store was deleted)."""
        if wiped:
            if self.outstanding:
                raise AssertionError(f"{self.name}: wiped with trades outstanding (test bug)")
            return  # the truth stands: the peers must give it back
        for symbol in sorted(set(self.pending) | set(self.acked) | set(stored)):
            queue = self.pending.get(symbol, [])
            base = self.acked.get(symbol)
            row = stored.get(symbol)
            if row is None:
                if base is not None:
                    self.violations.append(
                        f"{self.name}: acknowledged {symbol} {base} missing from the store"
                    )
                self.lost_unacked += len(queue)
                continue
            net, ts = row
            newer = ts > self.highest_ts.get(symbol, 0)
            total = base or 0.0
            prefixes = [total] + [total := total + q for q in queue]
            if newer:
                k = next((k for k in range(1, len(prefixes)) if prefixes[k] == net), None)
            else:
                k = 0 if base == net else None
            if k is None:
                self.violations.append(
                    f"{self.name}: stored {symbol} {net} @ {ts} is no prefix of its trades"
                    f" (acknowledged {base}, unacknowledged {queue},"
                    f" {'newer' if newer else 'not newer'} than ts {self.highest_ts.get(symbol)})"
                )
                self.lost_unacked += len(queue)
                continue
            self.applied_unacked += k
            self.lost_unacked += len(queue) - k
            self.acked[symbol] = net
            self.highest_ts[symbol] = max(ts, self.highest_ts.get(symbol, 0))
        self.pending.clear()

    def expected(self) -> dict[tuple[str, str], float]:
        """The view every node must converge to, for this node's strategy."""
        return {(self.name, symbol): net for symbol, net in self.acked.items()}
