"""TorchScript files from someone else, checked before torch loads them: only the operators of a detector.

A TorchScript file is a program, not a table of weights: its archive holds code (a Python-like
language that ``torch.jit.load`` compiles) that runs when the model is called, and a class that
defines ``__setstate__`` runs code as soon as the file is loaded. That code can call any operator
torch registers, among them ones that touch the file system (``torch.from_file(path, shared=True)``
creates and maps a file), so "load only TorchScript you trust" is PyTorch's own advice.

detlit's exports are traces of a Faster R-CNN (:mod:`detlit.deploy.export`): their code calls a
few dozen tensor operators, torchvision's ``nms`` and ``roi_align``, and methods of their own
modules. :func:`check_torchscript` reads every code file of the archive (after
:func:`~detlit.common.archives.check_archive` has bounded it) and refuses, in one sentence, a file
whose code names any ``torch.*`` or ``ops.*`` function outside :data:`OPERATORS`, defines
``__setstate__`` or ``__getstate__``, or cannot be read as code. It runs before ``torch.jit.load``,
so nothing in a refused file runs. What remains is torch's own handling of well-formed calls of
these operators on the file's tensors.

The allowed operators are those the exports of every Faster R-CNN of the architecture menu call
(C4, DC5 and FPN heads; ResNet-50/101, ResNeXt-101; frozen BatchNorm, BatchNorm, GroupNorm;
``tests/test_architectures.py`` exports each), plus the few activations and norms that overrides
can switch in; export checks its own file the same way, so a model detlit writes is a model
detlit loads.
"""

from __future__ import annotations

import ast
import zipfile
from collections.abc import Iterator
from pathlib import Path

from detlit.errors import WeightsError

OPERATORS = frozenset(
    {
        # what the traced detectors of the menu call
        "ops.prim.NumToTensor",
        "ops.prim.RaiseException",
        "ops.prim.device",
        "ops.torchvision.nms",
        "ops.torchvision.roi_align",
        "torch.__and__",
        "torch.__not__",
        "torch._convolution",
        "torch.add",
        "torch.add_",
        "torch.arange",
        "torch.batch_norm",
        "torch.cat",
        "torch.clamp",
        "torch.contiguous",
        "torch.device",
        "torch.div",
        "torch.empty",
        "torch.eq",
        "torch.exp",
        "torch.expand",
        "torch.flatten",
        "torch.floor",
        "torch.floor_divide",
        "torch.full",
        "torch.group_norm",
        "torch.gt",
        "torch.index",
        "torch.index_put_",
        "torch.linear",
        "torch.log2",
        "torch.max",
        "torch.max_pool2d",
        "torch.mean",
        "torch.meshgrid",
        "torch.mul",
        "torch.narrow",
        "torch.nonzero",
        "torch.nonzero_numpy",
        "torch.numel",
        "torch.pad",
        "torch.permute",
        "torch.relu",
        "torch.relu_",
        "torch.repeat_interleave",
        "torch.reshape",
        "torch.select",
        "torch.size",
        "torch.slice",
        "torch.softmax",
        "torch.sort",
        "torch.sqrt",
        "torch.stack",
        "torch.sub",
        "torch.tensor",
        "torch.to",
        "torch.unbind",
        "torch.unsqueeze",
        "torch.unsqueeze_",
        "torch.upsample_nearest2d",
        "torch.view",
        "torch.zeros",
        # activations and norms a model.overrides setting can switch in
        "torch.sigmoid",
        "torch.gelu",
        "torch.silu",
        "torch.leaky_relu",
        "torch.layer_norm",
        "torch.instance_norm",
        "torch.avg_pool2d",
        "torch.adaptive_avg_pool2d",
    }
)
"""Every ``torch.*`` and ``ops.*`` name a detlit TorchScript file may use (see the module docstring)."""

HOOKS = ("__setstate__", "__getstate__")
"""Methods TorchScript calls on its own when it loads or saves an object."""

FIX = "export the model with python -m detlit.export (or use its ONNX export, which runs no code)"


def code_members(archive: zipfile.ZipFile) -> list[str]:
    """The archive's TorchScript code files (``<name>/code/**.py``)."""
    return [name for name in archive.namelist() if "/code/" in name and name.endswith(".py")]


def _names(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every whole dotted name rooted at ``torch`` or ``ops`` in ``tree``, with its line."""
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id in ("torch", "ops"):
            yield ".".join([current.id, *reversed(parts)]), node.lineno


def check_code(text: bytes, where: str) -> None:
    """Refuse one code file of a TorchScript archive (see the module docstring).

    Raises:
        WeightsError: the code is not readable, names an operator outside :data:`OPERATORS`, or
            defines a load hook.
    """
    try:
        tree = ast.parse(text.decode("utf-8"))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as err:
        raise WeightsError(f"{where} holds code that cannot be read ({type(err).__name__}); {FIX}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in HOOKS:
            raise WeightsError(
                f"{where} line {node.lineno} defines {node.name}, which runs when the file is loaded; detlit's "
                f"exports define none, so the file was not loaded: {FIX}"
            )
    foreign = sorted({(line, name) for name, line in _names(tree) if name not in OPERATORS})
    if foreign:
        line = foreign[0][0]
        names = ", ".join(dict.fromkeys(name for _, name in foreign))
        raise WeightsError(
            f"{where} line {line} calls {names}, which a detector exported by detlit never calls (a TorchScript "
            f"file is a program: it could touch files), so the file was not loaded; {FIX}"
        )


def check_torchscript(path: Path, option: str = "") -> None:
    """Refuse, before torch loads it, a TorchScript file whose code is not a detlit detector's.

    Call :func:`~detlit.common.archives.check_archive` first: it bounds what reading the code takes.

    Raises:
        WeightsError: not a zip archive, no code, unreadable code, an operator outside
            :data:`OPERATORS`, or a load hook (one sentence naming the file, the code file and line).
    """
    named = f"{option} {path}" if option else str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = code_members(archive)
            if not members:
                raise WeightsError(f"{named} holds no TorchScript code: it is not a TorchScript model; {FIX}")
            for member in members:
                check_code(archive.read(member), f"{named} ({member})")
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise WeightsError(f"{named} is not a TorchScript file ({err}); {FIX}") from err
