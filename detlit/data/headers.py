"""Stage 1 (reading the json), image headers: what each image file says (size after EXIF orientation, mode), read in
parallel and remembered between runs.

:func:`read_headers` reads every listed file's header in a thread pool (with ``decode=True`` it
also decodes and hashes each file). Reading 118k JPEG headers takes seconds (about 65 us a file
on one core, bound by Python), which a run would pay at every start, on every process; so for
datasets of :data:`CACHE_MIN_IMAGES` images or more, the headers read are kept in a cache file,
one per image folder, and a later read only takes ``stat`` of each file: an entry is used while
the file's size and modification time are those it was read with, and read again otherwise.
Files that are missing or cannot be read are never cached. Headers are read through
:func:`detlit.data.images.open_image`: a file of more pixels than detlit decodes is marked
``too_large`` (with the sentence that says so) and never decoded. The cache lives in
``$DETLIT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/detlit``, else ``~/.cache/detlit``); delete it at
any time. ``DETLIT_CACHE_DIR=off`` switches it off.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import UnidentifiedImageError

from detlit.common.outputs import atomic_write
from detlit.data.images import ImageTooLarge, open_image
from detlit.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

CACHE_MIN_IMAGES = 2000  # below this a cold read takes well under a second: no cache file
CACHE_VERSION = 1
# EXIF orientations 5-8 swap width and height.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class FileInfo:
    """What the image file on disk says about one image record."""

    exists: bool = False
    width: int = 0  # after the EXIF orientation is applied
    height: int = 0
    orientation: int = 1
    mode: str = ""
    sha1: str = ""
    error: str = ""
    too_large: bool = False  # more pixels than detlit decodes; ``error`` says so in one sentence


def inspect_file(path: Path, decode: bool) -> FileInfo:
    """Read one image's header (and decode and hash it when ``decode``), never raising for the file.

    Raises:
        ConfigError: ``$DETLIT_MAX_IMAGE_PIXELS`` is not a number (a setting, not a file's fault).
    """
    info = FileInfo()
    if not path.is_file():
        return info
    info.exists = True
    try:
        with open_image(path) as image:
            info.mode = image.mode
            info.orientation = int(image.getexif().get(0x0112, 1) or 1)
            width, height = image.size
            if info.orientation in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            info.width, info.height = width, height
            if decode:
                image.load()
        if decode:
            info.sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    except ImageTooLarge as err:
        info.error, info.too_large = str(err), True
    except ConfigError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        info.error = f"{type(err).__name__}: {err}"
    return info


@dataclass
class Headers:
    """The headers of a list of files, one entry per file, as columns.

    ``read`` is False for the files that were not looked at (their paths leave the image root).
    """

    read: np.ndarray  # bool
    exists: np.ndarray  # bool
    width: np.ndarray  # int64, after EXIF orientation
    height: np.ndarray  # int64
    orientation: np.ndarray  # int64
    mode: list[str]
    sha1: list[str]
    errors: dict[int, str] = field(default_factory=dict)
    too_large: set[int] = field(default_factory=set)  # files of more pixels than detlit decodes (in ``errors`` too)
    cached: int = 0  # entries taken from the cache

    @classmethod
    def empty(cls, count: int) -> Headers:
        return cls(
            read=np.zeros(count, bool),
            exists=np.zeros(count, bool),
            width=np.zeros(count, np.int64),
            height=np.zeros(count, np.int64),
            orientation=np.ones(count, np.int64),
            mode=[""] * count,
            sha1=[""] * count,
        )

    @property
    def usable(self) -> np.ndarray:
        """Files that exist and whose header could be read."""
        usable = self.exists.copy()
        usable[list(self.errors)] = False
        return usable

    def info(self, index: int) -> FileInfo:
        return FileInfo(
            bool(self.exists[index]),
            int(self.width[index]),
            int(self.height[index]),
            int(self.orientation[index]),
            self.mode[index],
            self.sha1[index],
            self.errors.get(index, ""),
            index in self.too_large,
        )

    def set(self, index: int, info: FileInfo) -> None:
        self.read[index] = True
        self.exists[index] = info.exists
        self.width[index], self.height[index], self.orientation[index] = info.width, info.height, info.orientation
        self.mode[index], self.sha1[index] = info.mode, info.sha1
        if info.error:
            self.errors[index] = info.error
        if info.too_large:
            self.too_large.add(index)


def cache_dir() -> Path | None:
    """Where header caches live (None: switched off)."""
    configured = os.environ.get("DETLIT_CACHE_DIR")
    if configured:
        return None if configured.lower() == "off" else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "detlit"


def cache_path(root: Path) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    key = hashlib.sha1(str(root.resolve()).encode("utf-8")).hexdigest()[:20]
    return folder / f"headers-{key}.npz"


def _stat(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of a regular file (links followed); None when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def _load_cache(path: Path) -> dict[str, tuple[int, int, int, int, int, str]]:
    """name -> (size, mtime_ns, width, height, orientation, mode); empty when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if int(stored["version"]) != CACHE_VERSION:
                return {}
            names = stored["names"].tobytes()
            offsets = stored["offsets"].tolist()
            columns = [stored[key].tolist() for key in ("size", "mtime", "width", "height", "orientation", "mode")]
    except (OSError, ValueError, KeyError) as err:
        log.debug("header cache %s not used: %s", path, err)
        return {}
    keys = [names[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
    return dict(zip(keys, zip(*columns, strict=True), strict=True))


def _save_cache(path: Path, entries: dict[str, tuple[int, int, int, int, int, str]]) -> None:
    encoded = [name.encode("utf-8") for name in entries]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(name) for name in encoded], out=offsets[1:])
    values = list(zip(*entries.values(), strict=True)) or [()] * 6
    try:
        with atomic_write(path) as handle:
            np.savez(
                handle,
                version=np.array(CACHE_VERSION),
                names=np.frombuffer(b"".join(encoded), np.uint8),
                offsets=offsets,
                size=np.array(values[0], np.int64),
                mtime=np.array(values[1], np.int64),
                width=np.array(values[2], np.int64),
                height=np.array(values[3], np.int64),
                orientation=np.array(values[4], np.int64),
                mode=np.array(values[5], dtype="U8"),
            )
    except OSError as err:  # a read-only home, a full disk: the next run reads the headers again
        log.warning("could not write the image header cache %s (%s); headers are read again next time", path, err)


def _chunked(pool: ThreadPoolExecutor, function: Callable[[T], R], items: Sequence[T], size: int = 256) -> list[R]:
    """``[function(item) for item in items]`` in the pool, a chunk of items per task (a task per item
    costs more than a stat)."""
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    return [result for chunk in pool.map(lambda chunk: [function(item) for item in chunk], chunks) for result in chunk]


def read_headers(
    root: Path,
    names: Sequence[str],
    decode: bool = False,
    skip: Sequence[bool] | np.ndarray | None = None,
    workers: int | None = None,
    cache_min: int = CACHE_MIN_IMAGES,
) -> Headers:
    """The header of every file ``root / name`` (see the module docstring).

    Args:
        root: the image folder.
        names: file names relative to ``root``.
        decode: also decode and hash every file (never cached).
        skip: names not to look at (e.g. paths that leave ``root``).
        workers: reading threads (default: 4 per core, at most 16).
        cache_min: use the header cache from this many files on.
    """
    headers = Headers.empty(len(names))
    todo = [i for i in range(len(names)) if skip is None or not skip[i]]
    workers = workers or min(16, (os.cpu_count() or 1) * 4)
    cache = None if decode or len(todo) < cache_min else cache_path(root)
    stats: dict[int, tuple[int, int] | None] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if cache is not None:
            prefix = os.path.join(root, "")
            paths = [prefix + names[i] for i in todo]
            stats = dict(zip(todo, _chunked(pool, _stat, paths), strict=True))
            known = _load_cache(cache)
            missing = []
            for i, found in stats.items():
                entry = known.get(names[i]) if found is not None else None
                if entry is not None and entry[:2] == found:
                    headers.read[i] = headers.exists[i] = True
                    headers.width[i], headers.height[i], headers.orientation[i] = entry[2:5]
                    headers.mode[i] = entry[5]
                    headers.cached += 1
                else:
                    missing.append(i)
            todo = missing
        infos = _chunked(pool, lambda i: inspect_file(root / names[i], decode), todo)
        for i, info in zip(todo, infos, strict=True):
            headers.set(i, info)
    if cache is not None and todo:
        # Stats taken before the reads: a file changed in between is read again next time.
        entries = {}
        for i, found in stats.items():
            if found is not None and headers.exists[i] and i not in headers.errors:
                size, mtime = found
                entries[names[i]] = (
                    size,
                    mtime,
                    int(headers.width[i]),
                    int(headers.height[i]),
                    int(headers.orientation[i]),
                    headers.mode[i],
                )
        _save_cache(cache, entries)
    if cache is not None:
        log.info("image headers under %s: %d from the cache (%s), %d read", root, headers.cached, cache, len(todo))
    return headers
