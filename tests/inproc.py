"""In-process nodes for tests: a recording output stream and a factory that stops every node."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from position_distributor.connection import Limits
from position_distributor.node import Config, Node
from position_distributor.types import Position
from testkit import FAST

from .procs import parse_row
from .waiting import Recorder

__all__ = ["FAST_LIMITS", "Nodes", "Rows"]

# The fast limits (testkit.FAST, shared with the node processes) as an in-process node's.
FAST_LIMITS = FAST.limits()

Nets = dict[tuple[str, str], float]


class Rows(io.TextIOBase):
    """A node's stdout: every line written, in order, with a condition to wait on.

    ``before_write(lines)`` runs in the writing thread before the lines are recorded (the
    moment the node shows them), e.g. to check the store at that instant.
    """

    def __init__(self, before_write: Callable[[list[str]], None] | None = None) -> None:
        super().__init__()
        self.lines = Recorder()
        self._before_write = before_write

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = text.splitlines()
        if self._before_write is not None:
            self._before_write(lines)
        for line in lines:
            self.lines.append(line)
        return len(text)

    def rows(self) -> list[Position]:
        """Every row printed, parsed, in order."""
        return [Position(*row) for line in self.lines.snapshot() if (row := parse_row(line))]

    def view(self) -> dict[tuple[str, str], tuple[float, int]]:
        """The last row printed for each position."""
        return {(p.strategy, p.symbol): (p.net_position, p.timestamp) for p in self.rows()}

    def nets(self) -> Nets:
        return {key: net for key, (net, _) in self.view().items()}

    def wait_for_nets(self, expected: Nets, timeout: float = 10.0) -> None:
        """Wait until the printed view has exactly these net positions."""

        def matches(_: list[str]) -> bool:
            return self.nets() == expected

        self.lines.wait_for(matches, timeout, f"printed view {expected}")

    def wait_for_row(self, position: Position, timeout: float = 10.0) -> None:
        self.lines.wait_for(lambda _: position in self.rows(), timeout, f"row {position.row()}")


class Nodes:
    """Nodes started by one test, under one tmp dir; ``close`` stops every one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Node] = []

    def config(
        self,
        name: str,
        *,
        port: int = 0,
        peers: tuple[int, ...] = (),
        data_dir: Path | None = None,
        recovery_timeout: float = 0.0,
        limits: Limits = FAST_LIMITS,
        digest_interval: float = 2.0,
    ) -> Config:
        return Config(
            name,
            port=port,
            peers=tuple(("127.0.0.1", p) for p in peers),
            data_dir=data_dir or self.root / name,
            recovery_timeout=recovery_timeout,
            limits=limits,
            digest_interval=digest_interval,
        )

    def start(self, name: str, *, rows: Rows | None = None, **kwargs: object) -> tuple[Node, Rows]:
        """Start a node named ``name`` (see ``config`` for the options); return it and its rows."""
        out = rows if rows is not None else Rows()
        node = Node(self.config(name, **kwargs), out=out)  # type: ignore[arg-type]
        self.started.append(node)
        node.start()
        return node, out

    def restart(
        self, node: Node, *, rows: Rows | None = None, **changes: object
    ) -> tuple[Node, Rows]:
        """Stop ``node`` and start a new one with its config (and ``changes``); same port."""
        node.stop()
        config = replace(node.config, port=node.port, **changes)  # type: ignore[arg-type]
        out = rows if rows is not None else Rows()
        new = Node(config, out=out)
        self.started.append(new)
        new.start()
        return new, out

    def close(self) -> None:
        for node in self.started:
            node.stop()


def nets_of(positions: list[Position]) -> Nets:
    return {(p.strategy, p.symbol): p.net_position for p in positions}
