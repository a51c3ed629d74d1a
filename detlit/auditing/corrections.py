"""After stage 8, auditing the labels: an edited ``mistakes.csv`` applied to a corrected copy of the json.

Every row is checked against the json first: its image id must be in the json under the row's file
name, and its annotation id (where the row has one) must be an object of that image; an accepted
row also needs what its correction needs (a known suggested category whose name agrees, a box of
finite numbers), and no annotation may be changed by two accepted rows. The first row that fails
ends the command in one sentence with the CSV's line number, and nothing is written.

Accepted rows (``accept`` is yes, true, 1 or x) then change a copy of the json, whose every other
field is kept: ``missing`` adds an annotation (new ids, above the largest id of the json),
``spurious`` and ``duplicate`` delete one, ``box`` replaces its box (its ``area`` becomes the box's;
a ``segmentation`` that no longer fits is dropped), ``class`` changes its category. The copy's
``info`` records what was applied (``detlit_audit``). The input json is never written.
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
from collections import Counter
from pathlib import Path
from typing import Any

from detlit.auditing.ranking import ACTIONS, KINDS
from detlit.auditing.table import Edit, read_csv
from detlit.common.outputs import check_outputs, write_lock, write_text
from detlit.data.coco import CocoDataset, load_coco, read_json
from detlit.errors import DataError

log = logging.getLogger(__name__)

INFO_KEY = "detlit_audit"
NEEDS_ANNOTATION = ("spurious", "box", "class", "duplicate")


def _same_name(a: str, b: str) -> bool:
    return posixpath.normpath(a.replace("\\", "/")) == posixpath.normpath(b.replace("\\", "/"))


class _Json:
    """What the checks need to know of the json: its images, objects and categories by id."""

    def __init__(self, dataset: CocoDataset):
        self.path = dataset.json_path
        self.file_names: dict[int, str] = {}
        self.owner: dict[int, int] = {}
        self.position: dict[int, int] = {}  # annotation id -> its index in the json's annotations list
        for record in dataset.images:
            self.file_names[record.id] = record.file_name
            for annotation in record.annotations:
                self.owner[annotation.id] = record.id
                self.position[annotation.id] = annotation.index
        self.categories = {c.id: c.name for c in dataset.categories}

    def check(self, edit: Edit, where: str) -> None:
        """Refuse a row that does not belong to this json (every row, accepted or not)."""
        name = self.file_names.get(edit.image_id)
        if name is None:
            raise DataError(
                f"{where}: image {edit.image_id} is not in {self.path}; apply the CSV to the json it was written from"
            )
        if not _same_name(name, edit.file_name):
            raise DataError(
                f"{where}: image {edit.image_id} is {edit.file_name!r} in the CSV but {name!r} in {self.path}; "
                "apply the CSV to the json it was written from"
            )
        if edit.kind in NEEDS_ANNOTATION:
            if edit.annotation_id is None:
                raise DataError(f"{where}: a {edit.kind} row needs its annotation_id; keep the id the audit wrote")
            owner = self.owner.get(edit.annotation_id)
            if owner is None:
                raise DataError(
                    f"{where}: annotation {edit.annotation_id} is not in {self.path} (deleted already, or another "
                    "json); apply the CSV to the json it was written from"
                )
            if owner != edit.image_id:
                raise DataError(
                    f"{where}: annotation {edit.annotation_id} belongs to image {owner}, not {edit.image_id}; "
                    "apply the CSV to the json it was written from"
                )
        elif edit.annotation_id is not None:
            raise DataError(f"{where}: a missing-label row has no annotation_id; leave it empty")

    def check_accepted(self, edit: Edit, where: str) -> None:
        """Refuse an accepted row whose correction cannot be made."""
        if edit.kind in ("missing", "class"):
            cid = edit.suggested_category_id
            if cid is None or cid not in self.categories:
                known = ", ".join(f"{i} ({n})" for i, n in sorted(self.categories.items()))
                raise DataError(f"{where}: suggested_category_id {cid} is not a category of {self.path} ({known})")
            if edit.suggested_class and edit.suggested_class != self.categories[cid]:
                raise DataError(
                    f"{where}: suggested_class {edit.suggested_class!r} is not category {cid} "
                    f"({self.categories[cid]!r}); edit suggested_category_id, applying reads the id"
                )
        if edit.kind in ("missing", "box") and edit.suggested_box is None:
            raise DataError(f"{where}: a {edit.kind} row needs a suggested box (x, y, w, h) to apply")


def corrected(
    raw: dict[str, Any], dataset: CocoDataset, edits: list[Edit], source: Path
) -> tuple[dict[str, Any], Counter[str]]:
    """The json with the accepted rows applied, and how many of each kind were.

    Raises:
        DataError: a row that does not belong to the json, or cannot be applied (module docstring).
    """
    known = _Json(dataset)
    changed: dict[int, int] = {}  # annotation id -> the line that changes it
    for edit in edits:
        where = f"{source}, line {edit.line}"
        known.check(edit, where)
        if not edit.accepted:
            continue
        known.check_accepted(edit, where)
        if edit.annotation_id is not None:
            if edit.annotation_id in changed:
                raise DataError(
                    f"{where}: annotation {edit.annotation_id} is changed by line {changed[edit.annotation_id]} "
                    "already; accept one of the two rows"
                )
            changed[edit.annotation_id] = edit.line
    fixed = copy.deepcopy(raw)
    annotations: list[Any] = fixed["annotations"]
    dropped: set[int] = set()
    next_id = max(known.owner, default=0) + 1
    added: list[int] = []
    applied: Counter[str] = Counter()
    for edit in (e for e in edits if e.accepted):
        applied[edit.kind] += 1
        if edit.kind == "missing":
            assert edit.suggested_box is not None and edit.suggested_category_id is not None
            x, y, w, h = edit.suggested_box
            new = {"id": next_id, "image_id": edit.image_id, "category_id": edit.suggested_category_id}
            annotations.append({**new, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            added.append(next_id)
            next_id += 1
            continue
        assert edit.annotation_id is not None
        index = known.position[edit.annotation_id]
        if edit.kind in ("spurious", "duplicate"):
            dropped.add(index)
        elif edit.kind == "box":
            assert edit.suggested_box is not None
            x, y, w, h = edit.suggested_box
            annotations[index]["bbox"] = [x, y, w, h]
            annotations[index]["area"] = w * h
            annotations[index].pop("segmentation", None)
        else:
            annotations[index]["category_id"] = edit.suggested_category_id
    fixed["annotations"] = [a for i, a in enumerate(annotations) if i not in dropped]
    record = {"csv": str(source), "applied": {kind: applied[kind] for kind in KINDS}, "added_ids": added}
    info = fixed.get("info")
    if info is None or isinstance(info, dict):
        fixed["info"] = {**(info or {}), INFO_KEY: record}
    else:
        log.warning("%s: 'info' is no object; what was applied is not recorded in the copy", source)
    return fixed, applied


def apply_edits(csv_path: Path, json_path: Path, fix: Path, images: Path | None = None, overwrite: bool = False) -> int:
    """``python -m detlit.audit --apply``: the accepted rows of an edited CSV applied to a copy of the
    json, written to ``fix``; the folder of ``fix`` is held against other commands meanwhile."""
    with write_lock(fix.parent, "--fix"):
        root = images or json_path.parent
        dataset = load_coco(json_path, root)
        names = dataset.images.file_names()
        check_outputs([fix], inputs=[json_path, csv_path], overwrite=overwrite, option="--fix", images=[(root, names)])
        edits = read_csv(csv_path)
        fixed, applied = corrected(read_json(json_path), dataset, edits, csv_path)
        write_text(fix, json.dumps(fixed, indent=1))
    accepted = sum(applied.values())
    log.info("%s: %d of %d rows accepted", csv_path, accepted, len(edits))
    for kind in KINDS:
        if applied[kind]:
            log.info("applied %d %s row(s): %s", applied[kind], kind, ACTIONS[kind])
    log.info("wrote %s (%s untouched)", fix, json_path)
    return 0
