"""What the tests and the benchmarks share: a node process started as a user starts it, and
the fast limits the tests run under.

Both are run from the repository's root (``python -m pytest``, ``python -m benchmarks``), which
puts this package on the import path of either without installing it; it is not part of the
distributed package (``pyproject.toml`` ships ``position_distributor`` only).
"""

from __future__ import annotations

from .fast import FAST, FastLimits
from .process import ROOT, ChildProcess, cpu_seconds, free_port, node_command, user_env

__all__ = [
    "FAST",
    "ROOT",
    "ChildProcess",
    "FastLimits",
    "cpu_seconds",
    "free_port",
    "node_command",
    "user_env",
]
