"""What ``--http`` says, checked without importing the web server (a node without ``--http``
never loads aiohttp)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HttpError", "HttpSettings", "is_loopback"]


class HttpError(Exception):
    """The risk view cannot start: a bad flag, token file, certificate, or a busy port."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HttpSettings:
    """What ``--http`` and its companions say."""

    host: str
    port: int
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def check(self) -> None:
        """Raise ``HttpError`` for a combination of flags that must not start."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise HttpError("HTTPS needs both --http-tls-cert and --http-tls-key")
        if not is_loopback(self.host) and self.token_file is None and not self.insecure:
            raise HttpError(
                f"refusing --http {self.address} without --http-token-file: anyone who can"
                " reach it could read every position (bind a loopback address, give a token"
                " file, or --insecure to do it anyway)"
            )
