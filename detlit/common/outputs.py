"""The one output guard, and writes that leave either the old file or the whole new one.

Every command decides what it will write before it does any work and asks :func:`check_outputs`:
a file it would replace stops it unless ``--overwrite`` is given, and a file it reads is never
replaced, ``--overwrite`` or not. With ``--overwrite`` a command replaces only the files it writes
itself; nothing else in an output folder is touched.

:func:`atomic_write` writes through a temporary file in the same folder, flushed to disk and
renamed over the target: a reader (or a crash) sees the old file or the complete new one, never a
part, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from detlit.errors import ConfigError

# A write that fails for one of these reasons is the user's to fix (space, permissions), not a bug.
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR)


def write_failure(err: BaseException) -> OSError | None:
    """The OSError behind a failed write, when the user can fix it; libraries report a full disk
    in other exceptions too (``torch.save`` raises a RuntimeError from it)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links resolved; an existing pair compared by inode)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs(
    outputs: Iterable[Path | str],
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    option: str = "--out",
) -> None:
    """Refuse, before any work is done, to write where the user would lose something.

    Args:
        outputs: every file (or folder) the command will write.
        inputs: every file the command reads.
        overwrite: whether existing outputs may be replaced.
        option: the option that names the outputs, for the message.

    Raises:
        ConfigError: an output is an input, an output's folder is a file, or an output exists
            and ``overwrite`` is off (one sentence naming the path and the fix).
    """
    sources = [Path(p) for p in inputs]
    for output in (Path(p) for p in outputs):
        for source in sources:
            if same_file(output, source):
                raise ConfigError(
                    f"{option} would write {output}, which is an input of this command; choose another {option}"
                )
        for parent in output.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"{option}: {parent} is a file, not a folder; choose another {option}")
        if output.exists() and not overwrite:
            raise ConfigError(f"{output} already exists; choose another {option}, or pass --overwrite to replace it")


def check_folder(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file; name a folder for the outputs")


def _fsync_folder(folder: Path) -> None:
    # The rename itself must reach the disk too; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` when the block ends without an error.

    On any error the temporary file is removed, ``path`` is left as it was, and the error
    propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))
