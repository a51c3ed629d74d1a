"""Stage 7, training: DetectionModule, detectron2's GeneralizedRCNN as a LightningModule (fit, validate, test)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, cast

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from detlit.common import ranges
from detlit.common.ranges import MAX_CLASSES, MAX_LOG_IMAGES, MAX_PARAMETERS
from detlit.compat import Boxes, EventStorage, GeneralizedRCNN, Instances, build_model
from detlit.data.coco import LabelMap
from detlit.errors import ConfigError, DetlitError
from detlit.evaluation.evaluation import PROGRESS_BAR, Evaluation, tag
from detlit.evaluation.metric import DetectionMetrics
from detlit.model.config import DEFAULT_CONFIG, build_d2_config, ignores_crowd, uses_frozen_batchnorm
from detlit.model.detections import Detections, postprocess
from detlit.model.heads import split_crowd
from detlit.model.schedule import Schedule, build_scheduler
from detlit.model.weights import load_pretrained, weights_source
from detlit.pictures.views import EvaluationViews

log = logging.getLogger(__name__)

Batch = list[dict[str, Any]]
# Counts summed over a training epoch and logged as train/<name> at its end.
EPOCH_COUNTS = ("boxes_dropped_by_aug", "skipped_images")
NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm)


class NonFiniteLossError(DetlitError):
    """A training loss became NaN or infinite, or the model's outputs did (the model diverged)."""


# A state a dense detector keeps outside its parameters and buffers: RetinaNet's moving average of
# the number of foreground anchors, which divides its losses.
DENSE_DETECTOR_STATE = ("loss_normalizer",)

FROZEN_BN_WARNING = (
    "model.config_name %s keeps its backbone's BatchNorm frozen (MODEL.RESNETS.NORM: FrozenBN), whose fixed "
    "statistics only make sense on pretrained weights, and model.weights is null: set model.weights to pretrained "
    "weights (e.g. detectron2://ImageNetPretrained/MSRA/R-50.pkl), or train from scratch with GroupNorm "
    "(model.overrides MODEL.RESNETS.NORM: GN, and MODEL.FPN.NORM: GN with an FPN, as configs/sample_cpu.yaml does)"
)


@contextmanager
def kept_attributes(model: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """Restore plain attributes of ``model`` (present or not) afterwards: validation must not move
    a training statistic such as RetinaNet's loss normaliser."""
    saved = {name: model.__dict__[name] for name in names if name in model.__dict__}
    try:
        yield
    finally:
        for name in names:
            if name in saved:
                setattr(model, name, saved[name])
            else:
                model.__dict__.pop(name, None)


@contextmanager
def heads_in_training_mode(model: GeneralizedRCNN) -> Iterator[None]:
    """Put the RPN and ROI heads (only) in training mode, and restore their modes afterwards."""
    heads = [model.proposal_generator, model.roi_heads]
    modes = [head.training for head in heads]
    try:
        for head in heads:
            head.train()
        yield
    finally:
        for head, mode in zip(heads, modes, strict=True):
            head.train(mode)


def rng_state() -> dict[str, Any]:
    """Global random states of torch, numpy and Python, in types a weights-only load accepts."""
    name, keys, position, has_gauss, gauss = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def model_size(cfg: Any) -> int:
    """How many numbers (parameters and buffers) detectron2's model of ``cfg`` holds, counted on
    PyTorch's ``meta`` device: the model is built without memory for its tensors (some 50 ms)."""
    meta = cfg.clone()
    meta.defrost()
    meta.MODEL.DEVICE = "meta"  # build_model moves the model to this device at its end
    meta.freeze()
    with torch.device("meta"):
        shapes = build_model(meta)
    return sum(t.numel() for t in (*shapes.parameters(), *shapes.buffers()))


def _build(cfg: Any, config_name: str) -> GeneralizedRCNN:
    """detectron2's model of ``cfg``; a combination detectron2 cannot build, or a model larger than
    :data:`~detlit.common.ranges.MAX_PARAMETERS` (counted before anything is allocated: the config
    may come from a checkpoint someone else wrote), is one sentence."""
    try:
        size = model_size(cfg)
    except (AssertionError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise ConfigError(
            f"model.config_name {config_name} cannot be built with these model.overrides ({type(err).__name__}: "
            f"{str(err).strip() or 'an assertion failed'}); change the overrides that conflict with the architecture"
        ) from err
    if size > MAX_PARAMETERS:
        raise ConfigError(
            f"model.config_name {config_name} with these model.overrides makes a model of {size:,} parameters "
            f"({4 * size / 2**30:,.0f} GiB of float32 weights), more than the {MAX_PARAMETERS:,} detlit builds: an "
            "override makes a layer far too wide or deep (MODEL.ROI_BOX_HEAD.FC_DIM, MODEL.FPN.OUT_CHANNELS, ...); "
            "fix model.overrides"
        )
    model: GeneralizedRCNN = build_model(cfg)
    return model


def check_hparams(hp: Mapping[str, Any]) -> None:
    """Raise one sentence naming the first argument of :class:`DetectionModule` that cannot work.

    The upper bounds (:mod:`detlit.common.ranges`) hold for a checkpoint's hyper-parameters as for
    a config: a crafted checkpoint must not make the model, its class names or every image it
    resizes take more memory than a machine has.
    """
    num_classes = ranges.whole(
        "model.num_classes", hp["num_classes"], 1, MAX_CLASSES, f"use 1 to {MAX_CLASSES} classes"
    )
    for name in ("class_names", "category_ids"):
        given = hp[name]
        if given is None:
            continue
        kind = str if name == "class_names" else int
        if not isinstance(given, (list, tuple)) or not all(
            isinstance(item, kind) and not isinstance(item, bool) for item in given
        ):
            raise ConfigError(
                f"model.{name} is not a list of {kind.__name__}s; leave it to the data (the CLI links it)"
            )
        if len(given) != num_classes:
            raise ConfigError(
                f"model.num_classes={num_classes} but {len(given)} class names/ids were given in model.{name}; give "
                "one name and id per class (the CLI links them from the training json)"
            )
    if hp["category_ids"] is not None and len(set(hp["category_ids"])) != num_classes:
        raise ConfigError(
            f"model.category_ids {list(hp['category_ids'])} holds an id twice; give each class its own id"
        )
    if hp["weights"] is not None and (not isinstance(hp["weights"], str) or not hp["weights"].strip()):
        raise ConfigError(
            f"model.weights is {hp['weights']!r}; give coco, imagenet, a URL, a .pkl/.pth/.ckpt file, or null"
        )
    ranges.optional_whole(
        "model.freeze_at", hp["freeze_at"], 0, 5, "use 0 (nothing frozen) to 5 (the whole backbone), or null"
    )
    ranges.check_image_sizes(
        "model.", hp["min_size_train"], hp["max_size_train"], hp["min_size_test"], hp["max_size_test"]
    )
    for name, known in (("lr_schedule", ("cosine", "multistep", "constant")), ("on_nonfinite_loss", ("stop", "skip"))):
        if hp[name] not in known:
            raise ConfigError(f"model.{name} is {hp[name]!r}; use one of {', '.join(known)}")
    ranges.whole("model.warmup_steps", hp["warmup_steps"], 0, fix="use 0 (no warm-up) or more optimizer steps")
    ranges.real("model.warmup_factor", hp["warmup_factor"], 0.0, 1.0, fix="use a multiplier from 0 to 1, such as 0.001")
    milestones = hp["lr_milestones"]
    if not isinstance(milestones, (list, tuple)):
        raise ConfigError(
            f"model.lr_milestones is {milestones!r}; give a list of fractions of the run, e.g. [0.78, 0.93]"
        )
    for milestone in milestones:
        if not ranges.is_real(milestone) or not 0.0 <= milestone <= 1.0:
            raise ConfigError(f"model.lr_milestones holds {milestone!r}; give fractions of the run from 0 to 1")
    ranges.real("model.lr_gamma", hp["lr_gamma"], 0.0, 1.0, above=True, fix="use a decay factor above 0 and at most 1")
    ranges.optional_whole(
        "model.scale_lr_to_batch",
        hp["scale_lr_to_batch"],
        1,
        fix="use the total batch size the lr is meant for, or null",
    )
    ranges.whole(
        "model.log_images",
        hp["log_images"],
        0,
        MAX_LOG_IMAGES,
        f"use 0 (no drawings) to {MAX_LOG_IMAGES} images",
    )


def detections_of(instances: Instances) -> Detections:
    """The boxes, scores and labels of detectron2 ``Instances``."""
    return Detections(instances.pred_boxes.tensor, instances.scores, instances.pred_classes)


def in_original_pixels(results: Sequence[Instances], batch: Batch) -> list[dict[str, Instances]]:
    """The model's detections (``Instances`` in its input images' pixels) as detectron2's models
    answer at inference: ``{"instances": Instances}`` of each original image's size and pixels
    (its ``height`` and ``width``, else the size the model saw), through the one
    :func:`~detlit.model.detections.postprocess` that every inference path uses too."""
    outputs = []
    for instances, item in zip(results, batch, strict=True):
        input_size = (int(instances.image_size[0]), int(instances.image_size[1]))
        size = (int(item.get("height", input_size[0])), int(item.get("width", input_size[1])))
        boxes, scores, labels = postprocess(detections_of(instances), input_size, size)
        outputs.append({"instances": Instances(size, pred_boxes=Boxes(boxes), scores=scores, pred_classes=labels)})
    return outputs


class DetectionModule(LightningModule):
    """A detectron2 box detector (Faster R-CNN, Cascade R-CNN or RetinaNet) trained by Lightning.

    Batches are lists of detectron2 input dicts (see ``detlit.data.dataset``). Training returns the
    sum of detectron2's losses and logs each of them (``train/...``). Validation and test compute
    the same losses on their batches (one backbone pass serves losses and predictions), turn the
    predictions into detections in original pixels with the one postprocess of every inference
    path (:func:`~detlit.model.detections.postprocess`), and feed them to
    :class:`~detlit.evaluation.metric.DetectionMetrics`, each stage with its own metric object,
    whose :class:`~detlit.evaluation.evaluation.Evaluation` says what is logged (``val/...``,
    ``test/...``); the per-class score thresholds that maximise F1 come from validation only. Each
    step returns its images and detections, from which
    :class:`~detlit.pictures.views.EvaluationViews` (a callback the module declares) draws, and
    that callback shows each evaluation's curves and table. Every argument but the optimizer is
    saved as a hyper-parameter, so ``load_from_checkpoint(path)`` rebuilds the model without
    further arguments.

    Args:
        num_classes: number of object classes (linked from the data by the CLI).
        class_names: class name of each contiguous label (linked from the data).
        category_ids: original COCO category id of each contiguous label (linked from the data).
        config_name: detectron2 model-zoo config the architecture comes from (see
            ``detlit.model.config.MENU``); configs with masks are used as box detectors, others
            that are not box detectors are refused.
        weights: pretrained weights: ``coco`` (the model zoo's COCO-trained checkpoint of
            ``config_name``), ``imagenet`` (the ImageNet backbone ``config_name`` starts from), a
            URL or ``detectron2://`` path (downloaded once into a verified cache), a
            ``.pkl``/``.pth`` file, a detlit ``.ckpt``, or None to train from scratch.
        freeze_at: backbone stages to freeze (0 none, 1 the stem, 2 stem and res2, ...); None
            keeps the model-zoo config's value (2).
        overrides: extra detectron2 config keys, e.g. ``{"MODEL.RESNETS.DEPTH": 18}``.
        min_size_train: shortest-edge sizes in training (linked from the data).
        max_size_train: cap on the longest edge in training (linked from the data).
        min_size_test: shortest-edge size at inference (linked from the data).
        max_size_test: cap on the longest edge at inference (linked from the data).
        optimizer: optimizer class and its arguments (``lr``, ``weight_decay``, ...); norm layers
            and biases are put in a parameter group without weight decay.
        lr_schedule: decay after warm-up: ``cosine``, ``multistep`` or ``constant``.
        warmup_steps: optimizer steps of linear warm-up.
        warmup_factor: learning-rate multiplier at the first warm-up step.
        lr_milestones: fractions of the run where ``multistep`` multiplies the rate by ``lr_gamma``.
        lr_gamma: ``multistep`` decay factor.
        scale_lr_to_batch: when set, the optimizer's ``lr`` is meant for this total batch size and
            is scaled linearly to the effective batch (per device x devices x accumulation).
        on_nonfinite_loss: ``stop`` with a message naming the step, losses and images, or ``skip``
            the batch.
        log_images: validation images drawn with predictions and ground truth into TensorBoard
            after every validation (the same images each time; 0 turns it off), by
            :class:`~detlit.pictures.views.EvaluationViews`.
    """

    def __init__(
        self,
        num_classes: int = 80,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        config_name: str = DEFAULT_CONFIG,
        weights: str | None = None,
        freeze_at: int | None = None,
        overrides: dict[str, Any] | None = None,
        min_size_train: list[int] = [640, 672, 704, 736, 768, 800],  # noqa: B006 (read only)
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Schedule = "cosine",
        warmup_steps: int = 100,
        warmup_factor: float = 0.001,
        lr_milestones: list[float] = [0.78, 0.93],  # noqa: B006 (read only)
        lr_gamma: float = 0.1,
        scale_lr_to_batch: int | None = None,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
        log_images: int = 4,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        # Before anything is built: a checkpoint's hyper-parameters come here too (load_from_checkpoint).
        check_hparams(self.hparams)
        self.optimizer_factory = optimizer
        self.label_map = LabelMap(
            tuple(category_ids if category_ids is not None else range(num_classes)),
            tuple(class_names if class_names is not None else (str(i) for i in range(num_classes))),
        )
        self.cfg = build_d2_config(
            config_name,
            num_classes,
            min_size_train,
            max_size_train,
            min_size_test,
            max_size_test,
            overrides,
            freeze_at=freeze_at,
        )
        self.model: GeneralizedRCNN = _build(self.cfg, config_name)
        self.ignores_crowd = ignores_crowd(self.cfg)
        # One metric object per stage, as Lightning recommends: validation and test never share state.
        self.val_metrics = DetectionMetrics(self.label_map.names)
        self.test_metrics = DetectionMetrics(self.label_map.names)
        self.test_evaluation: Evaluation | None = None
        # Per-class score thresholds that maximise F1 on the last validation; inference defaults to them.
        self.score_thresholds: list[float] | None = None
        self.last_evaluation: Evaluation | None = None
        self._pretrained_loaded = False
        self._epoch_counts = dict.fromkeys(EPOCH_COUNTS, 0)

    def setup(self, stage: str) -> None:
        # Pretrained weights are loaded here, not in __init__: load_from_checkpoint never calls
        # setup, and Lightning restores a resumed checkpoint after it, so neither re-reads them.
        if self.hparams["weights"] and not self._pretrained_loaded:
            source = weights_source(self.hparams["weights"], self.hparams["config_name"], self.cfg)
            load_pretrained(self.model, source)
            self._pretrained_loaded = True
        if stage == "fit" and not self.hparams["weights"] and uses_frozen_batchnorm(self.cfg):
            log.warning(FROZEN_BN_WARNING, self.hparams["config_name"])

    @property
    def is_dense(self) -> bool:
        """Whether the model is a one-stage dense detector (RetinaNet) rather than an R-CNN."""
        return not isinstance(self.model, GeneralizedRCNN)

    def _score_holders(self) -> list[Any]:
        """The parts of the model that hold its test score threshold (``test_score_thresh``): the
        box predictor of an R-CNN (each stage's, in Cascade R-CNN), or the model itself (RetinaNet)."""
        if self.is_dense:
            return [self.model]
        predictor = self.model.roi_heads.box_predictor
        return list(predictor) if isinstance(predictor, nn.ModuleList) else [predictor]

    @property
    def test_score_threshold(self) -> float:
        """The model's own score threshold at inference (detectron2's ``SCORE_THRESH_TEST``)."""
        return float(self._score_holders()[-1].test_score_thresh)

    @contextmanager
    def score_floor(self, floor: float) -> Iterator[None]:
        """Let the model keep detections down to ``floor`` (detectron2 drops those below its test
        threshold, 0.05 in the model zoo, before NMS), whatever the architecture; restore it afterwards."""
        holders = self._score_holders()
        saved = [holder.test_score_thresh for holder in holders]
        try:
            for holder, threshold in zip(holders, saved, strict=True):
                holder.test_score_thresh = min(threshold, floor)
            yield
        finally:
            for holder, threshold in zip(holders, saved, strict=True):
                holder.test_score_thresh = threshold

    def detect(self, images: Sequence[torch.Tensor]) -> list[Instances]:
        """Detections on model inputs (uint8 CHW images in the model's channel order), in the inputs'
        pixels, before detectron2's rescaling to original sizes; for every architecture of the menu."""
        model = self.model
        inputs = [{"image": image} for image in images]
        if not self.is_dense:
            detections: list[Instances] = model.inference(inputs, do_postprocess=False)
            return detections
        batched = model.preprocess_image(inputs)
        features = model.backbone(batched.tensor)
        levels = [features[name] for name in model.head_in_features]
        dense: list[Instances] = model.forward_inference(batched, levels, model.head(levels))
        return dense

    def forward(self, batch: Batch) -> list[dict[str, Any]]:
        """Inference as detectron2's models answer it: a list of ``{"instances": Instances}`` in
        original image pixels, through :meth:`detect` and the one postprocess."""
        return in_original_pixels(self.detect([item["image"] for item in batch]), batch)

    def _targets(self, batch: Batch) -> list[Any]:
        """Ground-truth Instances on the model's device; crowd regions kept only for heads that ignore them."""
        targets = [x["instances"].to(self.device) for x in batch]
        return targets if self.ignores_crowd else split_crowd(targets)[0]

    # --- training ----------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        inputs = [{**x, "instances": t} for x, t in zip(batch, self._targets(batch), strict=True)]
        try:
            with EventStorage(self.global_step):
                losses: dict[str, torch.Tensor] = self.model(inputs)
        except FloatingPointError as err:  # detectron2's RPN: predicted boxes or scores are not finite
            return self._nonfinite({}, batch, diverged=str(err))
        total = torch.stack(list(losses.values())).sum()
        size = len(batch)
        if not torch.isfinite(total):
            return self._nonfinite(losses, batch)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=size)
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        # Sums per epoch, kept here and logged once at the epoch's end: each self.log call costs
        # Lightning about 0.2 ms, 1% of a small model's CPU step for these two alone.
        self._epoch_counts["boxes_dropped_by_aug"] += sum(int(x.get("boxes_dropped", 0)) for x in batch)
        self._epoch_counts["skipped_images"] += sum(len(x.get("skipped_images", ())) for x in batch)
        return total

    def on_train_epoch_start(self) -> None:
        self._epoch_counts = dict.fromkeys(EPOCH_COUNTS, 0)

    def on_train_epoch_end(self) -> None:
        for name, count in self._epoch_counts.items():
            # The sum over every process's batches (sync_dist once per epoch, not per step).
            self.log(f"train/{name}", float(count), on_epoch=True, reduce_fx="sum", sync_dist=True)

    def _nonfinite(self, losses: dict[str, torch.Tensor], batch: Batch, diverged: str = "") -> torch.Tensor | None:
        """Stop with one sentence, or skip the batch, when a loss (or the model, ``diverged``) is not finite."""
        parts = ", ".join(f"{name}={value.item():.4g}" for name, value in losses.items())
        ids = [x.get("image_id") for x in batch]
        if diverged:
            reason = diverged.split(". ")[0].rstrip(".")
            where = f"the model diverged at step {self.global_step} ({reason}) on images {ids}"
        else:
            where = f"non-finite loss at step {self.global_step} ({parts}) on images {ids}"
        if self.hparams["on_nonfinite_loss"] == "stop":
            raise NonFiniteLossError(
                f"{where}; lower the learning rate, clip gradients (trainer.gradient_clip_val), check those "
                "images with python -m detlit.check, or set model.on_nonfinite_loss=skip"
            )
        log.warning("%s: batch skipped", where)
        self.log("train/skipped_nonfinite", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        if self.trainer.world_size > 1:
            # Every process must take part in the gradient all-reduce: a zero loss over all
            # parameters gives zero gradients instead of skipping the step on one rank only.
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)  # type: ignore[return-value]
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After AMP unscaling and before clipping: the norm the clipping threshold is compared to.
        # A pass over every gradient (about 3% of a small model's CPU step), so only on the steps
        # whose values the logger writes (every trainer.log_every_n_steps).
        if not self._logger_writes_this_step():
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads, 2.0), on_step=True, on_epoch=False)

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning writes this training step's ``on_step`` values to the logger.

        Lightning's own rule, from the trainer's public attributes: the values of a training batch
        are written when the count of optimizer steps after it is a multiple of
        ``trainer.log_every_n_steps`` (0: never), and when training is told to stop. Called before
        the optimizer steps, so the step about to be taken is ``global_step + 1``; detlit's one
        optimizer steps once per stepping batch, so this count is the one Lightning's logger
        connector uses (batches that stepped).
        """
        trainer = self.trainer
        # Trainer(log_every_n_steps=...), kept on the trainer by Lightning (undeclared on the class,
        # hence the type note); a rename would fail loudly here, never skip the check silently.
        every = int(trainer.log_every_n_steps)  # type: ignore[attr-defined]
        return bool(every) and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)

    # --- validation ----------------------------------------------------------------------

    def losses_and_predictions(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """detectron2's training losses and its predictions for one batch, from one backbone pass.

        The heads run once in training mode (losses need the ground truth; proposals are sampled
        as in training) and once in inference mode; the model's own train/eval state is left as
        it was.
        """
        model = self.model
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        targets = self._targets(batch)
        try:
            if self.is_dense:
                # One head over the feature levels: its outputs give both the losses and the detections.
                levels = [features[name] for name in model.head_in_features]
                outputs = model.head(levels)
                with kept_attributes(model, DENSE_DETECTOR_STATE), EventStorage(self.global_step):
                    losses = model.forward_training(images, levels, outputs, targets)
                results = model.forward_inference(images, levels, outputs)
            else:
                with heads_in_training_mode(model), EventStorage(self.global_step):
                    proposals, rpn_losses = model.proposal_generator(images, features, targets)
                    _, roi_losses = model.roi_heads(images, features, proposals, targets)
                losses = {**rpn_losses, **roi_losses}
                proposals, _ = model.proposal_generator(images, features, None)
                results, _ = model.roi_heads(images, features, proposals, None)
        except FloatingPointError as err:
            ids = [x.get("image_id") for x in batch]
            reason = str(err).split(". ")[0].rstrip(".")
            raise NonFiniteLossError(
                f"the model diverged: at step {self.global_step} its outputs on images {ids} are not finite "
                f"({reason}); lower the learning rate or clip gradients (trainer.gradient_clip_val), then train again"
            ) from err
        return losses, in_original_pixels(results, batch)

    def _evaluation_step(self, batch: Batch, stage: str, metric: DetectionMetrics) -> dict[str, Any]:
        """Losses and metric inputs of one validation or test batch.

        Returns:
            The step's outputs, which callbacks receive (``on_validation_batch_end``): ``images``,
            the readable input dicts, and ``detections``, their
            :class:`~detlit.model.detections.Detections` in original pixels, as the metric got them.
        """
        readable = [x for x in batch if "skipped" not in x]
        skipped = float(len(batch) - len(readable))
        self.log(f"{stage}/skipped_images", skipped, on_step=False, on_epoch=True, reduce_fx="sum")
        if not readable:
            return {"images": [], "detections": []}
        losses, predictions = self.losses_and_predictions(readable)
        size = len(readable)
        self.log_dict({f"{stage}/{name}": value for name, value in losses.items()}, batch_size=size, sync_dist=True)
        self.log(f"{stage}/loss", torch.stack(list(losses.values())).sum(), batch_size=size, sync_dist=True)
        detections = [detections_of(p["instances"]) for p in predictions]
        metric.update([d.metric_input() for d in detections], [x["target"] for x in readable])
        return {"images": readable, "detections": detections}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._evaluation_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._evaluation_step(batch, "test", self.test_metrics)

    def _log_evaluation(self, stage: str, metric: DetectionMetrics) -> Evaluation:
        """Compute a stage's metric (every process's images) and log its numbers under ``stage/``."""
        evaluation: Evaluation = metric.compute()
        metric.reset()
        logged = evaluation.logged(stage)
        shown = {tag(stage, name) for name in PROGRESS_BAR}
        self.log_dict({k: v for k, v in logged.items() if k not in shown})
        self.log_dict({k: v for k, v in logged.items() if k in shown}, prog_bar=True)
        return evaluation

    def on_validation_epoch_end(self) -> None:
        evaluation = self._log_evaluation("val", self.val_metrics)
        # Thresholds come from validation only: the test set must not tune what it measures.
        self.score_thresholds = evaluation.score_thresholds()
        self.last_evaluation = evaluation

    def on_test_epoch_end(self) -> None:
        self.test_evaluation = self._log_evaluation("test", self.test_metrics)

    def configure_callbacks(self) -> list[Callback]:
        # Drawings, curves and tables belong to the code that shows an evaluation; declared here,
        # so every Trainer shows them, python -m detlit.fit's and a user's own.
        return [EvaluationViews()]

    # --- checkpoints -----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores model, optimizer, scheduler, scaler, callbacks and loop counters;
        # the random state (detectron2's anchor and proposal sampling draws from it) makes a
        # resumed run continue exactly as an uninterrupted one would.
        checkpoint["detlit_rng_state"] = rng_state()
        kept = {name: float(self.model.__dict__[name]) for name in DENSE_DETECTOR_STATE if name in self.model.__dict__}
        if kept:
            checkpoint["detlit_model_state"] = kept
        if self.score_thresholds is not None:
            checkpoint["detlit_score_thresholds"] = list(self.score_thresholds)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, value in checkpoint.get("detlit_model_state", {}).items():
            setattr(self.model, name, float(value))
        if "detlit_score_thresholds" in checkpoint:
            self.score_thresholds = [float(t) for t in checkpoint["detlit_score_thresholds"]]
        if "detlit_rng_state" in checkpoint and self._resuming():
            set_rng_state(checkpoint["detlit_rng_state"])

    def _resuming(self) -> bool:
        """Whether a trainer is restoring this module to train on (not ``load_from_checkpoint``,
        which has no trainer: Lightning's ``trainer`` property raises then)."""
        try:
            return bool(self.trainer.training)
        except RuntimeError:
            return False

    # --- optimisation --------------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into decayed weights and undecayed norm/bias parameters."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for module in self.model.modules():
            is_norm = isinstance(module, NORM_TYPES) or "FrozenBatchNorm" in type(module).__name__
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    (no_decay if is_norm or name == "bias" else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def effective_batch_size(self) -> tuple[int, str]:
        """Images per optimizer step, and how that number comes about."""
        datamodule = getattr(self.trainer, "datamodule", None)
        per_device = int(datamodule.hparams["batch_size"]) if datamodule is not None else 1
        devices, accumulation = self.trainer.world_size, self.trainer.accumulate_grad_batches
        total = per_device * devices * accumulation
        return total, f"{per_device} per device x {devices} devices x {accumulation} accumulation = {total}"

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        effective, described = self.effective_batch_size()
        reference = self.hparams["scale_lr_to_batch"]
        if reference:
            for group in optimizer.param_groups:
                group["lr"] *= effective / reference
            described += f"; lr scaled x{effective / reference:g} from batch {reference}"
        log.info("effective batch = %s; lr %g", described, optimizer.param_groups[0]["lr"])
        hp = self.hparams
        scheduler = build_scheduler(
            optimizer,
            max(1, int(self.trainer.estimated_stepping_batches)),
            hp["warmup_steps"],
            hp["warmup_factor"],
            hp["lr_schedule"],
            hp["lr_milestones"],
            hp["lr_gamma"],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
