"""A node of the previous release beside a node of this one: they still sync both ways.

The previous release is taken from git (``git archive`` of its commit) and run as a real
process, exactly as a firm upgrading one node at a time would run it. This release adds
optional Hello fields (ignored by the old node) and messages it sends only to a peer whose
Hello says it understands them (the old node's says nothing), so the pair must converge with
no protocol error on either side.
"""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from .procs import Cluster, NodeProcess

PREVIOUS_RELEASE = "9ab4238"  # the last commit before the Hello's instance and features
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the previous release's ``position_distributor`` package."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "position_distributor"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    where = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    assert not (where / "position_distributor" / "throttle.py").exists()  # truly the old one
    return where


def quiet(node: NodeProcess) -> None:
    """No protocol error, ERROR or traceback in ``node``'s log."""
    node.sync_stderr()
    bad = [
        line
        for line in node.errors_since()
        if "protocol error" in line or "ERROR" in line or "Traceback" in line
    ]
    assert not bad, f"{node.name}: {bad}"


@pytest.mark.parametrize("old_dials", [True, False], ids=["old-dials-new", "new-dials-old"])
def test_a_node_of_the_previous_release_syncs_with_this_one(
    cluster: Cluster, previous: Path, old_dials: bool
) -> None:
    """Old and new trade, converge, and each gets its own positions back from the other after
    losing its store; neither logs a protocol error."""
    if old_dials:
        new = cluster.add("strategy_1", recovery_timeout=0)
        old = cluster.add("strategy_2", peers=[new.port], recovery_timeout=5, cwd=previous)
    else:
        old = cluster.add("strategy_2", recovery_timeout=0, cwd=previous)
        new = cluster.add("strategy_1", peers=[old.port], recovery_timeout=5)
    assert "strategy_2 listening" in old.wait_for_log("listening on")
    new.type("AAPL 10")
    old.type("MSFT 5")
    expected = {("strategy_1", "AAPL"): 10.0, ("strategy_2", "MSFT"): 5.0}
    cluster.wait_for_view(expected)

    # Each loses its store in turn and takes its own positions back from the other.
    for lost in (old, new):
        lost.stop()
        cluster.restart(lost.name, wipe=True)
        lost.type("ZZZ 1")  # held until the other has synced, then applied on top
        expected[(lost.name, "ZZZ")] = expected.get((lost.name, "ZZZ"), 0.0) + 1.0
        cluster.wait_for_view(expected)
    new.type("AAPL 1")
    expected[("strategy_1", "AAPL")] = 11.0
    cluster.wait_for_view(expected)
    # Two of the new node's 2 s digest intervals: had it sent the old node a digest (or any
    # message the old node does not know), the old node would have closed the connection.
    with pytest.raises(AssertionError, match="timed out"):
        old.wait_until(lambda n: n.log_lines("protocol error"), 4.5, "a protocol error")
    for node in (old, new):
        quiet(node)
