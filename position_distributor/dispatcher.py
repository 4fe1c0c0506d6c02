"""EventDispatcher: the registry through which Peer tells Engine what happened."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger

__all__ = ["Event", "EventDispatcher"]


class Event(enum.Enum):
    """What a Peer reports. Handlers run in the Peer thread that fires the event."""

    ACCEPTED = "accepted"  # handler(conn): an inbound connection completed its handshake
    CONNECTED = "connected"  # handler(conn): an outbound connection completed its handshake
    MESSAGE = "message"  # handler(conn, messages): positions and SyncDone, in arrival order
    CLOSED = "closed"  # handler(conn, reason): a connection that had completed its handshake closed
    IDENTIFIED = "identified"  # handler(address, strategy): a configured address said who it is

    # Members are singletons: hashed by identity in C (Enum's own hash is a Python call, and
    # fire() looks the event up at every read of a socket).
    __hash__ = object.__hash__


Handler = Callable[..., Any]


class EventDispatcher:
    """Handlers subscribed per event, called in subscription order when the event fires."""

    def __init__(self) -> None:
        # Mutex protecting the handler lists against a subscribe during a fire.
        self._lock = threading.Lock()
        self._handlers: dict[Event, tuple[Handler, ...]] = {event: () for event in Event}

    def subscribe(self, event: Event, handler: Handler) -> None:
        """Call ``handler`` every time ``event`` fires."""
        with self._lock:
            self._handlers[event] = (*self._handlers[event], handler)

    def unsubscribe(self, event: Event, handler: Handler) -> None:
        """Stop calling ``handler`` for ``event``."""
        with self._lock:
            self._handlers[event] = tuple(h for h in self._handlers[event] if h != handler)

    def fire(self, event: Event, *args: Any) -> None:
        """Call every handler of ``event`` with ``args``; a failing handler is logged, not raised.

        A handler that raises is a bug in that handler; the others still run and the thread
        that fired (a socket reader) carries on.
        """
        for handler in self._handlers[event]:
            try:
                handler(*args)
            except Exception:
                logger.opt(exception=True).error(
                    "handler {} for event {} failed",
                    getattr(handler, "__qualname__", handler),
                    event.value,
                )
