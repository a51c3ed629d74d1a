"""Stage 1 (reading the json), other label formats: which format a path holds, told cheaply.

:func:`label_format` looks at names, and at most the first :data:`HEAD` bytes of one file: a ``.txt``
whose first line is a YOLO line (or empty) and a ``data.yaml`` with ``names`` are YOLO, XML whose root
is ``<annotation>`` is Pascal VOC and ``<annotations>`` is CVAT, a JSON object with ``"shapes"`` is
LabelMe, one with ``"images"`` is COCO; a folder is judged by its sub-folders (``Annotations/``: VOC;
``labels/``: a YOLO dataset) or by the one kind of label file it holds. Anything else, or a mix, is
None: ``convert`` then asks for ``--from``. ``check`` and ``fit`` ask it only once a file failed to
read as COCO (:func:`detlit.data.coco.read_json`), and answer with the ``convert`` command that fits
(:func:`convert_hint`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HEAD = 64 * 1024  # bytes of a file looked at
MAX_FILES = 2000  # files of a folder looked at
ROOT_TAG = re.compile(rb"<([A-Za-z_][\w.:-]*)")
WHITESPACE = b" \t\r\n\xef\xbb\xbf"  # and a UTF-8 byte-order mark
YOLO_LINE = re.compile(rb"^\s*\d+(\s+[-+0-9.eE]+){4,}\s*$")  # class cx cy w h, or a segment
LABEL_SUFFIXES = {".txt": "yolo", ".xml": "xml", ".json": "json"}

DESCRIBED = {
    "yolo": "YOLO labels",
    "voc": "Pascal VOC labels",
    "labelme": "LabelMe labels",
    "cvat": "CVAT for images labels",
}


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEAD)


def _xml_format(head: bytes) -> str | None:
    text = head.lstrip(WHITESPACE)
    while text.startswith((b"<?", b"<!")):  # the declaration, comments, a DOCTYPE
        end = text.find(b">")
        if end < 0:
            return None
        text = text[end + 1 :].lstrip(WHITESPACE)
    match = ROOT_TAG.match(text)
    tag = match.group(1) if match else b""
    return {b"annotation": "voc", b"annotations": "cvat"}.get(tag)


def _json_format(head: bytes) -> str | None:
    if not head.lstrip(WHITESPACE).startswith(b"{"):
        return None
    if re.search(rb'"shapes"\s*:', head):
        return "labelme"
    if re.search(rb'"images"\s*:', head):
        return "coco"
    return None


def file_format(path: Path) -> str | None:
    """The format of one label file, or None."""
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix == ".txt":
        first = next((line for line in head.splitlines() if line.strip()), b"")
        return "yolo" if not first or YOLO_LINE.match(first) else None
    if suffix in (".yaml", ".yml"):
        return "yolo" if re.search(rb"(^|\n)names\s*:", head) else None
    if head.lstrip(WHITESPACE).startswith(b"<"):
        return _xml_format(head)
    return _json_format(head)


def folder_format(folder: Path) -> str | None:
    """The format of a folder of labels (or of a dataset's root folder), or None."""
    if (folder / "Annotations").is_dir():
        return "voc"
    if (folder / "labels").is_dir():
        return "yolo"
    kinds: dict[str, Path] = {}
    seen = 0
    for parent, _, names in os.walk(folder):
        for name in sorted(names):
            kind = LABEL_SUFFIXES.get(os.path.splitext(name)[1].lower())
            if kind is not None:
                kinds.setdefault(kind, Path(parent) / name)
            seen += 1
            if seen >= MAX_FILES:
                break
        if seen >= MAX_FILES:
            break
    if len(kinds) != 1:
        return None
    kind, first = next(iter(kinds.items()))
    return "yolo" if kind == "yolo" else file_format(first)


def label_format(path: Path) -> str | None:
    """``yolo``, ``voc``, ``labelme``, ``cvat`` or ``coco`` for what ``path`` holds; None when it cannot
    be told cheaply (or the path cannot be read)."""
    try:
        if path.is_dir():
            return folder_format(path)
        if path.is_file():
            return file_format(path)
    except OSError:
        return None
    return None


def convert_hint(path: Path) -> str | None:
    """The sentence for labels of another format given where a COCO json belongs, or None when
    ``path`` does not hold one of the formats ``convert`` reads."""
    found = label_format(path)
    if found not in DESCRIBED:
        return None
    if found == "yolo" and path.is_dir() and (path / "labels").is_dir():
        where = f"--labels {path / 'labels'} --images {path / 'images'}"
    elif found == "yolo" and path.suffix.lower() in (".yaml", ".yml"):
        where = f"--names {path} --labels FOLDER --images FOLDER"
    elif found == "yolo" and path.is_file():
        where = f"--labels {path.parent} --images FOLDER"
    elif found == "voc" and path.is_dir() and (path / "Annotations").is_dir():
        where = f"--labels {path / 'Annotations'} --images {path / 'JPEGImages'}"
    else:
        where = f"--labels {path} --images FOLDER"
    return (
        f"{path} holds {DESCRIBED[found]}, not a COCO json; convert them first with `python -m detlit.convert "
        f"--from {found} {where} --out FOLDER` and pass FOLDER/annotations.json"
    )
