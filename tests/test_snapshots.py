"""Snapshots: ``snapshot [LABEL]`` at the console, ``Node.snapshot()``, the daily timer, and the
read-only CLI ``python -m position_distributor.snapshots`` run as a user runs it."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import types
import zoneinfo
from dataclasses import replace
from pathlib import Path

import pytest

from position_distributor import node as node_module
from position_distributor.__main__ import parse_args
from position_distributor.node import Node
from position_distributor.snapshots import SnapshotReader
from position_distributor.store import SnapshotInfo
from position_distributor.types import Position, format_row

from .inproc import Nodes
from .procs import Cluster, NodeProcess, run_cli
from .waiting import wait_until

PROG = "python -m position_distributor.snapshots"
LIST_LINE = re.compile(r"(\d+) \| (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (.*) \| (\d+)")


def snapshots_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m position_distributor.snapshots ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "position_distributor.snapshots", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def ok(*args: str | Path) -> str:
    """Run the CLI, expect success with nothing on stderr; its stdout."""
    result = snapshots_cli(*args)
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def fails(*args: str | Path, status: int = 1) -> str:
    """Run the CLI, expect exit ``status``, no stdout and exactly one line on stderr; the line."""
    result = snapshots_cli(*args)
    assert result.returncode == status, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), result.stderr
    return lines[0]


def take_snapshot(node: NodeProcess, label: str = "") -> int:
    """Type ``snapshot [LABEL]`` at ``node``'s console; the id its output line gives."""
    return typed_snapshot(node, label)[0]


def typed_snapshot(node: NodeProcess, label: str = "") -> tuple[int, list[str]]:
    """Type ``snapshot [LABEL]`` at ``node``'s console; the id its output line gives, and the
    arguments of the snapshots CLI command it says to read it with."""
    start = node.mark().out
    node.type(f"snapshot {label}".rstrip())
    index = node.wait_for_output("Snapshot ", start=start)
    line = node.lines[index].rstrip("\n")
    shown = re.escape(repr(label or "manual"))
    found = re.fullmatch(
        rf"Snapshot (\d+) {shown} taken: (\d+) position\(s\)"
        rf" \(read it with: python -m position_distributor\.snapshots (.+ show \1)\)",
        line,
    )
    assert found, line
    assert int(found.group(2)) == len(node.snapshot())
    args = shlex.split(found.group(3))
    assert args[0] == str(node.data_dir), line
    return int(found.group(1)), args


def exported(data_dir: Path, snapshot_id: int, *more: str) -> dict[str, object]:
    """A snapshot exported as JSON on stdout by the CLI."""
    document = json.loads(ok(data_dir, *more, "export", str(snapshot_id), "--format", "json"))
    assert isinstance(document, dict)
    return document


def rows_of(node: NodeProcess) -> list[Position]:
    """``node``'s printed view as positions, sorted by strategy then symbol."""
    return [Position(s, sym, net, ts) for (s, sym), (net, ts) in sorted(node.snapshot().items())]


def three_nodes(cluster: Cluster, **kwargs: object) -> list[NodeProcess]:
    a = cluster.add("alpha", **kwargs)  # type: ignore[arg-type]
    b = cluster.add("beta", peers=[a.port], **kwargs)  # type: ignore[arg-type]
    c = cluster.add("gamma", peers=[a.port, b.port], **kwargs)  # type: ignore[arg-type]
    return [a, b, c]


def trade_and_converge(cluster: Cluster, nodes: list[NodeProcess]) -> None:
    nodes[0].type("AAPL 100", "MSFT -5.5")
    nodes[1].type("AAPL 3")
    nodes[2].type("7203 1e3")
    truth = {
        ("alpha", "AAPL"): 100.0,
        ("alpha", "MSFT"): -5.5,
        ("beta", "AAPL"): 3.0,
        ("gamma", "7203"): 1000.0,
    }
    cluster.wait_for_view(truth, nodes)


# Console and CLI, with running nodes.


def test_snapshots_taken_on_each_node_after_convergence_are_identical(cluster: Cluster) -> None:
    """After convergence, a snapshot taken at each of three nodes' consoles holds the same
    rows, timestamps included: every strategy's positions, as each node printed them."""
    nodes = three_nodes(cluster)
    trade_and_converge(cluster, nodes)
    documents = []
    for node in nodes:
        snapshot_id = take_snapshot(node, "eod 2031-03-14")
        document = exported(node.data_dir, snapshot_id)
        assert document["label"] == "eod 2031-03-14"
        documents.append(document)
    positions = [document["positions"] for document in documents]
    assert positions[0] == positions[1] == positions[2]
    assert [Position(**p) for p in positions[0]] == rows_of(nodes[0])  # type: ignore[union-attr]
    assert len(positions[0]) == 4  # type: ignore[arg-type]


def test_the_cli_lists_shows_and_exports_while_the_node_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With the node running, list gives id, time, label and size; show prints the rows;
    export writes CSV (--csv FILE, or stdout by default) and JSON (-o FILE, or stdout), all
    holding exactly the positions the node showed when the snapshot was taken."""
    nodes = three_nodes(cluster)
    trade_and_converge(cluster, nodes)
    alpha = nodes[0]
    data_dir = alpha.data_dir
    before = dt.datetime.now()
    first = take_snapshot(alpha)
    view = rows_of(alpha)
    alpha.type("AAPL 1")  # the second snapshot differs from the first
    alpha.wait_for_view({**alpha.nets(), ("alpha", "AAPL"): 101.0})
    second, hint = typed_snapshot(alpha, "close of day")
    after = dt.datetime.now()
    assert (first, second) == (1, 2)
    assert alpha.alive

    listed = [LIST_LINE.fullmatch(line) for line in ok(data_dir, "list").splitlines()]
    assert all(listed), listed
    summary = [(m[1], m[3], m[4]) for m in listed]  # type: ignore[index]
    assert summary == [("1", "manual", "4"), ("2", "close of day", "4")]
    for match in listed:
        taken = dt.datetime.strptime(match[2], "%Y-%m-%d %H:%M:%S.%f")  # type: ignore[index]
        assert before - dt.timedelta(seconds=1) <= taken <= after

    shown = ok(data_dir, "show", "1").splitlines()
    assert re.fullmatch(r"Snapshot 1 'manual' \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", shown[0])
    assert shown[1:] == [format_row(p) for p in view]
    assert ok(*hint).splitlines()[1:] == [format_row(p) for p in rows_of(alpha)]  # as told

    csv_file = tmp_path / "one.csv"
    assert ok(data_dir, "export", "1", "--csv", csv_file) == ""
    table = list(csv.reader(io.StringIO(csv_file.read_text())))
    assert table[0] == ["strategy", "symbol", "net_position", "timestamp"]
    assert [Position(s, sym, float(n), int(ts)) for s, sym, n, ts in table[1:]] == view
    assert ok(data_dir, "export", "1") == csv_file.read_text()  # CSV on stdout by default

    json_file = tmp_path / "two.json"
    assert ok(data_dir, "export", "2", "--format", "json", "-o", json_file) == ""
    document = json.loads(json_file.read_text())
    assert document == exported(data_dir, 2)  # the same document on stdout
    assert (document["id"], document["label"]) == (2, "close of day")
    assert document["taken_at"] == listed[1][2]  # type: ignore[index]
    assert [Position(**p) for p in document["positions"]] == rows_of(alpha)
    assert dict(document["positions"][0]) == {
        "strategy": "alpha",
        "symbol": "AAPL",
        "net_position": 101.0,
        "timestamp": alpha.snapshot()[("alpha", "AAPL")][1],
    }


def test_the_cli_reads_without_a_node_and_never_writes_the_store(cluster: Cluster) -> None:
    """Once the node has stopped, the CLI still reads its snapshots, and leaves the store
    file byte for byte as it was (it opens it read-only)."""
    node = cluster.add("alpha")
    node.type("AAPL 100")
    node.wait_for_view({("alpha", "AAPL"): 100.0})
    take_snapshot(node, "before stop")
    assert node.stop() == 0
    store = node.data_dir / "alpha.sqlite3"
    files = [p.name for p in node.data_dir.iterdir()]
    digest = hashlib.sha256(store.read_bytes()).hexdigest()

    assert LIST_LINE.fullmatch(ok(node.data_dir, "list").rstrip("\n"))
    assert ok(node.data_dir, "show", "1").splitlines()[1:] == [format_row(p) for p in rows_of(node)]
    assert exported(node.data_dir, 1)["label"] == "before stop"

    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest
    # SQLite may leave a -shm and an empty -wal beside a WAL database it read: nothing written.
    added = sorted(set(p.name for p in node.data_dir.iterdir()) - set(files))
    assert set(added) <= {"alpha.sqlite3-shm", "alpha.sqlite3-wal"}, added
    wal = node.data_dir / "alpha.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_the_cli_needs_name_for_a_data_dir_of_several_stores(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two nodes sharing one data dir: --name picks each store; without it the CLI says
    which stores there are and exits non-zero with one line."""
    shared = tmp_path / "shared"
    a = cluster.add("alpha", data_dir=shared)
    b = cluster.add("beta", peers=[a.port], data_dir=shared)
    a.type("AAPL 1")
    cluster.wait_for_view({("alpha", "AAPL"): 1.0}, [a, b])
    take_snapshot(a, "from alpha")
    take_snapshot(b)
    take_snapshot(b, "from beta")

    assert [m.split(" | ")[2] for m in ok(shared, "--name", "alpha", "list").splitlines()] == [
        "from alpha"
    ]
    assert [m.split(" | ")[2] for m in ok(shared, "--name", "beta", "list").splitlines()] == [
        "manual",
        "from beta",
    ]
    assert exported(shared, 2, "--name", "beta")["label"] == "from beta"
    line = fails(shared, "list")
    assert line.endswith("holds 2 stores (alpha, beta); say which with --name"), line


def test_the_cli_says_what_is_wrong_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    """No such snapshot, no such store, no store at all, no data dir, or bad arguments: exit
    non-zero with one line on stderr naming the problem, and nothing on stdout."""
    node = cluster.add("alpha")
    take_snapshot(node)
    data_dir = node.data_dir
    assert "no snapshot 99 in " in fails(data_dir, "show", "99")
    assert "no snapshot 0 in " in fails(data_dir, "export", "0", "--format", "json")
    assert f"no store for 'zeta' in {data_dir}" in fails(data_dir, "--name", "zeta", "list")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds 0 stores (none)" in fails(empty, "list")
    assert f"no data dir {tmp_path / 'missing'}" in fails(tmp_path / "missing", "list")
    assert "not both" in fails(data_dir, "export", "1", "--csv", "a", "-o", "b", status=2)
    assert "--csv writes CSV" in fails(
        data_dir, "export", "1", "--csv", "a", "--format", "json", status=2
    )
    assert "invalid int value" in fails(data_dir, "show", "one", status=2)
    assert "cannot write" in fails(data_dir, "export", "1", "-o", tmp_path / "no" / "such.csv")
    assert node.alive


def test_the_cli_takes_name_before_or_after_its_command(cluster: Cluster, tmp_path: Path) -> None:
    """``--name`` works before the command or after it (and after its arguments)."""
    shared = tmp_path / "shared"
    a = cluster.add("alpha", data_dir=shared)
    cluster.add("beta", peers=[a.port], data_dir=shared)
    take_snapshot(a, "from alpha")

    before = ok(shared, "--name", "alpha", "list")
    assert ok(shared, "list", "--name", "alpha") == before
    assert before.split(" | ")[2] == "from alpha"
    assert ok(shared, "show", "1", "--name", "alpha") == ok(shared, "--name", "alpha", "show", "1")
    assert exported(shared, 1, "--name", "alpha")["label"] == "from alpha"
    assert "no store for 'beta2'" in fails(shared, "list", "--name", "beta2")


def test_the_cli_says_when_there_are_no_snapshots(cluster: Cluster) -> None:
    """``list`` on a store without snapshots prints nothing on stdout, says so on stderr and
    exits 0."""
    node = cluster.add("alpha")
    node.wait_for_log("listening on")
    result = snapshots_cli(node.data_dir, "list")

    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.startswith(f"no snapshots in {node.data_dir / 'alpha.sqlite3'}")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command", [(), ("DATA_DIR", "list"), ("DATA_DIR", "show"), ("DATA_DIR", "export")]
)
def test_the_cli_help_explains_every_argument(command: tuple[str, ...]) -> None:
    """``--help`` of the reader and of each command gives every argument a description."""
    result = snapshots_cli(*command, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    entries: dict[str, str] = {}
    section = head = ""
    for line in result.stdout.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif section in ("positional arguments:", "options:") and line.strip():
            if re.match(r"  \S", line):
                head, _, description = line.strip().partition("  ")
                entries[head] = description.strip()
            else:  # a description's next line, or a command listed under COMMAND
                entries[head] = f"{entries[head]} {line.strip()}".strip()
    assert entries, result.stdout
    for head, description in entries.items():
        assert len(description.split()) >= 2, f"{head!r} is not explained: {description!r}"


# Node.snapshot() in-process.


def read_snapshot(store: Path, snapshot_id: int) -> list[Position]:
    reader = SnapshotReader(store)
    try:
        return reader.positions(snapshot_id)
    finally:
        reader.close()


def test_node_snapshot_copies_every_strategy_with_its_time_and_label(nodes: Nodes) -> None:
    """Node.snapshot() returns the new snapshot's id, time, label and size, and the store
    holds a copy of every position the node holds, its own and its peers'."""
    alpha, _ = nodes.start("alpha")
    beta, _ = nodes.start("beta", peers=(alpha.port,))
    alpha.trade("AAPL", 100).result(10)
    beta.trade("MSFT", -2).result(10)
    wait_until(lambda: len(alpha.positions()) == 2, 10, "alpha learns beta's position")
    before = dt.datetime.now().timestamp()
    info = alpha.snapshot("eod 2031-03-14")
    after = dt.datetime.now().timestamp()
    assert (info.id, info.label, info.size) == (1, "eod 2031-03-14", 2)
    assert before <= info.taken_at_ns / 1e9 <= after
    assert read_snapshot(alpha.config.data_dir / "alpha.sqlite3", 1) == alpha.positions()
    assert alpha.snapshot().id == 2  # the default label
    reader = SnapshotReader(alpha.config.data_dir / "alpha.sqlite3")
    try:
        assert [(s.id, s.label) for s in reader.all()] == [(1, "eod 2031-03-14"), (2, "manual")]
    finally:
        reader.close()


def test_a_snapshot_never_splits_a_batch_of_trades(nodes: Nodes) -> None:
    """Snapshots taken while trades are being applied each hold a whole number of batches: a
    burst that moves AAPL and MSFT together is never caught half applied."""
    node, _ = nodes.start("alpha")
    bursts = 200
    infos = []
    for _ in range(bursts):
        # Queued, not awaited: the snapshot races the trade consumer applying the burst.
        node.submit_many([("AAPL", 1.0, None, None), ("MSFT", 1.0, None, None)])
        infos.append(node.snapshot("during"))
    assert node.flush(30)
    infos.append(node.snapshot("after"))
    store = node.config.data_dir / "alpha.sqlite3"
    seen = []
    for info in infos:
        nets = {p.symbol: p.net_position for p in read_snapshot(store, info.id)}
        assert nets.get("AAPL") == nets.get("MSFT"), (info, nets)
        seen.append(nets.get("AAPL", 0.0))
    assert seen == sorted(seen) and seen[-1] == bursts
    print(f"\n{len(infos)} snapshots of {bursts} two-symbol bursts saw {len(set(seen))} states")


# The daily timer.


@pytest.mark.parametrize("text", ["25:00", "12:60", "noon", "", "12:00:00", "-1:00"])
def test_snapshot_at_refuses_what_is_not_a_time_of_day(text: str) -> None:
    """--snapshot-at takes HH:MM (24-hour); anything else exits 2 with one line saying so."""
    result = run_cli("alpha", "0", f"--snapshot-at={text}")
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"invalid time {text!r}: expected HH:MM (24-hour, local time)" in lines[0]


def test_snapshot_at_reaches_the_node_config() -> None:
    """--snapshot-at 17:30 configures a daily snapshot at 17:30; without it, none."""
    config, _ = parse_args(["alpha", "0", "--snapshot-at", "17:30"])
    assert config.snapshot_at == dt.time(17, 30)
    assert parse_args(["alpha", "0"])[0].snapshot_at is None


def test_the_daily_timer_takes_one_eod_snapshot_at_the_time(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose local clock reaches --snapshot-at takes exactly one snapshot of its whole
    view, labelled 'eod' and the date, then waits for the next day (the node module's wall
    clock is shifted to 0.3 s before 17:30 on 2031-03-14; the wait itself is real)."""
    at = dt.time(17, 30)
    shift = dt.datetime.combine(dt.date(2031, 3, 14), at) - dt.datetime.now()
    shift -= dt.timedelta(seconds=0.3)

    class ShiftedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> ShiftedDatetime:
            real = dt.datetime.now(tz) + shift
            return cls.combine(real.date(), real.timetz())

    shifted = types.SimpleNamespace(
        datetime=ShiftedDatetime, date=dt.date, time=dt.time, timedelta=dt.timedelta
    )
    monkeypatch.setattr(node_module, "dt", shifted)
    node, _ = nodes.start("alpha")
    node.trade("AAPL", 5).result(10)
    timed = nodes.restart(node, snapshot_at=at)[0]
    store = timed.config.data_dir / "alpha.sqlite3"

    def taken() -> list[tuple[int, str, int]]:
        reader = SnapshotReader(store)
        try:
            return [(s.id, s.label, s.size) for s in reader.all()]
        finally:
            reader.close()

    view = timed.positions()
    wait_until(taken, 10, "the end-of-day snapshot")
    timed.stop()  # the timer thread ends with the node (checked by no_thread_leak)
    assert taken() == [(1, "eod 2031-03-14", 1)]
    assert read_snapshot(store, 1) == view


class SimulatedDay:
    """A simulated wall clock for the node's daily timer: local time in ``zone``, which
    moves only when the timer waits (once ``go`` is set, its wait returns at once with the
    clock advanced by the time asked). Installed as the node module's ``dt`` and as the
    node's stop event."""

    def __init__(self, zone: str, start: dt.datetime, snapshots: int) -> None:
        self.zone = zoneinfo.ZoneInfo(zone)  # the tzdata package (dev extras) has them all
        self.utc = start.replace(tzinfo=self.zone).astimezone(dt.UTC)
        self.snapshots = snapshots  # after this many, the timer's wait really waits
        self.taken: list[tuple[str, dt.datetime]] = []  # (label, local time asked)
        self.go = threading.Event()  # set once the node runs: the simulated time may pass
        self.stopped = threading.Event()
        clock = self

        class LocalDatetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> LocalDatetime:
                assert tz is None
                local = clock.local()
                return cls.combine(local.date(), local.time())

        self.module = types.SimpleNamespace(
            datetime=LocalDatetime, date=dt.date, time=dt.time, timedelta=dt.timedelta
        )

    def local(self) -> dt.datetime:
        return self.utc.astimezone(self.zone).replace(tzinfo=None)

    # The node's stop event.

    def wait(self, timeout: float | None = None) -> bool:
        self.go.wait(10)
        if self.stopped.is_set() or len(self.taken) >= self.snapshots:
            return self.stopped.wait()
        assert timeout is not None and timeout > 0, timeout
        self.utc += dt.timedelta(seconds=timeout)
        return False

    def set(self) -> None:
        self.stopped.set()
        self.go.set()


def run_daily_timer(
    nodes: Nodes,
    monkeypatch: pytest.MonkeyPatch,
    clock: SimulatedDay,
    at: dt.time,
    *,
    failing: int | None = None,
) -> list[tuple[str, dt.datetime]]:
    """Run a node's daily snapshot timer on ``clock`` until it has asked for its snapshots
    (or its thread ended); the ``failing``-th snapshot (from 0) raises a disk-full error."""
    monkeypatch.setattr(node_module, "dt", clock.module)
    node = Node(replace(nodes.config("alpha"), snapshot_at=at))
    node._stop_timer = clock  # type: ignore[assignment]
    take = node.snapshot

    def recording_snapshot(label: str = "manual") -> SnapshotInfo:
        clock.taken.append((label, clock.local()))
        if len(clock.taken) - 1 == failing:
            raise sqlite3.OperationalError("database or disk is full")
        return take(label)

    node.snapshot = recording_snapshot  # type: ignore[method-assign]
    nodes.started.append(node)
    node.start()
    clock.go.set()
    timer = node._timer
    assert timer is not None
    wait_until(
        lambda: len(clock.taken) >= clock.snapshots or not timer.is_alive(),
        10,
        "the simulated snapshots",
    )
    node.stop()
    return clock.taken


def test_the_daily_timer_takes_one_snapshot_a_day_at_the_time(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a simulated clock started mid-morning, the timer takes one snapshot each day at
    exactly 17:30 local time, labelled with that day's date."""
    clock = SimulatedDay("UTC", dt.datetime(2031, 3, 12, 9, 15), snapshots=4)
    taken = run_daily_timer(nodes, monkeypatch, clock, dt.time(17, 30))
    assert taken == [
        (f"eod 2031-03-{day}", dt.datetime(2031, 3, day, 17, 30)) for day in (12, 13, 14, 15)
    ]


def test_the_daily_timer_keeps_local_time_across_a_daylight_saving_change(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Europe/Paris, where clocks go forward on 2031-03-30, the timer still takes each
    day's snapshot at 17:30 local time."""
    clock = SimulatedDay("Europe/Paris", dt.datetime(2031, 3, 28, 9, 15), snapshots=4)
    taken = run_daily_timer(nodes, monkeypatch, clock, dt.time(17, 30))
    assert taken == [
        (f"eod 2031-03-{day}", dt.datetime(2031, 3, day, 17, 30)) for day in (28, 29, 30, 31)
    ]


def test_a_failed_daily_snapshot_does_not_stop_the_next_ones(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one day's snapshot fails (the disk is full), the timer still takes the next
    days' snapshots."""
    clock = SimulatedDay("UTC", dt.datetime(2031, 3, 12, 9, 15), snapshots=3)
    taken = run_daily_timer(nodes, monkeypatch, clock, dt.time(17, 30), failing=0)
    assert [label for label, _ in taken] == ["eod 2031-03-12", "eod 2031-03-13", "eod 2031-03-14"]
