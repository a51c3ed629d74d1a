"""Stage 2, splitting: a seeded, stratified train/val split of a COCO dataset.

:func:`split` (``python -m detlit.split DATA.json --images DIR --out OUT_DIR``) writes ``OUT_DIR/train.json`` and
``OUT_DIR/val.json``. Images are assigned by iterative stratification (Sechidis et al., 2011) on
the number of objects per category, with "no objects" as one more label so that empty images
are split in proportion too; a balancing pass then makes the validation set hold
``round(fraction x images)`` images (exactly, unless groups make that impossible). Images with
identical file content, tiles of one source image (``python -m detlit.tile``'s ``"tile"`` field),
and images of one group (``--group-by FIELD`` or ``--group-pattern``) always land on the same
side. Every original id and field is kept, and the same inputs and seed give byte-identical files.

``--folds K`` makes K train/val pairs instead (``OUT_DIR/fold_1/train.json`` ... ``OUT_DIR/fold_K/val.json``)
with the same guarantees: the same stratification with K equal parts (:func:`assign_parts`),
folds of equal size within one image (:func:`balance_folds`), every image in exactly one fold's
val side, groups never across folds; all 2K files are written together.

The two files are one result: both are written in full before either replaces a file, and each
carries the pair's marker (``"detlit_split": {"id": ..., "part": "train"}``, the id a digest of
both parts), so a train.json and a val.json of one folder from two different runs (an
interrupted run, two runs at once) are refused where they are read together (:func:`check_pair`).
File names that point outside their image folder are refused, as training refuses them.

Several json files (each with its ``--images`` folder) are merged before splitting, e.g. an
export's train and valid parts; file names are then made relative to the folders' common
parent, and ids of a later file are shifted when they collide with an earlier one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.console import Console
from rich.table import Table

from detlit.common.console import console as rich_console
from detlit.common.outputs import check_outputs, same_file, write_lock, write_together
from detlit.data.checks import escapes_root, path_escapes_root
from detlit.data.coco import CocoDataset, parse_coco, raise_on_errors, read_json
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MARKER = "detlit_split"  # the top-level key of the pair marker in both files


@dataclass
class Split:
    """The outcome: image ids of each side and the numbers that describe its quality."""

    train_ids: list[int]
    val_ids: list[int]
    category_shares: dict[str, tuple[int, int]]  # category -> (train objects, val objects)
    groups: int


# --- inputs --------------------------------------------------------------------------------


def merge_inputs(inputs: list[tuple[Path, Path]]) -> tuple[dict[str, Any], Path]:
    """Read one or more (json, image folder) pairs as one raw COCO dict and its image root.

    Raises:
        DataError: a json is unusable, or names an image outside its folder (as fit refuses it).
    """
    if len(inputs) == 1:
        return read_inside(*inputs[0]), inputs[0][1]
    root = Path(os.path.commonpath([str(images.resolve()) for _, images in inputs]))
    merged: dict[str, Any] | None = None
    for json_path, images in inputs:
        raw = read_inside(json_path, images)
        prefix = os.path.relpath(images.resolve(), root)
        for image in raw["images"]:
            if isinstance(image, dict) and isinstance(image.get("file_name"), str):
                image["file_name"] = os.path.normpath(os.path.join(prefix, image["file_name"]))
        if merged is None:
            merged = raw
            continue
        if _category_key(raw) != _category_key(merged):
            raise DataError(
                f"{json_path} defines other categories than {inputs[0][0]}; only files with the same "
                "categories can be merged"
            )
        image_shift = _shift(merged["images"], raw["images"])
        annotation_shift = _shift(merged["annotations"], raw["annotations"])
        if image_shift or annotation_shift:
            log.info(
                "%s: ids collide with earlier files; image ids +%d, annotation ids +%d",
                json_path,
                image_shift,
                annotation_shift,
            )
        for image in raw["images"]:
            image["id"] += image_shift
        for annotation in raw["annotations"]:
            annotation["id"] += annotation_shift
            annotation["image_id"] += image_shift
        merged["images"] += raw["images"]
        merged["annotations"] += raw["annotations"]
    assert merged is not None
    return merged, root


def read_inside(json_path: Path, images: Path) -> dict[str, Any]:
    """A raw COCO dict whose file names all stay inside ``images``: split reads and writes nothing
    outside the folders it is given."""
    raw = read_json(json_path)
    escaping = [
        path_escapes_root(image.get("id"), image["file_name"], images)
        for image in raw["images"]
        if isinstance(image, dict) and isinstance(image.get("file_name"), str) and escapes_root(image["file_name"])
    ]
    raise_on_errors(escaping, json_path, images)
    return raw


def _category_key(raw: dict[str, Any]) -> list[tuple[Any, Any]]:
    return sorted((c.get("id"), c.get("name")) for c in raw["categories"] if isinstance(c, dict))


def _shift(earlier: list[dict[str, Any]], later: list[dict[str, Any]]) -> int:
    """0 when the ids of ``later`` do not collide with ``earlier``; else past the largest id."""
    used = {item.get("id") for item in earlier}
    if not any(item.get("id") in used for item in later):
        return 0
    return 1 + max(int(item["id"]) for item in earlier) - min(int(item["id"]) for item in later)


def content_hashes(dataset: CocoDataset, workers: int = 8) -> dict[int, str]:
    """sha1 of every image file; fails with one sentence when a file is missing."""

    def digest(file_name: str) -> str | None:
        path = dataset.image_root / file_name
        return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None

    names, ids = dataset.images.file_names(), dataset.images.ids.tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(digest, names))
    missing = [name for name, d in zip(names, digests, strict=True) if d is None]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {dataset.json_path} are missing under {dataset.image_root} "
            f"(first: {missing[0]}); check the --images folder or repair with python -m detlit.check --fix"
        )
    return {image_id: d for image_id, d in zip(ids, digests, strict=True) if d is not None}


# --- grouping ------------------------------------------------------------------------------


def group_images(
    dataset: CocoDataset,
    raw_images: dict[int, dict[str, Any]],
    hashes: dict[int, str],
    group_by: str | None,
    group_pattern: str | None,
) -> list[list[int]]:
    """Image ids that must stay together: same content, tiles of one source image, same ``group_by``
    value, same pattern match."""
    ids, names = dataset.images.ids.tolist(), dataset.images.file_names()
    parent = {image_id: image_id for image_id in ids}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union_by(keys: dict[int, Any]) -> None:
        first: dict[Any, int] = {}
        for image_id, key in keys.items():
            if key is None:
                continue
            if key in first:
                parent[find(image_id)] = find(first[key])
            else:
                first[key] = image_id

    union_by(hashes)
    union_by({iid: tile_source(raw_images[iid]) for iid in parent})
    if group_by:
        union_by({iid: _hashable(raw_images[iid].get(group_by)) for iid in parent})
    pattern = group_regex(group_pattern)
    if pattern is not None:
        keys: dict[int, Any] = {}
        for image_id, name in zip(ids, names, strict=True):
            match = pattern.search(name)
            keys[image_id] = (match.group(1) if pattern.groups else match.group(0)) if match else None
        union_by(keys)
    groups: dict[int, list[int]] = defaultdict(list)
    for image_id in ids:
        groups[find(image_id)].append(image_id)
    return list(groups.values())


def tile_source(raw_image: dict[str, Any]) -> tuple[Any, Any] | None:
    """The source image of a tile (``python -m detlit.tile``'s ``"tile"`` field), or None for an image
    that is no tile: tiles of one source overlap, so they stay on one side."""
    tile = raw_image.get("tile")
    if not isinstance(tile, dict) or "source_id" not in tile:
        return None
    return _hashable(tile.get("source_id")), _hashable(tile.get("source_file"))


def group_regex(text: str | None) -> re.Pattern[str] | None:
    """``--group-pattern`` compiled, or one sentence with the regular expression's error.

    Raises:
        ConfigError: ``text`` is not a valid regular expression.
    """
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as err:
        raise ConfigError(
            f"--group-pattern {text!r} is not a valid regular expression ({err}); give a Python regular "
            "expression whose first group names the group, e.g. '(.+)\\.rf\\.'"
        ) from None


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


# --- the split -----------------------------------------------------------------------------


def label_matrix(dataset: CocoDataset, groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Objects per category for each group (last column: images without objects) and group sizes."""
    category_ids = sorted(c.id for c in dataset.categories)
    images = dataset.images
    position = {image_id: i for i, image_id in enumerate(images.ids.tolist())}
    group_of = np.zeros(len(images), np.int64)
    for g, ids in enumerate(groups):
        group_of[[position[image_id] for image_id in ids]] = g
    objects = ~images.crowd
    columns = np.searchsorted(np.asarray(category_ids, np.int64), images.category_ids[objects])
    counts = np.zeros((len(groups), len(category_ids) + 1), dtype=np.int64)
    np.add.at(counts, (group_of[images.owners[objects]], columns), 1)
    empty = np.bincount(images.owners[objects], minlength=len(images)) == 0
    np.add.at(counts[:, -1], group_of[empty], 1)
    sizes = np.array([len(ids) for ids in groups], dtype=np.int64)
    return counts, sizes, category_ids


def stratify(counts: np.ndarray, sizes: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification of groups into train (0) / val (1), then size balancing."""
    side = assign_parts(counts, sizes, np.array([1.0 - val_fraction, val_fraction]), rng)
    return balance(side, counts, sizes, val_fraction)


def assign_parts(counts: np.ndarray, sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification: the part (0 .. len(fractions) - 1) of each group.

    The rarest label still unassigned goes first; each of its groups joins the part that wants
    that label most (ties: the part that wants most images, then chance).
    """
    wanted = np.outer(fractions, counts.sum(axis=0)).astype(np.float64)  # (parts, labels)
    wanted_images = fractions * sizes.sum()
    side = np.full(len(sizes), -1, dtype=np.int64)
    remaining = counts.copy()
    order = rng.permutation(len(sizes))
    while (side < 0).any():
        open_groups = order[side[order] < 0]
        totals = remaining[open_groups].sum(axis=0)
        present = np.flatnonzero(totals > 0)
        if present.size == 0:
            label_groups = open_groups
            label = None
        else:
            label = int(present[np.argmin(totals[present])])
            label_groups = open_groups[remaining[open_groups, label] > 0]
        for g in label_groups:
            if label is None:
                choice = int(np.argmax(wanted_images))
            else:
                need = wanted[:, label]
                best = np.flatnonzero(need == need.max())
                if best.size > 1:
                    best = best[wanted_images[best] == wanted_images[best].max()]
                choice = int(best[0] if best.size == 1 else rng.choice(best))
            side[g] = choice
            wanted[choice] -= counts[g]
            wanted_images[choice] -= sizes[g]
            remaining[g] = 0
    return side


def balance_folds(fold: np.ndarray, counts: np.ndarray, sizes: np.ndarray, folds: int) -> np.ndarray:
    """Equal fold sizes, then even category shares.

    First groups move from the largest fold to the smallest until no two folds differ by more than
    one image (unless groups make that impossible), each move the one that hurts the strata least.
    Then groups of equal size are exchanged between the fold that holds the most of some category
    (relative to its share) and the fold that holds the least, while that makes the folds' shares
    closer (images with many objects can leave the first assignment uneven).
    """
    fold = fold.copy()
    totals = counts.sum(axis=0)
    share = 1.0 / folds
    for _ in range(len(sizes) * folds):
        images = np.bincount(fold, weights=sizes, minlength=folds)
        big, small = int(np.argmax(images)), int(np.argmin(images))
        gap = int(images[big] - images[small])
        candidates = np.flatnonzero((fold == big) & (sizes < gap))
        if gap <= 1 or candidates.size == 0:
            break
        big_counts, small_counts = counts[fold == big].sum(axis=0), counts[fold == small].sum(axis=0)
        cost = _imbalance(big_counts - counts[candidates], totals, share) + _imbalance(
            small_counts + counts[candidates], totals, share
        )
        fold[candidates[int(np.argmin(cost))]] = small
    for _ in range(min(len(sizes), 50 * folds)):  # bounded: each exchange looks at up to 200 x 200 pairs per fold
        if not _exchange(fold, counts, sizes, totals, folds):
            break
    return fold


def _exchange(
    fold: np.ndarray, counts: np.ndarray, sizes: np.ndarray, totals: np.ndarray, folds: int, limit: int = 200
) -> bool:
    """Swap the pair of equal-sized groups between the most unbalanced fold and any other fold
    that lowers the two folds' imbalance most; False when no swap helps."""
    share = 1.0 / folds
    fold_counts = np.stack([counts[fold == f].sum(axis=0) for f in range(folds)])
    cost = _imbalance(fold_counts, totals, share)  # per fold
    high = int(np.argmax(cost))
    givers = np.flatnonzero(fold == high)[:limit]
    best: tuple[float, int, int] | None = None
    for other in range(folds):
        if other == high:
            continue
        takers = np.flatnonzero(fold == other)[:limit]
        pairs = np.argwhere(sizes[givers][:, None] == sizes[takers][None, :])
        if not len(pairs):
            continue
        moved = counts[takers[pairs[:, 1]]] - counts[givers[pairs[:, 0]]]  # what the high fold gains
        after = _imbalance(fold_counts[high] + moved, totals, share) + _imbalance(
            fold_counts[other] - moved, totals, share
        )
        gain = cost[high] + cost[other] - after
        k = int(np.argmax(gain))
        if gain[k] > 1e-12 and (best is None or gain[k] > best[0]):
            best = (float(gain[k]), int(givers[pairs[k, 0]]), int(takers[pairs[k, 1]]))
    if best is None:
        return False
    _, g, t = best
    fold[g], fold[t] = fold[t], fold[g]
    return True


def _imbalance(val_counts: np.ndarray, totals: np.ndarray, fraction: float) -> np.ndarray:
    """Squared deviation of each label's val share from the fraction, summed (any leading shape)."""
    share = val_counts / np.maximum(totals, 1)
    return np.asarray(((share - fraction) ** 2 * (totals > 0)).sum(axis=-1))


def balance(side: np.ndarray, counts: np.ndarray, sizes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Move (or swap) groups until val holds round(fraction x images) images, hurting the strata least."""
    side = side.copy()
    totals = counts.sum(axis=0)
    target = round(val_fraction * int(sizes.sum()))
    for _ in range(len(sizes)):
        gap = int(sizes[side == 1].sum()) - target
        if gap == 0:
            break
        source = 1 if gap > 0 else 0  # the side that has too many images
        val_counts = counts[side == 1].sum(axis=0)
        sign = -1 if source == 1 else 1  # moving from val subtracts from the val counts
        candidates = np.flatnonzero((side == source) & (sizes <= abs(gap)))
        if candidates.size:
            cost = _imbalance(val_counts + sign * counts[candidates], totals, val_fraction)
            side[candidates[int(np.argmin(cost))]] = 1 - source
            continue
        if not _swap(side, counts, sizes, val_counts, totals, val_fraction, gap):
            break  # groups too large to reach the target exactly
    return side


def _swap(
    side: np.ndarray,
    counts: np.ndarray,
    sizes: np.ndarray,
    val_counts: np.ndarray,
    totals: np.ndarray,
    val_fraction: float,
    gap: int,
    limit: int = 200,
) -> bool:
    """Exchange a val group and a train group whose size difference closes part of the gap."""
    val, train = np.flatnonzero(side == 1), np.flatnonzero(side == 0)
    diff = sizes[val][:, None] - sizes[train][None, :]  # images val loses by the exchange
    useful = (diff != 0) & (np.sign(diff) == np.sign(gap)) & (np.abs(diff) <= abs(gap))
    if not useful.any():
        return False
    pairs = np.argwhere(useful)[: limit * limit]
    moved = val_counts - counts[val[pairs[:, 0]]] + counts[train[pairs[:, 1]]]
    best = pairs[int(np.argmin(_imbalance(moved, totals, val_fraction)))]
    side[val[best[0]]], side[train[best[1]]] = 0, 1
    return True


def _grouped(
    dataset: CocoDataset, raw_images: dict[int, dict[str, Any]], group_by: str | None, group_pattern: str | None
) -> tuple[list[list[int]], np.ndarray, np.ndarray, list[int]]:
    """The groups of images that stay together, in a deterministic order, with their label matrix."""
    hashes = content_hashes(dataset)
    groups = group_images(dataset, raw_images, hashes, group_by, group_pattern)
    groups.sort(key=min)  # a deterministic order, independent of hashing
    counts, sizes, category_ids = label_matrix(dataset, groups)
    return groups, counts, sizes, category_ids


def _as_split(
    dataset: CocoDataset, groups: list[list[int]], counts: np.ndarray, category_ids: list[int], val: np.ndarray
) -> Split:
    """The Split whose val side holds the groups ``val`` marks."""
    val_ids = sorted(iid for g, ids in enumerate(groups) if val[g] for iid in ids)
    train_ids = sorted(iid for g, ids in enumerate(groups) if not val[g] for iid in ids)
    names = {c.id: c.name for c in dataset.categories}
    shares = {names[cid]: (int(counts[~val, i].sum()), int(counts[val, i].sum())) for i, cid in enumerate(category_ids)}
    shares["(no objects)"] = (int(counts[~val, -1].sum()), int(counts[val, -1].sum()))
    return Split(train_ids, val_ids, shares, len(groups))


def split_dataset(
    dataset: CocoDataset,
    raw_images: dict[int, dict[str, Any]],
    val_fraction: float = 0.1,
    seed: int = 0,
    group_by: str | None = None,
    group_pattern: str | None = None,
) -> Split:
    """Assign every image to train or val (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be between 0 and 1")
    groups, counts, sizes, category_ids = _grouped(dataset, raw_images, group_by, group_pattern)
    side = stratify(counts, sizes, val_fraction, np.random.default_rng(seed))
    return _as_split(dataset, groups, counts, category_ids, side == 1)


def fold_dataset(
    dataset: CocoDataset,
    raw_images: dict[int, dict[str, Any]],
    folds: int,
    seed: int = 0,
    group_by: str | None = None,
    group_pattern: str | None = None,
) -> list[Split]:
    """K train/val pairs: every image in exactly one fold's val side, folds of equal size (within
    one image, unless groups make that impossible), stratified by category, groups kept together.

    Raises:
        DataError: fewer groups of images than folds.
    """
    groups, counts, sizes, category_ids = _grouped(dataset, raw_images, group_by, group_pattern)
    if folds > len(groups):
        raise DataError(
            f"{folds} folds need at least {folds} images (or groups of images that stay together) and "
            f"{dataset.json_path} has {len(groups)}; give fewer --folds"
        )
    rng = np.random.default_rng(seed)
    fold = assign_parts(counts, sizes, np.full(folds, 1.0 / folds), rng)
    fold = balance_folds(fold, counts, sizes, folds)
    return [_as_split(dataset, groups, counts, category_ids, fold == f) for f in range(folds)]


def subset(raw: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The raw COCO dict restricted to some images (their annotations, every other key kept but an
    earlier split's pair marker)."""
    keep = set(image_ids)
    out = {key: value for key, value in raw.items() if key not in ("images", "annotations")}
    out["images"] = [image for image in raw["images"] if image["id"] in keep]
    out["annotations"] = [a for a in raw["annotations"] if a["image_id"] in keep]
    return {key: out[key] for key in raw if key != MARKER}  # the input's key order


# --- the pair ------------------------------------------------------------------------------


def encode_pair(train: dict[str, Any], val: dict[str, Any]) -> tuple[bytes, bytes]:
    """Both parts as json, each with the pair's marker first: ``{"id": ..., "part": "train"}``.

    The id is a digest of both parts' content, so a train.json and a val.json of one run of split
    carry the same id, and the same inputs and seed give the same bytes.
    """
    texts = [json.dumps(part, indent=1) for part in (train, val)]
    pair_id = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()[:16]
    train_doc, val_doc = (
        {MARKER: {"id": pair_id, "part": name}, **part} for name, part in (("train", train), ("val", val))
    )
    return json.dumps(train_doc, indent=1).encode("utf-8"), json.dumps(val_doc, indent=1).encode("utf-8")


class _Marked(msgspec.Struct):
    detlit_split: Any = None


def split_marker(json_path: Path) -> dict[str, Any] | None:
    """The pair marker that split wrote into a json; None for a json from elsewhere.

    The whole file is scanned (fast: every other field is skipped unread), so the marker is found
    wherever a tool that rewrote the file put it.
    """
    try:
        data = json_path.read_bytes()
    except OSError:
        return None
    try:
        marker = msgspec.json.decode(data, type=_Marked).detlit_split
    except msgspec.ValidationError:
        return None  # not a JSON object
    except msgspec.DecodeError:
        try:  # not strict JSON (NaN), as json.dumps writes it
            document = json.loads(data)
        except ValueError:
            return None
        marker = document.get(MARKER) if isinstance(document, dict) else None
    return marker if isinstance(marker, dict) else None


def check_pair(train_json: str | Path, val_json: str | Path) -> None:
    """Refuse a train.json and a val.json of one folder that two runs of split wrote.

    That pair is what an interrupted ``split --overwrite`` (or two splits into one folder at once)
    would leave: the images of one part may be in the other too. Files of different folders are a
    choice (a test set carved out first, say) and pass, as do files without a marker.

    Raises:
        DataError: both files carry markers of different splits.
    """
    train_json, val_json = Path(train_json), Path(val_json)
    if not same_file(train_json.parent, val_json.parent):
        return
    train, val = split_marker(train_json), split_marker(val_json)
    if train is None or val is None or train.get("id") == val.get("id"):
        return
    raise DataError(
        f"{train_json} and {val_json} come from two different splits (marked {train.get('id')} and "
        f"{val.get('id')}): an interrupted split or two splits into one folder; run python -m detlit.split again"
    )


def print_split(split: Split, console: Console) -> None:
    table = Table(title=f"train {len(split.train_ids)} / val {len(split.val_ids)} images ({split.groups} groups)")
    for column in ("category", "train objects", "val objects", "val share"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, (train, val) in split.category_shares.items():
        if train + val == 0:
            continue
        share = f"{100 * val / (train + val):.1f}%" if train + val else "-"
        table.add_row(name, str(train), str(val), share)
    console.print(table)


def print_folds(folds: list[Split], console: Console) -> None:
    """Objects of each category in each fold's val side (the fold's share of the category)."""
    table = Table(title=f"{len(folds)} folds of {len(folds[0].train_ids) + len(folds[0].val_ids)} images")
    table.add_column("category")
    for number in range(1, len(folds) + 1):
        table.add_column(f"fold {number}", justify="right")
    table.add_row("images", *(str(len(fold.val_ids)) for fold in folds))
    for name in folds[0].category_shares:
        vals = [fold.category_shares[name][1] for fold in folds]
        total = sum(folds[0].category_shares[name])
        if total:
            table.add_row(name, *(f"{v} ({100 * v / total:.0f}%)" for v in vals))
    console.print(table)


def fold_outputs(out: Path, folds: int) -> list[Path]:
    """``out/fold_1/train.json``, ``out/fold_1/val.json``, ..., ``out/fold_K/val.json``."""
    return [out / f"fold_{k}" / f"{part}.json" for k in range(1, folds + 1) for part in ("train", "val")]


def split(
    jsons: list[Path],
    images: list[Path],
    out: Path,
    val_fraction: float | None = None,
    seed: int = 0,
    group_by: str | None = None,
    group_pattern: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    folds: int | None = None,
) -> int:
    """``python -m detlit.split``: merge the inputs, split them, write ``train.json`` and ``val.json``
    together (both or neither), holding ``out`` against other commands meanwhile.

    With ``folds`` K: K pairs ``out/fold_k/train.json`` and ``out/fold_k/val.json`` instead, every
    image in exactly one ``val.json``, all 2K files written together; ``val_fraction`` (default 0.1)
    is for one split only.
    """
    if folds and val_fraction is not None:
        raise ConfigError(
            f"--folds {folds} sets each val share to 1/{folds}; leave out --val-fraction, or --folds for one split"
        )
    val_fraction = 0.1 if val_fraction is None else val_fraction
    if len(images) != len(jsons):
        raise DataError(f"{len(jsons)} json file(s) but {len(images)} --images folder(s); give one folder per json")
    group_regex(group_pattern)  # a bad pattern stops the command before any work
    outputs = fold_outputs(out, folds) if folds else [out / "train.json", out / "val.json"]
    with write_lock(out):
        raw, root = merge_inputs(list(zip(jsons, images, strict=True)))
        names = [i["file_name"] for i in raw["images"] if isinstance(i, dict) and isinstance(i.get("file_name"), str)]
        check_outputs(outputs, inputs=jsons, overwrite=overwrite, images=[(root, names)])
        source = jsons[0] if len(jsons) == 1 else Path(" + ".join(str(p) for p in jsons))
        dataset, findings = parse_coco(raw, source, root)
        raise_on_errors(findings, source, root)
        log.info("read %d images, %d annotations from %s", len(dataset.images), dataset.num_annotations, source)
        raw_images = {image["id"]: image for image in raw["images"]}
        if folds:
            results = fold_dataset(dataset, raw_images, folds, seed, group_by, group_pattern)
        else:
            results = [split_dataset(dataset, raw_images, val_fraction, seed, group_by, group_pattern)]
            _refuse_empty_side(results[0], source, len(dataset.images), val_fraction)
        parts = [subset(raw, ids) for result in results for ids in (result.train_ids, result.val_ids)]
        for path, part in zip(outputs, parts, strict=True):
            unresolved = [i["file_name"] for i in part["images"] if not (root / i["file_name"]).is_file()]
            if unresolved:
                raise DataError(
                    f"{path}: {len(unresolved)} image path(s) do not resolve under {root} (first: {unresolved[0]})"
                )
        if not quiet and folds:
            print_folds(results, rich_console())
        elif not quiet:
            print_split(results[0], rich_console())
        encoded = [data for k in range(0, len(parts), 2) for data in encode_pair(parts[k], parts[k + 1])]
        write_together(dict(zip(outputs, encoded, strict=True)))
    for path, part in zip(outputs, parts, strict=True):
        log.info("wrote %s: %d images, %d annotations", path, len(part["images"]), len(part["annotations"]))
    log.info("file names in every file are relative to %s: train with --data.train_images=%s", root, root)
    return 0


def _refuse_empty_side(result: Split, source: Path, images: int, val_fraction: float) -> None:
    for side, ids in (("validation", result.val_ids), ("training", result.train_ids)):
        if not ids:
            raise DataError(
                f"splitting {source} ({images} images, --val-fraction {val_fraction:g}) gives "
                f"the {side} set no image; give more images or another --val-fraction"
            )
