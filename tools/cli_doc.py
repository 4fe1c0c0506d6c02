"""Regenerate the generated parts of docs/cli.md: the ``--help`` of each command, as run.

A generated part is a fenced ``text`` block between two markers naming the command::

    <!-- generated: python -m position_distributor --help -->
    ```text
    ...
    ```
    <!-- end generated -->

``make docs`` (``.venv/bin/python tools/cli_doc.py``) rewrites each such block with what the
command prints today, at 80 columns; ``tests/test_docs.py`` fails when one is stale. The text
is argparse's, so it is that of the Python the venv runs (3.11 here); another version lays
out some lines differently, and then ``make docs`` is what to run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["CLI_MD", "generated", "main", "render"]

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
COLUMNS = 80

_BLOCK = re.compile(
    r"(?P<head><!-- generated: (?P<command>[^\n]*?) -->\n)"
    r"```text\n.*?```\n"
    r"(?P<tail><!-- end generated -->)",
    re.DOTALL,
)


def generated(command: str) -> str:
    """What ``command`` (``python -m ...``, run with this interpreter) prints, at 80 columns."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    env = dict(os.environ, COLUMNS=str(COLUMNS), PYTHONPATH=str(ROOT))
    env.pop("PD_SECRET_FILE", None)  # the help shows the default, not this shell's value
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False
    )
    if result.returncode != 0 or result.stderr:
        raise RuntimeError(f"{command!r} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def render(text: str) -> str:
    """``text`` with every generated block replaced by its command's output today."""

    def block(found: re.Match[str]) -> str:
        output = generated(found["command"])
        return f"{found['head']}```text\n{output.rstrip()}\n```\n{found['tail']}"

    return _BLOCK.sub(block, text)


def main() -> int:
    before = CLI_MD.read_text()
    after = render(before)
    if after != before:
        CLI_MD.write_text(after)
        print(f"{CLI_MD.relative_to(ROOT)}: regenerated")
    else:
        print(f"{CLI_MD.relative_to(ROOT)}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
