"""Checking a dataset as ``python -m detlit.check`` does: findings printed and logged, a JSON report
and a repaired copy written on request (the checks themselves: :mod:`detlit.data.checks`)."""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from detlit.common.console import console as rich_console
from detlit.common.outputs import check_outputs, write_lock, write_text, write_together
from detlit.common.ranges import check_image_sizes
from detlit.common.safe_yaml import read_yaml
from detlit.data.categories import category_repairs
from detlit.data.checks import SIZE_BOUNDS, Report, Resize, apply_repairs, check_dataset, check_file, compare_splits
from detlit.data.coco import read_coco, read_json
from detlit.data.findings import Repair, Severity, log_summary
from detlit.data.split import check_pair
from detlit.errors import ConfigError

log = logging.getLogger(__name__)

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def print_report(report: Report, console: Console, examples: int = 3) -> None:
    """Tables: dataset statistics, objects per category, findings by kind with examples."""
    stats = report.stats
    overview = Table(title=f"{report.json_path} (images under {report.image_root})", show_header=False)
    overview.add_row("images", str(stats["images"]))
    overview.add_row("annotations", str(stats["annotations"]))
    overview.add_row("images without objects", str(stats["empty_images"]))
    per_image = stats["boxes_per_image"]
    overview.add_row(
        "boxes per image (min / mean / max)", f"{per_image['min']} / {per_image['mean']} / {per_image['max']}"
    )
    sizes = stats["box_sizes"]
    overview.add_row(
        "box sizes (COCO small / medium / large)", f"{sizes['small']} / {sizes['medium']} / {sizes['large']}"
    )
    overview.add_row("crowd regions", str(stats["crowd"]))
    console.print(overview)
    if "object_sizes" in stats:
        console.print(size_table(stats["object_sizes"]))

    categories = Table(title="objects per category")
    categories.add_column("category (id name)")
    categories.add_column("objects", justify="right")
    for name, count in stats["per_category"].items():
        categories.add_row(name, str(count))
    console.print(categories)

    if not report.findings:
        console.print("[green]no findings: the dataset is ready to train on[/green]")
        return
    table = Table(title="findings")
    for column in ("severity", "kind", "count", "example", "fix"):
        table.add_column(column, overflow="fold")
    kinds = Counter((f.severity, f.kind) for f in report.findings)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    for (severity, kind), count in sorted(kinds.items(), key=lambda x: (order[x[0][0]], x[0][1])):
        same = [f for f in report.findings if f.kind == kind and f.severity is severity]
        text = "\n".join(f.message for f in same[:examples])
        if count > examples:
            text += f"\n... and {count - examples} more"
        table.add_row(f"[{STYLE[severity]}]{severity.value}[/]", kind, str(count), text, same[0].fix or "")
    console.print(table)


def size_table(sizes: dict[str, Any]) -> Table:
    """The object sizes after the resize (:func:`detlit.data.checks.object_sizes`), one row per resize."""
    table = Table(
        title="object sizes after the resize",
        caption=f"size: {sizes['measure']}; training: at its smallest shortest-edge size",
    )
    table.add_column("resize (edge/cap)", no_wrap=True)
    table.add_column("objects", justify="right")
    for bound in SIZE_BOUNDS:
        table.add_column(f"<{bound} px", justify="right", no_wrap=True)
    table.add_column("median", justify="right", no_wrap=True)
    for name, title in (("test", "inference"), ("train", "training")):
        row = sizes[name]
        shares = [f"{row[f'under_{b}']:.1%}" if row["objects"] else "-" for b in SIZE_BOUNDS]
        median = f"{row['median']:.1f} px" if row["objects"] else "-"
        table.add_row(f"{title} {row['min_size']}/{row['max_size']}", str(row["objects"]), *shares, median)
    return table


RESIZE_KEYS = ("min_size_train", "max_size_train", "min_size_test", "max_size_test")


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def resize_settings(
    config: Path | None = None,
    min_size_train: list[int] | None = None,
    max_size_train: int | None = None,
    min_size_test: int | None = None,
    max_size_test: int | None = None,
) -> Resize:
    """The resizes ``check`` measures object sizes at: each size given, else the ``data.*`` setting
    of the fit config ``config``, else the data module's default (:class:`Resize`).

    Raises:
        ConfigError: the config cannot be read, one of its sizes is out of range, or a cap on the
            longest edge is below its shortest-edge size.
    """
    values: dict[str, Any] = {key: getattr(Resize(), key) for key in RESIZE_KEYS}
    names = {key: f"the default {key} {_shown(values[key])}" for key in RESIZE_KEYS}
    if config is not None:
        source = f"--config {config}"
        document = read_yaml(config, source)
        data = (document.get("data") or {}) if isinstance(document, dict) else None
        if not isinstance(data, dict):
            raise ConfigError(f"{source} is not a python -m detlit.fit config: it has no data section of settings")
        for key in RESIZE_KEYS:
            if key in data:
                values[key], names[key] = data[key], f"data.{key} {_shown(data[key])} of {config}"
        try:
            check_image_sizes("data.", *(values[key] for key in RESIZE_KEYS))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from err
    given = {
        "min_size_train": min_size_train or None,
        "max_size_train": max_size_train,
        "min_size_test": min_size_test,
        "max_size_test": max_size_test,
    }
    for key, value in given.items():
        if value is not None:
            values[key], names[key] = value, f"--{key.replace('_', '-')} {_shown(value)}"
    for cap, size in (("max_size_train", "min_size_train"), ("max_size_test", "min_size_test")):
        largest = max(values[size]) if isinstance(values[size], (list, tuple)) else values[size]
        if values[cap] < largest:
            raise ConfigError(
                f"{names[cap]} is below {names[size]}: no image would be resized to that shortest edge; "
                f"give --{cap.replace('_', '-')} {largest} or more"
            )
    return Resize(
        min_size_train=tuple(int(size) for size in values["min_size_train"]),
        max_size_train=int(values["max_size_train"]),
        min_size_test=int(values["min_size_test"]),
        max_size_test=int(values["max_size_test"]),
    )


def write_fixed(report: Report, out: Path, raw: dict[str, Any] | None = None, extra: Sequence[Repair] = ()) -> Report:
    """Write the repaired copy and its change log; return the check of the copy.

    The whole json is read again here, every field of it (the check reads only what detection
    uses), unless the caller has it (``raw``): the copy keeps what the repairs do not touch.
    ``extra`` are repairs of the caller's (the categories dropped or merged).
    """
    raw = read_json(report.json_path) if raw is None else raw
    fixed, changes = apply_repairs(raw, [*report.repairs(), *extra])
    changes_path = repairs_path(out)
    write_together(
        {
            out: json.dumps(fixed, indent=1).encode("utf-8"),
            changes_path: "".join(f"{line}\n" for line in changes).encode("utf-8"),
        }
    )
    log.info("wrote %s with %d repairs (listed in %s)", out, len(changes), changes_path)
    fixed_report, _ = check_file(out, report.image_root, decode=False, unlisted=False)
    return fixed_report


def repairs_path(fixed: Path) -> Path:
    """The change log beside a repaired copy: ``NAME.repairs.txt``."""
    return fixed.with_name(fixed.stem + ".repairs.txt")


def check(
    json_path: Path,
    images: Path,
    fix: Path | None = None,
    report_path: Path | None = None,
    overwrite: bool = False,
    decode: bool = True,
    verbose: bool = False,
    quiet: bool = False,
    val: Path | None = None,
    val_images: Path | None = None,
    config: Path | None = None,
    sizes: dict[str, Any] | None = None,
    drop_categories: Sequence[str] = (),
    merge_categories: Sequence[str] = (),
) -> int:
    """``python -m detlit.check``: check a dataset, print and log the findings, write a report
    and a repaired copy on request. With ``val`` (the validation json of this training json), also
    the classes that one of the two has no object of; the object sizes after the resizes of
    training and inference of ``config`` and ``sizes`` (:func:`resize_settings`). The copy that
    ``fix`` writes also drops ``drop_categories`` and merges ``merge_categories`` (``a=b``;
    :mod:`detlit.data.categories`).

    The folders of ``fix`` and ``report_path`` are held against other commands while it runs; no
    output may be the json, ``val``, one of the dataset's images, or the other output.

    Returns:
        1 while errors remain (in the repaired copy, with ``fix``), else 0.
    """
    resize = resize_settings(config=config, **(sizes or {}))
    if (drop_categories or merge_categories) and fix is None:
        option = "--drop-category" if drop_categories else "--merge-category"
        raise ConfigError(f"{option} changes the dataset: give --fix OUT.json, where the changed copy goes")
    outputs = {"--fix": [fix, repairs_path(fix)]} if fix is not None else {}
    if report_path is not None:
        outputs["--report"] = [report_path]
    with ExitStack() as held:
        locked: list[Path] = []
        for option, paths in outputs.items():
            folder = paths[0].parent
            if not any(folder.resolve() == other.resolve() for other in locked):
                held.enter_context(write_lock(folder, option))
                locked.append(folder)
        raw, extra = None, []
        if drop_categories or merge_categories:  # named categories checked before any other work
            raw = read_json(json_path)
            extra = category_repairs(raw, drop_categories, merge_categories)
        dataset, structure = read_coco(json_path, images)
        inputs = [json_path, *([val] if val is not None else [])]
        check_outputs(outputs, inputs=inputs, overwrite=overwrite, images=[(images, dataset.images.file_names())])
        if val is not None:
            check_pair(json_path, val)
        report = check_dataset(dataset, structure, decode=decode, resize=resize)
        test = report.stats["object_sizes"]["test"]
        log.info(
            "%s: %d objects after the resize to min_size_test %d: %s under %d px, median %s px",
            json_path,
            test["objects"],
            resize.min_size_test,
            f"{test[f'under_{SIZE_BOUNDS[0]}']:.1%}" if test["objects"] else "none",
            SIZE_BOUNDS[0],
            test["median"],
        )
        if val is not None:
            other, _ = read_coco(val, val_images or images)
            report.findings += compare_splits(dataset, other)
        log_summary(report.findings, log, str(json_path), examples=len(report.findings) if verbose else 0)
        if not quiet:
            print_report(report, rich_console())
        if report_path:
            write_text(report_path, json.dumps(report.as_dict(), indent=1))
            log.info("wrote %s", report_path)
        remaining = report.errors
        if fix:
            remaining = write_fixed(report, fix, raw, extra).errors
            log.info("%s: %d error(s) remain after repair", fix, len(remaining))
            if quiet:  # the log lines that name the copy are not shown: the one line that must be
                print(f"wrote {fix} ({len(remaining)} error(s) remain; repairs in {repairs_path(fix)})")
        elif report.errors:
            first = report.errors[0].message
            print(
                f"error: {json_path}: {len(report.errors)} error(s), the first: {first}; repair what can be "
                "repaired with --fix OUT.json",
                file=sys.stderr,
            )
    return 1 if remaining else 0
