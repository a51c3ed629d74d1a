"""The ``deploy`` benchmark: exported models and the HTTP service against the checkpoint's eager Predictor.

On the CPU, one model (``configs/sample_cpu.yaml``'s architecture, random initialisation; the unit
tests' toy model with ``--quick``) is saved as a checkpoint and exported to TorchScript and ONNX
with ``detlit.deploy.export.export`` (its parity check included). Then, every figure a ratio of
two numbers measured in this run:

* images/s of the TorchScript and the onnxruntime Predictor against the checkpoint's eager
  Predictor, at batch 1, on the same decoded images, with the same number of threads (onnxruntime
  is given torch's), the sides in rotating order round after round;
* the wall time of each export against the eager Predictor's time on the export's parity images;
* images/s of ``python -m detlit.serve`` (serving the same checkpoint, on 127.0.0.1) at 1 and 8
  concurrent clients, with p50 / p99 latency, against the eager Predictor's images/s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning
import numpy as np
import torch
import yaml
from benchkit import CPU_CONFIG, REPO, Context, Result, Row, Target, collected, listed, median

from detlit.data.coco import load_coco
from detlit.data.images import load_image
from detlit.deploy.export import export
from detlit.inference.predictor import Predictor
from detlit.inference.runtimes import metadata_path
from detlit.model.module import DetectionModule

# --quick: small enough for a smoke test (the unit tests' sizes)
QUICK_MODEL = {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_BOX_HEAD.FC_DIM": 64, "MODEL.RPN.POST_NMS_TOPK_TEST": 50}
QUICK_SIZES = {"min_size_test": 128, "max_size_test": 192}
CLIENTS = (1, 8)
SERVE_START_SECONDS = 300.0


def sample_checkpoint(ctx: Context, folder: Path) -> Path:
    """The CPU config's model for the sample's classes, seeded, saved as a checkpoint detlit loads."""
    config = yaml.safe_load(CPU_CONFIG.read_text())
    model, data = config["model"], config["data"]
    quick = ctx.scale.tiny_model
    dataset = load_coco(folder / "train.json", folder / "train")
    label_map = dataset.label_map()
    sizes = QUICK_SIZES if quick else {k: int(data[k]) for k in ("min_size_test", "max_size_test")}
    torch.manual_seed(0)
    module = DetectionModule(
        num_classes=label_map.num_classes,
        class_names=list(label_map.names),
        category_ids=list(label_map.category_ids),
        config_name=model["config_name"],
        freeze_at=model.get("freeze_at"),
        overrides={**(model.get("overrides") or {}), **(QUICK_MODEL if quick else {})},
        **sizes,
    )
    path = ctx.tmp / "deploy" / "model.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    hyper_parameters = dict(module.hparams)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": hyper_parameters,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def rates(sides: dict[str, Predictor], images: list[np.ndarray], ctx: Context) -> dict[str, list[float]]:
    """Images/s of each predictor per round, the sides in rotating order."""
    for predictor in sides.values():  # warm-up
        predictor.predict(images[: min(4, len(images))])
    measured: dict[str, list[float]] = {side: [] for side in sides}
    names = list(sides)
    for turn in ctx.budget.rounds(ctx.scale.predict_turns, part=0.6):
        for side in names[turn % len(names) :] + names[: turn % len(names)]:
            collected()
            start = time.perf_counter()
            sides[side].predict(images)
            measured[side].append(len(images) / (time.perf_counter() - start))
    return measured


def round_ratios(measured: dict[str, list[float]], side: str, baseline: str) -> float:
    """The median over rounds of the two sides' ratio in the same round."""
    return median([a / b for a, b in zip(measured[side], measured[baseline], strict=False)])


@contextlib.contextmanager
def service(model: Path, folder: Path, batch_size: int) -> Iterator[str]:
    """``python -m detlit.serve`` on 127.0.0.1; its URL once healthy; stopped with SIGTERM afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (folder / "serve.log").open("w")
    command = [sys.executable, "-m", "detlit.serve", "--ckpt", str(model), "--device", "cpu", "--port", str(port)]
    command += ["--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.read() == b"ok":
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the service did not start: {(folder / 'serve.log').read_text()[-2000:]}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def post(url: str, body: bytes) -> float:
    """Seconds one request took (its answer read); a non-200 answer raises."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
    return time.perf_counter() - start


def serve_rates(url: str, bodies: list[bytes], clients: int, ctx: Context) -> tuple[list[float], list[float]]:
    """Images/s per round with ``clients`` concurrent clients posting every image, and every latency."""
    post(f"{url}/predict", bodies[0])  # warm-up
    throughput, latencies = [], []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in ctx.budget.rounds(ctx.scale.predict_turns, part=0.5):
            start = time.perf_counter()
            seconds = list(pool.map(lambda body: post(f"{url}/predict", body), bodies))
            throughput.append(len(bodies) / (time.perf_counter() - start))
            latencies += seconds
    return throughput, latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_deploy(ctx: Context) -> Result:
    folder = ctx.sample_folder()
    checkpoint = sample_checkpoint(ctx, folder)
    val = folder / "val"
    files = sorted(val.glob("*.jpg"))[: ctx.scale.predict_images]
    images = [load_image(path) for path in files]
    eager = Predictor.load(checkpoint, device="cpu", batch_size=1, all_detections=True)
    threads = torch.get_num_threads()

    exported: dict[str, Path] = {}
    export_seconds: dict[str, float] = {}
    for kind in ("torchscript", "onnx"):
        start = time.perf_counter()
        exported[kind] = export(checkpoint, kind, out=ctx.tmp / "deploy", images=val, overwrite=True)  # type: ignore[arg-type]
        export_seconds[kind] = time.perf_counter() - start
    metadata = {kind: json.loads(metadata_path(path).read_text()) for kind, path in exported.items()}

    sides = {
        "eager": eager,
        **{kind: Predictor.load(path, batch_size=1, all_detections=True) for kind, path in exported.items()},
    }
    measured = rates(sides, images, ctx)
    eager_rate = median(measured["eager"])
    parity_count = int(metadata["onnx"]["parity"]["images"])
    eager_parity = parity_count / eager_rate  # seconds the checkpoint takes on as many images
    rows = [
        Row(
            "deploy",
            f"{kind} images/s, batch 1",
            f"{median(measured[kind]):.2f} img/s",
            f"{eager_rate:.2f} img/s (checkpoint, eager)",
            round_ratios(measured, kind, "eager"),
            Target(">=", target),
        )
        for kind, target in (("torchscript", 0.95), ("onnx", 1.2))
    ]
    rows += [
        Row(
            "deploy",
            f"{kind} export wall time",
            f"{export_seconds[kind]:.1f} s (parity {metadata[kind]['seconds']['parity']:.1f} s)",
            f"{eager_parity:.2f} s (eager on {parity_count} images)",
            export_seconds[kind] / eager_parity,
            Target("<=", 40.0),
        )
        for kind in exported
    ]

    bodies = [path.read_bytes() for path in files]
    served: dict[int, tuple[list[float], list[float]]] = {}
    with service(checkpoint, ctx.tmp / "deploy", batch_size=8) as url:
        for clients in CLIENTS:
            served[clients] = serve_rates(url, bodies, clients, ctx)
    for clients, (throughput, latencies) in served.items():
        rows.append(
            Row(
                "deploy",
                f"serve images/s, {clients} client{'s' if clients > 1 else ''}",
                f"{median(throughput):.2f} img/s (p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                f"p99 {percentile(latencies, 99) * 1000:.0f} ms)",
                f"{eager_rate:.2f} img/s (checkpoint, eager, batch 1)",
                median(throughput) / eager_rate,
                Target(">=", 0.8),
            )
        )
    parity = {kind: meta["parity"] for kind, meta in metadata.items()}
    details = [
        f"- model: `{CPU_CONFIG.name}`'s architecture"
        + (" with the unit tests' toy sizes" if ctx.scale.tiny_model else "")
        + f", random initialisation, saved as a checkpoint; {len(images)} images of the synthetic sample's val split, "
        f"decoded once; {threads} torch thread(s) on every side (onnxruntime: the same)",
        "- images/s: `Predictor.predict` at batch 1 keeping every detection (all_detections), the checkpoint in "
        "PyTorch against the exported files; sides in rotating order; img/s: "
        + "; ".join(f"{side} {listed(values)}" for side, values in measured.items()),
        "- export: `detlit.deploy.export.export` (load, trace, write, parity check on "
        f"{parity_count} images), against the eager Predictor's time for as many images: "
        + "; ".join(
            f"{kind} {export_seconds[kind]:.1f} s, max box difference {parity[kind]['max_box_difference_px']:.3g} px, "
            f"max score difference {parity[kind]['max_score_difference']:.3g}, {parity[kind]['differing']} differing"
            for kind in exported
        ),
        "- serve: `python -m detlit.serve --ckpt` on 127.0.0.1 (--batch-size 8: concurrent requests batched, "
        "a lone one run at once), every image POSTed as raw JPEG bytes by 1 and 8 client threads; img/s per round: "
        + "; ".join(f"{clients} client(s) {listed(served[clients][0])}" for clients in served),
    ]
    return Result("deploy", rows, details)
