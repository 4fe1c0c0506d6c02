"""Shared fixtures: real processes and threads, all stopped at the end of each test."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from .inproc import Nodes
from .procs import Cluster
from .rawpeer import RawPeer

pytest_plugins = ["tests.nats_support", "tests.browser"]

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Node processes for one test; every one is stopped by PID at the end."""
    nodes = Cluster(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if a thread it started is still alive at its end."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads still alive: {[t.name for t in leaked]}"


@pytest.fixture
def nodes(tmp_path: Path, no_thread_leak: None) -> Iterator[Nodes]:
    """In-process nodes under tmp_path, all stopped before the thread-leak check."""
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def raw_peers() -> Iterator[list[RawPeer]]:
    """Raw sockets opened by a test, closed at its end."""
    opened: list[RawPeer] = []
    yield opened
    for raw in opened:
        raw.close()
