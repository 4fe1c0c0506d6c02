"""Position Distributor: every trading strategy's live positions, on every strategy's node."""

from __future__ import annotations

from .engine import TradeError, TradeNotStored
from .node import Config, Node, NodeError, Updates, UpdatesOverflow
from .peer import Limits, PeerStatus
from .types import Position

__all__ = [
    "Config",
    "Limits",
    "Node",
    "NodeError",
    "PeerStatus",
    "Position",
    "TradeError",
    "TradeNotStored",
    "Updates",
    "UpdatesOverflow",
]
__version__ = "0.1.0"
