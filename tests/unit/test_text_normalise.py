"""The normalised view: what it removes and maps, and that its offset map is exact."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.text import normalise, normalise_char, view


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pro\u200bject", "project"),  # zero-width space
        ("pro\u200dject", "project"),  # zero-width joiner
        ("pro\u200cject", "project"),  # zero-width non-joiner
        ("pro\u00adject", "project"),  # soft hyphen
        ("pro\u2060ject", "project"),  # word joiner
        ("pro\ufeffject", "project"),  # BOM / zero-width no-break space
        ("\u202eproject\u202c", "project"),  # bidi override
        ("\u2066project\u2069", "project"),  # bidi isolate
        ("pro\ufe0fject", "project"),  # variation selector
        ("pro\U000e0101ject", "project"),  # variation selector supplement
        ("pro\u034fject", "project"),  # combining grapheme joiner
        ("ｐｒｏｊｅｃｔ", "project"),  # fullwidth
        ("𝐩𝐫𝐨𝐣𝐞𝐜𝐭", "project"),  # mathematical bold
        ("pr\u043eject", "project"),  # Cyrillic o
        ("\u0440roject", "project"),  # Cyrillic er
        ("pr\u03bfject", "project"),  # Greek omicron
        ("pro\u0301ject", "project"),  # combining acute
        ("prójéct", "project"),  # precomposed accents
        ("\U000e0070\U000e0072\U000e006f\U000e006a\U000e0065\U000e0063\U000e0074", "project"),  # tag characters
        ("jane\uff20example.com", "jane@example.com"),  # fullwidth at sign
        ("\ufb01le", "file"),  # ligature
    ],
)
def test_view_reads_disguised_text_as_plain(raw: str, expected: str) -> None:
    assert normalise(raw) == expected
    assert normalise(raw.upper() if raw.isascii() else raw, fold=True) == expected.lower()


def test_case_folding_only_in_the_folded_view() -> None:
    assert normalise("STRASSE Straße") == "STRASSE Straße"
    assert normalise("STRASSE Straße", fold=True) == "strasse strasse"


def test_ascii_is_never_remapped() -> None:
    # Digits and look-alike ASCII stay apart: 0/O, 1/l/I, rn/m.
    text = "0O 1lI rn m | ~ ` 42"
    assert normalise(text) == text
    assert view(text).identity


def test_scripts_read_as_written() -> None:
    for word in ("가나다", "日本語", "Ελλάδα"[:1] + "λλ"):
        assert unicodedata.normalize("NFC", normalise(word)) == normalise(word)
    assert normalise("가나다") == "가나다"


def test_offset_map_covers_invisible_characters_inside_a_match() -> None:
    raw = "mail ja\u200bne\uff20exa\u00adm\u0440le.com now"
    v = view(raw)
    assert v.text == "mail jane@example.com now"
    s = v.text.index("jane")
    e = s + len("jane@example.com")
    os_, oe = v.to_original(s, e)
    assert raw[os_:oe] == "ja\u200bne\uff20exa\u00adm\u0440le.com"


def test_expanded_character_is_covered_whole() -> None:
    v = view("x\ufb01y")
    assert v.text == "xfiy"
    assert v.to_original(2, 3) == (1, 2)


@given(st.text(max_size=40), st.text(max_size=40))
def test_view_is_per_character(a: str, b: str) -> None:
    # The property the streaming masker rests on: any cut gives the same view.
    for fold in (False, True):
        assert normalise(a + b, fold=fold) == normalise(a, fold=fold) + normalise(b, fold=fold)


@given(st.text(max_size=60))
def test_offset_map_is_monotonic_and_reconstructs_the_view(text: str) -> None:
    v = view(text)
    origin = v.origin if v.origin is not None else tuple(range(len(text)))
    assert len(origin) == len(v.text)
    assert list(origin) == sorted(origin)
    assert "".join(normalise_char(text[i]) for i in sorted(set(origin))) == v.text


@given(st.text(max_size=60))
def test_view_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
