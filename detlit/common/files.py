"""Files a run names: finding them from wherever a command runs, fingerprinting them, reading them bounded.

A run's config and checkpoint name their data with the paths typed at training time, often
relative to the folder training ran in. :func:`locate` finds such a path from the current folder
or from folders near the run (the report and the exporter both look for the run's data), and
:func:`sha256_file` is the one fingerprint of a file that the report and exported models record.
:func:`read_bounded` reads a file someone else may have written, its kind and size checked first,
or ends in one sentence of the caller's error type (:func:`read_at_most` below it reads only).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detlit.common.paths import not_a_file
from detlit.errors import DetlitError

# A named pipe put where a checked file was opens without waiting for a writer (and is then
# refused from its kind); a regular file reads the same with or without it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class TooLarge(Exception):
    """A file larger than a reader takes; ``size`` its bytes (None: it grew while being read)."""

    def __init__(self, size: int | None):
        super().__init__(size)
        self.size = size


def read_at_most(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, its size checked before it is read
    (and a file that grows while being read refused too); :func:`read_bounded` refuses pipes and
    devices by name first and words the sentences.

    Raises:
        TooLarge: the file is not a regular file or is larger than ``limit``.
        OSError: it cannot be opened or read.
    """
    with open(os.open(path, _OPEN_FLAGS), "rb") as handle:
        size = os.fstat(handle.fileno())
        if not stat.S_ISREG(size.st_mode) or size.st_size > limit:
            raise TooLarge(size.st_size)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(None)
    return data


def read_bounded(path: Path, limit: int, error: type[DetlitError], fix: str) -> bytes:
    """The bytes of a file someone else wrote, at most ``limit`` of them, or one sentence of
    ``error`` ending in ``fix`` (what the person can do):

    * ``<path> is 1,234 bytes, more than the 1,000 bytes detlit reads of it; <fix>`` (refused from
      its size, before it is read),
    * ``<path> is a named pipe (FIFO), not a regular file; <fix>`` (or ``does not exist``, ``is a
      folder, not a file``: :func:`detlit.common.paths.not_a_file`; nothing but a regular file is
      opened, so a pipe or a device never blocks or floods the reader),
    * ``<path> cannot be read (Permission denied); <fix>``.

    Raises:
        DetlitError: of type ``error``, when the file is missing, not a regular file, larger than
            ``limit`` or unreadable.
        OSError: its name is longer than the filesystem takes (:func:`detlit.common.paths.name_failure`).
    """
    problem = not_a_file(path)
    if problem is not None:
        raise error(f"{path} {problem}; {fix}")
    try:
        return read_at_most(path, limit)
    except TooLarge as err:
        problem = not_a_file(path)  # replaced by a pipe or a device since it was checked
        if problem is not None:
            raise error(f"{path} {problem}; {fix}") from None
        size = f"{err.size:,} bytes, more than" if err.size is not None else "more than"
        raise error(f"{path} is {size} the {limit:,} bytes detlit reads of it; {fix}") from None
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror}); {fix}") from err


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(value: Any, anchors: Sequence[Path]) -> Path | None:
    """An existing file or folder named in a config: absolute, or relative to the current folder
    or to one of ``anchors`` (a run is often reported from elsewhere than where it was trained)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for base in (Path.cwd(), *anchors):
        if (base / path).exists():
            return base / path
    return None
