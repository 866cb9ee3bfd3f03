"""How a detected value is rendered in the output."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

__all__ = ["STYLES", "Style", "render"]

Style = Literal["placeholder", "last4", "hash"]
STYLES: tuple[str, ...] = ("placeholder", "last4", "hash")

# A fixed number of asterisks so the output does not reveal the value's length.
_STARS = "****"


def render(value: str, entity: str, style: Style, hash_key: bytes | None) -> str:
    if style == "last4":
        # Last four letters/digits, skipping separators ("...0130 00" -> "****3000");
        # values of eight characters or fewer would be half revealed, so they show none.
        tail = [ch for ch in value if ch.isalnum()][-4:]
        if len(value) <= 8 or len(tail) < 4:
            return _STARS
        return _STARS + "".join(tail)
    if style == "hash":
        if not hash_key:
            raise ValueError("hash style needs a hash_key")
        digest = hmac.new(hash_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"[{entity}:{digest[:8]}]"
    return f"[{entity}]"
