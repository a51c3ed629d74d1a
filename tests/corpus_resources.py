"""The corpus of bad inputs, area: files that would take unbounded memory or time (archive
bombs, image bombs, exported metadata).

The crafted files are built here, fast and for real, and :mod:`tests.test_bounded_files` uses the
same builders:

* :func:`write_zip_bomb`: a copy of a checkpoint's archive layout (every member name, the real
  ``data.pkl``) in which one tensor member is a deflated run of zeros declaring more than 3 GB, in
  a file of about 3 MB;
* :func:`write_image_bomb`: a PNG of 30000 x 30000 one-bit pixels (900 M pixels, a few hundred KB);
* exported metadata changed one fact at a time, each beside a link to the real exported model;
* a weights server on 127.0.0.1 (:class:`WeightsServer`) that answers with an HTML page, as a
  sign-in page or a proxy does, or announces a file of 3 GB.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .corpus import Case, Workspace, args, fit

BOMB_BYTES = 3 * 2**30 + 2**24  # more than 3 GB of zeros, a whole number of 16 MiB blocks
BOMB_SIDE = 30_000

# --- zip bombs --------------------------------------------------------------------------------


def deflated_zeros(size: int, block: int = 2**24) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes (a multiple of ``block``) and its CRC-32.

    One block compressed and flushed in full resets the compressor, so every later block of zeros
    compresses to the same bytes: the stream is that block repeated, built in a fraction of the
    seconds that compressing gigabytes takes.
    """
    zeros = bytes(block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    flushed = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    return flushed * (size // block) + compressor.flush(), crc


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive of ``(name, stored bytes, method, crc, uncompressed size)`` members, written as
    the format says (zipfile cannot write bytes that are already compressed)."""
    directory = []
    with path.open("wb") as out:
        for name, data, method, crc, size in members:
            encoded, offset = name.encode(), out.tell()
            out.write(
                struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
            )
            out.write(encoded + data)
            directory.append(
                struct.pack(
                    "<4s6H3L5H2L",
                    b"PK\x01\x02",
                    20,
                    20,
                    0,
                    method,
                    0,
                    0x21,
                    crc,
                    len(data),
                    size,
                    len(encoded),
                    0,
                    0,
                    0,
                    0,
                    0,
                    offset,
                )
                + encoded
            )
        start, central = out.tell(), b"".join(directory)
        out.write(central)
        count = len(members)
        if count > 0xFFFF:  # only the zip64 end record holds such a count; the plain one points to it
            end64 = out.tell()
            out.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), start))
            out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
        short = min(count, 0xFFFF)
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, short, short, len(central), start, 0))


def write_zip_bomb(checkpoint: Path, path: Path, size: int = BOMB_BYTES) -> Path:
    """``checkpoint``'s archive layout with its first tensor a deflated member of ``size`` zeros; the
    other tensors keep 64 bytes each, so the file is about ``size / 1029`` bytes."""
    members = []
    with zipfile.ZipFile(checkpoint) as source:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                stream, crc = deflated_zeros(size)
                members.append((info.filename, stream, zipfile.ZIP_DEFLATED, crc, size))
                continue
            data = source.read(info.filename)
            if "/data/" in info.filename:
                data = data[:64]
            members.append((info.filename, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
    write_zip(path, members)
    return path


# --- image bombs ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + kind + data + struct.pack(">L", zlib.crc32(kind + data))


def write_image_bomb(path: Path, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> Path:
    """A valid PNG of ``width`` x ``height`` one-bit black pixels, written chunk by chunk (Pillow
    would need the decoded image in memory to write it)."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows = 1024
    data = b"".join(compressor.compress(row * min(rows, height - y)) for y in range(0, height, rows))
    header = struct.pack(">2L5B", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data + compressor.flush())
        + _chunk(b"IEND", b"")
    )
    return path


# --- exported metadata ------------------------------------------------------------------------


def _facts(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda document: document["facts"].update(changes)


def _fewer_classes(document: dict[str, Any]) -> None:
    facts = document["facts"]
    for key in ("class_names", "category_ids", "score_thresholds"):
        facts[key] = facts[key][:-1]


def _other_export(document: dict[str, Any]) -> None:
    document["file_sha256"] = "0" * 64  # what another export of the same size would record


METADATA: dict[str, Callable[[dict[str, Any]], None]] = {
    "min-size-60000": _facts(min_size=60000, max_size=60000),
    "min-size-0": _facts(min_size=0),
    "min-size-negative": _facts(min_size=-5),
    "fewer-classes": _fewer_classes,
    "nan-threshold": _facts(score_thresholds=[float("nan"), 0.5, 0.5]),
    "other-export": _other_export,
}
NESTING = 100_000  # far beyond what Python's json reader follows


def write_metadata_variants(model: Path, folder: Path) -> dict[str, Path]:
    """One folder per crafted metadata (and ``deep``, nested :data:`NESTING` levels), each holding a
    link to ``model`` (a copy where links cannot be made) and the changed metadata json beside it."""
    document = json.loads(Path(f"{model}.json").read_text())
    texts = {}
    for name, change in METADATA.items():
        changed = json.loads(json.dumps(document))
        change(changed)
        texts[name] = json.dumps(changed, indent=1)
    texts["deep"] = json.dumps(document)[:-1] + ', "notes": ' + "[" * NESTING + "]" * NESTING + "}"
    made = {}
    for name, text in texts.items():
        target = folder / name / model.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(model, target)
        except OSError:
            shutil.copyfile(model, target)
        Path(f"{target}.json").write_text(text)
        made[name] = target
    return made


# --- a weights server -------------------------------------------------------------------------


class WeightsServer:
    """An HTTP server on 127.0.0.1, for the process's lifetime: ``/page.pkl`` answers with an HTML
    sign-in page, ``/huge.pkl`` announces 3 GB (and sends nothing)."""

    url = ""

    @classmethod
    def start(cls) -> None:
        class Answers(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                if self.path == "/huge.pkl":
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(BOMB_BYTES))
                    self.end_headers()
                    return
                page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{server.server_address[1]}"


def _download(name: str) -> Callable[[Workspace], list[str]]:
    return lambda w: w.fit_args(f"--model.weights={WeightsServer.url}/{name}")


# --- the cases --------------------------------------------------------------------------------

BOMB_CKPT = "{root}/resources/bomb.ckpt"
BOMB_SENTENCE = r"declare 3,2\d\d\.\d MB .*a zip bomb or a damaged file"
IMAGE_SENTENCE = r"bomb\.png is 900,000,000 pixels, more than the 178,956,970 pixels detlit decodes"
MODEL = "{root}/resources/exported/%s/model.onnx"
EVAL = ("--json", "{sample}/val.json", "--images", "{sample}/val")


def _model(name: str) -> str:
    return MODEL % name


CASES: list[Case] = [
    # --- weights names and downloads ------------------------------------------------------------
    Case(
        "weights imagenet for a ResNet-18",
        "fit",
        fit("--model.weights=imagenet"),
        r"model\.weights imagenet: detectron2's model zoo has ImageNet weights for ResNet-50, ResNet-101 and "
        r"ResNeXt-101 32x8d backbones, and this model's backbone is a ResNet-18",
    ),
    Case(
        "weights URL that answers with an HTML page",
        "fit",
        _download("page.pkl"),
        r"could not download weights http://127\.0\.0\.1:\d+/page\.pkl: .* answered with an HTML page \(HTTP 200, "
        r"text/html\), not a weights file",
    ),
    Case(
        "weights URL that announces 3 GB",
        "fit",
        _download("huge.pkl"),
        r"huge\.pkl announces 3,238\.0 MB, more than the 2,147 MB a weights download may have",
    ),
    # --- zip bombs ------------------------------------------------------------------------------
    Case("predict with a zip-bomb checkpoint", "predict", args("--ckpt", BOMB_CKPT, "{sample}/val"), BOMB_SENTENCE),
    Case("evaluate a zip-bomb checkpoint", "evaluate", args("--ckpt", BOMB_CKPT, *EVAL), BOMB_SENTENCE),
    Case("export a zip-bomb checkpoint", "export", args("--ckpt", BOMB_CKPT, "--format", "onnx"), BOMB_SENTENCE),
    Case(
        "resume from a zip-bomb checkpoint",
        "fit",
        lambda w: w.fit_args(f"--ckpt={w.format(BOMB_CKPT)}"),
        BOMB_SENTENCE,
    ),
    # --- image bombs ----------------------------------------------------------------------------
    Case(
        "decompression-bomb image in the json",
        "check",
        args("{root}/resources/bomb.json", "--images", "{root}/resources/images"),
        IMAGE_SENTENCE,
        status=1,
    ),
    Case(
        "decompression-bomb image in the training json",
        "fit",
        lambda w: w.fit_args(
            f"--data.train_json={w.root}/resources/bomb.json", f"--data.train_images={w.root}/resources/images"
        ),
        IMAGE_SENTENCE,
    ),
    Case(
        "evaluate with a decompression-bomb image",
        "evaluate",
        args("--ckpt", "{ckpt}", "--json", "{root}/resources/bomb.json", "--images", "{root}/resources/images"),
        IMAGE_SENTENCE,
    ),
    # --- exported metadata ----------------------------------------------------------------------
    Case(
        "exported model with min_size 60000",
        "predict",
        args("--model", _model("min-size-60000"), "{sample}/val"),
        r"facts\.min_size is 60000, not a whole number of pixels in 1\.\.4096",
    ),
    Case(
        "exported model with min_size 0",
        "predict",
        args("--model", _model("min-size-0"), "{sample}/val"),
        r"facts\.min_size is 0, not a whole number",
    ),
    Case(
        "exported model with a negative min_size",
        "predict",
        args("--model", _model("min-size-negative"), "{sample}/val"),
        r"facts\.min_size is -5, not a whole number",
    ),
    Case(
        "exported model with fewer class names than classes",
        "predict",
        args("--model", _model("fewer-classes"), "{sample}/val"),
        r"names 2 classes, but the model .* has 3 \(its box classifier has 4 outputs",
    ),
    Case(
        "exported metadata nested too deep",
        "predict",
        args("--model", _model("deep"), "{sample}/val"),
        r"model\.onnx\.json nests or holds \d+ arrays and objects, more than the limit of 256",
    ),
    Case(
        "exported metadata with a NaN threshold",
        "predict",
        args("--model", _model("nan-threshold"), "{sample}/val"),
        r"facts\.score_thresholds\[0\] is nan, not a number from 0 to 1",
    ),
    Case(
        "exported model beside another export's metadata",
        "predict",
        args("--model", _model("other-export"), "{sample}/val"),
        r"is not the model file its metadata .* was written with \(their sha256 differ\)",
    ),
    Case(
        "evaluate an exported model with min_size 60000",
        "evaluate",
        args("--model", _model("min-size-60000"), *EVAL),
        r"facts\.min_size is 60000",
    ),
    Case(
        "evaluate an exported model with fewer class names than classes",
        "evaluate",
        args("--model", _model("fewer-classes"), *EVAL),
        r"names 2 classes, but the model .* has 3",
    ),
    Case(
        "serve an exported model with a NaN threshold",
        "serve",
        args("--model", _model("nan-threshold"), "--port", "18767"),
        r"facts\.score_thresholds\[0\] is nan",
    ),
    Case(
        "serve an exported model beside another export's metadata",
        "serve",
        args("--model", _model("other-export"), "--port", "18767"),
        r"their sha256 differ",
    ),
]


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root / "resources"``: a zip bomb of the
    workspace's checkpoint, a json listing an image bomb among the sample's validation images, and
    crafted metadata beside the workspace's checkpoint exported once to ONNX."""
    from detlit.deploy.export import export

    WeightsServer.start()
    folder = workspace.root / "resources"
    folder.mkdir()
    write_zip_bomb(workspace.ckpt, folder / "bomb.ckpt")
    images = folder / "images"
    shutil.copytree(workspace.sample / "val", images)
    write_image_bomb(images / "bomb.png")
    listed = json.loads((workspace.sample / "val.json").read_text())
    bomb = {"id": 10_000, "file_name": "bomb.png", "width": BOMB_SIDE, "height": BOMB_SIDE}
    listed["images"].append(bomb)
    category = listed["categories"][0]["id"]
    box = {"id": 100_000, "image_id": bomb["id"], "category_id": category, "bbox": [10, 10, 50, 50], "area": 2500}
    listed["annotations"].append({**box, "iscrowd": 0})
    (folder / "bomb.json").write_text(json.dumps(listed))
    model = export(workspace.ckpt, "onnx", out=folder / "export")
    write_metadata_variants(model, folder / "exported")
