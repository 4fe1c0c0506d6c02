"""Tests of AioLoop: the node's asyncio loop thread, its stop, and the janus bridge."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from position_distributor.aioloop import AioLoop, AioLoopError
from position_distributor.node import Config, Node, NodeError

from .waiting import Recorder, capture_logs


@pytest.fixture
def aio(no_thread_leak: None) -> Iterator[AioLoop]:
    """A started loop, stopped at the end (before the thread-leak check)."""
    loop = AioLoop().start()
    try:
        yield loop
    finally:
        loop.stop()


def test_run_returns_a_concurrent_future_with_the_result(aio: AioLoop) -> None:
    """A coroutine run from another thread runs in the loop thread and its result comes back."""

    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert aio.run(where()).result(5) == "asyncio"
    assert aio.call(where()) == "asyncio"


def test_run_hands_the_exception_to_the_caller(aio: AioLoop) -> None:
    """A coroutine that raises gives its exception to whoever waits on the future."""

    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        aio.run(fail()).result(5)


def test_call_soon_runs_the_callback_in_the_loop_thread(aio: AioLoop) -> None:
    """call_soon runs a plain callback in the loop thread, in order."""
    seen = Recorder()
    aio.call_soon(lambda: seen.append(("a", threading.current_thread().name)))
    aio.call_soon(seen.append, ("b", threading.current_thread().name))
    items = seen.wait_for(lambda items: len(items) == 2 and items)
    assert items[0] == ("a", "asyncio")
    assert items[1][0] == "b"


def test_a_failing_callback_is_logged_and_the_loop_goes_on(aio: AioLoop) -> None:
    """An exception in a callback is logged with its type, and later work still runs."""

    def broken() -> None:
        raise RuntimeError("callback broke")

    with capture_logs("ERROR") as logs:
        aio.call_soon(broken)
        logs.wait_for_text("asyncio: Exception in callback")

    async def still() -> int:
        return 42

    assert aio.call(still()) == 42


def test_a_failing_spawned_task_is_logged(aio: AioLoop) -> None:
    """A background task that raises is logged by name, never swallowed."""

    async def broken() -> None:
        raise RuntimeError("task broke")

    with capture_logs("ERROR") as logs:
        aio.spawn(broken(), "the-broken-one")
        line = logs.wait_for_text("task the-broken-one failed")
    assert line.startswith("ERROR")


def test_stop_is_quick_idempotent_and_ends_the_thread(no_thread_leak: None) -> None:
    """stop() with a task that never ends and a slow hook takes about a second, joins the
    thread, and a second stop() does nothing."""
    aio = AioLoop().start()
    cancelled = threading.Event()
    hooked = threading.Event()
    running = threading.Event()

    async def forever() -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def slow_hook() -> None:
        hooked.set()
        await asyncio.sleep(3600)

    aio.spawn(forever(), "forever")
    aio.on_stop(slow_hook)
    assert running.wait(5)
    with capture_logs("ERROR") as logs:
        started = time.monotonic()
        aio.stop(timeout=0.5)
        took = time.monotonic() - started
    assert took < 1.0
    assert hooked.is_set()
    assert cancelled.is_set()
    assert logs.lines_with("ran out of time")
    assert not aio.running
    aio.stop()
    with pytest.raises(AioLoopError):
        aio.call_soon(print)


def test_stop_hooks_run_last_registered_first(no_thread_leak: None) -> None:
    """Stop hooks are awaited in reverse order of registration, and a failing one is logged."""
    aio = AioLoop().start()
    order = Recorder()

    def hook(name: str, fail: bool = False) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            order.append(name)
            if fail:
                raise RuntimeError("hook broke")

        return run

    aio.on_stop(hook("first"))
    aio.on_stop(hook("second", fail=True))
    aio.on_stop(hook("third"))
    with capture_logs("ERROR") as logs:
        aio.stop()
    assert order.snapshot() == ["third", "second", "first"]
    assert logs.lines_with("a stop hook of the asyncio loop failed")


def test_a_loop_starts_once_and_a_never_started_loop_stops_quietly() -> None:
    """start() twice is a misuse; stop() of a loop never started only marks it stopped."""
    idle = AioLoop()
    idle.stop()
    with pytest.raises(AioLoopError):
        idle.start()
    with pytest.raises(AioLoopError):
        idle.run(asyncio.sleep(0))


def test_stop_from_the_loop_thread_is_refused(aio: AioLoop) -> None:
    """The loop's own thread cannot stop (and join) itself: it is told so."""

    async def stop_myself() -> None:
        aio.stop()

    with pytest.raises(AioLoopError, match="own thread"):
        aio.call(stop_myself())


def test_janus_bridges_a_thread_to_the_loop_without_blocking(aio: AioLoop) -> None:
    """Items put from a plain thread with put_nowait arrive, in order, at a coroutine."""
    queue = aio.make_janus(100)

    async def take(n: int) -> list[int]:
        return [await queue.async_q.get() for _ in range(n)]

    future = aio.run(take(50))
    producer = threading.Thread(target=lambda: [queue.sync_q.put_nowait(i) for i in range(50)])
    producer.start()
    producer.join()
    assert future.result(5) == list(range(50))


def test_the_node_starts_its_loop_only_on_demand_and_stops_it(
    tmp_path: Path, no_thread_leak: None
) -> None:
    """A node has no asyncio thread until aioloop() is called; stop() ends it."""
    node = Node(Config("alpha", data_dir=tmp_path)).start()
    try:
        assert "asyncio" not in {t.name for t in threading.enumerate()}
        aio = node.aioloop()
        assert node.aioloop() is aio
        assert "asyncio" in {t.name for t in threading.enumerate()}
    finally:
        node.stop()
    assert not aio.running
    with pytest.raises(NodeError):
        node.aioloop()
