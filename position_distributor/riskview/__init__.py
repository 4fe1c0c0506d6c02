"""The risk desk's live view: a web page, a JSON and CSV API, Prometheus metrics (``--http``)."""

from __future__ import annotations

from .server import HttpError, HttpSettings, RiskView, is_loopback

__all__ = ["HttpError", "HttpSettings", "RiskView", "is_loopback"]
