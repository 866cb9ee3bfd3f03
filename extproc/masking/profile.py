"""``MaskingProfile``: which detectors run and how their matches are rendered."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import re2

from extproc.errors import ConfigError
from extproc.masking.detectors import BUILTIN_ENTITIES, Detector, builtin_detectors
from extproc.masking.engine import Decision, Engine, compile_pattern
from extproc.masking.phone import known_regions
from extproc.masking.replacement import STYLES, Style, render
from extproc.masking.spans import Span

if TYPE_CHECKING:
    from extproc.masking.streaming import ByteStreamMasker, StreamingMasker

__all__ = ["DENY_LIST_ENTITY", "MaskingProfile", "default_profile"]

#: Entity reported for deny-list hits.
DENY_LIST_ENTITY = "DENY_LIST"
_CONFIG_KEYS = frozenset({"entities", "styles", "hash_key", "custom", "deny_list", "allow_list", "phone_regions"})
_DEFAULT_CUSTOM_MAX = 128
_MAX_CUSTOM_MAX = 65536
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
    def from_config(cls, cfg: Mapping[str, Any] | None, *, path: str = "masking") -> MaskingProfile:
        """Build from the ``masking`` config section; errors name the offending key path."""
        if cfg is None:
            return default_profile()
        if not isinstance(cfg, Mapping):
            raise ConfigError("must be a mapping", path=path)
        for key in cfg:
            if key not in _CONFIG_KEYS:
                raise ConfigError(f"unknown key {key!r} (expected one of {sorted(_CONFIG_KEYS)})",
                                  path=f"{path}.{key}")
        builtins = builtin_detectors(_phone_regions(cfg.get("phone_regions"), f"{path}.phone_regions"))
        detectors: list[Detector] = []
        names = cfg.get("entities")
        if names is None:
            names = list(BUILTIN_ENTITIES)
        if not isinstance(names, list):
            raise ConfigError("must be a list of entity names", path=f"{path}.entities")
        for i, name in enumerate(names):
            if not isinstance(name, str) or name not in builtins:
                raise ConfigError(f"unknown entity {name!r}; built-ins are {', '.join(BUILTIN_ENTITIES)}",
                                  path=f"{path}.entities[{i}]")
        # Priority follows the built-in order, not the order in the file.
        for name, group in builtins.items():
            if name in names:
                detectors.extend(group)
        detectors.extend(_custom_detectors(cfg.get("custom"), f"{path}.custom"))
        deny = _string_list(cfg.get("deny_list"), f"{path}.deny_list")
        if deny:
            detectors.append(_literal_detector(deny, DENY_LIST_ENTITY, case_insensitive=True))
        allow = _string_list(cfg.get("allow_list"), f"{path}.allow_list")
        known = {d.entity for d in detectors} | set(BUILTIN_ENTITIES) | {DENY_LIST_ENTITY}
        styles = _styles(cfg.get("styles"), known, f"{path}.styles")
        hash_key = cfg.get("hash_key")
        if hash_key is not None and (not isinstance(hash_key, str) or not hash_key):
            raise ConfigError("must be a non-empty string", path=f"{path}.hash_key")
        if "hash" in styles.values() and not hash_key:
            raise ConfigError("required when any style is 'hash'", path=f"{path}.hash_key")
        return cls(detectors, styles=styles, hash_key=hash_key.encode() if hash_key else None,
                   allow_list=allow)

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
        from extproc.masking.streaming import ByteStreamMasker

        return ByteStreamMasker(self)

    def __repr__(self) -> str:
        return f"MaskingProfile(entities={sorted(self.entities)}, max_match_length={self.max_match_length})"


@lru_cache(maxsize=1)
def default_profile() -> MaskingProfile:
    """Every built-in detector, placeholder style."""
    detectors = [d for group in builtin_detectors().values() for d in group]
    return MaskingProfile(detectors)


# ---------------------------------------------------------------------------
# config helpers


def _string_list(value: object, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of strings", path=path)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError("must be a non-empty string", path=f"{path}[{i}]")
    return cast(list[str], value)


def _phone_regions(value: object, path: str) -> list[str] | None:
    if value is None:
        return None
    regions = _string_list(value, path)
    known = known_regions()
    for i, code in enumerate(regions):
        if code not in known:
            raise ConfigError(f"unknown region {code!r}; use ISO 3166 alpha-2 codes libphonenumber knows (GB, DE, ...)",
                              path=f"{path}[{i}]")
    return regions


def _styles(value: object, known: set[str], path: str) -> dict[str, Style]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping of ENTITY: style", path=path)
    out: dict[str, Style] = {}
    for entity, style in value.items():
        if entity not in known:
            raise ConfigError(f"unknown entity {entity!r}", path=f"{path}.{entity}")
        if style not in STYLES:
            raise ConfigError(f"unknown style {style!r} (expected one of {', '.join(STYLES)})",
                              path=f"{path}.{entity}")
        out[entity] = cast(Style, style)
    return out


def _custom_detectors(value: object, path: str) -> list[Detector]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of {name, pattern} mappings", path=path)
    out: list[Detector] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError("must be a mapping with name and pattern", path=where)
        extra = set(item) - {"name", "pattern", "max_length"}
        if extra:
            raise ConfigError(f"unknown key {sorted(extra)[0]!r}", path=where)
        name = item.get("name")
        if not isinstance(name, str) or not name or not all(c.isupper() or c.isdigit() or c == "_"
                                                            for c in name) or not name[0].isupper():
            raise ConfigError("name must be an upper-case identifier like EMPLOYEE_ID", path=f"{where}.name")
        pattern = item.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("must be a non-empty RE2 pattern", path=f"{where}.pattern")
        try:
            regex = compile_pattern(pattern)
        except re2.error as exc:
            raise ConfigError(f"RE2 cannot compile this pattern: {exc}", path=f"{where}.pattern") from None
        if regex.match("") is not None:
            raise ConfigError("pattern matches the empty string", path=f"{where}.pattern")
        max_length = item.get("max_length", _DEFAULT_CUSTOM_MAX)
        if isinstance(max_length, bool) or not isinstance(max_length, int) \
                or not 1 <= max_length <= _MAX_CUSTOM_MAX:
            raise ConfigError(f"must be an integer between 1 and {_MAX_CUSTOM_MAX}",
                              path=f"{where}.max_length")
        # No alphabet is known for an arbitrary pattern, so streaming holds back
        # max_length characters for it; keep max_length tight.
        out.append(Detector(name, pattern, max_length, None))
    return out


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
