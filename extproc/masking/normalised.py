"""Masking on the normalised view (:mod:`extproc.text.normalise`), whole or streamed.

An answer can carry the same disguises as a prompt (a user asks the model to put
zero-width spaces into the addresses it writes), so answers are scanned in the view and
the original spans are replaced, invisible characters inside them included.

The view maps each original character on its own, so the view of a stream is the
concatenation of the views of its pieces. The streaming masker keeps the raw text and
its view side by side, decides exactly as :class:`~extproc.masking.streaming.StreamingMasker`
does on the view (same hold-back rule, same left context), and cuts the raw text where
the view is cut. Hence, for every chunking, ``feed* + flush == mask_text(whole)``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from extproc.masking.detectors import LEFT_CONTEXT
from extproc.masking.engine import Pin
from extproc.masking.spans import Span
from extproc.masking.streaming import pin_for
from extproc.text.normalise import normalise_char
from extproc.text.normalise import view as text_view

if TYPE_CHECKING:
    from extproc.masking.profile import MaskingProfile

__all__ = ["NormalisedStreamingMasker", "mask_text"]


def mask_text(profile: MaskingProfile, text: str, counts: Counter[str] | None = None) -> tuple[str, Counter[str]]:
    """``text`` with every value found in its view replaced in the original."""
    counts = counts if counts is not None else Counter()
    v = text_view(text)
    if v.text is text:
        return profile.render(text, profile.engine.find(text), 0, len(text), counts), counts
    spans = profile.engine.find(v.text)
    return _splice(profile, text, v.text, spans, [v.to_original(s.start, s.end) for s in spans], counts), counts


def _splice(
    profile: MaskingProfile,
    raw: str,
    normal: str,
    spans: list[Span],
    originals: list[tuple[int, int]],
    counts: Counter[str],
    lo: int = 0,
    hi: int | None = None,
) -> str:
    out: list[str] = []
    pos = lo
    for span, (start, end) in zip(spans, originals, strict=True):
        out.append(raw[pos:start])
        # Rendered from the view, so last4/hash see the value, not its disguise.
        out.append(profile.render(normal, [span], span.start, span.end, counts))
        pos = end
    out.append(raw[pos:hi])
    return "".join(out)


class NormalisedStreamingMasker:
    """``feed(text) -> str`` safe to emit now; ``flush() -> str`` at end of stream."""

    __slots__ = ("_bounds", "_ctx", "_emitted", "_origin", "_pin", "_pins", "_profile", "_raw", "_view", "counts")

    def __init__(self, profile: MaskingProfile, counts: Counter[str] | None = None) -> None:
        self._profile = profile
        self._ctx = ""  # the last LEFT_CONTEXT view characters already emitted
        self._raw = ""  # raw text received, not yet emitted
        self._view = ""  # its view
        # Index in _raw of each view character; None while they are the same text (ASCII),
        # so plain English answers pay nothing for the view.
        self._origin: list[int] | None = None
        self.counts: Counter[str] = counts if counts is not None else Counter()
        # As in StreamingMasker ("Pinned runs"), on the view; used while it is the raw text.
        self._pins = profile.engine.pins
        self._pin: Pin | None = None
        # View position of the first held view character; the engine's per-detector
        # lower bounds for ``undetermined_start`` (as in StreamingMasker).
        self._emitted = 0
        self._bounds = profile.engine.new_bounds()

    @property
    def held(self) -> int:
        return len(self._raw)

    def feed(self, text: str) -> str:
        if not text:
            return ""
        pin = self._pin
        if pin is not None and self._origin is None and len(self._view) + len(text) <= pin.cap \
                and text.isascii():
            if pin.alphabet.issuperset(text):
                self._raw += text  # one run of the pinned alphabet: nothing is decided
                self._view += text
                return ""
            if len(text) <= pin.slack:
                self._raw += text  # the run's end is still within its right context
                self._view += text
                self._pin = None
                return ""
        base = len(self._raw)
        if text.isascii():
            if self._origin is not None:
                self._origin.extend(range(base, base + len(text)))
            self._raw += text
            self._view += text
            return self._step()
        origin = self._origin if self._origin is not None else list(range(base))
        pieces: list[str] = []
        for i, ch in enumerate(text):
            mapped = normalise_char(ch)  # per character: chunks are small
            if mapped:
                pieces.append(mapped)
                origin.extend([base + i] * len(mapped))
        self._origin = origin
        self._raw += text
        self._view += "".join(pieces)
        return self._step()

    def flush(self) -> str:
        out = self._advance(final=True)
        self._ctx = ""
        self._pin = None
        self._emitted = 0
        self._bounds = self._profile.engine.new_bounds()
        return out

    def _step(self) -> str:
        out = self._advance(final=False)
        self._pin = pin_for(self._pins, self._view)
        return out

    def _advance(self, *, final: bool) -> str:
        if not self._raw:
            return ""
        engine = self._profile.engine
        work = self._ctx + self._view
        lo = len(self._ctx)
        cut = len(work) if final else engine.undetermined_start(work, lo, self._bounds, self._emitted - lo)
        spans = engine.find(work, lo, cut) if cut > lo else []
        if spans and spans[-1].end > cut:
            cut = spans[-1].end
        origin = self._origin
        # Where the raw text is cut: before the character that makes view position
        # ``cut``, or everything when the whole view is decided (trailing invisible
        # characters included: a later match would start after them).
        if cut >= len(work):
            raw_cut = len(self._raw)
        else:
            raw_cut = origin[cut - lo] if origin is not None else cut - lo
        if raw_cut == 0:
            return ""
        if origin is None:
            # View and raw text are the same: exactly the plain streaming masker's step.
            out = self._profile.render(work, spans, lo, cut, self.counts)
        else:
            originals = [(origin[s.start - lo], origin[s.end - 1 - lo] + 1) for s in spans]
            out = _splice(self._profile, self._raw, work, spans, originals, self.counts, 0, raw_cut)
        consumed = cut - lo
        self._emitted += consumed
        self._ctx = work[max(0, cut - LEFT_CONTEXT) : cut]
        self._raw = self._raw[raw_cut:]
        self._view = self._view[consumed:]
        if origin is not None:
            self._origin = [o - raw_cut for o in origin[consumed:]]
        return out
