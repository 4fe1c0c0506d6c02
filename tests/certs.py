"""Test certificates made with the ``openssl`` command line, as docs/security.md shows.

``make_certs(directory)`` writes a test CA, one certificate per strategy signed by it (its
common name and DNS name are the strategy), a second CA with a certificate for strategy_2
(signed by the wrong authority), and a certificate from the good CA for a name no node runs
(for a node that claims another strategy than its certificate's). Keys are EC P-256, so the
whole set takes well under a second. The commands are the ones a user would type.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["NAMES", "WRONG_NAME", "CertSet", "NodeCert", "make_certs", "openssl", "session_certs"]

NAMES = ("strategy_1", "strategy_2", "strategy_3")
WRONG_NAME = "strategy_9"

# Extensions of a node certificate: usable by both ends of a mutual TLS connection.
_NODE_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:{name}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class NodeCert:
    """A node's certificate and key, and the CA that must have signed its peers'."""

    cert: Path
    key: Path
    ca: Path

    def args(self) -> list[str]:
        """The node's command-line options for these files."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


@dataclass(frozen=True)
class CertSet:
    """Every certificate the security tests use."""

    ca: Path
    nodes: dict[str, NodeCert]  # good certificates, one per name
    other_ca: NodeCert  # strategy_2's name, signed by a CA the nodes do not trust
    wrong_name: NodeCert  # signed by the good CA, but for strategy_9


def openssl(*args: str, cwd: Path) -> None:
    """Run one ``openssl`` command; fail with its stderr if it fails."""
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_ca(directory: Path, stem: str, subject: str) -> Path:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-days", "3650", "-subj", subject,
        cwd=directory,
    )  # fmt: skip
    (directory / f"{stem}.key").chmod(0o600)
    return directory / f"{stem}.pem"


def _make_node(directory: Path, stem: str, name: str, ca_stem: str) -> NodeCert:
    extensions = directory / f"{stem}.ext"
    extensions.write_text(_NODE_EXTENSIONS.format(name=name))
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca_stem}.pem", "-CAkey", f"{ca_stem}.key",
        "-CAcreateserial", "-out", f"{stem}.pem", "-days", "365", "-extfile", extensions.name,
        cwd=directory,
    )  # fmt: skip
    (directory / f"{stem}.key").chmod(0o600)
    return NodeCert(directory / f"{stem}.pem", directory / f"{stem}.key", directory / "ca.pem")


def make_certs(directory: Path, names: tuple[str, ...] = NAMES) -> CertSet:
    """Write the test CA and every certificate under ``directory`` (created if needed): one
    good certificate per name in ``names``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca", "/CN=position-distributor test CA")
    _make_ca(directory, "other-ca", "/CN=some other CA")
    nodes = {name: _make_node(directory, name, name, "ca") for name in names}
    other = _make_node(directory, "other-strategy_2", "strategy_2", "other-ca")
    wrong = _make_node(directory, "wrong-name", WRONG_NAME, "ca")
    return CertSet(ca, nodes, other, wrong)


_made: dict[str, CertSet] = {}


def session_certs(factory: pytest.TempPathFactory) -> CertSet:
    """The certificates, made once per test session (the first caller makes them)."""
    if "certs" not in _made:
        _made["certs"] = make_certs(factory.mktemp("certs"))
    return _made["certs"]
