"""The transport seam: how positions travel between nodes, as the engine sees it.

The engine talks to one ``LinkTransport`` and never to sockets or servers. Two
implementations: ``Peer`` (``peer.py``, the TCP mesh: one ``Link`` per connected peer) and
``NatsLink`` (``natslink.py``, a NATS JetStream key-value bucket: one ``Link``, the bucket).
A transport fires its events through the ``EventDispatcher`` (``dispatcher.py``):

- ``ACCEPTED`` / ``CONNECTED`` (link): the link is up; the engine answers with
  ``link.send_sync(...)``;
- ``MESSAGE`` (link, messages): positions and ``SyncDone`` received, in order; a ``SyncDone``
  from the link named in ``configured()`` ends the recovery wait; over the mesh also the
  anti-entropy messages (``Digest``, ``RepairRequest``, ``Repair``);
- ``CLOSED`` (link, reason), ``IDENTIFIED`` (address, strategy).

(``transport.py`` holds something else: the byte transports under one TCP connection.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .types import Position

__all__ = ["Link", "LinkTransport", "PeerStatus"]


class PeerStatus(NamedTuple):
    """One line of the ``peers`` command."""

    name: str | None
    address: str
    state: str
    last_heard: float | None  # seconds since anything was received, if connected


class Link(Protocol):
    """One way to the others: a connection to one peer, or a bucket every node shares."""

    @property
    def name(self) -> str | None:
        """The strategy at the other end (a peer), or a label that is never a strategy
        name (``nats:BUCKET``); None before a peer has said who it is."""
        ...

    @property
    def relays(self) -> bool:
        """Whether the other end takes and forwards positions of third strategies."""
        ...

    def send_sync(self, own: list[Position], relayed: list[Position], echo: list[Position]) -> None:
        """Bring the other end up to date: our own positions, the third strategies' (if it
        relays), then its own positions as we hold them (the echo), then the end of the sync.
        Runs in the transport's thread that fired ``ACCEPTED``/``CONNECTED``."""
        ...

    def close(self, reason: str) -> None:
        """Drop what this link sent lately and have it sent again: a connection is closed
        (its redial resyncs), a bucket is read again. ``reason`` goes to the log."""
        ...

    # Anti-entropy (see protocol.md): a link whose other end does not compare digests (a
    # peer of the first release, a bucket) does nothing.

    def send_digest(self, count: int, digest: bytes) -> None:
        """Send the digest of our own positions (``Book.digest``). Called under the engine's
        publish lock, so that it follows every change it covers."""
        ...

    def ask_repair(self, count: int, digest: bytes) -> None:
        """Ask the other end, the owner of ``name``, for all its positions: our copy of them
        (``count``, ``digest``) differs from its digest."""
        ...

    def send_repair(self, own: list[Position]) -> None:
        """Send every one of our own positions, for the other end to take as they are.
        Called under the engine's publish lock."""
        ...


class LinkTransport(Protocol):
    """Every link of one node; see the module docstring."""

    def start(self) -> None:
        """Start moving positions (listen and dial, or connect to the servers)."""
        ...

    def stop(self) -> None:
        """Flush what is queued (briefly), close every link, end every thread. Idempotent."""
        ...

    def publish(self, own: list[Position], relayed: Sequence[tuple[Position, Link]] = ()) -> int:
        """Send changes committed to the store: ``own`` to every link, and (relaying) each of
        ``relayed`` to every relaying link but the one it came from and its owner's. Returns
        how many positions were sent or queued, each copy counted. Never blocks on the
        network; called in commit order, under the engine's publish lock."""
        ...

    def links(self) -> Sequence[Link]:
        """Every live link."""
        ...

    def configured(self) -> list[str | None]:
        """The names of the links whose sync ends the recovery wait (None: not known yet)."""
        ...

    def status(self) -> list[PeerStatus]:
        """What ``peers`` shows."""
        ...
