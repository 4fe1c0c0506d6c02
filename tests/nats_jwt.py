"""NATS operator mode (decentralised JWT auth) for the tests, minted in Python without ``nsc``.

An operator signs accounts, an account signs users: each is an nkey (ed25519, ``nkeys``) and
a JWT ``base64url(header).base64url(claims).base64url(signature)``, header
``{"typ":"JWT","alg":"ed25519-nkey"}``, signed by the issuer's key over the first two parts.
The claims follow nats-io/jwt v2: ``jti``, ``iat``, ``iss``, ``sub``, ``name`` and ``nats``
(``type``, ``version: 2`` and the kind's fields: an account's ``limits``, JetStream's among
them; a user's ``pub``/``sub`` permissions). A user's ``.creds`` file is its JWT and its seed
between the armour lines ``nsc generate creds`` writes.

``Operator.server_config`` is the nats-server configuration of the memory resolver: the
operator's JWT, the system account, and every account's JWT preloaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import nkeys

__all__ = ["Account", "Identity", "Operator", "creds_text"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Identity:
    """One nkey: its seed (``SO``/``SA``/``SU``...) and public key (``O``/``A``/``U``...)."""

    seed: str
    public: str

    @classmethod
    def new(cls, prefix: int) -> Identity:
        seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix)
        return cls(seed.decode(), nkeys.from_seed(seed).public_key.decode())

    def sign_jwt(self, subject: str, name: str, nats: dict[str, Any]) -> str:
        """A JWT about ``subject``, issued (signed) by this identity."""
        claims: dict[str, Any] = {
            "jti": "",
            "iat": int(time.time()),
            "iss": self.public,
            "name": name,
            "sub": subject,
            "nats": {**nats, "version": 2},
        }
        # The ID: base32 of a hash of the claims without it, as nats-io/jwt computes it.
        digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
        claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
        signed = (
            _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = nkeys.from_seed(self.seed.encode()).sign(signed.encode())
        return f"{signed}.{_b64(signature)}"


def creds_text(jwt: str, seed: str) -> str:
    """A user's ``.creds`` file, as ``nsc generate creds`` writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


@dataclass
class Account:
    """An account signed by the operator; ``jetstream`` gives it unlimited JetStream."""

    name: str
    operator: Identity
    jetstream: bool = True
    key: Identity = field(default_factory=lambda: Identity.new(nkeys.PREFIX_BYTE_ACCOUNT))

    @property
    def jwt(self) -> str:
        limits: dict[str, Any] = {
            "subs": _UNLIMITED,
            "data": _UNLIMITED,
            "payload": _UNLIMITED,
            "imports": _UNLIMITED,
            "exports": _UNLIMITED,
            "wildcards": True,
            "conn": _UNLIMITED,
            "leaf": _UNLIMITED,
        }
        if self.jetstream:
            limits.update(mem_storage=_UNLIMITED, disk_storage=_UNLIMITED)
            limits.update(streams=_UNLIMITED, consumer=_UNLIMITED)
        nats = {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
        return self.operator.sign_jwt(self.key.public, self.name, nats)

    def user_creds(
        self,
        name: str,
        *,
        publish: list[str] | None = None,
        subscribe: list[str] | None = None,
    ) -> str:
        """A new user's ``.creds`` text; ``publish``/``subscribe`` allow only those subjects
        (None: everything)."""
        return creds_text(*self.user(name, publish=publish, subscribe=subscribe))

    def user(
        self,
        name: str,
        *,
        publish: list[str] | None = None,
        subscribe: list[str] | None = None,
    ) -> tuple[str, str]:
        """A new user of this account: its JWT (signed by the account) and its seed."""
        user = Identity.new(nkeys.PREFIX_BYTE_USER)
        nats: dict[str, Any] = {
            "type": "user",
            "pub": {} if publish is None else {"allow": publish},
            "sub": {} if subscribe is None else {"allow": subscribe},
            "subs": _UNLIMITED,
            "data": _UNLIMITED,
            "payload": _UNLIMITED,
        }
        return self.key.sign_jwt(user.public, name, nats), user.seed

    def write_creds(self, path: Path, name: str, **kwargs: Any) -> Path:
        path.write_text(self.user_creds(name, **kwargs))
        return path


class Operator:
    """An operator, its system account, and the accounts it signs."""

    def __init__(self, name: str = "OP") -> None:
        self.name = name
        self.key = Identity.new(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = Account("SYS", self.key, jetstream=False)
        self.accounts: list[Account] = [self.system]

    def account(self, name: str, *, jetstream: bool = True) -> Account:
        account = Account(name, self.key, jetstream)
        self.accounts.append(account)
        return account

    @property
    def jwt(self) -> str:
        nats = {"type": "operator", "system_account": self.system.key.public}
        return self.key.sign_jwt(self.key.public, self.name, nats)

    def server_config(self, directory: Path) -> str:
        """The nats-server configuration lines of operator mode, with a memory resolver."""
        path = directory / "operator.jwt"
        path.write_text(self.jwt)
        preload = "\n".join(f"  {a.key.public}: {a.jwt}" for a in self.accounts)
        return (
            f'operator: "{path}"\n'
            f"system_account: {self.system.key.public}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n{preload}\n}}\n"
        )
