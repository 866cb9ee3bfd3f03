"""Hostile upstream answers: deep nesting, huge events, invalid UTF-8, broken SSE framing.

The claim: the response maskers either produce output or raise one of the documented,
caller-safe errors (``Uncheckable``, ``SseError``); nothing else escapes, and the machine turns
those into ``502 unmaskable_response`` with a message that names no Python class.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.datapath.machine import Reply, ResponseMasking
from extproc.llmapi.sse import SseError
from extproc.llmapi.usage import UsageTracker
from extproc.masking import default_profile
from extproc.masking.responses import (
    JsonBodyMasker,
    NestedTooDeep,
    SseBodyMasker,
    TextBodyMasker,
    Uncheckable,
    body_masker_for,
)
from extproc.policy.model import BudgetOutcome
from tests.unit.test_machine import governed, to_body

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJ = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJ, b"[" * 65 + b"]" * 65])
def test_deep_json_body_is_refused_not_crashed(body: bytes) -> None:
    m = JsonBodyMasker(default_profile(), "openai")
    m.feed(body[: len(body) // 2])
    with pytest.raises(NestedTooDeep, match="nested more than 64 levels") as exc:
        m.finish(body[len(body) // 2:])
    assert "Error" not in str(exc.value)


def test_json_nested_within_the_bound_is_masked() -> None:
    body = b'{"choices":[{"message":{"content":"mail a@b.example"}}],"x":' + b"[" * 60 + b"]" * 60 + b"}"
    out = JsonBodyMasker(default_profile(), "openai", max_buffer=1 << 20).finish(body)
    assert b"a@b.example" not in out and b"[EMAIL]" in out


@pytest.mark.parametrize("data", [DEEP, DEEP_OBJ])
def test_deep_sse_event_is_refused_not_crashed(data: bytes) -> None:
    m = SseBodyMasker(default_profile(), max_event_size=1 << 22)
    with pytest.raises(NestedTooDeep, match="event of the answer is nested"):
        m.finish(b"data: " + data + b"\n\n")


def test_huge_sse_event_is_refused() -> None:
    m = SseBodyMasker(default_profile(), max_event_size=1 << 16)
    with pytest.raises(SseError):
        m.feed(b"data: " + b"x" * (1 << 17))


@pytest.mark.parametrize("ctype", ["application/json", "text/event-stream", "text/plain"])
def test_invalid_utf8_is_masked_not_crashed(ctype: str) -> None:
    m = body_masker_for(ctype, "openai", default_profile())
    out = m.feed(b"data: {\"x\": \"\xff\xfe bob@example.com \xc3\"}\n\n") + m.finish(b"\xed\xa0\x80")
    assert b"bob@example.com" not in out


def test_usage_tracker_ignores_deep_json() -> None:
    t = UsageTracker("application/json")
    t.feed(DEEP)
    assert t.finish() is None


@settings(deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from(
    [b"data: ", b"\n\n", b"\r", b"event: x\n", b"[" * 80, b"{\"choices\":[", b": c\n", b"data: [DONE]\n\n",
     b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a@b.co"}}']), max_size=20))
def test_any_bytes_end_in_output_or_a_documented_error(chunks: list[bytes]) -> None:
    for make in (lambda: SseBodyMasker(default_profile(), max_event_size=4096),
                 lambda: JsonBodyMasker(default_profile(), "openai", max_buffer=4096),
                 lambda: TextBodyMasker(default_profile())):
        m = make()
        try:
            for c in chunks:
                m.feed(c)
            m.finish(b"")
        except (Uncheckable, SseError):
            pass


@pytest.mark.parametrize(("ctype", "body"), [("application/json", DEEP), ("text/event-stream", b"data: " + DEEP)])
def test_machine_ends_a_hostile_answer_with_a_documented_error(ctype: str, body: bytes) -> None:
    gw = governed(ResponseMasking(profile=default_profile(), max_buffer_bytes=1 << 20))
    m, _ = to_body(gw, {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    m.on_budget(BudgetOutcome(allowed=True))
    m.on_response_headers({":status": "200", "content-type": ctype}, False)
    r = m.on_response_body(body + b"\n\n", True)
    assert isinstance(r, Reply) and (r.status, r.code) == (502, "unmaskable_response")
    message = json.loads(r.body)["error"]["message"]
    assert "nested more than 64 levels" in message
    assert "Recursion" not in message and "NestedTooDeep" not in message
    assert m.info.failure is not None and "NestedTooDeep" in m.info.failure  # for the log line only


def test_a_stage_bug_ends_the_answer_without_naming_the_class() -> None:
    class Broken:
        def feed(self, chunk: bytes) -> bytes:
            raise KeyError("internal detail")

        finish = feed

    gw = governed()
    m, _ = to_body(gw, {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    m.on_budget(BudgetOutcome(allowed=True))
    m.on_response_headers({":status": "200", "content-type": "application/json"}, False)
    m._stages.append(Broken())
    r = m.on_response_body(b"{}", True)
    assert isinstance(r, Reply) and r.code == "unmaskable_response"
    assert b"KeyError" not in r.body and b"internal detail" not in r.body
    assert m.info.failure is not None and m.info.failure.startswith("KeyError")


