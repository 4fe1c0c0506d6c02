"""The command line and the console of ``python -m position_distributor``, run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .procs import Cluster, NodeProcess, free_port, parse_row, run_cli, without_root_powers

PROG = "position-distributor"
A, B = "strategy_1", "strategy_2"

# Strict UTF-8 on stdin, as a terminal in en_US.UTF-8 gives (C.UTF-8 would use
# surrogateescape); this machine has no such locale installed, so it is set directly.
STRICT_UTF8 = {"PYTHONIOENCODING": "utf-8"}


def assert_start_refused(result: subprocess.CompletedProcess[str], *, mentions: str = "") -> None:
    """Exit status 2, exactly one line on stderr, ``position-distributor: error: ...``."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}; stderr:\n{result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith(f"{PROG}: error: "), lines[0]
    assert mentions.lower() in lines[0].lower(), f"{mentions!r} not in {lines[0]!r}"
    assert result.stdout == "", f"stdout: {result.stdout!r}"


# Bad command lines.


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        pytest.param(["abc"], "'abc'", id="port-abc"),
        pytest.param(["70000"], "'70000'", id="port-70000"),
        pytest.param(["-1"], "'-1'", id="port-negative"),
        pytest.param(["1_0"], "'1_0'", id="port-underscore"),
        pytest.param(["+80"], "'+80'", id="port-plus"),
        pytest.param(["٣٣"], "'٣٣'", id="port-arabic-indic-digits"),
        pytest.param(["0", "127.0.0.1"], "'127.0.0.1'", id="peer-no-port"),
        pytest.param(["0", "127.0.0.1:"], "'127.0.0.1:'", id="peer-empty-port"),
        pytest.param(["0", ":12345"], "':12345'", id="peer-no-host"),
        pytest.param(["0", "localhost:abc"], "'localhost:abc'", id="peer-port-abc"),
        pytest.param(["0", "localhost:0"], "'localhost:0'", id="peer-port-0"),
        pytest.param(["0", "localhost:70000"], "'localhost:70000'", id="peer-port-70000"),
        pytest.param(["0", ""], "''", id="peer-empty"),
        pytest.param(["0", "127.0.0.1:12_345"], "12_345", id="peer-port-underscore"),
        pytest.param(["0", "127.0.0.1: 80"], "'127.0.0.1: 80'", id="peer-port-space"),
        pytest.param(["0", "--heartbeat", "0"], "--heartbeat", id="heartbeat-0"),
        pytest.param(["0", "--recovery-timeout", "soon"], "'soon'", id="recovery-timeout-word"),
        pytest.param(["0", "--log-level", "LOUD"], "LOUD", id="log-level"),
        pytest.param(["0", "--no-such-option"], "--no-such-option", id="unknown-option"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], mentions: str) -> None:
    """A bad port, peer address or option exits 2 with one line naming the bad value."""
    result = run_cli(A, *args, "--data-dir", str(tmp_path))
    assert_start_refused(result, mentions=mentions)


@pytest.mark.parametrize("name", ["bad/name", "", "x" * 65, "two words", "tab\there", "é"])
def test_bad_strategy_name_is_refused(tmp_path: Path, name: str) -> None:
    """A strategy name outside [A-Za-z0-9._-]{1,64} exits 2 with one line."""
    assert_start_refused(run_cli(name, "0", "--data-dir", str(tmp_path)), mentions="strategy")


# Root writes anywhere: drop its override so that a directory's mode binds it too.
AS_USER: Callable[[], None] | None = without_root_powers if os.geteuid() == 0 else None


def _read_only_dir(tmp_path: Path) -> Path:
    path = tmp_path / "read-only"
    path.mkdir(mode=0o500)
    return path


def _under_read_only_dir(tmp_path: Path) -> Path:
    return _read_only_dir(tmp_path) / "data"


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "file"
    path.write_text("not a directory")
    return path


def _under_a_file(tmp_path: Path) -> Path:
    return _a_file(tmp_path) / "data"


def _store_is_a_directory(tmp_path: Path) -> Path:
    (tmp_path / "data" / f"{A}.sqlite3").mkdir(parents=True)
    return tmp_path / "data"


def _store_is_garbage(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / f"{A}.sqlite3").write_bytes(bytes(range(256)) * 32)
    return tmp_path / "data"


@pytest.mark.parametrize(
    "make_dir",
    [
        _read_only_dir,
        _under_read_only_dir,
        _a_file,
        _under_a_file,
        _store_is_a_directory,
        _store_is_garbage,
    ],
)
def test_unusable_data_dir_is_refused(tmp_path: Path, make_dir: Callable[[Path], Path]) -> None:
    """A data dir that cannot hold the store exits 2 with one line naming it."""
    data_dir = make_dir(tmp_path)
    result = run_cli(A, "0", "--data-dir", str(data_dir), preexec_fn=AS_USER)
    assert_start_refused(result, mentions=str(data_dir))


def test_read_only_store_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """A store file the node cannot write exits 2 at start instead of failing its first trade."""
    node = cluster.add(A, recovery_timeout=0)
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 1.0})
    assert node.stop() == 0
    (node.data_dir / f"{A}.sqlite3").chmod(0o444)
    result = run_cli(A, "0", "--data-dir", str(node.data_dir), input="AAPL 1\n", preexec_fn=AS_USER)
    assert_start_refused(result, mentions="store")


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    """A listen port already in use exits 2 with one line naming the port."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli(A, str(port), "--data-dir", str(tmp_path))
    assert_start_refused(result, mentions=str(port))


def test_second_node_with_the_same_name_and_data_dir_is_refused(cluster: Cluster) -> None:
    """A second node of one strategy on one data dir exits 2; the first goes on trading."""
    first = cluster.add(A, recovery_timeout=0)
    first.wait_for_log("listening")
    result = run_cli(A, str(free_port()), "--data-dir", str(first.data_dir))
    assert_start_refused(result, mentions="already running")
    first.type("AAPL 5")
    first.wait_for_view({(A, "AAPL"): 5.0})


def test_help_explains_every_option() -> None:
    """``--help`` exits 0 and gives every argument and option a description."""
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    entries: dict[str, str] = {}
    section = ""
    current = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line
            current = ""
            continue
        if not section.endswith(":") or section.startswith(("usage", "example")):
            continue  # the argument sections: positional arguments, options, option groups
        if re.match(r"  (-|[A-Z][A-Z:]*(\s|$))", line):
            head, _, description = line.strip().partition("  ")
            current = head
            entries[current] = description.strip()
        elif current and line.strip():
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    usage = " ".join(text.split("\n\n")[0].split())
    options = set(re.findall(r"\[(--[a-z-]+)", usage))
    expected = {
        "--data-dir",
        "--bind",
        "--log-level",
        "--no-console",
        "--recovery-timeout",
        "--heartbeat",
    }
    assert expected <= options, f"missing from usage: {expected - options}"
    explained = {head.split(",")[-1].split()[0].strip() for head in entries}
    assert options <= explained, f"options without an entry: {options - explained}"
    for positional in ("NAME", "PORT", "HOST:PORT"):
        assert positional in explained, f"{positional} not explained"
    for head, description in entries.items():
        assert len(description.split()) >= 3, f"{head!r} is not explained: {description!r}"
    assert "exit status" in text and "example" in text.lower()


def test_help_wraps_its_text_and_groups_the_limits() -> None:
    """At 80 columns every ``--help`` line fits (the security text included), and the
    timeouts and limits have a group of their own."""
    result = subprocess.run(
        [sys.executable, "-m", "position_distributor", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        env=dict(os.environ, COLUMNS="80"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    sections: dict[str, list[str]] = {}
    for line in lines:
        if line and not line.startswith(" "):
            current = sections.setdefault(line, [])
        elif line.startswith("  -"):
            current.append(line.split()[0])
    assert "Without --secret-file or TLS" in result.stdout.split("security:")[1].split("\n\n")[0]
    assert sections["timeouts and limits:"] == [
        "--heartbeat",
        "--hello-timeout",
        "--max-frame-size",
        "--max-connections",
        "--max-symbols",
    ]


# The console of a running node.

BAD_LINES = [
    "AAPL",
    "AAPL abc",
    "AAPL 1 2 3",
    "AAPL 1 $ID",
    "positions 5",
    "exit 1",
    "AAPL \uff11\uff10\uff10",
    "AAPL\u00a0100",
    "AAPL nan",
    "AAPL inf",
    "AAPL -inf",
    "AAPL 1e999",
    "MSFT 10abc",
    "AAPL 0x10",
    "AAPL 0",
    "AAPL\x01 5",
    "\x1b[A",
    "AAPL 5\x00",
    "A" * 33 + " 5",
    "AA$PL 5",
    "ÄPL 5",
    "buy AAPL 5",
]


READY = {(A, "READY"): 1.0}


@pytest.fixture
def node(cluster: Cluster) -> NodeProcess:
    """A lone node with a new store, past its recovery window: a first trade has applied."""
    lone = cluster.add(A, recovery_timeout=0)
    lone.type("READY 1")
    lone.wait_for_view(READY)
    return lone


def test_bad_console_input_prints_one_error_and_goes_on(node: NodeProcess) -> None:
    """Each bad console line prints one ``error:`` line saying what is expected; nothing
    is applied, blank lines are ignored, and a valid trade after them applies."""
    mark = node.mark()
    node.type(*BAD_LINES, "", "   ", "\t", "AAPL 5", "7203 -2.5")
    node.wait_for_view({**READY, (A, "AAPL"): 5.0, (A, "7203"): -2.5})
    printed = node.rows(mark.out)
    assert [(s, sym, net) for s, sym, net, _ in printed] == [(A, "AAPL", 5.0), (A, "7203", -2.5)]
    end = node.sync_stderr()
    errors = [e for e in node.errors_since(mark.err)[: end - mark.err] if e.startswith("error: ")]
    assert len(errors) == len(BAD_LINES), "".join(errors)
    for bad, error in zip(BAD_LINES, errors, strict=True):
        assert "expected" in error, f"{bad!r}: {error!r} does not say what is expected"
    assert "Traceback" not in "".join(node.errors_since(mark.err))
    assert node.alive


def test_undecodable_console_bytes_print_an_error(cluster: Cluster) -> None:
    """Bytes that are not UTF-8 on stdin print one ``error:`` line and the node goes on."""
    node = cluster.add(A, recovery_timeout=0, env=STRICT_UTF8)
    node.wait_for_log("listening")
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 1.0})
    mark = node.mark()
    node.type_bytes(b"AAPL \xff\xfe1\n")
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 2.0})
    end = node.sync_stderr()
    errors = [e for e in node.errors_since(mark.err)[: end - mark.err] if e.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "".join(node.errors), errors


def test_overflowing_trade_is_refused_and_the_node_goes_on(node: NodeProcess) -> None:
    """A trade whose result would not be finite is refused with a log line, nothing else."""
    mark = node.mark()
    node.type("AAPL 1e308")
    node.wait_for_view({**READY, (A, "AAPL"): 1e308})
    node.type("AAPL 1e308", "MSFT 1")
    node.wait_for_view({**READY, (A, "AAPL"): 1e308, (A, "MSFT"): 1.0})
    assert len(node.rows(mark.out)) == 2
    node.wait_for_log("overflow", start=mark.err)


def test_positions_exposure_peers_and_help(cluster: Cluster) -> None:
    """``positions`` prints its header, every row sorted, a blank line; ``exposure`` sums
    per symbol; ``peers`` shows the connected peer; ``help`` lists every command."""
    a = cluster.add(A, recovery_timeout=0.3)
    b = cluster.add(B, peers=[a.port], recovery_timeout=0.3)
    a.type("MSFT 5", "AAPL 10", "7203 1")
    b.type("AAPL -4", "BTC 0.5")
    expected = {
        (A, "MSFT"): 5.0,
        (A, "AAPL"): 10.0,
        (A, "7203"): 1.0,
        (B, "AAPL"): -4.0,
        (B, "BTC"): 0.5,
    }
    cluster.wait_for_view(expected, [a, b])

    rows = a.command_output("positions", "Current positions")
    parsed = [parse_row(row) for row in rows]
    assert all(parsed), rows
    keys = [(row[0], row[1]) for row in parsed if row]
    assert keys == sorted(expected), f"not sorted by strategy then symbol: {keys}"
    assert {(r[0], r[1]): (r[2], r[3]) for r in parsed if r} == a.snapshot()
    assert b.command_output("positions", "Current positions") == rows

    exposure = a.command_output("exposure", "Exposure")
    sums = {symbol: float(net) for symbol, net in (line.split(" | ") for line in exposure)}
    assert sums == {"7203": 1.0, "AAPL": 6.0, "BTC": 0.5, "MSFT": 5.0}, exposure

    for node, other in ((a, b), (b, a)):
        peers = node.command_output("peers", "Peers")
        assert any(
            line.startswith(f"{other.name} | 127.0.0.1:{other.port} | connected") for line in peers
        ), peers

    start = a.mark().out
    a.type("help")
    a.wait_for_output("quit", start=start)
    text = "".join(a.lines[start:])
    for command in ("SYMBOL QTY", "positions", "exposure", "peers", "help", "exit", "quit"):
        assert command in text, f"help does not mention {command!r}"


def test_peers_lists_a_connected_peer_once(cluster: Cluster) -> None:
    """``peers`` on a node that dialled its peer shows one line for it: name, address,
    connected, last heard."""
    a = cluster.add(A, recovery_timeout=0.3)
    b = cluster.add(B, peers=[a.port], recovery_timeout=0.3)
    b.type("MSFT 1")
    a.wait_for_view({(B, "MSFT"): 1.0})
    peers = b.command_output("peers", "Peers")
    assert len(peers) == 1, peers
    name, address, state, heard = peers[0].split(" | ")
    assert (name, address) == (A, f"127.0.0.1:{a.port}") and state.startswith("connected"), peers
    assert re.fullmatch(r"\d+\.\ds ago", heard), peers


@pytest.mark.parametrize("how", ["exit", "quit", "EOF", "SIGINT", "SIGTERM"])
def test_stop_is_graceful(node: NodeProcess, how: str) -> None:
    """``exit``, ``quit``, end of input, SIGINT and SIGTERM stop the node with status 0,
    after applying the trades typed before."""
    if how in ("SIGINT", "SIGTERM"):
        node.type("AAPL 7")
        node.wait_for_view({**READY, (A, "AAPL"): 7.0})  # the console is reading: signal it
        node.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
    elif how == "EOF":
        node.type("AAPL 7")
        assert node.proc is not None and node.proc.stdin is not None
        node.proc.stdin.close()
    else:
        node.type("AAPL 7", how, "AAPL 1000")
    assert node.wait_for_exit() == 0, "".join(node.errors)
    assert node.nets() == {**READY, (A, "AAPL"): 7.0}, "a trade typed before the stop was lost"
    log = "".join(node.errors)
    assert "Traceback" not in log and f"{A} stopped" in log, log


def test_no_console_node_ignores_stdin_and_stops_on_sigterm(cluster: Cluster) -> None:
    """With ``--no-console`` stdin is not read (EOF does not stop it); SIGTERM stops it with 0."""
    node = cluster.add(A, recovery_timeout=0, args=["--no-console"])
    node.wait_for_log("listening")
    node.type("AAPL 7")
    assert node.proc is not None and node.proc.stdin is not None
    node.proc.stdin.close()
    peer = cluster.add(B, peers=[node.port], recovery_timeout=0)
    peer.type("MSFT 1")
    node.wait_for_view({(B, "MSFT"): 1.0})  # still running, and nothing typed was applied
    node.send_signal(signal.SIGTERM)
    assert node.wait_for_exit() == 0
    assert "Traceback" not in "".join(node.errors)


def test_stored_view_is_printed_at_start(cluster: Cluster) -> None:
    """A restarted node prints its whole stored view (its own and its peers' positions) at
    once, before any peer is connected."""
    a = cluster.add(A, recovery_timeout=0.3)
    b = cluster.add(B, peers=[a.port], recovery_timeout=0.3)
    a.type("AAPL 100", "BTC 500")
    b.type("AAPL 100")
    expected = {(A, "AAPL"): 100.0, (A, "BTC"): 500.0, (B, "AAPL"): 100.0}
    cluster.wait_for_view(expected, [a, b])
    view = a.snapshot()
    assert b.stop() == 0 and a.stop() == 0
    cluster.restart(A)
    a.wait_for_rows(view)
    assert len(a.rows()) == len(view)


# The first start of a new cluster.

LEVELS = re.compile(r"^\S+ \S+ \| (\w+)\s*\|")


def warnings_and_errors(node: NodeProcess) -> list[str]:
    """The stderr lines of ``node`` logged at WARNING or above."""
    return [
        line
        for line in node.errors
        if (found := LEVELS.match(line)) and found[1] in ("WARNING", "ERROR", "CRITICAL")
    ]


def test_the_first_start_of_a_new_cluster_is_calm(cluster: Cluster) -> None:
    """Two brand-new nodes, the first with no peer and the second dialling it, start and
    trade with no WARNING or ERROR, and their recovery lines say what happened."""
    # A window long enough for the second to start on a loaded machine: it is closed by
    # the second's sync (asserted below), not by its end.
    first = cluster.add(A, recovery_timeout=30)
    first.wait_for_log("holding trades until the first peer to connect has sent")
    second = cluster.add(B, peers=[first.port], recovery_timeout=5)
    first.type("AAPL 100")
    second.type("MSFT -50")
    cluster.wait_for_view({(A, "AAPL"): 100.0, (B, "MSFT"): -50.0}, [first, second])
    first_done = first.wait_for_log("recovery done")
    second_done = second.wait_for_log("recovery done")
    for node in (first, second):
        node.sync_stderr()  # every line logged so far has been read
        assert warnings_and_errors(node) == [], node.describe()
        assert any("INFO" in line and "no --secret-file or TLS" in line for line in node.errors)
    assert second.stop() == 0 and first.stop() == 0

    assert "INFO" in first_done and "synced with strategy_2; 0 own position(s)" in first_done
    assert "INFO" in second_done and "synced with strategy_1; 0 own position(s)" in second_done


def test_a_lone_first_node_says_no_peer_is_configured_when_its_window_ends(
    cluster: Cluster,
) -> None:
    """A new node with no peers whose window ends with nobody connected says, at INFO, that
    it starts as the first node of a new cluster."""
    node = cluster.add(A, recovery_timeout=0.3)
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 1.0})
    line = node.wait_for_log("recovery timeout")
    assert node.stop() == 0

    assert "INFO" in line
    assert "after 0.3s: no peer synced; starting with 0 own position(s)" in line
    assert "the first node of a new cluster" in line
    assert warnings_and_errors(node) == [], node.describe()


def test_a_recovery_timeout_of_0_applies_at_once_and_says_so_calmly(cluster: Cluster) -> None:
    """``--recovery-timeout 0`` on a new store holds nothing, says so at INFO, warns of nothing."""
    node = cluster.add(A, peers=[free_port()], recovery_timeout=0)  # a peer that never answers
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 1.0})
    line = node.wait_for_log("--recovery-timeout 0")
    assert node.stop() == 0

    assert "INFO" in line and "applying trades at once, without waiting for peers" in line
    assert node.log_lines("holding trades") == []
    assert warnings_and_errors(node) == [], node.describe()


def test_a_node_whose_configured_peer_never_syncs_warns_at_the_timeout(cluster: Cluster) -> None:
    """A new node whose configured peer never answers warns when its window times out."""
    node = cluster.add(A, peers=[free_port()], recovery_timeout=0.3)
    line = node.wait_for_log("recovery timeout")
    assert node.stop() == 0

    assert "WARNING" in line and "no peer synced; starting with 0 own position(s)" in line


def test_a_recover_start_says_the_store_holds_positions_it_is_to_recover(
    cluster: Cluster,
) -> None:
    """Restarted with ``--recover``, a node whose store holds its positions says so, not that
    its store is new, when it opens the recovery window."""
    node = cluster.add(A, recovery_timeout=0)
    node.type("AAPL 1", "MSFT 2")
    node.wait_for_view({(A, "AAPL"): 1.0, (A, "MSFT"): 2.0})
    assert node.stop() == 0
    node.extra_args = ["--recover"]
    node.recovery_timeout = 0.3
    cluster.restart(A)
    line = node.wait_for_log("holding trades until")
    ended = node.wait_for_log("recovery timeout")
    assert node.stop() == 0

    assert "store holds 2 own position(s) and is to recover (--recover)" in line
    assert "store is new" not in line
    assert "INFO" in line and "starting with 2 own position(s)" in ended
