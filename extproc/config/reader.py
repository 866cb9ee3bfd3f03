"""The strict-reader primitives every configuration section shares (policy, tools,
approvals, recording): unknown keys are refused with a hint, types and ranges are checked, and
every error is a ``ConfigError`` located by file, line and key path."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Set
from typing import Any

from extproc.errors import ConfigError, located_error

__all__ = ["SectionReader", "kind"]


def kind(v: Any) -> str:
    """How a wrong value is named in an error message."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return repr(v)
    return f"{type(v).__name__} {v!r}"


class SectionReader:
    def __init__(self, file: str, lines: Mapping[str, int] | None) -> None:
        self.file = file
        self.lines = lines or {}

    def error(self, path: str, message: str) -> ConfigError:
        return located_error(message, path=path, file=self.file, lines=self.lines)

    def mapping(self, value: Any, path: str, allowed: Set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"must be a mapping, got {kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                got = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.7)
                hint = f" (did you mean {got[0]!r}?)" if got else ""
                raise self.error(f"{path}.{key}", f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")
        return value

    def integer(self, m: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        v = m.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"{path}.{key}", f"must be an integer, got {kind(v)}")
        if not lo <= v <= hi:
            raise self.error(f"{path}.{key}", f"must be between {lo} and {hi}, got {v}")
        return v

    def number(self, m: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
        v = m.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.error(f"{path}.{key}", f"must be a number, got {kind(v)}")
        if not lo <= v <= hi:
            raise self.error(f"{path}.{key}", f"must be between {lo} and {hi}, got {v}")
        return float(v)

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        v = m.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(f"{path}.{key}", f"must be true or false, got {kind(v)}")
        return v
