"""Node, the Python API: trade futures, queries, updates() from asyncio, start and stop."""

from __future__ import annotations

import asyncio
import math
import threading
from concurrent.futures import Future, wait
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from position_distributor import (
    Config,
    Node,
    NodeError,
    Position,
    TradeError,
    UpdatesOverflow,
)
from position_distributor.store import read_book

from .inproc import Nodes, Rows, nets_of
from .waiting import Recorder, wait_until


def stored(path: Path) -> dict[tuple[str, str], tuple[float, int]]:
    return {key: (p.net_position, p.timestamp) for key, p in read_book(path).items()}


def run(coro: Any, timeout: float = 10.0) -> Any:
    """Run a coroutine on a fresh event loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# trade()


def test_trade_returns_a_future_of_the_committed_position(nodes: Nodes, tmp_path: Path) -> None:
    """The future resolves to the resulting position once it is in the store file."""
    node, rows = nodes.start("alpha")
    at_done = Recorder()
    future = node.trade("AAPL", 100)
    # Runs in the engine thread as the future completes: what does the file hold then?
    future.add_done_callback(lambda f: at_done.append(stored(tmp_path / "alpha" / "alpha.sqlite3")))

    position = future.result(timeout=5)

    assert isinstance(future, Future)
    assert position == Position("alpha", "AAPL", 100.0, position.timestamp)
    [store_then] = at_done.wait_for(lambda items: items)
    assert store_then == {("alpha", "AAPL"): (100.0, position.timestamp)}
    assert node.positions() == [position]
    rows.wait_for_row(position)


@pytest.mark.parametrize(
    ("symbol", "quantity", "message"),
    [
        ("", 1, "invalid symbol"),
        ("AAPL!", 1, "invalid symbol"),
        ("A" * 33, 1, "invalid symbol"),
        ("AA PL", 1, "invalid symbol"),
        ("AAPL\n", 1, "invalid symbol"),
        ("AAPL", math.nan, "invalid quantity"),
        ("AAPL", math.inf, "invalid quantity"),
        ("AAPL", -math.inf, "invalid quantity"),
        ("AAPL", 0, "invalid quantity"),
        ("AAPL", "100", "invalid quantity"),
        ("AAPL", None, "invalid quantity"),
    ],
)
def test_trade_rejects_a_bad_symbol_or_quantity_with_value_error(
    nodes: Nodes, symbol: str, quantity: Any, message: str
) -> None:
    """A bad symbol or a non-finite, zero or non-numeric quantity raises ValueError at once."""
    node, rows = nodes.start("alpha")
    with pytest.raises(ValueError, match=message):
        node.trade(symbol, quantity)
    # The node goes on and the bad trade left nothing behind.
    good = node.trade("OK", 1).result(timeout=5)
    assert node.positions() == [good]
    rows.wait_for_row(good)
    assert rows.rows() == [good]


def test_trade_rejects_an_int_too_large_for_a_float_with_value_error(nodes: Nodes) -> None:
    """An integer quantity beyond float range is a bad quantity like inf: ValueError."""
    node, _ = nodes.start("alpha")
    with pytest.raises(ValueError, match="invalid quantity"):
        node.trade("AAPL", 10**400)


@pytest.mark.parametrize("symbol", ["7203", "BRK.B", "ES:H5", "EUR/USD", "a_b-c", "A" * 32])
def test_trade_accepts_symbols_as_exchanges_spell_them(nodes: Nodes, symbol: str) -> None:
    """Numeric, dotted, colon, slash, underscore, dash and 32-character symbols are valid."""
    node, _ = nodes.start("alpha")
    assert node.trade(symbol, -2.5).result(timeout=5).symbol == symbol


def test_a_trade_that_would_overflow_fails_its_future_only(nodes: Nodes) -> None:
    """A trade whose result is not finite fails with TradeError; the position is unchanged."""
    node, _ = nodes.start("alpha")
    first = node.trade("AAPL", 1e308).result(timeout=5)

    with pytest.raises(TradeError, match="overflow"):
        node.trade("AAPL", 1e308).result(timeout=5)

    assert node.positions() == [first]
    assert node.trade("AAPL", -1e308).result(timeout=5).net_position == 0.0


# Queries.


def test_positions_are_sorted_by_strategy_then_symbol(nodes: Nodes) -> None:
    """positions() lists every strategy's positions, sorted by strategy, then symbol."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    for symbol in ("MSFT", "AAPL", "7203"):
        b.trade(symbol, 1).result(timeout=5)
        a.trade(symbol, 2).result(timeout=5)

    keys = [(s, sym) for s in ("alpha", "beta") for sym in ("7203", "AAPL", "MSFT")]
    wait_until(lambda: [(p.strategy, p.symbol) for p in a.positions()] == keys)
    wait_until(lambda: [(p.strategy, p.symbol) for p in b.positions()] == keys)
    assert a.positions() == b.positions()


def test_exposure_nets_every_strategy_per_symbol(nodes: Nodes) -> None:
    """exposure() is the firm's net position per symbol, summed over strategies."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    a.trade("AAPL", 100).result(timeout=5)
    a.trade("MSFT", 5).result(timeout=5)
    b.trade("AAPL", -30.5).result(timeout=5)
    b.trade("GOOG", -1).result(timeout=5)

    expected = {"AAPL": 69.5, "MSFT": 5.0, "GOOG": -1.0}
    wait_until(lambda: a.exposure() == expected, what="alpha's exposure")
    wait_until(lambda: b.exposure() == expected, what="beta's exposure")


def test_peers_shows_each_connected_peer_with_address_state_and_last_heard(nodes: Nodes) -> None:
    """peers() names each connected peer, where it listens, who dialled, and when last heard."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))

    def connected(node: Node) -> list[Any]:
        return [row for row in node.peers() if row.state.startswith("connected")]

    [row_a] = wait_until(lambda: connected(a), what="alpha connected")
    [row_b] = wait_until(lambda: connected(b), what="beta connected")
    assert (row_a.name, row_a.address, row_a.state) == (
        "beta",
        f"127.0.0.1:{b.port}",
        "connected (dialled)",
    )
    assert (row_b.name, row_b.address, row_b.state) == (
        "alpha",
        f"127.0.0.1:{a.port}",
        "connected (they dialled)",
    )
    assert row_a.last_heard is not None and 0 <= row_a.last_heard < 2

    b.stop()

    def gone(rows: list[Any]) -> bool:
        return len(rows) == 1 and rows[0].name == "beta" and rows[0].last_heard is None

    [row] = wait_until(lambda: gone(a.peers()) and a.peers(), what="alpha to see beta gone")
    assert row.state.startswith(("disconnected", "unreachable", "connecting")), row


def test_peers_remembers_a_peer_that_dialled_in_and_left(nodes: Nodes) -> None:
    """A peer that dialled us stays listed after it leaves, disconnected, with where it listens."""
    a, _ = nodes.start("alpha")
    b, _ = nodes.start("beta", peers=(a.port,))
    wait_until(lambda: any(r.state == "connected (they dialled)" for r in a.peers()))
    beta_port = b.port

    b.stop()

    [row] = wait_until(
        lambda: [r for r in a.peers() if not r.state.startswith("connected")],
        what="alpha to list beta as gone",
    )
    assert (row.name, row.address, row.last_heard) == ("beta", f"127.0.0.1:{beta_port}", None)
    assert row.state.startswith("disconnected (")


# updates() from asyncio.


def test_updates_delivers_every_change_in_order_while_nodes_trade(nodes: Nodes) -> None:
    """An asyncio consumer of updates() sees every own change, and peers' changes in order."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    wait_until(lambda: a.peers()[-1].state == "connected (dialled)", what="a connection")
    count = 100

    def trade_all(node: Node, symbol: str) -> None:
        for _ in range(count):
            node.trade(symbol, 1)

    async def consume() -> list[Position]:
        seen: list[Position] = []
        async with aclosing(b.updates()) as updates:
            first = asyncio.ensure_future(anext(updates))
            await asyncio.sleep(0)  # one loop turn: the generator has subscribed
            trading = asyncio.gather(
                asyncio.to_thread(trade_all, a, "AAPL"), asyncio.to_thread(trade_all, b, "MSFT")
            )
            seen.append(await first)
            async for change in updates:
                seen.append(change)
                finals = {(p.strategy, p.symbol, p.net_position) for p in seen}
                if {("alpha", "AAPL", count), ("beta", "MSFT", count)} <= finals:
                    break
            await trading
        return seen

    seen = run(consume())

    # b's own trades: every one, in order.
    mine = [p for p in seen if (p.strategy, p.symbol) == ("beta", "MSFT")]
    assert [p.net_position for p in mine] == [float(n) for n in range(1, count + 1)]
    assert [p.timestamp for p in mine] == sorted({p.timestamp for p in mine})
    # a's trades, as b learns them: in order, each newer than the last, ending at the last
    # (a burst reaches peers as the latest position of each symbol per batch).
    theirs = [p for p in seen if (p.strategy, p.symbol) == ("alpha", "AAPL")]
    nets = [p.net_position for p in theirs]
    assert nets == sorted(set(nets)) and nets[-1] == float(count)
    assert [p.timestamp for p in theirs] == sorted({p.timestamp for p in theirs})


def test_updates_ends_a_consumer_more_than_maxsize_behind_with_updates_overflow(
    nodes: Nodes,
) -> None:
    """A consumer that stops reading gets what was queued, then UpdatesOverflow; trades go on."""
    node, _ = nodes.start("alpha")
    maxsize = 5

    async def lag() -> tuple[list[float], BaseException | None, list[float]]:
        got: list[float] = []
        error: BaseException | None = None
        async with aclosing(node.updates(maxsize=maxsize)) as updates:
            first = asyncio.ensure_future(anext(updates))
            await asyncio.sleep(0)  # one loop turn: the generator has subscribed
            node.trade("AAPL", 1)
            got.append((await first).net_position)
            # The consumer is parked at its yield: 20 more changes, one batch each.
            for _ in range(20):
                await asyncio.wrap_future(node.trade("AAPL", 1))
            try:
                async for change in updates:
                    got.append(change.net_position)
            except UpdatesOverflow as exc:
                error = exc
        # Starting over: the current view, then a new subscription.
        again: list[float] = []
        async with aclosing(node.updates(maxsize=maxsize)) as updates:
            nxt = asyncio.ensure_future(anext(updates))
            await asyncio.sleep(0)
            node.trade("AAPL", 1)
            again.append((await nxt).net_position)
        return got, error, again

    got, error, again = run(lag())

    assert isinstance(error, UpdatesOverflow)
    assert f"more than {maxsize} changes behind" in str(error)
    # Everything delivered before the cut is the start of the true sequence, in order.
    assert got == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert nets_of(node.positions()) == {("alpha", "AAPL"): 22.0}
    assert again == [22.0]


def test_updates_ends_when_the_node_stops(nodes: Nodes) -> None:
    """A consumer's iteration ends normally at stop(), after every change made before it."""
    node, _ = nodes.start("alpha")

    async def consume() -> list[float]:
        seen: list[float] = []
        async with aclosing(node.updates()) as updates:
            first = asyncio.ensure_future(anext(updates))
            await asyncio.sleep(0)  # one loop turn: the generator has subscribed
            for _ in range(5):
                node.trade("AAPL", 1)
            stopping = asyncio.ensure_future(asyncio.to_thread(node.stop))
            seen.append((await first).net_position)
            async for change in updates:  # ends when the node has stopped
                seen.append(change.net_position)
            await stopping
        return seen

    assert run(consume()) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_updates_on_a_node_that_is_not_running_raises_node_error(nodes: Nodes) -> None:
    """updates() before start or after stop raises NodeError on first use."""
    node = Node(nodes.config("alpha"))

    async def first() -> Position:
        return await anext(node.updates())

    with pytest.raises(NodeError, match="not running"):
        run(first())


def test_updates_outside_a_running_event_loop_raises_node_error(nodes: Nodes) -> None:
    """updates() called from plain threaded code, not in a running loop, raises NodeError."""
    node, _ = nodes.start("alpha")
    with pytest.raises(NodeError, match="call it in a running loop"):
        node.updates()


# Lifecycle.


def test_start_prints_the_stored_view_first(nodes: Nodes) -> None:
    """A restarted node prints one row per stored position before anything else."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    mine = a.trade("AAPL", 1).result(timeout=5)
    theirs = b.trade("MSFT", 2).result(timeout=5)
    wait_until(lambda: theirs in a.positions(), what="beta's position at alpha")
    b.stop()

    a2, rows = nodes.restart(a)

    assert sorted(rows.rows()[:2]) == sorted([mine, theirs])
    assert a2.positions() == sorted([mine, theirs])


def test_stop_applies_queued_trades_and_they_survive_a_restart(nodes: Nodes) -> None:
    """Trades queued before stop() are applied and committed; a restart shows them."""
    node, _ = nodes.start("alpha")
    futures = [node.trade("AAPL", 1) for _ in range(500)]
    node.stop()

    assert [f.result(timeout=0).net_position for f in futures] == [float(n) for n in range(1, 501)]
    again, rows = nodes.restart(node)
    assert nets_of(again.positions()) == {("alpha", "AAPL"): 500.0}
    assert rows.nets() == {("alpha", "AAPL"): 500.0}


def test_trades_queued_before_stop_reach_the_peers(nodes: Nodes) -> None:
    """stop() flushes what was applied to the connected peers before closing."""
    b, rows_b = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    wait_until(lambda: a.peers()[-1].state == "connected (dialled)", what="a connection")
    for _ in range(300):
        a.trade("AAPL", 1)
    a.stop()

    rows_b.wait_for_nets({("alpha", "AAPL"): 300.0})


def test_every_trade_accepted_while_stopping_is_resolved(nodes: Nodes) -> None:
    """A trade accepted while the node stops either applies or fails; none is left pending."""
    node, _ = nodes.start("alpha")
    futures: list[Future[Position]] = []
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    try:
        while True:  # trade until the node refuses
            try:
                futures.append(node.trade("AAPL", 1))
            except NodeError:
                break
    finally:
        stopper.join()

    done, pending = wait(futures, timeout=2)
    assert not pending, f"{len(pending)} of {len(futures)} accepted trades never resolved"
    applied = [f.result().net_position for f in done if f.exception() is None]
    assert applied == [float(n) for n in range(1, len(applied) + 1)]


def test_stop_is_idempotent_and_ends_every_thread(nodes: Nodes) -> None:
    """stop() twice is harmless; afterwards the node refuses use and no thread is left."""
    b, _ = nodes.start("beta")
    a, _ = nodes.start("alpha", peers=(b.port,))
    a.trade("X", 1).result(timeout=5)  # the connection may still be coming up: stop anyway

    a.stop()
    a.stop()
    b.stop()

    with pytest.raises(NodeError, match="not running"):
        a.trade("X", 1)
    with pytest.raises(NodeError, match="not running"):
        a.positions()
    # The no_thread_leak fixture checks the threads.


def test_a_node_is_a_context_manager_that_starts_and_stops(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """``with Node(config)`` starts the node and stops it on exit, even after an error."""
    rows = Rows()
    config = Config("alpha", data_dir=tmp_path, recovery_timeout=0)
    with pytest.raises(RuntimeError), Node(config, out=rows) as node:
        position = node.trade("AAPL", 3).result(timeout=5)
        raise RuntimeError("user code failed")

    with pytest.raises(NodeError):
        node.positions()
    with Node(config) as again:  # the store was closed and unlocked
        assert again.positions() == [position]


def test_a_node_starts_once(nodes: Nodes) -> None:
    """start() on a running or stopped node raises NodeError."""
    node, _ = nodes.start("alpha")
    with pytest.raises(NodeError, match="starts once"):
        node.start()
    node.stop()
    with pytest.raises(NodeError, match="starts once"):
        node.start()


def test_using_a_node_before_start_raises_node_error(nodes: Nodes) -> None:
    """trade(), positions(), exposure(), peers() and port need a started node."""
    node = Node(nodes.config("alpha"))
    for call in (lambda: node.trade("A", 1), node.positions, node.exposure, node.peers):
        with pytest.raises(NodeError, match="not running"):
            call()
    with pytest.raises(NodeError, match="has not started"):
        _ = node.port


def test_two_nodes_on_one_store_are_refused(nodes: Nodes) -> None:
    """A second node with the same name and data dir fails to start with a clear NodeError."""
    nodes.start("alpha")
    with pytest.raises(NodeError, match="another node named 'alpha' is already running"):
        nodes.start("alpha")


def test_a_busy_port_is_refused_and_releases_the_store(nodes: Nodes, tmp_path: Path) -> None:
    """A node that cannot listen raises NodeError and leaves its store usable by the next."""
    first, _ = nodes.start("alpha")
    with pytest.raises(NodeError, match=rf"cannot listen on 127.0.0.1:{first.port}"):
        nodes.start("beta", port=first.port)
    beta, _ = nodes.start("beta")
    assert beta.positions() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "invalid strategy name"),
        ({"name": "../escape"}, "invalid strategy name"),
        ({"name": ""}, "invalid strategy name"),
        ({"name": "ok", "port": 70000}, "invalid port 70000"),
        ({"name": "ok", "port": -1}, "invalid port -1"),
        ({"name": "ok", "recovery_timeout": -1.0}, "must not be negative"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], message: str) -> None:
    """Config raises NodeError for a bad strategy name, port or recovery timeout."""
    with pytest.raises(NodeError, match=message):
        Config(**kwargs)
