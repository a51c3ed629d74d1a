"""The ``small_objects`` benchmark: a model trained on tiles, on large images, whole and sliced, against SAHI.

It writes its own data and model in the run's temporary folder, then measures:

* the data: the synthetic sample (``detlit.data.sample``) with a small-object layout (:data:`FULL`:
  24 train and 8 val images of 640 to 800 px, 40 to 90 objects of 8 to 32 px each), the train
  images cut into tiles by ``detlit.data.tiling.tile`` (the library function of
  ``python -m detlit.tile``: tiles of :attr:`Sizes.tile` px, overlap 0.2, 5% of the empty tiles);
* the model: ``configs/sample_cpu.yaml``'s (its architecture, sizes and schedule; the unit tests'
  toy model with ``--quick``), trained from scratch on the tiles for a fixed number of steps
  (a Lightning ``Trainer``, learning rate 0.04 where the demo has 0.02: twice the learning per
  step in a schedule this short; no flips: the steps are about one pass over the tiles, and
  without them every run trains the same model);
* on the untiled val images, as ``python -m detlit.evaluate`` does (``predict_dataset`` with a
  :class:`~detlit.inference.predictor.Predictor` keeping every detection, then
  ``DetectionMetrics``): AP and AP_small of the whole image (resized to the model's test size,
  where an object of 8 to 32 px shrinks to 2 to 10 px) and sliced (the Predictor's ``slicing``:
  tiles of the training tiles' size, merged by NMS as docs/small-objects.md advises for evaluation;
  greedy merging's AP in the details), and the images/s of each;
* sliced speed against SAHI's ``get_sliced_prediction`` (the same checkpoint in SAHI's
  ``Detectron2DetectionModel``, which runs detectron2's ``DefaultPredictor`` one tile at a time;
  the same tiles, merge and whole-image pass, ``force_postprocess_type``), against detlit's
  Predictor with detectron2's resize (``resize="detectron2"``, as ``DefaultPredictor`` resizes),
  on the first val images (4 of 8), decoded once, the sides in ABBA order; the two sides'
  detections are paired (boxes within 0.5 px, scores within 1e-4) and their largest differences
  reported, with where each side's time goes;
* the slicing's own cost: the Predictor's sliced ``predict`` time less the time inside its
  runtime (the model's forward passes, batch assembly included), as a share of the whole.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_deploy import QUICK_MODEL, QUICK_SIZES
from benchkit import CPU_CONFIG, Context, Result, Row, Target, abba, collected, listed, median
from lightning.pytorch import Trainer, seed_everything

from detlit.data.checks import load_checked
from detlit.data.coco import CocoDataset
from detlit.data.datamodule import CocoDataModule
from detlit.data.images import load_image
from detlit.data.sample import Layout, write_sample
from detlit.data.tiling import ANNOTATIONS, IMAGES, Summary, Tiling, tile
from detlit.evaluation.evaluation import Evaluation
from detlit.evaluation.metric import DetectionMetrics
from detlit.inference.evaluate import predict_dataset
from detlit.inference.predictor import Prediction, Predictor
from detlit.inference.slicing import Slicing
from detlit.model.module import DetectionModule
from tests.reference import sahi_model

NAME = "small_objects"
OVERLAP = 0.2
EMPTY_RATIO = 0.05  # of the tiles without objects: a few, so the model also sees plain background
LEARNING_RATE = 0.04
AUGMENT = "none"  # Albumentations' flips draw from a random state of their own: without them, the same model every run
AP_GAIN = 0.15  # sliced AP_small over the whole image's
SPEEDUP = 1.5  # detlit's sliced images/s over SAHI's
OVERHEAD = 0.10  # the slicing's own share of sliced inference time
BOX_TOLERANCE, SCORE_TOLERANCE = 0.5, 1e-4  # px; what "equal detections" means (tests/test_slicing.py's)
BATCH = 4  # tiles (or images) per forward pass: the Predictor's and evaluate's default


@dataclass(frozen=True)
class Sizes:
    """How much the benchmark draws, trains and times."""

    train_images: int
    val_images: int
    layout: Layout
    tile: int  # training tiles and sliced inference, px
    steps: int  # training steps
    turns: int  # timed turns per side against SAHI
    race_images: int  # the first val images, for the turns against SAHI


# Objects of 8 to 32 px in images of 640 to 800 px: the demo's test size (192 px) shrinks them 3.3 to
# 4.2 times, as 800 px shrinks a 3000 px photo; tiles of 128 px grow them 1.5 times instead.
FULL = Sizes(
    train_images=24,
    val_images=8,
    layout=Layout(image_size=(640, 800), object_size=(8, 32), objects=(40, 90)),
    tile=128,
    steps=500,
    turns=2,
    race_images=4,
)
QUICK = Sizes(
    train_images=3,
    val_images=2,
    layout=Layout(image_size=(200, 260), object_size=(8, 32), objects=(8, 16)),
    tile=96,
    steps=3,
    turns=1,
    race_images=2,
)


# --- data and model --------------------------------------------------------------------------------


def write_data(folder: Path, sizes: Sizes) -> tuple[Path, Path, Summary]:
    """The sample (train and val) and the train images' tiles; the folders of both, and what tiling did."""
    sample, tiles = folder / "sample", folder / "tiles"
    write_sample(sample, train=sizes.train_images, val=sizes.val_images, seed=0, layout=sizes.layout)
    tiling = Tiling(size=sizes.tile, overlap=OVERLAP, empty_ratio=EMPTY_RATIO, seed=0)
    status, summary = tile(sample / "train.json", sample / "train", tiles, tiling)
    if status != 0:
        raise RuntimeError(f"tiling wrote no tile: {summary.line()}")
    return sample, tiles, summary


def train(tiles: Path, sizes: Sizes, quick: bool, out: Path) -> tuple[Path, float, dict[str, Any]]:
    """The CPU config's model trained on the tiles for ``sizes.steps`` steps, seeded; its checkpoint,
    the training's seconds, and what it was."""
    config = yaml.safe_load(CPU_CONFIG.read_text())
    model, data = config["model"], config["data"]
    image_sizes = (
        {
            "min_size_train": [QUICK_SIZES["min_size_test"]],
            "max_size_train": QUICK_SIZES["max_size_test"],
            **QUICK_SIZES,
        }
        if quick
        else {k: data[k] for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")}
    )
    dm = CocoDataModule(
        train_json=str(tiles / ANNOTATIONS),
        train_images=str(tiles / IMAGES),
        batch_size=int(data["batch_size"]),
        num_workers=0,
        augment=AUGMENT,
        **image_sizes,
    )
    dm.setup("fit")
    module_name, _, class_name = model["optimizer"]["class_path"].rpartition(".")
    optimizer = getattr(importlib.import_module(module_name), class_name)
    optimizer_args = {**(model["optimizer"].get("init_args") or {}), "lr": LEARNING_RATE}
    warmup = min(int(model.get("warmup_steps", 100)), sizes.steps // 5)
    torch.manual_seed(0)
    module = DetectionModule(
        num_classes=len(dm.class_names),
        class_names=list(dm.class_names),
        category_ids=list(dm.category_ids),
        config_name=model["config_name"],
        weights=None,
        freeze_at=model.get("freeze_at"),
        overrides={**(model.get("overrides") or {}), **(QUICK_MODEL if quick else {})},
        optimizer=functools.partial(optimizer, **optimizer_args),
        lr_schedule=model.get("lr_schedule", "cosine"),
        warmup_steps=warmup,
        **image_sizes,
    )
    seed_everything(0, workers=True)  # the order of the tiles, the sampled proposals: the same model every run
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=sizes.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    path = out / "model.ckpt"
    trainer.save_checkpoint(path)
    facts = {
        "optimizer": f"{class_name}({', '.join(f'{k}={v}' for k, v in optimizer_args.items())})",
        "warmup": warmup,
        "batch": int(data["batch_size"]),
        "sizes": image_sizes,
    }
    return path, seconds, facts


# --- timing --------------------------------------------------------------------------------------


class Stopwatch:
    """A callable (a Predictor's runtime or resize, SAHI's DefaultPredictor) with a stopwatch: the
    seconds spent in it and the number of calls; its other attributes are the callable's own."""

    def __init__(self, call: Callable[..., Any]):
        self.call = call
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.call(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


# --- accuracy, as evaluate measures it ---------------------------------------------------------------


@dataclass
class Accuracy:
    """One way of predicting the val set: its evaluation and its speed (image files read included)."""

    evaluation: Evaluation
    seconds: float
    model_seconds: float  # inside the runtime (the forward passes)
    images: int
    detections: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def describe(self) -> str:
        coco = self.evaluation.coco
        return (
            f"AP {coco['map']:.3f}, AP50 {coco['map50']:.3f}, AP_small {coco['map_small']:.3f}, "
            f"AR100 {coco['mar100']:.3f}, {self.detections} detections, {self.rate:.2f} img/s "
            f"({self.model_seconds:.1f} of {self.seconds:.1f} s in the model)"
        )


def accuracy(dataset: CocoDataset, predictor: Predictor) -> Accuracy:
    """The metric of ``predictor`` on the dataset, as ``python -m detlit.evaluate`` computes it."""
    timed = Stopwatch(predictor.runtime)
    predictor.runtime = timed  # type: ignore[assignment]  # the Predictor calls its runtime for every batch
    collected()
    start = time.perf_counter()
    (preds, targets), _, label_map = predict_dataset(dataset, predictor, progress=False)
    seconds = time.perf_counter() - start
    metric = DetectionMetrics(label_map.names)
    metric.update(preds, targets)
    return Accuracy(metric.compute(), seconds, timed.seconds, len(preds), sum(len(p["scores"]) for p in preds))


# --- speed against SAHI ------------------------------------------------------------------------------


Found = list[tuple[int, float, tuple[float, ...]]]  # (label, score, XYXY box) of each detection


def sahi_predict(model: Any, image: np.ndarray, slicing: Slicing) -> Any:
    """SAHI's sliced prediction of one image with ``slicing``'s settings (its ``ObjectPrediction`` s)."""
    from sahi.predict import get_sliced_prediction

    result = get_sliced_prediction(
        image,
        model,
        slice_height=slicing.size,
        slice_width=slicing.size,
        overlap_height_ratio=slicing.overlap,
        overlap_width_ratio=slicing.overlap,
        perform_standard_pred=slicing.full_image,
        postprocess_type=slicing.merge.upper(),
        postprocess_match_metric=slicing.match.upper(),
        postprocess_match_threshold=slicing.match_threshold,
        force_postprocess_type=True,  # SAHI would switch to NMS by IoU below a confidence of 0.1
        verbose=0,
    )
    return result.object_prediction_list


def sahi_found(predictions: Any) -> Found:
    return sorted((p.category.id, p.score.value, tuple(p.bbox.to_xyxy())) for p in predictions)


def detlit_found(prediction: Prediction) -> Found:
    return sorted(
        (int(label), float(score), tuple(box))
        for box, score, label in zip(
            prediction.boxes.tolist(), prediction.scores.tolist(), prediction.labels.tolist(), strict=True
        )
    )


@dataclass
class Agreement:
    """How far detlit's sliced detections are from SAHI's on the same images."""

    ours: int = 0
    theirs: int = 0
    box: float = 0.0  # largest box coordinate difference, px
    score: float = 0.0
    unmatched_images: int = 0  # images whose detection counts or labels differ

    def add(self, ours: Found, theirs: Found) -> None:
        """Pair one image's detections, class by class, so that the largest box difference is smallest
        (the order by score alone may differ where two scores differ by less than the sides do)."""
        from scipy.optimize import linear_sum_assignment

        self.ours += len(ours)
        self.theirs += len(theirs)
        if sorted(o[0] for o in ours) != sorted(t[0] for t in theirs):
            self.unmatched_images += 1
            return
        for label in {o[0] for o in ours}:
            mine = [o for o in ours if o[0] == label]
            their = [t for t in theirs if t[0] == label]
            boxes, their_boxes = np.array([o[2] for o in mine]), np.array([t[2] for t in their])
            apart = np.abs(boxes[:, None, :] - their_boxes[None, :, :]).max(axis=2)
            rows, columns = linear_sum_assignment(apart)
            self.box = max(self.box, float(apart[rows, columns].max()))
            scores = np.array([o[1] for o in mine])[rows] - np.array([t[1] for t in their])[columns]
            self.score = max(self.score, float(np.abs(scores).max()))

    @property
    def share_of_tolerance(self) -> float:
        """The larger of the box and score differences over their tolerance (<= 1: equal); inf when
        the detections cannot be paired."""
        if self.unmatched_images:
            return float("inf")
        return max(self.box / BOX_TOLERANCE, self.score / SCORE_TOLERANCE)

    def describe(self) -> str:
        if self.unmatched_images:
            return f"{self.ours} detections against {self.theirs}: {self.unmatched_images} image(s) differ"
        return f"{self.ours} detections, boxes within {self.box:.2g} px, scores within {self.score:.2g}"


@dataclass
class Race:
    """detlit's sliced Predictor against SAHI's ``get_sliced_prediction``, turn by turn."""

    rates: dict[str, list[float]]
    agreement: Agreement
    model_seconds: float  # detlit: inside the runtime
    resize_seconds: float  # detlit: the tiles' resize (Predictor.preprocess)
    total_seconds: float  # detlit: the whole predict
    passes: int
    tiles: int
    sahi_model_seconds: float  # SAHI: inside DefaultPredictor (resize and forward pass, one tile at a time)
    sahi_seconds: float  # SAHI: the whole get_sliced_prediction


def race(checkpoint: Path, images: list[np.ndarray], slicing: Slicing, ctx: Context, sizes: Sizes) -> Race:
    ours = Predictor.from_checkpoint(
        checkpoint, device="cpu", batch_size=BATCH, all_detections=True, resize="detectron2", slicing=slicing
    )
    timed = Stopwatch(ours.runtime)
    ours.runtime = timed  # type: ignore[assignment]  # called for every batch of tiles
    resize = Stopwatch(ours.preprocess)
    ours.preprocess = resize  # type: ignore[method-assign]
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    theirs = sahi_model(module, ctx.tmp / NAME, ours.model_threshold)
    inner = Stopwatch(theirs.model)
    theirs.model = inner  # SAHI's model calls its DefaultPredictor once per tile

    ours.predict(images[:1])  # warm-up, not timed
    sahi_predict(theirs, images[0], slicing)
    for watch in (timed, resize, inner):
        watch.reset()

    rates: dict[str, list[float]] = {"detlit": [], "SAHI": []}
    found: dict[str, list[Found]] = {}
    total = {"detlit": 0.0, "SAHI": 0.0}
    for side in abba(ctx.budget.rounds(sizes.turns), list(rates)):
        collected()
        start = time.perf_counter()
        if side == "detlit":
            predictions = ours.predict(images)
        else:
            results = [sahi_predict(theirs, image, slicing) for image in images]
        seconds = time.perf_counter() - start
        rates[side].append(len(images) / seconds)
        total[side] += seconds
        if side not in found:
            found[side] = (
                [detlit_found(p) for p in predictions] if side == "detlit" else [sahi_found(r) for r in results]
            )
    agreement = Agreement()
    for mine, their in zip(found["detlit"], found["SAHI"], strict=True):
        agreement.add(mine, their)
    tiles = sum(len(slicing.windows(*image.shape[:2])) for image in images)
    return Race(
        rates,
        agreement,
        timed.seconds,
        resize.seconds,
        total["detlit"],
        timed.calls,
        tiles,
        inner.seconds,
        total["SAHI"],
    )


def round_ratio(rates: dict[str, list[float]]) -> float:
    """The median over rounds of detlit's rate over SAHI's in the same round."""
    return median([a / b for a, b in zip(rates["detlit"], rates["SAHI"], strict=False)])


# --- the benchmark -----------------------------------------------------------------------------------


def bench_small_objects(ctx: Context) -> Result:
    quick = ctx.scale.tiny_model
    sizes = QUICK if quick else FULL
    folder = ctx.tmp / NAME
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sample, tiles, tiled = write_data(folder, sizes)
    data_seconds = time.perf_counter() - start
    checkpoint, train_seconds, facts = train(tiles, sizes, quick, folder)

    dataset = load_checked(sample / "val.json", sample / "val", "--images", files=True)
    slicing = Slicing(size=sizes.tile, overlap=OVERLAP, merge="nms")
    greedy = Slicing(size=sizes.tile, overlap=OVERLAP, merge="greedynmm")

    def predictor(with_slicing: Slicing | None) -> Predictor:
        return Predictor.from_checkpoint(
            checkpoint, device="cpu", batch_size=BATCH, all_detections=True, slicing=with_slicing
        )

    measured: dict[str, Accuracy] = {}
    for name, how in (("full image", None), ("sliced", slicing), ("sliced, greedy merging", greedy)):
        measured[name] = accuracy(dataset, predictor(how))
    full, sliced = measured["full image"], measured["sliced"]
    records = list(dataset.images)[: sizes.race_images]
    images = [load_image(sample / "val" / record.file_name) for record in records]
    raced = race(checkpoint, images, slicing, ctx, sizes)

    gain = sliced.evaluation.coco["map_small"] - full.evaluation.coco["map_small"]
    overhead = raced.total_seconds - raced.model_seconds
    share = overhead / raced.total_seconds
    equal = raced.agreement.share_of_tolerance <= 1.0
    rows = [
        Row(
            NAME,
            "AP_small, sliced - full image",
            f"{sliced.evaluation.coco['map_small']:.3f} sliced ({sliced.rate:.2f} img/s)",
            f"{full.evaluation.coco['map_small']:.3f} full image ({full.rate:.2f} img/s)",
            gain,
            Target(">=", AP_GAIN, ""),
        ),
        Row(
            NAME,
            "sliced images/s" + (", equal detections" if equal else ", detections NOT equal"),
            f"{median(raced.rates['detlit']):.2f} img/s (Predictor, resize detectron2)",
            f"{median(raced.rates['SAHI']):.2f} img/s (SAHI get_sliced_prediction)",
            round_ratio(raced.rates),
            Target(">=", SPEEDUP),
        ),
        Row(
            NAME,
            "sliced detections against SAHI's, difference / tolerance",
            raced.agreement.describe(),
            f"{raced.agreement.theirs} detections; tolerance {BOX_TOLERANCE} px, {SCORE_TOLERANCE:g}",
            raced.agreement.share_of_tolerance,
            Target("<=", 1.0),
        ),
        Row(
            NAME,
            "slicing overhead, share of sliced time",
            f"{overhead:.2f} s of {raced.total_seconds:.2f} s",
            f"{raced.model_seconds:.2f} s in the model ({raced.passes} forward passes)",
            share,
            Target("<=", OVERHEAD),
        ),
    ]
    layout = sizes.layout
    details = [
        f"- data: the synthetic sample, {layout.describe()}, seed 0; the train images cut into tiles of "
        f"{sizes.tile} px (overlap {OVERLAP:g}, {EMPTY_RATIO:.0%} of the empty tiles kept) by "
        f"`detlit.data.tiling.tile`: {tiled.line()}; {len(dataset.images)} val images with "
        f"{dataset.num_annotations} objects, untiled; written and "
        f"tiled in {data_seconds:.1f} s",
        f"- model: `{CPU_CONFIG.name}`'s"
        + (" with the unit tests' toy sizes" if quick else "")
        + f", from scratch, {sizes.steps} steps of {facts['batch']} tiles without augmentation, {facts['optimizer']}, "
        f"cosine after "
        f"{facts['warmup']} warm-up steps, shortest edge {facts['sizes']['min_size_train']} "
        f"(tiles grow {facts['sizes']['min_size_test'] / sizes.tile:.2g}x): {train_seconds:.0f} s",
        f"- accuracy as `python -m detlit.evaluate` measures it (every detection down to the model's floor, "
        f"COCO AP; image files read), sliced into tiles of {slicing.size} px, overlap {slicing.overlap:g}, with the "
        f"whole image, merged by {slicing.merge.upper()} ({slicing.match.upper()} >= {slicing.match_threshold:g}; "
        "greedy merging: the same otherwise):",
        *(f"    - {name}: {value.describe()}" for name, value in measured.items()),
        f"- against SAHI: the first {len(images)} of the {len(dataset.images)} val images, decoded once "
        f"({raced.tiles} tiles, and the whole image each), "
        f"{sizes.turns} planned turn(s) per side in ABBA order after a warm-up image; detlit's Predictor (batches of "
        f"{BATCH} tiles, detectron2's resize) "
        "against SAHI's `get_sliced_prediction` with the same checkpoint in `Detectron2DetectionModel` "
        "(`DefaultPredictor`, one tile at a time), the same settings, `force_postprocess_type=True`; img/s: "
        f"detlit {listed(raced.rates['detlit'])}; SAHI {listed(raced.rates['SAHI'])}",
        f"- where the time goes, all turns: detlit {raced.total_seconds:.2f} s, of which {raced.model_seconds:.2f} s "
        f"in the model ({raced.passes} forward passes), {raced.resize_seconds:.2f} s resizing tiles, "
        f"{overhead - raced.resize_seconds:.2f} s cutting, scaling back and merging; SAHI {raced.sahi_seconds:.2f} s, "
        f"of which {raced.sahi_model_seconds:.2f} s in `DefaultPredictor` (resize and forward pass, one tile at a "
        f"time). The forward passes bound the ratio: at SAHI's cost per tile, detlit could be at most "
        f"{raced.sahi_seconds / max(raced.sahi_model_seconds, 1e-9):.2f}x as fast; batching makes a tile "
        f"{raced.sahi_model_seconds / max(raced.model_seconds + raced.resize_seconds, 1e-9):.2f}x as cheap here",
        f"- {torch.get_num_threads()} torch thread(s)",
    ]
    return Result(NAME, rows, details)
