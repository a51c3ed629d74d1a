"""The exported-model format: the metadata json beside a ``.torchscript``, ``.onnx`` or ``.xml`` file,
written and read here only.

``python -m detlit.export`` writes ``<model file>.json`` (:func:`metadata_path`) beside the model
file; every loader reads it back before the model runs. :class:`ExportedModel` is that json as one
value: :meth:`~ExportedModel.to_json` writes it, :meth:`~ExportedModel.from_json` reads it back,
checked. Both files may come from someone else, so a reader (:meth:`ExportedModel.read`) takes the
metadata only when it is a regular file within bounds (size, and lists and objects counted from the
raw bytes before they are parsed: :mod:`detlit.common.safe_json`), every model fact in its range
(:meth:`~detlit.inference.facts.ModelFacts.from_json`), and the model file beside it the one it
was written with (its sha256 and size), before the model itself is loaded.

Versions: 2 (detlit 0.3) records the model file's sha256 and size (``file_sha256``,
``file_bytes``); 1 (detlit 0.2) does not, and is read with a warning that says so: refusing it would
stop every model exported before, and the other checks still apply. Everything else is the same in
both: the format, the facts, the input and outputs the model file takes and gives, and where it
came from (the checkpoint, the versions, the parity figures), which loading does not need.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from detlit.common import safe_json
from detlit.common.files import sha256_file
from detlit.common.paths import not_a_file
from detlit.errors import WeightsError
from detlit.inference.facts import FIX, ModelFacts

log = logging.getLogger(__name__)

Format = Literal["torchscript", "onnx", "openvino"]
FORMATS: tuple[Format, ...] = get_args(Format)
SUFFIXES: dict[Format, str] = {"torchscript": ".torchscript", "onnx": ".onnx", "openvino": ".xml"}
WEIGHTS_SUFFIX = ".bin"
"""An OpenVINO model is two files: the graph (``.xml``) and its weights (``.bin``) beside it."""
Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
METADATA_KIND = "detlit exported model"
METADATA_VERSION = 2
"""2: the metadata names the model file's sha256 and size (``file_sha256``, ``file_bytes``)."""
METADATA_MAX_BYTES = 16 * 2**20
"""Largest metadata json read: an export writes a few kilobytes."""
METADATA_MAX_CONTAINERS = 256
"""Most objects and lists the metadata may hold (outside its strings), which bounds its nesting too:
an export writes about ten."""
RESIZE_RULE = "shortest edge to min_size, longest edge at most max_size (detectron2 ResizeShortestEdge)"
OUTPUTS = {
    "boxes": "float32 (N, 4) XYXY in the input image's pixels",
    "scores": "float32 (N,)",
    "classes": "int64 (N,) contiguous labels: class_names[i], category_ids[i]",
}
"""What the model file returns (the metadata says so for other tools; detlit's runtimes know it)."""


def metadata_path(model: Path) -> Path:
    """The metadata json of an exported model file: ``last.onnx`` -> ``last.onnx.json``."""
    return model.with_name(model.name + ".json")


def weights_path(model: Path) -> Path:
    """The weights file beside an OpenVINO graph: ``last.xml`` -> ``last.bin``."""
    return model.with_suffix(WEIGHTS_SUFFIX)


def is_exported(path: Path) -> bool:
    """Whether ``path`` names an exported model file (by its suffix)."""
    return path.suffix in SUFFIXES.values()


@dataclass(frozen=True)
class ExportedModel:
    """The metadata of one exported model file.

    Attributes:
        format: ``torchscript``, ``onnx`` or ``openvino``.
        file: the model file's name when it was written (a model file may be renamed: not checked).
        facts: what running the model needs besides its weights (class names, thresholds, resize).
        file_sha256: the model file's sha256; None in version 1 metadata, which did not record it.
        file_bytes: the model file's size; None in version 1 metadata.
        weights_sha256: an OpenVINO model's weights file's (``.bin``) sha256; None for other formats.
        weights_bytes: the weights file's size; None for other formats.
        precision: ``fp32``, ``int8`` for a quantized model, or ``fp16`` for a float16 one.
        accuracy: for ``int8`` and ``fp16``, the accuracy check against the fp32 model (its AP and
            AP50, both models' figures) and the measured speed of both, with the device measured on.
        version: the metadata version (:data:`METADATA_VERSION` when detlit writes it).
        created: when it was written (ISO 8601, UTC).
        source: the checkpoint it came from (path, sha256) and the run's dataset fingerprint.
        versions: the versions of detlit and its stack that wrote it.
        parity: the parity figures of the export (:mod:`detlit.deploy.parity`).
        seconds: how long the export and its parity check took.
    """

    format: Format
    file: str | None
    facts: ModelFacts
    file_sha256: str | None = None
    file_bytes: int | None = None
    weights_sha256: str | None = None
    weights_bytes: int | None = None
    precision: Precision = "fp32"
    accuracy: dict[str, Any] | None = None
    version: int | None = METADATA_VERSION
    created: str | None = None
    source: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    seconds: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        model: bytes,
        kind: Format,
        file: str,
        facts: ModelFacts,
        *,
        source: dict[str, Any] | None = None,
        versions: dict[str, Any] | None = None,
        parity: dict[str, Any] | None = None,
        seconds: dict[str, Any] | None = None,
        weights: bytes | None = None,
        precision: Precision = "fp32",
        accuracy: dict[str, Any] | None = None,
    ) -> ExportedModel:
        """The metadata of the ``kind`` model file ``model`` (its bytes; an OpenVINO model's
        ``weights`` too) being written now, as ``file``."""
        return cls(
            format=kind,
            file=file,
            facts=facts,
            file_sha256=hashlib.sha256(model).hexdigest(),
            file_bytes=len(model),
            weights_sha256=None if weights is None else hashlib.sha256(weights).hexdigest(),
            weights_bytes=None if weights is None else len(weights),
            precision=precision,
            accuracy=accuracy,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            source=source,
            versions=versions,
            parity=parity,
            seconds=seconds,
        )

    def to_json(self) -> dict[str, Any]:
        """The metadata as plain JSON values, in the order export has always written them."""
        document: dict[str, Any] = {"kind": METADATA_KIND, "version": self.version, "format": self.format}
        document["file"] = self.file
        if self.file_sha256 is not None:
            document.update(file_sha256=self.file_sha256, file_bytes=self.file_bytes)
        if self.weights_sha256 is not None:
            document.update(weights_sha256=self.weights_sha256, weights_bytes=self.weights_bytes)
        if self.precision != "fp32":
            document["precision"] = self.precision
        if self.created is not None:
            document["created"] = self.created
        document["input"] = {
            "name": "image",
            "dtype": "uint8",
            "shape": [3, "height", "width"],
            "channel_order": self.facts.image_format,
            "resize": {"rule": RESIZE_RULE, "min_size": self.facts.min_size, "max_size": self.facts.max_size},
        }
        document["outputs"] = dict(OUTPUTS)
        document["facts"] = self.facts.as_json()
        described = {
            "source": self.source,
            "versions": self.versions,
            "parity": self.parity,
            "accuracy": self.accuracy,
            "seconds": self.seconds,
        }
        document.update({key: value for key, value in described.items() if value is not None})
        return document

    def to_bytes(self) -> bytes:
        """The metadata file's bytes: the json, indented by one space, UTF-8."""
        return json.dumps(self.to_json(), indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, document: Any, path: Path) -> ExportedModel:
        """The metadata that :meth:`to_json` wrote, checked: it may come from someone else.

        Args:
            document: the parsed json.
            path: the metadata file, for the sentences.

        Raises:
            WeightsError: not the metadata of a detlit exported model, a model fact missing or out
                of its range, version 2 (or later) metadata without the model file's sha256 and
                size, or a format detlit does not run.
        """
        if not isinstance(document, dict) or document.get("kind") != METADATA_KIND:
            raise WeightsError(f"{path} is not the metadata of a detlit exported model; {FIX}")
        facts = ModelFacts.from_json(document.get("facts", {}), str(path))
        version = document.get("version")
        sha256, size = document.get("file_sha256"), document.get("file_bytes")
        recorded = not (sha256 is None and version == 1)  # version 1 did not record them
        if recorded and (not isinstance(sha256, str) or not isinstance(size, int)):
            raise WeightsError(f"{path} lacks the model file's sha256 and size (file_sha256, file_bytes); {FIX}")
        kind = document.get("format")
        if kind not in FORMATS:
            raise WeightsError(f"{path} names format {kind!r}; detlit runs {', '.join(FORMATS)}")
        weights_sha256, weights_bytes = document.get("weights_sha256"), document.get("weights_bytes")
        if kind == "openvino" and (not isinstance(weights_sha256, str) or not isinstance(weights_bytes, int)):
            raise WeightsError(
                f"{path} lacks the weights file's sha256 and size (weights_sha256, weights_bytes); {FIX}"
            )
        precision = document.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise WeightsError(f"{path} names precision {precision!r}; detlit runs {', '.join(PRECISIONS)}: {FIX}")
        file, created = document.get("file"), document.get("created")
        return cls(
            format=cast(Format, kind),
            file=file if isinstance(file, str) else None,
            facts=facts,
            file_sha256=sha256 if recorded else None,
            file_bytes=size if recorded else None,
            weights_sha256=weights_sha256 if kind == "openvino" else None,
            weights_bytes=weights_bytes if kind == "openvino" else None,
            precision=cast(Precision, precision),
            accuracy=_object(document, "accuracy"),
            version=version if isinstance(version, int) and not isinstance(version, bool) else None,
            created=created if isinstance(created, str) else None,
            source=_object(document, "source"),
            versions=_object(document, "versions"),
            parity=_object(document, "parity"),
            seconds=_object(document, "seconds"),
        )

    @classmethod
    def read(cls, model: Path) -> ExportedModel:
        """The metadata beside the exported model file ``model``, read within bounds and checked
        (:func:`read_metadata`, :meth:`from_json`) with the model file it names (:meth:`check_file`).

        Raises:
            WeightsError: see :func:`read_metadata`, :meth:`from_json` and :meth:`check_file`.
        """
        exported = cls.from_json(read_metadata(model), metadata_path(model))
        exported.check_file(model)
        return exported

    def check_file(self, model: Path) -> None:
        """Refuse a model file that is not the one this metadata was written with.

        An interrupted ``export --overwrite``, or files copied by hand, can leave one export's model
        beside another's metadata; the sha256 (and size) the metadata records tells them apart before
        the model is loaded. Version 1 metadata recorded neither: the model is used with a warning.

        Raises:
            WeightsError: the model file's size or sha256 differ from those recorded.
        """
        path = metadata_path(model)
        if self.file_sha256 is None:
            log.warning(
                "%s does not record its model file's sha256 (exported by an earlier detlit): it cannot be told apart "
                "from the metadata of another export; export the model again to have it checked",
                path,
            )
            return
        if model.stat().st_size != self.file_bytes or sha256_file(model) != self.file_sha256:
            raise WeightsError(
                f"{model} is not the model file its metadata {path} was written with (their sha256 differ): the two "
                f"come from different exports; {FIX}"
            )
        if self.weights_sha256 is not None:
            weights = weights_path(model)
            problem = not_a_file(weights)
            if problem is not None:
                raise WeightsError(f"the weights file of {model}, {weights}, {problem}; {FIX}")
            if weights.stat().st_size != self.weights_bytes or sha256_file(weights) != self.weights_sha256:
                raise WeightsError(
                    f"{weights} is not the weights file its metadata {path} was written with (their sha256 differ): "
                    f"the two come from different exports; {FIX}"
                )


def _object(document: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A descriptive part of the metadata (``source``, ``parity``, ...) when it is a json object; loading
    never uses them, so anything else is left out rather than refused."""
    value = document.get(key)
    return value if isinstance(value, dict) else None


def read_metadata(model: Path) -> Any:
    """The parsed metadata json beside an exported model file, read within bounds (not yet checked:
    :meth:`ExportedModel.from_json` does that).

    Raises:
        WeightsError: the model file or its metadata is missing or not a regular file, the metadata
            is larger than :data:`METADATA_MAX_BYTES`, holds more than :data:`METADATA_MAX_CONTAINERS`
            objects and lists, or is not JSON.
    """
    problem = not_a_file(model)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise WeightsError(f"exported model {model} {problem}; write one with python -m detlit.export")
    path = metadata_path(model)
    if not path.exists():
        raise WeightsError(f"{path} is missing: an exported model needs the metadata json written beside it; {FIX}")
    if not path.is_file():
        raise WeightsError(f"{path} is not a regular file; {FIX}")
    try:
        with path.open("rb") as handle:
            data = handle.read(METADATA_MAX_BYTES + 1)
    except OSError as err:
        raise WeightsError(f"{path} cannot be read ({err.strerror}); {FIX}") from err
    if len(data) > METADATA_MAX_BYTES:
        raise WeightsError(
            f"{path} is larger than the {METADATA_MAX_BYTES // 2**20} MiB the metadata of an exported model may be "
            f"(an export writes a few kilobytes); {FIX}"
        )
    try:
        return safe_json.parse(data, METADATA_MAX_CONTAINERS)
    except safe_json.JsonBoundsError as err:
        raise WeightsError(f"{path} {err} (an export writes about ten); {FIX}") from None
    except ValueError as err:
        raise WeightsError(f"{path} is not readable JSON ({err}); {FIX}") from err
