"""Nodes over NATS JetStream (``--nats``), one real nats-server: convergence, recovery, an
outage, bad entries in the bucket, a second writer, and the errors at start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.js.api import KeyValueConfig

from position_distributor.natskeys import encode_key, encode_value
from position_distributor.types import Position

from .nats_proxy import LostAckProxy, next_message
from .nats_support import NatsNodes, NatsServer
from .procs import run_cli
from .riskview_support import http_url, request
from .waiting import wait_until


async def _kv_call(url: str, bucket: str, action: str, key: str = "", value: bytes = b"") -> object:
    """One key-value operation as another client would do it (the test's own connection)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        if action == "create":
            return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        kv = await js.key_value(bucket)
        if action == "put":
            return await kv.put(key, value)
        if action == "get":
            return (await kv.get(key)).value
        if action == "revision":
            return (await kv.get(key)).revision
        if action == "last":
            return (await js.stream_info(f"KV_{bucket}")).state.last_seq
        raise ValueError(action)
    finally:
        await nc.close()


def kv(url: str, bucket: str, action: str, key: str = "", value: bytes = b"") -> object:
    return asyncio.run(_kv_call(url, bucket, action, key, value))


def test_three_nodes_converge(nats_nodes: NatsNodes) -> None:
    """Three nodes on one bucket, each trading, all end with every strategy's positions."""
    s1 = nats_nodes.add_nats("s1")
    s2 = nats_nodes.add_nats("s2")
    s3 = nats_nodes.add_nats("desk.fx-3")
    s1.type("AAPL 100", "7203.T 5")
    s2.type("AAPL -30", "ES:H6 2")
    s3.type("EUR/USD 1000000", "AAPL 1", "AAPL 1")
    expected = {
        ("s1", "AAPL"): 100.0,
        ("s1", "7203.T"): 5.0,
        ("s2", "AAPL"): -30.0,
        ("s2", "ES:H6"): 2.0,
        ("desk.fx-3", "EUR/USD"): 1000000.0,
        ("desk.fx-3", "AAPL"): 2.0,
    }
    nats_nodes.wait_for_view(expected)
    # The bucket holds each position under its escaped key, as a SymbolPos.
    value = kv(nats_nodes.urls, nats_nodes.bucket, "get", "desk=2Efx-3.EUR/USD")
    assert value == encode_value(
        Position("desk.fx-3", "EUR/USD", 1e6, s3.view[("desk.fx-3", "EUR/USD")][1])
    )
    peers = s1.command_output("peers", "Peers")
    assert any(
        line.startswith(f"nats:{nats_nodes.bucket} | 127.0.0.1:") and "| connected |" in line
        for line in peers
    ), peers
    assert any(line.startswith("s2 | bucket ") for line in peers), peers
    assert any(line.startswith("desk.fx-3 | bucket ") for line in peers), peers


def test_a_wiped_store_is_recovered_from_the_bucket(nats_nodes: NatsNodes) -> None:
    """A node whose store is lost gets its own positions back from the bucket; a trade typed
    at once applies on top of them (the base-plus-journal rule), never instead of them."""
    s1 = nats_nodes.add_nats("s1", recovery_timeout=10.0)
    s2 = nats_nodes.add_nats("s2")
    s1.type("AAPL 100", "MSFT -5")
    s2.wait_for_view({("s1", "AAPL"): 100.0, ("s1", "MSFT"): -5.0})
    assert s1.stop() == 0
    nats_nodes.restart("s1", wipe=True)
    s1.type("AAPL 1")
    expected = {("s1", "AAPL"): 101.0, ("s1", "MSFT"): -5.0}
    s1.wait_for_view(expected)
    s2.wait_for_view(expected)
    s1.wait_for_log("recovery done: synced with nats:")


def test_trades_during_an_outage_arrive_after_it(tmp_path: Path, bucket: str) -> None:
    """With the server down, trades still print (committed locally); the latest position per
    symbol is put when the server is back, and the other node gets it: nothing lost."""
    server = NatsServer(tmp_path / "server").start()
    nodes = NatsNodes(tmp_path, server.url, bucket)
    try:
        s1 = nodes.add_nats("s1")
        s2 = nodes.add_nats("s2")
        s1.type("AAPL 1")
        s2.wait_for_view({("s1", "AAPL"): 1.0})
        server.kill()
        s1.wait_for_log("NATS connection lost")
        s1.type("AAPL 10", "AAPL 100", "MSFT 3")
        s1.wait_for_view({("s1", "AAPL"): 111.0, ("s1", "MSFT"): 3.0})
        s2.type("IBM 2")
        s2.wait_for_view({("s1", "AAPL"): 1.0, ("s2", "IBM"): 2.0})
        server.start()
        expected = {("s1", "AAPL"): 111.0, ("s1", "MSFT"): 3.0, ("s2", "IBM"): 2.0}
        s2.wait_for_view(expected, timeout=20)
        s1.wait_for_view(expected, timeout=20)
    finally:
        nodes.close()
        server.stop()


def test_bad_entries_are_logged_once_per_key_and_skipped(nats_nodes: NatsNodes) -> None:
    """Garbage values, keys of another shape and values claiming another strategy are never
    applied, never fatal, and each key is logged once however often it is written."""
    s1 = nats_nodes.add_nats("s1")
    s1.wait_for_log("recovery done")  # the bucket exists and is watched
    url, bucket = nats_nodes.urls, nats_nodes.bucket
    for _ in range(3):
        kv(url, bucket, "put", "s9.AAPL", b"\xff\xff\xff")
        kv(url, bucket, "put", "not.a.position", b"x")
        kv(url, bucket, "put", "s9.MSFT", encode_value(Position("s8", "MSFT", 1.0, 5)))
    kv(url, bucket, "put", encode_key("s9", "IBM"), encode_value(Position("s9", "IBM", 4.0, 9)))
    s1.wait_for_view({("s9", "IBM"): 4.0})
    s1.sync_stderr()
    assert len(s1.log_lines("s9.AAPL")) == 1
    assert len(s1.log_lines("not.a.position")) == 1
    assert len(s1.log_lines("claims s8 MSFT")) == 1
    s1.type("AAPL 1")
    s1.wait_for_view({("s9", "IBM"): 4.0, ("s1", "AAPL"): 1.0})


def test_a_second_writer_of_one_strategy_is_named(nats_nodes: NatsNodes) -> None:
    """Two nodes running as one strategy on one bucket: each write that meets the other's is
    named in an ERROR, instead of interleaving silently."""
    first = nats_nodes.add_nats("s1")
    first.type("AAPL 1")
    first.wait_for_view({("s1", "AAPL"): 1.0})
    twin = nats_nodes.add_nats("twin", data_dir=nats_nodes.data_root / "twin", start=False)
    twin.name = "s1"
    twin.start()
    twin.wait_for_view({("s1", "AAPL"): 1.0})
    twin.type("AAPL 5")
    first.wait_for_log("another writer of strategy s1")
    first.type("AAPL 1")
    first.wait_for_log("is a second node running as s1?")


def test_the_proxy_finds_message_boundaries() -> None:
    """The lost-acknowledgement proxy splits the client's bytes at message boundaries: a
    publish ends after its payload (CRLF inside it included), other operations at their line."""
    stream = (
        b"CONNECT {}\r\nPING\r\nPUB a.b _INBOX.1 5\r\nx\r\nyz\r\n"
        b"HPUB $KV.p.s1.AAPL _INBOX.2 12 14\r\nNATS/1.0\r\n\r\nab\r\nSUB c 1\r\n"
    )
    found = []
    while (message := next_message(stream)) is not None:
        found.append((message.op, message.subject, stream[: message.length]))
        stream = stream[message.length :]
    assert found == [
        ("CONNECT", "", b"CONNECT {}\r\n"),
        ("PING", "", b"PING\r\n"),
        ("PUB", "a.b", b"PUB a.b _INBOX.1 5\r\nx\r\nyz\r\n"),
        ("HPUB", "$KV.p.s1.AAPL", b"HPUB $KV.p.s1.AAPL _INBOX.2 12 14\r\nNATS/1.0\r\n\r\nab\r\n"),
        ("SUB", "", b"SUB c 1\r\n"),
    ]
    assert stream == b""
    assert next_message(b"PUB a 5\r\nxx") is None  # the payload is not all there yet


@pytest.mark.parametrize("hold_retry", [False, True], ids=["read-first", "retry-first"])
def test_a_lost_acknowledgement_is_not_a_second_writer(
    nats_server: NatsServer, nats_nodes: NatsNodes, hold_retry: bool
) -> None:
    """A put the server stored but whose acknowledgement never reached the node: the node's
    retry (before or after its re-read of the bucket) finds its own write and says so, names
    no second writer, writes nothing twice, and the other node converges."""
    proxy = LostAckProxy(nats_server.port)
    url, bucket = nats_nodes.urls, nats_nodes.bucket
    try:
        s1 = nats_nodes.add_nats("s1", urls=proxy.url)
        s2 = nats_nodes.add_nats("s2")
        s1.type("AAPL 1")
        s2.wait_for_view({("s1", "AAPL"): 1.0})
        last = kv(url, bucket, "last")
        proxy.arm(f"$KV.{bucket}.s1.", hold_retry=hold_retry)
        s1.type("AAPL 5")
        assert proxy.cut.wait(15), "the proxy never saw s1's put"
        s1.wait_for_log("NATS connection lost")
        s1.wait_for_log("as this node put it (its acknowledgement was lost)", timeout=20)
        assert proxy.released.is_set() == hold_retry
        # One write for the put: the one the server stored before the cut.
        assert kv(url, bucket, "last") == last + 1
        assert kv(url, bucket, "revision", "s1.AAPL") == last + 1
        s2.wait_for_view({("s1", "AAPL"): 6.0})
        s2.type("MSFT 2")
        s1.wait_for_view({("s1", "AAPL"): 6.0, ("s2", "MSFT"): 2.0})
        s1.type("AAPL 1")  # the next put of the key goes through with the right revision
        s2.wait_for_view({("s1", "AAPL"): 7.0, ("s2", "MSFT"): 2.0})
        s1.sync_stderr()
        assert not s1.log_lines("another writer"), s1.describe()
        assert not s1.log_lines("ERROR"), s1.describe()
        assert kv(url, bucket, "revision", "s1.AAPL") == last + 3
    finally:
        nats_nodes.close()
        proxy.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "does not exist"),
        (["--nats-create-bucket", "--nats-replicas", "3"], "replicas"),
        (["--nats-bucket", "bad.name"], "invalid bucket name"),
        (["--nats-password-file", "/nonexistent"], "needs --nats-user"),
        (["--nats-user", "u", "--nats-password-file", "/nonexistent"], "cannot read /nonexistent"),
    ],
)
def test_clear_errors_at_start(
    nats_server: NatsServer, bucket: str, tmp_path: Path, args: list[str], message: str
) -> None:
    """A missing bucket, a replica count the server cannot give, or bad flags: one line, exit 2."""
    result = run_cli(
        "s1", "--nats", nats_server.url, "--nats-bucket", bucket, "--data-dir", str(tmp_path), *args
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 or "error:" in result.stderr.splitlines()[-1]


def test_a_bucket_with_other_settings_is_refused(
    nats_server: NatsServer, bucket: str, tmp_path: Path
) -> None:
    """A bucket the operator made with another history than 1 is named, with what differs."""

    async def make() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, history=5))
        finally:
            await nc.close()

    asyncio.run(make())
    result = run_cli(
        "s1", "--nats", nats_server.url, "--nats-bucket", bucket, "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "keeps a history of 5" in result.stderr


def test_a_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    """A server started without JetStream gives one clear line and exit 2."""
    server = NatsServer(tmp_path / "plain", jetstream=False)
    server.start()
    try:
        result = run_cli(
            "s1", "--nats", server.url, "--nats-create-bucket", "--data-dir", str(tmp_path)
        )
    finally:
        server.stop()
    assert result.returncode == 2
    assert "has no JetStream" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["12345", "--nats", "nats://127.0.0.1:4222"], "without PORT or peers"),
        (["--nats", "nats://127.0.0.1:4222", "--relay"], "--nats replaces the mesh: drop --relay"),
        (["--nats", "http://x:1"], "invalid NATS URL"),
        (["--nats", "127.0.0.1:1"], "cannot connect to NATS at nats://127.0.0.1:1"),
        (["12345", "--nats-creds", "s1.creds"], "--nats-creds needs --nats"),
        (["12345", "--nats-user", "s1"], "--nats-user needs --nats"),
    ],
)
def test_mixing_nats_and_the_mesh_is_an_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """--nats with a PORT, peers or mesh-only flags, a bad URL, or a NATS flag on a mesh
    node: one clear line, exit 2."""
    result = run_cli("s1", *args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr


def test_a_mesh_node_restarted_on_nats_puts_its_positions(
    nats_nodes: NatsNodes, tmp_path: Path
) -> None:
    """The migration runbook: a node stopped on the mesh and started on NATS with the same
    store puts its own positions into the bucket, where the others read them."""
    mesh = nats_nodes.add("s1", data_dir=tmp_path / "s1")
    mesh.type("AAPL 7", "MSFT -2")
    mesh.wait_for_view({("s1", "AAPL"): 7.0, ("s1", "MSFT"): -2.0})
    assert mesh.stop() == 0
    moved = nats_nodes.add_nats("s1-on-nats", data_dir=tmp_path / "s1", start=False)
    moved.name = "s1"
    moved.start()
    other = nats_nodes.add_nats("s2")
    expected = {("s1", "AAPL"): 7.0, ("s1", "MSFT"): -2.0}
    other.wait_for_view(expected)
    moved.wait_for_log("own position(s) missing or older in bucket")


def test_the_risk_view_shows_the_nats_link(nats_nodes: NatsNodes) -> None:
    """/api/peers and /healthz list the NATS link (its server and state) and the strategies
    seen in the bucket; /metrics counts them."""
    s1 = nats_nodes.add_nats("s1", "--http", "127.0.0.1:0")
    s2 = nats_nodes.add_nats("s2")
    s2.type("AAPL 2")
    s1.wait_for_view({("s2", "AAPL"): 2.0})
    url = http_url(s1)
    peers = wait_until(lambda: (r := request(url + "/api/peers")).status == 200 and r.json())
    link = peers[0]
    assert link["name"] == f"nats:{nats_nodes.bucket}"
    assert link["address"].startswith("127.0.0.1:") and link["connected"]
    assert any(p["name"] == "s2" and p["state"].startswith("seen in the bucket") for p in peers)
    health = wait_until(lambda: (r := request(url + "/healthz")).status == 200 and r.json())
    assert health["links"][0]["name"] == f"nats:{nats_nodes.bucket}"
    assert health["links"][0]["state"] == "connected"
    metrics = request(url + "/metrics").body.decode()
    assert "pd_peers_connected 1.0" in metrics  # the link; s2 is seen, not connected
    assert 'pd_peers{state="connected"} 1.0' in metrics
