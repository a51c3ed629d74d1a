"""The ``runtimes`` benchmark: every CPU runtime of an exported model against the eager checkpoint, and
how close the fastest comes to what the machine can compute.

The model is ``configs/sample_cpu.yaml``'s architecture (the unit tests' toy sizes with ``--quick``)
trained briefly on the synthetic sample, so that its AP means something, then exported with
``detlit.deploy.export.export`` to ONNX and OpenVINO in float32 and in int8 (``--int8
--keep-slower``: an int8 model is measured even where it is not faster; one whose accuracy check
fails is a row saying so), and to ONNX in float16 (``--half``: a model for GPUs, whose row here is
its AP against the float32 ONNX model's, its CPU speed given for the record). Every figure is
measured in this run, on the same decoded images of the sample's val split and the same number of
threads:

* images/s of each runtime through ``Predictor.predict`` at batch 1 and at batch 8, the sides in
  rotating order round after round, and the ratio of each to the checkpoint's eager Predictor at
  the same batch size (median of the per-round ratios);
* AP and AP50 of each on the val split (``detlit.deploy.precision.average_precision``: the
  ``evaluate`` path), as differences to the checkpoint's;
* the utilisation of the fastest float32 runtime at batch 1: the model's floating-point operations
  per image (``torch.utils.flop_counter.FlopCounterMode`` over the eager model's inference on each
  image: convolutions and matrix products, a multiply-add counted as 2) times its images/s, against
  the machine's peak, the best rate of a 2048 x 2048 float32 matrix product in torch on the same
  threads (best of several rounds).
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import importlib
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from bench_deploy import rates, round_ratios
from benchkit import (
    CPU_CONFIG,
    Context,
    Result,
    Row,
    Target,
    listed,
    median,
    portable,
    quiet,
    set_threads,
)
from lightning.pytorch import Trainer, seed_everything

from detlit.data.coco import load_coco
from detlit.data.datamodule import CocoDataModule
from detlit.data.images import load_image
from detlit.deploy.export import export
from detlit.deploy.precision import PrecisionError, average_precision
from detlit.errors import ConfigError
from detlit.inference.exported import metadata_path, weights_path
from detlit.inference.predictor import Predictor
from detlit.model.module import DetectionModule

QUICK_MODEL = {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_BOX_HEAD.FC_DIM": 64, "MODEL.RPN.POST_NMS_TOPK_TEST": 50}
QUICK_SIZES = {"min_size_train": [128], "max_size_train": 192, "min_size_test": 128, "max_size_test": 192}
TRAIN_STEPS = {True: 4, False: 300}  # by --quick
EXPORTS = (("onnx", "fp32"), ("openvino", "fp32"), ("onnx", "int8"), ("openvino", "int8"), ("onnx", "fp16"))
BATCHES = (1, 8)
MATMUL_SIDE = 2048
MATMUL_ROUNDS = 5
TARGETS = {"float32": 2.0, "int8": 3.0}  # the fastest runtime of each precision against eager, batch 1
HALF_AP_DROP = 0.01  # float16 is for GPUs: on the CPU its row holds its AP against the float32 ONNX's


def train(ctx: Context, folder: Path) -> tuple[Path, float]:
    """The CPU config's model trained on the sample's train split (its val split recorded, as a run's
    checkpoint records it, for the int8 export's check); its checkpoint and the training's seconds."""
    config = yaml.safe_load(CPU_CONFIG.read_text())
    model, data = config["model"], config["data"]
    quick = ctx.scale.tiny_model
    sizes = (
        QUICK_SIZES
        if quick
        else {k: data[k] for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")}
    )
    dm = CocoDataModule(
        train_json=str(folder / "train.json"),
        train_images=str(folder / "train"),
        val_json=str(folder / "val.json"),
        val_images=str(folder / "val"),
        batch_size=int(data["batch_size"]),
        num_workers=0,
        **sizes,
    )
    dm.setup("fit")
    module_name, _, class_name = model["optimizer"]["class_path"].rpartition(".")
    optimizer = getattr(importlib.import_module(module_name), class_name)
    steps = TRAIN_STEPS[quick]
    torch.manual_seed(0)
    module = DetectionModule(
        num_classes=len(dm.class_names),
        class_names=list(dm.class_names),
        category_ids=list(dm.category_ids),
        config_name=model["config_name"],
        weights=None,
        freeze_at=model.get("freeze_at"),
        overrides={**(model.get("overrides") or {}), **(QUICK_MODEL if quick else {})},
        optimizer=functools.partial(optimizer, **(model["optimizer"].get("init_args") or {})),
        lr_schedule=model.get("lr_schedule", "cosine"),
        warmup_steps=min(int(model.get("warmup_steps", 100)), steps // 5),
        **sizes,
    )
    seed_everything(0, workers=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - started
    path = ctx.tmp / "runtimes" / "model.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path, seconds


def side_name(kind: str, precision: str) -> str:
    return kind if precision == "fp32" else f"{kind} {precision}"


def precision_of(name: str) -> str:
    """``float32``, ``int8`` or ``fp16``: the precision of a side named by :func:`side_name`."""
    return name.split()[1] if " " in name else "float32"


def exports(checkpoint: Path, ctx: Context) -> tuple[dict[str, Path], dict[str, str]]:
    """Every exported model of ``EXPORTS`` by side name, and for each side not written, why."""
    out = ctx.tmp / "runtimes"
    written: dict[str, Path] = {}
    refused: dict[str, str] = {}
    for kind, precision in EXPORTS:
        name = side_name(kind, precision)
        try:
            written[name] = export(
                checkpoint,
                kind,  # type: ignore[arg-type]
                out=out,
                overwrite=True,
                precision=precision,  # type: ignore[arg-type]
                keep_slower=precision == "int8",
            )
        except (PrecisionError, ConfigError) as err:  # a model refused by its check, or too few images
            refused[name] = portable(str(err), ctx.tmp)
    return written, refused


def flops_per_image(predictor: Predictor, images: list[np.ndarray]) -> float:
    """Mean floating-point operations of the eager model's inference per image (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = predictor.runtime.module  # type: ignore[attr-defined]
    totals = []
    for image in images:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module.detect([predictor.preprocess(image)["image"]])
        totals.append(counter.get_total_flops())
    return float(np.mean(totals))


def peak_flops() -> tuple[float, list[float]]:
    """The machine's float32 rate: the best of :data:`MATMUL_ROUNDS` timed square matrix products."""
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    b = torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    torch.mm(a, b)
    rounds = []
    for _ in range(MATMUL_ROUNDS):
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        rounds.append(4 * 2 * MATMUL_SIDE**3 / (time.perf_counter() - started))
    return max(rounds), rounds


def bench_runtimes(ctx: Context) -> Result:
    """:func:`measure` in a process of its own (spawned): OpenVINO's and onnxruntime's thread pools
    and compiled models live and end there, away from the benchmarks around it (a whole-suite run
    once ended in a segmentation fault after the last benchmark; each part alone did not)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, ctx).result()


def measure(ctx: Context) -> Result:
    quiet()
    set_threads(ctx.args.threads)
    folder = ctx.sample_folder()
    checkpoint, train_seconds = train(ctx, folder)
    written, refused = exports(checkpoint, ctx)
    dataset = load_coco(folder / "val.json", folder / "val")
    files = [folder / "val" / record.file_name for record in dataset.images][: ctx.scale.predict_images]
    images = [load_image(path) for path in files]
    paths: dict[str, Path] = {"eager": checkpoint, **written}
    measured: dict[int, dict[str, list[float]]] = {}
    for batch in BATCHES:
        sides = {
            name: Predictor.load(path, device="cpu", batch_size=batch, all_detections=True)
            for name, path in paths.items()
        }
        measured[batch] = rates(sides, images, ctx)
    accuracy = {
        name: average_precision(Predictor.load(path, device="cpu", batch_size=1, all_detections=True), dataset)
        for name, path in paths.items()
    }
    eager = Predictor.load(checkpoint, device="cpu", batch_size=1, all_detections=True)
    flops = flops_per_image(eager, images)
    peak, peak_rounds = peak_flops()
    metadata = {name: json.loads(metadata_path(path).read_text()) for name, path in written.items()}
    del sides, eager  # the runtimes (OpenVINO's compiled models among them) go before the next benchmark
    gc.collect()

    rows = []
    for name in written:
        rate1, rate8 = median(measured[1][name]), median(measured[8][name])
        ap = accuracy[name]["ap"] - accuracy["eager"]["ap"]
        ap50 = accuracy[name]["ap50"] - accuracy["eager"]["ap50"]
        files = [written[name], *([weights_path(written[name])] if metadata[name]["format"] == "openvino" else [])]
        size = sum(path.stat().st_size for path in files)  # an ONNX model beside OpenVINO's .bin is one file
        if precision_of(name) == "fp16" and "onnx" in accuracy:
            reference = accuracy["onnx"]
            rows.append(
                Row(
                    "runtimes",
                    f"{name} AP against onnx float32 (float16 is for GPUs: its CPU speed for the record)",
                    f"AP {accuracy[name]['ap']:.4f}, AP50 {accuracy[name]['ap50']:.4f}; {rate1:.2f} img/s on the CPU "
                    f"({round_ratios(measured[1], name, 'eager'):.2f}x eager, "
                    f"{round_ratios(measured[1], name, 'onnx'):.2f}x onnx); {size / 2**20:.1f} MiB",
                    f"AP {reference['ap']:.4f}, AP50 {reference['ap50']:.4f} (onnx float32)",
                    min(accuracy[name][key] - reference[key] for key in ("ap", "ap50")),
                    Target(">=", -HALF_AP_DROP, unit=""),
                )
            )
            continue
        rows.append(
            Row(
                "runtimes",
                f"{name} images/s, batch 1 (and 8)",
                f"{rate1:.2f} img/s (batch 8: {rate8:.2f}, {round_ratios(measured[8], name, 'eager'):.2f}x); "
                f"AP {ap:+.4f}, AP50 {ap50:+.4f}; {size / 2**20:.1f} MiB",
                f"{median(measured[1]['eager']):.2f} img/s (checkpoint, eager; batch 8: "
                f"{median(measured[8]['eager']):.2f})",
                round_ratios(measured[1], name, "eager"),
                Target(">=", TARGETS[precision_of(name)]),
            )
        )
    for precision in ("float32", "int8"):
        chosen = [name for name in written if precision_of(name) == precision]
        if not chosen:
            continue
        fastest = max(chosen, key=lambda name: median(measured[1][name]))
        rows.append(
            Row(
                "runtimes",
                f"fastest {precision} runtime, batch 1",
                f"{fastest}: {median(measured[1][fastest]):.2f} img/s, AP "
                f"{accuracy[fastest]['ap'] - accuracy['eager']['ap']:+.4f}",
                f"{median(measured[1]['eager']):.2f} img/s (checkpoint, eager)",
                round_ratios(measured[1], fastest, "eager"),
                Target(">=", TARGETS[precision]),
            )
        )
    fp32 = [name for name in written if precision_of(name) == "float32"]
    fastest = max(fp32, key=lambda name: median(measured[1][name])) if fp32 else "eager"
    achieved = flops * median(measured[1][fastest])
    rows.append(
        Row(
            "runtimes",
            "utilisation: model FLOP/s of the fastest float32 runtime / float32 matmul peak",
            f"{achieved / 1e9:.1f} GFLOP/s ({fastest}: {flops / 1e9:.2f} GFLOP per image x "
            f"{median(measured[1][fastest]):.2f} img/s)",
            f"{peak / 1e9:.1f} GFLOP/s ({MATMUL_SIDE}x{MATMUL_SIDE} float32 matmul, best of {MATMUL_ROUNDS})",
            achieved / peak,
            Target(">=", 0.25, unit=""),
        )
    )
    details = [
        f"- model: `{CPU_CONFIG.name}`'s architecture"
        + (" with the unit tests' toy sizes" if ctx.scale.tiny_model else "")
        + f", trained {TRAIN_STEPS[ctx.scale.tiny_model]} steps on the synthetic sample ({train_seconds:.0f} s); "
        f"{len(images)} val images decoded once, {torch.get_num_threads()} threads on every side",
        "- images/s per round, batch 1: " + "; ".join(f"{side} {listed(v)}" for side, v in measured[1].items()),
        "- images/s per round, batch 8: " + "; ".join(f"{side} {listed(v)}" for side, v in measured[8].items()),
        f"- AP / AP50 on the {len(dataset.images)} val images: "
        + "; ".join(f"{side} {a['ap']:.4f} / {a['ap50']:.4f}" for side, a in accuracy.items()),
        "- int8 and float16 exports' own checks (val images the calibration did not use): "
        + "; ".join(
            [f"{name}: {meta['accuracy']['verdict']}" for name, meta in metadata.items() if meta.get("accuracy")]
            + [f"{name}: not written: {why}" for name, why in refused.items()]
        ),
        f"- utilisation: {flops / 1e9:.3f} GFLOP per image (FlopCounterMode over the eager inference of each "
        f"image: convolutions and matrix products, a multiply-add = 2), times the fastest float32 runtime's "
        f"images/s at batch 1, over the peak of a {MATMUL_SIDE}x{MATMUL_SIDE} float32 `torch.mm` "
        f"(GFLOP/s per round {listed([r / 1e9 for r in peak_rounds], 4)})",
    ]
    return Result("runtimes", rows, details)
