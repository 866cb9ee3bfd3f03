"""Stream-safe masking of model answers through the real data path (issue: no buffering, no
leaks at chunk boundaries), with the official SDKs as clients."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from extproc.masking import default_profile
from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

TEXT = "Reach bob@example.com or +1-983-264-4179 today."
PII = ("bob@example.com", "+1-983-264-4179")
MASKED = default_profile().mask(TEXT)[0]


def oai(s: Stack, prefix: str = "/masked", **kw: object) -> openai.OpenAI:
    return openai.OpenAI(api_key=s.token(), base_url=s.gateway + prefix, max_retries=0, timeout=30, **kw)


def chat_stream(s: Stack, deltas: list[str], prefix: str = "/masked", delay_ms: int = 0) -> str:
    stream = oai(s, prefix).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse", "x-fake-texts": json.dumps(deltas), "x-fake-delay-ms": str(delay_ms)},
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_masked_text_is_what_the_unsplit_text_masks_to() -> None:
    assert MASKED == "Reach [EMAIL] or [PHONE] today."


def test_every_split_point_gives_the_masked_text(stack: Stack) -> None:
    for i in range(1, len(TEXT)):
        got = chat_stream(stack, [TEXT[:i], TEXT[i:]])
        assert got == MASKED, f"split at {i}: {got!r}"


def test_three_way_splits_and_byte_chunking(stack: Stack) -> None:
    import random

    rnd = random.Random(7)
    for _ in range(15):
        a, b = sorted(rnd.sample(range(1, len(TEXT)), 2))
        assert chat_stream(stack, [TEXT[:a], TEXT[a:b], TEXT[b:]]) == MASKED
    # The SSE bytes themselves cut at odd places by the upstream (inside events, inside UTF-8).
    stream = oai(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse", "x-fake-chunk": "7",
                       "x-fake-texts": json.dumps(["Grüße ", "an bob@exa", "mple.com ✓"])},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Grüße an [EMAIL] ✓"


def test_first_masked_token_arrives_long_before_the_stream_ends(stack: Stack) -> None:
    deltas = ["Hello ", "there, ", "mail ", "bob@", "example.com ", "for ", "details ", "and ", "more ", "text."]
    stream = oai(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse", "x-fake-texts": json.dumps(deltas), "x-fake-delay-ms": "150"},
    )
    t0 = time.monotonic()
    first_text_at = None
    text = ""
    for c in stream:
        piece = c.choices[0].delta.content if c.choices else None
        if piece and first_text_at is None:
            first_text_at = time.monotonic() - t0
        text += piece or ""
    total = time.monotonic() - t0
    assert text == "Hello there, mail [EMAIL] for details and more text."
    assert first_text_at is not None
    assert total > 1.4  # 12 events x 150 ms upstream
    assert first_text_at < total / 3, (first_text_at, total)


def test_anthropic_stream_is_masked(stack: Stack) -> None:
    c = anthropic.Anthropic(api_key=stack.token(), base_url=stack.gateway + "/masked-anthropic", max_retries=0)
    for i in (3, 9, 14, 20, 30):
        with c.messages.stream(model="claude", max_tokens=50,  # type: ignore[arg-type]
                               messages=[{"role": "user", "content": "go"}],
                               extra_headers={"x-fake-mode": "anthropic-sse",
                                              "x-fake-texts": json.dumps([TEXT[:i], TEXT[i:]])}) as st:
            got = "".join(st.text_stream)
        assert got == MASKED


def test_responses_api_stream_is_masked(stack: Stack) -> None:
    for i in (4, 10, 17, 25):
        stream = oai(stack).responses.create(
            model="m", input="go", stream=True,
            extra_headers={"x-fake-mode": "responses-sse", "x-fake-texts": json.dumps([TEXT[:i], TEXT[i:]])},
        )
        deltas, done_text = "", None
        for ev in stream:
            if ev.type == "response.output_text.delta":
                deltas += ev.delta
            elif ev.type == "response.output_text.done":
                done_text = ev.text
        assert deltas == MASKED
        assert done_text == MASKED


def test_non_streamed_answers_are_masked(stack: Stack) -> None:
    out = oai(stack).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}],  # type: ignore[arg-type]
        extra_headers={"x-fake-texts": json.dumps([TEXT])},
    )
    assert out.choices[0].message.content == MASKED


def test_exempt_group_and_unmasked_routes_see_plain_text(stack: Stack) -> None:
    cleared = openai.OpenAI(api_key=stack.token("dana", groups=("pii-cleared",)), base_url=stack.gateway + "/masked",
                            max_retries=0)
    out = cleared.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}],  # type: ignore[arg-type]
                                          extra_headers={"x-fake-texts": json.dumps([TEXT])})
    assert out.choices[0].message.content == TEXT
    assert chat_stream(stack, [TEXT[:10], TEXT[10:]], prefix="/fake") == TEXT


def test_injected_credential_split_across_events_is_masked_on_every_route(stack: Stack) -> None:
    key = stack.credential
    for prefix in ("/fake", "/masked"):
        got = chat_stream(stack, ["key: ", key[:6], key[6:19], key[19:], " end"], prefix=prefix)
        assert key not in got and key[:10] not in got
        assert got.startswith("key: ") and got.endswith(" end")
