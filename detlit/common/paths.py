"""Paths someone names: what is really there, names the filesystem refuses, and bytes no encoding reads.

Every reader of a file someone names asks :func:`not_a_file` first: a named pipe blocks its
reader until someone writes to it and ``/dev/zero`` never ends, so only regular files are read,
and a sentence never says "does not exist" of something that exists. A name longer than the
filesystem takes is refused before any work where a command can see it coming (:func:`too_long`),
and ends in one sentence wherever else it is met (:func:`name_failure`, :func:`name_message`). An
argument holding bytes that are not UTF-8 (Python keeps them as surrogate escapes,
:func:`undecodable`) is refused too, and shown with those bytes as ``\\xff`` (:func:`printable`),
so printing the sentence never fails.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (links followed):
    ``a named pipe (FIFO)``, ``a character device`` (``/dev/zero``), ...; None otherwise."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise
        return None
    for test, kind in SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, worded to follow its name in a sentence (``does not
    exist``, ``is a folder, not a file``, ``is a named pipe (FIFO), not a regular file``); None
    when it is a regular file (or a link to one).

    Raises:
        OSError: the name is longer than the filesystem takes (see :func:`name_failure`).
    """
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    kind = special_kind(path)
    if kind is not None:
        return f"is {kind}, not a regular file"
    return "does not exist"


def name_failure(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (or its causes) when a name was longer than the filesystem takes."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENAMETOOLONG:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def shortened(text: str, keep: int = 40) -> str:
    """``text`` with its middle cut out when it is long (a name of 300 characters helps nobody)."""
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


NAME_MAX = 255
"""Bytes per file or folder name on every common filesystem (ext4, XFS, Btrfs, APFS)."""
PATH_MAX = 4096
"""Bytes of a whole path Linux takes."""


def too_long(path: Path) -> str | None:
    """Why ``path`` cannot be named on the filesystem, as a sentence's start; None when it can."""
    sizes = [len(os.fsencode(part)) for part in path.parts]
    at = max(range(len(sizes)), key=sizes.__getitem__, default=0)
    if sizes and sizes[at] > NAME_MAX:
        where = f" in {shortened(str(Path(*path.parts[:at])))}" if at else ""
        return (
            f"the name {shortened(path.parts[at])} ({sizes[at]} bytes){where} is longer than the filesystem allows "
            f"({NAME_MAX} bytes per name)"
        )
    size = len(os.fsencode(str(path)))
    if size > PATH_MAX:
        return f"the path {shortened(str(path))} ({size} bytes) is longer than the filesystem allows ({PATH_MAX} bytes)"
    return None


def name_message(err: OSError) -> str:
    """One sentence for a name the filesystem refused as too long: which name, how long, the fix."""
    filename = err.filename if isinstance(err.filename, (str, bytes, os.PathLike)) else None
    problem = too_long(Path(os.fsdecode(filename))) if filename is not None else None
    if problem is None:  # a smaller limit than the usual ones (a network or FAT filesystem)
        shown = f" ({shortened(os.fsdecode(filename))})" if filename is not None else ""
        problem = f"a file or folder name{shown} is longer than the filesystem allows ({err.strerror})"
    return f"{problem}; choose a shorter name"


def undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (Python's surrogate escapes of them)."""
    return any("\udc80" <= char <= "\udcff" for char in text)


def printable(text: str) -> str:
    """``text`` with bytes that were not UTF-8 shown as ``\\xff`` escapes, so any stream can print it."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON text, say)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
