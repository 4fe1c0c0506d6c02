"""Storage faults on real filesystems: a full disk, a read-only mount, a data dir removed or
not writable; the node refuses what it cannot store, keeps its book equal to its store, and
trades again by itself once the fault is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from position_distributor.engine import TradeNotStored
from position_distributor.node import Config, Node
from position_distributor.store import read_book

from .inproc import FAST_LIMITS, Rows
from .procs import Cluster, run_cli, without_root_powers
from .required import unavailable

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@contextlib.contextmanager
def mounted(target: Path, *mount: str) -> Iterator[Path]:
    """``mount *mount target`` for the test, unmounted at its end; without the powers to
    mount, the test is skipped (and fails in CI, which runs as root)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", *mount, str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot mount {' '.join(mount)} here ({exc})", in_ci="CI runs as root")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs mounted for the test."""
    with mounted(tmp_path / "fs", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs") as fs:
        yield fs


def fill(fs: Path) -> Path:
    """Fill the filesystem ``fs`` to the last byte with one file; return it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 4096, 1):  # to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def stored(path: Path) -> dict[tuple[str, str], float]:
    """The positions a store file holds, read by another connection."""
    return {key: p.net_position for key, p in read_book(path).items()}


def burst(count: int, prefix: str = "N") -> list[str]:
    """``count`` trades in as many new symbols: enough pages to overflow a full disk."""
    return [f"{prefix}{i:05d}.LONG.SYMBOL.NAME {i + 1}" for i in range(count)]


def test_a_full_disk_refuses_the_batch_keeps_the_book_and_trades_again_once_space_is_back(
    small_fs: Path, cluster: Cluster
) -> None:
    """On a full tmpfs a burst is refused (an error line, no row, the node up, the real cause
    in the log), the book stays what is stored, and trading resumes by itself after space
    is freed."""
    node = cluster.add("alpha", data_dir=small_fs / "data", recovery_timeout=0)
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 1.0})
    filler = fill(small_fs)
    mark = node.mark()
    node.type(*burst(3000))
    node.wait_for_log("error: ", start=mark.err)
    node.wait_for_log("database or disk is full", start=mark.err)
    assert node.alive
    node.sync_stderr()
    assert not node.log_lines("cannot rollback", mark.err)
    assert node.rows(mark.out) == []
    # The book is what is stored: the refused trades are not in positions.
    assert node.command_output("positions", "Current positions") == [
        f"alpha | AAPL | 1.000000 | {node.view[('alpha', 'AAPL')][1]}"
    ]
    # Space back: the next trade applies on the committed book, with no restart.
    filler.unlink()
    mark = node.mark()
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 2.0})
    node.wait_for_log("stored again", start=mark.err)
    assert node.stop() == 0
    assert stored(small_fs / "data" / "alpha.sqlite3") == {("alpha", "AAPL"): 2.0}


def test_a_full_disk_fails_the_api_future_with_trade_not_stored(small_fs: Path) -> None:
    """``Node.trade()``'s future fails with ``TradeNotStored`` naming the cause, positions()
    keeps only what is stored, and a later trade succeeds once space is back."""
    config = Config("alpha", data_dir=small_fs / "data", recovery_timeout=0, limits=FAST_LIMITS)
    rows = Rows()
    with Node(config, out=rows) as node:
        assert node.trade("AAPL", 1).result(10).net_position == 1.0
        filler = fill(small_fs)
        futures = [node.trade(f"S{i:05d}.A.LONG.SYMBOL.NAME.X", 1) for i in range(3000)]
        failed = [f.exception(10) for f in futures]
        assert any(isinstance(e, TradeNotStored) for e in failed)
        assert all(e is None or isinstance(e, TradeNotStored) for e in failed)
        message = str(next(e for e in failed if e is not None))
        assert "database or disk is full" in message
        applied = {p.symbol for p, e in zip(futures, failed, strict=True) if e is None}
        held = {p.symbol for p in node.positions()}
        stored_now = {sym for (_, sym) in stored(small_fs / "data" / "alpha.sqlite3")}
        assert held == stored_now
        assert len(held) == 1 + len(applied)
        filler.unlink()
        assert node.trade("AAPL", 1).result(10).net_position == 2.0


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 filesystem on a loop device, mounted to turn read-only at its first error
    (as a failing disk's usually is)."""
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    try:
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot make an ext4 filesystem ({exc})", in_ci="CI has e2fsprogs")
    with mounted(tmp_path / "ext4", "-o", "loop,errors=remount-ro", str(image)) as fs:
        yield fs


def turn_read_only(mount_point: Path) -> None:
    """Make the kernel turn an ext4 filesystem read-only as it does on a disk error."""
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(mount_point)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(f"/sys/fs/ext4/{Path(source).name}/trigger_fs_error").write_text("test\n")


def test_a_data_dir_whose_disk_turns_read_only_refuses_trades_and_stays_up(
    ext4_fs: Path, cluster: Cluster
) -> None:
    """When the disk under a running node turns read-only (an ext4 error), trades are refused
    with the cause, no row is printed, the node stays up and its book is what was stored."""
    node = cluster.add("alpha", data_dir=ext4_fs / "data", recovery_timeout=0)
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 1.0})
    turn_read_only(ext4_fs)
    mark = node.mark()
    node.type("AAPL 5", "MSFT 2")
    line = node.wait_for_log("error: ", start=mark.err)
    assert "AAPL 5" in line and "MSFT 2" in line
    node.wait_for_log("ERROR", start=mark.err)
    node.sync_stderr()
    assert node.rows(mark.out) == []
    assert node.alive
    assert [
        row.split(" | ")[:3] for row in node.command_output("positions", "Current positions")
    ] == [["alpha", "AAPL", "1.000000"]]
    assert node.stop() == 0
    assert stored(ext4_fs / "data" / "alpha.sqlite3") == {("alpha", "AAPL"): 1.0}


def test_a_data_dir_removed_under_a_running_node_is_noticed(cluster: Cluster) -> None:
    """Removing the data dir under a running node gives an ERROR naming the store and refuses
    trades: nothing is written to a file that no longer exists."""
    node = cluster.add("alpha", recovery_timeout=0)
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 1.0})
    shutil.rmtree(node.data_dir)
    mark = node.mark()
    node.type("AAPL 1")
    line = node.wait_for_log("ERROR", start=mark.err)
    assert "alpha.sqlite3" in line and "removed" in line
    node.wait_for_log("error: ", start=mark.err)
    node.sync_stderr()
    assert node.rows(mark.out) == []
    assert node.alive


def make_read_only(data: Path) -> None:
    for path in data.iterdir():
        path.chmod(0o444)
    data.chmod(0o555)


def can_write(directory: Path) -> bool:
    """Whether a process without root's powers can create a file in ``directory``."""
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(directory / 'probe')!r}, 'w')"],
        capture_output=True,
        preexec_fn=without_root_powers,
    )
    return probe.returncode == 0


def test_a_data_dir_the_node_may_not_write_is_refused_at_start_with_one_line(
    tmp_path: Path,
) -> None:
    """A node without root's powers on a store in a read-only data dir exits 2 with one line
    (as root it could write anyway: the test drops those powers, and checks they are gone)."""
    data = tmp_path / "data"
    created = run_cli(
        "alpha", "0", "--data-dir", str(data), "--recovery-timeout", "0", input="A 1\n"
    )
    assert created.returncode == 0, created.stderr
    make_read_only(data)
    assert not can_write(data)
    result = run_cli(
        "alpha", "0", "--data-dir", str(data), input="AAPL 1\n", preexec_fn=without_root_powers
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0] and str(data) in lines[0]


def test_a_running_node_keeps_storing_through_a_chmod_and_its_restart_is_refused(
    cluster: Cluster,
) -> None:
    """A node (without root's powers) whose data dir is made read-only while it runs keeps
    storing through the files it holds open; its restart is refused with one line."""
    node = cluster.add("alpha", recovery_timeout=0, start=False)
    node.preexec_fn = without_root_powers
    node.start()
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 1.0})
    make_read_only(node.data_dir)
    assert not can_write(node.data_dir)
    node.type("AAPL 1")
    node.wait_for_view({("alpha", "AAPL"): 2.0})
    assert node.stop() == 0
    assert stored(node.data_dir / "alpha.sqlite3") == {("alpha", "AAPL"): 2.0}
    result = run_cli("alpha", "0", "--data-dir", str(node.data_dir), preexec_fn=without_root_powers)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_peers_positions_that_cannot_be_stored_are_put_back_and_come_again_with_space(
    small_fs: Path, cluster: Cluster
) -> None:
    """On a full disk a peer's positions are refused (ERROR with the cause), kept out of the
    book, and arrive by the peer's resync once space is back."""
    alpha = cluster.add("alpha", data_dir=small_fs / "data", recovery_timeout=0)
    beta = cluster.add("beta", peers=[alpha.port], recovery_timeout=0)
    beta.type("AAPL 1")
    alpha.wait_for_view({("beta", "AAPL"): 1.0})
    filler = fill(small_fs)
    mark = alpha.mark()
    beta.type(*burst(3000, prefix="B"))
    alpha.wait_for_log("position(s) from peers refused", start=mark.err)
    alpha.sync_stderr()
    held = alpha.command_output("positions", "Current positions")
    assert {line.split(" | ")[1] for line in held} <= {"AAPL"} | {
        t.split()[0] for t in burst(3000, prefix="B")
    }
    assert len(held) == len(stored(small_fs / "data" / "alpha.sqlite3"))
    filler.unlink()
    expected = {("beta", "AAPL"): 1.0} | {
        ("beta", t.split()[0]): float(t.split()[1]) for t in burst(3000, prefix="B")
    }
    alpha.wait_until(
        lambda n: len(stored(small_fs / "data" / "alpha.sqlite3")) == len(expected),
        timeout=30,
        what="every position of beta stored",
    )
    assert alpha.alive and beta.alive
