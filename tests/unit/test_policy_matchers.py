"""Keyword, RE2 and glob matchers."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from extproc.policy.matchers import GlobSet, KeywordMatcher, RegexMatcher, RegexRejected, compile_regex

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé", min_size=1, max_size=8)
# Disjoint from the keyword alphabet, so the keyword can only occur where we put it.
others = st.text(alphabet="xyzqü0123456789_", min_size=1, max_size=8)
kws = st.text(alphabet="abcdefghijklmnopé", min_size=1, max_size=8)


@pytest.mark.parametrize(
    ("keyword", "text", "hit"),
    [
        ("cat", "the cat sat", True),
        ("cat", "CAT!", True),
        ("cat", "category", False),
        ("cat", "concat", False),
        ("cat", "cat_food", False),  # _ is a word character
        ("cat", "cat-food", True),
        ("project falcon", "Project   Falcon", True),
        ("project falcon", "project\n\tfalcon", True),
        ("project falcon", "projectfalcon", False),
        ("project falcon", "project falconry", False),
        ("c++", "I write C++ daily", True),
        (".env", "cat my.env file", True),
        ("café", "un café noir", True),
        ("café", "cafés", False),
        ("naïve", "naïveté", False),
    ],
)
def test_keyword_examples(keyword: str, text: str, hit: bool) -> None:
    assert KeywordMatcher([keyword]).search(text) is hit


@settings(deadline=None)
@given(kws, others, others)
def test_keyword_property_embedded_in_a_longer_word_never_matches(kw: str, left: str, right: str) -> None:
    m = KeywordMatcher([kw])
    assert m.search(f"{left} {kw} {right}")
    assert m.search(f"{left} {kw.upper()}, {right}")
    # Glued to word characters on either side, it is part of a longer word.
    assert not m.search(f"{left}{kw}{right}")
    assert not m.search(f"{left}{kw} {right}")
    assert not m.search(f"{left} {kw}{right}")


@settings(deadline=None)
@given(
    st.lists(words, min_size=2, max_size=4),
    st.lists(st.sampled_from([" ", "  ", "\n", "\t", " \r\n "]), min_size=3, max_size=3),
)
def test_keyword_property_phrase_matches_any_whitespace_run(parts: list[str], seps: list[str]) -> None:
    phrase = " ".join(parts)
    text = "".join(p + seps[i % len(seps)] for i, p in enumerate(parts))
    assert KeywordMatcher([phrase]).search(text)


def test_keyword_spans_prefer_the_longest_phrase() -> None:
    m = KeywordMatcher(["falcon", "project falcon"])
    assert m.spans("about project falcon now") == [(6, 20)]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        (r"(?=x)y", "lookahead"),
        (r"(?!x)y", "negative lookahead"),
        (r"(?<=x)y", "lookbehind"),
        (r"a(", "missing )"),
        (r"[z-a]", "invalid character class range"),
        (r"a{1001}", "repetition"),
        (r"a*", "empty string"),
    ],
)
def test_rejected_patterns_say_why(pattern: str, why: str) -> None:
    with pytest.raises(RegexRejected) as exc:
        compile_regex(pattern)
    assert why in str(exc.value)


def test_rejection_points_at_the_position() -> None:
    with pytest.raises(RegexRejected) as exc:
        compile_regex(r"abc(?=x)")
    assert "at position 3" in str(exc.value)


@settings(deadline=None)
@given(
    st.text(alphabet="abc", min_size=1, max_size=5),
    st.sampled_from(["(?={})", "(?!{})", "(?<={})", "(?<!{})", "({})\\1"]),
)
def test_property_re2_rejects_what_it_cannot_run(body: str, template: str) -> None:
    pattern = "x" + template.format(body)
    with pytest.raises(RegexRejected) as exc:
        compile_regex(pattern)
    assert "not supported by RE2" in str(exc.value)


@settings(deadline=None)
@given(st.text(min_size=1, max_size=10))
def test_property_escaped_literals_compile_and_find_themselves(s: str) -> None:
    assume("\x00" not in s)
    m = RegexMatcher(re.escape(s))
    assert m.search(f"..{s}..")


def test_regex_spans_use_character_offsets() -> None:
    m = RegexMatcher("(?i)internal[- ]only")
    text = "é é INTERNAL-ONLY"
    assert [text[s:e] for s, e in m.spans(text)] == ["INTERNAL-ONLY"]


def test_globs() -> None:
    g = GlobSet(["alice", "svc-*", "team-[ab]"])
    assert g.matches("alice") and g.matches("svc-ci") and g.matches("team-a")
    assert not g.matches("Alice") and not g.matches("team-c") and not g.matches("xsvc-ci")
    m = GlobSet(["gpt-4*"], ignore_case=True)
    assert m.matches("GPT-4o") and not m.matches("gpt-3.5-turbo")
    assert GlobSet(["a.b"]).matches("a.b") and not GlobSet(["a.b"]).matches("axb")


@settings(deadline=None)
@given(
    st.lists(st.text(alphabet="skK\u0131i\u0130\u017f\u212a\u00e9", min_size=1, max_size=4), min_size=1, max_size=3),
    st.text(alphabet="skK\u0131i\u0130\u017f\u212a\u00e9 \u00a0\u2003\n-", max_size=30),
)
def test_property_the_re2_prefilter_never_hides_a_match(words_: list[str], text: str) -> None:
    m = KeywordMatcher([" ".join(words_)])
    assert m.search(text) == (m._regex.search(text) is not None)
