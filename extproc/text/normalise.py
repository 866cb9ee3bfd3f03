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

import bisect
import functools
import re
import unicodedata
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


_TABLES: dict[bool, dict[int, str]] = {False: {}, True: {}}


def _fill(chars: set[str], fold: bool) -> dict[int, str]:
    """The ``str.translate`` table, with every character of ``chars`` in it.

    A plain dict (no ``__missing__``) keeps ``translate`` on its fast lookup path; new
    characters are mapped once, on first sight.
    """
    table = _TABLES[fold]
    for ch in chars:
        cp = ord(ch)
        if cp not in table:
            table[cp] = _char(ch, fold)
    return table


def _table(text: str, fold: bool) -> dict[int, str]:
    return _fill(set(text), fold)


def normalise_char(ch: str, *, fold: bool = False) -> str:
    """The view of one character (possibly empty, possibly several characters)."""
    got = _TABLES[fold].get(ord(ch))
    return got if got is not None else _table(ch, fold)[ord(ch)]


def normalise(text: str, *, fold: bool = False) -> str:
    """The view of ``text``, without the offset map (for keywords and tests)."""
    if text.isascii():
        return text.lower() if fold else text
    return text.translate(_table(text, fold))


class View:
    """``text`` is the view of ``original``, with a map from view offsets back to original ones.

    Most characters map to exactly one character (``а`` -> ``a``, ``ü`` -> ``u``), which
    keeps offsets; only "uneven" ones (dropped, or expanded like ``…`` -> ``...``) shift
    them. The map is built only when a match has to be mapped back, from the positions of
    the uneven characters alone (found by a regex, in C), so scanning costs one
    ``translate`` and mapping a match a binary search.
    """

    __slots__ = ("_fold", "_shifts", "_uneven", "identity", "original", "text")

    def __init__(self, original: str, text: str, *, fold: bool = False, identity: bool = True,
                 uneven: frozenset[str] = frozenset()) -> None:
        self.original = original
        self.text = text
        #: True when every view offset is the original offset (the texts may still differ).
        self.identity = identity
        self._fold = fold
        self._uneven = uneven
        self._shifts: tuple[list[int], list[int], list[int]] | None = None

    @property
    def origin(self) -> list[int] | None:
        """The original index of every view character (None when offsets are kept); for tests."""
        if self.identity:
            return None
        return [self._index(k) for k in range(len(self.text))]

    def _index(self, pos: int) -> int:
        """The original index of the character that produced view character ``pos``."""
        shifts = self._shifts
        if shifts is None:
            table = _TABLES[self._fold]
            pattern = re.compile("[" + "".join(re.escape(c) for c in sorted(self._uneven)) + "]")
            starts: list[int] = []  # view start of each uneven character
            where: list[int] = []  # its original index
            lengths: list[int] = []  # its view length
            delta = 0
            for m in pattern.finditer(self.original):
                u = m.start()
                n = len(table[ord(self.original[u])])
                starts.append(u + delta)
                where.append(u)
                lengths.append(n)
                delta += n - 1
            shifts = self._shifts = (starts, where, lengths)
        starts, where, lengths = shifts
        k = bisect.bisect_right(starts, pos) - 1
        if k < 0:
            return pos
        if pos < starts[k] + lengths[k]:
            return where[k]
        return where[k] + 1 + (pos - starts[k] - lengths[k])

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """The original span that produced ``text[start:end]`` (``start < end``).

        It runs from the first to the last contributing original character, so
        characters that vanished inside the span (zero-width, soft hyphens) are covered,
        and a character that expanded (``ﬁ`` -> ``fi``) is covered whole.
        """
        if self.identity:
            return start, end
        return self._index(start), self._index(end - 1) + 1

    def original_index(self, pos: int) -> int:
        """The original index where view position ``pos`` begins (``len(original)`` at the end)."""
        if self.identity:
            return pos
        return self._index(pos) if pos < len(self.text) else len(self.original)


def view(text: str, *, fold: bool = False, chars: set[str] | None = None) -> View:
    """The normalised view of ``text`` with its offset map (``chars``: ``set(text)``, if known)."""
    if text.isascii():
        # Lower-casing ASCII keeps every offset.
        return View(text, text.lower() if fold else text)
    if chars is None:
        chars = set(text)
    table = _fill(chars, fold)
    out = text.translate(table)
    if out == text:
        return View(text, text)
    uneven = frozenset(c for c in chars if len(table[ord(c)]) != 1)
    if not uneven:
        return View(text, out)  # same offsets, other characters
    return View(text, out, fold=fold, identity=False, uneven=uneven)
