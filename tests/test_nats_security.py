"""NATS security: users with a password file, nkey seeds, TLS, and server-enforced ownership
(a strategy's user writes only its own keys and reads all of them)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import nats
import nkeys
import pytest
from nats.aio.client import RawCredentials
from nats.js.api import KeyValueConfig

from position_distributor.natskeys import decode_value, escape

from .certs import CertSet, _make_node, make_certs
from .nats_jwt import Account, Operator, creds_text
from .nats_support import NatsNodes, NatsServer
from .procs import run_cli, without_root_powers

BUCKET = "positions"


def publish_subjects(strategy: str, bucket: str = BUCKET) -> list[str]:
    """What one strategy's user may publish, as docs/nats.md gives it: its own keys, and
    reading the stream (its info, a consumer, single messages)."""
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.{escape(strategy)}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


SUBSCRIBE = ["_INBOX.>"]  # what every strategy's user may subscribe to


def user_permissions(strategy: str, bucket: str = BUCKET) -> str:
    """The permissions block of one strategy's user in a server's configuration file."""
    return (
        f"{{ publish: {{ allow: {json.dumps(publish_subjects(strategy, bucket))} }},"
        f" subscribe: {{ allow: {json.dumps(SUBSCRIBE)} }} }}"
    )


def accounts(users: str) -> str:
    return f"""accounts {{
  FIRM {{
    jetstream: enabled
    users: [
      {{ user: admin, password: admin-secret }}
{users}
    ]
  }}
}}
"""


def seed_pair() -> tuple[str, str]:
    """A new user nkey: (seed, public key)."""
    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key
    return seed.decode(), public.decode()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, Path]]]:
    """A server whose users s1 and s2 (passwords) and s3 (an nkey) may write only their own
    keys; the admin creates the bucket. Yields the server and each user's secret file."""
    files: dict[str, Path] = {}
    lines = []
    for name in ("s1", "s2"):
        files[name] = tmp_path / f"{name}.password"
        files[name].write_text(f"pw-{name}\n")
        lines.append(
            f"      {{ user: {name}, password: pw-{name}, permissions: {user_permissions(name)} }}"
        )
    seed, public = seed_pair()
    files["s3"] = tmp_path / "s3.nk"
    files["s3"].write_text(seed + "\n")
    lines.append(f"      {{ nkey: {public}, permissions: {user_permissions('s3')} }}")
    server = NatsServer(tmp_path / "server", extra=accounts("\n".join(lines))).start()
    try:
        asyncio.run(_admin(server.url, "create"))
        yield server, files
    finally:
        server.stop()


async def _admin(url: str, action: str, key: str = "") -> object:
    nc = await nats.connect(url, user="admin", password="admin-secret")
    try:
        js = nc.jetstream(timeout=2)
        if action == "create":
            return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1))
        entry = await (await js.key_value(BUCKET)).get(key)
        return decode_value(key, entry.value or b"")
    finally:
        await nc.close()


def test_each_strategy_writes_only_its_own_keys(
    secured: tuple[NatsServer, dict[str, Path]], tmp_path: Path
) -> None:
    """Nodes log in as their strategy's user and converge; with s1's credentials, another
    strategy's key can be neither overwritten, deleted nor purged, nor the stream purged."""
    server, files = secured
    nodes = NatsNodes(tmp_path, server.url, BUCKET)
    try:
        s1 = nodes.add_nats(
            "s1", "--nats-user", "s1", "--nats-password-file", str(files["s1"]), create=False
        )
        s2 = nodes.add_nats(
            "s2", "--nats-user", "s2", "--nats-password-file", str(files["s2"]), create=False
        )
        s3 = nodes.add_nats("s3", "--nats-nkey", str(files["s3"]), create=False)
        s1.type("AAPL 1")
        s2.type("AAPL 2")
        s3.type("AAPL 3")
        expected = {("s1", "AAPL"): 1.0, ("s2", "AAPL"): 2.0, ("s3", "AAPL"): 3.0}
        nodes.wait_for_view(expected)
    finally:
        nodes.close()
    before = asyncio.run(_admin(server.url, "get", "s2.AAPL"))
    refused = asyncio.run(attack(server.url, BUCKET, user="s1", password="pw-s1"))
    assert refused == ["overwrite", "delete", "purge", "stream purge", "stream delete"]
    assert asyncio.run(_admin(server.url, "get", "s2.AAPL")) == before
    assert server.log.read_text().count("Publish Violation") >= 5


async def attack(url: str, bucket: str, **login: Any) -> list[str]:
    """With s1's login, try to overwrite, delete and purge s2's key, and to purge and delete
    the stream; then write s1's own key. Returns what the server refused."""
    nc = await nats.connect(url, **login)
    refused = []
    try:
        js = nc.jetstream(timeout=1)
        kv = await js.key_value(bucket)
        attempts = [
            ("overwrite", kv.put("s2.AAPL", b"\x00")),
            ("delete", kv.delete("s2.AAPL")),
            ("purge", kv.purge("s2.AAPL")),
            ("stream purge", js.purge_stream(f"KV_{bucket}")),
            ("stream delete", js.delete_stream(f"KV_{bucket}")),
        ]
        for what, attempt in attempts:
            try:
                await attempt
            except Exception:
                refused.append(what)
        await kv.put("s1.AAPL", b"")  # its own key: allowed
    finally:
        await nc.close()
    return refused


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--nats-user", "s1", "--nats-password-file", "{wrong}"],
            "refused this node's credentials",
        ),
        (["--nats-nkey", "{other_seed}"], "refused this node's credentials"),
        ([], "refused this node's credentials"),
    ],
)
def test_bad_credentials_are_a_clear_error(
    secured: tuple[NatsServer, dict[str, Path]], tmp_path: Path, args: list[str], message: str
) -> None:
    """A wrong password, an unknown nkey or no credentials at all: one line, exit 2."""
    server, _ = secured
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    other = tmp_path / "other.nk"
    other.write_text(seed_pair()[0] + "\n")
    args = [a.format(wrong=wrong, other_seed=other) for a in args]
    result = run_cli("s1", "--nats", server.url, "--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    directory = tmp_path_factory.mktemp("nats-tls")
    certs = make_certs(directory, ("s1",))
    _make_node(directory, "server", "localhost", "ca")
    return certs


def test_tls_with_client_certificates(tls_files: CertSet, tmp_path: Path) -> None:
    """A server that verifies client certificates: a node with the CA and its certificate
    trades; one without a client certificate, or not trusting the server's CA, is refused at
    start with a clear line."""
    directory = tls_files.ca.parent
    extra = (
        f'tls {{ cert_file: "{directory / "server.pem"}", key_file: "{directory / "server.key"}",'
        f' ca_file: "{tls_files.ca}", verify: true }}'
    )
    server = NatsServer(tmp_path / "server", extra=extra).start()
    url = f"tls://localhost:{server.port}"
    cert = tls_files.nodes["s1"]
    try:
        nodes = NatsNodes(tmp_path, url, BUCKET)
        try:
            s1 = nodes.add_nats(
                "s1",
                "--nats-tls-ca", str(tls_files.ca),
                "--nats-tls-cert", str(cert.cert),
                "--nats-tls-key", str(cert.key),
            )  # fmt: skip
            s1.type("AAPL 1")
            s1.wait_for_view({("s1", "AAPL"): 1.0})
            s1.wait_for_log("on NATS: bucket")
        finally:
            nodes.close()
        no_cert = run_cli(
            "s2", "--nats", url, "--nats-tls-ca", str(tls_files.ca), "--data-dir", str(tmp_path)
        )
        assert no_cert.returncode == 2
        assert "error:" in no_cert.stderr and "NATS" in no_cert.stderr
        other_ca = run_cli(
            "s2",
            "--nats", url,
            "--nats-tls-ca", str(tls_files.other_ca.cert),
            "--nats-tls-cert", str(cert.cert),
            "--nats-tls-key", str(cert.key),
            "--data-dir", str(tmp_path),
        )  # fmt: skip
        assert other_ca.returncode == 2
        assert "CERTIFICATE_VERIFY_FAILED" in other_ca.stderr or "certificate" in other_ca.stderr
    finally:
        server.stop()


# Operator mode: decentralised JWT auth, each node logging in with a .creds file.


@pytest.fixture(scope="module")
def operator_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Account]]:
    """A server in operator mode (memory resolver) trusting one account, FIRM, with
    JetStream; started once for this module. Yields it and the account, to mint users."""
    root = tmp_path_factory.mktemp("nats-operator")
    operator = Operator()
    firm = operator.account("FIRM")
    server = NatsServer(root, extra=operator.server_config(root)).start()
    try:
        yield server, firm
    finally:
        server.stop()


def strategy_creds(account: Account, directory: Path, strategy: str, bucket: str) -> Path:
    """A .creds file for one strategy's user: publish only its own keys, read them all."""
    return account.write_creds(
        directory / f"{strategy}.creds",
        strategy,
        publish=publish_subjects(strategy, bucket),
        subscribe=SUBSCRIBE,
    )


def test_creds_nodes_converge_and_write_only_their_own_keys(
    operator_mode: tuple[NatsServer, Account], tmp_path: Path, bucket: str
) -> None:
    """Nodes log in with their strategy's .creds file (one with CRLF line ends) and converge;
    with s1's creds, another strategy's key can be neither overwritten, deleted nor purged,
    nor the stream purged."""
    server, firm = operator_mode
    admin = RawCredentials(firm.user_creds("admin"))
    files = {name: strategy_creds(firm, tmp_path, name, bucket) for name in ("s1", "s2")}
    # s2's file as a Windows editor would leave it: CRLF line ends, indented.
    files["s2"].write_text("\r\n".join("  " + line for line in files["s2"].read_text().split("\n")))

    async def create() -> None:
        nc = await nats.connect(server.url, user_credentials=admin)
        try:
            await nc.jetstream(timeout=2).create_key_value(KeyValueConfig(bucket=bucket, history=1))
        finally:
            await nc.close()

    asyncio.run(create())
    nodes = NatsNodes(tmp_path, server.url, bucket)
    try:
        s1 = nodes.add_nats("s1", "--nats-creds", str(files["s1"]), create=False)
        s2 = nodes.add_nats("s2", "--nats-creds", str(files["s2"]), create=False)
        s1.type("AAPL 1")
        s2.type("AAPL 2", "ES:H6 -3")
        nodes.wait_for_view({("s1", "AAPL"): 1.0, ("s2", "AAPL"): 2.0, ("s2", "ES:H6"): -3.0})
        s1.sync_stderr()
        assert not s1.log_lines("ERROR") and not s1.log_lines("Violation"), s1.describe()
    finally:
        nodes.close()
    violations = server.log.read_text().count("Publish Violation")
    refused = asyncio.run(
        attack(server.url, bucket, user_credentials=RawCredentials(files["s1"].read_text()))
    )
    assert refused == ["overwrite", "delete", "purge", "stream purge", "stream delete"]
    assert server.log.read_text().count("Publish Violation") >= violations + 5

    async def held() -> bytes:
        nc = await nats.connect(server.url, user_credentials=admin)
        try:
            entry = await (await nc.jetstream(timeout=2).key_value(bucket)).get("s2.AAPL")
            return entry.value or b""
        finally:
            await nc.close()

    assert decode_value("s2.AAPL", asyncio.run(held())).net_position == 2.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("unknown account", "Authorization Violation'): check --nats-creds"),
        ("missing", "--nats-creds: cannot read"),
        ("unreadable", "--nats-creds: cannot read"),
        ("garbage", "is not a usable .creds file: no user JWT in it"),
        ("halves of two users", "belong to different users"),
        ("with --nats-user", "--nats-user and --nats-creds each log in to NATS: give only one"),
    ],
)  # fmt: skip
def test_bad_creds_are_a_clear_error(
    operator_mode: tuple[NatsServer, Account], tmp_path: Path, bucket: str, make: str, message: str
) -> None:
    """A user of an account the server's operator never signed, a missing, unreadable, damaged
    or mixed-up .creds file, or creds with another login: one line naming --nats-creds, exit 2."""
    server, firm = operator_mode
    path = tmp_path / "node.creds"
    args = ["--nats-creds", str(path)]
    if make == "unknown account":
        stranger = Operator().account("ELSEWHERE")
        strategy_creds(stranger, tmp_path, "node", bucket)
    elif make == "unreadable":
        strategy_creds(firm, tmp_path, "node", bucket).chmod(0)
    elif make == "garbage":
        path.write_text("not a creds file\n")
    elif make == "halves of two users":
        path.write_text(creds_text(firm.user("s1")[0], firm.user("s2")[1]))
    elif make == "with --nats-user":
        strategy_creds(firm, tmp_path, "node", bucket)
        args += ["--nats-user", "s1"]
    result = run_cli(
        "s1", "--nats", server.url, "--nats-bucket", bucket, "--nats-create-bucket",
        "--data-dir", str(tmp_path / "d"), *args,
        preexec_fn=without_root_powers if os.geteuid() == 0 else None,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "error:" in result.stderr, result.stderr
