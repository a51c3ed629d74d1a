"""The corpus of bad inputs, area: the HTTP service's options checked at start.

Every numeric option of ``serve`` is a finite number in its range, checked before the model loads
(the workspace's checkpoint is a good one: only the option is wrong).
"""

from __future__ import annotations

from .corpus import Case, Workspace, args


def _serve(*option: str) -> list[str]:
    return ["--ckpt", "{ckpt}", *option]


CASES: list[Case] = [
    Case(
        "serve with an infinite batch timeout",
        "serve",
        args(*_serve("--batch-timeout", "inf")),
        r"^error: --batch-timeout is inf; use a number of seconds from 0 to 60 \(finite",
    ),
    Case(
        "serve with a NaN batch timeout",
        "serve",
        args(*_serve("--batch-timeout", "nan")),
        r"^error: --batch-timeout is nan; use a number of seconds from 0 to 60 \(finite",
    ),
    Case(
        "serve with a negative batch timeout",
        "serve",
        args(*_serve("--batch-timeout", "-1")),
        r"^error: --batch-timeout is -1\.0; use a number of seconds from 0 to 60$",
    ),
    Case(
        "serve with batches too large",
        "serve",
        args(*_serve("--batch-size", "500")),
        r"^error: --batch-size is 500; use a whole number from 1 to 64$",
    ),
    Case(
        "serve with a body limit of 0 bytes",
        "serve",
        args(*_serve("--max-image-bytes", "0")),
        r"^error: --max-image-bytes is 0; use 1 to 1073741824 bytes$",
    ),
    Case(
        "serve with a body limit over 1 GiB",
        "serve",
        args(*_serve("--max-image-bytes", "5000000000")),
        r"^error: --max-image-bytes is 5000000000; use 1 to 1073741824 bytes$",
    ),
    Case(
        "serve with a pixel limit Pillow never opens",
        "serve",
        args(*_serve("--max-image-pixels", "1000000000")),
        r"^error: --max-image-pixels is 1000000000; use 1 to \d+ pixels \(detlit decodes no larger",
    ),
    Case(
        "serve with a body timeout of 0",
        "serve",
        args(*_serve("--body-timeout", "0")),
        r"^error: --body-timeout is 0\.0; use a number of seconds from 1 to 600$",
    ),
    Case(
        "serve with an infinite body timeout",
        "serve",
        args(*_serve("--body-timeout", "inf")),
        r"^error: --body-timeout is inf; use a number of seconds from 1 to 600 \(finite",
    ),
    Case(
        "serve with a NaN body timeout",
        "serve",
        args(*_serve("--body-timeout", "nan")),
        r"^error: --body-timeout is nan; use a number of seconds from 1 to 600 \(finite",
    ),
    Case(
        "serve holding no request body",
        "serve",
        args(*_serve("--max-pending-bodies", "0")),
        r"^error: --max-pending-bodies is 0; use a whole number from 1 to 1024$",
    ),
    Case(
        "serve holding too many request bodies",
        "serve",
        args(*_serve("--max-pending-bodies", "100000")),
        r"^error: --max-pending-bodies is 100000; use a whole number from 1 to 1024$",
    ),
]


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``: they need none (the
    workspace's checkpoint is a good one)."""
