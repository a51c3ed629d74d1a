"""An HTTP service for a trained detector on LitServe, as ``python -m detlit.serve`` runs it.

Endpoints:

* ``POST /predict``: one image, as the raw request body (any content type but JSON and forms,
  e.g. ``image/jpeg``), as a multipart form file (field ``image``, or the first file), or as JSON
  ``{"image": "<base64>"}``. The answer is JSON: the image's ``width`` and ``height`` (after EXIF
  orientation) and its ``detections``, each with ``box_xyxy`` and ``box_xywh`` (COCO) in original
  pixels, ``score``, ``class_name``, ``category_id`` (the original COCO id) and ``label``; and
  ``thresholds``, the score threshold each class was filtered with.
* ``GET /health``: ``ok`` once the model is loaded; ``GET /info``: the model's facts and source.

A request travels in two steps. In the HTTP process, :class:`ImageBodies` reads the body within its
bounds and takes the image's bytes out of it (the body itself, a form's file, or a JSON's base64),
the one place that knows the three shapes; it is the FastAPI dependency that
:meth:`DetectionAPI.decode_request`'s annotation names, which is how LitServe lets an API say what
its endpoint reads (LitServe itself parses a body only as JSON or a form: Lightning-AI/LitServe#732
asks for raw bodies). In the model's process, :meth:`DetectionAPI.decode_request` decodes the bytes
into pixels, and the batch goes through the :class:`~detlit.inference.predictor.Predictor`, which
runs images of one shape together: the service answers what ``python -m detlit.predict`` writes
for the same image.

Concurrent requests are batched (up to ``--batch-size``), but a lone request runs at once:
:class:`PromptBatches` waits ``--batch-timeout`` seconds for a batch to fill only once a second
request is waiting.

Bad payloads get a 4xx answer ``{"detail": "<one sentence>"}`` and the service goes on: an empty
body or one that is not an image (400), a body over ``--max-image-bytes`` (413, refused before it
reaches the model's process), an image of more than ``--max-image-pixels`` pixels, a
decompression bomb among them (413, refused from its header before it is decoded). A bad image in
a batch never fails the others.

What a client can make the service hold is bounded: a body must arrive within ``--body-timeout``
seconds (else 408 and the connection closes), at most ``--max-pending-bodies`` requests are read
or answered at once (beyond them 503 with ``Retry-After``, the body left unread), a JSON body is
refused from its raw bytes when it holds more arrays, objects or items than a request needs (so
the parser never recurses or allocates without bound), and request headers are bounded by h11's
16 KiB. Memory thus stays within about ``--max-pending-bodies`` x ``--max-image-bytes`` times a
small factor (a body and the image taken from it) however clients behave. Every numeric option is
checked at start, before the model loads (:class:`Limits`).
"""

# No ``from __future__ import annotations`` here: LitServe and FastAPI read decode_request's and the
# dependency's annotations as objects (a string annotation would name nothing in their modules).

import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import litserve
import numpy as np
from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse
from litserve import Request
from litserve.loops import BatchedLoop
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detlit.common import ranges, safe_json
from detlit.common.ranges import MAX_TILES_PER_IMAGE
from detlit.data import windows
from detlit.data.images import READ_ERRORS, ImageTooLarge, max_image_pixels, open_image, to_rgb
from detlit.errors import ConfigError
from detlit.evaluation.matching import xyxy_to_xywh
from detlit.inference.predictor import Prediction, Predictor
from detlit.inference.slicing import Slicing

log = logging.getLogger(__name__)

API_PATH = "/predict"
DISCARD_FACTOR = 8  # a refused body is read (and dropped) up to 8 times --max-image-bytes before the answer
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe listens on
DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
HOW_TO_POST = 'POST an image as the request body, as a multipart file, or as JSON {"image": base64}'
DEFAULT_BODY_TIMEOUT = 30.0  # seconds: 20 MiB at about 6 Mbit/s
DEFAULT_MAX_PENDING = 16  # requests read or answered at once: 16 x 20 MiB bounds what bodies hold
RETRY_AFTER = 1  # seconds a client refused with 503 is asked to wait
REQUEST_TIMEOUT = 120  # seconds LitServe waits for the model's answer to one request
IDLE_WAIT = 1.0  # seconds the model's process waits for a first request before its loop goes round again
# Python's json parser recurses once per nested array or object and makes an object per item; a
# request needs one object and one string, so these bounds refuse only what is not a request.
MAX_JSON_CONTAINERS = 64
MAX_JSON_ITEMS = 1000
# The web server's settings: h11 bounds a request's line and headers (16 KiB; httptools keeps any
# amount a client sends).
SERVER_OPTIONS: dict[str, Any] = {"http": "h11", "h11_max_incomplete_event_size": 16 * 2**10}


@dataclass(frozen=True)
class ServeSettings:
    """What the service's model process needs (it is started fresh, so it gets these, not a model)."""

    model: Path
    device: str = "auto"
    score_threshold: float | None = None
    batch_size: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    slicing: Slicing | None = None

    def predictor(self) -> Predictor:
        return Predictor.load(
            self.model,
            device=self.device,
            score_threshold=self.score_threshold,
            batch_size=self.batch_size,
            slicing=self.slicing,
        )


class Rejected(NamedTuple):
    """A request that gets no prediction: its HTTP status and the one sentence that says why."""

    status: int
    message: str


def refusal(rejected: Rejected, close: bool = False, retry_after: int | None = None) -> HTTPException:
    """The answer ``{"detail": message}`` with the rejection's status; with ``close``, the connection
    closes after it (a body left unread cannot be followed by another request)."""
    headers = {"Connection": "close"} if close else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return HTTPException(rejected.status, rejected.message, headers=headers or None)


async def within(receive: Receive, deadline: float) -> Message:
    """The next message of a request, or :class:`asyncio.TimeoutError` once ``deadline`` (loop time)
    has passed: a client that stops sending must not hold its connection and its part of a body."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise asyncio.TimeoutError
    return await asyncio.wait_for(receive(), left)


def json_image(body: bytes) -> bytes | Rejected:
    """The image of a JSON request ``{"image": base64}``, its shape bounded before it is parsed
    (:mod:`detlit.common.safe_json`; a request's base64 holds no bracket or comma)."""
    try:
        document = safe_json.parse(body, MAX_JSON_CONTAINERS, MAX_JSON_ITEMS)
    except safe_json.JsonBoundsError as err:
        return Rejected(400, f"the JSON request {err}; {HOW_TO_POST}")
    except ValueError:
        return Rejected(400, f"the request body is not valid JSON; {HOW_TO_POST}")
    encoded = document.get("image") if isinstance(document, dict) else None
    if not isinstance(encoded, str):
        return Rejected(400, f'the JSON request has no "image" string; {HOW_TO_POST}')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return Rejected(400, "the JSON request's \"image\" is not base64; encode the image file's bytes in base64")


async def form_image(request: Request, body: bytes) -> bytes | Rejected:
    """The file of a multipart form (field ``image``, or the first file), parsed by Starlette from
    the body already read."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, once).form()
    except Exception as err:  # the multipart parser's errors have no common base
        return Rejected(400, f"the form cannot be parsed ({err}); {HOW_TO_POST}")
    try:
        files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            return Rejected(400, f"the form holds no file; {HOW_TO_POST}")
        upload = next((value for key, value in files if key == "image"), files[0][1])
        return await upload.read()
    finally:
        await form.close()


class ImageBodies:
    """The one place a ``POST /predict`` body becomes an image's bytes, in the HTTP process, and the
    bounds on what clients can make that process hold: at most ``max_pending`` requests are read or
    answered at once (each holds its body, then its image, until its answer is sent), and a body must
    arrive within ``body_timeout`` seconds and hold at most ``max_bytes``. An empty, oversized,
    malformed or late body is answered here and never travels to the model's process.

    The service runs one event loop in its HTTP process, so the count needs no lock.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ):
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.max_pending = max_pending
        self.pending = 0

    @contextlib.contextmanager
    def place(self) -> Iterator[None]:
        """One of the ``max_pending`` places, held while the block runs; 503 when none is free, before
        a byte of the body is read (an unread body costs the process nothing)."""
        if self.pending >= self.max_pending:
            message = (
                f"the service already reads or answers {self.pending} requests, the most it holds at once "
                "(--max-pending-bodies); retry in a moment"
            )
            raise refusal(Rejected(503, message), close=True, retry_after=RETRY_AFTER)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def image(self, request: Request) -> bytes:
        """The image's bytes: the body itself, a form's file, or a JSON's ``image``.

        Raises:
            HTTPException: 400, 408 or 413 with the sentence that says why there is none.
        """
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        try:
            body = await self.body(request, deadline)
        except asyncio.TimeoutError:
            message = (
                f"the request body did not arrive within {self.body_timeout:g} s (--body-timeout); send it faster, "
                "or start the service with a larger --body-timeout"
            )
            raise refusal(Rejected(408, message), close=True) from None
        if isinstance(body, Rejected):
            raise refusal(body, close=True)
        if not body:
            raise refusal(Rejected(400, f"the request has no body; {HOW_TO_POST}"))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            image = json_image(body)
        elif content_type == "multipart/form-data":
            image = await form_image(request, body)
        else:  # anything else is the image itself, whatever it is labelled (curl labels a raw body as a form)
            image = body
        if isinstance(image, Rejected):
            raise refusal(image)
        return image

    async def body(self, request: Request, deadline: float) -> bytes | Rejected:
        """The whole request body, or 413 when it is larger than the limit (or the client went away);
        :class:`asyncio.TimeoutError` when it does not arrive by ``deadline``."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.discard(request.receive, deadline)
            return Rejected(413, self.too_large(f"{int(declared)} bytes"))
        chunks, size, more = [], 0, True
        while more:
            message = await within(request.receive, deadline)
            if message["type"] == "http.disconnect":  # nobody reads the answer
                return Rejected(400, "the client closed the connection before its body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await self.discard(request.receive, deadline)
                return Rejected(413, self.too_large(f"over {self.max_bytes} bytes"))
            chunks.append(chunk)
        return b"".join(chunks)

    async def discard(self, receive: Receive, deadline: float) -> None:
        """Read the rest of a refused body without keeping it, up to :data:`DISCARD_FACTOR` times the
        limit and until ``deadline``: a client that is still sending when the answer comes would
        otherwise see its connection reset instead of the answer. Beyond that the connection closes."""
        size, more = 0, True
        while more and size <= DISCARD_FACTOR * self.max_bytes:
            try:
                message = await within(receive, deadline)
            except asyncio.TimeoutError:
                return
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)

    def too_large(self, size: str) -> str:
        return f"the request body is {size}, more than the limit of {self.max_bytes} bytes; send a smaller image"


async def image_body(request: Request) -> AsyncIterator[bytes]:
    """The FastAPI dependency that reads a ``POST /predict``: the image's bytes, read by the app's
    :class:`ImageBodies` (``app.state.bodies``) while the request holds one of its places."""
    bodies: ImageBodies = request.app.state.bodies
    with bodies.place():
        yield await bodies.image(request)


# What the endpoint reads: LitServe hands decode_request's annotation to FastAPI as the endpoint's,
# and passes what it yields (picklable bytes) to the model's process. The place is held until the
# answer is sent ("request" scope).
ImageRequest = Annotated[bytes, Depends(image_body, scope="request")]


def decode_image(data: bytes, max_pixels: int) -> np.ndarray | Rejected:
    """An image's bytes as RGB uint8 (EXIF orientation applied), or why not. The size is checked from
    the header before any pixel is decoded (:func:`~detlit.data.images.open_image`)."""
    if not data:
        return Rejected(400, f"the image is empty (0 bytes); {HOW_TO_POST}")
    try:
        with open_image(data, max_pixels) as image:
            return to_rgb(image)
    except ImageTooLarge as err:
        return Rejected(
            413,
            f"the image is {err.size}, more than the limit of {max_pixels}; send a smaller image, or start the "
            "service with a larger --max-image-pixels",
        )
    except READ_ERRORS as err:
        reason = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(err))  # PIL names the in-memory file object
        return Rejected(400, f"the request body is not an image that can be read ({reason}); {HOW_TO_POST}")


def too_many_tiles(image: np.ndarray, slicing: Slicing) -> Rejected | None:
    """413 for an image that sliced inference would cut into more tiles than one image may take."""
    height, width = image.shape[:2]
    tiles = windows.count(height, width, slicing.size, slicing.overlap)
    if tiles <= MAX_TILES_PER_IMAGE:
        return None
    return Rejected(
        413,
        f"the image is {width}x{height}: in tiles of {slicing.size} px (overlap {slicing.overlap:g}) that is "
        f"{tiles:,} tiles, more than {MAX_TILES_PER_IMAGE:,}; send a smaller image, or start the service with a "
        "larger --slice",
    )


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


class RequestLog:
    """One log line per HTTP request, when its answer has been sent: method, path, status and
    milliseconds (``POST /predict 200 41.7 ms``). A plain ASGI layer: it reads no body and changes
    no message."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an application that fails before answering: 500

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            elapsed = 1000 * (time.perf_counter() - start)
            log.info("%s %s %d %.1f ms", scope.get("method", ""), scope.get("path", ""), status, elapsed)


class PromptBatches(BatchedLoop):
    """LitServe's batched loop, but a lone request runs at once: the batch timeout starts only once a
    second request is waiting. LitServe's own loop waits ``batch_timeout`` for every batch to fill, so
    one client waited that long on every request for a batch that never fills (and with a timeout of
    0 its loop spins a core while idle). Concurrent clients are still batched: when requests are
    waiting behind the first, the batch takes them and waits up to ``batch_timeout`` for the rest.
    """

    def get_batch_requests(self, lit_api: litserve.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        gather = functools.partial(self.gather, lit_api, request_queue, transport)
        batch, expired = gather(1, IDLE_WAIT)
        if not batch:
            return batch, expired
        waiting, late = gather(lit_api.max_batch_size - 1, 0.0)  # those already waiting, without a wait
        batch, expired = batch + waiting, expired + late
        if waiting and len(batch) < lit_api.max_batch_size and lit_api.batch_timeout > 0:
            rest, late = gather(lit_api.max_batch_size - len(batch), lit_api.batch_timeout)
            batch, expired = batch + rest, expired + late
        return batch, expired

    def gather(
        self, lit_api: litserve.LitAPI, request_queue: Any, transport: Any, most: int, seconds: float
    ) -> tuple[list, list]:
        """Up to ``most`` requests within ``seconds`` (0: those waiting now), and those that timed out:
        LitServe's own gathering, its checks of request timeouts and of the stop signal included, on a
        copy of the API that asks for that many in that time."""
        view = copy.copy(lit_api)
        view.max_batch_size, view.batch_timeout = most, seconds
        return super().get_batch_requests(view, request_queue, transport)


class DetectionAPI(litserve.LitAPI):
    """The service's LitServe API: decode (or reject) each image, predict a batch, answer each."""

    def __init__(self, settings: ServeSettings, max_batch_size: int, batch_timeout: float):
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH, loop=PromptBatches()
        )
        self.settings = settings

    def setup(self, device: str) -> None:
        self.predictor = self.settings.predictor()
        names, values = self.predictor.class_names, self.predictor.score_thresholds.tolist()
        self.thresholds = dict(zip(names, values, strict=True))

    def decode_request(self, request: ImageRequest) -> np.ndarray | Rejected:
        image = decode_image(request, self.settings.max_pixels)
        slicing = self.settings.slicing
        if isinstance(image, Rejected) or slicing is None:
            return image
        return too_many_tiles(image, slicing) or image

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)  # images of several sizes: the Predictor groups them by shape

    def predict(self, inputs: list[np.ndarray | Rejected]) -> list[Prediction | Rejected]:
        images = [x for x in inputs if not isinstance(x, Rejected)]
        predicted = iter(self.predictor.predict(images) if images else [])
        return [x if isinstance(x, Rejected) else next(predicted) for x in inputs]

    def unbatch(self, output: Sequence[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: Prediction | Rejected) -> Any:
        # A rejected image answers alone: raising here would fail every request of its batch.
        if isinstance(output, Rejected):
            return JSONResponse({"detail": output.message}, status_code=output.status)
        return response(output, self.thresholds)


MAIN_PROCESS = os.getpid()


STOPPING = False  # the main process is shutting the service down


def _interrupt(signum: int, frame: Any) -> None:
    global STOPPING
    if os.getpid() == MAIN_PROCESS:
        if STOPPING:  # a second SIGTERM or Ctrl-C while the processes end: the stop is under way
            log.info("stopping already (signal %d): waiting for the service's processes to end", signum)
            return
        STOPPING = True
        raise KeyboardInterrupt
    # A forked HTTP process inherits this handler; uvicorn re-raises the signal once it has shut
    # down, expecting the default: end quietly.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def pixel_ceiling() -> int:
    """The most pixels detlit decodes in any image (:func:`~detlit.data.images.max_image_pixels`): a
    larger ``--max-image-pixels`` would promise what is never served."""
    return max_image_pixels()


MAX_BATCH = 64  # a batch holds this many decoded images at once, each up to --max-image-pixels x 3 bytes
MAX_BATCH_TIMEOUT = 60.0  # a request is answered within REQUEST_TIMEOUT; a minute filling a batch serves no one
MAX_BODY_BYTES = 2**30  # a body is held whole, then its image, by each of --max-pending-bodies requests
BODY_TIMEOUTS = (1.0, 600.0)  # a slow upload needs time; ten minutes is more than any client of an image needs
MAX_PENDING = 1024  # each holds a body: together they bound the memory clients can make the service take


@dataclass(frozen=True)
class Limits:
    """The service's numeric settings: what a batch, a request and all requests together may hold,
    and how long they may take. :meth:`check` holds each to its range."""

    batch_size: int = 4
    batch_timeout: float = 0.01
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_pending: int = DEFAULT_MAX_PENDING

    def check(self) -> None:
        """Raise one sentence for the first setting that is not a finite number in its range (nan and
        inf included: an infinite batch timeout stopped LitServe, a nan one made it wait forever).

        Raises:
            ConfigError: naming the option, its value and its range.
        """
        low, high = BODY_TIMEOUTS
        ranges.whole("--batch-size", self.batch_size, 1, MAX_BATCH)
        ranges.real("--batch-timeout", self.batch_timeout, 0, MAX_BATCH_TIMEOUT, fix=_seconds(0, MAX_BATCH_TIMEOUT))
        ranges.whole("--max-image-bytes", self.max_bytes, 1, MAX_BODY_BYTES, fix=f"use 1 to {MAX_BODY_BYTES} bytes")
        ceiling = pixel_ceiling()
        pixels = f"use 1 to {ceiling} pixels (detlit decodes no larger image; DETLIT_MAX_IMAGE_PIXELS sets that limit)"
        ranges.whole("--max-image-pixels", self.max_pixels, 1, ceiling, fix=pixels)
        ranges.real("--body-timeout", self.body_timeout, low, high, fix=_seconds(low, high))
        ranges.whole("--max-pending-bodies", self.max_pending, 1, MAX_PENDING)


def _seconds(low: float, high: float) -> str:
    return f"use a number of seconds from {ranges.show(low)} to {ranges.show(high)}"


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
    score_threshold: float | None = None,
    limits: Limits | None = None,
    slicing: Slicing | None = None,
) -> None:
    """``python -m detlit.serve``: serve ``model`` (a checkpoint or an exported model) until stopped;
    with ``slicing``, every image is predicted from its tiles (:mod:`detlit.inference.slicing`).

    The settings are checked and the model is loaded once here first, so a bad setting, file or
    device ends in one sentence before the service starts.

    Raises:
        ConfigError: a bad setting; WeightsError: the model cannot be loaded.
    """
    limits = limits or Limits()
    limits.check()
    if host not in HOSTS:
        raise ConfigError(f"--host {host} cannot be served by LitServe; use one of {', '.join(HOSTS)}")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--port {port} is outside 1024..65535; choose a port in that range")
    if not model.is_file():
        raise ConfigError(
            f"{model} does not exist; pass a .ckpt of a training run or a model of python -m detlit.export"
        )
    require_free_port(host, port)
    settings = ServeSettings(model, device, score_threshold, limits.batch_size, limits.max_pixels, slicing)
    checked = settings.predictor()
    facts = checked.facts
    info = {"model": str(model), "device": str(checked.device), **checked.settings(), **facts.as_json()}
    del checked
    server = litserve.LitServer(
        DetectionAPI(settings, limits.batch_size, limits.batch_timeout),
        accelerator="cpu",  # LitServe's device choice is only handed to setup; the Predictor picks its own
        devices=1,
        workers_per_device=1,
        timeout=REQUEST_TIMEOUT,
        model_metadata=info,
    )
    server.app.add_middleware(RequestLog)
    server.app.state.bodies = ImageBodies(
        max_bytes=limits.max_bytes, body_timeout=limits.body_timeout, max_pending=limits.max_pending
    )
    # LitServe shuts its processes down on KeyboardInterrupt: SIGTERM (kill, docker stop) and a SIGINT
    # that a shell set to be ignored in background jobs end the service the same way.
    global MAIN_PROCESS
    MAIN_PROCESS = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    log.info("serving %s on http://%s:%d%s (health: /health)", model, host, port, API_PATH)
    try:
        server.run(
            host=host, port=port, num_api_servers=1, generate_client_file=False, log_level="warning", **SERVER_OPTIONS
        )
    finally:
        log.info("service on http://%s:%d stopped", host, port)
