from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.datapath.scrub import LiteralScrubber, scrub_text

SECRET = b"sk-live-0123456789abcdef"
OTHER = b"sk-ant-ZYXWVUTSRQ"


def run(chunks: list[bytes], secrets: list[bytes]) -> tuple[bytes, LiteralScrubber]:
    s = LiteralScrubber(secrets)
    out = b"".join(s.feed(c) for c in chunks) + s.flush()
    return out, s


@st.composite
def texts_and_splits(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = draw(st.lists(st.one_of(st.binary(max_size=12), st.sampled_from([SECRET, OTHER, SECRET[:7], b"sk-"])),
                          max_size=8))
    text = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    return text, cuts


@settings(deadline=None)
@given(texts_and_splits())
def test_any_chunking_gives_the_one_shot_result_and_no_secret(case: tuple[bytes, list[int]]) -> None:
    text, cuts = case
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole, _ = run([text], [SECRET, OTHER])
    split, _ = run(chunks, [SECRET, OTHER])
    assert split == whole
    assert SECRET not in split and OTHER not in split
    if SECRET not in text and OTHER not in text:
        assert whole == text  # nothing to scrub: every byte passes, in order


def test_holds_back_only_a_possible_prefix() -> None:
    s = LiteralScrubber([SECRET])
    assert s.feed(b"hello sk-li") == b"hello "
    assert s.held == 5
    assert s.feed(b"ve-0123456789abcdef!") == b"[REDACTED]!"
    assert s.held == 0 and s.replaced == 1
    assert s.feed(b"sk-x") == b"sk-x"


def test_short_values_are_not_secrets() -> None:
    s = LiteralScrubber([b"abc"])
    assert not s.active
    assert s.feed(b"abc abc") == b"abc abc"


def test_scrub_text() -> None:
    assert scrub_text("Bearer " + SECRET.decode(), [SECRET.decode()]) == "Bearer [REDACTED]"
