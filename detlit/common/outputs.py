"""The one output guard, the lock on an output folder, and writes that leave either the old file or the whole new one.

Every command decides what it will write before it does any work and asks :func:`check_outputs`:
a file it would replace stops it unless ``--overwrite`` is given; a file it reads (an image of its
dataset included) is never replaced, ``--overwrite`` or not; and no two of its outputs name one
file. With ``--overwrite`` a command replaces only the files it writes itself; nothing else in an
output folder is touched.

:func:`write_lock` keeps a second command out of a folder that one is writing into (a kernel
lock, so a killed command leaves no stale lock behind).

:func:`atomic_write` writes through a temporary file in the same folder, flushed to disk and
renamed over the target: a reader (or a crash) sees the old file or the complete new one, never a
part, and a failed write leaves no temporary file behind. The temporary's name holds the host and
the process id, so the first write of a process into a folder removes what killed processes of
this host left there. :func:`write_together` commits files that belong together (a train/val
pair): every one is written in full before the first is renamed.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import posixpath
import re
import signal
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

from detlit.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

# A write that fails for one of these reasons is the user's to fix (space, permissions), not a bug.
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR)

LOCK_NAME = ".detlit.lock"
# Filesystems that cannot lock (some network mounts) are written without the lock.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"  # in temporaries' names

# The image folders and their listed file names of a dataset a command reads.
ImageFolders = Iterable[tuple[Path, Collection[str]]]


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
    return _identity(a) == _identity(b)


def _identity(path: Path) -> tuple[object, ...]:
    """What names one file: its device and inode when it exists, else its resolved path."""
    try:
        stat = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", stat.st_dev, stat.st_ino)


# --- the output guard ----------------------------------------------------------------------


def check_outputs(
    outputs: Iterable[Path | str] | Mapping[str, Iterable[Path | str]],
    inputs: Iterable[Path | str] = (),
    overwrite: bool = False,
    option: str = "--out",
    images: ImageFolders = (),
) -> None:
    """Refuse, before any work is done, to write where the user would lose something.

    Each path is looked at once (one ``stat``), so a command that writes thousands of files and
    reads as many checks them in linear time.

    Args:
        outputs: every file (or folder) the command will write; or, for a command whose outputs
            several options name, a mapping from each option to its outputs.
        inputs: every file the command reads.
        overwrite: whether existing outputs may be replaced.
        option: the option that names the outputs, for the message (when ``outputs`` is no mapping).
        images: the image folders of the datasets the command reads, each with the file names
            its json lists: an existing output that is one of them is an input too. Only outputs
            that exist are looked up, so no image file is touched.

    Raises:
        ConfigError: an output is an input, two outputs name one file, an output's folder is a
            file, or an output exists and ``overwrite`` is off (one sentence naming the path and
            the fix).
    """
    named = outputs.items() if isinstance(outputs, Mapping) else [(option, outputs)]
    sources = {_identity(Path(p)) for p in inputs}
    image_folders = [_ImageFolder(root, names) for root, names in images]
    claimed: dict[tuple[object, ...], str] = {}
    folders_seen: set[Path] = set()  # thousands of outputs share a few folders
    for name, paths in named:
        for output in (Path(p) for p in paths):
            identity = _identity(output)
            if identity in sources:
                raise ConfigError(
                    f"{name} would write {output}, which is an input of this command; choose another {name}"
                )
            if identity in claimed:
                other = claimed[identity]
                also = " twice" if other == name else f", which {other} writes too"
                raise ConfigError(f"{name} would write {output}{also}; choose another {name}")
            claimed[identity] = name
            for parent in output.parents:
                if parent in folders_seen:
                    break
                folders_seen.add(parent)
                if parent.exists() and not parent.is_dir():
                    raise ConfigError(f"{name}: {parent} is a file, not a folder; choose another {name}")
            if identity[0] != "inode":
                continue
            _refuse_images(output, image_folders, name)
            if not overwrite:
                raise ConfigError(f"{output} already exists; choose another {name}, or pass --overwrite to replace it")


def check_not_images(outputs: Iterable[Path | str], images: ImageFolders, option: str = "--out") -> None:
    """Refuse an output that is one of a dataset's images, for a command that reads its dataset's
    file names only after :func:`check_outputs` (as ``images`` there; existing outputs only).

    Raises:
        ConfigError: an output is an image the dataset lists.
    """
    folders = [_ImageFolder(root, names) for root, names in images]
    for output in (Path(p) for p in outputs):
        if output.exists():
            _refuse_images(output, folders, option)


def _refuse_images(output: Path, folders: list[_ImageFolder], option: str) -> None:
    for folder in folders:
        if folder.lists(output):
            raise ConfigError(
                f"{option} would write {output}, which is an input of this command (an image of the dataset in "
                f"{folder.root}); choose another {option}"
            )


class _ImageFolder:
    """An image folder and the file names listed relative to it, looked up without touching an image."""

    def __init__(self, root: Path, names: Collection[str]) -> None:
        self.root = root
        self._given = names
        self._names: set[str] | None = None
        self._roots = (Path(os.path.abspath(root)), root.resolve())

    def lists(self, output: Path) -> bool:
        """Whether ``output`` (an existing file) is one of the listed images."""
        for root, path in zip(self._roots, (Path(os.path.abspath(output)), output.resolve()), strict=True):
            if path.is_relative_to(root) and path.relative_to(root).as_posix() in self.names:
                return True
        return False

    @property
    def names(self) -> set[str]:
        if self._names is None:  # built only when an existing output lies under an image folder
            self._names = {posixpath.normpath(name.replace("\\", "/")) for name in self._given}
        return self._names


def check_folder(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file; name a folder for the outputs")


# --- one writer per folder -----------------------------------------------------------------


@contextmanager
def write_lock(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold the folder for one command: a second command that asks meanwhile gets one sentence.

    The lock is ``flock`` on ``folder/.detlit.lock``: the kernel releases it when the process ends,
    however it ends, so a killed command leaves no stale lock (at most the empty file, which the
    next command takes over). The file is removed at the end. A folder this creates is removed
    again when the command leaves it empty (it failed before writing).

    Raises:
        ConfigError: ``folder`` is a file, or another process holds the lock (its pid named).
    """
    check_folder(folder, option)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = _lock(folder / LOCK_NAME, folder, option)
        try:
            yield
        finally:
            # Removed while still held: a command that opened the file meanwhile sees it gone and
            # opens the new one instead (see _lock).
            (folder / LOCK_NAME).unlink(missing_ok=True)
            os.close(descriptor)
    finally:
        for made in created:  # deepest first; a folder that holds something stays
            try:
                made.rmdir()
            except OSError:
                break


def _lock(path: Path, folder: Path, option: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, with this process's pid in it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode("ascii", "replace").split()
            os.close(descriptor)
            pid = f" (pid {holder[0]})" if holder and holder[0].isdigit() else ""
            raise ConfigError(
                f"{folder} is being written by another detlit command{pid}; wait until it ends, "
                f"or choose another {option}"
            ) from None
        except OSError as err:
            if err.errno not in NO_LOCKS:
                os.close(descriptor)
                raise
            log.warning("%s cannot be locked (%s); a second command writing there would not be stopped", folder, err)
            return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else will open, and must lock the one now at ``path``.
        held = os.fstat(descriptor)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(descriptor)
    try:  # the pid only names the holder in a refusal: a full disk does not stop the command here
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {HOST}\n".encode(), 0)
    except OSError:
        pass
    return descriptor


# --- atomic writes -------------------------------------------------------------------------

_swept: set[str] = set()  # folders whose stale temporaries this process removed
_sweeping = threading.Lock()


def _temporary(path: Path) -> Path:
    """The hidden temporary beside ``path``: its name, this host and this process."""
    return path.with_name(f".{path.name[:150]}.{HOST}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries that dead processes of this host left in ``folder``; the paths removed.

    Temporaries of live processes, of this process and of other hosts (a shared folder) are kept.
    """
    pattern = re.compile(rf"^\..+\.{re.escape(HOST)}\.(\d+)\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _prepare_folder(folder: Path) -> None:
    """Create the folder; on this process's first write into it, sweep stale temporaries."""
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.abspath(folder)
    with _sweeping:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temporaries(folder)


def _name_the_target(err: BaseException, path: Path, temporary: Path) -> None:
    """Make the OSError behind a failed write name the target: a write or fsync that fails for a
    full disk carries no file name, and one that fails on the temporary names a hidden file."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.filename in (None, str(temporary)):
            seen.filename = str(path)
        seen = seen.__cause__ or seen.__context__


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
    propagates, naming ``path`` when it is an OSError.
    """
    _prepare_folder(path.parent)
    temporary = _temporary(path)
    try:
        with temporary.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        _name_the_target(err, path, temporary)
        raise
    _fsync_folder(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_image(path: Path, image: PILImage, format: str, **options: Any) -> None:
    """Replace ``path`` with ``image`` encoded as ``format`` (PIL's name and options) atomically.

    The image is encoded in memory first: given a file, PIL writes to its descriptor itself and
    does not notice a short write, so a disk that fills during the last chunk would leave a
    truncated image that saved without an error.
    """
    encoded = io.BytesIO()
    image.save(encoded, format=format, **options)
    write_bytes(path, encoded.getvalue())


def write_together(contents: Mapping[Path, bytes]) -> None:
    """Replace several files as one: each is written in full (and flushed to disk) to its temporary
    before the first is renamed, and Ctrl-C or SIGTERM arriving during the renames takes effect
    after the last one. A failure before the renames leaves every file as it was.
    """
    staged: dict[Path, Path] = {}
    current = next(iter(contents), Path())
    try:
        for current, data in contents.items():
            _prepare_folder(current.parent)
            staged[current] = _temporary(current)
            with staged[current].open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        with _signals_deferred():
            for current, temporary in staged.items():
                os.replace(temporary, current)
    except BaseException as err:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        _name_the_target(err, current, _temporary(current))
        raise
    for folder in {path.parent for path in contents}:
        _fsync_folder(folder)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | signal.Handlers] = {}

    def hold(received: int, frame: FrameType | None) -> None:
        caught.append(received)

    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is None or handler == signal.SIG_IGN:  # set outside Python, or ignored: left alone
            continue
        previous[number] = handler
        signal.signal(number, hold)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for received in caught:
            signal.raise_signal(received)
