"""Matchers for identities (globs) and prompt text (keywords, RE2 patterns).

A text matcher answers two questions: does it occur anywhere (cheap, for block and
approval rules), and where exactly (all spans, for masking).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import re2

from extproc.errors import ExtprocError

__all__ = [
    "GlobSet",
    "Hit",
    "KeywordMatcher",
    "RegexMatcher",
    "RegexRejected",
    "compile_regex",
]

_GLOB_CHARS = frozenset("*?[")


class GlobSet:
    """Exact names and shell-style globs (``*``, ``?``, ``[abc]``)."""

    __slots__ = ("_exact", "_globs", "_ignore_case", "patterns")

    def __init__(self, patterns: Iterable[str], *, ignore_case: bool = False) -> None:
        self.patterns = tuple(patterns)
        self._ignore_case = ignore_case
        fold = str.lower if ignore_case else str
        self._exact = frozenset(fold(p) for p in self.patterns if not _GLOB_CHARS & set(p))
        # Globs come from the configuration, not from callers, and fnmatch's translation
        # avoids nested quantifiers, so the backtracking engine is safe here.
        globs = [fnmatch.translate(fold(p)) for p in self.patterns if _GLOB_CHARS & set(p)]
        self._globs = re.compile("|".join(globs)) if globs else None

    def matches(self, value: str) -> bool:
        if self._ignore_case:
            value = value.lower()
        if value in self._exact:
            return True
        return self._globs is not None and self._globs.match(value) is not None

    def matches_any(self, values: Iterable[str]) -> bool:
        return any(self.matches(v) for v in values)


@dataclass(frozen=True, slots=True)
class Hit:
    start: int
    end: int
    #: What was found: a detector entity (``EMAIL``) or ``rule:<id>``; used for counts.
    label: str
    replacement: str


class KeywordMatcher:
    """Case-insensitive words and phrases that respect word boundaries.

    ``cat`` does not match ``category`` or ``concat``; a phrase's inner whitespace matches
    any run of whitespace, so ``project  falcon`` and ``project\\nfalcon`` are caught.
    Boundaries are only required where the keyword itself starts or ends with a word
    character, so ``c++`` and ``.env`` still work. Word characters are Unicode-aware,
    which RE2's ASCII-only ``\\b`` is not; hence Python's engine, which is safe here
    because the pattern is built from escaped literals only.
    """

    __slots__ = ("_prefilter", "_regex", "keywords")

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = tuple(keywords)
        parts = [keyword_pattern(k) for k in sorted(self.keywords, key=len, reverse=True)]
        self._regex = re.compile("|".join(parts), re.IGNORECASE)
        # Python's engine tries the lookbehind at every position, which is slow on long
        # prompts; RE2 first looks for the longest word of each keyword (every real match
        # contains it), and most prompts stop there.
        longest = sorted({max(k.split(), key=len) for k in self.keywords})
        self._prefilter = re2.compile("|".join(_caseless(w) for w in longest), _options())

    def search(self, text: str) -> bool:
        if self._prefilter.search(text) is None:
            return False
        return self._regex.search(text) is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        if self._prefilter.search(text) is None:
            return []
        return [m.span() for m in self._regex.finditer(text) if m.end() > m.start()]


@functools.cache
def _cased_chars() -> tuple[str, ...]:
    # Case mappings only exist below U+20000; computed once, on the first keyword rule.
    return tuple(c for c in map(chr, range(0x20000)) if c.lower() != c or c.upper() != c)


@functools.cache
def _same_char_class(ch: str) -> str:
    """An RE2 class of every character Python's IGNORECASE treats as ``ch``.

    RE2's ``(?i)`` folds differently (U+0130 and U+0131 are not ``i`` to RE2), so the
    prefilter asks Python's engine itself which characters are equal, and never
    rejects a text the exact matcher would accept.
    """
    same = re.compile(re.escape(ch), re.IGNORECASE)
    chars = {ch} | {c for c in _cased_chars() if same.fullmatch(c)}
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]"


def _caseless(word: str) -> str:
    return "".join(_same_char_class(c) for c in word)


def keyword_pattern(keyword: str) -> str:
    words = keyword.split()
    if not words:
        raise ValueError("a keyword must contain a non-space character")
    body = r"\s+".join(re.escape(w) for w in words)
    if re.match(r"\w", words[0][0]):
        body = r"(?<!\w)" + body
    if re.match(r"\w", words[-1][-1]):
        body += r"(?!\w)"
    return f"(?:{body})"


class RegexRejected(ExtprocError, ValueError):
    """RE2 cannot run the pattern; the message says why (and where, when it can)."""


_HINTS = (
    ("invalid perl operator: (?=", "lookahead is not supported by RE2"),
    ("invalid perl operator: (?!", "negative lookahead is not supported by RE2"),
    ("invalid perl operator: (?<", "lookbehind is not supported by RE2"),
    ("invalid perl operator: (?>", "atomic groups are not supported by RE2"),
    ("invalid escape sequence: \\", "backreferences and this escape are not supported by RE2"),
    ("invalid repetition size", "repetition counts above 1000 are not supported by RE2"),
)


def _options() -> Any:
    opts = re2.Options()
    # The reason is returned in the exception; RE2's own log line would only be noise.
    opts.log_errors = False
    return opts


def compile_regex(pattern: str) -> Any:
    """An RE2 regex, or :class:`RegexRejected` with RE2's reason and the position."""
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise RegexRejected(_explain(pattern, reason)) from None
    if compiled.search("") is not None:
        raise RegexRejected("matches the empty string, so it would match every prompt")
    return compiled


def _explain(pattern: str, reason: str) -> str:
    message = f"RE2 cannot compile this pattern: {reason}"
    for needle, hint in _HINTS:
        if needle in reason:
            message += f" ({hint})"
            break
    # RE2 quotes the offending fragment after the colon; locating it helps in long patterns.
    _, _, fragment = reason.rpartition(": ")
    pos = pattern.find(fragment) if fragment else -1
    if pos >= 0 and fragment != pattern:
        message += f" at position {pos}"
    return message


class RegexMatcher:
    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled = compile_regex(pattern)

    def search(self, text: str) -> bool:
        return self._compiled.search(text) is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._compiled.finditer(text) if m.end() > m.start()]
