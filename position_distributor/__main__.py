"""Command line: ``python -m position_distributor NAME PORT [HOST:PORT ...]``, and the console."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import ipaddress
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

from loguru import logger

from .connection import Limits
from .console import HELP, Command, ConsoleError, TradeCommand, parse_line, trades_of
from .engine import DEFAULT_MAX_SYMBOLS
from .helpformat import HelpFormatter
from .limits import LOG_INTERVAL
from .natslink import NatsSettings
from .node import Config, Node, NodeError
from .protocol import MAX_PEER_HEARTBEAT_MS
from .riskview import HttpSettings
from .snapshots import format_time
from .types import MAX_PORT, format_rows
from .wire import DEFAULT_MAX_FRAME_SIZE

__all__ = ["main", "parse_args"]

PROG = "position-distributor"
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {thread.name: <17} | {message}"

DESCRIPTION = """\
Run one strategy's node of the Position Distributor: every node holds the live positions
of every strategy. Trades typed at stdin as "SYMBOL QTY" (e.g. "AAPL 100") change this
strategy's positions; every change, own or learnt from a peer, prints one row on stdout:
strategy | symbol | net position | timestamp (ns). Type "help" for the console commands.
Logs go to stderr."""

EPILOG = """\
example, three strategies in a full mesh (each dials the ones started before it):
  position-distributor strategy_1 12345
  position-distributor strategy_2 12346 127.0.0.1:12345
  position-distributor strategy_3 12347 127.0.0.1:12345 127.0.0.1:12346

exit status: 0 after a normal stop, 1 if it stopped because it failed, 2 if it could not
start."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage dump: say what was wrong and where to look."""
        if message.startswith("the following arguments are required"):
            # argparse also lists the optional HOST:PORT list here, which misleads.
            message = "expected NAME PORT [HOST:PORT ...], e.g. strategy_1 12345"
        self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")


_DIGITS = re.compile(r"[0-9]{1,5}")


def _port_number(text: str) -> int | None:
    """``text`` as a port number if it is 1-5 ASCII digits of at most MAX_PORT, else None."""
    if _DIGITS.fullmatch(text) is None or int(text) > MAX_PORT:
        return None
    return int(text)


def _port(text: str) -> int:
    port = _port_number(text)
    if port is None:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: expected 1-{MAX_PORT} (0: any free)"
        )
    return port


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _valid_host(host: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None
    return True


def _address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:12345
    if not sep or not _valid_host(host):
        raise argparse.ArgumentTypeError(
            f"invalid peer address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:12345"
        )
    port = _port_number(port_text) or 0
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"invalid port in peer address {text!r}: expected HOST:PORT with a port of 1-{MAX_PORT}"
        )
    return host, port


def _http_address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    port = _port_number(port_text)
    if not sep or not _valid_host(host) or port is None:
        raise argparse.ArgumentTypeError(
            f"invalid --http address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080"
            " (port 0: any free port)"
        )
    return host, port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds, e.g. 2.5")
    return value


def _time_of_day(text: str) -> dt.time:
    try:
        return dt.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected HH:MM (24-hour, local time), e.g. 17:30"
        ) from None


_BUCKET = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _bucket(text: str) -> str:
    if _BUCKET.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"invalid bucket name {text!r}: use 1-64 of letters, digits, '_', '-'"
        )
    return text


def _nats_urls(text: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in text.split(",") if url.strip())
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "nats", url
        host, _, port = rest.rpartition(":")
        if scheme not in ("nats", "tls") or not host or _port_number(port) is None:
            raise argparse.ArgumentTypeError(
                f"invalid NATS URL {url!r}: expected nats://HOST:PORT (or tls://HOST:PORT)"
            )
    if not urls:
        raise argparse.ArgumentTypeError("--nats needs at least one URL")
    return tuple(url if "://" in url else f"nats://{url}" for url in urls)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="this node's strategy, e.g. strategy_1")
    parser.add_argument(
        "port",
        metavar="PORT",
        type=_port,
        nargs="?",
        help="port to listen on for peers (none with --nats)",
    )
    parser.add_argument(
        "peers",
        metavar="HOST:PORT",
        nargs="*",
        type=_address,
        help="peers to dial, and redial forever after a drop",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=Path("data"),
        help="where the store NAME.sqlite3 lives (default: ./data)",
    )
    parser.add_argument(
        "--bind",
        metavar="ADDR",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"stderr log level: {', '.join(LOG_LEVELS)} (default: INFO)",
    )
    parser.add_argument(
        "--no-console",
        action="store_true",
        help="do not read stdin (run under a service manager; stop with SIGTERM)",
    )
    parser.add_argument(
        "--recovery-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="with a new or lost store, how long to hold trades while waiting for peers to"
        " send this strategy's positions back (default: 5)",
    )
    parser.add_argument(
        "--recover",
        action="store_true",
        help="start as a node whose store was lost: hold trades until peers send this"
        " strategy's positions back, and take newer ones (for a store restored from an"
        " older copy)",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="forward every change to the other peers and include every strategy's positions"
        " in the sync, so a partial mesh (e.g. a chain A - B - C) converges",
    )
    parser.add_argument(
        "--snapshot-at",
        metavar="HH:MM",
        type=_time_of_day,
        default=None,
        help="take a snapshot of the whole view every day at HH:MM local time, labelled"
        " 'eod YYYY-MM-DD' (read it with python -m position_distributor.snapshots)",
    )
    view = parser.add_argument_group(
        "risk view",
        "Serves a web page of every position, live, a JSON and CSV API, Prometheus metrics and a"
        " health check (see docs/risk-view.md). Read-only: nothing served changes a position.",
    )
    view.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_http_address,
        help="serve the risk view at http://HOST:PORT/ (a non-loopback HOST needs"
        " --http-token-file or --insecure)",
    )
    view.add_argument(
        "--http-token-file",
        metavar="PATH",
        type=Path,
        help="bearer token(s), one per line, every one accepted; a browser gets a login form",
    )
    view.add_argument(
        "--http-tls-cert",
        metavar="PATH",
        type=Path,
        help="serve HTTPS with this certificate (PEM; not a peer's --tls-cert)",
    )
    view.add_argument("--http-tls-key", metavar="PATH", type=Path, help="its private key (PEM)")
    view.add_argument(
        "--limits",
        metavar="FILE",
        type=Path,
        help="exposure limits, a CSV of symbol,limit (* for every other symbol): a breach"
        " logs a WARNING and shows on the page and in the metrics; never refuses a trade;"
        " SIGHUP reloads it",
    )
    view.add_argument(
        "--limits-log-interval",
        metavar="SECONDS",
        type=float,
        default=LOG_INTERVAL,
        help=f"a symbol's breach and back-under lines are logged at most once per this many"
        f" seconds (default {LOG_INTERVAL:g}); the last state is always logged when its"
        " window ends",
    )
    security = parser.add_argument_group(
        "security",
        "Without --secret-file or TLS, any process that can reach the port can read and write"
        " positions: the node says so at start, and listens only on loopback addresses.",
    )
    security.add_argument(
        "--secret-file",
        metavar="PATH",
        type=Path,
        default=_env_path("PD_SECRET_FILE"),
        help="cluster secret(s), one per line: every connection proves both ways that the"
        " peer holds one (the first line proves, all lines are accepted, for rotation)"
        " (default: $PD_SECRET_FILE)",
    )
    security.add_argument(
        "--tls-cert",
        metavar="PATH",
        type=Path,
        help="this node's certificate (PEM), whose name must be its strategy",
    )
    security.add_argument("--tls-key", metavar="PATH", type=Path, help="its private key (PEM)")
    security.add_argument(
        "--tls-ca",
        metavar="PATH",
        type=Path,
        help="the CA certificate (PEM) that must have signed every peer's certificate",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind with neither a secret nor TLS, and a non-loopback"
        " --http without a token",
    )
    limits = parser.add_argument_group(
        "timeouts and limits",
        "How long a peer may stay silent or take to shake hands, and how much it may send or"
        " hold; the defaults suit most clusters.",
    )
    limits.add_argument(
        "--heartbeat",
        metavar="SECONDS",
        type=_seconds,
        default=1.0,
        help="heartbeat interval on idle connections, at most 60; a peer silent for 5"
        " intervals is dropped and redialled (default: 1)",
    )
    limits.add_argument(
        "--hello-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=Limits.hello_timeout,
        help="how long a new connection has to complete its handshake"
        f" (default: {Limits.hello_timeout:g})",
    )
    limits.add_argument(
        "--max-frame-size",
        metavar="BYTES",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        help=f"largest frame accepted from a peer (default: {DEFAULT_MAX_FRAME_SIZE})",
    )
    limits.add_argument(
        "--max-connections",
        metavar="N",
        type=int,
        default=Limits.max_connections,
        help=f"connections open at once, handshaking or not (default: {Limits.max_connections})",
    )
    limits.add_argument(
        "--max-symbols",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_SYMBOLS,
        help="symbols held per strategy, own or a peer's; a peer's new symbols beyond it are"
        f" dropped and logged (default: {DEFAULT_MAX_SYMBOLS})",
    )
    nats = parser.add_argument_group(
        "NATS",
        "With --nats, positions travel through a NATS JetStream key-value bucket instead of a"
        " mesh: no PORT and no peers (see docs/nats.md).",
    )
    nats.add_argument(
        "--nats",
        metavar="URLS",
        type=_nats_urls,
        help="the NATS servers of one cluster, separated by commas, e.g."
        " nats://10.0.0.1:4222,nats://10.0.0.2:4222 (reconnects across them)",
    )
    nats.add_argument(
        "--nats-bucket",
        metavar="NAME",
        default="positions",
        type=_bucket,
        help="the key-value bucket (default: positions)",
    )
    nats.add_argument(
        "--nats-replicas",
        metavar="N",
        type=int,
        default=1,
        help="the bucket's replicas, checked at start (default: 1)",
    )
    nats.add_argument(
        "--nats-create-bucket",
        action="store_true",
        help="create the bucket if missing (needs JetStream admin rights); otherwise the"
        " operator's bucket is checked",
    )
    nats.add_argument("--nats-user", metavar="USER", help="NATS user name")
    nats.add_argument(
        "--nats-password-file", metavar="PATH", type=Path, help="file holding the user's password"
    )
    nats.add_argument("--nats-nkey", metavar="PATH", type=Path, help="an nkey seed file")
    nats.add_argument(
        "--nats-creds",
        metavar="PATH",
        type=Path,
        help="a .creds file (operator/JWT mode: a user's JWT and nkey seed, as nsc writes it)",
    )
    nats.add_argument(
        "--nats-tls-ca", metavar="PATH", type=Path, help="CA certificate (PEM) of the servers"
    )
    nats.add_argument(
        "--nats-tls-cert",
        metavar="PATH",
        type=Path,
        help="client certificate (PEM) for servers that verify clients",
    )
    nats.add_argument("--nats-tls-key", metavar="PATH", type=Path, help="its private key (PEM)")
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="fsync every commit, so acknowledged trades also survive a power cut"
        " (default: they survive a crash or kill -9 of the process)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse the command line into a Config; exit 2 with one line on stderr if it is bad."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.heartbeat <= MAX_PEER_HEARTBEAT_MS / 1000:
        parser.error(
            f"--heartbeat must be above 0 and at most {MAX_PEER_HEARTBEAT_MS // 1000}"
            " (peers refuse a slower one)"
        )
    if args.hello_timeout <= 0:
        parser.error("--hello-timeout must be above 0")
    if args.max_frame_size < 1024:
        parser.error("--max-frame-size must be at least 1024")
    if args.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    if args.max_symbols < 1:
        parser.error("--max-symbols must be at least 1")
    if args.nats is None and args.port is None:
        parser.error("the following arguments are required: PORT")
    nats = None
    if args.nats is not None:
        if args.port is not None or args.peers:
            parser.error(
                "--nats replaces the mesh: give NAME and --nats URL, without PORT or peers"
            )
        if not 1 <= args.nats_replicas <= 5:
            parser.error("--nats-replicas must be 1 to 5")
        if args.nats_password_file is not None and args.nats_user is None:
            parser.error("--nats-password-file needs --nats-user")
        logins = [
            flag
            for flag, value in (
                ("--nats-user", args.nats_user),
                ("--nats-nkey", args.nats_nkey),
                ("--nats-creds", args.nats_creds),
            )
            if value is not None
        ]
        if len(logins) > 1:
            parser.error(f"{' and '.join(logins)} each log in to NATS: give only one")
        if (args.nats_tls_cert is None) != (args.nats_tls_key is None):
            parser.error("--nats-tls-cert and --nats-tls-key go together")
        nats = NatsSettings(
            servers=args.nats,
            bucket=args.nats_bucket,
            replicas=args.nats_replicas,
            create_bucket=args.nats_create_bucket,
            user=args.nats_user,
            password_file=args.nats_password_file,
            nkey_file=args.nats_nkey,
            creds_file=args.nats_creds,
            tls_ca=args.nats_tls_ca,
            tls_cert=args.nats_tls_cert,
            tls_key=args.nats_tls_key,
        )
    if args.nats is None:
        given = [
            flag
            for flag, value in (
                ("--nats-create-bucket", args.nats_create_bucket or None),
                ("--nats-user", args.nats_user),
                ("--nats-password-file", args.nats_password_file),
                ("--nats-nkey", args.nats_nkey),
                ("--nats-creds", args.nats_creds),
                ("--nats-tls-ca", args.nats_tls_ca),
                ("--nats-tls-cert", args.nats_tls_cert),
                ("--nats-tls-key", args.nats_tls_key),
            )
            if value is not None
        ]
        if given:
            parser.error(f"{given[0]} needs --nats (a mesh node does not use it)")
    if args.http is None and (args.http_token_file or args.http_tls_cert or args.http_tls_key):
        parser.error("--http-token-file, --http-tls-cert and --http-tls-key need --http")
    limits = Limits(
        max_frame_size=args.max_frame_size,
        heartbeat_interval=args.heartbeat,
        idle_timeout=5 * args.heartbeat,
        max_connections=args.max_connections,
        hello_timeout=args.hello_timeout,
    )
    try:
        config = Config(
            name=args.name,
            port=args.port or 0,
            peers=tuple(args.peers),
            data_dir=args.data_dir,
            bind=args.bind,
            limits=limits,
            recovery_timeout=args.recovery_timeout,
            fsync=args.fsync,
            snapshot_at=args.snapshot_at,
            relay=args.relay,
            secret_file=args.secret_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            insecure=args.insecure,
            max_symbols=args.max_symbols,
            recover=args.recover,
            nats=nats,
            http=None
            if args.http is None
            else HttpSettings(
                host=args.http[0],
                port=args.http[1],
                token_file=args.http_token_file,
                tls_cert=args.http_tls_cert,
                tls_key=args.http_tls_key,
                insecure=args.insecure,
            ),
            limits_file=args.limits,
            limits_log_interval=args.limits_log_interval,
        )
    except NodeError as exc:
        parser.error(str(exc))
    return config, args


class _Stop(Exception):
    """Raised in the main thread by SIGTERM, to stop gracefully."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


MAX_LINE = 4096
# A read of stdin is one submission (about 2,700 trades of "SYMBOL QTY"): small enough that a
# burst reaches the peers in slices the peers apply while the next is committed here (64 KiB
# reads left each node idle a third of a burst), large enough that a slice's commit, write and
# send cost little per trade (see docs/performance.md, round three).
_READ_SIZE = 1 << 15


def _chunks_of_lines(stdin: int, stderr: IO[str]) -> Iterator[bytes]:
    """The complete lines of each read from file descriptor ``stdin``, as they come (a burst
    reads as one chunk), each chunk ending with its last newline; an over-long line is
    reported and skipped, never held in memory.

    Reads the descriptor directly: no buffered reader, whose lock a thread blocked here would
    hold when the interpreter exits.
    """
    tail = b""
    skipping = False  # inside a line that was too long, until its end
    while data := os.read(stdin, _READ_SIZE):
        data = tail + data
        end = data.rfind(b"\n") + 1
        block, tail = data[:end], data[end:]
        if skipping and block:
            block = block[block.index(b"\n") + 1 :]  # the end of the over-long line
            skipping = False
        if len(tail) > MAX_LINE:
            tail = b""
            if not skipping:
                skipping = True
                stderr.write(f"error: line longer than {MAX_LINE} characters ignored\n")
                stderr.flush()
        if block:
            yield block
    if tail and not skipping:
        yield tail + b"\n"  # a last line without its newline


def run_console(node: Node, stdin: int, stderr: IO[str]) -> None:
    """Read trades and commands until EOF, ``exit`` or ``quit``.

    Trades read together are submitted together (one queue operation for a burst); a
    command runs after the trades typed before it are submitted. A chunk made only of trade
    lines is taken at once (``console.trades_of``); any other chunk line by line
    (``console.parse_line``): one grammar either way.
    """
    unflushed = False  # trades submitted since the last query
    for block in _chunks_of_lines(stdin, stderr):
        fast = trades_of(block)
        if fast is not None:  # the common case: a burst of trades and nothing else
            node.submit_many(fast)
            unflushed = True
            continue
        trades: list[tuple[str, float, None, str | None]] = []
        for raw in block.split(b"\n")[:-1]:
            if len(raw) > MAX_LINE:
                stderr.write(f"error: line longer than {MAX_LINE} characters ignored\n")
                stderr.flush()
                continue
            try:
                parsed = parse_line(raw.decode(errors="replace"))
            except ConsoleError as exc:
                stderr.write(f"error: {exc}\n")
                stderr.flush()
                continue
            if parsed is None:
                continue
            if isinstance(parsed, TradeCommand):
                trades.append((parsed.symbol, parsed.quantity, None, parsed.trade_id))
                continue
            if trades:
                node.submit_many(trades)
                trades = []
                unflushed = True
            if parsed.name in ("exit", "quit"):
                return
            if unflushed and parsed.name != "help":
                # A query sees the trades typed before it (during recovery: once they apply).
                node.flush()
                unflushed = False
            try:
                _run_command(node, parsed)
            except NodeError:
                raise  # the node is stopping
            except Exception as exc:  # e.g. a store error: say so, keep the node running
                logger.opt(exception=True).error("{} failed", parsed.name)
                stderr.write(f"error: {parsed.name} failed: {exc}\n")
                stderr.flush()
        if trades:
            node.submit_many(trades)
            unflushed = True


def _run_command(node: Node, command: Command) -> None:
    out = node.output
    name = command.name
    if name == "help":
        out.write(HELP)
    elif name == "positions":
        rows = format_rows(node.positions())
        out.write(f"Current positions\n{rows}\n")
    elif name == "exposure":
        rows = "".join(f"{symbol} | {net:.6f}\n" for symbol, net in node.exposure().items())
        out.write(f"Exposure\n{rows}\n")
    elif name == "history":
        symbol, count = command.args
        lines = [
            f"{format_time(e.time_ns)} | {e.symbol} | {e.quantity:+.6f} | {e.net_position:.6f}"
            f" | {e.timestamp}{'' if e.kind == 'trade' else ' | ' + e.kind}\n"
            for e in node.history(symbol, int(count))
        ]
        out.write(f"History {symbol}\n{''.join(lines) or '(no trades)' + chr(10)}\n")
    elif name == "snapshot":
        info = node.snapshot(command.args[0] if command.args else "manual")
        out.write(
            f"Snapshot {info.id} {info.label!r} taken: {info.size} position(s)"
            f" (read it with: python -m position_distributor.snapshots"
            f" {node.config.data_dir} --name {node.name} show {info.id})\n"
        )
    elif name == "limits":
        limit_rows = node.limits()
        if limit_rows is None:
            out.write("Limits\n(no --limits file)\n\n")
            return
        lines = [
            f"{row.symbol} | {'-' if row.exposure is None else f'{row.exposure:.6f}'}"
            f" | {'none' if row.limit is None else f'{row.limit:.6f}'}"
            f"{' | BREACH' if row.breached else ''}\n"
            for row in limit_rows
        ]
        out.write("Limits\n" + "".join(lines) + "\n")
    elif name == "peers":
        lines = []
        for status in node.peers():
            heard = "-" if status.last_heard is None else f"{status.last_heard:.1f}s ago"
            lines.append(f"{status.name or '?'} | {status.address} | {status.state} | {heard}\n")
        out.write("Peers\n" + ("".join(lines) or "(none configured or connected)\n") + "\n")


def _read_console(node: Node, done: threading.Event, failures: list[str]) -> None:
    """Console thread: run the console until its end, then say the node should stop.

    Stopped otherwise (a signal), the node refuses trades and this thread, possibly blocked
    reading stdin, ends with the process. A failure of the console itself (a bug) is
    recorded in ``failures``: the node stops with exit status 1.
    """
    try:
        run_console(node, sys.stdin.fileno(), sys.stderr)
        logger.info("end of console input: stopping")
    except NodeError:
        pass  # the node is stopping
    except Exception:  # a safety net: this branch should never run
        logger.opt(exception=True).critical("console failed")
        failures.append("the console failed")
    finally:
        done.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m position_distributor`` and ``position-distributor``."""
    config, args = parse_args(argv)
    logger.remove()
    # diagnose=False: a traceback must not print variables' values (positions, secrets).
    logger.add(sys.stderr, level=args.log_level, format=LOG_FORMAT, backtrace=False, diagnose=False)
    signal.signal(signal.SIGTERM, _on_sigterm)
    node = Node(config, out=sys.stdout, err=sys.stderr)
    if config.limits_file is not None:
        # Runs in the main thread, which only waits: it holds no lock of the node.
        signal.signal(signal.SIGHUP, lambda signum, frame: node.reload_limits())
    # Set by the console at its end, or by a node that can no longer apply changes (a bug).
    done = threading.Event()
    failures: list[str] = []  # the console's, if it fails
    node.on_failure = lambda reason: done.set()
    try:
        node.start()
    except NodeError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except (KeyboardInterrupt, _Stop):
        node.stop()  # a signal while starting: stop what started
        return 0
    # What the start made (modules, the stored view) lives as long as the process: keep it out
    # of the garbage collector's full collections, which then scan only what came after.
    gc.freeze()
    # A burst allocates a few containers per trade (tuples that the collector untracks at
    # their first pass): a young generation of 50,000 instead of 700 runs it 70 times less
    # often, for the same objects. 5-7 % more trades/s in W1 and W1N (docs/performance.md,
    # round five); a lone trade (W2) sees no collection either way.
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    try:
        if not args.no_console:
            # The console reads in its own thread: the main thread only waits, so a signal
            # (raised in the main thread) never lands half-way through applying a trade.
            console = threading.Thread(
                target=_read_console, args=(node, done, failures), name="console", daemon=True
            )
            console.start()
        done.wait()
    except (KeyboardInterrupt, _Stop):
        logger.info("signal received: stopping")
    finally:
        # A second signal during the stop must not leave threads half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.stop()
    failure = node.failure or (failures[0] if failures else None)
    if failure is not None:
        logger.critical("stopped because {}", failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
