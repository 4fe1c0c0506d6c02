"""NatsLink: positions travel through a NATS JetStream key-value bucket instead of a mesh.

One ``LinkTransport`` (see ``links.py``) with one ``Link``, the bucket (named
``nats:BUCKET``, never a strategy name). Every node writes its own positions to the bucket,
one key per position (``natskeys.py``), and watches the whole bucket.

- **Publish.** ``publish`` (an engine thread, after the local commit, in commit order) puts
  each own change in the outbox: the latest own position per symbol not yet acknowledged by
  the bucket (at most one per symbol, so bounded by the symbol cap; a trade is never
  refused for it). The flusher (asyncio) puts the outbox to the bucket in batches, one key
  at a time in flight, each with the key's expected last revision; a wrong revision is
  looked at: what this node wrote itself (an acknowledgement lost) is taken as written,
  anything else is a second writer of this strategy, named in an ERROR. A put that was not
  acknowledged, whose value a re-read of the bucket found since, is taken as written too,
  not put twice. While no server is reachable the outbox waits, and is flushed when the
  connection is back.
- **Receive.** A watcher (an ordered consumer, last value per key) reads the bucket: its
  initial values are the sync (other strategies' positions, then this strategy's own as the
  echo, then ``SyncDone``), then live changes. After a reconnect, and when the watcher
  stalls (the stream holds newer revisions than it delivered, and it made no progress for a
  check interval), the bucket is read again and own positions reconciled, retrying while a
  replicated stream elects its leader.
- **Bad entries** (a key of another shape, a value that does not decode, a position
  claiming another strategy or symbol than its key's) are logged once per key a minute and
  skipped.

Threads: the asyncio loop (``AioLoop``) runs the client, the watcher, the flusher and the
stall check; ``nats-events`` takes what the loop received from a janus queue and fires the
dispatcher's events, so the engine's handlers never run in the loop (the loop never blocks
on a lock) and the engine never awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loguru import logger

from .aioloop import AioLoop
from .dispatcher import Event, EventDispatcher
from .links import Link, PeerStatus
from .natscreds import CredsError, parse_creds
from .natskeys import BadEntry, decode_value, encode_key, encode_value, escape
from .types import Position
from .wire import SyncDone

__all__ = ["NatsError", "NatsLink", "NatsSettings"]

_LOG_AGAIN: Final = 60.0  # seconds before a bad entry under the same key is logged again
_MAX_LOGGED_KEYS: Final = 4096  # bad keys remembered for throttling (bounded)
_BATCH: Final = 256  # puts in flight at once (each on its own key)
_MAX_ATTEMPTS: Final = 8  # unacknowledged values remembered per key (lost-ack check)
_KV_OP: Final = "KV-Operation"
_DONE: Final = {"DEL": "deleted", "PURGE": "purged"}


class NatsError(Exception):
    """The link cannot start: no server reachable, credentials refused, no JetStream, or the
    bucket missing or not as the flags say."""


@dataclass(frozen=True)
class NatsSettings:
    """How to reach the NATS servers and which bucket to use (``--nats*`` flags)."""

    servers: tuple[str, ...]
    bucket: str = "positions"
    replicas: int = 1
    create_bucket: bool = False
    user: str | None = None
    password_file: Path | None = None
    nkey_file: Path | None = None  # an nkey seed file
    creds_file: Path | None = None  # a .creds file (operator/JWT mode): a user's JWT and seed
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 2.0
    reconnect_wait: float = 0.2
    request_timeout: float = 1.0  # each JetStream request (a put, a read); retried after
    check_interval: float = 1.0  # the stall check's period (seconds)

    @property
    def stream(self) -> str:
        return f"KV_{self.bucket}"

    def describe(self) -> str:
        return ",".join(self.servers)


class _Bucket:
    """The one ``Link`` of a NatsLink: the bucket every node shares."""

    relays = False

    def __init__(self, owner: NatsLink) -> None:
        self._owner = owner
        self.name = f"nats:{owner.settings.bucket}"

    def send_sync(self, own: list[Position], relayed: list[Position], echo: list[Position]) -> None:
        """Reconcile: own positions the bucket lacks, or holds older, go to the outbox."""
        self._owner.reconcile(own)

    def close(self, reason: str) -> None:
        """What the bucket sent could not be used: read the bucket again."""
        self._owner.read_again(reason)

    # No digests over NATS: the bucket holds the owner's values (docs/nats.md).

    def send_digest(self, count: int, digest: bytes) -> None:
        pass

    def ask_repair(self, count: int, digest: bytes) -> None:
        pass

    def send_repair(self, own: list[Position]) -> None:
        pass

    def __repr__(self) -> str:
        return f"<Bucket {self.name}>"


def _describe(exc: BaseException) -> str:
    text = str(exc).removeprefix("nats: ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsLink:
    """Positions of node ``name`` through a NATS JetStream bucket; see the module docstring."""

    def __init__(
        self,
        name: str,
        dispatcher: EventDispatcher,
        settings: NatsSettings,
        aio: AioLoop,
    ) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.settings = settings
        self._aio = aio
        self.bucket = _Bucket(self)
        self._prefix = f"$KV.{settings.bucket}."
        self._own_prefix = f"{escape(name)}."
        # Mutex protecting _outbox, _state, _last_error, _seen and the counters below.
        self._lock = threading.Lock()
        self._outbox: dict[str, Position] = {}  # symbol -> latest own position not yet put
        self._state = "not started"
        self._server = ""
        self._last_error = ""
        self._last_heard = 0.0  # monotonic time of the last value received
        self._seen: dict[str, tuple[int, float]] = {}  # strategy -> (keys, last heard)
        self.puts = 0  # values written to the bucket
        self.received = 0  # values received from the bucket (own echoes included)
        self.rereads = 0  # times the bucket was read again (reconnect, stall)
        self.longest_gap = 0.0  # the longest stretch of failed puts (seconds)
        self._wake_pending = False  # a flush is scheduled (under _lock)
        self._reconcile_against: dict[str, Position] = {}  # the bucket's own values, last read
        self._against_epoch = 0  # the read that _reconcile_against comes from
        self._epoch = 0  # reads of the bucket begun (under _lock)
        # Own positions this node is putting itself, so a reconcile need not (under _lock):
        # symbol -> (the read they were handed to the flusher or written in, timestamp), and
        # symbol -> timestamp of the put in flight.
        self._handled: dict[str, tuple[int, int]] = {}
        self._in_flight: dict[str, int] = {}
        # Loop-only state (touched only in the asyncio thread).
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._sub: Any = None
        self._generation = 0  # which watcher the inbox entries belong to
        self._inbox: list[tuple[int, Any]] = []
        self._inbox_ready: asyncio.Event | None = None
        self._flush_ready: asyncio.Event | None = None
        self._reread: asyncio.Event | None = None
        self._initial_done: asyncio.Event | None = None
        self._initial: list[Position | SyncDone] = []
        self._initial_own: dict[str, Position] = {}
        self._reading = False  # the current watcher is still delivering its initial values
        self._read_epoch = 0  # the epoch of the current watcher's read
        self._read_once = False  # the bucket was read: the own keys' revisions are known
        self._seen_rev = 0  # highest stream sequence the watcher delivered
        self._revs: dict[str, tuple[int, bytes]] = {}  # own symbol -> the key's last known
        # revision, and the value it holds
        self._attempts: dict[str, list[bytes]] = {}  # own symbol -> values put, not acked
        self._sent_ts: dict[str, int] = {}  # own symbol -> newest timestamp this node put
        self._logged: dict[str, float] = {}  # key -> when last logged as bad
        self._connect_errors: list[str] = []  # what the client reported while connecting
        self._stopping = False
        self._bridge: Any = None
        self._events: threading.Thread | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # The seam (any thread).

    def open(self) -> None:
        """Connect and check (or create) the bucket; raises ``NatsError`` with one clear
        sentence if that fails. Nothing is received before ``start``."""
        settings = self.settings
        budget = settings.connect_timeout * (len(settings.servers) + 1) + 2 * (
            settings.request_timeout + 1
        )
        try:
            self._aio.call(self._open(), timeout=budget)
        except TimeoutError:
            self._aio.call(self._close(), timeout=5)
            errors = self._connect_errors
            why = f": {errors[-1]}" if errors else ""
            raise NatsError(
                f"no answer from NATS at {settings.describe()} in {budget:g}s{why}"
            ) from None

    def start(self) -> None:
        """Watch the bucket and publish, in the background (``open`` first)."""
        self._bridge = self._aio.make_janus(64)
        self._events = threading.Thread(target=self._fire_events, name="nats-events", daemon=True)
        self._events.start()
        self._aio.call(self._spawn(), timeout=5)

    def stop(self, *, flush_timeout: float = 1.0) -> None:
        """Put what the outbox holds (for up to ``flush_timeout``), close, end the threads."""
        if self._bridge is None:
            return
        with contextlib.suppress(Exception):
            self._aio.call(self._drain(flush_timeout), timeout=flush_timeout + 3)
        with contextlib.suppress(Exception):
            self._aio.call(self._close(), timeout=5)
        self._bridge.sync_q.put(None)
        if self._events is not None:
            self._events.join()
        self._bridge = None
        with self._lock:
            self._state = "stopped"

    def publish(self, own: list[Position], relayed: Sequence[tuple[Position, Link]] = ()) -> int:
        """Queue own changes for the bucket (latest per symbol); never blocks, never refuses."""
        if not own:
            return 0
        with self._lock:
            outbox = self._outbox
            handled, epoch = self._handled, self._epoch
            for position in own:
                outbox[position.symbol] = position
                handled[position.symbol] = (epoch, position.timestamp)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()
        return len(own)

    def links(self) -> tuple[_Bucket, ...]:
        return (self.bucket,)

    def configured(self) -> list[str | None]:
        return [self.bucket.name]

    def status(self) -> list[PeerStatus]:
        """The link (server, state, last error), then each strategy seen in the bucket."""
        now = time.monotonic()
        with self._lock:
            state = self._state
            if self._last_error:
                state += f"; last error: {self._last_error}"
            heard = now - self._last_heard if self._last_heard else None
            rows = [
                PeerStatus(self.bucket.name, self._server or self.settings.describe(), state, heard)
            ]
            for strategy, (keys, when) in sorted(self._seen.items()):
                rows.append(
                    PeerStatus(
                        strategy,
                        f"bucket {self.settings.bucket}",
                        f"seen in the bucket ({keys} key(s))",
                        now - when,
                    )
                )
        return rows

    def health(self) -> dict[str, Any]:
        """The link's state for metrics and health checks."""
        with self._lock:
            return {
                "transport": "nats",
                "server": self._server,
                "bucket": self.settings.bucket,
                "state": self._state,
                "connected": self._state == "connected",
                "last_error": self._last_error,
                "outbox": len(self._outbox),
                "puts": self.puts,
                "received": self.received,
                "rereads": self.rereads,
                "strategies": sorted(self._seen),
            }

    @property
    def outbox(self) -> int:
        with self._lock:
            return len(self._outbox)

    def reconcile(self, own: list[Position]) -> None:
        """Own positions that the last read of the bucket lacks, or holds older, are put,
        unless this node is putting them itself: published, in flight, or written since that
        read began (the read cannot have seen them; putting them again would write them twice).
        """
        against, epoch = self._reconcile_against, self._against_epoch
        with self._lock:
            handled, in_flight = self._handled, self._in_flight
            missing = [
                p
                for p in own
                if ((held := against.get(p.symbol)) is None or held.timestamp < p.timestamp)
                and in_flight.get(p.symbol, -1) < p.timestamp
                and not (
                    (mine := handled.get(p.symbol)) is not None
                    and mine[0] >= epoch
                    and mine[1] >= p.timestamp
                )
            ]
        if missing:
            logger.info(
                "{} own position(s) missing or older in bucket {}: putting them",
                len(missing),
                self.settings.bucket,
            )
            with self._lock:
                for position in missing:
                    current = self._outbox.get(position.symbol)
                    if current is None or current.timestamp < position.timestamp:
                        self._outbox[position.symbol] = position
            self._wake()

    def read_again(self, reason: str) -> None:
        """Read the whole bucket again (from any thread), e.g. after a failed commit."""
        logger.warning("reading bucket {} again: {}", self.settings.bucket, reason)
        with contextlib.suppress(Exception):  # the loop is stopping
            self._aio.call_soon(self._set_reread)

    def _set_reread(self) -> None:
        if self._reread is not None:
            self._reread.set()

    # The events thread.

    def _fire_events(self) -> None:
        """Thread ``nats-events``: fire what the loop received, in order, until the end."""
        get = self._bridge.sync_q.get
        fire = self.dispatcher.fire
        bucket = self.bucket
        try:
            while (item := get()) is not None:
                kind, payload = item
                if kind == "message":
                    fire(Event.MESSAGE, bucket, payload)
                elif kind == "connected":
                    self._against_epoch, self._reconcile_against = payload
                    fire(Event.CONNECTED, bucket)
                else:
                    fire(Event.CLOSED, bucket, payload)
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("nats-events thread failed")

    def _wake(self) -> None:
        with contextlib.suppress(Exception):  # the loop is stopping
            self._aio.call_soon(self._set_flush)

    def _set_flush(self) -> None:
        if self._flush_ready is not None:
            self._flush_ready.set()

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._last_error = error

    # In the loop.

    async def _open(self) -> None:
        import nats
        from nats.errors import NoRespondersError, NoServersError
        from nats.js.api import KeyValueConfig
        from nats.js.errors import (
            BucketNotFoundError,
            NoStreamResponseError,
            ServiceUnavailableError,
        )

        settings = self.settings
        self._inbox_ready = asyncio.Event()
        self._flush_ready = asyncio.Event()
        self._reread = asyncio.Event()
        self._initial_done = asyncio.Event()
        self._set_state("connecting")
        errors = self._connect_errors

        async def on_error(exc: Exception) -> None:
            errors.append(_describe(exc))
            self._set_state(self._state, _describe(exc))

        options = self._connect_options()
        try:
            self._nc = await nats.connect(
                servers=list(settings.servers),
                name=f"position-distributor {self.name}",
                connect_timeout=settings.connect_timeout,
                reconnect_time_wait=settings.reconnect_wait,
                max_reconnect_attempts=1,  # at start: each server twice, then a clear error
                allow_reconnect=True,
                ping_interval=2,
                max_outstanding_pings=2,
                error_cb=on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                **options,
            )
        except Exception as exc:
            why = errors[-1] if errors else _describe(exc)
            refusal = next((e for e in errors if "Authorization" in e), None)
            if refusal is not None:
                raise NatsError(
                    f"NATS at {settings.describe()} refused this node's credentials ({refusal}):"
                    f" {self._check_credentials()}"
                ) from None
            if isinstance(exc, TimeoutError | NoServersError | OSError):
                raise NatsError(f"cannot connect to NATS at {settings.describe()}: {why}") from None
            raise NatsError(f"NATS at {settings.describe()} refused this node: {why}") from None
        self._nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
        self._server = _server_of(self._nc)
        self._js = self._nc.jetstream(timeout=settings.request_timeout)
        try:
            try:
                self._kv = await self._js.key_value(settings.bucket)
            except BucketNotFoundError:
                if not settings.create_bucket:
                    raise NatsError(
                        f"bucket {settings.bucket!r} does not exist on NATS at"
                        f" {settings.describe()}: create it (nats kv add {settings.bucket}"
                        f" --history 1 --replicas {settings.replicas}) or start one node with"
                        " --nats-create-bucket"
                    ) from None
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(bucket=settings.bucket, history=1, replicas=settings.replicas)
                )
                logger.info(
                    "created bucket {} ({} replica(s), history 1)",
                    settings.bucket,
                    settings.replicas,
                )
            status = await self._kv.status()
        except NatsError:
            await self._close()
            raise
        except (NoRespondersError, ServiceUnavailableError, NoStreamResponseError) as exc:
            await self._close()
            raise NatsError(
                f"NATS at {settings.describe()} has no JetStream ({_describe(exc)}):"
                " start nats-server with -js (jetstream {{}} in its config)"
            ) from None
        except Exception as exc:
            await self._close()
            raise NatsError(
                f"cannot use bucket {settings.bucket!r} on NATS at {settings.describe()}:"
                f" {_describe(exc)}"
            ) from None
        config = status.stream_info.config
        history = config.max_msgs_per_subject
        replicas = config.num_replicas or 1
        if history != 1 or replicas != settings.replicas:
            await self._close()
            raise NatsError(
                f"bucket {settings.bucket!r} keeps a history of {history} with {replicas}"
                f" replica(s); this node expects a history of 1 and --nats-replicas"
                f" {settings.replicas}"
            )
        logger.info(
            "{} on NATS: bucket {} at {} ({} replica(s))",
            self.name,
            settings.bucket,
            self._server,
            replicas,
        )

    def _check_credentials(self) -> str:
        """What to check when the server refuses this node: the flags it logged in with."""
        settings = self.settings
        if settings.creds_file is not None:
            return (
                f"check --nats-creds {settings.creds_file} (a user of an account this server's"
                " operator trusts)"
            )
        if settings.nkey_file is not None:
            return f"check --nats-nkey {settings.nkey_file}"
        if settings.user is not None:
            return "check --nats-user and --nats-password-file"
        return "this server needs credentials: --nats-user, --nats-nkey or --nats-creds"

    def _connect_options(self) -> dict[str, Any]:
        """The credential options of nats.connect (reads small local files)."""
        settings = self.settings
        options: dict[str, Any] = {}
        try:
            if settings.user is not None:
                options["user"] = settings.user
                if settings.password_file is not None:
                    lines = settings.password_file.read_text().splitlines()
                    options["password"] = lines[0].strip() if lines else ""
            if settings.nkey_file is not None:
                settings.nkey_file.read_bytes()  # say a missing file clearly, here
                options["nkeys_seed"] = str(settings.nkey_file)
        except OSError as exc:
            raise NatsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if settings.creds_file is not None:
            options["user_credentials"] = _read_creds(settings.creds_file)
        if settings.tls_ca is not None or settings.tls_cert is not None:
            try:
                context = ssl.create_default_context(
                    ssl.Purpose.SERVER_AUTH,
                    cafile=str(settings.tls_ca) if settings.tls_ca else None,
                )
                if settings.tls_cert is not None:
                    context.load_cert_chain(
                        str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
                    )
            except (OSError, ssl.SSLError) as exc:
                raise NatsError(f"cannot load the NATS TLS files: {exc}") from None
            options["tls"] = context
        return options

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        for coro, name in (
            (self._run(), "nats-watch"),
            (self._deliver(), "nats-deliver"),
            (self._flush(), "nats-flush"),
            (self._check(), "nats-check"),
        ):
            task = loop.create_task(coro, name=name)
            task.add_done_callback(_report)
            self._tasks.append(task)

    async def _close(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks = []
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2.0)

    async def _drain(self, timeout: float) -> None:
        """Wait until the outbox is put (or ``timeout``), for a graceful stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._outbox and not self._wake_pending:
                    return
            await asyncio.sleep(0.01)
        with self._lock:
            left = len(self._outbox)
        if left:
            logger.warning(
                "stopping with {} own position(s) not yet in bucket {}: they are put at the"
                " next start",
                left,
                self.settings.bucket,
            )

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            self._set_state("disconnected: reconnecting")
            logger.warning("NATS connection lost: reconnecting; trades go on locally")
            if self._bridge is not None:
                await self._bridge.async_q.put(("closed", "NATS connection lost"))

    async def _on_reconnected(self) -> None:
        self._server = _server_of(self._nc)
        logger.info("NATS connection back, to {}: reading the bucket again", self._server)
        self._set_state("connected: reading the bucket")
        assert self._reread is not None
        self._reread.set()
        self._set_flush()  # the outbox need not wait for the read: revisions are known

    # Watching.

    async def _run(self) -> None:
        """Task: read the bucket (a new watcher), then read it again whenever asked.

        A read that fails (a stream electing its leader, a server going away) is retried with
        a backoff while connected, and once the connection is back otherwise; the failure is
        logged once per streak.
        """
        assert self._reread is not None
        backoff = 0.1
        failing = False
        while True:
            self._reread.clear()
            try:
                await self._read_bucket()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_state("reading the bucket failed: retrying", _describe(exc))
                if not failing:
                    failing = True
                    logger.info(
                        "reading bucket {} failed ({}): retrying",
                        self.settings.bucket,
                        _describe(exc),
                    )
                if self._nc.is_connected:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                else:
                    await self._reread.wait()  # set when the connection is back
                continue
            if failing:
                logger.info("bucket {} read again", self.settings.bucket)
            failing = False
            backoff = 0.1
            self._read_once = True
            self._set_state("connected")
            self._set_flush()
            await self._reread.wait()
            with self._lock:
                self.rereads += 1

    async def _read_bucket(self) -> None:
        """Start a watcher from the last value of every key; wait for its initial values."""
        from nats.js.api import DeliverPolicy

        assert self._initial_done is not None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._generation += 1
        generation = self._generation
        with self._lock:
            self._epoch += 1
            self._read_epoch = self._epoch
        self._initial = []
        self._initial_own = {}
        self._initial_done.clear()
        self._reading = True
        self._set_state("reading the bucket")

        async def on_message(msg: Any) -> None:
            self._inbox.append((generation, msg))
            assert self._inbox_ready is not None
            self._inbox_ready.set()

        self._sub = await self._js.subscribe(
            f"{self._prefix}>",
            stream=self.settings.stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=300.0,
        )
        info = await self._sub.consumer_info()
        if info.num_pending == 0 and self._sub.delivered == 0:
            self._end_initial(generation)
        await asyncio.wait_for(self._initial_done.wait(), 60.0)

    def _end_initial(self, generation: int) -> None:
        if generation != self._generation or not self._reading:
            return
        self._reading = False
        assert self._inbox_ready is not None and self._initial_done is not None
        self._inbox.append((generation, None))  # the end of the initial values
        self._inbox_ready.set()

    async def _deliver(self) -> None:
        """Task: turn what the watcher received into positions for the engine."""
        assert self._inbox_ready is not None and self._initial_done is not None
        name = self.name
        own_prefix = self._own_prefix
        prefix_length = len(self._prefix)
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            inbox, self._inbox = self._inbox, []
            live: list[Position | SyncDone] = []
            seen: dict[str, int] = {}
            ended = False
            for generation, msg in inbox:
                if generation != self._generation:
                    continue  # a watcher replaced since
                if msg is None:
                    ended = True
                    continue
                meta = msg.metadata
                revision = meta.sequence.stream
                if revision > self._seen_rev:
                    self._seen_rev = revision
                key = msg.subject[prefix_length:]
                reading = self._reading
                if reading and meta.num_pending == 0:
                    self._reading = False
                    ended_after = True
                else:
                    ended_after = False
                headers = msg.headers
                if headers and _KV_OP in headers:
                    if key.startswith(own_prefix) and not reading:
                        self._log_bad(
                            key,
                            f"own key {key} was {_DONE.get(headers[_KV_OP], 'removed')} in the"
                            " bucket: putting it back",
                        )
                        self._reconcile_after_delete()
                    if ended_after:
                        ended = True
                    continue
                try:
                    position = decode_value(key, msg.data)
                except BadEntry as exc:
                    self._log_bad(key, f"skipped in bucket {self.settings.bucket}: {exc}")
                    if ended_after:
                        ended = True
                    continue
                target = self._initial if reading else live
                if position.strategy == name:
                    symbol = position.symbol
                    if reading:
                        self._initial_own[symbol] = position
                        # A put acknowledged after this read began knows a newer revision:
                        # keep it, or the next put would expect an older one and take its own
                        # write for another writer's.
                        if revision > self._revs.get(symbol, (0, b""))[0]:
                            self._revs[symbol] = (revision, bytes(msg.data))
                        self._sent_ts[symbol] = max(
                            self._sent_ts.get(symbol, 0), position.timestamp
                        )
                        target.append(position)
                    elif position.timestamp > self._sent_ts.get(symbol, 0):
                        self._log_bad(
                            key,
                            f"another writer of strategy {name} put {symbol}"
                            f" {position.net_position:g} @ {position.timestamp} (revision"
                            f" {revision}) in bucket {self.settings.bucket}: is a second node"
                            f" running as {name}? Give every node its own name",
                            level="ERROR",
                        )
                else:
                    target.append(position)
                    seen[position.strategy] = seen.get(position.strategy, 0) + 1
                if ended_after:
                    ended = True
            count = len(inbox)
            now = time.monotonic()
            with self._lock:
                self.received += count
                if count:
                    self._last_heard = now
                for strategy in seen:
                    keys, _ = self._seen.get(strategy, (0, now))
                    self._seen[strategy] = (max(keys, seen[strategy]), now)
            if live:
                await self._bridge.async_q.put(("message", live))
            if ended:
                initial = self._initial
                self._initial = []
                initial.append(SyncDone(len(initial)))
                counts: dict[str, int] = {}
                for p in initial:
                    if isinstance(p, Position):
                        counts[p.strategy] = counts.get(p.strategy, 0) + 1
                with self._lock:
                    for strategy, keys in counts.items():
                        if strategy != name:
                            self._seen[strategy] = (keys, now)
                await self._bridge.async_q.put(("message", initial))
                await self._bridge.async_q.put(
                    ("connected", (self._read_epoch, dict(self._initial_own)))
                )
                self._initial_done.set()

    def _reconcile_after_delete(self) -> None:
        assert self._reread is not None
        self._reread.set()  # read again: the reconcile puts our position back

    def _log_bad(self, key: str, message: str, level: str = "WARNING") -> None:
        """Log ``message`` about ``key`` unless it was logged within the last minute."""
        now = time.monotonic()
        last = self._logged.get(key)
        if last is not None and now - last < _LOG_AGAIN:
            return
        if len(self._logged) >= _MAX_LOGGED_KEYS:
            for old in sorted(self._logged, key=self._logged.__getitem__)[: _MAX_LOGGED_KEYS // 2]:
                del self._logged[old]
        self._logged[key] = now
        logger.log(level, message)

    async def _check(self) -> None:
        """Task: every check interval, compare the stream's last revision with the watcher's.

        A watcher behind the stream that made no progress for a whole interval has stalled
        (its consumer lost with a server): read the bucket again.
        """
        assert self._reread is not None
        interval = self.settings.check_interval
        previous = -1
        while True:
            await asyncio.sleep(interval)
            if not self._nc.is_connected or self._reading:
                previous = -1
                continue
            try:
                info = await self._js.stream_info(self.settings.stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_state(self._state, f"stream info: {_describe(exc)}")
                continue
            behind = info.state.messages > 0 and info.state.last_seq > self._seen_rev
            if behind and self._seen_rev == previous:
                logger.warning(
                    "the watcher of bucket {} stalled at revision {} (the bucket is at {}):"
                    " reading it again",
                    self.settings.bucket,
                    self._seen_rev,
                    info.state.last_seq,
                )
                self._reread.set()
                previous = -1
            else:
                previous = self._seen_rev if behind else -1

    # Publishing.

    async def _flush(self) -> None:
        """Task: put the outbox to the bucket, a batch at a time, whenever woken."""
        assert self._flush_ready is not None
        backoff = 0.05
        failing_since: float | None = None  # when puts began to fail (time without publishing)
        while True:
            await self._flush_ready.wait()
            self._flush_ready.clear()
            while True:
                ready = self._read_once and self._nc.is_connected
                with self._lock:
                    if not self._outbox or not ready:
                        self._wake_pending = False
                        break
                    batch = []
                    for symbol in list(self._outbox)[:_BATCH]:
                        position = self._outbox.pop(symbol)
                        batch.append(position)
                        self._in_flight[symbol] = position.timestamp
                results = await asyncio.gather(*(self._put(p) for p in batch))
                failed = [p for p, ok in zip(batch, results, strict=True) if not ok]
                with self._lock:
                    for position, ok in zip(batch, results, strict=True):
                        del self._in_flight[position.symbol]
                        mine = self._handled.get(position.symbol)
                        if ok and (mine is None or mine[1] <= position.timestamp):
                            # written (or found written) as of this read
                            self._handled[position.symbol] = (self._epoch, position.timestamp)
                        else:
                            self._outbox.setdefault(position.symbol, position)
                if failed:
                    if failing_since is None:
                        failing_since = time.monotonic()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                else:
                    backoff = 0.05
                    if failing_since is not None:
                        gap = time.monotonic() - failing_since
                        failing_since = None
                        self.longest_gap = max(self.longest_gap, gap)
                        logger.info(
                            "bucket {} takes puts again, after {:.2f}s of failed puts",
                            self.settings.bucket,
                            gap,
                        )

    async def _put(self, position: Position) -> bool:
        """Put one own position with the key's expected revision; False to try again later."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

        symbol = position.symbol
        key = encode_key(self.name, symbol)
        value = encode_value(position)
        if position.timestamp > self._sent_ts.get(symbol, 0):
            self._sent_ts[symbol] = position.timestamp
        attempts = self._attempts.setdefault(symbol, [])
        if attempts:
            # An earlier put of this key was not acknowledged. If a read of the bucket since
            # (the re-read after a reconnect) found one of those values, it is this node's
            # own write: the key's revision is known, and putting the same value again would
            # only write it twice.
            revision, held_value = self._revs.get(symbol, (0, b""))
            if revision and held_value in attempts:
                self._found_own_write(symbol)
                if held_value == value:
                    self._attempts.pop(symbol, None)
                    return True
        attempts.append(value)
        del attempts[:-_MAX_ATTEMPTS]
        kv = self._kv
        try:
            for _ in range(4):
                try:
                    revision = await kv.update(key, value, last=self._revs.get(symbol, (0, b""))[0])
                except KeyWrongLastSequenceError:
                    pass
                else:
                    self._revs[symbol] = (revision, value)
                    self._attempts.pop(symbol, None)
                    with self._lock:
                        self.puts += 1
                    return True
                try:
                    entry = await kv.get(key)
                except KeyDeletedError as exc:
                    self._revs[symbol] = (exc.entry.revision if exc.entry is not None else 0, b"")
                    continue
                except KeyNotFoundError:
                    self._revs[symbol] = (0, b"")
                    continue
                self._revs[symbol] = (entry.revision, entry.value or b"")
                if entry.value in attempts:
                    self._found_own_write(symbol)
                    if entry.value == value:
                        self._attempts.pop(symbol, None)
                        return True
                    continue
                try:
                    held: Position | None = decode_value(key, entry.value or b"")
                except BadEntry:
                    held = None
                self._log_bad(
                    key,
                    f"another writer of strategy {self.name} holds {symbol} in bucket"
                    f" {self.settings.bucket}"
                    + (
                        f" ({held.net_position:g} @ {held.timestamp}, revision {entry.revision})"
                        if held
                        else ""
                    )
                    + f", not what this node wrote ({position.net_position:g} @"
                    f" {position.timestamp}): is a second node running as {self.name}?"
                    " Give every node its own name",
                    level="ERROR",
                )
                if held is not None and held.timestamp > position.timestamp:
                    return True  # the newer claim stays; ours is older
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._set_state(self._state, f"put {symbol}: {_describe(exc)}")
            return False

    def _found_own_write(self, symbol: str) -> None:
        """Say that the bucket holds what this node put, though the put was never acknowledged."""
        logger.info(
            "bucket {} already holds {} as this node put it (its acknowledgement was lost):"
            " taken as written",
            self.settings.bucket,
            symbol,
        )


def _read_creds(path: Path) -> Any:
    """The checked text of a ``.creds`` file, as nats-py takes it (read once, at start)."""
    from nats.aio.client import RawCredentials

    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise NatsError(f"--nats-creds: cannot read {path}: {exc.strerror}") from None
    try:
        creds = parse_creds(text)
    except CredsError as exc:
        raise NatsError(f"--nats-creds {path} is not a usable .creds file: {exc}") from None
    return RawCredentials(creds.text())


def _server_of(nc: Any) -> str:
    url = getattr(nc, "connected_url", None)
    return url.netloc if url is not None else ""


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).error("task {} failed", task.get_name())
