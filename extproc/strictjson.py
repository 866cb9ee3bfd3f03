"""JSON as RFC 8259 means it, for everything a client or an upstream sends us.

Parsers disagree on which duplicate key wins (first or last), so a body where the gateway
inspects one ``"messages"`` and the provider uses the other is a bypass: duplicates are refused.
``NaN``/``Infinity`` are not JSON, and ``json.loads(bytes)`` would also accept UTF-16/32, which a
server reading UTF-8 would not.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.errors import ExtprocError

__all__ = ["DuplicateKey", "StrictJsonError", "loads_strict"]


class StrictJsonError(ExtprocError, ValueError):
    """Valid for Python's parser but not strict JSON: a duplicate key or a non-finite constant."""


class DuplicateKey(StrictJsonError):
    """An object names the same key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not valid JSON")


def loads_strict(data: str | bytes) -> Any:
    """Parse strictly. Raises ``ValueError`` (``StrictJsonError``, ``json.JSONDecodeError``,
    ``UnicodeDecodeError``) or ``RecursionError``."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
