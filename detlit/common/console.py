"""Where tables and progress are printed: a terminal at its width, anything else in full.

Rich cuts a table to 80 columns when output is not a terminal (a pipe into ``tee``, a file, a CI
log), so every class name of a wide table would end in an ellipsis. :func:`console` gives such
output a width no table reaches: rows as long as their content, never cut.
"""

from __future__ import annotations

import sys

from rich.console import Console

FULL_WIDTH = 10_000  # characters: wider than any table detlit prints, so nothing is cut


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the terminal's width there, full width elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(stderr=stderr, width=None if terminal else FULL_WIDTH)


def plain_text(renderable: object) -> str:
    """A table (any rich renderable) as plain text at full width, for a log line or a file."""
    import io

    out = Console(width=FULL_WIDTH, record=True, file=io.StringIO(), color_system=None)
    out.print(renderable)
    return "\n".join(line.rstrip() for line in out.export_text().rstrip().splitlines())
