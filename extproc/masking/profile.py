"""``MaskingProfile``: which detectors run and how their matches are rendered."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, cast

from extproc.config.types import validate_section
from extproc.masking.config import DENY_LIST_ENTITY, ProfileSpec
from extproc.masking.detectors import BUILTIN_ENTITIES, Detector, builtin_detectors
from extproc.masking.engine import Decision, Engine
from extproc.masking.replacement import Style, render
from extproc.masking.spans import Span

if TYPE_CHECKING:
    from extproc.masking.streaming import ByteStreamMasker, StreamingMasker

__all__ = ["DENY_LIST_ENTITY", "MaskingProfile", "default_profile"]

_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")


class MaskingProfile:
    """Immutable and cheap to share across requests; per-stream state lives in the maskers."""

    __slots__ = ("_detectors", "_hash_key", "_styles", "engine", "entities", "max_match_length")

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        styles: Mapping[str, Style] | None = None,
        hash_key: bytes | None = None,
        allow_list: Iterable[str] = (),
    ) -> None:
        self._detectors = tuple(detectors)
        self._styles: dict[str, Style] = dict(styles or {})
        self._hash_key = hash_key
        if any(s == "hash" for s in self._styles.values()) and not hash_key:
            raise ValueError("a hash style needs a hash_key")
        self.engine = Engine(self._detectors, frozenset(allow_list))
        self.entities: frozenset[str] = frozenset(d.entity for d in self._detectors)
        self.max_match_length: int = self.engine.max_length

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: object, *, path: str = "masking") -> MaskingProfile:
        """Build from a ``masking`` mapping; errors name the offending key path."""
        if cfg is None:
            return default_profile()
        return cls.from_spec(validate_section(ProfileSpec, cfg, path=path))

    @classmethod
    def from_spec(cls, spec: ProfileSpec | None) -> MaskingProfile:
        """Compile a validated ``masking`` section (None: every built-in detector)."""
        if spec is None:
            return default_profile()
        builtins = builtin_detectors(spec.phone_regions)
        names = set(BUILTIN_ENTITIES if spec.entities is None else spec.entities)
        detectors: list[Detector] = []
        # Priority follows the built-in order, not the order in the file.
        for name, group in builtins.items():
            if name in names:
                detectors.extend(group)
        detectors.extend(Detector(c.name, c.pattern, c.max_length, None) for c in spec.custom)
        if spec.deny_list:
            detectors.append(_literal_detector(spec.deny_list, DENY_LIST_ENTITY, case_insensitive=True))
        hash_key = spec.hash_key
        return cls(detectors, styles=cast(Mapping[str, Style], spec.styles),
                   hash_key=hash_key.encode() if hash_key else None, allow_list=spec.allow_list)

    def with_literals(self, literals: Iterable[str], entity: str = "SECRET") -> MaskingProfile:
        """A profile that also masks these exact strings (case-sensitive, even inside words)."""
        terms = sorted({t for t in literals if t}, key=len, reverse=True)
        if not terms:
            return self
        literal = _literal_detector(terms, entity, case_insensitive=False)
        clone = MaskingProfile.__new__(MaskingProfile)
        clone._detectors = (literal, *self._detectors)
        clone._styles = self._styles
        clone._hash_key = self._hash_key
        clone.engine = Engine(clone._detectors, self.engine.allow_list)
        clone.entities = self.entities | {entity}
        clone.max_match_length = clone.engine.max_length
        return clone

    # -- masking ---------------------------------------------------------------------

    def find(self, text: str) -> list[Span]:
        """Detected values, sorted and non-overlapping."""
        return self.engine.find(text)

    def explain(self, text: str) -> list[Decision]:
        """Every masked span, every span kept by a claim and every rejected candidate, with
        the detector's rule and the reason (for ``extproc mask --explain``)."""
        return self.engine.explain(text)

    def mask(self, text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        return self.render(text, self.engine.find(text), 0, len(text), counts), counts

    def render(self, text: str, spans: Sequence[Span], lo: int, hi: int, counts: Counter[str]) -> str:
        """``text[lo:hi]`` with ``spans`` (all inside it) replaced; counts them."""
        parts: list[str] = []
        pos = lo
        for span in spans:
            parts.append(text[pos : span.start])
            style = self._styles.get(span.entity, "placeholder")
            parts.append(render(text[span.start : span.end], span.entity, style, self._hash_key))
            counts[span.entity] += 1
            pos = span.end
        parts.append(text[pos:hi])
        return "".join(parts)

    def streaming(self) -> StreamingMasker:
        from extproc.masking.streaming import StreamingMasker

        return StreamingMasker(self)

    def bytes_streaming(self) -> ByteStreamMasker:
        from extproc.masking.streaming import ByteStreamMasker, StreamingMasker

        return ByteStreamMasker(StreamingMasker(self))

    def __repr__(self) -> str:
        return f"MaskingProfile(entities={sorted(self.entities)}, max_match_length={self.max_match_length})"


@lru_cache(maxsize=1)
def default_profile() -> MaskingProfile:
    """Every built-in detector, placeholder style."""
    detectors = [d for group in builtin_detectors().values() for d in group]
    return MaskingProfile(detectors)


def _literal_detector(terms: Sequence[str], entity: str, *, case_insensitive: bool) -> Detector:
    alternatives = []
    for term in sorted(set(terms), key=len, reverse=True):
        body = "".join(_literal_char(ch, case_insensitive) for ch in term)
        if case_insensitive:
            # Word-boundary aware only where the term itself starts/ends with a word char.
            if term[0] in _WORD_CHARS:
                body = r"\b" + body
            if term[-1] in _WORD_CHARS:
                body += r"\b"
        alternatives.append(body)
    chars = set("".join(terms))
    if case_insensitive:
        chars |= {c.upper() for c in chars if len(c.upper()) == 1}
        chars |= {c.lower() for c in chars if len(c.lower()) == 1}
    max_length = max(len(t.encode("utf-8", "surrogatepass")) for t in terms)
    return Detector(entity, "|".join(alternatives), max_length, "".join(sorted(chars)))


def _literal_char(ch: str, case_insensitive: bool) -> str:
    # Explicit classes instead of RE2's (?i): RE2 folds e.g. "k" to KELVIN SIGN, which
    # would put characters outside the declared alphabet into a match.
    if case_insensitive:
        lo, up = ch.lower(), ch.upper()
        if lo != up and len(lo) == 1 and len(up) == 1:
            return f"[{_escape_in_class(lo)}{_escape_in_class(up)}]"
    return _escape(ch)


def _escape(ch: str) -> str:
    return ch if ch.isalnum() or ch == "_" else f"\\x{{{ord(ch):x}}}"


def _escape_in_class(ch: str) -> str:
    return ch if ch.isalnum() else f"\\x{{{ord(ch):x}}}"
