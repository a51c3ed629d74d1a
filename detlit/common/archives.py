"""Zip archives from someone else, checked for what they would take before anything inflates them.

Checkpoints (``torch.save``) and TorchScript files are zip archives, and torch reads every member
into memory at its declared uncompressed size. A zip bomb (a deflated member of zeros that
declares gigabytes, or many members sharing one compressed stream) is a file of a few megabytes
that takes the machine's memory in ``torch.load``, and time in ``ZipFile.testzip``, which inflates
every member to check its checksum.

:func:`check_archive` reads only the archive's directory and refuses in one sentence:

* more than :data:`MAX_MEMBERS` members, read from the end record before the directory is parsed
  (each member would cost a Python object, and a directory of millions of tiny entries fits in a
  file of a few hundred megabytes);
* members that declare more bytes than :data:`MAX_RATIO` times the file's size plus
  :data:`SLACK`. ``torch.save`` stores tensors uncompressed, so a checkpoint's members add up to
  slightly less than its size (ratio 0.999 on a detlit checkpoint); TorchScript deflates only its
  code and debug tables (a few hundred kilobytes, ratio up to about 8 on those, 1.007 over the
  whole file of the sample model); an archive someone re-packed with deflate keeps float weights
  at about their size, since their low bits do not compress. A ratio of 4 leaves room for all of
  these, and the slack for small archives made mostly of code, while a bomb declares hundreds to
  a thousand times its size (deflate's limit is about 1032). What torch may inflate stays within
  four times the file.

A file that is not a zip archive at all passes: its own reader refuses it with its own sentence.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from detlit.errors import WeightsError

MAX_RATIO = 4
"""Most declared uncompressed bytes per byte of the file (see the module docstring)."""
SLACK = 16 * 2**20
"""Declared bytes allowed beyond ``MAX_RATIO`` times the file's size: code and tables of small archives."""
MAX_MEMBERS = 100_000
"""Most members an archive may hold: a checkpoint holds one per tensor storage (about 200 for the
demo model with its optimizer state, a few thousand for the largest model-zoo architectures)."""

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END_SIGNATURE = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator
_LOCATOR_SIGNATURE = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record
_END64_SIGNATURE = b"PK\x06\x06"
_COMMENT = 0xFFFF  # longest archive comment: the end record lies within this many bytes of the end


def member_count(path: Path) -> int | None:
    """How many members the archive's end record declares; None when ``path`` is not a zip archive.

    Reads the end record (and its zip64 form, which torch always writes) without parsing the
    central directory.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - _END.size - _COMMENT)
        handle.seek(start)
        tail = handle.read()
        at = tail.rfind(_END_SIGNATURE)
        if at < 0 or len(tail) - at < _END.size:
            return None
        count = _END.unpack_from(tail, at)[4]
        if count != 0xFFFF or at < _LOCATOR.size:
            return int(count)
        locator = _LOCATOR.unpack_from(tail, at - _LOCATOR.size)
        if locator[0] != _LOCATOR_SIGNATURE or not 0 <= locator[2] <= size - _END64.size:
            return int(count)
        handle.seek(locator[2])
        record = handle.read(_END64.size)
    if len(record) < _END64.size or record[:4] != _END64_SIGNATURE:
        return int(count)
    return int(_END64.unpack(record)[7])


def _size(count: int) -> str:
    """Bytes in kilobytes or megabytes, as a file manager shows them."""
    return f"{count / 1e6:,.1f} MB" if count >= 1e6 else f"{count / 1e3:,.1f} KB"


def check_archive(path: Path, named: str, fix: str) -> None:
    """Refuse, from its directory alone, a zip archive that would inflate past its bounds.

    Args:
        path: the file (a regular file).
        named: how the sentence names it (``--ckpt x.ckpt``, ``model.weights x.pth``).
        fix: what the user should do instead, ending the sentence.

    Raises:
        WeightsError: too many members, or members that declare far more bytes than the file holds
            (see the module docstring).
    """
    count = member_count(path)
    if count is None:
        return
    if count > MAX_MEMBERS:
        raise WeightsError(
            f"{named} is a zip archive of {count:,} members, more than the {MAX_MEMBERS:,} a model file holds: "
            f"a damaged or crafted file; {fix}"
        )
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a readable archive: its reader says so
    if declared > MAX_RATIO * size + SLACK:
        raise WeightsError(
            f"{named} is {_size(size)} but its archive members declare {_size(declared)} "
            f"({declared / max(size, 1):,.0f} times the file; a model file holds about its own size): a zip bomb or a "
            f"damaged file, left unread; {fix}"
        )
