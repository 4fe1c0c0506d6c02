"""Read a node's snapshots without a running node: list, show, export as CSV or JSON.

``python -m position_distributor.snapshots DATA_DIR [--name NAME] list``
``python -m position_distributor.snapshots DATA_DIR show ID [--name NAME]``
``python -m position_distributor.snapshots DATA_DIR export ID --csv FILE``
``python -m position_distributor.snapshots DATA_DIR export ID --format json [--output FILE]``

The store is opened read-only, so this is safe while the node runs.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .helpformat import HelpFormatter
from .store import SnapshotInfo
from .types import Position, format_rows

__all__ = ["SnapshotReader", "main"]

PROG = "python -m position_distributor.snapshots"


class SnapshotError(Exception):
    """The data dir, store or snapshot asked for does not exist or cannot be read."""


class SnapshotReader:
    """Read-only access to the snapshots of one node's store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._db.execute("SELECT 1 FROM snapshots LIMIT 1")
        except sqlite3.Error as exc:
            raise SnapshotError(f"cannot read snapshots from {path}: {exc}") from exc

    @classmethod
    def open(cls, data_dir: Path, name: str | None = None) -> SnapshotReader:
        """Open ``DATA_DIR/NAME.sqlite3``; NAME may be left out if the dir holds one store."""
        if not data_dir.is_dir():
            raise SnapshotError(f"no data dir {data_dir}")
        if name is not None:
            path = data_dir / f"{name}.sqlite3"
            if not path.is_file():
                raise SnapshotError(f"no store for {name!r} in {data_dir}")
            return cls(path)
        stores = sorted(data_dir.glob("*.sqlite3"))
        if len(stores) != 1:
            found = ", ".join(p.stem for p in stores) or "none"
            raise SnapshotError(
                f"{data_dir} holds {len(stores)} stores ({found}); say which with --name"
            )
        return cls(stores[0])

    def all(self) -> list[SnapshotInfo]:
        rows = self._db.execute(
            "SELECT id, taken_at_ns, label, size FROM snapshots ORDER BY id"
        ).fetchall()
        return [SnapshotInfo(*row) for row in rows]

    def info(self, snapshot_id: int) -> SnapshotInfo:
        row = self._db.execute(
            "SELECT id, taken_at_ns, label, size FROM snapshots WHERE id = ?", (snapshot_id,)
        ).fetchone()
        if row is None:
            raise SnapshotError(f"no snapshot {snapshot_id} in {self.path}")
        return SnapshotInfo(*row)

    def positions(self, snapshot_id: int) -> list[Position]:
        self.info(snapshot_id)
        rows = self._db.execute(
            "SELECT strategy, symbol, net_position, timestamp FROM snapshot_positions"
            " WHERE snapshot_id = ? ORDER BY strategy, symbol",
            (snapshot_id,),
        ).fetchall()
        return [Position(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


def format_time(ns: int) -> str:
    """Local time with milliseconds, as the logs show it."""
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def to_csv(positions: Sequence[Position]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["strategy", "symbol", "net_position", "timestamp"])
    writer.writerows((p.strategy, p.symbol, repr(p.net_position), p.timestamp) for p in positions)
    return buffer.getvalue()


def to_json(info: SnapshotInfo, positions: Sequence[Position]) -> str:
    document = {
        "id": info.id,
        "label": info.label,
        "taken_at_ns": info.taken_at_ns,
        "taken_at": format_time(info.taken_at_ns),
        "positions": [p._asdict() for p in positions],
    }
    return json.dumps(document, indent=2) + "\n"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


NAME_HELP = "the strategy whose store to read; needed if DATA_DIR holds several stores"
EPILOG = """\
examples:
  python -m position_distributor.snapshots data --name strategy_1 list
  python -m position_distributor.snapshots data show 1 --name strategy_1
  python -m position_distributor.snapshots data export 1 --format json --output close.json

exit status: 0 on success, 1 for a missing data dir, store or snapshot, 2 for a usage error."""


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0]
        + " The store is opened read-only, so this is safe while the node runs.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "data_dir", metavar="DATA_DIR", type=Path, help="the node's --data-dir, e.g. data"
    )
    parser.add_argument("--name", metavar="NAME", help=NAME_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        # Also after the command; SUPPRESS keeps a --name given before it.
        sub.add_argument("--name", metavar="NAME", default=argparse.SUPPRESS, help=NAME_HELP)
        return sub

    command("list", "every snapshot: id, time, label, size", "List every snapshot, oldest first.")
    show = command("show", "a snapshot's positions as rows", "Print a snapshot's positions.")
    show.add_argument("id", metavar="ID", type=int, help="the snapshot's id, as list shows it")
    export = command(
        "export",
        "a snapshot's positions as CSV or JSON",
        "Write a snapshot's positions as CSV (strategy,symbol,net_position,timestamp) or JSON.",
    )
    export.add_argument("id", metavar="ID", type=int, help="the snapshot's id, as list shows it")
    export.add_argument(
        "--format", choices=("csv", "json"), default=None, help="what to write (default: csv)"
    )
    export.add_argument(
        "--output", "-o", metavar="FILE", type=Path, help="write to FILE (default: stdout)"
    )
    export.add_argument(
        "--csv", metavar="FILE", type=Path, help="the same as --format csv --output FILE"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        reader = SnapshotReader.open(args.data_dir, args.name)
        try:
            return _run(args, reader, parser)
        finally:
            reader.close()
    except SnapshotError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1


def _run(args: argparse.Namespace, reader: SnapshotReader, parser: argparse.ArgumentParser) -> int:
    if args.command == "list":
        snapshots = reader.all()
        for info in snapshots:
            sys.stdout.write(
                f"{info.id} | {format_time(info.taken_at_ns)} | {info.label} | {info.size}\n"
            )
        if not snapshots:
            sys.stderr.write(
                f"no snapshots in {reader.path} (take one with the console's snapshot command"
                " or --snapshot-at)\n"
            )
        return 0
    info = reader.info(args.id)
    positions = reader.positions(args.id)
    if args.command == "show":
        sys.stdout.write(f"Snapshot {info.id} {info.label!r} {format_time(info.taken_at_ns)}\n")
        sys.stdout.write(format_rows(positions))
        return 0
    if args.csv is not None and args.output is not None:
        parser.error("give --csv FILE or --output FILE, not both")
    fmt = args.format or "csv"
    if args.csv is not None:
        if args.format == "json":
            parser.error("--csv writes CSV; use --format json --output FILE for JSON")
        fmt, output = "csv", args.csv
    else:
        output = args.output
    text = to_csv(positions) if fmt == "csv" else to_json(info, positions)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text)
        except OSError as exc:
            raise SnapshotError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
