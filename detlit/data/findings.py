"""Findings: what a data check found, how bad it is, and the repair ``--fix`` would apply.

A check never raises on a data problem; it returns findings. A :class:`Repair` names a record by
its position in the json's ``images`` / ``annotations`` list (ids may be missing or duplicated,
positions never are) and what to do with it, so a repaired copy keeps every other field as is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    ERROR = "error"  # training would fail or learn something wrong
    WARNING = "warning"  # probably a mistake; training works
    INFO = "info"  # worth knowing; nothing to repair

    @property
    def log_level(self) -> int:
        return {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}[self.value]


@dataclass(frozen=True)
class Repair:
    """One change to the raw json: ``drop`` a record, or ``set`` some of its fields."""

    section: str  # "images" | "annotations" | "categories"
    index: int  # position in that list
    action: str  # "drop" | "set"
    values: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "drop":
            return f"drop {self.section}[{self.index}]"
        changes = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"set {self.section}[{self.index}] {changes}"


@dataclass(frozen=True)
class Finding:
    """One problem (or fact) about a dataset."""

    severity: Severity
    kind: str  # stable identifier, e.g. "missing_file"
    message: str
    image_id: Any = None
    annotation_id: Any = None
    fix: str | None = None  # what the repair does, in words
    repairs: tuple[Repair, ...] = ()

    @property
    def repairable(self) -> bool:
        return bool(self.repairs)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity.value, "kind": self.kind, "message": self.message}
        if self.image_id is not None:
            out["image_id"] = self.image_id
        if self.annotation_id is not None:
            out["annotation_id"] = self.annotation_id
        if self.fix:
            out["fix"] = self.fix
        return out


def count_by(findings: Iterable[Finding]) -> Counter[tuple[Severity, str]]:
    """Number of findings per (severity, kind)."""
    return Counter((f.severity, f.kind) for f in findings)


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def log_summary(findings: list[Finding], logger: logging.Logger, source: str, examples: int = 0) -> None:
    """Log one line of totals, one line per kind, and up to ``examples`` messages per kind."""
    totals = Counter(f.severity.value for f in findings)
    logger.info(
        "%s: %d error(s), %d warning(s), %d info",
        source,
        totals.get("error", 0),
        totals.get("warning", 0),
        totals.get("info", 0),
    )
    shown: Counter[str] = Counter()
    for (severity, kind), count in sorted(count_by(findings).items(), key=lambda x: x[0][1]):
        logger.log(severity.log_level, "%s: %d x %s", source, count, kind)
        for finding in findings:
            if finding.kind == kind and shown[kind] < examples:
                shown[kind] += 1
                logger.log(severity.log_level, "%s:   %s", source, finding.message)
