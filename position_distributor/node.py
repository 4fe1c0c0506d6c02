"""Node: one whole Position Distributor node (store, engine, peer), for the CLI and Python code."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import math
import os
import sqlite3
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import janus
from loguru import logger

from . import auth
from .aioloop import AioLoop
from .connection import Limits
from .dispatcher import EventDispatcher
from .engine import DEFAULT_MAX_SYMBOLS, Engine, Output, Subscriber
from .limits import LOG_INTERVAL, LimitRow, LimitsError, LimitWatcher, load_limits
from .links import LinkTransport
from .peer import Peer, PeerStatus
from .riskview.settings import HttpError, HttpSettings
from .store import JournalEntry, SnapshotInfo, Store, StoreError
from .transport import TlsError, make_tls_contexts
from .types import (
    MAX_PORT,
    MAX_SYMBOL_LENGTH,
    MAX_TRADE_ID_LENGTH,
    Position,
    format_rows,
    valid_strategy,
    valid_symbol,
    valid_trade_id,
)

if TYPE_CHECKING:
    from .natslink import NatsSettings
    from .riskview.server import RiskView

__all__ = ["Config", "Node", "NodeError", "Updates", "UpdatesOverflow"]


class NodeError(Exception):
    """The node cannot start (bad configuration, busy port, unusable store) or was misused."""


class UpdatesOverflow(Exception):
    """An ``updates()`` consumer fell more than ``maxsize`` changes behind and was cut off.

    Everything delivered before is correct; to carry on, read ``positions()`` for the current
    view and subscribe again.
    """


@dataclass(frozen=True)
class Config:
    """Everything a node needs to run; the CLI builds one from its arguments."""

    name: str
    port: int = 0
    peers: tuple[tuple[str, int], ...] = ()
    data_dir: Path = Path("data")
    bind: str = "127.0.0.1"
    limits: Limits = field(default_factory=Limits)
    recovery_timeout: float = 5.0
    fsync: bool = False
    snapshot_at: dt.time | None = None  # local time of the daily end-of-day snapshot
    relay: bool = False  # forward changes between peers, for a partial mesh
    secret_file: Path | None = None  # cluster secrets, one per line (see auth.py)
    tls_cert: Path | None = None  # this node's certificate, for mutual TLS
    tls_key: Path | None = None
    tls_ca: Path | None = None  # the CA that signs every node's certificate
    insecure: bool = False  # allow a non-loopback bind with neither secret nor TLS
    max_symbols: int = DEFAULT_MAX_SYMBOLS  # per strategy, own and peers'
    recover: bool = False  # recover own positions from peers at start (a restored store)
    nats: NatsSettings | None = None  # travel through a NATS JetStream bucket, not a mesh
    http: HttpSettings | None = None  # the risk view's web server (--http)
    limits_file: Path | None = None  # exposure limits, symbol,limit per line (--limits)
    limits_log_interval: float = LOG_INTERVAL  # a symbol's crossings logged at most this often
    digest_interval: float = 2.0  # seconds between digests of own positions sent to peers

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def authenticated(self) -> bool:
        """Whether peers must prove who they are (a cluster secret, or TLS, or both)."""
        return self.secret_file is not None or self.tls

    def __post_init__(self) -> None:
        if not valid_strategy(self.name):
            raise NodeError(
                f"invalid strategy name {self.name!r}: use 1-64 of letters, digits, '.', '_', '-'"
            )
        if not 0 <= self.port <= MAX_PORT:
            raise NodeError(f"invalid port {self.port}: expected 0-{MAX_PORT}")
        if self.recovery_timeout < 0:
            raise NodeError("recovery timeout must not be negative")
        if not 0 < self.limits_log_interval <= 86_400:
            raise NodeError("--limits-log-interval must be above 0 and at most 86400 seconds")
        if self.http is not None:
            try:
                self.http.check()
            except HttpError as exc:
                raise NodeError(str(exc)) from exc
        if self.nats is not None:
            mesh = [
                what
                for what, given in (
                    ("PORT", self.port != 0),
                    ("peers", bool(self.peers)),
                    ("--relay", self.relay),
                    ("--secret-file", self.secret_file is not None),
                    ("--tls-cert", self.tls_cert is not None),
                )
                if given
            ]
            if mesh:
                raise NodeError(
                    f"--nats replaces the mesh: drop {', '.join(mesh)} (NATS security is"
                    " --nats-user, --nats-nkey and --nats-tls-*)"
                )
            return
        tls = (self.tls_cert, self.tls_key, self.tls_ca)
        if any(path is not None for path in tls) and any(path is None for path in tls):
            raise NodeError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
        if not self.authenticated and not self.insecure and not _is_loopback(self.bind):
            raise NodeError(
                f"refusing to listen on {self.bind} with neither --secret-file nor TLS: anyone"
                " who can reach it could read and write positions (--insecure to do it anyway)"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: not known to be loopback


_END = None  # the node stopped: the iterator ends
_OVERFLOW = "overflow"  # the consumer fell too far behind


class Updates(Subscriber):
    """Every change a node applies from now on, for asyncio code: ``async for p in updates``.

    Bridged from the engine's threads by a janus queue. Bounded: a consumer more than
    ``maxsize`` changes behind (beyond the batch it is taking) gets ``UpdatesOverflow`` once
    it has taken what was queued; the node never blocks or buffers without bound for it.
    The iteration ends when the node stops. Subscribed from creation, so nothing applied
    after ``Node.updates()`` returns is missed; ``aclose()`` (or ``async with``) unsubscribes.
    """

    def __init__(self, engine: Engine, maxsize: int) -> None:
        # Checked here: janus 2.0 (on Python 3.10+) makes a queue outside a running loop
        # without a word, so it no longer refuses a call from plain threaded code.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise NodeError("updates() is for asyncio code: call it in a running loop") from None
        self._bridge: janus.Queue[Any] = janus.Queue()
        self._engine = engine
        self._maxsize = maxsize
        # Mutex protecting _pending (changes delivered, not yet taken) and overflowed.
        self._lock = threading.Lock()
        self._pending = 0
        self.overflowed = False
        self._batch: collections.deque[Position] = collections.deque()
        self._closed = False
        engine.add_subscriber(self)

    # Engine side (its threads).

    def deliver(self, changes: list[Position]) -> None:
        with self._lock:
            if self.overflowed:
                return
            if self._pending and self._pending + len(changes) > self._maxsize:
                self.overflowed = True
                self._bridge.sync_q.put_nowait(_OVERFLOW)
                return
            self._pending += len(changes)
        self._bridge.sync_q.put_nowait(changes)

    def close(self) -> None:
        with self._lock:
            if not self.overflowed:
                self._bridge.sync_q.put_nowait(_END)

    # Consumer side (asyncio).

    def __aiter__(self) -> Updates:
        return self

    async def __anext__(self) -> Position:
        while not self._batch:
            if self._closed:
                raise StopAsyncIteration
            changes = await self._bridge.async_q.get()
            if changes is _END:
                await self.aclose()
                raise StopAsyncIteration
            if changes is _OVERFLOW:
                await self.aclose()
                raise UpdatesOverflow(
                    f"updates consumer fell more than {self._maxsize} changes behind"
                )
            with self._lock:
                self._pending -= len(changes)
            self._batch.extend(changes)
        return self._batch.popleft()

    async def aclose(self) -> None:
        """Unsubscribe; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._engine.remove_subscriber(self)
        self._bridge.close()
        await self._bridge.wait_closed()

    async def __aenter__(self) -> Updates:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Node:
    """One strategy's node: ``start()``, ``trade()``, ``positions()``, ``updates()``, ``stop()``.

    Rows of applied changes are written to ``out`` (the CLI passes stdout; ``None`` writes
    nothing), and an ``error:`` line for each batch of trades the store could not commit to
    ``err`` (the CLI passes stderr). Use it as a context manager to stop it for sure.
    """

    def __init__(
        self, config: Config, *, out: IO[str] | None = None, err: IO[str] | None = None
    ) -> None:
        self.config = config
        self.output = Output(out)
        self.errors = Output(err)  # ``error:`` lines for trades refused (the CLI: stderr)
        self._dispatcher = EventDispatcher()
        self._store: Store | None = None
        self._peer: Peer | None = None  # the mesh's transport (None on NATS)
        self._links: LinkTransport | None = None  # the transport, mesh or NATS
        self._engine: Engine | None = None
        self._state = "new"
        self._stop_timer = threading.Event()
        self._warnings: list[str] = []
        self._secrets: list[bytes] | None = None
        self.failure: str | None = None  # why the node failed, if it did (a bug)
        # Called (from the failed thread) when the node can no longer work; the CLI stops.
        self.on_failure: Callable[[str], None] | None = None
        self._timer: threading.Thread | None = None
        self._aio: AioLoop | None = None  # started by the first asyncio service (aioloop())
        self._watcher: LimitWatcher | None = None  # with --limits
        self.risk_view: RiskView | None = None  # with --http
        # Mutex serializing start() and stop().
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def port(self) -> int:
        """The port this node listens on (the one chosen by the OS if configured as 0)."""
        if self._links is None:
            raise NodeError(f"node {self.name} has not started")
        return self._peer.port if self._peer is not None else 0

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    @property
    def http_port(self) -> int:
        """The port of the risk view (the one chosen by the OS if configured as 0)."""
        if self.risk_view is None:
            raise NodeError(f"node {self.name} has no --http")
        return self.risk_view.port

    def limits(self) -> list[LimitRow] | None:
        """Each symbol held or given a limit, with its exposure and limit; None without
        ``--limits``."""
        self._started()
        return None if self._watcher is None else self._watcher.rows()

    def reload_limits(self) -> bool:
        """Read the ``--limits`` file again (SIGHUP). A bad file: an ERROR naming the line,
        and the limits in force stay. Returns whether the new limits are in force."""
        path = self.config.limits_file
        if path is None or self._watcher is None:
            logger.warning("no --limits file to reload")
            return False
        try:
            limits = load_limits(path)
        except LimitsError as exc:
            logger.error("{}; the limits in force stay", exc)
            return False
        self._watcher.reload(limits)
        logger.info("limits reloaded from {}: {} limit(s)", path, len(limits))
        if self.risk_view is not None:
            self.risk_view.limits_reloaded()
        return True

    @property
    def recovering(self) -> bool:
        """Whether typed trades are held until peers send this node's positions back."""
        return self._engine is not None and self._engine.recovering

    def start(self) -> Node:
        """Listen, open the store, print the stored view, dial the peers, start the consumers.

        Raises ``NodeError`` with one clear sentence if the port or the store is unusable;
        nothing is logged or printed before both are known to be good.
        """
        with self._lock:
            if self._state != "new":
                raise NodeError(f"node {self.name} is {self._state}; a Node starts once")
            self._state = "starting"
            try:
                self._start()
            except BaseException:
                self._state = "stopped"
                raise
            self._state = "running"
        return self

    def _start(self) -> None:
        """What start() does, under the node lock."""
        config = self.config
        limits = None
        if config.limits_file is not None:
            try:
                limits = load_limits(config.limits_file)
            except LimitsError as exc:
                raise NodeError(str(exc)) from exc
        if config.nats is not None:
            links, store = self._open_nats(config.nats)
        else:
            links, store = self._open_mesh()
        self._links, self._store = links, store
        try:
            if config.recover:
                store.mark_needs_recovery()
            self._engine = self._engine_for(links, store)
        except StoreError as exc:
            store.close()
            links.stop()
            raise NodeError(str(exc)) from exc
        stored = self._engine.positions()
        if limits is not None:
            self._watcher = LimitWatcher(limits, stored, interval=config.limits_log_interval)
            self._engine.add_subscriber(self._watcher)
        if config.http is not None:
            try:
                self._start_risk_view(config.http)
            except NodeError:
                store.close()
                links.stop()
                if self._aio is not None:
                    self._aio.stop()
                raise
        logger.info("store {} holds {} position(s)", store.path, len(stored))
        if self._peer is not None:
            self._say_how_peers_are_checked(self._secrets, self._peer.port)
        self.output.write(format_rows(stored))
        links.start()
        self._engine.start()
        if config.snapshot_at is not None:
            self._timer = threading.Thread(
                target=self._take_daily_snapshots,
                args=(config.snapshot_at,),
                name="snapshot-timer",
                daemon=True,
            )
            self._timer.start()

    def _start_risk_view(self, settings: HttpSettings) -> None:
        """Start the web server on the asyncio loop (bound before anything is printed)."""
        from .riskview.server import RiskView  # aiohttp is loaded only by a node that serves

        assert self._engine is not None
        view = RiskView(self, self._engine, settings, self._watcher)
        try:
            warnings = view.load_credentials()
            aio = self._ensure_aioloop()
            view.aio = aio
            aio.call(view.start(), timeout=30)
        except HttpError as exc:
            raise NodeError(str(exc)) from exc
        for warning in warnings:
            logger.warning(warning)
        aio.on_stop(view.stop)
        self.risk_view = view

    def _engine_for(self, links: LinkTransport, store: Store) -> Engine:
        """The engine on ``store``, whose contents it loads (``StoreError`` if it cannot)."""
        config = self.config
        try:
            return Engine(
                config.name,
                self._dispatcher,
                links,
                store,
                out=self.output,
                err=self.errors,
                recovery_timeout=config.recovery_timeout,
                relay=config.relay,
                max_symbols=config.max_symbols,
                on_fatal=self._on_fatal,
                digest_interval=config.digest_interval,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {store.path}: {exc}") from exc

    def _open_mesh(self) -> tuple[Peer, Store]:
        """Listen and open the store, or raise NodeError (nothing left open)."""
        config = self.config
        secrets, tls = self._credentials()
        self._secrets = secrets
        peer = Peer(
            config.name,
            self._dispatcher,
            bind=config.bind,
            port=config.port,
            peers=config.peers,
            limits=config.limits,
            relay=config.relay,
            secrets=secrets,
            tls=tls,
        )
        try:
            peer.listen()
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise NodeError(f"cannot listen on {config.bind}:{config.port}: {why}") from exc
        try:
            store = Store(config.data_dir, config.name, fsync=config.fsync)
        except StoreError as exc:
            peer.stop()
            raise NodeError(str(exc)) from exc
        self._peer = peer
        return peer, store

    def _open_nats(self, settings: NatsSettings) -> tuple[LinkTransport, Store]:
        """Open the store, connect to NATS and check the bucket, or raise NodeError."""
        from .natslink import NatsError, NatsLink

        config = self.config
        try:
            store = Store(config.data_dir, config.name, fsync=config.fsync)
        except StoreError as exc:
            raise NodeError(str(exc)) from exc
        link = NatsLink(config.name, self._dispatcher, settings, self._ensure_aioloop())
        try:
            link.open()
        except NatsError as exc:
            store.close()
            self._ensure_aioloop().stop()  # a node that did not start leaves no thread
            raise NodeError(str(exc)) from exc
        return link, store

    def _on_fatal(self, reason: str) -> None:
        """A consumer thread died: record why and tell whoever runs the node."""
        self.failure = reason
        if self.on_failure is not None:
            self.on_failure(reason)

    def _credentials(
        self,
    ) -> tuple[list[bytes] | None, tuple[ssl.SSLContext, ssl.SSLContext] | None]:
        """Load the cluster secrets and the TLS contexts the config names, or say why not."""
        config = self.config
        secrets = None
        if config.secret_file is not None:
            try:
                secrets, warning = auth.load_secrets(config.secret_file)
            except auth.SecretError as exc:
                raise NodeError(str(exc)) from exc
            if warning:
                self._warnings.append(warning)
        tls = None
        if config.tls_cert is not None:
            assert config.tls_key is not None and config.tls_ca is not None
            try:
                tls = make_tls_contexts(config.tls_cert, config.tls_key, config.tls_ca)
            except TlsError as exc:
                raise NodeError(str(exc)) from exc
        return secrets, tls

    def _say_how_peers_are_checked(self, secrets: list[bytes] | None, port: int) -> None:
        config = self.config
        for warning in self._warnings:
            logger.warning(warning)
        checks = []
        if secrets:
            checks.append(f"a cluster secret ({len(secrets)} accepted)")
        if config.tls:
            checks.append("TLS certificates naming their strategy")
        if checks:
            logger.info("peers must prove who they are: {}", " and ".join(checks))
        else:
            # On a loopback address (the default) this is the normal local setup: INFO.
            log = logger.info if _is_loopback(config.bind) else logger.warning
            log(
                "no --secret-file or TLS: any process that can reach {}:{} can read and write"
                " positions",
                config.bind,
                port,
            )

    def stop(self) -> None:
        """Apply queued trades, flush them to peers, close every connection and thread."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                if self._aio is not None:
                    self._aio.stop()
                return
            self._state = "stopping"
            assert self._engine and self._links and self._store
            self._stop_timer.set()
            if self._timer is not None:
                self._timer.join()
            self._engine.stop_trades()
            self._links.stop()
            if self._aio is not None:
                self._aio.stop()  # its services' stop hooks first: within a second
            self._engine.stop()
            self._store.close()
            self._state = "stopped"
        logger.info("{} stopped", self.name)

    def __enter__(self) -> Node:
        if self._state == "new":
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def trade(
        self, symbol: str, quantity: float, *, trade_id: str | None = None
    ) -> Future[Position]:
        """Apply a trade of ``quantity`` (a signed delta) in ``symbol`` to this node's position.

        With a ``trade_id`` (1-64 of letters, digits, ``. _ : / -``; per strategy), the trade
        is applied at most once, across restarts: the same ID with the same symbol and
        quantity again is not applied, and its future gets the position the first one
        produced; the same ID with another trade fails with ``TradeError``.

        Returns a future set to the resulting position once it is committed to the store
        (the moment its row is printed), or failed with ``TradeNotStored`` if the store could
        not commit it (a full disk: nothing of it applied; trade again once it is fixed).
        Raises ``ValueError`` for a bad symbol or quantity.
        """
        if not valid_symbol(symbol):
            raise ValueError(
                f"invalid symbol {symbol!r}:"
                f" use 1-{MAX_SYMBOL_LENGTH} of letters, digits, . _ : / -"
            )
        try:
            ok = isinstance(quantity, int | float) and not isinstance(quantity, bool)
            value = float(quantity) if ok else math.nan
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value) or value == 0:
            raise ValueError(f"invalid quantity {quantity!r}: expected a finite non-zero number")
        if trade_id is not None and not valid_trade_id(trade_id):
            raise ValueError(
                f"invalid trade ID {trade_id!r}: use 1-{MAX_TRADE_ID_LENGTH} of letters,"
                " digits, . _ : / -"
            )
        future: Future[Position] = Future()
        if not self._started().submit(symbol, value, future, trade_id):
            raise NodeError(f"node {self.name} is stopping")
        return future

    def submit_many(self, trades: list[tuple[str, float, None, str | None]]) -> None:
        """Queue already validated ``(symbol, quantity, None, trade_id)`` trades at once (the
        console's path)."""
        if not self._started().submit_many(trades):
            raise NodeError(f"node {self.name} is stopping")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every trade submitted so far is applied (or refused); False on timeout.

        While the node recovers a lost store, that includes waiting for the recovery.
        """
        try:
            self._started().barrier().result(timeout)
        except TimeoutError:
            return False
        return True

    def positions(self) -> list[Position]:
        """Every position this node holds, sorted by strategy then symbol."""
        return self._started().positions()

    def exposure(self) -> dict[str, float]:
        """The firm's net position per symbol, over every strategy."""
        return self._started().exposure()

    def peers(self) -> list[PeerStatus]:
        """Each peer: name, address, state, seconds since last heard."""
        self._started()
        assert self._links is not None
        return self._links.status()

    def links(self) -> list[PeerStatus]:
        """What ``peers()`` says, at any time (empty before the start): for code that runs
        while the node starts and stops (the risk view). Mesh or NATS alike."""
        links = self._links
        return [] if links is None else links.status()

    def history(self, symbol: str, limit: int = 20) -> list[JournalEntry]:
        """The last ``limit`` own trades in ``symbol`` from the journal, oldest first."""
        return self._started().history(symbol, limit)

    def snapshot(self, label: str = "manual") -> SnapshotInfo:
        """Copy the whole view (every strategy) into the store's snapshots, atomically."""
        info = self._started().snapshot(label)
        logger.info("snapshot {} {!r} taken: {} position(s)", info.id, info.label, info.size)
        return info

    def _take_daily_snapshots(self, at: dt.time) -> None:
        """Timer thread: a snapshot labelled ``eod YYYY-MM-DD`` every day at ``at``, local time.

        It waits half the time left, then looks at the clock again, so a daylight-saving
        change (or a wall clock set by hand) is caught up with long before the time comes.
        A snapshot that fails (a full disk) is logged; the next day's is taken all the same.
        """
        try:
            while True:
                now = dt.datetime.now()
                target = dt.datetime.combine(now.date(), at)
                if target <= now:
                    target += dt.timedelta(days=1)
                left = (target - now).total_seconds()
                if self._stop_timer.wait(left if left <= 60 else left / 2):
                    return
                if dt.datetime.now() < target:
                    continue  # woken early on purpose, or the clock moved: look again
                label = f"eod {target.date().isoformat()}"
                try:
                    self.snapshot(label)
                except Exception as exc:
                    logger.error(
                        "snapshot {!r} failed: {}; the next one is due tomorrow", label, exc
                    )
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("daily snapshot timer failed")

    def updates(self, maxsize: int = 10_000) -> Updates:
        """Every change applied from now on (own trades and peers' updates), in order, as an
        async iterator for asyncio code (a dashboard, a risk job); see ``Updates``."""
        return Updates(self._started(), maxsize)

    def aioloop(self) -> AioLoop:
        """The node's one asyncio loop thread, started on first use (``--http``, ``--nats``).

        Stopped by ``stop()`` after the peers and before the engine, so its services' stop
        hooks (``AioLoop.on_stop``) can still read the book; see ``aioloop.py``.
        """
        with self._lock:
            if self._state not in ("new", "running"):
                raise NodeError(f"node {self.name} is {self._state}")
            return self._ensure_aioloop()

    def _ensure_aioloop(self) -> AioLoop:
        """The asyncio loop thread, started now if needed. Caller holds the node lock."""
        assert self._lock.locked()
        if self._aio is None:
            self._aio = AioLoop().start()
        return self._aio

    def _started(self) -> Engine:
        if self._engine is None or self._state not in ("running", "stopping"):
            raise NodeError(f"node {self.name} is not running (state: {self._state})")
        return self._engine
