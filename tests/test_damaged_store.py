"""A damaged store is checked at start: one clear line and exit status 2, whatever the damage."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from .procs import run_cli

PAGE = 4096


def make_store(data: Path) -> Path:
    """A real store of a few hundred pages: positions, journal, meta; checkpointed by stop."""
    trades = "".join(f"SYM{i % 300:03d} {i + 1}\n" for i in range(3000))
    result = run_cli("alpha", "0", "--data-dir", str(data), "--recovery-timeout", "0", input=trades)
    assert result.returncode == 0, result.stderr
    path = data / "alpha.sqlite3"
    assert (
        not (data / "alpha.sqlite3-wal").exists()
        or (data / "alpha.sqlite3-wal").stat().st_size == 0
    )
    return path


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def damage_header(path: Path) -> None:
    overwrite(path, 0, b"\xffNOT A SQLITE HDR")


def damage_page_size(path: Path) -> None:
    overwrite(path, 16, b"\x00\x03")  # page size 3: impossible


def damage_a_page(path: Path) -> None:
    """Garbage in the middle of a b-tree page of the journal (its cells), header left intact."""
    pages = path.stat().st_size // PAGE
    overwrite(path, (pages // 2) * PAGE + 8, os.urandom(64) + b"\xff" * 1024)


def damage_an_interior_page_pointer(path: Path) -> None:
    """Every page's type byte set to an invalid value in the second half of the file."""
    pages = path.stat().st_size // PAGE
    for page in range(pages // 2, pages):
        overwrite(path, page * PAGE, b"\x07")


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def not_a_database(path: Path) -> None:
    path.write_text("these are not the positions you are looking for\n" * 200)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "header": damage_header,
    "page size": damage_page_size,
    "inside a page": damage_a_page,
    "page types": damage_an_interior_page_pointer,
    "truncated": truncate,
    "not a database": not_a_database,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_store_gives_one_line_and_exit_status_2(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """However the store file is damaged, the node refuses to start with one line naming the
    store and what to do, exit status 2, and no traceback."""
    data = tmp_path / "data"
    path = make_store(data)
    damage(path)
    result = run_cli("alpha", "0", "--data-dir", str(data), input="AAPL 1\nhistory SYM001\n")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert "damaged" in lines[0]
    assert result.stdout == ""


def test_an_intact_store_passes_the_check_and_keeps_its_positions(tmp_path: Path) -> None:
    """The start-up check accepts an intact store: the node prints the stored view."""
    data = tmp_path / "data"
    path = make_store(data)
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM positions").fetchone()
    result = run_cli("alpha", "0", "--data-dir", str(data), input="")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == count == 300
