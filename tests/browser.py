"""A real headless browser for the risk view's tests: the system's chromium driven by Playwright.

One browser per pytest run (``browser``, session scope), a fresh context per test (``page``).
Playwright's own browser download cannot work here, so it launches Debian's ``chromium``
(``/usr/bin/chromium``; ``.ci/run`` installs it). Without it the browser tests are skipped,
except when ``CI=true``: then they fail, so CI never passes without running them.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from position_distributor.aioloop import AioLoop

from .required import unavailable

__all__ = ["CHROMIUM", "Remote", "browser", "page"]

CHROMIUM = os.environ.get("PD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing(why: str) -> None:
    unavailable(why, in_ci="the browser tests must run in CI (.ci/run installs chromium)")


class Remote:
    """A Playwright object of the async API, used from the test's thread: each call runs on
    the browser's own event loop thread and waits for its result; results that are
    Playwright objects (a page, an element) come back wrapped the same way.

    Playwright's sync API would run an event loop in the main thread for the whole session,
    and every later test that calls ``asyncio.run`` would fail; this keeps it in a thread.
    """

    def __init__(self, aio: AioLoop, target: Any) -> None:
        self._aio = aio
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return _wrap(self._aio, attribute)

        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                result = attribute(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                return result

            return _wrap(self._aio, self._aio.call(run(), timeout=120))

        return call


def _wrap(aio: AioLoop, value: Any) -> Any:
    if type(value).__module__.startswith("playwright."):
        return Remote(aio, value)
    return value


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """The one headless chromium of this run (on a loop thread of its own)."""
    if not os.path.exists(CHROMIUM):
        _missing(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed (make install)")
    aio = AioLoop("browser").start()

    async def launch() -> tuple[Any, Any]:
        playwright = await async_playwright().start()
        try:
            # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
            launched = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
        except Exception:
            await playwright.stop()
            raise
        return playwright, launched

    try:
        playwright, launched = aio.call(launch(), timeout=120)
    except Exception as exc:
        aio.stop()
        _missing(f"chromium at {CHROMIUM} does not start: {exc}")

    async def close() -> None:
        await launched.close()
        await playwright.stop()

    try:
        yield Remote(aio, launched)
    finally:
        try:
            aio.call(close(), timeout=30)
        finally:
            aio.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (no cookies from other tests), closed at the end."""
    # bypass_csp: the page's Content-Security-Policy forbids eval, which Playwright's polling
    # predicates use; the page itself needs no exception (its CSP is checked by test_riskview).
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    try:
        yield context.new_page()
    finally:
        context.close()
