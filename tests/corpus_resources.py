"""The corpus of bad inputs, area: files that would take unbounded memory or time (archive
bombs, image bombs, exported metadata)."""

from __future__ import annotations

from .corpus import Case, Workspace

CASES: list[Case] = []


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
