"""The security options of the command line, on real processes started as a user does.

Every node listens on 127.0.0.1 (or 0.0.0.0 where the test is about that bind, with nothing
dialling it but 127.0.0.1) and is stopped by its PID at the end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .certs import CertSet, session_certs
from .procs import Cluster, NodeProcess, run_cli
from .security_support import write_secret

A, B = "strategy_1", "strategy_2"
SECRET = "cluster-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdef"
ERROR = "position-distributor: error: "


@pytest.fixture
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return session_certs(tmp_path_factory)


def refused_start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a node that must not start: exit status 2, nothing on stdout, and exactly one
    ``position-distributor: error:`` line on stderr, which is returned."""
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        result = run_cli(A, "0", "--data-dir", str(tmp_path / "data"), *args, timeout=30)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), result.stderr
    return lines[0]


def bad_secret_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "secret"
    if kind == "missing":
        return path
    text = {"empty": "", "comments only": "# no secret yet\n\n", "too short": "hunter2\n"}[kind]
    return write_secret(path, text) if text else write_secret(path)


@pytest.mark.parametrize("kind", ["missing", "empty", "comments only", "too short"])
def test_a_bad_secret_file_stops_the_start_with_one_line(tmp_path: Path, kind: str) -> None:
    """--secret-file naming a missing file, an empty one, one with no secret or a secret too
    short: exit 2 with one error line naming the file, before anything is logged."""
    path = bad_secret_file(tmp_path, kind)
    line = refused_start(tmp_path, "--secret-file", str(path))
    assert str(path) in line
    expected = {
        "missing": "does not exist",
        "empty": "holds no secret",
        "comments only": "holds no secret",
        "too short": "use at least 16",
    }[kind]
    assert expected in line


def test_the_secret_file_can_come_from_the_environment(tmp_path: Path) -> None:
    """PD_SECRET_FILE is read as --secret-file is (here, a missing file stops the start)."""
    path = tmp_path / "nowhere"
    line = refused_start(tmp_path, env={"PD_SECRET_FILE": str(path)})
    assert f"secret file {path} does not exist" in line


def test_a_secret_file_others_can_read_gives_a_warning_and_the_node_runs(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A group-readable secret file is used, with a warning line saying how to fix it."""
    path = write_secret(tmp_path / "secret", SECRET, mode=0o640)
    node = cluster.add(A, args=["--secret-file", str(path)], recovery_timeout=0.2)
    line = node.wait_for_log("can be read by other users")
    assert "WARNING" in line and f"chmod 600 {path}" in line and "mode 640" in line
    node.wait_for_log("peers must prove who they are: a cluster secret (1 accepted)")
    node.type("AAPL 5")
    node.wait_for_view({(A, "AAPL"): 5.0})
    assert node.stop() == 0


def test_two_processes_with_the_same_secret_converge(tmp_path: Path, cluster: Cluster) -> None:
    """Two nodes given the same secret, one by PD_SECRET_FILE and one by --secret-file,
    connect and converge."""
    path = write_secret(tmp_path / "secret", SECRET)
    a = cluster.add(A, env={"PD_SECRET_FILE": str(path)}, recovery_timeout=0.2)
    b = cluster.add(B, peers=[a.port], args=["--secret-file", str(path)], recovery_timeout=0.2)
    for node in (a, b):
        node.wait_for_log("peers must prove who they are: a cluster secret (1 accepted)")
    a.type("AAPL 100")
    b.type("MSFT 5")
    cluster.wait_for_view({(A, "AAPL"): 100.0, (B, "MSFT"): 5.0}, [a, b])
    assert not a.log_lines("authentication failed") and not b.log_lines("authentication failed")


def test_two_processes_with_different_secrets_exchange_nothing(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Nodes with different secrets refuse each other at every attempt, each logging the
    reason, and neither ever prints the other's positions."""
    a_secret = write_secret(tmp_path / "a-secret", SECRET)
    b_secret = write_secret(tmp_path / "b-secret", OTHER_SECRET)
    a = cluster.add(
        A, args=["--secret-file", str(a_secret), "--log-level", "DEBUG"], recovery_timeout=0.2
    )
    a.type("AAPL 100")
    a.wait_for_view({(A, "AAPL"): 100.0})
    b = cluster.add(B, peers=[a.port], args=["--secret-file", str(b_secret)], recovery_timeout=0.2)
    b.type("MSFT 5")
    b.wait_for_view({(B, "MSFT"): 5.0})
    mark = a.mark().err
    reason = "authentication failed: the peer's proof does not match the cluster secret"
    # Both hold a position now: wait for two more refused attempts (logged at DEBUG after the
    # first, so that a redialling node does not flood the log).
    refusals = f"connection from '{B}' (claimed) at 127.0.0.1:"  # not proven: a claim
    a.wait_until(
        lambda n: len([x for x in n.log_lines(refusals, mark) if " refused: " in x]) >= 2,
        what="two refused attempts",
    )
    first = next(x for x in a.log_lines(refusals) if " refused: " in x)
    assert re.search(
        rf"WARNING .*connection from '{B}' \(claimed\) at 127\.0\.0\.1:\d+ refused: ", first
    )
    # The side that checks a proof first logs why (with the dialler speaking first, that is
    # the dialler; the other side then sees the connection closed).
    dialled = f"127.0.0.1:{a.port} refused the connection: "
    b.wait_for_log(dialled)

    def explained(node: NodeProcess) -> bool:
        return bool(a.log_lines(reason) or b.log_lines(reason))

    a.wait_until(explained, what=f"a line with {reason!r} on either node")
    assert a.nets() == {(A, "AAPL"): 100.0}
    assert b.nets() == {(B, "MSFT"): 5.0}


def test_a_node_without_security_says_any_peer_is_accepted(cluster: Cluster) -> None:
    """With neither a secret nor TLS, the node says at start (at INFO on loopback) that anyone
    who can reach its port can read and write positions."""
    node = cluster.add(A, recovery_timeout=0.2)
    line = node.wait_for_log("no --secret-file or TLS")
    assert "INFO" in line  # the default, local setup; a public bind needs --insecure
    assert f"any process that can reach 127.0.0.1:{node.port} can read and write" in line


def test_a_public_bind_without_security_is_refused(tmp_path: Path) -> None:
    """--bind 0.0.0.0 with neither a secret nor TLS: exit 2, the line names --insecure."""
    line = refused_start(tmp_path, "--bind", "0.0.0.0")
    assert "refusing to listen on 0.0.0.0" in line and "--insecure" in line


@pytest.mark.parametrize("how", ["--insecure", "--secret-file"])
def test_a_public_bind_starts_with_insecure_or_a_secret(
    tmp_path: Path, cluster: Cluster, how: str
) -> None:
    """--bind 0.0.0.0 starts with --insecure (still warning that any peer is accepted) or
    with a secret (then no such warning)."""
    args = ["--bind", "0.0.0.0"]
    if how == "--insecure":
        args.append("--insecure")
    else:
        args += ["--secret-file", str(write_secret(tmp_path / "secret", SECRET))]
    node: NodeProcess = cluster.add(A, args=args, recovery_timeout=0.2)
    node.wait_for_log(f"{A} listening on 0.0.0.0:")
    node.type("AAPL 1")
    node.wait_for_view({(A, "AAPL"): 1.0})  # it runs
    warned = node.log_lines(f"any process that can reach 0.0.0.0:{node.port}")
    assert bool(warned) == (how == "--insecure")
    assert node.stop() == 0


@pytest.mark.parametrize("given", [("cert",), ("cert", "key"), ("key", "ca"), ("ca",)])
def test_partial_tls_options_are_refused(
    tmp_path: Path, certs: CertSet, given: tuple[str, ...]
) -> None:
    """Some but not all of --tls-cert, --tls-key and --tls-ca: exit 2 saying all three are
    needed."""
    files = certs.nodes[A]
    paths = {"cert": files.cert, "key": files.key, "ca": files.ca}
    args = [arg for kind in given for arg in (f"--tls-{kind}", str(paths[kind]))]
    line = refused_start(tmp_path, *args)
    assert "TLS needs all three of --tls-cert, --tls-key and --tls-ca" in line


@pytest.mark.parametrize("problem", ["missing certificate", "key of another certificate"])
def test_unusable_tls_files_are_refused(tmp_path: Path, certs: CertSet, problem: str) -> None:
    """A certificate that cannot be read, or a key that does not match it: exit 2 naming
    the files."""
    files = certs.nodes[A]
    cert = tmp_path / "nowhere.pem" if problem == "missing certificate" else files.cert
    key = certs.nodes[B].key if problem == "key of another certificate" else files.key
    line = refused_start(
        tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(files.ca)
    )
    assert f"cannot load certificate {cert} with key {key}" in line


def test_two_processes_with_tls_and_a_secret_converge(
    tmp_path: Path, cluster: Cluster, certs: CertSet
) -> None:
    """Nodes started with their certificates and a shared secret connect and converge."""
    secret = write_secret(tmp_path / "secret", SECRET)
    a = cluster.add(
        A, args=[*certs.nodes[A].args(), "--secret-file", str(secret)], recovery_timeout=0.2
    )
    b = cluster.add(
        B,
        peers=[a.port],
        args=[*certs.nodes[B].args(), "--secret-file", str(secret)],
        recovery_timeout=0.2,
    )
    a.type("AAPL 100")
    b.type("MSFT 5")
    cluster.wait_for_view({(A, "AAPL"): 100.0, (B, "MSFT"): 5.0}, [a, b])
    a.wait_for_log("a cluster secret (1 accepted) and TLS certificates naming their strategy")
