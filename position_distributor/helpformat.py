"""The ``--help`` layout of the command-line tools: prose wrapped, examples kept as written."""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.HelpFormatter):
    """Wrap each paragraph of a description, a group's text or an epilog to the terminal,
    but keep indented lines (examples, commands) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                out.append(
                    textwrap.fill(
                        " ".join(prose), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
                prose.clear()

        for line in text.splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line[0].isspace():
                flush()
                out.append(indent + line)
            else:
                prose.append(line.strip())
        flush()
        return "\n".join(out)
