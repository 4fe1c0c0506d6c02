"""A NATS ``.creds`` file (operator/JWT mode), read and checked before it is used.

The file ``nsc generate creds`` writes holds a user's JWT and the user's nkey seed, each
between armour lines::

    -----BEGIN NATS USER JWT-----
    eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJ...
    ------END NATS USER JWT------
    ...
    -----BEGIN USER NKEY SEED-----
    SUA...
    ------END USER NKEY SEED------

``parse_creds`` is pure: it finds both, checks that the JWT is a user's (its claims decode;
``nats.type`` is ``user``), not expired, and made for the seed's public key, so a wrong or
damaged file is one clear sentence at start, not a refusal the server cannot explain (nor a
client stuck reading a file it does not understand).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any, NamedTuple

__all__ = ["Creds", "CredsError", "parse_creds"]


def _block(what: str) -> re.Pattern[str]:
    """An armoured block: ``---BEGIN WHAT---``, one token on its own line, ``---END WHAT---``."""
    dashes = r"-{3,}"
    return re.compile(
        rf"{dashes}\s*BEGIN {what}\s*{dashes}[^\S\n]*\r?\n"  # the BEGIN line
        r"\s*(\S+)\s*\r?\n"  # the token
        rf"\s*{dashes}\s*END {what}\s*{dashes}"  # the END line
    )


_JWT = _block("NATS USER JWT")
_SEED = _block("USER NKEY SEED")
_MAX_SIZE = 64 * 1024  # a creds file is about 1 KiB; anything far larger is not one


class CredsError(ValueError):
    """The text is not a usable ``.creds`` file; the message says what is wrong."""


class Creds(NamedTuple):
    """A user's JWT, its seed and what the JWT says."""

    jwt: str
    seed: str
    user: str  # the user's public key (the JWT's subject)
    name: str  # the user's name in the JWT
    account: str  # the account that issued the JWT

    def text(self) -> str:
        """The file in the canonical layout nats-py reads (each token alone on the line after
        its BEGIN line, LF line ends), whatever spacing the original had."""
        return (
            f"-----BEGIN NATS USER JWT-----\n{self.jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{self.seed}\n------END USER NKEY SEED------\n"
        )


def parse_creds(text: str, *, now: float | None = None) -> Creds:
    """The JWT and seed of a ``.creds`` file's text; ``CredsError`` if it is not one."""
    if len(text) > _MAX_SIZE:
        raise CredsError(f"larger than {_MAX_SIZE // 1024} KiB: not a .creds file")
    jwt_block = _JWT.search(text)
    if jwt_block is None:
        raise CredsError(
            "no user JWT in it (expected -----BEGIN NATS USER JWT----- ... as nsc generate"
            " creds writes)"
        )
    seed_block = _SEED.search(text)
    if seed_block is None:
        raise CredsError("no user nkey seed in it (expected -----BEGIN USER NKEY SEED----- ...)")
    jwt, seed = jwt_block.group(1), seed_block.group(1)
    claims = _claims(jwt)
    nats = claims.get("nats")
    kind = nats.get("type") if isinstance(nats, dict) else None
    if kind != "user":
        what = f"an {kind!r} JWT" if isinstance(kind, str) else "a JWT without nats.type"
        raise CredsError(f"its JWT is {what}, not a user's")
    subject, issuer = claims.get("sub"), claims.get("iss")
    if not isinstance(subject, str) or not isinstance(issuer, str):
        raise CredsError("its JWT names no user (sub) or no issuer (iss)")
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires <= (time.time() if now is None else now):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
        raise CredsError(f"its JWT expired at {when}: ask the operator for a new one")
    public = _public_key(seed)
    if public != subject:
        raise CredsError(
            f"its seed is of user {public}, but its JWT was made for {subject}: the two halves"
            " belong to different users"
        )
    issuer_account = nats.get("issuer_account") if isinstance(nats, dict) else None
    account = issuer_account if isinstance(issuer_account, str) else issuer
    return Creds(jwt, seed, subject, str(claims.get("name", "")), account)


def _claims(jwt: str) -> dict[str, Any]:
    parts = jwt.split(".")
    if len(parts) != 3:
        raise CredsError("its JWT is not three dot-separated parts")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise CredsError("its JWT's claims do not decode (base64url JSON)") from None
    if not isinstance(claims, dict):
        raise CredsError("its JWT's claims are not a JSON object")
    return claims


def _public_key(seed: str) -> str:
    import nkeys  # type: ignore[import-untyped]

    if not seed.startswith("SU"):
        raise CredsError("its seed is not a user nkey seed (SU...)")
    damaged = CredsError("its seed does not decode (a damaged nkey seed)")
    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
        if len(raw) < 3 or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
            raise damaged  # nkeys.from_seed does not check the checksum
        return str(nkeys.from_seed(bytearray(seed.encode())).public_key.decode())
    except CredsError:
        raise
    except Exception:  # nkeys raises its own errors, and binascii's, for a damaged seed
        raise damaged from None
