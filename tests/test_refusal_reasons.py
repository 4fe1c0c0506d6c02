"""A node whose dial is refused says why in its own log, once, naming the peer by one address.

Real processes: A (strategy_1) listens; B (strategy_2) dials it with a mistake in its security
options. B's own log must say what is wrong in one line (not one line per redial), and A's
lines about B name B by its listening address, not the ephemeral port of each attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .certs import CertSet, session_certs
from .procs import Cluster, NodeProcess
from .security_support import write_secret

A, B = "strategy_1", "strategy_2"


@pytest.fixture
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return session_certs(tmp_path_factory)


def options(certs: CertSet, tmp_path: Path, mistake: str) -> tuple[list[str], list[str]]:
    """A's and B's security options for ``mistake``."""
    secret = ["--secret-file", str(write_secret(tmp_path / "secret", "s3cret-one-xxxxxxxx"))]
    other = ["--secret-file", str(write_secret(tmp_path / "other", "s3cret-two-yyyyyyyy"))]
    tls_a, tls_b = certs.nodes[A].args(), certs.nodes[B].args()
    return {
        "missing-secret": (secret, []),
        "unexpected-secret": ([], secret),
        "wrong-secret": (secret, other),
        "tls-to-plain": ([], tls_b),
        "plain-to-tls": (tls_a, []),
        "certificate-for-another-name": (tls_a, certs.wrong_name.args()),
        "certificate-from-another-ca": (tls_a, certs.other_ca.args()),
    }[mistake]


# What B's log must say, for each mistake.
REASONS = {
    "missing-secret": r"requires a cluster secret and this node has none",
    "unexpected-secret": r"has no cluster secret, this node requires one",
    "wrong-secret": r"authentication failed",
    "tls-to-plain": r"does not speak TLS",
    "plain-to-tls": r"speaks TLS and this node does not",
    "certificate-for-another-name": r"certificate.*strategy_9.*not for the strategy strategy_2",
    "certificate-from-another-ca": r"does not trust this node's certificate",
}


def said(node: NodeProcess, pattern: str, start: int = 0) -> list[str]:
    return [line for line in node.errors_since(start) if re.search(pattern, line)]


@pytest.mark.parametrize("mistake", list(REASONS))
def test_the_dialler_says_why_it_is_refused(
    cluster: Cluster, certs: CertSet, tmp_path: Path, mistake: str
) -> None:
    """B logs the reason its dial is refused, once however often it redials; A names B by
    B's listening address, and logs it once, however often B redials."""
    a_args, b_args = options(certs, tmp_path, mistake)
    a = cluster.add(A, recovery_timeout=0, args=a_args)
    b = cluster.add(B, peers=[a.port], recovery_timeout=0, args=b_args)
    b.wait_until(lambda n: said(n, REASONS[mistake]), 15, f"B saying {REASONS[mistake]!r}")
    # Several redials later (backoff up to 1 s), still one line each.
    a.wait_until(lambda n: len(said(n, r"refused|closed")) >= 1, 15, "A's line about B")
    with pytest.raises(AssertionError, match="timed out"):
        b.wait_until(lambda n: len(said(n, REASONS[mistake])) > 1, 4.0, "a second line")
    b.sync_stderr()
    a.sync_stderr()
    assert len(said(b, REASONS[mistake])) == 1, said(b, REASONS[mistake])
    about_b = said(a, r"refused|closed")
    assert len(about_b) == 1, about_b
    if "strategy_2" in about_b[0]:  # B said its name: A names it by where it listens
        assert f"strategy_2' (claimed) at 127.0.0.1:{b.port} refused" in about_b[0], about_b
