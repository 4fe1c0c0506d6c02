"""Two nodes with one name, and a node restarted: real processes, every arrangement of dials.

The real node (``strategy_2``, "R") is connected to a third node (``strategy_3``, "T"); then a
second process claims ``strategy_2`` ("D", another port, another store). Whoever dials whom,
T keeps R, refuses D, says so once with both addresses, and never takes D's values. A node
restarted (a new process where the old connection is closed, or silent) takes its place again
without any such line.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from .procs import Cluster, NodeProcess, free_port

R_NAME, T_NAME = "strategy_2", "strategy_3"
SECOND = "two nodes claim strategy strategy_2"

# Who dials whom: (T dials R, T dials D, R dials T, D dials T).
ARRANGEMENTS = {
    "third-dials-both": (True, True, False, False),
    "third-dials-real-duplicate-dials-third": (True, False, False, True),
    "both-dial-third": (False, False, True, True),
    "real-dials-third-third-dials-duplicate": (False, True, True, False),
}


def never(node: NodeProcess, what: str, predicate: object, seconds: float) -> None:
    """Watch ``node``'s output for ``seconds``: ``predicate`` must not come true meanwhile."""
    with pytest.raises(AssertionError, match="timed out"):
        node.wait_until(predicate, seconds, what)  # type: ignore[arg-type]


def printed(node: NodeProcess, *nets: float, start: int = 0) -> bool:
    """Whether ``node`` printed a row of R's AAPL at one of ``nets``."""
    return any(s == R_NAME and sym == "AAPL" and n in nets for s, sym, n, _ in node.rows(start))


# The duplicate's AAPL after its trade of 999: 999, or 1009 if it took R's 10 as its base.
DUPLICATES = (999.0, 1009.0)


@pytest.mark.parametrize("arrangement", list(ARRANGEMENTS))
def test_a_second_node_of_one_name_is_refused_in_every_arrangement(
    cluster: Cluster, arrangement: str
) -> None:
    """The node T already knows keeps its place; the second one is refused and named once in
    an ERROR with both addresses; T never takes its values, before or after it stops."""
    t_dials_r, t_dials_d, r_dials_t, d_dials_t = ARRANGEMENTS[arrangement]
    t_port, d_port = free_port(), free_port()
    r = cluster.add(R_NAME, peers=[t_port] if r_dials_t else [], recovery_timeout=0)
    t_peers: list[int] = []
    if t_dials_r:
        t_peers.append(r.port)
    if t_dials_d:
        t_peers.append(d_port)
    t = cluster.add(T_NAME, t_port, t_peers, recovery_timeout=0)
    r.type("AAPL 10")
    t.wait_for_view({(R_NAME, "AAPL"): 10.0})
    t.sync_stderr()  # every line so far is read: the mark comes after "connected to"
    t_mark = t.mark()

    d = cluster.add("dup", d_port, [t_port] if d_dials_t else [], recovery_timeout=0.5, start=False)
    d.name = R_NAME  # the same strategy name, its own data dir ("dup") and port
    d.start()
    d.type("AAPL 999")
    d.wait_until(lambda n: printed(n, *DUPLICATES), 15, "the duplicate's own row")
    line = t.wait_for_log(SECOND, start=t_mark.err)
    assert "ERROR" in line and f":{r.port}" in line and f":{d_port}" in line, line
    assert "keeps its place" in line, line
    d.wait_for_log("already connected to another node named strategy_2")

    r.type("AAPL 1")
    t.wait_for_view({(R_NAME, "AAPL"): 11.0})
    never(t, "a row of the duplicate's value", lambda n: printed(n, *DUPLICATES), 3.0)
    errors = t.log_lines(SECOND, t_mark.err)
    assert len(errors) == 1, errors
    connected = t.log_lines(f"connected to {R_NAME}", t_mark.err)
    assert not connected, f"T's connection to R changed: {connected}"
    replaced = [line for line in t.errors_since(t_mark.err) if "replaced" in line]
    assert not replaced, replaced

    d.stop()
    r.type("AAPL 1")
    for node in (r, t):
        node.wait_for_view({(R_NAME, "AAPL"): 12.0})
    assert not printed(t, *DUPLICATES)
    assert not [line for line in r.errors_since() if "ERROR" in line], r.errors_since()


@pytest.mark.parametrize("r_dials_t", [True, False], ids=["real-dials", "third-dials"])
def test_a_restarted_node_takes_its_place_again(cluster: Cluster, r_dials_t: bool) -> None:
    """A node killed and started again (a new instance, its old connection closed) is
    connected again at once, with no line about a second node."""
    t_port = free_port()
    r = cluster.add(R_NAME, peers=[t_port] if r_dials_t else [], recovery_timeout=0)
    t = cluster.add(T_NAME, t_port, [] if r_dials_t else [r.port], recovery_timeout=0)
    r.type("AAPL 10")
    t.wait_for_view({(R_NAME, "AAPL"): 10.0})
    t.sync_stderr()
    mark = t.mark()
    r.kill()
    cluster.restart(R_NAME)
    r.type("AAPL 1")
    for node in (r, t):
        node.wait_for_view({(R_NAME, "AAPL"): 11.0})
    t.sync_stderr()
    assert not t.log_lines(SECOND, mark.err)
    assert not [line for line in t.errors_since(mark.err) if "ERROR" in line]


def test_a_node_restarted_while_its_old_connection_is_silent_replaces_it(
    cluster: Cluster,
) -> None:
    """R is frozen (SIGSTOP: its connection to T stays open, silent, like a half-open one)
    and a new R process starts: once the old connection has missed a few heartbeats, the new
    one replaces it (a restart, not a second node), before T's idle timeout closes it."""
    t = cluster.add(T_NAME, recovery_timeout=0)
    # R's heartbeat of 2 s: T counts R's connection alive for 3 of them (6 s), and closes it
    # as silent after 5 of them (10 s).
    r = cluster.add(R_NAME, peers=[t.port], recovery_timeout=0, heartbeat=2.0)
    r.type("AAPL 10")
    t.wait_for_view({(R_NAME, "AAPL"): 10.0})
    t.sync_stderr()
    mark = t.mark()
    r.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        # Past the 6 s R counts as alive, and T says nothing about R meanwhile.
        never(t, "a line about R", lambda n: n.log_lines(R_NAME, mark.err), 6.5)
        r2 = cluster.add("r2", peers=[t.port], recovery_timeout=5, heartbeat=2.0, start=False)
        r2.name = R_NAME
        r2.start()
        r2.type("AAPL 1")
        r2.wait_for_view({(R_NAME, "AAPL"): 11.0})
        t.wait_for_view({(R_NAME, "AAPL"): 11.0})
        line = t.wait_for_log("restarted", start=mark.err)
        assert f"{R_NAME} restarted" in line and "silent" in line, line
        assert time.monotonic() - stopped < 10, "replaced only by the idle timeout"
        assert not t.log_lines(SECOND, mark.err)
        assert not [ln for ln in t.errors_since(mark.err) if re.search("ERROR|WARNING", ln)]
    finally:
        r.kill()
