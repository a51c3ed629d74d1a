"""How many injected label mistakes ``python -m detlit.audit`` finds: recall and precision at 2N.

    python tools/audit_check.py --work /tmp/audit-check [--images 120] [--folds 2] [--steps 750]

Writes the synthetic sample (:func:`detlit.data.sample.write_sample`), injects mistakes with a
seed (of the objects: a share dropped, a share shifted by half their width or height, a share given
another class; and as many boxes on the background), N in all, each recorded with its kind and
place; splits the images into K folds, trains the tiny model of ``tests/conftest.py`` on each
fold's train side (an in-process Lightning Trainer; real checkpoint files), audits the injected
json with the K fold models, and counts the injected mistakes among the first 2N rows: a row finds
one when it names its image, a kind that fits (dropped: ``missing``, shifted: ``box`` or
``spurious``, other class: ``class``, background box: ``spurious``) and a box overlapping its place
(IoU >= 0.3).
recall@2N = found / N; precision@2N = rows that find one / 2N (at most 0.5: 2N rows, N mistakes).

The clean json (before injection) is audited by the same fold models too: its highest scores,
against the scores of the rows that found injected mistakes, say whether a clean dataset's top
rows rank below real mistakes. Prints the numbers as one json (``--json-out`` writes it too).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The kinds of row that find each injected mistake: a shifted label flagged as a label on nothing is
# found too (half of it lies on background; the crop shows it), though the fix suggested differs.
KIND_OF_ROW = {
    "dropped": ("missing",),
    "shifted": ("box", "spurious"),
    "class": ("class",),
    "background": ("spurious",),
}
FOUND_IOU = 0.3


@dataclass(frozen=True)
class Settings:
    """What the check writes, trains and audits."""

    images: int = 120
    folds: int = 2
    steps: int = 750
    seed: int = 0
    share: float = 0.05  # of the objects, for each of dropped, shifted and other class; as many background boxes
    image_size: tuple[int, int] = (128, 160)
    object_size: tuple[int, int] = (32, 72)
    objects: tuple[int, int] = (1, 3)
    lr: float = 0.001
    batch_size: int = 2
    threads: int = 2


@dataclass(frozen=True)
class Injected:
    kind: str  # dropped, shifted, class, background
    image_id: int
    box: tuple[float, float, float, float]  # XYWH: where the mistake is (the dropped box, the label as injected)
    annotation_id: int | None


@dataclass
class Result:
    settings: dict[str, Any]
    injected: dict[str, int]
    n: int
    found: dict[str, int] = field(default_factory=dict)
    recall_at_2n: float = 0.0
    precision_at_2n: float = 0.0
    recall_at_n: float = 0.0
    found_scores: list[float] = field(default_factory=list)
    clean_top_scores: list[float] = field(default_factory=list)
    rows: int = 0
    clean_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # user + system time of this process: what other jobs on the machine change little
    cpu: str = ""


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    from detlit.evaluation.matching import box_iou

    return float(box_iou(np.asarray([a], float), np.asarray([b], float), np.zeros(1, bool))[0])


def _inside(box: list[float], width: int, height: int) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and x + w <= width and y + h <= height


def inject(raw: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], list[Injected]]:
    """A copy of a COCO dict with mistakes injected (see the module docstring), and the mistakes."""
    rng = np.random.default_rng(settings.seed + 1000)
    out = json.loads(json.dumps(raw))
    images = {image["id"]: image for image in out["images"]}
    annotations = out["annotations"]
    count = max(1, round(settings.share * len(annotations)))
    order = [int(i) for i in rng.permutation(len(annotations))]
    dropped, shifted, changed = order[:count], order[count : 2 * count], order[2 * count : 3 * count]
    category_ids = [c["id"] for c in out["categories"]]
    injected: list[Injected] = []
    for index in changed:
        annotation = annotations[index]
        others = [c for c in category_ids if c != annotation["category_id"]]
        annotation["category_id"] = int(rng.choice(others))
        injected.append(Injected("class", annotation["image_id"], tuple(annotation["bbox"]), annotation["id"]))
    for index in shifted:
        annotation = annotations[index]
        image = images[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        moves = [[x + w / 2, y, w, h], [x - w / 2, y, w, h], [x, y + h / 2, w, h], [x, y - h / 2, w, h]]
        inside = [m for m in moves if _inside(m, image["width"], image["height"])]
        if not inside:
            continue
        moved = [round(v, 2) for v in inside[int(rng.integers(len(inside)))]]
        annotation["bbox"] = moved
        annotation["area"] = moved[2] * moved[3]
        annotation.pop("segmentation", None)
        injected.append(Injected("shifted", annotation["image_id"], tuple(moved), annotation["id"]))
    for index in dropped:
        annotation = annotations[index]
        injected.append(Injected("dropped", annotation["image_id"], tuple(annotation["bbox"]), None))
    out["annotations"] = [a for i, a in enumerate(annotations) if i not in set(dropped)]
    boxes: dict[int, list[tuple[float, ...]]] = {}
    for annotation in raw["annotations"]:
        boxes.setdefault(annotation["image_id"], []).append(tuple(annotation["bbox"]))
    next_id = max(a["id"] for a in raw["annotations"]) + 1
    low, high = settings.object_size
    placed = 0
    for _ in range(count * 200):
        if placed == count:
            break
        image = out["images"][int(rng.integers(len(out["images"])))]
        w, h = (float(v) for v in rng.integers(low, high + 1, size=2))
        if w >= image["width"] or h >= image["height"]:
            continue
        x, y = float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h))
        box = (round(x, 2), round(y, 2), w, h)
        if any(_iou(box, other) > 0 for other in boxes.get(image["id"], [])):
            continue
        boxes.setdefault(image["id"], []).append(box)
        category = int(rng.choice(category_ids))
        out["annotations"].append(
            {"id": next_id, "image_id": image["id"], "category_id": category, "bbox": list(box), "area": w * h}
            | {"iscrowd": 0}
        )
        injected.append(Injected("background", image["id"], box, next_id))
        next_id += 1
        placed += 1
    return out, injected


def make_folds(json_path: Path, images: Path, out: Path, folds: int, seed: int) -> list[tuple[Path, Path]]:
    """K (train.json, val.json) pairs: ``python -m detlit.split --folds K``'s, where it has folds, else
    seeded folds of the images made here (every image in exactly one val.json)."""
    from detlit.data.split import split

    if "folds" in inspect.signature(split).parameters:
        split(jsons=[json_path], images=[images], out=out, folds=folds, seed=seed, quiet=True, overwrite=True)  # type: ignore[call-arg]
    else:
        raw = json.loads(json_path.read_text())
        order = np.random.default_rng(seed).permutation(len(raw["images"]))
        for number in range(folds):
            val_ids = {raw["images"][i]["id"] for i in order[number::folds]}
            for name, inside in (("train", False), ("val", True)):
                part = {**raw, "images": [im for im in raw["images"] if (im["id"] in val_ids) == inside]}
                part["annotations"] = [a for a in raw["annotations"] if (a["image_id"] in val_ids) == inside]
                (out / f"fold_{number + 1}").mkdir(parents=True, exist_ok=True)
                (out / f"fold_{number + 1}" / f"{name}.json").write_text(json.dumps(part))
    return [(out / f"fold_{k}" / "train.json", out / f"fold_{k}" / "val.json") for k in range(1, folds + 1)]


def train(train_json: Path, val_json: Path, images: Path, ckpt: Path, settings: Settings) -> None:
    """The tiny model of tests/conftest.py trained on one fold's train side; its checkpoint written."""
    import torch

    from detlit.data.datamodule import CocoDataModule
    from tests.conftest import TINY_SIZES, quiet_trainer, tiny_module

    torch.manual_seed(settings.seed)
    module = tiny_module(
        optimizer=lambda params: torch.optim.AdamW(params, lr=settings.lr), warmup_steps=min(50, settings.steps // 5)
    )
    data = CocoDataModule(
        train_json=str(train_json),
        train_images=str(images),
        val_json=str(val_json),
        val_images=str(images),
        batch_size=settings.batch_size,
        num_workers=0,
        **TINY_SIZES,
    )
    trainer = quiet_trainer(max_steps=settings.steps, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(ckpt)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _row_box(row: dict[str, str]) -> tuple[float, ...]:
    return tuple(float(row[c]) for c in "xywh")


def match(rows: list[dict[str, str]], injected: list[Injected]) -> list[int]:
    """Per row (in rank order), the index of the injected mistake it finds, or -1; each mistake is
    found once, by its highest row."""
    taken: set[int] = set()
    found = []
    for row in rows:
        hit = -1
        for index, mistake in enumerate(injected):
            if (
                index in taken
                or row["kind"] not in KIND_OF_ROW[mistake.kind]
                or int(row["image_id"]) != mistake.image_id
            ):
                continue
            if _iou(_row_box(row), mistake.box) >= FOUND_IOU:
                hit = index
                break
        if hit >= 0:
            taken.add(hit)
        found.append(hit)
    return found


def run_audit(json_path: Path, images: Path, folds: list[tuple[Path, Path]], out: Path) -> list[dict[str, str]]:
    from detlit.auditing.audit import audit

    audit(json_path=json_path, images=images, out=out, folds=folds, device="cpu", overwrite=True, min_score=0.0)
    return read_rows(out / "mistakes.csv")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(work: Path, settings: Settings = Settings()) -> Result:
    """Write, inject, split, train, audit and measure (module docstring), under ``work``."""
    import torch

    from detlit.data.sample import Layout, write_sample

    torch.set_num_threads(settings.threads)
    seconds: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    sample = work / "sample"
    layout = Layout(image_size=settings.image_size, object_size=settings.object_size, objects=settings.objects)
    write_sample(sample, train=settings.images, val=1, seed=settings.seed, layout=layout)
    clean_json, images = sample / "train.json", sample / "train"
    raw = json.loads(clean_json.read_text())
    injected_raw, injected = inject(raw, settings)
    injected_json = work / "injected.json"
    injected_json.write_text(json.dumps(injected_raw))
    folds = make_folds(injected_json, images, work / "folds", settings.folds, settings.seed)
    seconds["data"] = time.perf_counter() - started
    checkpoints = []
    for number, (train_json, val_json) in enumerate(folds, 1):
        ckpt = work / f"fold_{number}.ckpt"
        if not ckpt.is_file():
            train(train_json, val_json, images, ckpt, settings)
        checkpoints.append((ckpt, val_json))
    seconds["training"] = time.perf_counter() - started - seconds["data"]
    rows = run_audit(injected_json, images, checkpoints, work / "audit")
    seconds["audit"] = time.perf_counter() - started - seconds["data"] - seconds["training"]
    clean_rows = run_audit(clean_json, images, checkpoints, work / "audit-clean")
    n = len(injected)
    top = rows[: 2 * n]
    hits = match(top, injected)
    found = [h for h in hits if h >= 0]
    result = Result(
        settings=asdict(settings),
        injected={kind: sum(m.kind == kind for m in injected) for kind in KIND_OF_ROW},
        n=n,
        found={kind: sum(injected[h].kind == kind for h in found) for kind in KIND_OF_ROW},
        recall_at_2n=len(found) / n,
        precision_at_2n=len(found) / max(1, len(top)),
        recall_at_n=sum(h >= 0 for h in hits[:n]) / n,
        found_scores=[float(row["score"]) for row, h in zip(top, hits, strict=True) if h >= 0],
        clean_top_scores=[float(row["score"]) for row in clean_rows[:n]],
        rows=len(rows),
        clean_rows=len(clean_rows),
        seconds={k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - started}.items()},
        cpu_seconds=round(_cpu_seconds() - cpu_started, 1),
        cpu=f"{cpu_model()}, {settings.threads} threads",
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, folds, models and audits")
    for name, value in asdict(Settings()).items():
        if isinstance(value, tuple):
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, nargs=2, default=value)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--json-out", type=Path, help="write the numbers here too")
    args = parser.parse_args()
    values = {name: getattr(args, name) for name in asdict(Settings())}
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    result = run(args.work, settings)
    text = json.dumps(asdict(result), indent=1)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
