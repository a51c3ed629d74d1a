"""The shape of the corpus of bad inputs (``tests/test_bad_inputs.py``), shared by its areas.

A :class:`Case` names a mistake (``what``, as docs/errors.md lists it), the command, its arguments
in a prepared :class:`Workspace`, the one sentence expected (a regular expression) and the exit
status. Each area of the corpus (``tests/corpus_*.py``) holds a ``CASES`` list and a
``prepare(workspace)`` that writes the crafted files its cases name into ``workspace.root``.
Crafted files that would run code try to create ``workspace.marker``; the corpus checks after
every case that it does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .conftest import REPO, tiny_cli_args


@dataclass(frozen=True)
class Workspace:
    root: Path
    sample: Path  # train.json, val.json, train/, val/
    ckpt: Path  # a tiny model after a few steps (2 epochs max, not finished)
    finished: Path  # the same run's checkpoint after its last epoch (max_epochs 1)
    runs: Path  # a runs folder holding runs/sample/version_0
    taken_port: int  # a port on 127.0.0.1 that another socket listens on

    @property
    def marker(self) -> Path:
        """The file a crafted input would create if its code ran."""
        return self.root / "MARKER-code-ran"

    def fit_args(self, *extra: str) -> list[str]:
        args = [f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *tiny_cli_args(self.sample)]
        args += [f"--trainer.logger.init_args.save_dir={self.runs}", "--trainer.max_steps=1"]
        return [*args, "--trainer.enable_progress_bar=false", *extra]

    def format(self, text: str) -> str:
        """``text`` with ``{root}``, ``{sample}``, ``{ckpt}``, ``{port}`` and ``{marker}`` filled in."""
        return text.format(root=self.root, sample=self.sample, ckpt=self.ckpt, port=self.taken_port, marker=self.marker)


@dataclass(frozen=True)
class Case:
    """One mistake: ``what`` (as docs/errors.md lists it), the command and its arguments, the answer."""

    what: str
    command: str
    argv: Callable[[Workspace], list[str]]
    expect: str  # a regular expression the one error sentence matches
    status: int = 2


def fit(*extra: str) -> Callable[[Workspace], list[str]]:
    """``fit`` of the tiny model on the workspace's sample, with ``extra`` arguments (formatted)."""
    return lambda w: w.fit_args(*(w.format(e) for e in extra))


def args(*parts: str) -> Callable[[Workspace], list[str]]:
    """Command arguments, each formatted with the workspace's paths."""
    return lambda w: [w.format(p) for p in parts]
