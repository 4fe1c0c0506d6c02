"""What a test needs from the machine (a browser, a mount): skipped without it on a
developer's machine, a failure when ``CI=true``, so CI never passes without running it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(why: str, *, in_ci: str) -> NoReturn:
    """The test cannot run here because of ``why``: skip it, or fail it in CI, where
    ``in_ci`` says what CI provides that was missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: {in_ci}")
    pytest.skip(why)
