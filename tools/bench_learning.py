"""Learning parity: does detlit's training reach the AP of detectron2's own training loop?

``make bench-learning`` (``python tools/bench_learning.py``) trains the same architecture twice per
seed, from the same initial weights, with the same batch size, iterations, learning rate, warm-up
and seed:

* detlit: ``python -m detlit.fit`` with the dataset's config (``configs/sample_cpu.yaml``,
  ``configs/rbc_cpu.yaml``), as a user runs it: ``CocoDataModule`` (Albumentations resize and
  flip, crowd regions as ignore regions, aspect-ratio batches), ``DetectionModule`` (its optimizer
  groups and per-step schedule), Lightning's ``Trainer``; with ``data.train_empty_images=false``
  and ``data.drop_last=true`` (the default), so both sides train on the same images in full batches (detectron2
  leaves out images without objects, and its loader never makes a smaller batch);
* detectron2: its own loop as ``DefaultTrainer`` builds it, without the trainer class:
  ``DatasetMapper`` (``ResizeShortestEdge`` + ``RandomFlip``, crowd regions dropped) over the
  dataset dicts without images that have no objects (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``),
  ``build_detection_train_loader`` (``TrainingSampler``, aspect-ratio grouping), ``build_optimizer``
  and ``build_lr_scheduler`` (``WarmupCosineLR``) from ``cfg.SOLVER``, ``SimpleTrainer`` with
  ``LRScheduler`` and ``PeriodicCheckpointer`` hooks; the model is built from detectron2's own
  head names (``portable_config``).

A third side, ``detectron2-detlit-lr``, run only when ``--sides`` names it, is detectron2's loop
with detlit's learning-rate schedule (:func:`detlit.model.schedule.build_scheduler`) in place of
``build_lr_scheduler``: the two schedules differ during warm-up (detlit ramps to the full rate
times the cosine, detectron2 0.6 to the cosine's value at the warm-up's end), and this side
measures what that difference does.

Both final models are then run on the val and test images by ``Predictor`` (every detection down
to the model's test threshold; detlit's resize for detlit's model, detectron2's PIL resize for
detectron2's, each as it trained) and scored by pycocotools' ``COCOeval`` against the json files.

Every run is a unit (dataset, seed, side) with its own folder under ``--work``; a finished unit
is not run again, and an interrupted one resumes from its last checkpoint (both sides save one
every 50 steps). ``--data``, ``--seeds`` and ``--sides`` select units, so one side or seed can run
at a time; ``--report`` only writes the table of the finished units. After every unit, the section
between ``<!-- bench-learning:start -->`` and ``<!-- bench-learning:end -->`` of ``--out``
(BENCHMARKS.md by default; with ``--quick`` only where ``--out`` says) is rewritten with every
finished unit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench import Spec, spec_module, write_section  # noqa: E402
from benchkit import RBC_DIR, REPO, machine, portable, quiet, set_threads, usable_cores  # noqa: E402

from detlit.common.run_folder import RunFolder, read_metrics, version_name  # noqa: E402
from detlit.compat import build_model  # noqa: E402  (prepares detectron2 before the imports below)
from detlit.data.checks import load_checked  # noqa: E402
from detlit.data.coco import CocoDataset, LabelMap  # noqa: E402
from detlit.data.detectron2 import to_detectron2_dicts  # noqa: E402
from detlit.data.sample import write_sample, write_split  # noqa: E402
from detlit.evaluation.coco_results import coco_results  # noqa: E402
from detlit.inference.predictor import Predictor  # noqa: E402
from detlit.model.config import portable_config  # noqa: E402
from detlit.model.module import DetectionModule  # noqa: E402
from detlit.model.schedule import build_scheduler  # noqa: E402

# detectron2's own training loop, the baseline: imported here, never by detlit.
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402  # isort: skip
from detectron2.data import DatasetMapper, build_detection_train_loader  # noqa: E402  # isort: skip
from detectron2.data.build import filter_images_with_only_crowd_annotations  # noqa: E402  # isort: skip
from detectron2.data.samplers import TrainingSampler  # noqa: E402  # isort: skip
from detectron2.engine import SimpleTrainer, hooks  # noqa: E402  # isort: skip
from detectron2.solver import build_lr_scheduler, build_optimizer  # noqa: E402  # isort: skip
from detectron2.utils.env import seed_all_rng  # noqa: E402  # isort: skip
from detectron2.utils.events import JSONWriter  # noqa: E402  # isort: skip

log = logging.getLogger("bench_learning")

MARKERS = ("<!-- bench-learning:start -->", "<!-- bench-learning:end -->")
SIDES = ("detlit", "detectron2")  # the comparison; the default of --sides
DETLIT_LR = "detectron2-detlit-lr"  # detectron2's loop with detlit's learning-rate schedule
ALL_SIDES = (*SIDES, DETLIT_LR)
TARGET = 0.01  # detlit's AP may be at most this far below detectron2's, on each dataset and split
STATS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class Dataset:
    """One dataset of the comparison: its config, files and schedule."""

    name: str
    config: Path
    train: tuple[Path, Path]  # json, image folder
    val: tuple[Path, Path]
    test: tuple[Path, Path]
    steps: int

    @property
    def splits(self) -> dict[str, tuple[Path, Path]]:
        return {"val": self.val, "test": self.test}


def sample_dataset(work: Path, quick: bool, steps: int | None) -> Dataset:
    """The synthetic sample (``python -m detlit.sample``: 200 train, 40 val images) and a test split
    of 100 more images from another seed; written once under ``work``."""
    folder = work / "data" / ("sample_quick" if quick else "sample")
    if not (folder / "test.json").is_file():
        train, val, test = (12, 6, 6) if quick else (200, 40, 100)
        write_sample(folder, train=train, val=val, seed=0)
        coco = write_split(folder, "test", test, np.random.default_rng(1), first_ann_id=1)
        (folder / "test.json").write_text(json.dumps(coco))
    return Dataset(
        "sample",
        REPO / "configs" / "sample_cpu.yaml",
        (folder / "train.json", folder / "train"),
        (folder / "val.json", folder / "val"),
        (folder / "test.json", folder / "test"),
        steps or (4 if quick else 300),
    )


def rbc_dataset(steps: int | None) -> Dataset:
    """The blood-cell set (``DETLIT_RBC_DIR`` or ../shared/data/rbc): train, valid and test splits."""
    if not (RBC_DIR / "train" / "_annotations.coco.json").is_file():
        raise SystemExit(f"the rbc data is not at {RBC_DIR}; set DETLIT_RBC_DIR or leave rbc out of --data")

    def split(name: str) -> tuple[Path, Path]:
        return RBC_DIR / name / "_annotations.coco.json", RBC_DIR / name

    return Dataset(
        "rbc", REPO / "configs" / "rbc_cpu.yaml", split("train"), split("valid"), split("test"), steps or 300
    )


def spec_of(dataset: Dataset, quick: bool) -> Spec:
    spec = Spec.read(dataset.config)
    # The warm-up of a 4-step smoke test would never end.
    return replace(spec.tiny(), warmup_steps=2) if quick else spec


# --- the two sides -------------------------------------------------------------------------------


def module_for(spec: Spec, labels: LabelMap) -> DetectionModule:
    """detlit's model of the spec for these classes (weights as initialised, or as the caller loads them)."""
    return spec_module(spec, labels.names, labels.category_ids)


def initial_weights(folder: Path, spec: Spec, labels: LabelMap, seed: int) -> Path:
    """The seed's initial weights, written once: both sides start from this file."""
    path = folder / "init.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        module = module_for(spec, labels)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": module.model.state_dict()}, path)
    return path


def detlit_command(dataset: Dataset, spec: Spec, seed: int, init: Path, folder: Path, quick: bool) -> list[str]:
    """``python -m detlit.fit`` for this unit: the dataset's config with the shared schedule and weights."""
    (train_json, train_images), (val_json, val_images) = dataset.train, dataset.val
    test_json, test_images = dataset.test
    args = [
        "--config",
        str(dataset.config.relative_to(REPO)),
        f"--data.train_json={train_json}",
        f"--data.train_images={train_images}",
        f"--data.val_json={val_json}",
        f"--data.val_images={val_images}",
        f"--data.test_json={test_json}",
        f"--data.test_images={test_images}",
        f"--model.weights={init}",
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        "--trainer.max_epochs=-1",
        f"--trainer.max_steps={dataset.steps}",
        "--trainer.limit_val_batches=0",  # both sides are evaluated after training, the same way
        "--trainer.enable_progress_bar=false",
        "--test_after_fit=false",
        "--data.train_empty_images=false",  # the images detectron2 trains on
        "--data.drop_last=true",  # and only full batches, as its loader makes them
        f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.logger.init_args.name=run",
        "--trainer.logger.init_args.version=0",
        "--last_checkpoint.every_n_train_steps=50",
    ]
    if quick:
        args.append(f"--model.overrides={json.dumps(spec.overrides)}")
        args += [f"--data.min_size_train={spec.min_size_train}", f"--data.max_size_train={spec.max_size_train}"]
        args += [f"--data.min_size_test={spec.min_size_test}", f"--data.max_size_test={spec.max_size_test}"]
        args += [f"--data.batch_size={spec.batch_size}", f"--model.warmup_steps={spec.warmup_steps}"]
    if detlit_run(folder).last_checkpoint.is_file():
        args.append("--ckpt=last")
    return [sys.executable, "-m", "detlit.fit", *args]


def train_detlit(dataset: Dataset, spec: Spec, seed: int, init: Path, folder: Path, quick: bool) -> dict[str, Any]:
    command = detlit_command(dataset, spec, seed, init, folder, quick)
    log.info("detlit: %s", shlex.join(command))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, cwd=REPO, env=env, check=True)
    run = detlit_run(folder)
    state = torch.load(run.detectron2_weights, map_location="cpu", weights_only=True)["model"]
    return {
        "state": state,
        "command": shlex.join(["python", *command[1:]]).replace(str(REPO) + "/", ""),
        "train_loss": detlit_losses(run),
    }


def detlit_run(folder: Path) -> RunFolder:
    """The run folder of a unit's detlit side (the command names its logger's folder and version 0)."""
    return RunFolder(folder / "run" / version_name(0))


def detlit_losses(run: RunFolder) -> list[list[float]]:
    """(step, train/loss) as the run recorded them in its metrics file (every 10th step)."""
    return [[step, loss] for step, loss in read_metrics(run).series.get("train/loss", [])]


def detectron2_losses(path: Path) -> list[list[float]]:
    """(iteration, total_loss) of every 10th iteration from detectron2's metrics.json."""
    points: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "total_loss" in record:
                points[int(record["iteration"])] = float(record["total_loss"])
    return [[step, points[step]] for step in sorted(points)]


def final_loss(result: dict[str, Any], last: int = 50) -> float | None:
    """Mean training loss over the last ``last`` steps (None for results without the curve)."""
    curve = result.get("train_loss") or []
    tail = [loss for step, loss in curve if step >= result["steps"] - last]
    return float(np.mean(tail)) if tail else None


def detectron2_config(spec: Spec, labels: LabelMap, dataset: Dataset) -> Any:
    """detlit's detectron2 config with detectron2's own heads and the shared solver settings."""
    cfg = portable_config(module_for(spec, labels).cfg).clone()
    cfg.defrost()
    args = spec.optimizer_args
    if spec.optimizer is not torch.optim.SGD or spec.lr_schedule != "cosine":
        raise SystemExit(f"{dataset.config}: the comparison needs SGD with the cosine schedule")
    cfg.SOLVER.BASE_LR = float(args["lr"])
    cfg.SOLVER.MOMENTUM = float(args.get("momentum", 0.0))
    cfg.SOLVER.WEIGHT_DECAY = float(args.get("weight_decay", 0.0))
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.WARMUP_ITERS = spec.warmup_steps
    cfg.SOLVER.WARMUP_FACTOR = 0.001  # DetectionModule's default warmup_factor
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.MAX_ITER = dataset.steps
    cfg.SOLVER.IMS_PER_BATCH = spec.batch_size
    cfg.DATALOADER.NUM_WORKERS = 0  # as the configs: the model keeps both cores busy
    cfg.freeze()
    return cfg


def train_detectron2(
    dataset: Dataset,
    spec: Spec,
    labels: LabelMap,
    records: CocoDataset,
    seed: int,
    init: Path,
    folder: Path,
    detlit_lr: bool = False,
) -> dict[str, Any]:
    cfg = detectron2_config(spec, labels, dataset)
    seed_all_rng(seed)
    model = build_model(cfg)
    model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True)["model"])
    model.train()
    optimizer = build_optimizer(cfg, model)
    if detlit_lr:  # DetectionModule's schedule; milestones and gamma are for multistep only (refused above)
        scheduler: Any = build_scheduler(
            optimizer, cfg.SOLVER.MAX_ITER, spec.warmup_steps, cfg.SOLVER.WARMUP_FACTOR, spec.lr_schedule, (), 1.0
        )
    else:
        scheduler = build_lr_scheduler(cfg, optimizer)
    dicts = filter_images_with_only_crowd_annotations(to_detectron2_dicts(records, labels))
    loader = build_detection_train_loader(
        dicts,
        mapper=DatasetMapper(cfg, is_train=True),
        sampler=TrainingSampler(len(dicts), seed=seed),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    trainer = SimpleTrainer(model, loader, optimizer)
    checkpoints = folder / "checkpoints"
    resume = checkpoints.is_dir()
    checkpoints.mkdir(parents=True, exist_ok=True)
    checkpointer = DetectionCheckpointer(model, str(checkpoints), optimizer=optimizer, scheduler=scheduler)
    start = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1 if resume else 0
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer, scheduler),
            hooks.PeriodicCheckpointer(checkpointer, 50, max_iter=cfg.SOLVER.MAX_ITER, max_to_keep=1),
            # The losses of every 10th iteration, as DefaultTrainer writes them (metrics.json).
            hooks.PeriodicWriter([JSONWriter(str(folder / "metrics.json"), window_size=1)], period=10),
        ]
    )
    trainer.train(start, cfg.SOLVER.MAX_ITER)
    return {
        "state": model.state_dict(),
        "train_loss": detectron2_losses(folder / "metrics.json"),
        "command": f"{cfg.SOLVER.MAX_ITER} iterations of SimpleTrainer (this script, side {folder.name})",
        "kept_images": len(dicts),
        "train_images": len(records.images),
    }


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(
    spec: Spec, labels: LabelMap, state: dict[str, torch.Tensor], side: str, splits: dict[str, tuple[Path, Path]]
) -> dict[str, list[float]]:
    """pycocotools' 12 bbox stats of the weights on each split (every detection the model keeps)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    module = module_for(spec, labels)
    module.model.load_state_dict(state)
    resize: Literal["detlit", "detectron2"] = "detlit" if side == "detlit" else "detectron2"
    predictor = Predictor(module, device="cpu", all_detections=True, batch_size=4, resize=resize)
    stats = {}
    for split, (json_path, images) in splits.items():
        data = load_checked(str(json_path), str(images), f"{split} images", False)
        paths = [data.image_root / record.file_name for record in data.images]
        kept = [(data.images[o.index].id, o.prediction) for o in predictor.predict_files(paths) if o.prediction]
        results = coco_results([p for _, p in kept], [i for i, _ in kept], labels)
        with contextlib.redirect_stdout(io.StringIO()):
            truth = COCO(str(json_path))
            if not results:
                stats[split] = [0.0] * 12
                continue
            evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats[split] = [float(v) for v in evaluator.stats[:12]]
    return stats


# --- units ---------------------------------------------------------------------------------------


def run_unit(dataset: Dataset, seed: int, side: str, work: Path, quick: bool) -> dict[str, Any]:
    """Train and evaluate one (dataset, seed, side), unless its result is already there."""
    seed_folder = work / dataset.name / f"seed{seed}"
    result_path = seed_folder / side / "result.json"
    if result_path.is_file():
        return dict(json.loads(result_path.read_text()))
    spec = spec_of(dataset, quick)
    records = load_checked(str(dataset.train[0]), str(dataset.train[1]), "data.train_images", False)
    labels = records.label_map()
    init = initial_weights(seed_folder, spec, labels, seed)
    folder = seed_folder / side
    folder.mkdir(parents=True, exist_ok=True)
    log.info("%s, seed %d, %s: %d steps", dataset.name, seed, side, dataset.steps)
    begun = time.perf_counter()
    if side == "detlit":
        trained = train_detlit(dataset, spec, seed, init, folder, quick)
    else:
        trained = train_detectron2(dataset, spec, labels, records, seed, init, folder, side == DETLIT_LR)
    seconds = time.perf_counter() - begun
    stats = evaluate(spec, labels, trained.pop("state"), side, dataset.splits)
    result = {
        "dataset": dataset.name,
        "seed": seed,
        "side": side,
        "steps": dataset.steps,
        "train_seconds": seconds,
        "stats": stats,
        "spec": spec.describe(),
        "cpu": machine()["cpu"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **trained,
    }
    result_path.write_text(json.dumps(result, indent=1))
    log.info("%s, seed %d, %s: %s", dataset.name, seed, side, {k: v[:3] for k, v in stats.items()})
    return result


def finished(work: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("*/seed*/*/result.json"))]


def markdown(results: Sequence[dict[str, Any]], work: Path) -> str:
    """The section: a row per dataset, split, side and seed; the mean per side and the target."""
    lines = ["## Learning parity: detlit against detectron2's own training loop (CPU)", ""]
    cpus = sorted({r["cpu"] for r in results})
    lines.append(f"- machine: {', '.join(cpus)}; {usable_cores()} cores; dates {_dates(results)}")
    units = _short(work) if not Path(_short(work)).is_absolute() else "$WORK, its --work folder"
    lines.append(f"- command: `python tools/bench_learning.py` (units under `{units}`, resumable)")
    for name in sorted({r["dataset"] for r in results}):
        first = next(r for r in results if r["dataset"] == name)
        lines.append(f"- {name}: {first['steps']} steps; model {first['spec']}")
        for r in results:
            if r["dataset"] == name and r["side"] == "detlit":
                lines.append(f"    - detlit, seed {r['seed']}: `{portable(r['command'], work)}`")
                break
    lines += [
        "",
        "| data | split | side | seed | AP | AP50 | AP75 | training | final train loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name in sorted({r["dataset"] for r in results}):
        for split in ("val", "test"):
            means: dict[str, list[float]] = {}
            for side in ALL_SIDES:
                rows = sorted(
                    (r for r in results if r["dataset"] == name and r["side"] == side), key=lambda r: r["seed"]
                )
                for r in rows:
                    ap, ap50, ap75 = r["stats"][split][:3]
                    minutes = r["train_seconds"] / 60
                    loss = final_loss(r)
                    lines.append(
                        f"| {name} | {split} | {side} | {r['seed']} | {ap:.3f} | {ap50:.3f} | {ap75:.3f} | "
                        f"{minutes:.1f} min | {'' if loss is None else f'{loss:.3f}'} |"
                    )
                if rows:
                    means[side] = [float(np.mean([r["stats"][split][i] for r in rows])) for i in range(3)]
                    lines.append(
                        f"| {name} | {split} | **{side} mean** | | **{means[side][0]:.3f}** | "
                        f"{means[side][1]:.3f} | {means[side][2]:.3f} | | |"
                    )
            if "detlit" in means and "detectron2" in means:
                gap = means["detlit"][0] - means["detectron2"][0]
                met = "met" if gap >= -TARGET else "MISSED"
                verdicts.append(
                    f"- {name} {split}: detlit AP - detectron2 AP = {gap:+.3f} (target >= -{TARGET}): {met}"
                )
                if DETLIT_LR in means:
                    moved = means[DETLIT_LR][0] - means["detectron2"][0]
                    verdicts.append(
                        f"    - detectron2 with detlit's learning-rate schedule - detectron2 = {moved:+.3f}; "
                        f"detlit - that = {means['detlit'][0] - means[DETLIT_LR][0]:+.3f}"
                    )
    lines += ["", *verdicts]
    return "\n".join(lines) + "\n"


def _dates(results: Sequence[dict[str, Any]]) -> str:
    days = sorted({r["date"][:10] for r in results})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO))
    return str(path)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", default="sample,rbc", help="datasets: sample, rbc (default both)")
    parser.add_argument("--seeds", default="0,1", help="seeds (default 0,1)")
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"detlit, detectron2 (default both), {DETLIT_LR} (detectron2's loop, detlit's lr schedule)",
    )
    parser.add_argument("--steps", type=int, help="training steps (default 300; --quick 4)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_learning", help="folder of the units")
    parser.add_argument(
        "--out", type=Path, help="markdown file to write the section to (default BENCHMARKS.md; --quick: none)"
    )
    parser.add_argument("--report", action="store_true", help="only write the section from the finished units")
    parser.add_argument("--quick", action="store_true", help="toy model, 12 sample images, 4 steps: a smoke test")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    set_threads(args.threads)
    work = args.work.resolve()
    if not args.report:
        names = [n.strip() for n in args.data.split(",") if n.strip()]
        sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        unknown = [n for n in names if n not in ("sample", "rbc")] + [s for s in sides if s not in ALL_SIDES]
        if unknown:
            print(f"unknown dataset or side {', '.join(unknown)}", file=sys.stderr)
            return 2
        for name in names:
            dataset = sample_dataset(work, args.quick, args.steps) if name == "sample" else rbc_dataset(args.steps)
            for seed in (int(s) for s in args.seeds.split(",")):
                for side in sides:
                    run_unit(dataset, seed, side, work / ("quick" if args.quick else ""), args.quick)
                    _write(args, work)
    _write(args, work)
    results = finished(work / "quick" if args.quick else work)
    print(markdown(results, work) if results else "no finished units yet")
    return 0


def _write(args: argparse.Namespace, work: Path) -> None:
    results = finished(work / "quick" if args.quick else work)
    if not results:
        return
    out = args.out if args.out is not None or args.quick else REPO / "BENCHMARKS.md"
    if out is not None:
        write_section(out, markdown(results, work), MARKERS)


if __name__ == "__main__":
    sys.exit(main())
