from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.llmapi.usage import Usage, UsageTracker

OPENAI_SSE = (
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":30}}\n\n'
)


def run(ctype: str, data: bytes, cuts: list[int]) -> Usage | None:
    t = UsageTracker(ctype)
    prev = 0
    for c in sorted(cuts):
        t.feed(data[prev:c])
        prev = c
    t.feed(data[prev:])
    return t.finish()


@settings(deadline=None)
@given(st.lists(st.integers(0, len(OPENAI_SSE)), max_size=5), st.lists(st.integers(0, len(ANTHROPIC_SSE)), max_size=5))
def test_any_chunking(c1: list[int], c2: list[int]) -> None:
    assert run("text/event-stream", OPENAI_SSE, c1) == Usage(11, 22)
    assert run("text/event-stream; charset=utf-8", ANTHROPIC_SSE, c2) == Usage(9, 30)


def test_json_bodies() -> None:
    body = json.dumps({"usage": {"input_tokens": 4, "output_tokens": 6}}).encode()
    assert run("application/json", body, [3]) == Usage(4, 6)
    responses = json.dumps({"type": "response.completed", "response": {"usage": {"input_tokens": 2,
                                                                                   "output_tokens": 5}}})
    assert run("text/event-stream", f"data: {responses}\n\n".encode(), []) == Usage(2, 5)
    assert run("application/json", b"not json", []) is None
    assert run("application/json", b'{"usage": {"prompt_tokens": "x"}}', []) == Usage(0, 0)
