"""Exposure limits: the ``--limits`` CSV file, and which symbols breach them (alerts only).

Pure parts first: ``parse_limits`` (text -> ``LimitTable``, or a ``LimitsError`` naming the
line) and ``BreachLog`` (which crossings to log, at most once a minute per symbol). Then
``LimitWatcher``, the engine subscriber that keeps the firm's exposure per symbol and logs
crossings as changes are published.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from loguru import logger

from .engine import Subscriber
from .types import Position, valid_symbol

__all__ = [
    "LOG_INTERVAL",
    "BreachLog",
    "LimitRow",
    "LimitTable",
    "LimitWatcher",
    "LimitsError",
    "load_limits",
    "parse_limits",
]

DEFAULT_KEY: Final = "*"
LOG_INTERVAL: Final = 60.0  # seconds: a flickering symbol logs at most this often
MAX_FILE_SIZE: Final = 16 << 20  # a limits file larger than this is refused


class LimitsError(Exception):
    """A limits file that cannot be used: names the file and the line."""


@dataclass(frozen=True)
class LimitTable:
    """The largest absolute firm-wide net exposure allowed per symbol; ``default`` for the rest."""

    limits: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None
    source: str = ""  # where it came from, for messages

    def limit(self, symbol: str) -> float | None:
        """The limit of ``symbol``, or None if it has none."""
        return self.limits.get(symbol, self.default)

    def breached(self, symbol: str, exposure: float) -> bool:
        """Whether ``exposure`` is above the symbol's limit (a breach is strictly above)."""
        limit = self.limits.get(symbol, self.default)
        return limit is not None and abs(exposure) > limit

    def __len__(self) -> int:
        return len(self.limits) + (self.default is not None)


def parse_limits(text: str, source: str = "limits file") -> LimitTable:
    """Parse ``symbol,limit`` lines: ``*`` is every other symbol; ``#`` comments, blank lines
    and a first line ``symbol,limit`` are ignored. Raises ``LimitsError`` naming the line."""
    limits: dict[str, float] = {}
    default: float | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = [part.strip() for part in line.split(",")]
        if number == 1 and [p.lower() for p in parts] == ["symbol", "limit"]:
            continue  # a header
        if len(parts) != 2:
            raise LimitsError(f"{where}: expected SYMBOL,LIMIT (e.g. AAPL,1000000), got {line!r}")
        symbol, value = parts
        if symbol != DEFAULT_KEY and not valid_symbol(symbol):
            raise LimitsError(
                f"{where}: invalid symbol {symbol!r}: use 1-32 of letters, digits, . _ : / -"
                f" or {DEFAULT_KEY} for every other symbol"
            )
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit) or limit < 0:
            raise LimitsError(f"{where}: invalid limit {value!r}: expected a number >= 0")
        if symbol in limits or (symbol == DEFAULT_KEY and default is not None):
            raise LimitsError(f"{where}: {symbol} is given a limit twice")
        if symbol == DEFAULT_KEY:
            default = limit
        else:
            limits[symbol] = limit
    return LimitTable(limits, default, source)


def load_limits(path: Path) -> LimitTable:
    """Read and parse the limits file at ``path``; ``LimitsError`` says why it is unusable."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise LimitsError(f"cannot read limits file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_SIZE:
        raise LimitsError(f"limits file {path} is larger than {MAX_FILE_SIZE} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LimitsError(f"limits file {path} line {line}: not UTF-8 text") from exc
    return parse_limits(text, f"limits file {path}")


class Crossing(NamedTuple):
    """A change of a symbol's breach state that is to be logged."""

    symbol: str
    breached: bool  # True: went above its limit; False: back within it
    exposure: float
    limit: float | None
    unlogged: int  # crossings of this symbol since the last one logged (throttled)


class BreachLog:
    """Which symbols are in breach, and which crossings to log: the first at once, then at most
    one per ``interval`` seconds per symbol (the others are counted and mentioned). Pure.

    The log always ends in the true state: a crossing left unlogged by the throttle is said
    when the symbol's window ends (``settle``), if the symbol's state then differs from the last
    state logged, so a reader of the log never thinks a symbol is in breach when it is not
    (or the reverse).
    """

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.breached: set[str] = set()
        self.crossings = 0  # crossings into breach, logged or not
        self._logged_at: dict[str, float] = {}
        self._logged: dict[str, bool] = {}  # the state last logged (absent: within its limit)
        self._unlogged: dict[str, int] = {}
        self._due: dict[str, float] = {}  # symbol -> when its window ends, with a crossing unsaid

    def update(
        self, symbol: str, exposure: float, limits: LimitTable, now: float, *, force: bool = False
    ) -> Crossing | None:
        """Record ``symbol``'s exposure; a ``Crossing`` if its state changed and is to be logged
        (``force``: whenever it changed, as after a reload the operator asked for)."""
        breached = limits.breached(symbol, exposure)
        if breached == (symbol in self.breached):
            return None
        if breached:
            self.breached.add(symbol)
            self.crossings += 1
        else:
            self.breached.discard(symbol)
        last = self._logged_at.get(symbol)
        if last is not None and now - last < self.interval and not force:
            self._unlogged[symbol] = self._unlogged.get(symbol, 0) + 1
            self._due[symbol] = last + self.interval
            return None
        return self._said(symbol, breached, exposure, limits, now, self._unlogged.pop(symbol, 0))

    def due_at(self) -> float | None:
        """When the first window with a crossing unsaid ends (``settle`` is due), or None."""
        return min(self._due.values(), default=None)

    def settle(
        self, now: float, limits: LimitTable, exposures: Mapping[str, float]
    ) -> list[Crossing]:
        """The crossings to log now that their symbols' windows have ended: one per symbol
        whose state differs from the last state logged, with the count of the others."""
        said = []
        for symbol, due in list(self._due.items()):
            if due > now:
                continue
            del self._due[symbol]
            breached = symbol in self.breached
            if breached == self._logged.get(symbol, False):
                continue  # back where the log left it: the count goes with the next line
            unlogged = self._unlogged.pop(symbol, 1) - 1  # this line says the last of them
            exposure = exposures.get(symbol, 0.0)
            said.append(self._said(symbol, breached, exposure, limits, now, unlogged))
        return said

    def _said(
        self,
        symbol: str,
        breached: bool,
        exposure: float,
        limits: LimitTable,
        now: float,
        unlogged: int,
    ) -> Crossing:
        self._logged_at[symbol] = now
        self._logged[symbol] = breached
        self._due.pop(symbol, None)
        return Crossing(symbol, breached, exposure, limits.limit(symbol), unlogged)


def log_crossing(crossing: Crossing) -> None:
    """One WARNING for a breach, one INFO for a return within the limit."""
    symbol, breached, exposure, limit, unlogged = crossing
    more = (
        f" ({unlogged} more crossing(s) since the last line about it not logged)"
        if unlogged
        else ""
    )
    if breached:
        logger.warning(
            "limit breach: {} exposure {:.6f} is above its limit {:g}{}",
            symbol,
            exposure,
            limit,
            more,
        )
    else:
        shown = "none" if limit is None else f"{limit:g}"
        logger.info(
            "limit ok: {} exposure {:.6f} is back within its limit {}{}",
            symbol,
            exposure,
            shown,
            more,
        )


class LimitRow(NamedTuple):
    """One line of the ``limits`` command."""

    symbol: str
    exposure: float | None  # None for the default row
    limit: float | None
    breached: bool


class LimitWatcher(Subscriber):
    """The firm's exposure per symbol, kept from the engine's published changes, checked
    against the limits on each change. Its ``deliver`` runs in the publishing thread and does
    a few dictionary operations per change: it never blocks.

    A crossing left unsaid by the throttle is said when its symbol's window ends, by a thread
    (``limits-log``) started the first time one is, which waits on a condition until the next
    window ends (untimed while none is due); ``close()`` says what is left and joins it.
    """

    every_change = False  # the last position of each symbol per batch is enough

    def __init__(
        self,
        limits: LimitTable,
        positions: Iterable[Position],
        *,
        interval: float = LOG_INTERVAL,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._now = now
        # Mutex protecting everything below (nets, exposure, limits, breach log, the thread's
        # state); its condition wakes the limits-log thread when a window is due sooner.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._nets: dict[str, dict[str, float]] = {}  # symbol -> strategy -> net
        self._exposure: dict[str, float] = {}
        self.limits = limits
        self._log = BreachLog(interval)
        self._thread: threading.Thread | None = None
        self._waiting_for: float | None = None  # the window end the thread waits for
        self._closed = False
        with self._lock:
            for p in positions:
                self._nets.setdefault(p.symbol, {})[p.strategy] = p.net_position
            crossings = [self._check(symbol) for symbol in list(self._nets)]
        for crossing in crossings:
            if crossing is not None:
                log_crossing(crossing)

    # Engine side.

    def deliver(self, changes: list[Position]) -> None:
        crossings = []
        start = None
        with self._lock:
            touched: dict[str, None] = {}
            for p in changes:
                self._nets.setdefault(p.symbol, {})[p.strategy] = p.net_position
                touched[p.symbol] = None
            for symbol in touched:
                crossing = self._check(symbol)
                if crossing is not None:
                    crossings.append(crossing)
            due = self._log.due_at()
            if due is not None and due != self._waiting_for and not self._closed:
                if self._thread is None:
                    start = self._thread = threading.Thread(
                        target=self.settle_crossings, name="limits-log", daemon=True
                    )
                else:
                    self._cond.notify()
        if start is not None:
            start.start()
        for crossing in crossings:
            log_crossing(crossing)

    def close(self) -> None:
        """The engine stopped: say every crossing still unsaid, and end the limits-log thread."""
        with self._lock:
            self._closed = True
            self._cond.notify()
            thread = self._thread
            crossings = self._log.settle(math.inf, self.limits, self._exposure)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for crossing in crossings:
            log_crossing(crossing)

    def settle_crossings(self) -> None:
        """Thread body: log each crossing left unsaid once its symbol's window ends."""
        try:
            while True:
                with self._lock:
                    while True:
                        if self._closed:
                            return
                        due = self._log.due_at()
                        left = None if due is None else due - self._now()
                        if left is not None and left <= 0:
                            break
                        self._waiting_for = due
                        self._cond.wait(left)
                    self._waiting_for = None
                    crossings = self._log.settle(self._now(), self.limits, self._exposure)
                for crossing in crossings:
                    log_crossing(crossing)
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("limits-log thread failed")

    # Readers.

    def reload(self, limits: LimitTable) -> None:
        """Use ``limits`` from now on; every symbol is checked again (crossings logged)."""
        with self._lock:
            self.limits = limits
            crossings = [self._check(symbol, force=True) for symbol in list(self._nets)]
        for crossing in crossings:
            if crossing is not None:
                log_crossing(crossing)

    @property
    def breached(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._log.breached)

    @property
    def crossings(self) -> int:
        """Crossings into breach since the start."""
        return self._log.crossings

    def rows(self) -> list[LimitRow]:
        """Each symbol held or given a limit (sorted), then the default ``*`` row if any."""
        with self._lock:
            limits = self.limits
            symbols = sorted(set(self._exposure) | set(limits.limits))
            rows = [
                LimitRow(
                    symbol,
                    self._exposure.get(symbol, 0.0),
                    limits.limit(symbol),
                    symbol in self._log.breached,
                )
                for symbol in symbols
            ]
        if limits.default is not None:
            rows.append(LimitRow(DEFAULT_KEY, None, limits.default, False))
        return rows

    def _check(self, symbol: str, *, force: bool = False) -> Crossing | None:
        """Recompute ``symbol``'s exposure and its breach state. Caller holds the lock."""
        assert self._lock.locked()
        exposure = sum(self._nets[symbol].values()) + 0.0
        self._exposure[symbol] = exposure
        return self._log.update(symbol, exposure, self.limits, self._now(), force=force)
