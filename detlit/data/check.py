"""``python -m detlit.check``: validate a COCO dataset, report, and optionally write a repaired copy.

Examples::

    python -m detlit.check data/train.json --images data/images
    python -m detlit.check data/train.json --images data/images --fix data/train.fixed.json
    python -m detlit.check data/train.json --images data/images --report check.json --quiet

Exit status: 0 when no error remains (in the repaired copy, with ``--fix``), 1 when errors
remain, 2 when the input cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from detlit.common.command import run_cli
from detlit.errors import DataError
from detlit.data.findings import Severity, log_summary
from detlit.data.checks import Report, apply_repairs, check_file

log = logging.getLogger("detlit.data.check")

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


def write_fixed(report: Report, raw: dict, out: Path, overwrite: bool) -> Report:
    """Write the repaired copy and its change log; return the check of the copy."""
    if out.resolve() == report.json_path.resolve():
        raise DataError(f"--fix {out} is the input file; detlit never modifies it: name a new file")
    if out.exists() and not overwrite:
        raise DataError(f"--fix {out} already exists; choose another name or pass --overwrite")
    fixed, changes = apply_repairs(raw, report.repairs())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixed, indent=1))
    changes_path = out.with_name(out.stem + ".repairs.txt")
    changes_path.write_text("".join(f"{line}\n" for line in changes))
    log.info("wrote %s with %d repairs (listed in %s)", out, len(changes), changes_path)
    fixed_report, _ = check_file(out, report.image_root, decode=False, unlisted=False)
    return fixed_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detlit.check", description="Validate a COCO detection dataset.")
    parser.add_argument("json", type=Path, help="COCO annotation json")
    parser.add_argument("--images", type=Path, required=True, help="folder the json's file names are relative to")
    parser.add_argument("--fix", type=Path, metavar="OUT.json", help="write a repaired copy here")
    parser.add_argument("--overwrite", action="store_true", help="let --fix / --report replace existing files")
    parser.add_argument("--report", type=Path, metavar="REPORT.json", help="write findings and statistics as JSON")
    parser.add_argument("--no-decode", action="store_true", help="read image headers only (faster; no hashing)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="log every finding")
    verbosity.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser.parse_args(argv)


def check_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    if args.report and args.report.exists() and not args.overwrite:
        raise DataError(f"--report {args.report} already exists; choose another name or pass --overwrite")
    report, raw = check_file(args.json, args.images, decode=not args.no_decode)
    log_summary(report.findings, log, str(args.json), examples=len(report.findings) if args.verbose else 0)
    if not args.quiet:
        print_report(report, Console(stderr=False))
    if args.report:
        args.report.write_text(json.dumps(report.as_dict(), indent=1))
        log.info("wrote %s", args.report)
    remaining = report.errors
    if args.fix:
        remaining = write_fixed(report, raw, args.fix, args.overwrite).errors
        log.info("%s: %d error(s) remain after repair", args.fix, len(remaining))
    elif report.errors:
        log.error("%d error(s); repair what can be repaired with --fix OUT.json", len(report.errors))
    return 1 if remaining else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(check_main, argv))


if __name__ == "__main__":
    main()
