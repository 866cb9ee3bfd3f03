"""Byte-level scrubbing of known secrets (the provider credentials) from response streams.

This is the last guard, below any protocol-aware masking: whatever an upstream sends, the
exact bytes of an injected credential never reach the caller. It works on raw bytes so it
needs no decoding, and holds back only a suffix that could still begin a secret.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "LiteralScrubber", "scrub_text"]

REDACTED = b"[REDACTED]"
#: Shorter values are not treated as secrets: scrubbing them would mangle ordinary text.
MIN_SECRET_LENGTH = 8


def _usable(secrets: Iterable[bytes | str]) -> tuple[bytes, ...]:
    out = {s.encode() if isinstance(s, str) else bytes(s) for s in secrets}
    # Longest first, so a secret that contains another is replaced whole.
    return tuple(sorted((s for s in out if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def scrub_text(value: str, secrets: Iterable[bytes | str]) -> str:
    """Replace every secret in a complete string (a header value, an error message)."""
    for s in _usable(secrets):
        text = s.decode("utf-8", "replace")
        if text in value:
            value = value.replace(text, REDACTED.decode())
    return value


class LiteralScrubber:
    """Incremental: ``feed`` chunks, then ``flush`` once; output never contains a secret."""

    __slots__ = ("_held", "_secrets", "replaced")

    def __init__(self, secrets: Iterable[bytes | str]) -> None:
        self._secrets = _usable(secrets)
        self._held = b""
        #: How many secrets were replaced so far (for metrics; never which).
        self.replaced = 0

    def scrub_text(self, value: str) -> str:
        """A complete string (a header value): every secret replaced; counted."""
        for s in self._secrets:
            text = s.decode("utf-8", "replace")
            if text in value:
                self.replaced += value.count(text)
                value = value.replace(text, REDACTED.decode())
        return value

    @property
    def active(self) -> bool:
        return bool(self._secrets)

    @property
    def held(self) -> int:
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        if not self._secrets:
            return data
        buf = self._held + data if self._held else data
        for s in self._secrets:
            if s in buf:
                self.replaced += buf.count(s)
                buf = buf.replace(s, REDACTED)
        keep = self._partial_suffix(buf)
        if keep:
            self._held = buf[-keep:]
            return buf[:-keep]
        self._held = b""
        return buf

    def flush(self) -> bytes:
        # What is held is a strict prefix of a secret, never a whole one: safe to release.
        out, self._held = self._held, b""
        return out

    def _partial_suffix(self, buf: bytes) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a secret."""
        best = 0
        for s in self._secrets:
            start = max(0, len(buf) - len(s) + 1)
            first = s[0]
            i = buf.find(first, start)
            while i != -1:
                n = len(buf) - i
                if n > best and s.startswith(buf[i:]):
                    best = n
                    break  # earlier i gives the longest candidate for this secret
                i = buf.find(first, i + 1)
        return best
