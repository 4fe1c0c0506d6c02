"""The fast limits: the short timings under which the tests run nodes, in one place.

Drops, redials and stops then take milliseconds or a second, not the defaults' seconds. A
node process gets them on its command line (``--heartbeat``, ``--recovery-timeout``), an
in-process node in its ``Config`` (``FAST.limits()``). The benchmarks do not use them: they
measure nodes as users run them, and a faster heartbeat would add CPU to what they measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from position_distributor.connection import Limits

__all__ = ["FAST", "FastLimits"]


@dataclass(frozen=True)
class FastLimits:
    """Short timings for tests (seconds)."""

    # A connection's heartbeat. A node process notices a silent peer after 5 of them (the
    # command line ties the idle timeout to it); an in-process node after ``idle_timeout``.
    heartbeat: float
    # A new or lost store waits this long for its peers' syncs (``--recovery-timeout``).
    # In-process nodes do not wait unless a test asks (most run alone).
    recovery_timeout: float
    # In-process nodes only (the command line has no flag for these; ``--hello-timeout`` is
    # left at its default for processes, whose tests read the default in log lines).
    idle_timeout: float
    hello_timeout: float
    connect_timeout: float
    backoff_min: float  # redial backoff: the first wait after a drop...
    backoff_max: float  # ... doubling up to this

    def limits(self) -> Limits:
        """The ``Limits`` of an in-process node."""
        return Limits(
            heartbeat_interval=self.heartbeat,
            idle_timeout=self.idle_timeout,
            hello_timeout=self.hello_timeout,
            connect_timeout=self.connect_timeout,
            backoff_min=self.backoff_min,
            backoff_max=self.backoff_max,
        )


FAST: Final = FastLimits(
    heartbeat=0.2,
    recovery_timeout=1.0,
    idle_timeout=2.0,
    hello_timeout=2.0,
    connect_timeout=1.0,
    backoff_min=0.01,
    backoff_max=0.1,
)
