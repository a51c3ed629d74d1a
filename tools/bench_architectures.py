"""The architecture menu on this machine: parameters, seconds per training step, images/s at inference.

``python tools/bench_architectures.py`` builds every architecture of the menu (one config per
architecture: 1x and 3x differ in detectron2's schedule only) for the synthetic sample's 3 classes,
exactly as the model zoo defines it (frozen BatchNorm, 256-channel FPN, 1024-wide box head) plus the
demo's ResNet-18 FPN (``configs/sample_cpu.yaml``), and measures on the same images:

* a training step: Lightning's ``Trainer`` fitting the ``DetectionModule`` on the same batches of 2
  sample images (shortest edge 256, the previous demo's size), SGD with learning rate 0, so the
  weights stay at their initialisation and no model diverges (from scratch, frozen BatchNorm
  would; see docs/architecture.md); the median of the timed steps after warm-up;
* inference: the model in eval mode on the sample's validation images, one at a time (batch 1),
  already decoded and resized (the model's own work only); images per second over all of them.

Both in CPU seconds of the process (``time.process_time``: every thread's, not the time it waited
for a core, so a shared machine changes them little) and in wall-clock seconds.

It prints a markdown table (``--out`` writes it to a file as well). ``--only`` picks architectures;
``--quick`` is a smoke test (R50-FPN, toy sizes).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench import ServedBatches, prepared_batches, step_seconds  # noqa: E402
from benchkit import REPO, machine, quiet, set_threads, usable_cores  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from detlit.data.sample import write_sample  # noqa: E402
from detlit.model.config import ARCHITECTURES as MENU_ARCHITECTURES  # noqa: E402
from detlit.model.config import flatten_overrides  # noqa: E402
from detlit.model.module import DetectionModule  # noqa: E402

DEMO = "R18-FPN (demo)"
ARCHITECTURES = {**MENU_ARCHITECTURES, DEMO: "configs/sample_cpu.yaml"}
SIZES = {"min_size_train": [256], "max_size_train": 384, "min_size_test": 256, "max_size_test": 384}
QUICK_SIZES = {"min_size_train": [128], "max_size_train": 192, "min_size_test": 128, "max_size_test": 192}
BATCH = 2


class Clock(Callback):
    """Wall and CPU time (this process, all its threads) at the end of every training batch."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


def build(name: str, labels: Any, sizes: dict[str, Any]) -> DetectionModule:
    config_name, overrides = ARCHITECTURES[name], {}
    if config_name.startswith("configs/"):
        model = yaml.safe_load((REPO / config_name).read_text())["model"]
        config_name, overrides = model["config_name"], flatten_overrides(model.get("overrides") or {})
    torch.manual_seed(0)
    return DetectionModule(
        num_classes=labels.num_classes,
        class_names=list(labels.names),
        category_ids=list(labels.category_ids),
        config_name=config_name,
        overrides=overrides,
        freeze_at=0,
        optimizer=functools.partial(torch.optim.SGD, lr=0.0, momentum=0.9),
        warmup_steps=0,
        log_images=0,
        **sizes,
    )


def measure(name: str, folder: Path, sizes: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    dm = ServedBatches(
        train_json=str(folder / "train.json"),
        train_images=str(folder / "train"),
        val_json=str(folder / "val.json"),
        val_images=str(folder / "val"),
        batch_size=BATCH,
        num_workers=0,
        **sizes,
    )
    dm.served = prepared_batches(dm, warmup + steps)
    module = build(name, dm.label_map, sizes)
    clock = Clock()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    step = statistics.median(step_seconds(clock.wall, warmup))
    step_cpu = statistics.median(step_seconds(clock.cpu, warmup))

    dm.setup("validate")
    items = [dm.datasets["val"][i] for i in range(len(dm.datasets["val"]))]
    module.eval()
    with torch.no_grad():
        for item in items[:2]:
            module([item])
        begun, begun_cpu = time.perf_counter(), time.process_time()
        for item in items:
            module([item])
        rate = len(items) / (time.perf_counter() - begun)
        rate_cpu = len(items) / (time.process_time() - begun_cpu)
    return {
        "name": name,
        "config": ARCHITECTURES[name],
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "step": step,
        "step_cpu": step_cpu,
        "rate": rate,
        "rate_cpu": rate_cpu,
    }


def markdown(rows: Sequence[dict[str, Any]], args: argparse.Namespace, images: int) -> str:
    cpu = machine()["cpu"]
    size = f"{args.size} (the previous demo's size)" if args.size == 256 else str(args.size)
    lines = [
        f"Measured on {cpu} ({usable_cores()} cores, {args.threads} torch threads) with "
        f"`python tools/bench_architectures.py`: training steps of {BATCH} images, inference on {images} "
        f"images one at a time, shortest edge {size}. CPU seconds are the process's own "
        "(all its threads), so other jobs on the machine change them little; wall-clock figures in brackets.",
        "",
        "| architecture | config | parameters | CPU s / training step (wall) "
        "| images per CPU s at inference (per wall s) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | `{row['config']}` | {row['parameters'] / 1e6:.1f} M | {row['step_cpu']:.2f} "
            f"({row['step']:.2f}) | {row['rate_cpu']:.2f} ({row['rate']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", help=f"architectures, comma-separated ({', '.join(ARCHITECTURES)})")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--quick", action="store_true", help="R50-FPN at toy sizes: a smoke test")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch threads")
    parser.add_argument(
        "--size", type=int, default=256, help="shortest edge of the images (default 256; 512 and 800 are real sizes)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(ARCHITECTURES)
    if args.quick and not args.only:
        names = ["R50-FPN"]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture {', '.join(unknown)}; choose from {', '.join(ARCHITECTURES)}")
    quiet()
    set_threads(args.threads)
    sizes, warmup, steps, images = (QUICK_SIZES, 1, 1, 2) if args.quick else (SIZES, 2, 5, 16)
    if not args.quick and args.size != 256:
        # the sample's 256-pixel images resized to SIZE (the model's work is that of SIZE-pixel photos)
        sizes = {"min_size_train": [args.size], "max_size_train": args.size * 5 // 3, "min_size_test": args.size}
        sizes["max_size_test"] = args.size * 5 // 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="detlit-arch-") as tmp:
        folder = Path(tmp)
        write_sample(folder, train=BATCH * (warmup + steps) * 2, val=images, seed=0)
        for name in names:
            rows.append(measure(name, folder, sizes, warmup, steps))
            row = rows[-1]
            print(
                f"{name}: {row['step_cpu']:.2f} CPU s/step, {row['rate_cpu']:.2f} img/CPU s",
                file=sys.stderr,
                flush=True,
            )
    table = markdown(rows, args, images)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
