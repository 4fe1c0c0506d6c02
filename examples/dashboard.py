"""A live dashboard of the firm's exposure, fed by ``Node.updates()`` from asyncio.

Watch a running cluster: the dashboard joins it as an observer node (a strategy that never
trades), dials the nodes you name, receives every strategy's positions in their sync, then
prints the firm's net exposure per symbol each time a position changes::

    .venv/bin/python examples/dashboard.py 127.0.0.1:12345 127.0.0.1:12346 127.0.0.1:12347

Or see it on its own: three in-process nodes trade at random for a few seconds while the
dashboard watches them::

    .venv/bin/python examples/dashboard.py --demo --seconds 5

A dashboard that falls more than ``--maxsize`` changes behind is cut off by the node
(``UpdatesOverflow``); it then shows the current view and subscribes again, as documented.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TextIO

from loguru import logger

from position_distributor import Config, Limits, Node, Position, UpdatesOverflow

__all__ = ["View", "exposure_of", "format_exposure", "main", "run_demo", "watch", "watch_exposure"]

Exposure = dict[str, float]


def format_exposure(exposure: Exposure, change: Position | None = None) -> str:
    """One dashboard line: every symbol's net, then the change that caused it, if any."""
    nets = "  ".join(f"{symbol} {net:+.6f}" for symbol, net in sorted(exposure.items()))
    cause = "" if change is None else f"   <- {change.row()}"
    return f"exposure: {nets or '(flat)'}{cause}\n"


class View:
    """The positions a dashboard knows: a snapshot, then every change applied on top.

    A change is kept only if newer than what is known (the nodes' own last-writer-wins
    rule), so a change that was already in the snapshot never rolls the view back.
    """

    def __init__(self, positions: Sequence[Position]) -> None:
        self.positions = {(p.strategy, p.symbol): p for p in positions}

    def apply(self, change: Position) -> None:
        key = (change.strategy, change.symbol)
        known = self.positions.get(key)
        if known is None or (change.timestamp, change.net_position) > (
            known.timestamp,
            known.net_position,
        ):
            self.positions[key] = change

    def exposure(self) -> Exposure:
        return exposure_of(list(self.positions.values()))


async def watch_exposure(
    node: Node,
    out: TextIO,
    *,
    until: Callable[[Exposure], bool] | None = None,
    maxsize: int = 10_000,
) -> Exposure:
    """Print the firm's exposure now and after every change; return it once ``until`` holds.

    Without ``until`` it runs until cancelled or the node stops (then it returns the last
    exposure shown).
    """
    while True:  # subscribes again after an overflow
        try:
            # updates() is an async generator (annotated as an AsyncIterator): aclosing()
            # ends its subscription at once when we leave, not whenever it is collected.
            async with aclosing(node.updates(maxsize)) as updates:  # type: ignore[type-var]
                # The generator subscribes on its first step: let it take that step before
                # reading the current view, so that no change falls between the two.
                pending = asyncio.ensure_future(anext(updates))
                try:
                    await asyncio.sleep(0)
                    view = View(node.positions())
                    exposure = view.exposure()
                    out.write(format_exposure(exposure))
                    while until is None or not until(exposure):
                        try:
                            change = await pending
                        except StopAsyncIteration:  # the node stopped
                            return exposure
                        pending = asyncio.ensure_future(anext(updates))
                        view.apply(change)
                        exposure = view.exposure()
                        out.write(format_exposure(exposure, change))
                    return exposure
                finally:
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await pending
        except UpdatesOverflow:
            out.write("dashboard fell behind; showing the current view again\n")


async def watch(
    addresses: Sequence[tuple[str, int]],
    out: TextIO,
    *,
    name: str = "dashboard",
    until: Callable[[Exposure], bool] | None = None,
    data_dir: Path | None = None,
    limits: Limits | None = None,
) -> Exposure:
    """Join the cluster at ``addresses`` as observer ``name`` and watch the exposure."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        config = Config(
            name,
            peers=tuple(addresses),
            data_dir=data_dir,
            recovery_timeout=0,  # an observer has no own position to recover
            limits=limits or Limits(),
        )
        node = stack.enter_context(Node(config))
        return await watch_exposure(node, out, until=until)
    raise AssertionError("unreachable")  # pragma: no cover - for the type checker


async def run_demo(
    out: TextIO,
    *,
    seconds: float = 5.0,
    seed: int | None = None,
    limits: Limits | None = None,
    timeout: float = 10.0,
) -> tuple[Exposure, Exposure]:
    """Three nodes trade at random for ``seconds`` while the dashboard watches them.

    Returns the exposure the traders made and the last one the dashboard showed, once the
    dashboard has caught up (or ``timeout`` seconds after trading stops).
    """
    rng = random.Random(seed)
    symbols = ["AAPL", "MSFT", "7203", "EUR/USD"]
    limits = limits or Limits(heartbeat_interval=0.2, idle_timeout=1.0, backoff_max=0.2)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        traders: list[Node] = []
        for i in range(3):
            config = Config(
                f"strategy_{i + 1}",
                peers=tuple(("127.0.0.1", t.port) for t in traders),
                data_dir=Path(tmp) / f"strategy_{i + 1}",
                recovery_timeout=0,
                limits=limits,
            )
            traders.append(stack.enter_context(Node(config)))
        done = asyncio.Event()

        async def trade_once() -> None:
            node = rng.choice(traders)
            quantity = rng.choice([-100, -10, -1, 1, 10, 100]) * rng.randint(1, 5)
            await asyncio.wrap_future(node.trade(rng.choice(symbols), quantity))

        async def trade() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while loop.time() < deadline:
                await trade_once()
                await asyncio.sleep(rng.uniform(0.005, 0.05))  # pacing, not waiting
            # One last trade after ``done``: its update wakes the dashboard to check.
            done.set()
            await trade_once()

        def made() -> Exposure:
            """What the traders hold, each in its own book: the truth."""
            return exposure_of([p for t in traders for p in t.positions() if p.strategy == t.name])

        def caught_up(exposure: Exposure) -> bool:
            return done.is_set() and exposure == made()

        trading = asyncio.ensure_future(trade())
        addresses = [("127.0.0.1", t.port) for t in traders]
        try:
            shown = await asyncio.wait_for(
                watch(addresses, out, until=caught_up, limits=limits), seconds + timeout
            )
        finally:
            trading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trading
        return made(), shown


def exposure_of(positions: Sequence[Position]) -> Exposure:
    """Net per symbol over every strategy, exactly rounded, as ``Node.exposure()`` sums it."""
    terms: dict[str, list[float]] = {}
    for position in positions:
        terms.setdefault(position.symbol, []).append(position.net_position)
    return {symbol: math.fsum(nets) + 0.0 for symbol, nets in sorted(terms.items())}


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Command line: watch a cluster, or ``--demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("addresses", nargs="*", type=parse_address, help="nodes to watch")
    parser.add_argument("--name", default="dashboard", help="the observer's strategy name")
    parser.add_argument("--demo", action="store_true", help="watch three in-process traders")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the demo trades")
    parser.add_argument("--seed", type=int, default=None, help="the demo's random seed")
    parser.add_argument("--log-level", default="WARNING", help="the nodes' logs on stderr")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    if args.demo:
        made, shown = asyncio.run(run_demo(out, seconds=args.seconds, seed=args.seed))
        out.write(f"demo done: the dashboard shows {'the' if made == shown else 'NOT the'}")
        out.write(" exposure the traders made\n")
        return 0 if made == shown else 1
    if not args.addresses:
        parser.error("give the HOST:PORT of at least one node, or --demo")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args.addresses, out, name=args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
