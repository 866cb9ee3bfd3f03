"""SSE parser: line endings, multi-line data, comments, limits, and split invariance."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.llmapi.sse import SseError, SseEvent, SseParser, parse_events, serialize_event

STREAM = (
    "\ufeff: keep-alive\r\n\r\n"
    "event: greeting\r\nid: 7\r\nretry: 1500\r\ndata: héllo\r\ndata:  two spaces\r\n\r\n"
    "data: cr only\rdata: second\r\r"
    "data\n\n"
    "id\nfoo: ignored\nretry: soon\n: note\ndata: x\n\n"
    'data: 👋 {"a": 1}\n\n'
    "data: [DONE]\n\n"
).encode()

EXPECTED = [
    SseEvent(comments=(" keep-alive",)),
    SseEvent(data="héllo\n two spaces", event="greeting", id="7", retry=1500),
    SseEvent(data="cr only\nsecond"),
    SseEvent(data=""),
    SseEvent(data="x", id="", comments=(" note",)),
    SseEvent(data='👋 {"a": 1}'),
    SseEvent(data="[DONE]"),
]


def test_parses_all_field_kinds_and_line_endings() -> None:
    assert parse_events(STREAM) == EXPECTED


@settings(deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_byte_split_gives_same_events(cuts: list[int]) -> None:
    parser = SseParser()
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    events = [ev for a, b in itertools.pairwise(bounds) for ev in parser.feed(STREAM[a:b])]
    assert events + parser.close() == EXPECTED


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r\n\r") == []
    assert parser.feed(b"\n") == [SseEvent(data="a\nb")]
    assert parser.close() == []


def test_round_trip_through_serializer() -> None:
    out = b"".join(serialize_event(e) for e in EXPECTED)
    assert b"\r" not in out
    assert parse_events(out) == EXPECTED


def test_serializer_cannot_inject_fields() -> None:
    ev = SseEvent(data="a\r\nb", event="x\ndata: evil")
    assert parse_events(serialize_event(ev)) == [SseEvent(data="a\nb", event="x data: evil")]


def test_unterminated_event_is_delivered_at_close() -> None:
    parser = SseParser()
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [SseEvent(data="tail")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse_events(b"data: \xff\xfe ok\n\n") == [SseEvent(data="\ufffd\ufffd ok")]


def test_oversized_event_raises() -> None:
    parser = SseParser(max_event_size=100)
    with pytest.raises(SseError):
        for _ in range(20):
            parser.feed(b"data: 0123456789\n")
    endless = SseParser(max_event_size=100)
    with pytest.raises(SseError):
        for _ in range(20):
            endless.feed(b"x" * 10)  # one line that never ends
