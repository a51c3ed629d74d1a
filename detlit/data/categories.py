"""Stage 1, checking: dropping and merging categories (``check --fix OUT.json --drop-category``,
``--merge-category``).

A class with one object, an export's placeholder category, two names for one class: what a user
would otherwise fix by editing the json by hand. Categories are named by name or by id (a value
that is some category's name is that name; else a whole number is an id). Dropping a category
removes it and its annotations (the images stay, as images without those objects); merging
``a=b`` gives a's annotations category b and removes a. The changes are repairs of the copy that
``--fix`` writes, listed with the others in ``OUT.repairs.txt``; the input is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from detlit.data.findings import Repair
from detlit.errors import ConfigError

log = logging.getLogger(__name__)


def _find(raw: dict[str, Any], value: str, option: str) -> tuple[int, dict[str, Any]]:
    """The (index, record) of the category ``value`` names."""
    categories = [(i, c) for i, c in enumerate(raw.get("categories") or []) if isinstance(c, dict)]
    by_name = [(i, c) for i, c in categories if c.get("name") == value]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        ids = ", ".join(str(c.get("id")) for _, c in by_name)
        raise ConfigError(f"{option} {value}: {len(by_name)} categories are named {value!r} (ids {ids}); name it by id")
    try:
        wanted = int(value)
    except ValueError:
        wanted = None
    by_id = [(i, c) for i, c in categories if wanted is not None and c.get("id") == wanted]
    if by_id:
        return by_id[0]
    known = ", ".join(f"{c.get('id')} {c.get('name')!r}" for _, c in categories)
    raise ConfigError(f"{option} {value}: no category has that name or id; the categories are {known}")


def category_repairs(raw: dict[str, Any], drop: Sequence[str] = (), merge: Sequence[str] = ()) -> list[Repair]:
    """The repairs that drop the categories ``drop`` names and merge each ``a=b`` of ``merge``.

    Raises:
        ConfigError: a name or id that no category has (or two have), a merge without ``=``, a
            category merged into itself, into one that is dropped or merged, or named twice.
    """
    repairs: list[Repair] = []
    removed: dict[int, str] = {}  # category index -> the option that removes it
    targets: dict[Any, Any] = {}  # category id -> the id its annotations get (None: dropped)
    for value in drop:
        index, category = _find(raw, value, "--drop-category")
        _once(removed, index, category, f"--drop-category {value}")
        targets[category.get("id")] = None
    merged_into: list[tuple[str, int, dict[str, Any]]] = []
    for pair in merge:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise ConfigError(f"--merge-category {pair}: give SOURCE=TARGET, two category names or ids, e.g. truck=car")
        index, category = _find(raw, source, "--merge-category")
        _, into = _find(raw, target, "--merge-category")
        if into is category:
            raise ConfigError(f"--merge-category {pair}: a category cannot be merged into itself")
        _once(removed, index, category, f"--merge-category {pair}")
        targets[category.get("id")] = into.get("id")
        merged_into.append((pair, index, into))
    for pair, _, into in merged_into:
        if any(raw["categories"][i] is into for i in removed):
            raise ConfigError(
                f"--merge-category {pair}: {into.get('name')!r} is itself dropped or merged; merge into a "
                "category that stays"
            )
    for index in sorted(removed):
        repairs.append(Repair("categories", index, "drop"))
    counts = {"dropped": 0, "merged": 0}
    for index, annotation in enumerate(raw.get("annotations") or []):
        if not isinstance(annotation, dict) or annotation.get("category_id") not in targets:
            continue
        target = targets[annotation["category_id"]]
        if target is None:
            repairs.append(Repair("annotations", index, "drop"))
            counts["dropped"] += 1
        else:
            repairs.append(Repair("annotations", index, "set", {"category_id": target}))
            counts["merged"] += 1
    if removed:
        log.info(
            "categories: %d removed (%s); %d annotations dropped, %d given another category",
            len(removed),
            ", ".join(removed.values()),
            counts["dropped"],
            counts["merged"],
        )
    return repairs


def _once(removed: dict[int, str], index: int, category: dict[str, Any], option: str) -> None:
    if index in removed:
        raise ConfigError(
            f"{option}: category {category.get('name')!r} is already named by {removed[index]}; name each category once"
        )
    removed[index] = option
