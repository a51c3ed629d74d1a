"""An HTTP service for a trained detector on LitServe, as ``python -m detlit.serve`` runs it.

Endpoints:

* ``POST /predict``: one image, as the raw request body (any content type but JSON and forms,
  e.g. ``image/jpeg``), as a multipart form file (field ``image``, or the first file), or as JSON
  ``{"image": "<base64>"}``. The answer is JSON: the image's ``width`` and ``height`` (after EXIF
  orientation) and its ``detections``, each with ``box_xyxy`` and ``box_xywh`` (COCO) in original
  pixels, ``score``, ``class_name``, ``category_id`` (the original COCO id) and ``label``; and
  ``thresholds``, the score threshold each class was filtered with.
* ``GET /health``: ``ok`` once the model is loaded; ``GET /info``: the model's facts and source.

Concurrent requests are batched (LitServe's ``max_batch_size`` = ``--batch-size``, waiting at most
``--batch-timeout`` seconds for a batch to fill), and the batch goes through the
:class:`~detlit.inference.predictor.Predictor`, which runs images of one shape together: the
service answers what ``python -m detlit.predict`` writes for the same image.

Bad payloads get a 4xx answer ``{"detail": "<one sentence>"}`` and the service goes on: an empty
body or one that is not an image (400), a body over ``--max-image-bytes`` (413, refused before it
reaches the model's process), an image of more than ``--max-image-pixels`` pixels, a
decompression bomb among them (413, refused from its header before it is decoded). A bad image in
a batch never fails the others.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import litserve
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile

from detlit.data.images import READ_ERRORS, to_rgb
from detlit.errors import ConfigError
from detlit.evaluation.matching import xyxy_to_xywh
from detlit.inference.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

API_PATH = "/predict"
DISCARD_FACTOR = 8  # a refused body is read (and dropped) up to 8 times --max-image-bytes before the answer
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe listens on
DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
HOW_TO_POST = 'POST an image as the request body, as a multipart file, or as JSON {"image": base64}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ServeSettings:
    """What the service's model process needs (it is started fresh, so it gets these, not a model)."""

    model: Path
    device: str = "auto"
    score_threshold: float | None = None
    batch_size: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS

    def predictor(self) -> Predictor:
        return Predictor.load(
            self.model, device=self.device, score_threshold=self.score_threshold, batch_size=self.batch_size
        )


class Rejected(NamedTuple):
    """A request that gets no prediction: its HTTP status and the one sentence that says why."""

    status: int
    message: str


async def answer(send: Send, status: int, message: str) -> None:
    """Send ``{"detail": message}`` with ``status``."""
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ImageBodies:
    """ASGI middleware of the HTTP process: every ``POST /predict`` reaches the model's process as
    JSON ``{"image": base64}`` (LitServe passes JSON and forms on, and a form's file cannot be read
    without its parser), or is answered here: an empty, oversized or malformed body never travels
    to the model."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _discard(self, receive: Receive) -> None:
        """Read the rest of a refused body without keeping it, up to :data:`DISCARD_FACTOR` times the
        limit: a client that is still sending when the answer comes would otherwise see its
        connection reset instead of the answer. Beyond that the connection closes."""
        size, more = 0, True
        while more and size <= DISCARD_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)

    def _too_large(self, size: str) -> str:
        return f"the request body is {size}, more than the limit of {self.max_bytes} bytes; send a smaller image"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != API_PATH:
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope["headers"]}
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._discard(receive)
            await answer(send, 413, self._too_large(f"{int(declared)} bytes"))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await self._discard(receive)
                await answer(send, 413, self._too_large(f"over {self.max_bytes} bytes"))
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            await answer(send, 400, f"the request has no body; {HOW_TO_POST}")
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        image = await self._image(scope, body, content_type)
        if isinstance(image, Rejected):
            await answer(send, image.status, image.message)
            return
        body = json.dumps({"image": image}).encode()
        kept = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": kept}, replay, send)

    async def _image(self, scope: Scope, body: bytes, content_type: str) -> str | Rejected:
        """The body's image as base64 text: the body itself, a form's file, or a JSON's ``image``."""
        if content_type == "application/json":
            try:
                document = json.loads(body)
            except ValueError:
                return Rejected(400, f"the request body is not valid JSON; {HOW_TO_POST}")
            encoded = document.get("image") if isinstance(document, dict) else None
            if not isinstance(encoded, str):
                return Rejected(400, f'the JSON request has no "image" string; {HOW_TO_POST}')
            return encoded
        if content_type == "multipart/form-data":
            return await self._form_image(scope, body)
        # Anything else is the image itself, whatever it is labelled (curl labels a raw body as a form).
        return base64.b64encode(body).decode("ascii")

    async def _form_image(self, scope: Scope, body: bytes) -> str | Rejected:
        async def once() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form()
        except Exception as err:  # the multipart parser's errors have no common base
            return Rejected(400, f"the form cannot be parsed ({err}); {HOW_TO_POST}")
        try:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            if not files:
                return Rejected(400, f"the form holds no file; {HOW_TO_POST}")
            upload = next((value for key, value in files if key == "image"), files[0][1])
            return base64.b64encode(await upload.read()).decode("ascii")
        finally:
            await form.close()


def request_bytes(request: Any) -> bytes | Rejected:
    """The image bytes of a request as the middleware hands it on: JSON ``{"image": base64}``."""
    encoded = request.get("image") if isinstance(request, dict) else None
    if not isinstance(encoded, str):
        return Rejected(400, f"the request holds no image; {HOW_TO_POST}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return Rejected(400, "the JSON request's \"image\" is not base64; encode the image file's bytes in base64")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray | Rejected:
    """An image's bytes as RGB uint8 (EXIF orientation applied), or why not. The size is checked from
    the header before any pixel is decoded."""
    if not data:
        return Rejected(400, f"the image is empty (0 bytes); {HOW_TO_POST}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return Rejected(
                    413,
                    f"the image is {width} x {height} pixels, more than the limit of {max_pixels}; send a smaller "
                    "image, or start the service with a larger --max-image-pixels",
                )
            return to_rgb(image)
    except Image.DecompressionBombError as err:
        return Rejected(413, f"the image is too large to decode safely ({err}); send a smaller image")
    except READ_ERRORS as err:
        reason = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(err))  # PIL names the in-memory file object
        return Rejected(400, f"the request body is not an image that can be read ({reason}); {HOW_TO_POST}")


def response(prediction: Prediction, thresholds: dict[str, float]) -> dict[str, Any]:
    """The JSON answer for one image."""
    xywh = xyxy_to_xywh(prediction.boxes)
    detections = [
        {
            "box_xyxy": box,
            "box_xywh": coco,
            "score": score,
            "class_name": name,
            "category_id": category_id,
            "label": label,
        }
        for box, coco, score, name, category_id, label in zip(
            prediction.boxes.tolist(),
            xywh.tolist(),
            prediction.scores.tolist(),
            prediction.class_names,
            prediction.category_ids,
            prediction.labels.tolist(),
            strict=True,
        )
    ]
    return {"width": prediction.width, "height": prediction.height, "detections": detections, "thresholds": thresholds}


class DetectionAPI(litserve.LitAPI):
    """The service's LitServe API: decode (or reject) each request, predict a batch, answer each."""

    def __init__(self, settings: ServeSettings, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.settings = settings

    def setup(self, device: str) -> None:
        self.predictor = self.settings.predictor()
        names, values = self.predictor.class_names, self.predictor.score_thresholds.tolist()
        self.thresholds = dict(zip(names, values, strict=True))

    def decode_request(self, request: Request) -> np.ndarray | Rejected:
        data = request_bytes(request)
        return data if isinstance(data, Rejected) else decode_image(data, self.settings.max_pixels)

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)  # images of several sizes: the Predictor groups them by shape

    def predict(self, inputs: Any) -> Any:
        batch = inputs if isinstance(inputs, list) else [inputs]
        images = [x for x in batch if not isinstance(x, Rejected)]
        predicted = iter(self.predictor.predict(images) if images else [])
        outputs = [x if isinstance(x, Rejected) else next(predicted) for x in batch]
        return outputs if isinstance(inputs, list) else outputs[0]

    def unbatch(self, output: Sequence[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: Prediction | Rejected) -> Any:
        # A rejected image answers alone: raising here would fail every request of its batch.
        if isinstance(output, Rejected):
            return JSONResponse({"detail": output.message}, status_code=output.status)
        return response(output, self.thresholds)


MAIN_PROCESS = os.getpid()


# LitServe reads this annotation to parse the request (JSON or form) before handing it over; it must
# be the class, not the string that postponed annotations make of it.
DetectionAPI.decode_request.__annotations__["request"] = Request


def _interrupt(signum: int, frame: Any) -> None:
    if os.getpid() == MAIN_PROCESS:
        raise KeyboardInterrupt
    # A forked HTTP process inherits this handler; uvicorn re-raises the signal once it has shut
    # down, expecting the default: end quietly.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def require_free_port(host: str, port: int) -> None:
    """Raise one sentence when another program already listens on ``host:port``.

    Checked before the model loads, so a second service on a taken port stops at once instead of
    failing inside the web server after start-up.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"--port {port} on {host} is taken ({err.strerror or err}): another service listens there; "
                "stop it or choose another --port"
            ) from err


def serve(
    model: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    batch_size: int = 4,
    batch_timeout: float = 0.01,
    score_threshold: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """``python -m detlit.serve``: serve ``model`` (a checkpoint or an exported model) until stopped.

    The model is loaded once here first, so a bad file or device ends in one sentence before the
    service starts.

    Raises:
        ConfigError: a bad setting; WeightsError: the model cannot be loaded.
    """
    if not model.is_file():
        raise ConfigError(
            f"{model} does not exist; pass a .ckpt of a training run or a model of python -m detlit.export"
        )
    if host not in HOSTS:
        raise ConfigError(f"--host {host} cannot be served by LitServe; use one of {', '.join(HOSTS)}")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--port {port} is outside 1024..65535; choose a port in that range")
    if batch_timeout < 0:
        raise ConfigError(f"--batch-timeout {batch_timeout} is negative; give 0 or more seconds")
    require_free_port(host, port)
    settings = ServeSettings(model, device, score_threshold, batch_size, max_pixels)
    checked = settings.predictor()
    facts = checked.facts
    info = {"model": str(model), "runtime": checked.runtime.name, "device": str(checked.device), **facts.as_json()}
    del checked
    server = litserve.LitServer(
        DetectionAPI(settings, batch_size, batch_timeout),
        accelerator="cpu",  # LitServe's device choice is only handed to setup; the Predictor picks its own
        devices=1,
        workers_per_device=1,
        timeout=120,
        model_metadata=info,
        middlewares=[(ImageBodies, {"max_bytes": max_bytes})],
    )
    # LitServe shuts its processes down on KeyboardInterrupt: SIGTERM (kill, docker stop) and a SIGINT
    # that a shell set to be ignored in background jobs end the service the same way.
    global MAIN_PROCESS
    MAIN_PROCESS = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    log.info("serving %s on http://%s:%d%s (health: /health)", model, host, port, API_PATH)
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level="warning")
