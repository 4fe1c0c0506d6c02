"""The trade journal: every own trade in the store with its position, ``history SYMBOL [N]``
at the console, positions explained trade by trade, and a rebase after a late echo."""

from __future__ import annotations

import random
import re
import shutil
import sqlite3
import time
from pathlib import Path

from position_distributor.node import Node
from position_distributor.store import JournalEntry

from .faultproxy import FaultProxy
from .inproc import Nodes, Rows
from .procs import Cluster, NodeProcess, parse_row
from .waiting import capture_logs, wait_until

# A line of ``history``: local time with ms | symbol | signed quantity | position | timestamp,
# and `` | rebase`` for a rebase.
HISTORY_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (\S+) \| ([+-]\d+\.\d{6}) \| (-?\d+\.\d{6})"
    r" \| (\d+)( \| rebase)?"
)


def journal(store: Path) -> list[JournalEntry]:
    """Every journal entry in a store file, in order, read as another process would."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT time_ns, symbol, quantity, net_position, timestamp, kind FROM journal"
            " ORDER BY timestamp"
        ).fetchall()
    return [JournalEntry(*row) for row in rows]


def history(node: NodeProcess, symbol: str, count: int | None = None) -> list[str]:
    """The lines ``history SYMBOL [N]`` prints at ``node``'s console, after its header."""
    command = f"history {symbol}" + ("" if count is None else f" {count}")
    return node.command_output(command, f"History {symbol}")


def explained(entries: list[JournalEntry], symbol: str) -> float:
    """The position the journal explains: its quantities for ``symbol`` added in order."""
    net = 0.0
    for entry in entries:
        if entry.symbol == symbol:
            net += entry.quantity
    return net


def test_every_own_trade_is_journalled_before_its_row_is_printed(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Each own trade, bursts included, has its journal entry (time, symbol, quantity,
    resulting position, timestamp) committed by the time its row is printed; peers' trades
    are not journalled."""
    store = tmp_path / "alpha" / "alpha.sqlite3"
    missing: list[str] = []

    def check(lines: list[str]) -> None:  # runs in the engine thread, as the rows are written
        found = {entry.timestamp: entry for entry in journal(store)}
        for line in lines:
            row = parse_row(line)
            if row is None or row[0] != "alpha":
                continue
            entry = found.get(row[3])
            if entry is None or (entry.symbol, entry.net_position) != (row[1], row[2]):
                missing.append(line)

    beta, _ = nodes.start("beta")
    alpha, _ = nodes.start("alpha", rows=Rows(before_write=check), peers=(beta.port,))
    started_ns = time.time_ns()
    made = [alpha.trade(symbol, q).result(10) for symbol, q in [("AAPL", 100), ("AAPL", -25.5)]]
    alpha.submit_many(
        [("MSFT", 3.0, None, None), ("AAPL", 0.5, None, None), ("MSFT", -1.0, None, None)]
    )
    assert alpha.flush(10)
    beta.trade("AAPL", 7).result(10)
    made.append(alpha.trade("7203", 1e3).result(10))
    ended_ns = time.time_ns()

    assert missing == []
    entries = journal(store)
    assert [(e.symbol, e.quantity, e.net_position, e.kind) for e in entries] == [
        ("AAPL", 100.0, 100.0, "trade"),
        ("AAPL", -25.5, 74.5, "trade"),
        ("MSFT", 3.0, 3.0, "trade"),
        ("AAPL", 0.5, 75.0, "trade"),
        ("MSFT", -1.0, 2.0, "trade"),
        ("7203", 1000.0, 1000.0, "trade"),
    ]
    assert [e.timestamp for e in entries if e.timestamp in {p.timestamp for p in made}] == [
        p.timestamp for p in made
    ]
    assert all(started_ns <= e.time_ns <= ended_ns for e in entries)
    assert len({e.timestamp for e in entries}) == len(entries)
    assert alpha.history("AAPL", 2) == entries[1:4:2]  # the last two, oldest first
    assert alpha.history("IBM") == []


def test_kill_9_right_after_a_row_keeps_its_journal_entry(cluster: Cluster) -> None:
    """Killing a node the moment a row of a stream of trades is printed loses no journal
    entry of a printed row: the journal is the stream's prefix, trade by trade, with each
    resulting position, and holds every row printed."""
    node = cluster.add("alpha")
    total = 20_000
    quantities = range(1, total + 1)
    for start in range(0, total, 500):  # in separate writes: many batches
        node.type(*[f"AAPL {q}" for q in quantities[start : start + 500]])
    node.wait_until(lambda n: len(n.rows()) >= 50, what="50 rows")
    node.kill()
    # Whole lines only: the kill may cut the last one short.
    lines = [line for line in node.lines if line.endswith("\n")]
    printed = [row for row in map(parse_row, lines) if row is not None and row[0] == "alpha"]
    entries = journal(node.data_dir / "alpha.sqlite3")
    assert len(entries) >= len(printed) >= 50
    assert [e.timestamp for e in entries[: len(printed)]] == [row[3] for row in printed]
    for index, entry in enumerate(entries, 1):
        assert (entry.symbol, entry.quantity, entry.net_position, entry.kind) == (
            "AAPL",
            index,
            index * (index + 1) / 2,
            "trade",
        )
    print(f"\nkilled after {len(printed)} rows printed; {len(entries)} trades journalled")


def test_history_prints_the_last_n_entries_oldest_first(cluster: Cluster) -> None:
    """``history SYMBOL N`` prints the last N journal entries of SYMBOL, oldest first, under a
    "History SYMBOL" header (20 by default), and "(no trades)" for a symbol never traded."""
    node = cluster.add("alpha")
    quantities = [float(q) for q in range(1, 26)]
    node.type(*[f"AAPL {q:g}" for q in quantities], "MSFT -2.5")
    node.wait_for_view({("alpha", "AAPL"): sum(quantities), ("alpha", "MSFT"): -2.5})

    last3 = [HISTORY_LINE.fullmatch(line) for line in history(node, "AAPL", 3)]
    assert all(last3), last3
    assert (
        [(m[2], m[3], m[4]) for m in last3]
        == [  # type: ignore[index]
            ("AAPL", "+23.000000", f"{sum(quantities[:23]):.6f}"),
            ("AAPL", "+24.000000", f"{sum(quantities[:24]):.6f}"),
            ("AAPL", "+25.000000", f"{sum(quantities):.6f}"),
        ]
    )
    assert int(last3[-1][5]) == node.snapshot()[("alpha", "AAPL")][1]  # type: ignore[index]
    assert [m[6] for m in last3] == [None, None, None]  # type: ignore[index]
    default = history(node, "AAPL")
    assert len(default) == 20 and default[-3:] == history(node, "AAPL", 3)
    assert (
        [HISTORY_LINE.fullmatch(line)[3] for line in default]
        == [  # type: ignore[index]
            f"+{q:.6f}" for q in quantities[-20:]
        ]
    )
    assert [HISTORY_LINE.fullmatch(line)[3] for line in history(node, "MSFT", 5)] == [  # type: ignore[index]
        "-2.500000"
    ]
    assert history(node, "IBM") == ["(no trades)"]


def test_a_position_is_the_sum_of_its_journalled_trades(cluster: Cluster) -> None:
    """For a node that never lost its store, each own position equals its journal's
    quantities added in order, across a restart and with a peer trading the same symbols."""
    rng = random.Random(20310314)
    alpha = cluster.add("alpha")
    beta = cluster.add("beta", peers=[alpha.port])
    symbols = ["AAPL", "MSFT", "7203", "BRK.B"]
    truth: dict[tuple[str, str], float] = {}
    for round_ in range(2):
        if round_:
            alpha.stop()
            cluster.restart("alpha")
        trades = [(rng.choice(symbols), rng.randint(-500, 500) / 10 or 0.1) for _ in range(120)]
        alpha.type(*[f"{symbol} {q}" for symbol, q in trades])
        beta.type(*[f"{symbol} 1" for symbol in symbols])
        for symbol, q in trades:  # added in order, as the node does
            truth[("alpha", symbol)] = truth.get(("alpha", symbol), 0.0) + q
        for symbol in symbols:
            truth[("beta", symbol)] = round_ + 1.0
        # Rows show six decimals.
        cluster.wait_for_view({k: round(v, 6) for k, v in truth.items()}, [alpha, beta])
    alpha.stop()
    store = alpha.data_dir / "alpha.sqlite3"
    entries = journal(store)
    assert len(entries) == 240 and {e.kind for e in entries} == {"trade"}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        stored = dict(
            db.execute(
                "SELECT symbol, net_position FROM positions WHERE strategy = ?", ("alpha",)
            ).fetchall()
        )
    assert stored == {symbol: truth[("alpha", symbol)] for symbol in symbols}
    for symbol in symbols:
        assert explained(entries, symbol) == stored[symbol], symbol


def test_a_late_echo_rebases_the_position_and_the_journal_says_so(cluster: Cluster) -> None:
    """A node whose store was deleted, that gave up waiting for its only holder and traded,
    takes the holder's older position as a base when it connects: the position becomes base
    plus trades, and the journal shows a 'rebase' entry of the jump."""
    holder = cluster.add("holder")
    with FaultProxy(holder.port, name="alpha->holder") as link:
        alpha = cluster.add("alpha", peers=[link.port], recovery_timeout=0.5)
        alpha.type("AAPL 100", "MSFT 7")
        truth = {("alpha", "AAPL"): 100.0, ("alpha", "MSFT"): 7.0}
        holder.wait_for_view(truth)
        before = holder.snapshot()

        alpha.kill()
        link.cut(how="reset")  # the holder is unreachable
        cluster.restart("alpha", wipe=True)
        alpha.wait_for_log("recovery timeout")
        alpha.type("AAPL 5")
        alpha.wait_for_view({("alpha", "AAPL"): 5.0})

        link.heal()
        truth = {("alpha", "AAPL"): 105.0, ("alpha", "MSFT"): 7.0}
        alpha.wait_for_view(truth)
        holder.wait_for_view(truth)
    assert alpha.snapshot()[("alpha", "MSFT")] == before[("alpha", "MSFT")]  # learnt as it was
    assert alpha.snapshot() == holder.snapshot()

    lines = [HISTORY_LINE.fullmatch(line) for line in history(alpha, "AAPL")]
    assert all(lines), lines
    assert [(m[3], m[4], m[6]) for m in lines] == [  # type: ignore[index]
        ("+5.000000", "5.000000", None),
        ("+100.000000", "105.000000", " | rebase"),
    ]
    assert int(lines[-1][5]) == alpha.snapshot()[("alpha", "AAPL")][1]  # type: ignore[index]
    assert history(alpha, "MSFT") == ["(no trades)"]  # a plain recovery is not a trade
    alpha.wait_for_log("AAPL: a peer sent back 100.0 from before this store")
    alpha.stop()
    entries = journal(alpha.data_dir / "alpha.sqlite3")
    assert [e.kind for e in entries] == ["trade", "rebase"]
    assert explained(entries, "AAPL") == 105.0


def own_net(node: Node, symbol: str) -> float | None:
    return next((p.net_position for p in node.positions() if p[:2] == (node.name, symbol)), None)


def test_a_store_restored_from_an_older_copy_recovers_only_with_recover(
    nodes: Nodes, tmp_path: Path
) -> None:
    """A node restarted on an older copy of its store refuses its peer's newer own position
    (one ERROR line naming --recover) and keeps its own; restarted with --recover it takes the
    position back once, counting no trade twice, and trades on from it."""
    beta, _ = nodes.start("beta")
    alpha, _ = nodes.start("alpha", peers=(beta.port,))
    alpha.trade("AAPL", 10).result(10)
    data = alpha.config.data_dir
    alpha.stop()
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)
    alpha, _ = nodes.restart(alpha)
    assert alpha.trade("AAPL", 5).result(10).net_position == 15.0
    wait_until(lambda: (beta.positions() or [None])[0] == alpha.positions()[0], 10, "beta at 15")
    alpha.stop()
    shutil.rmtree(data)
    shutil.copytree(backup, data)

    with capture_logs("ERROR") as logs:
        alpha, _ = nodes.restart(alpha)
        line = logs.wait_for_text("restart with --recover", 10)
    assert "AAPL 15.0" in line
    assert own_net(alpha, "AAPL") == 10.0

    alpha, _ = nodes.restart(alpha, recover=True, recovery_timeout=10.0)
    assert alpha.trade("AAPL", 1).result(15).net_position == 16.0  # held until beta synced
    # The restored journal's +10, then the +1: 15 was taken as it was, not as a rebase.
    assert [(e.kind, e.quantity) for e in alpha.history("AAPL")] == [
        ("trade", 10.0),
        ("trade", 1.0),
    ]
