"""The ``scale`` benchmark: detlit's data path at COCO train2017 size, against pycocotools and plain Python lists.

It writes its own data first (:func:`write_coco_like`, seeded, in the run's temporary folder) and
then measures, each side in a fresh process of its own where memory is measured:

* load + check: ``load_checked(json, images, files=False)`` (what a run does before training, less
  the header reads) against pycocotools' ``COCO(json)``: seconds, peak RSS and the RSS the loaded
  dataset keeps;
* loader workers: the private memory (USS) of each of 4 ``DataLoader`` workers after a pass over
  every image record, detlit's columns against a plain Python list of the same records;
* the data module: seconds and memory of ``CocoDataModule`` at this size (what each DDP rank pays),
  with image headers read the first time and from the header cache;
* the metric at scale: ``DetectionMetrics`` over 5,000 images x 100 detections on 2 gloo processes:
  state memory, time, and the collectives of its one synchronisation.

:func:`write_coco_like` writes ``instances.json`` (118,287 images and about 826k annotations with
polygon outlines by default: the size and shape of COCO's ``instances_train2017.json``) and an image
folder in which every image is a symbolic link to one of three real JPEG files of COCO's common
sizes (640 x 480, 480 x 640, 640 x 427), so image headers read as they would. The json is clean:
every box lies inside its image, so a data module can be built on it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from benchkit import Context, Result

REPO = Path(__file__).resolve().parents[1]

TRAIN2017_IMAGES = 118_287
OBJECTS_PER_IMAGE = 6.98  # 825,639 / 118,287 in the measurement; COCO's own is 7.3
JPEG_SIZES = ((640, 480), (480, 640), (640, 427))  # (width, height), COCO's most common
CROWD_FRACTION = 0.009  # COCO train2017: 7,418 of 860,001 annotations are crowd regions
POLYGON_POOL = 4096
CHUNK = 20_000  # annotations per written block


@dataclass(frozen=True)
class CocoLike:
    """What :func:`write_coco_like` wrote."""

    json_path: Path
    image_root: Path
    images: int
    annotations: int
    bytes: int


def _jpegs(folder: Path, rng: np.random.Generator) -> list[Path]:
    """Three real JPEG files of COCO's common sizes (smooth noise, quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for width, height in JPEG_SIZES:
        path = folder / f"source_{width}x{height}.jpg"
        if not path.is_file():
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def _polygons(rng: np.random.Generator) -> list[str]:
    """JSON text of polygon outlines as COCO writes them (two decimals), reused by many objects."""
    pool = []
    for _ in range(POLYGON_POOL):
        points = int(rng.integers(30, 70))
        values = rng.uniform(0, 640, 2 * points)
        pool.append("[[" + ",".join(f"{v:.2f}" for v in values) + "]]")
    return pool


def write_coco_like(folder: Path, images: int = TRAIN2017_IMAGES, seed: int = 0) -> CocoLike:
    """Write ``folder/instances.json`` and ``folder/images/`` (links); an existing json is kept.

    Args:
        folder: where to write.
        images: number of images (the annotations follow at about 7 per image).
        seed: the same seed writes the same json.
    """
    json_path, image_root = folder / "instances.json", folder / "images"
    rng = np.random.default_rng(seed)
    sources = _jpegs(folder / "sources", rng)
    image_root.mkdir(parents=True, exist_ok=True)
    kinds = rng.integers(0, len(JPEG_SIZES), images)
    names = [f"{i:012d}.jpg" for i in range(1, images + 1)]
    for name, kind in zip(names, kinds, strict=True):
        link = image_root / name
        if not link.is_symlink():
            os.symlink(sources[kind], link)
    counts = rng.poisson(OBJECTS_PER_IMAGE, images)
    total = int(counts.sum())
    if json_path.is_file():
        return CocoLike(json_path, image_root, images, total, json_path.stat().st_size)

    sizes = np.asarray(JPEG_SIZES, dtype=np.float64)[kinds]  # (images, 2): width, height
    owner = np.repeat(np.arange(images), counts)
    limits = sizes[owner]
    wh = np.minimum(10 * rng.uniform(0.03, 1, (total, 2)) ** -1.1, limits - 2)  # many small, few large
    xy = rng.uniform(0, 1, (total, 2)) * (limits - wh - 1)  # a pixel of margin: inside after rounding
    boxes = np.round(np.concatenate([xy, wh], axis=1), 2)
    area = np.round(boxes[:, 2] * boxes[:, 3] * rng.uniform(0.5, 0.95, total), 2)
    crowd = rng.random(total) < CROWD_FRACTION
    category_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    labels = np.asarray(category_ids)[rng.integers(0, len(category_ids), total)]
    polygons = _polygons(rng)
    outline = rng.integers(0, POLYGON_POOL, total)

    with json_path.open("w", encoding="utf-8") as out:
        out.write('{"info":{"description":"synthetic, COCO train2017-sized","version":"1.0","year":2017},')
        out.write('"licenses":[{"id":1,"name":"synthetic","url":""}],"images":[')
        out.write(
            ",".join(
                f'{{"license":1,"file_name":"{name}","coco_url":"http://images.example/{name}",'
                f'"height":{JPEG_SIZES[kind][1]},"width":{JPEG_SIZES[kind][0]},'
                f'"date_captured":"2013-11-14 11:18:45","flickr_url":"http://farm.example/{name}","id":{i}}}'
                for i, (name, kind) in enumerate(zip(names, kinds, strict=True), start=1)
            )
        )
        out.write('],"annotations":[')
        for start in range(0, total, CHUNK):
            stop = min(start + CHUNK, total)
            block = []
            for k in range(start, stop):
                x, y, w, h = boxes[k]
                if crowd[k]:
                    height, width = int(limits[k, 1]), int(limits[k, 0])
                    segmentation = f'{{"counts":[{int(x)},{int(w)},{int(y)},{int(h)}],"size":[{height},{width}]}}'
                else:
                    segmentation = polygons[outline[k]]
                block.append(
                    f'{{"segmentation":{segmentation},"area":{area[k]:.2f},"iscrowd":{int(crowd[k])},'
                    f'"image_id":{owner[k] + 1},"bbox":[{x:.2f},{y:.2f},{w:.2f},{h:.2f}],'
                    f'"category_id":{labels[k]},"id":{k + 1}}}'
                )
            out.write(("," if start else "") + ",".join(block))
        out.write('],"categories":[')
        out.write(
            ",".join(f'{{"supercategory":"group{cid // 10}","id":{cid},"name":"class{cid}"}}' for cid in category_ids)
        )
        out.write("]}")
    return CocoLike(json_path, image_root, images, total, json_path.stat().st_size)


# --- measurements, each run in a fresh process where memory is measured -------------------------

RESULT = "SCALE-RESULT "
LOADER_WORKERS = 4
WORKER_TARGET_MIB = 32.0


def vm_status(key: str, pid: str = "self") -> int:
    """A ``/proc/<pid>/status`` figure (``VmRSS``, ``VmHWM``) in bytes; 0 off Linux."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return 0


def uss(pid: int) -> int:
    """Private memory (unique set size) of a process in bytes: its pages no other process shares."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:")):
                total += int(line.split()[1]) * 1024
    return total


def task_load(side: str, json_path: str, images: str) -> dict[str, Any]:
    """One side's load + check: seconds, peak RSS growth, and the RSS the loaded dataset keeps."""
    gc.collect()
    before = vm_status("VmRSS")
    start = time.perf_counter()
    if side == "detlit":
        from detlit.data.checks import load_checked

        dataset: Any = load_checked(json_path, images, files=False)
        count = (len(dataset.images), dataset.num_annotations)
    else:
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            dataset = COCO(json_path)
        count = (len(dataset.imgs), len(dataset.anns))
    seconds = time.perf_counter() - start
    gc.collect()
    return {
        "seconds": seconds,
        "peak": vm_status("VmHWM") - before,
        "kept": vm_status("VmRSS") - before,
        "images": count[0],
        "annotations": count[1],
    }


class RecordPass(Dataset[int]):
    """Item ``i``: image ``i``'s record and its training boxes and labels, as ``DetectionDataset``
    makes them before it reads the image (the image is not read); returns the number of boxes."""

    def __init__(self, records: Sequence[Any], label_map: Any):
        self.records = records
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> int:
        from detlit.data.dataset import _training_boxes

        record = self.records[index]
        _, labels, _ = _training_boxes(record, self.label_map, record.height, record.width)
        return len(labels)


def _total(batch: list[int]) -> int:
    return sum(batch)


def task_workers(side: str, json_path: str, images: str, workers: int) -> dict[str, Any]:
    """USS of each loader worker after its first batch and after a pass over every record."""
    from detlit.data.checks import load_checked

    dataset = load_checked(json_path, images, files=False)
    records: Sequence[Any] = dataset.images if side == "detlit" else list(dataset.images)
    gc.collect()
    parent = vm_status("VmRSS")
    loader = DataLoader(
        RecordPass(records, dataset.label_map()),
        batch_size=256,
        num_workers=workers,
        collate_fn=_total,
        persistent_workers=True,
    )
    iterator = iter(loader)
    boxes = next(iterator)
    pids = [worker.pid for worker in iterator._workers]  # type: ignore[attr-defined]
    first = [uss(pid) for pid in pids]
    start = time.perf_counter()
    boxes += sum(iterator)
    seconds = time.perf_counter() - start
    after = [uss(pid) for pid in pids]
    return {"first": first, "after": after, "parent": parent, "boxes": boxes, "seconds": seconds, "items": len(records)}


def task_datamodule(json_path: str, images: str) -> dict[str, Any]:
    """Seconds and RSS growth of a CocoDataModule (checks with image headers, then its training loader)."""
    from detlit.data.datamodule import CocoDataModule

    gc.collect()
    before = vm_status("VmRSS")
    start = time.perf_counter()
    dm = CocoDataModule(json_path, images, num_workers=0, check_files=True)
    built = time.perf_counter()
    dm.setup("fit")
    batches = len(dm.train_dataloader())
    seconds = time.perf_counter() - start
    gc.collect()
    return {
        "seconds": seconds,
        "checked": built - start,
        "batches": batches,
        "kept": vm_status("VmRSS") - before,
        "peak": vm_status("VmHWM") - before,
    }


def _metric_rank(rank: int, world: int, port: int, images: int, detections: int, out: str) -> None:
    import torch.distributed as dist

    from detlit.evaluation.cocoeval import COCO_NAMES
    from detlit.evaluation.metric import STATES, DetectionMetrics
    from tests.reference import synthetic_data

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    preds, targets = synthetic_data(num_images=images, detections_per_image=detections, num_classes=80, seed=0)
    metric = DetectionMetrics([f"class{k}" for k in range(80)])
    metric.warn_on_many_detections = False
    mine = list(range(rank, images, world))
    start = time.perf_counter()
    for at in range(0, len(mine), 8):  # validation steps of 8 images
        batch = mine[at : at + 8]
        metric.update([preds[i] for i in batch], [targets[i] for i in batch])
    updated = time.perf_counter()
    state = sum(t.numel() * t.element_size() for name in STATES for t in getattr(metric, name))
    calls: Counter[str] = Counter()
    waited = [0.0]
    for name in ("all_gather", "all_gather_object", "all_reduce", "broadcast", "barrier", "gather"):
        original = getattr(dist, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            begun = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                waited[0] += time.perf_counter() - begun

        setattr(dist, name, counted)
    start_compute = time.perf_counter()
    evaluation = metric.compute()
    computed = time.perf_counter()
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "update": updated - start,
                "compute": computed - start_compute,
                "state": state,
                "images": len(mine),
                "calls": dict(calls),
                "sync": waited[0],
                "coco": [evaluation.coco[name] for name in COCO_NAMES],
            }
        )
    )
    dist.destroy_process_group()


def task_metric(images: int, detections: int, out: str) -> dict[str, Any]:
    """DetectionMetrics on 2 gloo processes (each half the images), and on one for comparison."""
    import socket

    import torch.multiprocessing as mp

    from detlit.evaluation.cocoeval import COCO_NAMES
    from detlit.evaluation.metric import DetectionMetrics
    from tests.reference import synthetic_data

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Forked: the ranks start without importing torch again.
    mp.start_processes(_metric_rank, args=(2, port, images, detections, out), nprocs=2, start_method="fork")
    ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in (0, 1)]
    preds, targets = synthetic_data(num_images=images, detections_per_image=detections, num_classes=80, seed=0)
    metric = DetectionMetrics([f"class{k}" for k in range(80)])
    metric.warn_on_many_detections = False
    metric.update(preds, targets)
    start = time.perf_counter()
    evaluation = metric.compute()
    single = time.perf_counter() - start
    coco = [evaluation.coco[name] for name in COCO_NAMES]
    difference = max(abs(a - b) for rank in ranks for a, b in zip(rank["coco"], coco, strict=True) if a == a)
    return {"ranks": ranks, "single": single, "difference": difference}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "load": task_load,
    "workers": task_workers,
    "datamodule": task_datamodule,
    "metric": task_metric,
}


def isolated(task: str, *args: Any, env: dict[str, str] | None = None, fresh: bool = True) -> dict[str, Any]:
    """``TASKS[task](*args)`` in a fresh process (``fresh``), or in this one."""
    if not fresh:
        with _environment(env or {}):
            return TASKS[task](*args)
    command = [sys.executable, str(Path(__file__).resolve()), task, json.dumps(list(args))]
    process = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"scale task {task} failed (exit {process.returncode}): {process.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(RESULT) :]))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the benchmark -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    images: int
    metric_images: int
    turns: int
    fresh: bool  # each side in a fresh process (memory figures); --quick runs in this one


FULL_SIZES = Sizes(images=TRAIN2017_IMAGES, metric_images=5000, turns=2, fresh=True)
QUICK_SIZES = Sizes(images=2500, metric_images=100, turns=1, fresh=False)


def calls(rank: dict[str, Any]) -> str:
    """The collectives a rank's ``compute`` made, e.g. ``6 all_gather, 3 barrier``."""
    return ", ".join(f"{count} {name}" for name, count in sorted(rank["calls"].items())) or "none"


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB" if abs(value) >= 2**20 else f"{value / 2**20:.2f} MiB"


def bench_scale(ctx: Context) -> Result:
    from benchkit import Result, Row, Target, abba, collected, listed, median

    sizes = QUICK_SIZES if ctx.args.quick else FULL_SIZES
    started = time.perf_counter()
    data = write_coco_like(ctx.tmp / "scale", sizes.images)
    written = time.perf_counter() - started
    json_path, images = str(data.json_path), str(data.image_root)

    # load + check against pycocotools, in turns
    loads: dict[str, list[dict[str, Any]]] = {"detlit": [], "pycocotools": []}
    for side in abba(ctx.budget.rounds(sizes.turns, part=0.6), list(loads)):
        collected()
        loads[side].append(isolated("load", side, json_path, images, fresh=sizes.fresh))
    seconds = {side: [run["seconds"] for run in runs] for side, runs in loads.items()}
    kept = {side: median([run["kept"] for run in runs]) for side, runs in loads.items()}
    peak = {side: median([run["peak"] for run in runs]) for side, runs in loads.items()}
    ratio = median([a / b for a, b in zip(seconds["detlit"], seconds["pycocotools"], strict=False)])

    # loader workers: columns against a plain list of the same records
    workers = {
        side: isolated("workers", side, json_path, images, LOADER_WORKERS, fresh=sizes.fresh)
        for side in ("detlit", "list")
    }
    growth = {side: [b - a for a, b in zip(w["first"], w["after"], strict=True)] for side, w in workers.items()}

    # the data module, image headers read the first time and then from the cache
    cache = {"DETLIT_CACHE_DIR": str(ctx.tmp / "scale-cache")}
    modules = [isolated("datamodule", json_path, images, env=cache, fresh=sizes.fresh) for _ in ("first", "cached")]

    # the metric over 2 processes
    out = ctx.tmp / "scale-metric"
    out.mkdir(exist_ok=True)
    metric = isolated("metric", sizes.metric_images, 100, str(out), fresh=sizes.fresh)
    ddp = max(rank["compute"] for rank in metric["ranks"])
    sync = max(rank["sync"] for rank in metric["ranks"])

    rows = [
        Row(
            "scale",
            f"load + check, s ({data.images:,} images)",
            f"{median(seconds['detlit']):.1f} s",
            f"{median(seconds['pycocotools']):.1f} s (pycocotools `COCO()`)",
            ratio,
            Target("<=", 1.0),
        ),
        Row(
            "scale",
            "dataset memory (RSS kept)",
            f"{mib(kept['detlit'])} (peak +{mib(peak['detlit'])})",
            f"{mib(kept['pycocotools'])} (peak +{mib(peak['pycocotools'])})",
            kept["detlit"] / kept["pycocotools"],
            Target("<=", 0.25),
        ),
        Row(
            "scale",
            f"USS growth per loader worker, MiB (max of {LOADER_WORKERS})",
            f"+{mib(max(growth['detlit']))}",
            f"+{mib(max(growth['list']))} (plain list of records)",
            max(growth["detlit"]) / 2**20,
            Target("<=", WORKER_TARGET_MIB, ""),
        ),
        Row(
            "scale",
            "data module start-up, headers cached / first read",
            f"{modules[1]['seconds']:.1f} s, {mib(modules[1]['kept'])} per rank",
            f"{modules[0]['seconds']:.1f} s (every header read)",
            modules[1]["seconds"] / modules[0]["seconds"],
            Target("<=", 0.75),
        ),
        Row(
            "scale",
            f"metric under DDP: synchronisation / compute ({sizes.metric_images:,} images x 100)",
            f"{sync:.2f} s ({calls(metric['ranks'][0])})",
            f"{ddp:.2f} s (`compute`, 2 processes)",
            sync / ddp,
            Target("<=", 0.1),
        ),
    ]
    rank0 = metric["ranks"][0]
    where = "each side in a fresh process" if sizes.fresh else "in the benchmark's own process (--quick)"
    details = [
        f"- data: `tools/bench_scale.py` writes a seeded COCO-like json of {data.images:,} images and "
        f"{data.annotations:,} annotations with polygon outlines and crowd RLEs ({data.bytes / 2**20:,.0f} MiB, in "
        f"{written:.0f} s), every image a link to one of 3 real JPEGs (640x480, 480x640, 640x427)",
        f"- load + check, {where}: detlit `load_checked(json, images, files=False)` (the schema read, then every "
        "json check) against pycocotools `COCO(json)` (`json.load` and its index); seconds per turn, ABBA order: "
        f"detlit {listed(seconds['detlit'])}, pycocotools {listed(seconds['pycocotools'])}; the ratio is the median "
        "of the rounds' ratios",
        "- memory: RSS after loading minus RSS before (the dataset as it stays; the collector run first), and "
        "the peak RSS (VmHWM) minus RSS before; detlit's peak counts the pages of the memory-mapped json it read",
        f"- loader workers: {LOADER_WORKERS} `DataLoader` workers (fork, persistent) pass over all "
        f"{workers['detlit']['items']:,} records once, batches of 256: each item is the image's record and its "
        "training boxes and labels as `DetectionDataset` builds them before it reads the image (no image is "
        "read); the growth is each worker's USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) after "
        "the pass minus its USS after its first batch. detlit hands the workers its columns (`Records`); the "
        "baseline the same records as a plain Python list of `ImageRecord` objects; growth per worker: detlit "
        f"{', '.join(mib(g) for g in growth['detlit'])}; plain list {', '.join(mib(g) for g in growth['list'])}; "
        f"USS after the pass: detlit {', '.join(mib(u) for u in workers['detlit']['after'])}, plain list "
        f"{', '.join(mib(u) for u in workers['list']['after'])}",
        f"- data module: `CocoDataModule(json, images, check_files=True)`, `setup('fit')` and its training loader, "
        f"{where}: first with an empty header cache ({modules[0]['seconds']:.1f} s, of which "
        f"{modules[0]['checked']:.1f} s reading and checking), then with the cache the first run wrote "
        f"({modules[1]['seconds']:.1f} s, {modules[1]['checked']:.1f} s); each DDP rank builds its own, keeping "
        f"{mib(modules[1]['kept'])} of RSS (peak +{mib(modules[1]['peak'])})",
        f"- metric: `DetectionMetrics` on 2 gloo processes of one thread, {sizes.metric_images:,} synthetic images "
        "(`tests.reference.synthetic_data`, 80 classes) x 100 detections, dealt out alternately, `update` in "
        f"steps of 8 images: {rank0['update']:.2f} s of updates on rank 0, state {mib(rank0['state'])} per rank "
        f"({rank0['state'] / max(1, rank0['images']):,.0f} bytes per image: the float64 rows of its detections and "
        f"objects, nothing else); `compute` synchronises once: {calls(rank0)} on each rank (two all-gathers "
        f"per state: sizes, then the rows), {sync:.2f} s; then every rank evaluates all images, {ddp:.2f} s in "
        f"all, against {metric['single']:.2f} s for one process holding all images (on 2 busy cores the two "
        f"ranks' evaluations compete for them); the 12 COCO numbers differ by at most {metric['difference']:.3g}",
    ]
    return Result("scale", rows, details)


def main(argv: Sequence[str]) -> int:
    task, args = argv[0], json.loads(argv[1])
    logging.getLogger("detlit").setLevel(logging.ERROR)
    print(RESULT + json.dumps(TASKS[task](*args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO)]
    sys.exit(main(sys.argv[1:]))
