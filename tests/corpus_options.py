"""The corpus of bad inputs, area: numeric options and config fields out of range, and names
the filesystem cannot take."""

from __future__ import annotations

from .corpus import Case, Workspace

CASES: list[Case] = []


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
