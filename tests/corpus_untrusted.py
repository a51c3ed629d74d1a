"""The corpus of bad inputs, area: Files that would run code: pickles, yaml tags, config names from checkpoints."""

from __future__ import annotations

from .corpus import Case, Workspace

CASES: list[Case] = []


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
