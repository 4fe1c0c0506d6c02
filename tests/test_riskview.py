"""Tests of the risk view's HTTP side: the API, /metrics, /healthz, tokens, limits, bad input and
slow readers, against real node processes (and in-process nodes where a test must reach in)."""

from __future__ import annotations

import csv
import io
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from position_distributor.node import Config, Node, NodeError
from position_distributor.riskview import HttpSettings

from .certs import openssl
from .procs import Cluster, free_port, run_cli
from .riskview_support import http_url, request, start_view_node
from .waiting import wait_until


def _metrics(url: str, headers: dict[str, str] | None = None) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed with prometheus_client's parser: name -> {labels: value}."""
    reply = request(url + "/metrics", headers=headers)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_the_api_shows_every_position_with_filters_and_string_timestamps(
    cluster: Cluster,
) -> None:
    """/api/positions lists both nodes' positions as printed (timestamps as strings), filters by
    strategy and symbol; the CSV says the same; /api/exposure and /api/peers have their shapes."""
    desk = start_view_node(cluster, "desk")
    trader = cluster.add("strategy_1", peers=[desk.port])
    trader.type("AAPL 100", "MSFT -25.5", "AAPL 20")
    desk.wait_for_view({("strategy_1", "AAPL"): 120.0, ("strategy_1", "MSFT"): -25.5})
    url = http_url(desk)
    view = desk.snapshot()

    def positions() -> list[dict[str, object]]:
        return request(url + "/api/positions").json()  # type: ignore[no-any-return]

    wait_until(lambda: len(positions()) == 2, what="the view's mirror to catch up")
    body = positions()
    assert body == [
        {
            "strategy": strategy,
            "symbol": symbol,
            "net_position": net,
            "timestamp": str(ts),
        }
        for (strategy, symbol), (net, ts) in sorted(view.items())
    ]
    only = request(url + "/api/positions?symbol=MSFT").json()
    assert [p["symbol"] for p in only] == ["MSFT"]
    assert request(url + "/api/positions?strategy=nobody").json() == []
    assert request(url + "/api/positions?symbol=AA$PL").status == 400
    table = list(csv.reader(io.StringIO(request(url + "/api/positions.csv").body.decode())))
    assert table[0] == ["strategy", "symbol", "net_position", "timestamp"]
    assert [(r[0], r[1], float(r[2]), int(r[3])) for r in table[1:]] == [
        (s, y, net, ts) for (s, y), (net, ts) in sorted(view.items())
    ]
    assert request(url + "/api/exposure").json() == {
        "AAPL": {"net": 120.0, "limit": None, "breach": False},
        "MSFT": {"net": -25.5, "limit": None, "breach": False},
    }
    peers = request(url + "/api/peers").json()
    assert [(p["name"], p["connected"], p["stale_since"]) for p in peers] == [
        ("strategy_1", True, None)
    ]
    assert set(peers[0]) == {"name", "address", "state", "connected", "last_heard", "stale_since"}


def test_metrics_parse_and_count_trades_peers_and_latency(cluster: Cluster) -> None:
    """/metrics parses with prometheus_client's parser: own trades counted (a peer's are not),
    peers connected, changes by source, the arrival-to-commit histogram."""
    trader = start_view_node(cluster, "strategy_1")
    other = cluster.add("strategy_2", peers=[trader.port])
    trader.type("AAPL 1", "AAPL 2", "MSFT 3")
    other.type("AAPL 5")
    trader.wait_for_view(
        {
            ("strategy_1", "AAPL"): 3.0,
            ("strategy_1", "MSFT"): 3.0,
            ("strategy_2", "AAPL"): 5.0,
        }
    )
    url = http_url(trader)
    metrics = wait_until(
        lambda: (m := _metrics(url))["pd_positions"][()] == 3 and m, what="positions mirrored"
    )
    assert metrics["pd_trades_total"][()] == 3
    assert metrics["pd_peers_connected"][()] == 1
    assert metrics["pd_changes_applied_total"][(("source", "own"),)] == 3
    assert metrics["pd_changes_applied_total"][(("source", "peer"),)] == 1
    assert metrics["pd_trade_commit_seconds_count"][()] == 3
    assert metrics["pd_trade_commit_seconds_bucket"][(("le", "+Inf"),)] == 3
    assert metrics["pd_trades_refused_total"][()] == 0
    assert metrics["pd_recovering"][()] == 0
    assert metrics["pd_node_info"][(("strategy", "strategy_1"),)] == 1
    assert metrics["pd_strategies"][()] == 2


def test_healthz_is_503_while_recovering_then_200_and_lists_links(cluster: Cluster) -> None:
    """A node with a new store waiting for an absent peer answers 503 "recovering"; once the
    window is over, 200 "ok", and the body lists the down link (which does not make it
    unhealthy)."""
    absent = free_port()
    node = cluster.add(
        "strategy_1",
        peers=[absent],
        args=["--http", "127.0.0.1:0"],
        recovery_timeout=3.0,
    )
    url = http_url(node)
    reply = wait_until(
        lambda: (r := request(url + "/healthz")).json()["status"] != "starting" and r
    )
    assert reply.status == 503
    assert reply.json()["status"] == "recovering"
    node.wait_for_log("recovery timeout")
    reply = wait_until(lambda: (r := request(url + "/healthz")).status == 200 and r)
    body = reply.json()
    assert body["status"] == "ok"
    assert body["node"] == "strategy_1"
    assert [link["address"] for link in body["links"]] == [f"127.0.0.1:{absent}"]
    assert not body["links"][0]["state"].startswith("connected")


def test_an_unprotected_non_loopback_http_is_refused() -> None:
    """--http on a non-loopback address without a token file exits 2 with an error naming
    --http; --http-token-file without --http is refused too."""
    result = run_cli("s1", "0", "--http", "0.0.0.0:0")
    assert result.returncode == 2
    assert "--http 0.0.0.0:0" in result.stderr and "--http-token-file" in result.stderr
    assert result.stderr.count("\n") == 1
    result = run_cli("s1", "0", "--http-token-file", "t")
    assert result.returncode == 2 and "need --http" in result.stderr


def test_a_busy_http_port_is_one_clear_error(tmp_path: Path) -> None:
    """A port in use gives exit 2 and one line naming --http and the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "s1", "0", "--http", f"127.0.0.1:{port}", "--data-dir", str(tmp_path), input=""
        )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines == [
        f"position-distributor: error: cannot serve --http 127.0.0.1:{port}: Address already in use"
    ]


def _token_file(tmp_path: Path, token: str = "correct-horse-battery-staple") -> Path:
    path = tmp_path / "http-token"
    path.write_text(f"{token}\n")
    path.chmod(0o600)
    return path


def test_tokens_are_required_accepted_and_refused(cluster: Cluster, tmp_path: Path) -> None:
    """With a token file every path asks for the token: none or a wrong one gets 401, the right
    bearer token gets 200; a browser gets the login form, whose cookie then works."""
    token = "correct-horse-battery-staple"
    node = start_view_node(
        cluster, "strategy_1", args=("--http-token-file", str(_token_file(tmp_path, token)))
    )
    url = http_url(node)
    for path in ("/api/positions", "/metrics", "/healthz", "/events", "/api/peers"):
        reply = request(url + path)
        assert reply.status == 401, path
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert request(url + "/api/positions", headers={"Authorization": "Bearer nope"}).status == 401
    good = {"Authorization": f"Bearer {token}"}
    assert request(url + "/api/positions", headers=good).status == 200
    assert "pd_trades_total" in _metrics(url, good)
    form = request(url + "/", headers={"Accept": "text/html"})
    assert form.status == 401 and b'<form method="post" action="/login">' in form.body
    wrong = request(
        url + "/login",
        method="POST",
        body=b"token=guess",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert wrong.status == 401 and b"not accepted" in wrong.body
    login = request(
        url + "/login",
        method="POST",
        body=f"token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status == 303
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert token not in cookie
    session = cookie.split(";")[0]
    assert request(url + "/api/positions", headers={"Cookie": session}).status == 200
    assert request(url + "/api/positions", headers={"Cookie": "pd_session=forged"}).status == 401


def test_a_token_over_plain_http_on_a_public_address_warns(tmp_path: Path) -> None:
    """--http on a non-loopback address with a token but no TLS starts with a WARNING; without
    a token, --insecure lets it start."""
    token = _token_file(tmp_path)
    result = run_cli(
        "s1",
        "0",
        "--http",
        "0.0.0.0:0",
        "--http-token-file",
        str(token),
        "--data-dir",
        str(tmp_path / "a"),
        input="exit\n",
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "plain HTTP" in result.stderr
    result = run_cli(
        "s1", "0", "--http", "0.0.0.0:0", "--insecure", "--data-dir", str(tmp_path / "b"), input=""
    )
    assert result.returncode == 0, result.stderr


def test_https_with_its_own_certificate(cluster: Cluster, tmp_path: Path) -> None:
    """--http-tls-cert and --http-tls-key serve HTTPS that a client trusting the certificate
    reads; the page's cookie is then marked Secure."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        cwd=tmp_path,
    )
    token = "correct-horse-battery-staple"
    node = start_view_node(
        cluster,
        "strategy_1",
        args=(
            "--http-tls-cert",
            str(tmp_path / "cert.pem"),
            "--http-tls-key",
            str(tmp_path / "key.pem"),
            "--http-token-file",
            str(_token_file(tmp_path, token)),
        ),
    )
    url = http_url(node)
    assert url.startswith("https://")
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    reply = request(
        url + "/api/positions", headers={"Authorization": f"Bearer {token}"}, context=context
    )
    assert reply.status == 200 and reply.json() == []
    login = request(
        url + "/login",
        method="POST",
        body=f"token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        context=context,
    )
    assert "Secure" in login.headers["Set-Cookie"]
    with pytest.raises(ssl.SSLError):
        request(url + "/healthz")  # no trust in the certificate: refused
    assert not node.log_lines("plain HTTP")


def _raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the server; everything it answers until it closes (or times out)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_malformed_and_oversized_requests_get_4xx_and_the_node_goes_on(cluster: Cluster) -> None:
    """Garbage, an over-long request line, too large a header or body, and a write method get a
    4xx each; the node keeps serving and trading."""
    node = start_view_node(cluster, "strategy_1")
    url = http_url(node)
    assert _raw(url, b"\x16\x03\x01garbage\r\n\r\n")[8:12] == b" 400"
    assert _raw(url, b"NOT HTTP AT ALL\r\n\r\n")[8:12] == b" 400"
    long_line = _raw(url, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long_line[8:12] in (b" 400", b" 414")
    huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
    assert _raw(url, huge_header)[8:12] in (b" 400", b" 431")
    big_body = request(
        url + "/login",
        method="POST",
        body=b"token=" + b"x" * 100_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big_body.status in (302, 413)  # no token file: login just redirects
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert request(url + "/api/positions", method=method, body=b"{}").status == 405
    assert request(url + "/nothing-here").status == 404
    assert request(url + "/static/../node.py").status == 404
    node.type("AAPL 5")
    node.wait_for_view({("strategy_1", "AAPL"): 5.0})
    assert request(url + "/healthz").status == 200
    assert node.alive


def test_limits_alert_in_logs_api_metrics_and_console_and_sighup_reloads(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A breach logs a WARNING, shows in /api/exposure, the metrics and the limits command, and
    the trade still applies; SIGHUP with a bad file keeps the old limits (ERROR naming the
    line); SIGHUP with a good one applies it (back under: INFO)."""
    limits = tmp_path / "limits.csv"
    limits.write_text("symbol,limit\nAAPL,100\n*,1000\n")
    desk = start_view_node(cluster, "desk", args=("--limits", str(limits)))
    trader = cluster.add("strategy_1", peers=[desk.port])
    trader.type("AAPL 150", "MSFT 10")
    desk.wait_for_view({("strategy_1", "AAPL"): 150.0, ("strategy_1", "MSFT"): 10.0})
    warning = desk.wait_for_log("limit breach")
    assert "WARNING" in warning and "AAPL exposure 150.000000 is above its limit 100" in warning
    url = http_url(desk)
    exposure = wait_until(
        lambda: (e := request(url + "/api/exposure").json()).get("MSFT") and e,
        what="the exposure of both symbols",
    )
    assert exposure == {
        "AAPL": {"net": 150.0, "limit": 100.0, "breach": True},
        "MSFT": {"net": 10.0, "limit": 1000.0, "breach": False},
    }
    metrics = _metrics(url)
    assert metrics["pd_limit_breaches"][()] == 1
    assert metrics["pd_limit_breach_crossings_total"][()] == 1
    assert desk.command_output("limits", "Limits") == [
        "AAPL | 150.000000 | 100.000000 | BREACH",
        "MSFT | 10.000000 | 1000.000000",
        "* | - | 1000.000000",
    ]
    limits.write_text("AAPL,200\nMSFT,oops\n")
    mark = desk.mark()
    desk.send_signal(signal.SIGHUP)
    error = desk.wait_for_log("limits in force stay", start=mark.err)
    assert "ERROR" in error and "line 2" in error and "oops" in error
    assert request(url + "/api/exposure").json()["AAPL"]["breach"] is True
    limits.write_text("AAPL,200\n")
    desk.send_signal(signal.SIGHUP)
    back = desk.wait_for_log("limit ok: AAPL", start=mark.err)
    assert "INFO" in back
    desk.wait_for_log("limits reloaded", start=mark.err)
    assert request(url + "/api/exposure").json() == {
        "AAPL": {"net": 150.0, "limit": 200.0, "breach": False},
        "MSFT": {"net": 10.0, "limit": None, "breach": False},
    }


def test_a_bad_limits_file_at_start_exits_2_naming_the_line(tmp_path: Path) -> None:
    """A limits file with a bad line stops the start with one error naming file and line."""
    limits = tmp_path / "limits.csv"
    limits.write_text("AAPL,100\nMSFT,-1\n")
    result = run_cli("s1", "0", "--limits", str(limits), "--data-dir", str(tmp_path), input="")
    assert result.returncode == 2
    assert result.stderr == (
        f"position-distributor: error: limits file {limits} line 2:"
        " invalid limit '-1': expected a number >= 0\n"
    )


# In-process nodes: where a test needs to reach the server's streams.


def _view_node(tmp_path: Path, name: str = "alpha") -> Node:
    config = Config(
        name, data_dir=tmp_path / name, recovery_timeout=0, http=HttpSettings("127.0.0.1", 0)
    )
    return Node(config).start()


class _SseReader:
    """A raw HTTP client of /events that reads only when told to (a slow browser): it undoes
    the chunked transfer encoding and splits events as it reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        self._raw = bytearray()
        self._head_done = False
        self._body = bytearray()
        self.events: list[tuple[str, str]] = []

    def _feed(self, chunk: bytes) -> None:
        self._raw += chunk
        if not self._head_done:
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            del self._raw[: end + 4]
            self._head_done = True
        while True:  # chunked transfer encoding: SIZE CRLF DATA CRLF
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._raw[:line_end], 16)
            if len(self._raw) < line_end + 2 + size + 2:
                break
            self._body += self._raw[line_end + 2 : line_end + 2 + size]
            del self._raw[: line_end + 2 + size + 2]
        while (end := self._body.find(b"\n\n")) >= 0:
            block = bytes(self._body[:end]).decode()
            del self._body[: end + 2]
            lines = block.split("\n")
            name = next((line[7:] for line in lines if line.startswith("event: ")), "")
            data = next((line[6:] for line in lines if line.startswith("data: ")), "")
            if name:
                self.events.append((name, data))

    def read_until(
        self, predicate: Callable[[list[tuple[str, str]]], object], timeout: float = 20.0
    ) -> object:
        deadline = time.monotonic() + timeout
        while not (result := predicate(self.events)):
            left = deadline - time.monotonic()
            assert left > 0, f"stream never showed it: {[n for n, _ in self.events][-10:]}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the stream closed"
            self._feed(chunk)
        return result

    def close(self) -> None:
        self.sock.close()


def test_a_stalled_reader_never_slows_the_node_and_is_resynced(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """A stream that reads nothing while 30,000 changes apply does not slow the trades; once it
    reads again it is sent a fresh snapshot with every position, not a backlog."""
    node = _view_node(tmp_path)
    try:
        view = node.risk_view
        assert view is not None
        view.hub.max_pending = 500  # streams opened from now on fall behind sooner
        reader = _SseReader(node.http_port)
        reader.read_until(lambda events: any(n == "snapshot" for n, _ in events))
        started = time.monotonic()
        for start in range(0, 30_000, 1000):
            node.submit_many([(f"S{i}", 1.0, None, None) for i in range(start, start + 1000)])
        assert node.flush(timeout=60)
        took = time.monotonic() - started
        wait_until(lambda: len(view.hub.mirror) == 30_000, timeout=30, what="the mirror")
        stream = next(iter(view.hub.streams))
        assert stream.resyncs >= 1

        seen: dict[tuple[str, str], float] = {}
        done = [0]  # events applied to ``seen``
        snapshots = [0]

        def complete(events: list[tuple[str, str]]) -> bool:
            """Apply new events as the page does: a snapshot replaces, changes merge."""
            for name, data in events[done[0] :]:
                if name == "snapshot":
                    seen.clear()
                    snapshots[0] += 1
                if name in ("snapshot", "changes"):
                    for strategy, symbol, net, _ in json.loads(data)["positions"]:
                        seen[(strategy, symbol)] = net
            done[0] = len(events)
            return len(seen) == 30_000

        reader.read_until(complete, timeout=60)
        assert snapshots[0] >= 2  # the first, and at least one resync instead of a backlog
        reader.close()
        assert took < 30, f"30,000 trades took {took:.1f}s beside a stalled stream"
    finally:
        node.stop()


def test_without_a_live_stream_trades_never_wake_the_view_yet_the_api_is_exact(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """With --http and no page open, 300 trades wake the view's loop not once; the API and
    /metrics read afterwards show every one of them (the view catches up when it is read)."""
    node = _view_node(tmp_path)
    try:
        view = node.risk_view
        assert view is not None
        for i in range(300):
            node.trade(f"S{i % 30}", 1.0).result(10)
        assert view.hub.wakeups == 0
        url = f"http://127.0.0.1:{node.http_port}"
        body = request(url + "/api/positions").json()
        assert {p["symbol"]: p["net_position"] for p in body} == {f"S{i}": 10.0 for i in range(30)}
        assert _metrics(url)["pd_positions"][()] == 30
        assert view.hub.wakeups == 0
    finally:
        node.stop()


def test_a_live_stream_is_fed_at_most_once_per_interval_and_misses_nothing(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """With a stream open, a second (and 50 at least) of single trades, each waited for, wakes
    the view at most once per hold-off interval, and the stream ends with every symbol's final
    position."""
    node = _view_node(tmp_path)
    try:
        view = node.risk_view
        assert view is not None
        reader = _SseReader(node.http_port)
        reader.read_until(lambda events: any(n == "snapshot" for n, _ in events))
        nets: dict[str, float] = {}
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 1.0 or i < 50:  # a second, and 50 trades at least
            assert time.monotonic() - started < 60, f"only {i} trades in a minute"
            symbol = f"P{i % 20}"
            nets[symbol] = node.trade(symbol, 1.0).result(10).net_position
            i += 1
        took = time.monotonic() - started
        seen: dict[str, float] = {}

        def complete(events: list[tuple[str, str]]) -> bool:
            for name, data in events:
                if name in ("snapshot", "changes"):
                    for _, symbol, net, _ in json.loads(data)["positions"]:
                        seen[symbol] = net
            return seen == nets

        reader.read_until(complete)
        reader.close()
        assert 1 <= view.hub.wakeups <= took / view.hub.interval + 2
        changes = sum(1 for name, _ in reader.events if name == "changes")
        assert changes <= took / view.hub.interval + 2
    finally:
        node.stop()


def test_stopping_closes_open_streams_within_a_second(tmp_path: Path, no_thread_leak: None) -> None:
    """Node.stop() with two open streams ends them (EOF at the client) within a second."""
    node = _view_node(tmp_path)
    readers = [_SseReader(node.http_port) for _ in range(2)]
    for reader in readers:
        reader.read_until(lambda events: any(n == "snapshot" for n, _ in events))
    closed = []

    def wait_eof(reader: _SseReader) -> None:
        reader.sock.settimeout(10)
        while reader.sock.recv(65536):
            pass
        closed.append(time.monotonic())

    threads = [threading.Thread(target=wait_eof, args=(r,)) for r in readers]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    node.stop()
    stopped = time.monotonic() - started
    for thread in threads:
        thread.join(5)
    for reader in readers:
        reader.close()
    assert len(closed) == 2
    assert max(closed) - started < 1.0
    assert stopped < 2.0


def test_several_nodes_in_one_process_have_their_own_metrics(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """Two nodes in one process each serve /metrics with their own strategy and counts."""
    first = _view_node(tmp_path, "alpha")
    second = _view_node(tmp_path, "beta")
    try:
        first.trade("AAPL", 1).result(10)
        first.trade("AAPL", 1).result(10)
        second.trade("MSFT", 1).result(10)
        one = _metrics(f"http://127.0.0.1:{first.http_port}")
        two = _metrics(f"http://127.0.0.1:{second.http_port}")
        assert one["pd_trades_total"][()] == 2 and two["pd_trades_total"][()] == 1
        assert (("strategy", "alpha"),) in one["pd_node_info"]
        assert (("strategy", "beta"),) in two["pd_node_info"]
    finally:
        first.stop()
        second.stop()


def test_an_in_process_node_refuses_a_public_http_without_token(tmp_path: Path) -> None:
    """Config refuses --http on a non-loopback address without a token, naming --http."""
    with pytest.raises(NodeError, match=r"refusing --http 0\.0\.0\.0:8080 without --http-token"):
        Config("alpha", data_dir=tmp_path, http=HttpSettings("0.0.0.0", 8080))
