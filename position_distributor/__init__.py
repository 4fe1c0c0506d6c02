"""Position Distributor: every trading strategy's live positions, on every strategy's node."""

from __future__ import annotations

from .connection import Limits
from .engine import TradeError, TradeNotStored
from .links import PeerStatus
from .node import Config, Node, NodeError, Updates, UpdatesOverflow
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
