"""The test nats-server itself: the version the tests need, JetStream, and stop by PID."""

from __future__ import annotations

import asyncio
import re
import subprocess

import nats
from nats.js.api import KeyValueConfig

from .nats_support import NatsServer, nats_binary


def test_server_is_at_least_2_10() -> None:
    """The venv's nats-server is 2.10 or newer (Debian's 2.9 has JetStream failover bugs)."""
    out = subprocess.run([str(nats_binary()), "--version"], capture_output=True, text=True)
    found = re.search(r"v(\d+)\.(\d+)\.\d+", out.stdout)
    assert found is not None
    assert (int(found[1]), int(found[2])) >= (2, 10)


def test_session_server_has_jetstream(nats_server: NatsServer, bucket: str) -> None:
    """The shared server stores a key-value entry and listens on loopback only."""

    async def roundtrip() -> bytes:
        nc = await nats.connect(nats_server.url)
        try:
            kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, history=1))
            await kv.put("s.AAPL", b"x")
            return (await kv.get("s.AAPL")).value or b""
        finally:
            await nc.close()

    assert asyncio.run(roundtrip()) == b"x"
    assert nats_server.varz("varz")["host"] == "127.0.0.1"
