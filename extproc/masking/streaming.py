"""Incremental maskers: text arrives in pieces, masked text leaves as soon as it is safe.

Hold-back rule. After each ``feed`` the engine reports the first position ``u`` at which
a match could still start or change given more text (see
``Engine.undetermined_start``): for each detector, the trailing run of characters from
its alphabet (plus ``RIGHT_CONTEXT`` characters of look-ahead), capped at its
``max_length + HOLD_MARGIN``; for PEM blocks, an unterminated ``-----BEGIN`` header. Matches starting
before ``u`` are final, so the text before ``u`` is masked and emitted -- extended to the
end of a final match that straddles ``u``, because anything starting inside it would lose
to it anyway (the same holds for a claim, a span a detector keeps whole). The rest stays
in the buffer, so ``held <= max_match_length + HOLD_MARGIN``.

The last ``LEFT_CONTEXT`` characters already emitted are kept (not re-emitted) so that
word-boundary and "not preceded by a digit" checks see the same left context as a scan
of the whole text. Hence ``feed* + flush`` equals ``mask(whole)`` for every chunking.

Pinned runs (why a small ``feed`` is cheap). For a detector whose hold-back is the whole
trailing run of its alphabet (``Engine.pins``), if everything held is one run of that
alphabet, at most its ``max_length + right_context + 1`` characters long, the hold-back
starts at the first held character: the run touches the end, so it may still grow into
a match. Appending more characters of the same alphabet keeps that true, so nothing can
be emitted and the step is skipped without asking the engine: a word arriving a
character at a time costs a set lookup per character. Only the output's timing could
differ, and it does not: the full step would have emitted nothing either.
"""

from __future__ import annotations

import codecs
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from extproc.masking.detectors import LEFT_CONTEXT
from extproc.masking.engine import KEPT, Pin

if TYPE_CHECKING:
    from extproc.masking.profile import MaskingProfile

__all__ = ["ByteStreamMasker", "StreamingMasker", "TextMasker", "pin_for"]


class StreamingMasker:
    """``feed(text) -> str`` safe to emit now; ``flush() -> str`` at end of stream."""

    __slots__ = ("_bounds", "_buf", "_ctx", "_emitted", "_pin", "_pins", "_profile", "counts")

    def __init__(self, profile: MaskingProfile, counts: Counter[str] | None = None) -> None:
        self._profile = profile
        self._ctx = ""
        self._buf = ""
        self._pins = profile.engine.pins
        # The alphabet the held text is one run of (see "Pinned runs"), and its cap.
        self._pin: Pin | None = None
        # Stream position of the first held character, and the engine's per-detector
        # lower bounds for ``undetermined_start`` (stream positions).
        self._emitted = 0
        self._bounds = profile.engine.new_bounds()
        #: Masked values per entity so far (shared with the caller when one is passed in).
        self.counts: Counter[str] = counts if counts is not None else Counter()

    @property
    def held(self) -> int:
        """Characters received but not yet emitted."""
        return len(self._buf)

    def feed(self, text: str) -> str:
        if not text:
            return ""
        pin = self._pin
        if pin is not None and len(self._buf) + len(text) <= pin.cap:
            if pin.alphabet.issuperset(text):
                self._buf += text  # still one run of the pinned alphabet: nothing is decided
                return ""
            if len(text) <= pin.slack:
                self._buf += text  # the run's end is still within its right context
                self._pin = None
                return ""
        self._buf += text
        out = self._advance(final=False)
        self._pin = pin_for(self._pins, self._buf)
        return out

    def flush(self) -> str:
        out = self._advance(final=True)
        self._ctx = ""  # a later feed starts a new stream
        self._pin = None
        self._emitted = 0
        self._bounds = self._profile.engine.new_bounds()
        return out

    def _advance(self, *, final: bool) -> str:
        if not self._buf:
            return ""
        engine = self._profile.engine
        work = self._ctx + self._buf
        lo = len(self._ctx)
        cut = len(work) if final else engine.undetermined_start(work, lo, self._bounds, self._emitted - lo)
        if cut <= lo:
            return ""
        # Claims (kept spans) count for the cut too: text inside one must not be rescanned.
        spans = engine.resolve(work, lo, cut)
        if spans and spans[-1].end > cut:
            cut = spans[-1].end
        masked = [span for span in spans if span.entity != KEPT]
        out = self._profile.render(work, masked, lo, cut, self.counts)
        self._ctx = work[max(0, cut - LEFT_CONTEXT) : cut]
        self._buf = work[cut:]
        self._emitted += cut - lo
        return out


def pin_for(pins: tuple[Pin, ...], held: str) -> Pin | None:
    """The widest ``Pin`` whose alphabet ``held`` is one run of (see "Pinned runs"), or None."""
    if not held:
        return None
    first = held[0]
    for pin in pins:
        if len(held) < pin.cap and (pin.starts is None or first in pin.starts) and pin.alphabet.issuperset(held):
            return pin
    return None


class TextMasker(Protocol):
    """What :class:`ByteStreamMasker` wraps: a text masker with the streaming contract."""

    counts: Counter[str]

    @property
    def held(self) -> int: ...

    def feed(self, text: str) -> str: ...

    def flush(self) -> str: ...


class ByteStreamMasker:
    """UTF-8 bytes in, UTF-8 bytes out, around any text masker (plain or normalised);
    chunks may split multi-byte characters.

    Invalid UTF-8 is decoded with ``errors="replace"`` (U+FFFD), exactly as decoding the
    whole body at once would, so a malformed body never raises and never slips through.
    """

    __slots__ = ("_decoder", "_text")

    def __init__(self, text_masker: TextMasker) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = text_masker

    @property
    def counts(self) -> Counter[str]:
        return self._text.counts

    @property
    def held(self) -> int:
        return self._text.held

    def feed(self, data: bytes) -> bytes:
        return self._text.feed(self._decoder.decode(data)).encode("utf-8", "surrogatepass")

    def flush(self) -> bytes:
        tail = self._text.feed(self._decoder.decode(b"", final=True))
        self._decoder.reset()
        return (tail + self._text.flush()).encode("utf-8", "surrogatepass")
