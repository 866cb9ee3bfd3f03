"""The normalised view of a text: what a model reads, with a map back to the original.

A model tokenises what it is sent, and many spellings read the same to it: ``pro\u200bject``,
``ｐｒｏｊｅｃｔ``, ``prоject`` with a Cyrillic ``о``, ``pro\u0301ject``. Matching on the raw
string lets every one of them past a keyword or a detector. The view removes those
differences, and every character of the view remembers which character of the original
produced it, so a match found in the view masks the whole original span -- invisible
characters inside it included.

Each original character is mapped on its own (``f(a + b) == f(a) + f(b)``). That is
what keeps the streaming masker exact: the view of a stream is the concatenation of the
views of its chunks, however it is cut. Per character, in this order:

1. Unicode tag characters (U+E0020..U+E007E, "ASCII smuggling") become the ASCII they encode;
   the other tag characters are dropped.
2. Format and invisible characters are dropped: category ``Cf`` (zero-width space and
   (non-)joiners, word joiner, soft hyphen, bidi controls, BOM), variation selectors, the
   combining grapheme joiner and the Hangul/Mongolian fillers (all default-ignorable).
3. NFKD, then combining marks (``Mn``, ``Me``) are stripped: fullwidth and mathematical
   letters become ASCII, ``é`` becomes ``e``.
4. Confusables: a non-ASCII character whose UTS #39 skeleton (ICU's ``SpoofChecker``) is
   ASCII becomes that ASCII (Cyrillic ``а`` -> ``a``, Greek ``ο`` -> ``o``). ASCII itself
   is never remapped, so ``0``/``O`` and ``1``/``l`` in ordinary text stay apart and digits
   stay digits for the detectors: that is the line that keeps false positives out.
5. With ``fold=True`` (keywords), case folding (``ß`` -> ``ss``), then marks stripped again.
6. NFC, so scripts whose letters NFKD splits (Hangul) read as they were written.

ASCII text is its own view (only lower-cased when folding), so the common case costs one
``isascii`` check.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Any

__all__ = ["View", "normalise", "normalise_char", "view"]

_TAG_FIRST, _TAG_LAST = 0xE0000, 0xE007F
_DROP_CATEGORIES = frozenset({"Cf", "Mn", "Me"})
# Default-ignorable characters that are not Cf/Mn: they render as nothing.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u180e\u2800")


@functools.cache
def _spoof_checker() -> Any:
    # Imported on first use: ASCII-only traffic never needs ICU.
    import icu

    return icu.SpoofChecker()


@functools.lru_cache(maxsize=65536)
def _prototype(ch: str) -> str:
    """The ASCII prototype of a confusable non-ASCII character, else the character."""
    skeleton = unicodedata.normalize("NFD", _spoof_checker().getSkeleton(0, ch))
    skeleton = "".join(c for c in skeleton if unicodedata.category(c) not in _DROP_CATEGORIES)
    if skeleton and skeleton.isascii():
        return skeleton
    return ch


def _strip(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _DROP_CATEGORIES and c not in _FILLERS)


@functools.lru_cache(maxsize=65536)
def _char(ch: str, fold: bool) -> str:
    cp = ord(ch)
    if cp < 0x80:
        return ch.lower() if fold else ch
    if _TAG_FIRST <= cp <= _TAG_LAST:
        inner = cp - _TAG_FIRST
        if 0x20 <= inner <= 0x7E:
            tagged = chr(inner)
            return tagged.lower() if fold else tagged
        return ""
    if ch in _FILLERS or unicodedata.category(ch) in _DROP_CATEGORIES:
        return ""
    out = _strip(unicodedata.normalize("NFKD", ch))
    out = "".join(c if c.isascii() else _prototype(c) for c in out)
    if fold:
        out = _strip(unicodedata.normalize("NFKD", out.casefold()))
        # Folding can expose a new confusable (a capital whose look-alike is lower case).
        out = "".join(c if c.isascii() else _prototype(c) for c in out)
    return unicodedata.normalize("NFC", out)


def normalise_char(ch: str, *, fold: bool = False) -> str:
    """The view of one character (possibly empty, possibly several characters)."""
    return _char(ch, fold)


def normalise(text: str, *, fold: bool = False) -> str:
    """The view of ``text``, without the offset map (for keywords and tests)."""
    if text.isascii():
        return text.lower() if fold else text
    return "".join(_char(c, fold) for c in text)


@dataclass(frozen=True, slots=True)
class View:
    """``text`` is the view of ``original``; ``origin[k]`` is the original index of ``text[k]``.

    ``origin`` is None when the view is the original, offset for offset.
    """

    original: str
    text: str
    origin: tuple[int, ...] | None = None

    @property
    def identity(self) -> bool:
        return self.origin is None

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """The original span that produced ``text[start:end]`` (``start < end``).

        It runs from the first to the last contributing original character, so
        characters that vanished inside the span (zero-width, soft hyphens) are covered,
        and a character that expanded (``ﬁ`` -> ``fi``) is covered whole.
        """
        origin = self.origin
        if origin is None:
            return start, end
        return origin[start], origin[end - 1] + 1

    def original_index(self, pos: int) -> int:
        """The original index where view position ``pos`` begins (``len(original)`` at the end)."""
        origin = self.origin
        if origin is None:
            return pos
        return origin[pos] if pos < len(origin) else len(self.original)


def view(text: str, *, fold: bool = False) -> View:
    """The normalised view of ``text`` with its offset map."""
    if text.isascii():
        return View(text, text.lower() if fold else text)
    parts: list[str] = []
    origin: list[int] = []
    changed = False
    for i, ch in enumerate(text):
        mapped = _char(ch, fold)
        if mapped != ch:
            changed = True
        if len(mapped) == 1:
            parts.append(mapped)
            origin.append(i)
        elif mapped:
            parts.append(mapped)
            origin.extend([i] * len(mapped))
    if not changed:
        return View(text, text)
    return View(text, "".join(parts), tuple(origin))
