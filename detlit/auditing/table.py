"""After stage 8, auditing the labels: ``mistakes.csv``, the ranked list a person edits, written and read.

One row per likely mistake (:data:`COLUMNS`), most likely first. Boxes are XYWH in the image's
pixels, as in a COCO json. The person reviewing marks a row's ``accept`` column with ``yes``
(``true``, ``1`` or ``x``; any case) to apply its suggestion, and leaves it empty (or ``no``,
``false``, ``0``) to keep the label as it is; they may edit the suggested box and class first.
Applying reads the ids and boxes; the class names beside the ids are there to read, and must
agree with the ids.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from detlit.auditing.ranking import KINDS, Mistake
from detlit.common.files import read_bounded
from detlit.errors import DataError

COLUMNS = (
    "rank",
    "image_id",
    "file_name",
    "annotation_id",
    "kind",
    "category_id",
    "class",
    "x",
    "y",
    "w",
    "h",
    "score",
    "suggested_category_id",
    "suggested_class",
    "suggested_x",
    "suggested_y",
    "suggested_w",
    "suggested_h",
    "note",
    "accept",
)
REQUIRED: tuple[str, ...] = ("image_id", "file_name", "annotation_id", "kind", "suggested_category_id")
REQUIRED += ("suggested_class", "suggested_x", "suggested_y", "suggested_w", "suggested_h", "accept")
YES = ("yes", "y", "true", "1", "x")
NO = ("", "no", "n", "false", "0")
MAX_CSV_BYTES = 1 << 30  # a CSV of the audit of millions of objects is far below this


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


def to_csv(mistakes: Iterable[Mistake], names: dict[int, str]) -> str:
    """The ranked mistakes as ``mistakes.csv`` (``names``: class name of each category id)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, row in enumerate(mistakes, 1):
        suggested = row.suggested_box or ("", "", "", "")
        cid = row.suggested_category_id
        writer.writerow(
            [
                rank,
                row.image_id,
                row.file_name,
                "" if row.annotation_id is None else row.annotation_id,
                row.kind,
                row.category_id,
                names.get(row.category_id, ""),
                *(_number(v) for v in row.box),
                f"{row.score:.4f}",
                "" if cid is None else cid,
                "" if cid is None else names.get(cid, ""),
                *(v if v == "" else _number(float(v)) for v in suggested),
                row.note,
                row.accept,
            ]
        )
    return buffer.getvalue()


@dataclass(frozen=True)
class Edit:
    """One row of an edited ``mistakes.csv``, as applying reads it; ``line`` is its line in the file."""

    line: int
    image_id: int
    file_name: str
    annotation_id: int | None
    kind: str
    accepted: bool
    suggested_category_id: int | None
    suggested_class: str
    suggested_box: tuple[float, float, float, float] | None


def _int(text: str, what: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)  # a spreadsheet may write 12 as 12.0
        except ValueError:
            value = math.nan
        if value.is_integer():
            return int(value)
        raise DataError(f"{where}: {what} {text!r} is not a whole number; write the id the audit wrote") from None


def _box(values: list[str], where: str) -> tuple[float, float, float, float] | None:
    if all(not v.strip() for v in values):
        return None
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError:
        raise DataError(
            f"{where}: the suggested box {', '.join(values)} is not four numbers; write x, y, w and h in pixels"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise DataError(f"{where}: the suggested box {x:g}, {y:g}, {w:g}, {h:g} needs finite numbers and w, h above 0")
    return (x, y, w, h)


def _accepted(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in YES:
        return True
    if value in NO:
        return False
    raise DataError(
        f"{where}: accept is {text!r}; write yes (or true, 1, x) to apply the row, or leave it empty to keep the label"
    )


def read_csv(path: Path) -> list[Edit]:
    """Every row of an edited ``mistakes.csv``, checked one by one.

    Raises:
        DataError: the file is missing, unreadable, larger than :data:`MAX_CSV_BYTES` or not a CSV of
            the audit, or a row is unreadable (one sentence with its line number).
    """
    data = read_bounded(path, MAX_CSV_BYTES, DataError, "pass the mistakes.csv of python -m detlit.audit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a UTF-8 text file ({err.reason}); save it as CSV (UTF-8)") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [name for name in REQUIRED if name not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path} is not a mistakes.csv of python -m detlit.audit: column(s) {', '.join(missing)} missing "
            "(keep the header line and the columns; save it as comma-separated CSV)"
        )
    edits = []
    try:
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if None in row or any(row.get(name) is None for name in REQUIRED):
                raise DataError(f"{where}: the row's values do not fit the header's columns; keep one value per column")
            kind = row["kind"].strip()
            if kind not in KINDS:
                raise DataError(f"{where}: kind {kind!r} is none of {', '.join(KINDS)}; keep the kind the audit wrote")
            image_id = _int(row["image_id"], "image_id", where)
            if image_id is None:
                raise DataError(f"{where}: image_id is empty; keep the id the audit wrote")
            suggested = [row[f"suggested_{c}"] for c in "xywh"]
            edits.append(
                Edit(
                    line=reader.line_num,
                    image_id=image_id,
                    file_name=row["file_name"],
                    annotation_id=_int(row["annotation_id"], "annotation_id", where),
                    kind=kind,
                    accepted=_accepted(row["accept"], where),
                    suggested_category_id=_int(row["suggested_category_id"], "suggested_category_id", where),
                    suggested_class=row["suggested_class"].strip(),
                    suggested_box=_box(suggested, where),
                )
            )
    except csv.Error as err:
        raise DataError(
            f"{path}, line {reader.line_num}: not readable as CSV ({err}); save it as comma-separated CSV"
        ) from err
    return edits
