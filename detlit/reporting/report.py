"""The run report, as ``python -m detlit.report`` writes it: one page that opens offline.

:func:`report` reads a run folder (:mod:`detlit.reporting.run_reader`: the run's own records, or a
detlit 0.2 run's files), builds the document from its sections (:mod:`detlit.reporting.sections`)
and writes it into the output folder (the run folder by default): ``report.html``, one file with
every picture embedded as a ``data:`` URI and its style inline, so it opens offline and makes no
request; ``report.md``, the same content as Markdown, with its pictures as PNG files in
``report_files/``. An existing report is replaced only with ``--overwrite``.

Each finding comes from one small rule (``rule_*`` in :mod:`detlit.reporting.advice`) with its
threshold in a module constant there, and names the numbers that triggered it. The page is a
:mod:`detlit.reporting.document`, rendered to HTML and Markdown there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from detlit.common.outputs import check_folder, check_outputs, write_lock, write_together
from detlit.common.run_folder import RunFolder
from detlit.errors import DataError, DetlitError
from detlit.reporting.document import Block, Document, render_html, render_markdown
from detlit.reporting.examples import MAX_IMAGES, run_examples
from detlit.reporting.run_reader import (
    DataSplit,
    FinalMetrics,
    Run,
    check_run_folder,
    choose_checkpoint,
    float_or_nan,
    locate,
    metrics_from_evaluation,
    metrics_from_scalars,
    read_eval,
    read_run,
    read_split,
)
from detlit.reporting.sections import SECTIONS, Context

log = logging.getLogger(__name__)

HTML_NAME = "report.html"


def _class_info(run: Run, metrics: FinalMetrics | None, train: DataSplit) -> tuple[list[str], list[int] | None]:
    """Class names and original category ids, from the evaluation, the run's hyper-parameters or the data."""
    names = run.model_setting("class_names")
    ids = run.model_setting("category_ids")
    if metrics is not None and metrics.category_ids is not None:
        return metrics.class_names, metrics.category_ids
    if isinstance(names, list) and names:
        return [str(n) for n in names], [int(i) for i in ids] if isinstance(ids, list) else None
    if train.dataset is not None:
        try:
            label_map = train.dataset.label_map()
        except DataError:
            return [], None
        return list(label_map.names), list(label_map.category_ids)
    return [], None


def build_report(
    run_dir: Path,
    eval_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 4,
    max_images: int = MAX_IMAGES,
) -> Document:
    """Read a run folder (and an evaluation folder) and build the report.

    Raises:
        ConfigError: ``run_dir`` is not a run folder, or ``eval_dir`` is not an evaluation folder.
    """
    run = read_run(run_dir)
    log.info(
        "read %s (%s): %d logged names, %d checkpoints",
        run_dir,
        "its records" if run.keeps_records else "a detlit 0.2 run",
        len(run.scalars),
        len(run.checkpoints),
    )
    metrics, eval_document = read_eval(eval_dir) if eval_dir is not None else (None, {})
    train, val = read_split(run, "train"), read_split(run, "val")
    test = read_split(run, "test") if run.data_setting("test_json") else None
    class_names, category_ids = _class_info(run, metrics, train)
    if metrics is None:
        metrics = metrics_from_scalars(run.scalars, class_names, run.metrics_source)

    examples, note = None, None
    evaluated = (
        locate(eval_document.get("source"), [eval_dir.resolve(), *eval_dir.resolve().parents]) if eval_dir else None
    )
    checkpoint, why = choose_checkpoint(run, evaluated)
    if max_images <= 0:
        note = "--max-images 0"
    elif checkpoint is None:
        note = f"no checkpoint in {RunFolder(run.folder).checkpoints}"
    elif val.dataset is None or val.image_root is None:
        note = val.note or "the validation images were not found"
    else:
        thresholds, source = None, ""
        if metrics is not None and eval_dir is not None:
            # NaN / null: no threshold ever gave a true positive; such a class keeps no detection
            thresholds = [
                t if math.isfinite(t) else math.inf for t in (float_or_nan(r["threshold"]) for r in metrics.per_class)
            ]
            source = "the F1-optimal score thresholds of --eval"
        log.info("running %s (%s) on up to %d validation images", checkpoint, why, max_images)
        try:
            examples = run_examples(checkpoint, val.dataset, max_images, device, thresholds, source, batch_size)
        except (DetlitError, RuntimeError, OSError) as err:
            note = f"{checkpoint} could not be run ({err})"
            log.warning("example images left out: %s", note)
    if metrics is None and examples is not None and examples.evaluation is not None:
        metrics = metrics_from_evaluation(
            examples.evaluation,
            f"the model run by this report on {len(examples.outcomes)} validation images (no validation metrics in "
            f"{run.metrics_source})",
        )
    context = Context(run, train, val, metrics, eval_dir, examples, note, class_names, category_ids, test)
    blocks: list[Block] = []
    for section in SECTIONS:
        blocks += section(context)
    subtitle = f"Run folder `{run.folder}`, report written {datetime.now().isoformat(sep=' ', timespec='seconds')}."
    return Document(f"Training report: {run.name}", subtitle, blocks)


@dataclass
class OutputPaths:
    html: Path
    markdown: Path
    files: Path

    @classmethod
    def for_html(cls, html_path: Path) -> OutputPaths:
        return cls(html_path, html_path.with_suffix(".md"), html_path.with_name(f"{html_path.stem}_files"))

    @classmethod
    def for_folder(cls, folder: Path) -> OutputPaths:
        """``report.html``, ``report.md`` and ``report_files/`` in ``folder``; a path ending in
        ``.html`` (detlit 0.1's ``--out``) names the HTML file itself."""
        if folder.suffix.lower() in (".html", ".htm"):
            log.warning("--out %s names a file; --out is a folder now (the report goes in as %s)", folder, HTML_NAME)
            return cls.for_html(folder)
        check_folder(folder)
        return cls.for_html(folder / HTML_NAME)

    def all(self) -> list[Path]:
        return [self.html, self.markdown, self.files]


def write_report(document: Document, paths: OutputPaths) -> None:
    """Write the HTML page, the Markdown copy and its pictures as one (an interrupted ``--overwrite``
    leaves the old report whole), then remove the pictures of an older report that this one lacks."""
    figures = document.figures()
    contents = {paths.files / f"{figure.name}.png": figure.png for figure in figures}
    contents[paths.markdown] = render_markdown(document, paths.files.name).encode("utf-8")
    contents[paths.html] = render_html(document).encode("utf-8")
    write_together(contents)
    for old in paths.files.glob("*.png") if paths.files.is_dir() else []:
        if old not in contents:
            old.unlink()


def report(
    run: Path,
    eval_dir: Path | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int = 4,
    max_images: int = MAX_IMAGES,
) -> int:
    """``python -m detlit.report``: build the report of ``run`` and write it into ``out`` (default: the run folder)."""
    check_run_folder(run)  # before the lock, which would create a missing folder
    paths = OutputPaths.for_folder(out or run)
    with write_lock(paths.html.parent):
        check_outputs(paths.all(), overwrite=overwrite)
        document = build_report(run, eval_dir, device, batch_size, max_images)
        write_report(document, paths)
    print(f"report: {paths.html}\nMarkdown: {paths.markdown} (pictures in {paths.files})")
    return 0
