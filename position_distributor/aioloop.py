"""AioLoop: the node's one asyncio event loop, in a thread of its own, for asyncio services.

The HTTP server of the risk view (``--http``) and the NATS client (``--nats``) speak asyncio;
the engine is threads and blocking queues. Each node runs at most one event loop, started the
first time a service needs it (``Node.aioloop()``), in a thread named ``asyncio``. The
engine's threads never await and the loop never blocks on a lock: changes cross with janus
queues (``make_janus``), whose sync side never blocks the engine (``put_nowait``) and whose
async side never blocks the loop.

Usage from any thread but the loop's::

    aio = AioLoop().start()
    future = aio.run(some_coroutine())     # a concurrent.futures.Future
    aio.call_soon(callback, arg)           # a plain callback in the loop thread
    aio.spawn(background(), "name")        # a task whose failure is logged
    aio.on_stop(service.aclose)            # awaited at stop, last registered first
    aio.stop()                             # within a second; idempotent; joins the thread

Nothing fails silently: an exception in a callback, in a spawned task or in a shutdown hook is
logged with its traceback (the loop's exception handler goes to loguru); a coroutine run with
``run()`` hands its exception to the caller through the future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

import janus
from loguru import logger

__all__ = ["AioLoop", "AioLoopError"]

T = TypeVar("T")

DEFAULT_STOP_TIMEOUT: Final = 1.0  # seconds: the whole stop, hooks and tasks included


class AioLoopError(Exception):
    """The loop is misused: not started, already stopped, or stopped from its own thread."""


class AioLoop:
    """One asyncio event loop running in its own thread; see the module docstring."""

    def __init__(self, name: str = "asyncio") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._hooks: list[Callable[[], Awaitable[Any]]] = []  # touched only in the loop thread
        self._tasks: set[asyncio.Task[Any]] = set()  # spawned, kept alive until done
        # Mutex serializing start() and stop() and protecting _state.
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> stopped

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (for code that must name it; prefer ``run`` and ``call_soon``)."""
        if self._loop is None or self._state != "running":
            raise AioLoopError(f"the {self.name} loop is {self._state}")
        return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> AioLoop:
        """Start the loop's thread; returns once the loop runs. A loop starts once."""
        with self._lock:
            if self._state != "new":
                raise AioLoopError(f"the {self.name} loop is {self._state}; it starts once")
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(_log_exception)
            started = threading.Event()
            thread = threading.Thread(
                target=self._run_loop, args=(loop, started), name=self.name, daemon=True
            )
            thread.start()
            started.wait()
            self._loop, self._thread = loop, thread
            self._state = "running"
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` in the loop; its result or exception comes through the future."""
        try:
            loop = self.loop
        except AioLoopError:
            coro.close()  # never awaited: say nothing of it
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        """Run ``coro`` in the loop and wait for its result (never from the loop thread)."""
        if self.in_loop_thread():
            coro.close()
            raise AioLoopError("call() from the loop's own thread would wait forever")
        return self.run(coro).result(timeout)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` in the loop thread; an exception it raises is logged."""
        self.loop.call_soon_threadsafe(callback, *args)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` as a background task (from any thread); its failure is logged.

        Cancelled at stop, after the shutdown hooks.
        """
        loop = self.loop
        if self.in_loop_thread():
            self._spawn(coro, name)
        else:
            loop.call_soon_threadsafe(self._spawn, coro, name)

    def on_stop(self, hook: Callable[[], Awaitable[Any]]) -> None:
        """Await ``hook()`` in the loop at stop, before spawned tasks are cancelled.

        Hooks run last registered first, within the stop's time budget; one that fails or
        runs out of time is logged and the stop goes on.
        """
        if self.in_loop_thread():
            self._hooks.append(hook)
        else:
            self.loop.call_soon_threadsafe(self._hooks.append, hook)

    def make_janus(self, maxsize: int = 0) -> janus.Queue[Any]:
        """A janus queue bound to this loop (janus must be created inside its loop)."""

        async def make() -> janus.Queue[Any]:
            return janus.Queue(maxsize)

        return self.call(make())

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Run the shutdown hooks, cancel spawned tasks, stop the loop and join its thread.

        Idempotent; a loop never started just becomes stopped. Takes at most about
        ``timeout`` seconds however the hooks and tasks behave.
        """
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            if self.in_loop_thread():
                raise AioLoopError("stop() from the loop's own thread cannot join it")
            self._state = "stopping"
            loop, thread = self._loop, self._thread
            assert loop is not None and thread is not None
            deadline = time.monotonic() + timeout
            closing = asyncio.run_coroutine_threadsafe(self._close(deadline), loop)
            try:
                closing.result(max(0.0, deadline - time.monotonic()) + 0.1)
            except Exception:  # TimeoutError, or a bug in _close: the loop stops all the same
                logger.opt(exception=True).error("the {} loop did not close cleanly", self.name)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
            if thread.is_alive():
                logger.error("the {} thread did not end within {:g}s", self.name, timeout)
            self._state = "stopped"

    # In the loop thread.

    def _run_loop(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        """Thread body: run the loop until stopped, then close it."""
        try:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()
        except Exception:  # a safety net: this branch should never run
            logger.opt(exception=True).error("the {} loop failed", self.name)
        finally:
            started.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                logger.opt(exception=True).error("closing the {} loop failed", self.name)
            finally:
                loop.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        if self._state != "running":  # stopping: spawned tasks are being cancelled
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("task {} failed", task.get_name())

    async def _close(self, deadline: float) -> None:
        """Await the hooks (last first), then cancel what was spawned, by the deadline."""
        hooks, self._hooks = self._hooks[::-1], []
        for hook in hooks:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(hook(), max(left, 0.01))
            except TimeoutError:
                logger.error("a stop hook of the {} loop ran out of time: {!r}", self.name, hook)
            except Exception:
                logger.opt(exception=True).error("a stop hook of the {} loop failed", self.name)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            left = deadline - time.monotonic()
            await asyncio.wait(tasks, timeout=max(left, 0.01))


def _log_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: to the log, with the traceback, never swallowed."""
    exception = context.get("exception")
    message = context.get("message", "unhandled exception in the event loop")
    logger.opt(exception=exception).error("asyncio: {}", message)
