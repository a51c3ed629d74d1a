"""Files a run names: finding them from wherever a command runs, and fingerprinting them.

A run's config and checkpoint name their data with the paths typed at training time, often
relative to the folder training ran in. :func:`locate` finds such a path from the current folder
or from folders near the run (the report and the exporter both look for the run's data), and
:func:`sha256_file` is the one fingerprint of a file that the report and exported models record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
