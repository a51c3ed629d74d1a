"""Files a run names: finding them from wherever a command runs, and fingerprinting them.

A run's config and checkpoint name their data with the paths typed at training time, often
relative to the folder training ran in. :func:`locate` finds such a path from the current folder
or from folders near the run (the report and the exporter both look for the run's data), and
:func:`sha256_file` is the one fingerprint of a file that the report and exported models record.
:func:`read_at_most` reads a file someone else may have written, its size checked first.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class TooLarge(Exception):
    """A file larger than a reader takes; ``size`` its bytes (None: it grew while being read)."""

    def __init__(self, size: int | None):
        super().__init__(size)
        self.size = size


def read_at_most(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, its size checked before it is read
    (and a file that grows while being read refused too). Callers first refuse pipes and devices
    (:func:`detlit.common.paths.not_a_file`) and word the sentences.

    Raises:
        TooLarge: the file is not a regular file or is larger than ``limit``.
        OSError: it cannot be opened or read.
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno())
        if not stat.S_ISREG(size.st_mode) or size.st_size > limit:
            raise TooLarge(size.st_size)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(None)
    return data


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
