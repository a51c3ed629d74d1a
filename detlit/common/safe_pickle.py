"""The one reader of pickles that someone else may have written: model-zoo weights, nothing else.

A pickle is a program: every class or function it names is imported and called while it loads,
so ``pickle.load`` of a downloaded file runs whatever code its author chose (``os.system`` through
a ``__reduce__`` is one line). detectron2's model zoo and Detectron1/Caffe2 ship their weights as
``.pkl`` files that hold numpy arrays in plain dicts, so :func:`load_pickle` admits only the names
such files use and refuses any other in one sentence naming the file and the name it asked for:

* numpy arrays, dtypes and scalars, under numpy 1's (``numpy.core``) and numpy 2's
  (``numpy._core``) module names, in the forms protocols 2 to 5 write them;
* ``_codecs.encode``, how a protocol-2 pickle stores bytes (as latin-1 text);
* ``collections.OrderedDict`` and the plain containers, numbers and strings that need no name.

Some of these allocate what they are told to, so they are admitted in a checked form: an array
is rebuilt only from the empty placeholder numpy pickles write (its data then comes from the
file; ``numpy.ndarray`` itself cannot be called), ``bytes`` and ``bytearray`` only as protocol 2
writes them (empty, or from bytes), and ``_codecs.encode`` only to latin-1; so memory stays
within a small multiple of the file's size.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detlit.errors import WeightsError

NUMPY_CORES = ("numpy.core", "numpy._core")
LATIN_1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


class _ArrayType:
    """Stands for ``numpy.ndarray``, which numpy's pickles name only as the type ``_reconstruct``
    builds: called directly, ``ndarray(shape)`` would allocate whatever shape the file says."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _ArrayType:
        raise pickle.UnpicklingError("a call of numpy.ndarray (numpy pickles name it only as an array's type)")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, for the empty placeholder array that pickles fill from their own data."""
    if subtype is not _ArrayType or int(np.prod(shape)) != 0:
        raise pickle.UnpicklingError(f"an array placeholder of shape {shape!r} (numpy pickles write an empty one)")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``, as protocol 2 stores bytes: latin-1 only."""
    if not isinstance(text, str) or encoding.lower() not in LATIN_1:
        raise pickle.UnpicklingError(f"_codecs.encode to {encoding!r} (protocol 2 stores bytes as latin-1)")
    return text.encode("latin-1")


def _bytes(*args: Any) -> bytes:
    """``bytes()``, as protocol 2 stores empty bytes; ``bytes(n)`` would allocate what the file says."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments (protocol 2 writes it without)")
    return b""


def _bytearray(data: Any = b"") -> bytearray:
    """``bytearray`` of bytes the file holds; ``bytearray(n)`` would allocate what the file says."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"bytearray of a {type(data).__name__} (pickles write it from bytes)")
    return bytearray(data)


def _admitted() -> dict[tuple[str, str], Callable[..., Any] | type]:
    from collections import OrderedDict

    names: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): _ArrayType,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytes"): _bytes,
        ("builtins", "bytearray"): _bytearray,
    }
    scalar = _scalar()
    for core in NUMPY_CORES:
        names[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        names[(f"{core}.multiarray", "scalar")] = scalar
        names[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return names


def _scalar() -> Callable[..., Any]:
    """numpy's ``multiarray.scalar`` (a scalar from its dtype and bytes), wherever this numpy keeps it."""
    core = getattr(np, "_core", None) or np.core
    found: Callable[..., Any] = core.multiarray.scalar
    return found


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5): an array over bytes the file holds."""
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape, order="F" if order == "F" else "C")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that finds only :func:`_admitted` names and refuses every other one."""

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source = source
        self.names = _admitted()

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name builtins and copy_reg by their old names.
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        found = self.names.get((module, name))
        if found is None:
            raise WeightsError(
                f"{self.source} asks for {module}.{name}, which a weights file never needs (loading it could run "
                "code), so it was not loaded; use weights from detectron2's model zoo, a .pth file of tensors or a "
                "detlit .ckpt"
            )
        return found


def load_pickle(path: Path, source: str | None = None) -> Any:
    """The content of a pickled weights file, built from the admitted names only.

    Args:
        path: the ``.pkl`` file.
        source: how the sentence names it (default: ``weights file PATH``).

    Raises:
        WeightsError: the pickle names anything else (nothing it names is imported or called).
        pickle.UnpicklingError, EOFError, ValueError, TypeError: the file is not a pickle of that
            kind (the caller words these).
    """
    named = source or f"weights file {path}"
    with path.open("rb") as handle:
        # latin-1 reads Python 2's byte strings, as detectron2 does.
        return RestrictedUnpickler(handle, named, encoding="latin1").load()
