"""What every ``python -m detlit.X`` entry point shares: logging set-up and clean failures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from detlit.errors import DetlitError

T = TypeVar("T")
EXIT_USER_ERROR = 2


def configure_logging(level: int = logging.INFO) -> None:
    """Messages of detlit (and what it captures) on stderr, one line each."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_cli(main: Callable[[list[str] | None], T], args: list[str] | None = None) -> T:
    """Run an entry point; a user error ends in one sentence and exit status 2, not a traceback."""
    configure_logging()
    try:
        return main(args)
    except DetlitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
