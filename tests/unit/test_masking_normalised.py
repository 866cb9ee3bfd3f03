"""Answer masking on the normalised view: whole, streamed, and the same for any chunking."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.masking import default_profile
from extproc.masking.normalised import NormalisedStreamingMasker, mask_text
from extproc.masking.streaming import ByteStreamMasker

PROFILE = default_profile()

DISGUISED = [
    ("mail ja\u200bne@example.com now", "mail [EMAIL] now"),
    ("mail jane\uff20example.com now", "mail [EMAIL] now"),
    ("mail jane@exam\u00adple.com now", "mail [EMAIL] now"),
    ("mail jane@ex\u0430mple.com now", "mail [EMAIL] now"),
    ("mail jürgen@example.de now", "mail [EMAIL] now"),
    ("card 4242\u200b4242\u200b4242\u200b4242 ok", "card [CREDIT_CARD] ok"),
    ("card ４２４２４２４２４２４２４２４２ ok", "card [CREDIT_CARD] ok"),
]


def test_disguised_values_are_masked_whole() -> None:
    for raw, expected in DISGUISED:
        assert mask_text(PROFILE, raw)[0] == expected, raw


def test_plain_text_masks_as_before() -> None:
    text = "reach bob@example.org or 4111 1111 1111 1111, build 571331461"
    assert mask_text(PROFILE, text)[0] == PROFILE.mask(text)[0]


ALPHABET = "ab @.\u200b\u00ad\uff20\u0430\u0301\ufb01xe4 jn-com1\U000e0061"
SEEDS = ["jane@example.com", "ja\u200bne\uff20ex\u0430mple.com", "4242 4242 4242 4242", "x\U000e0061y@b.co"]


@settings(deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(SEEDS), st.text(alphabet=ALPHABET, max_size=8)), max_size=8),
    st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_any_chunking_gives_the_whole_text_result(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    expected = mask_text(PROFILE, text)[0]
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    masker = NormalisedStreamingMasker(PROFILE)
    out = "".join(masker.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + masker.flush()
    assert out == expected


@settings(deadline=None)
@given(st.lists(st.sampled_from([*SEEDS, " ", "x", "\u200b"]), max_size=8), st.integers(1, 7))
def test_byte_chunking_inside_characters(pieces: list[str], step: int) -> None:
    text = "".join(pieces)
    data = text.encode()
    masker = ByteStreamMasker(NormalisedStreamingMasker(PROFILE))
    out = b"".join(masker.feed(data[i : i + step]) for i in range(0, len(data), step)) + masker.flush()
    assert out.decode() == mask_text(PROFILE, text)[0]


def test_hold_back_stays_bounded_with_invisible_characters() -> None:
    masker = NormalisedStreamingMasker(PROFILE)
    emitted = ""
    for _ in range(2000):
        emitted += masker.feed("word\u200b ")
    assert masker.held < 64
    assert len(emitted) > 10000
