"""Value objects shared by the masking modules."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MaskEvent", "Span"]


@dataclass(frozen=True, slots=True)
class Span:
    """A detected value: ``text[start:end]`` (str offsets, end exclusive) is an ``entity``."""

    start: int
    end: int
    entity: str


@dataclass(frozen=True, slots=True)
class MaskEvent:
    """How many values of one entity type were masked; never the values themselves."""

    entity: str
    count: int
