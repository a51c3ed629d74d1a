"""The corpus of bad inputs, area: The HTTP service's options checked at start."""

from __future__ import annotations

from .corpus import Case, Workspace

CASES: list[Case] = []


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
