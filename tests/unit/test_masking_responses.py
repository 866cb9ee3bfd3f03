"""Protocol-aware body maskers for OpenAI, Anthropic and Responses streams and JSON bodies."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.llmapi.sse import SseEvent, parse_events
from extproc.masking import MaskingProfile, default_profile
from extproc.masking.responses import (
    BodyTooLarge,
    UnmaskableContent,
    body_masker_for,
    is_text_content_type,
)

PROFILE = default_profile()
TEXT = "Sure. Contact bob@example.com or +1-983-264-4179; card 4242 4242 4242 4242, ok?"
ARGS = '{"email": "alice@corp.example.org", "ssn": "257-28-8896"}'


def _sse(events: list[tuple[str | None, dict[str, Any] | str]]) -> bytes:
    out = b""
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {payload}\n\n".encode()
    return out


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _run(
    body: bytes, content_type: str, api: str, byte_cuts: list[int], profile: MaskingProfile = PROFILE
) -> tuple[bytes, Any]:
    masker = body_masker_for(content_type, api, profile)
    points = sorted({c % (len(body) + 1) for c in byte_cuts})
    bounds = [0, *points, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    out = b"".join(masker.feed(c) for c in chunks[:-1]) + masker.finish(chunks[-1])
    return out, masker.counts


def openai_chat(content: list[str], args: list[str]) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        (
            None,
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            },
        )
    ]
    for piece in content:
        events.append(
            (None, {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        )
    for i, piece in enumerate(args):
        call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
        if i == 0:
            call.update(id="call_1", type="function")
            call["function"]["name"] = "lookup"
        events.append(
            (
                None,
                {**base, "choices": [{"index": 1, "delta": {"tool_calls": [call]}, "finish_reason": None}]},
            )
        )
    events.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    events.append((None, {**base, "choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]}))
    events.append((None, {**base, "choices": [], "usage": {"total_tokens": 9}}))
    events.append((None, "[DONE]"))
    return _sse(events)


def anthropic_stream(content: list[str], args: list[str]) -> bytes:
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "content": []}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in content
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}},
            },
        ),
    ]
    events += [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": p},
            },
        )
        for p in args
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return _sse(events)


def responses_stream(content: list[str], args: list[str]) -> bytes:
    full = "".join(content)
    seq = iter(range(1000))
    ev: list[tuple[str | None, dict[str, Any] | str]] = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": next(seq), "response": {"id": "r1"}},
        ),
    ]
    ev += [
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": next(seq),
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": p,
            },
        )
        for p in content
    ]
    ev.append(
        (
            "response.output_text.done",
            {
                "type": "response.output_text.done",
                "sequence_number": next(seq),
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "text": full,
            },
        )
    )
    ev += [
        (
            "response.function_call_arguments.delta",
            {
                "type": "response.function_call_arguments.delta",
                "sequence_number": next(seq),
                "item_id": "fc_1",
                "output_index": 1,
                "delta": p,
            },
        )
        for p in args
    ]
    output = [
        {"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": full}]},
        {"type": "function_call", "id": "fc_1", "arguments": "".join(args)},
    ]
    ev.append(
        (
            "response.completed",
            {
                "type": "response.completed",
                "sequence_number": next(seq),
                "response": {"id": "r1", "output": output},
            },
        )
    )
    return _sse(ev)


def _openai_texts(events: list[SseEvent]) -> tuple[str, str]:
    text = args = ""
    for e in events[:-1]:
        for choice in json.loads(e.data or "{}")["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                args += call["function"].get("arguments", "")
    return text, args


def _anthropic_texts(events: list[SseEvent]) -> tuple[str, str]:
    text = args = ""
    for e in events:
        obj = json.loads(e.data or "{}")
        if obj["type"] == "content_block_delta":
            d = obj["delta"]
            text += d.get("text", "")
            args += d.get("partial_json", "")
    return text, args


def _responses_texts(events: list[SseEvent]) -> tuple[str, str]:
    text = args = ""
    for e in events:
        obj = json.loads(e.data or "{}")
        if obj["type"] == "response.output_text.delta":
            text += obj["delta"]
        elif obj["type"] == "response.function_call_arguments.delta":
            args += obj["delta"]
        elif obj["type"] == "response.output_text.done":
            assert obj["text"] == PROFILE.mask(TEXT)[0]
        elif obj["type"] == "response.completed":
            out = obj["response"]["output"]
            assert out[0]["content"][0]["text"] == PROFILE.mask(TEXT)[0]
            assert out[1]["arguments"] == PROFILE.mask(ARGS)[0]
    return text, args


CASES: list[
    tuple[str, Callable[[list[str], list[str]], bytes], Callable[[list[SseEvent]], tuple[str, str]]]
] = [
    ("openai", openai_chat, _openai_texts),
    ("anthropic", anthropic_stream, _anthropic_texts),
    ("openai", responses_stream, _responses_texts),
]


def _check(
    api: str,
    build: Callable[[list[str], list[str]], bytes],
    texts: Callable[[list[SseEvent]], tuple[str, str]],
    content: list[str],
    args: list[str],
    byte_cuts: list[int],
) -> None:
    body = build(content, args)
    out, counts = _run(body, "text/event-stream; charset=utf-8", api, byte_cuts)
    events = parse_events(out)
    for e in events:
        assert e.data is not None
        if e.data != "[DONE]":
            json.loads(e.data)  # every event stays valid JSON
    original = parse_events(body)
    if original[-1].data == "[DONE]":
        assert events[-1].data == "[DONE]"
    assert events[-1].event == original[-1].event
    text, arguments = texts(events)
    assert text == PROFILE.mask(TEXT)[0]
    assert arguments == PROFILE.mask(ARGS)[0]
    assert counts == PROFILE.mask(TEXT)[1] + PROFILE.mask(ARGS)[1]
    for secret in ("bob@example.com", "983-264-4179", "4242 4242", "alice@corp", "257-28-8896"):
        assert secret.encode() not in out


@pytest.mark.parametrize(("api", "build", "texts"), CASES)
def test_email_split_across_two_events(
    api: str,
    build: Callable[[list[str], list[str]], bytes],
    texts: Callable[[list[SseEvent]], tuple[str, str]],
) -> None:
    cut = TEXT.index("mple.com")
    _check(api, build, texts, [TEXT[:cut], TEXT[cut:]], [ARGS], [])


def test_openai_shape_is_preserved_and_held_text_lands_in_finish_chunk() -> None:
    cut = TEXT.index("mple.com")
    body = openai_chat([TEXT[:cut], TEXT[cut:]], [ARGS])
    out, _ = _run(body, "text/event-stream", "openai", [])
    before, after = parse_events(body), parse_events(out)
    assert len(before) == len(after)  # nothing synthetic needed: finish chunks carry held text
    for b, a in zip(before[:-1], after[:-1], strict=True):
        ob, oa = json.loads(b.data or ""), json.loads(a.data or "")
        assert {k: v for k, v in ob.items() if k != "choices"} == {
            k: v for k, v in oa.items() if k != "choices"
        }
        assert [c["index"] for c in ob["choices"]] == [c["index"] for c in oa["choices"]]
    first = json.loads(after[1].data or "")["choices"][0]["delta"]["content"]
    assert first == "Sure. Contact "  # "bob@exa" held back
    finish = json.loads(after[-4].data or "")["choices"][0]
    assert finish["finish_reason"] == "stop" and finish["delta"]["content"] == "ok?"


def test_truncated_openai_stream_flushes_in_synthetic_chunk_before_done() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    body = _sse(
        [
            (None, {**base, "choices": [{"index": 0, "delta": {"content": "mail bob@example.com"}}]}),
            (None, "[DONE]"),
        ]
    )
    out, _ = _run(body, "text/event-stream", "openai", [])
    events = parse_events(out)
    assert [json.loads(e.data or "")["choices"][0]["delta"]["content"] for e in events[:-1]] == [
        "mail ",
        "[EMAIL]",
    ]
    assert json.loads(events[1].data or "")["id"] == "c"
    assert events[-1].data == "[DONE]"


def test_anthropic_flush_goes_before_block_stop() -> None:
    body = anthropic_stream(["write to bob@example.com"], ["{}"])
    events = parse_events(_run(body, "text/event-stream", "anthropic", [])[0])
    names = [e.event for e in events]
    i = names.index("content_block_stop")
    assert names[i - 1] == "content_block_delta"
    assert json.loads(events[i - 1].data or "")["delta"] == {"type": "text_delta", "text": "[EMAIL]"}


@settings(deadline=None)
@given(
    case=st.sampled_from(CASES),
    text_cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    arg_cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=5),
    byte_cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_any_split_of_values_and_bytes(
    case: tuple[str, Any, Any], text_cuts: list[int], arg_cuts: list[int], byte_cuts: list[int]
) -> None:
    api, build, texts = case
    _check(api, build, texts, _split(TEXT, text_cuts), _split(ARGS, arg_cuts), byte_cuts)


def test_non_json_data_is_masked_and_comments_pass() -> None:
    body = b": ping\n\ndata: plain bob@example.com text\n\ndata: [DONE]\n\n"
    out, counts = _run(body, "text/event-stream", "generic", [3, 17])
    assert parse_events(out) == [
        SseEvent(comments=(" ping",)),
        SseEvent(data="plain [EMAIL] text"),
        SseEvent(data="[DONE]"),
    ]
    assert counts == {"EMAIL": 1}


def test_unknown_json_event_has_all_strings_masked() -> None:
    body = _sse([("error", {"type": "error", "error": {"message": "bad key sk-abcdefghij0123456789ABCD"}})])
    out, _ = _run(body, "text/event-stream", "anthropic", [])
    assert json.loads(parse_events(out)[0].data or "")["error"]["message"] == "bad key [SECRET]"


# -- non-streamed JSON -------------------------------------------------------------


def test_chat_completion_json() -> None:
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": TEXT,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ARGS}}
                    ],
                },
            }
        ],
        "usage": {"total_tokens": 3},
    }
    out, counts = _run(json.dumps(doc).encode(), "application/json", "openai", [5, 50])
    got = json.loads(out)
    assert got["choices"][0]["message"]["content"] == PROFILE.mask(TEXT)[0]
    assert got["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == PROFILE.mask(ARGS)[0]
    assert got["id"] == "chatcmpl-1" and got["usage"] == {"total_tokens": 3}
    assert sum(counts.values()) == 5


def test_responses_anthropic_and_legacy_json() -> None:
    responses = {
        "object": "response",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": TEXT}]}],
    }
    anthropic = {
        "type": "message",
        "content": [
            {"type": "text", "text": TEXT},
            {"type": "tool_use", "input": {"to": ["bob@example.com"]}},
        ],
    }
    legacy = {"object": "text_completion", "choices": [{"text": TEXT}]}
    masked = PROFILE.mask(TEXT)[0]
    assert (
        json.loads(_run(json.dumps(responses).encode(), "application/json", "openai", [])[0])["output"][0][
            "content"
        ][0]["text"]
        == masked
    )
    got = json.loads(_run(json.dumps(anthropic).encode(), "application/json", "anthropic", [])[0])
    assert got["content"][0]["text"] == masked and got["content"][1]["input"] == {"to": ["[EMAIL]"]}
    assert (
        json.loads(_run(json.dumps(legacy).encode(), "application/json", "openai", [])[0])["choices"][0][
            "text"
        ]
        == masked
    )


def test_other_json_and_invalid_json() -> None:
    out, _ = _run(b'{"note": "mail bob@example.com", "n": 1}', "application/vnd.x+json", "generic", [])
    assert json.loads(out) == {"note": "mail [EMAIL]", "n": 1}
    out, counts = _run(b'{"broken": "bob@example.com', "application/json", "openai", [])
    assert out == b'{"broken": "[EMAIL]' and counts == {"EMAIL": 1}


def test_json_over_limit_raises() -> None:
    masker = body_masker_for("application/json", "openai", PROFILE, max_buffer=10)
    with pytest.raises(BodyTooLarge):
        masker.feed(b"x" * 11)


def test_plain_text_streams_and_binary_is_refused() -> None:
    out, counts = _run("ç bob@example.com ✓".encode(), "text/plain; charset=utf-8", "generic", [1, 2, 9])
    assert out == "ç [EMAIL] ✓".encode() and counts == {"EMAIL": 1}
    assert is_text_content_type("application/json; charset=utf-8") and is_text_content_type("text/html")
    assert not is_text_content_type("image/png") and not is_text_content_type("application/octet-stream")
    with pytest.raises(UnmaskableContent):
        body_masker_for("image/png", "openai", PROFILE)
    with pytest.raises(ValueError):
        body_masker_for("text/plain", "gemini", PROFILE)
