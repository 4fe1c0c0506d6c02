"""Cluster-secret authentication: HMAC challenge-response over fresh nonces from both sides.

Pure: no I/O but reading the secret file. Each side sends a fresh random nonce in its Hello,
then proves it holds the secret by sending ``HMAC-SHA256(secret, context)`` where the context
binds the prover's and verifier's strategy names and both nonces, in that order. A proof
recorded on one connection is useless on another (the verifier's nonce differs: no replay),
and a node's own proof sent back to it does not verify (the names are the other way round:
no reflection). Proofs are compared in constant time.

A secret file holds one secret per line (blank lines and ``#`` comments ignored). The first
secret proves; every secret is accepted. That allows a rotation with no downtime: add the new
secret second everywhere, then first everywhere, then remove the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

__all__ = [
    "MIN_SECRET_LENGTH",
    "NONCE_SIZE",
    "SecretError",
    "load_secrets",
    "new_nonce",
    "prove",
    "verify",
]

NONCE_SIZE: Final = 32
MIN_SECRET_LENGTH: Final = 16
_CONTEXT: Final = b"position-distributor auth v1\x00"


class SecretError(Exception):
    """The secret file is missing, unreadable, empty or too weak (the operator's to fix)."""


def load_secrets(path: Path) -> tuple[list[bytes], str | None]:
    """Read the secrets in ``path``; return them and a warning about the file, if any.

    The warning says when the file can be read by other users than its owner.
    """
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # before reading: a FIFO would block the start forever
            raise SecretError(f"secret file {path} is not a regular file")
        text = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if len(line) < MIN_SECRET_LENGTH:
            raise SecretError(
                f"secret on line {number} of {path} is {len(line)} bytes long;"
                f" use at least {MIN_SECRET_LENGTH} (e.g. the output of: openssl rand -hex 32)"
            )
        found.append(line)
    if not found:
        raise SecretError(f"secret file {path} holds no secret")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (
            f"secret file {path} can be read by other users (mode {stat.S_IMODE(mode):o});"
            f" run: chmod 600 {os.fspath(path)}"
        )
    return found, warning


def new_nonce() -> bytes:
    """Fresh random bytes for one connection's challenge."""
    return secrets.token_bytes(NONCE_SIZE)


def _context(prover: str, verifier: str, prover_nonce: bytes, verifier_nonce: bytes) -> bytes:
    """The bytes a proof is computed over; every field length-prefixed, so unambiguous."""
    parts = (prover.encode(), verifier.encode(), prover_nonce, verifier_nonce)
    return _CONTEXT + b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def prove(
    secret: bytes, *, prover: str, verifier: str, prover_nonce: bytes, verifier_nonce: bytes
) -> bytes:
    """The proof ``prover`` sends ``verifier`` that it holds ``secret``."""
    message = _context(prover, verifier, prover_nonce, verifier_nonce)
    return hmac.new(secret, message, hashlib.sha256).digest()


def verify(
    accepted: list[bytes],
    proof: bytes,
    *,
    prover: str,
    verifier: str,
    prover_nonce: bytes,
    verifier_nonce: bytes,
) -> bool:
    """Whether ``proof`` was made with one of the ``accepted`` secrets (constant time each)."""
    message = _context(prover, verifier, prover_nonce, verifier_nonce)
    ok = False
    for secret in accepted:  # every secret is tried, whichever matches
        expected = hmac.new(secret, message, hashlib.sha256).digest()
        ok |= hmac.compare_digest(expected, proof)
    return ok
