"""What a client can make the HTTP service hold is bounded: JSON nesting, the time a body takes to
arrive, the number of bodies held at once, header size; and every numeric option is checked at start.

The bounds of :class:`~detlit.deploy.serve.ImageBodies` are tested on a real uvicorn server on
127.0.0.1 (in a thread, with the service's own server settings) whose ``/predict`` reads its body
through the service's own dependency (``ImageRequest``) and answers the image's size, a stand-in for
LitServe and the model; the one ``slow`` test holds 50 connections with partial bodies against the
real service and measures its memory from /proc.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from detlit.deploy.serve import SERVER_OPTIONS, ImageBodies, ImageRequest, Limits, pixel_ceiling

from .conftest import quiet_trainer, tiny_datamodule, tiny_module
from .test_deploy import _request, running_service

NESTING_BOMB = b"[" * 100_000 + b"]" * 100_000


# --- options checked at start ----------------------------------------------------------------------

FINITE = r" \(finite: not NaN or infinity\)$"
BAD_OPTIONS = [
    (["--batch-timeout", "inf"], r"^--batch-timeout is inf; use a number of seconds from 0 to 60" + FINITE),
    (["--batch-timeout", "nan"], r"^--batch-timeout is nan; use a number of seconds from 0 to 60" + FINITE),
    (["--batch-timeout", "-1"], r"^--batch-timeout is -1\.0; use a number of seconds from 0 to 60$"),
    (["--batch-timeout", "61"], r"^--batch-timeout is 61\.0; use"),
    (["--batch-size", "65"], r"^--batch-size is 65; use a whole number from 1 to 64$"),
    (["--max-image-bytes", "0"], r"^--max-image-bytes is 0; use 1 to 1073741824 bytes$"),
    (["--max-image-bytes", str(2**30 + 1)], r"^--max-image-bytes is 1073741825; use 1 to 1073741824 bytes$"),
    (
        ["--max-image-pixels", "0"],
        r"^--max-image-pixels is 0; use 1 to \d+ pixels \(detlit decodes no larger image; DETLIT_MAX_IMAGE_PIXELS "
        r"sets that limit\)$",
    ),
    (["--max-image-pixels", str(pixel_ceiling() + 1)], rf"^--max-image-pixels is {pixel_ceiling() + 1}; use"),
    (["--body-timeout", "0"], r"^--body-timeout is 0\.0; use a number of seconds from 1 to 600$"),
    (["--body-timeout", "nan"], r"^--body-timeout is nan; use a number of seconds from 1 to 600" + FINITE),
    (["--body-timeout", "inf"], r"^--body-timeout is inf; use" + ".*" + FINITE),
    (["--max-pending-bodies", "0"], r"^--max-pending-bodies is 0; use a whole number from 1 to 1024$"),
    (["--max-pending-bodies", "1025"], r"^--max-pending-bodies is 1025; use"),
]


@pytest.mark.parametrize(("option", "expect"), BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_every_numeric_option_is_checked_before_the_model(
    option: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detlit.serve import main

    # The model does not exist: a sentence about the option shows that it was checked first.
    with pytest.raises(SystemExit) as info:
        main(["--ckpt", str(tmp_path / "missing.ckpt"), *option])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expect, lines[0].removeprefix("error: ")), lines[0]


def test_the_bounds_are_inclusive_and_the_defaults_within_them() -> None:
    Limits().check()
    Limits(batch_size=64, batch_timeout=60, max_bytes=2**30, max_pixels=pixel_ceiling()).check()
    Limits(batch_size=1, batch_timeout=0, max_bytes=1, max_pixels=1, body_timeout=1, max_pending=1).check()
    Limits(body_timeout=600, max_pending=1024).check()


# --- the body bounds on a real server -----------------------------------------------------------


def stand_in(bodies: ImageBodies) -> FastAPI:
    """What LitServe builds around the service's dependency, reduced: ``POST /predict`` reads the
    image as :class:`~detlit.deploy.serve.DetectionAPI` does and answers its size (``GET /health``:
    ``ok``)."""
    app = FastAPI()
    app.state.bodies = bodies

    @app.post("/predict")
    async def predict(request: ImageRequest) -> dict[str, int]:
        return {"bytes": len(request)}

    @app.post("/digest")
    async def digest(request: ImageRequest) -> dict[str, str]:
        return {"sha256": hashlib.sha256(request).hexdigest()}

    @app.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok"

    return app


@contextlib.contextmanager
def bodies_server(**limits: Any) -> Iterator[tuple[int, ImageBodies]]:
    """A uvicorn server on 127.0.0.1 with the service's settings and its body reader; its port and
    the reader."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    bodies = ImageBodies(**{"max_bytes": 1_000_000, **limits})
    server = uvicorn.Server(uvicorn.Config(stand_in(bodies), lifespan="off", log_level="error", **SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield int(listener.getsockname()[1]), bodies
    finally:
        server.should_exit = True
        thread.join()
        listener.close()


def _post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    return _request(f"http://127.0.0.1:{port}/predict", body, {"Content-Type": content_type})


def _open(port: int, declared: int, part: bytes) -> socket.socket:
    """A connection that announced a body of ``declared`` bytes and sent ``part`` of it."""
    held = socket.create_connection(("127.0.0.1", port))
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n"
    held.settimeout(30)
    with contextlib.suppress(OSError):  # a refused connection is closed while it sends
        held.sendall(head.encode() + part)
    return held


def _answer(held: socket.socket) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """The status, headers and body a held connection gets, read until the server closes it (status
    None: closed without an answer)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := held.recv(65536):
            data += chunk
    held.close()
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_json_nesting_bomb_is_one_sentence_and_a_request_still_parses() -> None:
    image = os.urandom(3000)
    good = json.dumps({"image": base64.b64encode(image).decode(), "name": "x.jpg"}).encode()
    wide = json.dumps({"image": "aGk=", "pad": [0] * 5000}).encode()
    with bodies_server() as (port, _):
        assert _post(port, good) == (200, {"bytes": 3000})
        for body, words in [
            (NESTING_BOMB, "nests or holds 100000 arrays and objects, more than the limit of 64"),
            (b'{"image": "aGk=", "x": ' + NESTING_BOMB + b"}", "nests or holds 100001 arrays and objects"),
            (wide, "holds 5000 items, more than the limit of 1000"),
            (b"[" * 60 + b"]" * 59, "not valid JSON"),
        ]:
            status, answer = _post(port, body)
            assert status == 400, answer
            assert words in answer["detail"] and answer["detail"].count(". ") == 0, answer
        assert _post(port, good) == (200, {"bytes": 3000}), "the server goes on"


def test_a_late_body_is_408_and_bodies_beyond_the_limit_503_unread() -> None:
    with bodies_server(body_timeout=1.0, max_pending=2) as (port, bodies):
        held = [_open(port, 50_000, b"x" * 1000) for _ in range(2)]
        for _ in range(3000):  # both are being read before the third comes
            if bodies.pending == 2:
                break
            time.sleep(0.01)
        status, headers, body = _answer(_open(port, 50_000, b"x" * 1000))
        assert (status, headers.get(b"retry-after"), headers.get(b"connection")) == (503, b"1", b"close"), body
        assert "already reads or answers 2 requests" in json.loads(body)["detail"]
        assert _request(f"http://127.0.0.1:{port}/health") == (200, "ok"), "other paths are not held back"
        for connection in held:
            status, headers, body = _answer(connection)  # returns once the server has closed it
            assert (status, headers.get(b"connection")) == (408, b"close"), body
            detail = json.loads(body)["detail"]
            assert detail.startswith("the request body did not arrive within 1 s (--body-timeout)"), detail
        # The slots are free again, and stay free after answered requests.
        for _ in range(3):
            assert _post(port, b"\xff\xd8 an image", "image/jpeg") == (200, {"bytes": 11})


def test_headers_that_never_end_are_refused() -> None:
    with bodies_server() as (port, _):
        endless = socket.create_connection(("127.0.0.1", port))
        endless.settimeout(30)
        with contextlib.suppress(OSError):  # refused while it sends
            endless.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: ")
            for _ in range(100):  # 800 kB of one header, never ended
                endless.sendall(b"a" * 8192)
                time.sleep(0.001)
        status, headers, body = _answer(endless)
        assert (status, headers.get(b"connection")) == (400, b"close"), body
        assert b"Invalid HTTP request" in body
        assert _request(f"http://127.0.0.1:{port}/health") == (200, "ok")


def _form(*files: tuple[str, bytes], fields: tuple[tuple[str, str], ...] = ()) -> tuple[bytes, str]:
    """A multipart form of ``(field, data)`` files and plain fields; its body and content type."""
    boundary = "limits-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_raw_multipart_and_json_bodies_give_the_same_image_bytes() -> None:
    image, other = os.urandom(200_000), os.urandom(1000)
    digest = {"sha256": hashlib.sha256(image).hexdigest()}
    shapes = {
        "raw jpeg": (image, "image/jpeg"),
        "raw without a type": (image, "application/octet-stream"),
        "raw labelled as a form (curl -d)": (image, "application/x-www-form-urlencoded"),
        "form field image": _form(("image", image), fields=(("note", "x"),)),
        "form field image after another file": _form(("thumb", other), ("image", image)),
        "form of one file by another name": _form(("upload", image)),
        "json": (json.dumps({"image": base64.b64encode(image).decode()}).encode(), "application/json; charset=utf-8"),
    }
    bad = {
        "form without a file": (_form(fields=(("image", "x"),)), 400, "the form holds no file; POST an image"),
        "json image not base64": (
            (b'{"image": "not base64!"}', "application/json"),
            400,
            "the JSON request's \"image\" is not base64; encode the image file's bytes in base64",
        ),
        "empty body": ((b"", "image/jpeg"), 400, "the request has no body; POST an image as the request body"),
    }
    with bodies_server() as (port, bodies):
        url = f"http://127.0.0.1:{port}/digest"
        for name, (body, content_type) in shapes.items():
            assert _request(url, body, {"Content-Type": content_type}) == (200, digest), name
        for name, ((body, content_type), code, words) in bad.items():
            status, answer = _request(url, body, {"Content-Type": content_type})
            assert (status, answer["detail"].startswith(words)) == (code, True), (name, answer)
        # A body declared over the limit is refused, read to its end and dropped, and the connection closes.
        status, headers, body = _answer(_open(port, 1_500_000, b"x" * 1_500_000))
        assert (status, headers.get(b"connection")) == (413, b"close"), body
        assert json.loads(body)["detail"] == (
            "the request body is 1500000 bytes, more than the limit of 1000000 bytes; send a smaller image"
        )
        assert bodies.pending == 0, "every request gave its place back"


class WatchedQueue(queue.Queue):  # type: ignore[type-arg]
    """A request queue that counts the waits: blocking reads while it is empty."""

    def __init__(self, requests: int) -> None:
        super().__init__()
        self.waits = 0
        for number in range(requests):
            self.put((0, f"uid-{number}", time.monotonic(), b"image"))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.waits += block and self.empty()
        return super().get(block, timeout)


@pytest.mark.parametrize(
    ("waiting", "batch", "waits"),
    [(1, 1, False), (2, 2, True), (5, 5, True), (8, 8, False), (11, 8, False)],
    ids=["lone", "two", "five", "full", "more than a batch"],
)
def test_a_lone_request_runs_at_once_and_concurrent_ones_are_batched(waiting: int, batch: int, waits: bool) -> None:
    from litserve.loops import BatchedLoop

    from detlit.deploy.serve import DetectionAPI, PromptBatches, ServeSettings

    api = DetectionAPI(ServeSettings(Path("unused.ckpt")), max_batch_size=8, batch_timeout=0.05)
    api.request_timeout = 60  # as LitServer sets it
    requests = WatchedQueue(waiting)
    got, expired = PromptBatches().get_batch_requests(api, requests, None)
    assert ([uid for _, uid, _ in got], expired) == ([f"uid-{n}" for n in range(batch)], [])
    assert bool(requests.waits) == waits, "a batch waits for more only when a second request waits, and is not full"
    assert requests.qsize() == waiting - batch
    # LitServe's own loop waits for a batch to fill even for a lone request.
    lone = WatchedQueue(1)
    assert len(BatchedLoop().get_batch_requests(api, lone, None)[0]) == 1 and lone.waits > 0


def test_an_image_of_too_many_tiles_is_refused_with_413() -> None:
    import io

    import numpy as np
    from PIL import Image

    from detlit.deploy.serve import DetectionAPI, Rejected, ServeSettings
    from detlit.inference.slicing import Slicing

    def png(width: int, height: int) -> bytes:
        body = io.BytesIO()
        Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(body, format="PNG")
        return body.getvalue()

    api = DetectionAPI(ServeSettings(Path("unused.ckpt"), slicing=Slicing(size=32, overlap=0.5)), 8, 0.05)
    # 1,700 x 1,700 px in tiles of 32 px every 16 px: 106 x 106 = 11,236 tiles, over 10,000.
    refused = api.decode_request(png(1700, 1700))
    assert isinstance(refused, Rejected) and refused.status == 413
    assert refused.message == (
        "the image is 1700x1700: in tiles of 32 px (overlap 0.5) that is 11,236 tiles, more than 10,000; send a "
        "smaller image, or start the service with a larger --slice"
    )
    accepted = api.decode_request(png(1600, 1600))  # 99 x 99 = 9,801 tiles
    assert not isinstance(accepted, Rejected) and accepted.shape == (1600, 1600, 3)


# --- the real service -----------------------------------------------------------------------------


def _tree_rss(port: int) -> int:
    """Resident bytes of the service on ``port``: its process and every process of its group."""
    leader = None
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"detlit.serve" in argv and str(port).encode() in argv:
                leader = os.getpgid(int(entry.name))
                break
    assert leader is not None, "the service's process was not found"
    total = 0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == leader:
                status = (entry / "status").read_text()
                total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    return total


@pytest.fixture(scope="module")
def small_checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model after one training step: what the service loads matters here, not its boxes."""
    path = tmp_path_factory.mktemp("service") / "tiny.ckpt"
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    trainer.save_checkpoint(path)
    return path


HELD = 50
PENDING = 8
DECLARED = 8_000_000  # each connection announces 8 MB ...
SENT = 6_000_000  # ... sends 6 MB of it, and waits


@pytest.mark.slow
@pytest.mark.cli
def test_held_connections_cannot_take_the_services_memory(
    small_checkpoint: Path, sample_dir: Path, tmp_path: Path
) -> None:
    image = sorted((sample_dir / "val").glob("*.jpg"))[0].read_bytes()
    options = ["--ckpt", str(small_checkpoint), "--device", "cpu", "--max-image-bytes", str(10 * 2**20)]
    options += ["--max-pending-bodies", str(PENDING), "--body-timeout", "15"]
    with running_service(tmp_path, *options) as url:
        port = int(url.rsplit(":", 1)[1])
        predict = f"{url}/predict"
        assert _request(predict, image, {"Content-Type": "image/jpeg"})[0] == 200
        status, answer = _request(predict, NESTING_BOMB, {"Content-Type": "application/json"})
        assert status == 400 and "100000 arrays and objects" in answer["detail"], answer
        before = _tree_rss(port)

        held = [_open(port, DECLARED, b"\0" * SENT) for _ in range(HELD)]
        peak = 0
        for _ in range(8):  # the held parts arrive over a moment: the largest of a few readings
            time.sleep(0.25)
            peak = max(peak, _tree_rss(port))
        growth = peak - before
        # Without the bound the service held every part: 50 x 6 MB = 300 MB (+660 MB measured for 40
        # connections of 18 MB). With it, 8 bodies of at most 8 MB each, and a margin as large again.
        bound = 2 * PENDING * DECLARED
        assert growth < bound, f"the service grew by {growth / 1e6:.0f} MB holding {HELD} partial bodies"
        assert _request(f"{url}/health") == (200, "ok")
        request = urllib.request.Request(predict, data=image, headers={"Content-Type": "image/jpeg"})
        with pytest.raises(urllib.error.HTTPError) as busy:
            urllib.request.urlopen(request, timeout=60)
        assert busy.value.code == 503 and busy.value.headers["Retry-After"] == "1"
        assert "--max-pending-bodies" in json.loads(busy.value.read())["detail"]

        answers = [_answer(connection)[0] for connection in held]
        assert answers[:PENDING] == [408] * PENDING, answers
        assert set(answers[PENDING:]) <= {503, None}, answers
        status, answer = _request(predict, image, {"Content-Type": "image/jpeg"})
        assert status == 200 and "detections" in answer, answer
    print(
        f"memory: {before / 1e6:.0f} MB, +{growth / 1e6:.1f} MB holding {HELD} partial bodies (bound {bound / 1e6:.0f})"
    )
