"""The corpus of bad inputs, area: Outputs written whole or not at all: pairs, locks, outputs that are inputs, paths."""

from __future__ import annotations

from .corpus import Case, Workspace

CASES: list[Case] = []


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
