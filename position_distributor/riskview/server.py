"""The risk view's HTTP server: the live page, the JSON and CSV API, /metrics and /healthz.

aiohttp on the node's asyncio loop (``aioloop.py``), started by ``AppRunner`` with a short
``shutdown_timeout``. Everything served is read-only: no request changes a position. See
docs/risk-view.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import janus
from aiohttp import web
from loguru import logger

from .. import auth
from ..aioloop import AioLoop, AioLoopError
from ..limits import LimitTable, LimitWatcher
from ..metrics import CONTENT_TYPE, NodeMetrics, Reading
from ..types import Position, valid_strategy, valid_symbol
from .hub import Feed, Hub
from .settings import HttpError, HttpSettings, is_loopback

if TYPE_CHECKING:
    from ..engine import Engine
    from ..node import Node

__all__ = ["RiskView"]

PING_INTERVAL: Final = 5.0  # seconds of silence after which a stream is sent a keep-alive
WRITE_TIMEOUT: Final = 10.0  # seconds a write to a stream may take before it is closed
STATUS_INTERVAL: Final = 1.0  # seconds between looks at the peers and the node's state
MAX_PENDING: Final = 20_000  # keys waiting in one stream before it gets a snapshot instead
MAX_BODY: Final = 16 * 1024  # bytes of a request body (only the login form has one)
SESSION_COOKIE: Final = "pd_session"
STATIC_FILES: Final = {
    "app.js": "application/javascript",
    "style.css": "text/css",
}
_SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self';"
    " connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


# The first word of a peer's state -> the bounded label of pd_peers{state=...}.
_STATE_LABELS: Final = {
    "connected": "connected",
    "connecting": "connecting",
    "not": "not_dialled",
    "unreachable": "unreachable",
    "disconnected": "disconnected",
    "refused": "refused",
    "standing": "standing_by",
}


def _timestamp_text(ns: int | None) -> str | None:
    return None if ns is None else str(ns)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _position_json(p: Position) -> dict[str, Any]:
    # Timestamps exceed 2**53: as strings, so JavaScript (and any JSON parser) keeps them exact.
    return {
        "strategy": p.strategy,
        "symbol": p.symbol,
        "net_position": p.net_position,
        "timestamp": str(p.timestamp),
    }


def _compact(positions: list[Position]) -> list[list[Any]]:
    """The page's form: ``[strategy, symbol, net, "timestamp"]``."""
    return [[p[0], p[1], p[2], str(p[3])] for p in positions]


class Tokens:
    """The accepted bearer tokens and the session cookie derived from the first."""

    def __init__(self, tokens: list[bytes]) -> None:
        self._tokens = tokens
        self._sessions = [_session_of(token) for token in tokens]

    @property
    def cookie(self) -> str:
        return self._sessions[0]

    def accepts(self, offered: str, *, session: bool = False) -> bool:
        """Constant-time comparison against every accepted token (or session value)."""
        candidate = offered.encode("utf-8", "replace")
        ok = False
        for known in self._sessions if session else self._tokens:
            expected = known.encode() if isinstance(known, str) else known
            ok |= hmac.compare_digest(candidate, expected)
        return ok


def _session_of(token: bytes) -> str:
    """The cookie value for ``token``: it proves the token was given, without being it."""
    return hmac.new(token, b"position-distributor risk view session v1", hashlib.sha256).hexdigest()


class RiskView:
    """The HTTP server of one node; ``start()`` and ``stop()`` run in the node's loop."""

    def __init__(
        self,
        node: Node,
        engine: Engine,
        settings: HttpSettings,
        watcher: LimitWatcher | None,
    ) -> None:
        self.node = node
        self.engine = engine
        self.settings = settings
        self.watcher = watcher
        self.tokens: Tokens | None = None
        self.ssl: ssl.SSLContext | None = None
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self._hub: Hub | None = None
        self._feed: Feed | None = None
        self._queue: janus.Queue[Any] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._snapshot_cache: tuple[int, int, bytes] | None = None
        self._status: dict[str, Any] = {}
        self._status_json = b"{}"
        self._stale_since: dict[str, float] = {}  # peer -> time.time() it was last seen going
        self._started_at = time.time()
        self._stopping = False
        self.aio: AioLoop | None = None  # the loop it runs on, set by the node
        self.metrics = NodeMetrics(node.name, engine.stats, self._reading)

    def load_credentials(self) -> list[str]:
        """Read the token file and the certificate (in the caller's thread, before start);
        return warnings to log. Raises ``HttpError``."""
        warnings = []
        settings = self.settings
        if settings.token_file is not None:
            try:
                tokens, warning = auth.load_secrets(settings.token_file)
            except auth.SecretError as exc:
                raise HttpError(f"--http-token-file: {exc}".replace("secret", "token")) from exc
            if warning:
                warnings.append(warning.replace("secret", "token"))
            self.tokens = Tokens(tokens)
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(settings.tls_cert, settings.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise HttpError(
                    f"cannot use --http-tls-cert {settings.tls_cert} and --http-tls-key"
                    f" {settings.tls_key}: {getattr(exc, 'strerror', None) or exc}"
                ) from exc
            self.ssl = context
        if self.tokens is not None and self.ssl is None and not is_loopback(settings.host):
            warnings.append(
                f"--http {settings.address} sends the token over plain HTTP: anyone on the"
                " path can read it (give --http-tls-cert and --http-tls-key)"
            )
        return warnings

    # Lifecycle (in the loop).

    async def start(self) -> None:
        """Subscribe to the engine, read the book, listen. Raises ``HttpError``."""
        queue: janus.Queue[Any] = janus.Queue()
        feed = Feed(queue)
        hub = Hub(queue, feed, max_pending=MAX_PENDING)
        self._queue, self._feed, self._hub = queue, feed, hub
        self.engine.add_subscriber(feed)  # first: a change after the read below is not missed
        hub.load(await asyncio.to_thread(self.engine.positions))
        app = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._headers, self._authenticate]
        )
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/static/{name}", self._static),
                web.post("/login", self._login),
                web.get("/logout", self._logout),
                web.get("/events", self._events),
                web.get("/api/positions", self._api_positions),
                web.get("/api/positions.csv", self._api_positions_csv),
                web.get("/api/exposure", self._api_exposure),
                web.get("/api/peers", self._api_peers),
                web.get("/api/limits", self._api_limits),
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
            ]
        )
        runner = web.AppRunner(app, shutdown_timeout=0.3, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(
            runner, self.settings.host, self.settings.port, ssl_context=self.ssl, backlog=128
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self.engine.remove_subscriber(feed)
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise HttpError(f"cannot serve --http {self.settings.address}: {why}") from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        await self._refresh_status()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(hub.run(), name="risk-view-hub"),
            loop.create_task(self._watch_status(), name="risk-view-status"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_failure)
        scheme = "https" if self.ssl else "http"
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        logger.info("risk view on {}://{}:{}/", scheme, host, self.port)

    async def stop(self) -> None:
        """Close the streams, stop listening, unsubscribe (well within a second)."""
        self._stopping = True
        if self._hub is not None:
            self._hub.close_streams()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._feed is not None:
            self.engine.remove_subscriber(self._feed)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=0.2)
        if self._queue is not None:
            self._queue.close()

    @property
    def hub(self) -> Hub:
        assert self._hub is not None
        return self._hub

    # Middlewares.

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        tokens = self.tokens
        if tokens is None or request.path.startswith("/static/") or request.path == "/login":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, offered = header.partition(" ")
        if scheme.lower() == "bearer" and tokens.accepts(offered.strip()):
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and tokens.accepts(cookie, session=True):
            return await handler(request)
        if request.path == "/" and "text/html" in request.headers.get("Accept", ""):
            return _login_page(status=401, failed=bool(header or cookie))
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "a bearer token is required (Authorization: Bearer ...)"}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="position-distributor"'},
        )

    # The page.

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_asset("index.html"), content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=STATIC_FILES[name], charset="utf-8")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.tokens is None:
            raise web.HTTPFound("/")
        try:
            form = await request.post()
        except (ValueError, web.HTTPException):
            raise web.HTTPBadRequest(text="a login form is expected") from None
        offered = form.get("token")
        if not isinstance(offered, str) or not self.tokens.accepts(offered.strip()):
            logger.warning("risk view: a wrong token was given by {}", request.remote)
            return _login_page(status=401, failed=True)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            SESSION_COOKIE,
            self.tokens.cookie,
            httponly=True,
            samesite="Strict",
            secure=self.ssl is not None,
            path="/",
        )
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``snapshot`` (the whole view), then ``changes``, ``status``,
        ``ping``. A stream that falls too far behind is sent a fresh ``snapshot``.

        Paced by the hub: it offers changes at most once per ``Hub.interval`` (a change after
        a quiet spell at once), so a stream writes at most that often plus a status when it
        changes. Waits on the stream's event alone: no timer per wait (the status task sends
        the pings); a write is bounded by ``WRITE_TIMEOUT``.
        """
        if self._stopping:
            raise web.HTTPServiceUnavailable(text="stopping")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        hub = self.hub
        stream = hub.open_stream()
        try:
            await _write(response, b"retry: 1000\n\n")
            while not stream.closing:
                if not stream.due:
                    stream.wake.clear()
                    await stream.wake.wait()
                    continue
                snapshot, changes, status = stream.take()
                parts = []
                if status or snapshot:
                    parts.append(b"event: status\ndata: " + self._status_json + b"\n\n")
                if snapshot:
                    parts.append(b"event: snapshot\ndata: " + self._snapshot_json() + b"\n\n")
                elif changes:
                    data = json.dumps(
                        {
                            "positions": _compact(changes),
                            "last_change": _timestamp_text(hub.last_change),
                        },
                        separators=(",", ":"),
                    )
                    parts.append(b"event: changes\ndata: " + data.encode() + b"\n\n")
                await _write(response, b"".join(parts) if parts else b"event: ping\ndata: {}\n\n")
                stream.last_sent = time.monotonic()
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the reader went away, stalled, or the server is stopping
        finally:
            hub.close_stream(stream)
        return response

    def _snapshot_json(self) -> bytes:
        hub = self.hub
        key = (hub.version, id(self.watcher.limits) if self.watcher else 0)
        if self._snapshot_cache is None or self._snapshot_cache[:2] != key:
            data = json.dumps(
                {
                    "positions": _compact(list(hub.mirror.values())),
                    "last_change": _timestamp_text(hub.last_change),
                },
                separators=(",", ":"),
            ).encode()
            self._snapshot_cache = (*key, data)
        return self._snapshot_cache[2]

    # The API.

    def _filters(self, request: web.Request) -> tuple[str | None, str | None]:
        strategy = request.query.get("strategy") or None
        symbol = request.query.get("symbol") or None
        if strategy is not None and not valid_strategy(strategy):
            raise web.HTTPBadRequest(text=f"invalid strategy {strategy[:80]!r}")
        if symbol is not None and not valid_symbol(symbol):
            raise web.HTTPBadRequest(text=f"invalid symbol {symbol[:80]!r}")
        return strategy, symbol

    async def _api_positions(self, request: web.Request) -> web.StreamResponse:
        strategy, symbol = self._filters(request)
        positions = self.hub.positions(strategy, symbol)
        return web.json_response([_position_json(p) for p in positions])

    async def _api_positions_csv(self, request: web.Request) -> web.StreamResponse:
        strategy, symbol = self._filters(request)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["strategy", "symbol", "net_position", "timestamp"])
        for p in self.hub.positions(strategy, symbol):
            writer.writerow([p.strategy, p.symbol, repr(p.net_position), p.timestamp])
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": 'inline; filename="positions.csv"'},
        )

    async def _api_exposure(self, request: web.Request) -> web.StreamResponse:
        limits = self._limits()
        body = {
            symbol: {
                "net": net,
                "limit": limits.limit(symbol),
                "breach": limits.breached(symbol, net),
            }
            for symbol, net in self.hub.exposure().items()
        }
        return web.json_response(body)

    async def _api_peers(self, request: web.Request) -> web.StreamResponse:
        peers = await asyncio.to_thread(self.node.links)
        body = [
            {
                "name": p.name,
                "address": p.address,
                "state": p.state,
                "connected": p.state.startswith("connected"),
                "last_heard": p.last_heard,
                "stale_since": _iso(self._stale_since.get(p.name or p.address))
                if not p.state.startswith("connected")
                else None,
            }
            for p in peers
        ]
        return web.json_response(body)

    async def _api_limits(self, request: web.Request) -> web.StreamResponse:
        limits = self._limits()
        return web.json_response({"limits": dict(limits.limits), "default": limits.default})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.hub.catch_up()  # pd_positions and pd_strategies count the mirror
        body = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        state = self._node_state()
        peers = await asyncio.to_thread(self.node.links)
        body = {
            "status": "ok" if state == "running" else state,
            "node": self.node.name,
            "links": [{"name": p.name, "address": p.address, "state": p.state} for p in peers],
        }
        return web.json_response(body, status=200 if state == "running" else 503)

    # Status: the node's state, the peers, the limits, pushed to the page when they change.

    def _node_state(self) -> str:
        state = self.node.state
        if self._stopping or state in ("stopping", "stopped"):
            return "stopping"
        if state != "running":
            return "starting"
        if self.node.recovering:
            return "recovering"
        return "running"

    def _limits(self) -> LimitTable:
        return self.watcher.limits if self.watcher is not None else LimitTable()

    async def _watch_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            await self._refresh_status()
            if self._hub is not None:
                self._hub.ping_idle(PING_INTERVAL)

    async def _refresh_status(self) -> None:
        peers = await asyncio.to_thread(self.node.links)
        now = time.time()
        rows = []
        seen = set()
        for p in peers:
            key = p.name or p.address
            seen.add(key)
            connected = p.state.startswith("connected")
            if connected:
                self._stale_since.pop(key, None)
                since = None
            else:
                since = self._stale_since.setdefault(key, now)
            rows.append(
                {
                    "name": p.name,
                    "address": p.address,
                    "state": p.state,
                    "connected": connected,
                    "stale_since": _iso(since),
                }
            )
        for key in list(self._stale_since):
            if key not in seen:
                del self._stale_since[key]
        limits = self._limits()
        status = {
            "node": self.node.name,
            "state": self._node_state(),
            "peers": rows,
            "limits": dict(limits.limits),
            "default_limit": limits.default,
            "started": _iso(self._started_at),
        }
        if status != self._status:
            self._status = status
            self._status_json = json.dumps(status, separators=(",", ":")).encode()
            if self._hub is not None:
                self._hub.status_changed()

    def limits_reloaded(self) -> None:
        """Called (from any thread) after the limits changed: push them to the pages."""
        if self._runner is not None and self.aio is not None:
            with contextlib.suppress(AioLoopError):  # stopping
                self.aio.spawn(self._refresh_status(), "risk-view-limits")

    def _reading(self) -> Reading:
        """What /metrics reads besides the engine's stats (in a worker thread)."""
        peers = self.node.links()
        by_state: dict[str, int] = {}
        for p in peers:
            state = _STATE_LABELS.get(p.state.split(" ")[0], "other")
            by_state[state] = by_state.get(state, 0) + 1
        hub = self.hub
        mirror = hub.mirror
        watcher = self.watcher
        limits = self._limits()
        return Reading(
            running=self._node_state() != "stopping",
            recovering=self.node.recovering,
            peers_connected=by_state.get("connected", 0),
            peers_by_state=by_state,
            positions=len(mirror),
            strategies=len({strategy for strategy, _ in list(mirror)}),
            limits=len(limits),
            breached=len(watcher.breached) if watcher is not None else 0,
            breach_crossings=watcher.crossings if watcher is not None else 0,
            streams=len(hub.streams),
        )


async def _write(response: web.StreamResponse, data: bytes) -> None:
    """Write to a stream; a reader that takes longer than WRITE_TIMEOUT is cut off.

    (``asyncio.timeout``, not ``wait_for``: no task per write.)"""
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(data)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).error("{} failed", task.get_name())


_ASSETS: dict[str, bytes] = {}


def _asset(name: str) -> bytes:
    """A file shipped in the package's ``static`` folder (cached after the first read)."""
    data = _ASSETS.get(name)
    if data is None:
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        _ASSETS[name] = data
    return data


def _login_page(*, status: int, failed: bool) -> web.Response:
    message = '<p class="error">That token is not accepted.</p>' if failed else ""
    html = _asset("login.html").decode().replace("<!--message-->", message)
    return web.Response(text=html, status=status, content_type="text/html")
