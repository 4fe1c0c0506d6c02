"""The risk desk's live view: a web page, a JSON and CSV API, Prometheus metrics (``--http``).

``settings`` is light; ``server`` (aiohttp, prometheus_client) is imported only by a node that
serves the view.
"""

from __future__ import annotations

from .settings import HttpError, HttpSettings, is_loopback

__all__ = ["HttpError", "HttpSettings", "is_loopback"]
