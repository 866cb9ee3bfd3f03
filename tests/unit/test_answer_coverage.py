"""Every text a client reads in an answer is masked, streamed or not, and streams stay valid."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.masking import default_profile
from extproc.masking.responses import AnswerRefused, body_masker_for
from tests.grammar import check_anthropic_stream, check_chat_stream, check_responses_stream

PROFILE = default_profile()
EMAIL = "jane.doe@example.com"


def run(body: bytes, ctype: str, api: str, cuts: list[int] = (), **kw: Any) -> bytes:  # type: ignore[assignment]
    masker = body_masker_for(ctype, api, PROFILE, **kw)
    points = sorted({c % (len(body) + 1) for c in cuts})
    bounds = [0, *points, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(masker.feed(c) for c in chunks[:-1]) + masker.finish(chunks[-1])


def sse(events: list[dict[str, Any] | str], named: bool = False) -> bytes:
    out = b""
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        name = f"event: {e['type']}\n" if named and isinstance(e, dict) else ""
        out += f"{name}data: {data}\n\n".encode()
    return out


def pieces(text: str, n: int = 5) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


# -- non-streamed -------------------------------------------------------------------


def test_chat_json_masks_reasoning_refusal_arguments_and_unknown_fields() -> None:
    doc = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "r1",
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "logprobs": {"content": [{"token": "jane", "logprob": -0.1}]},
            "message": {
                "role": "assistant", "content": f"mail {EMAIL}",
                "reasoning_content": f"the user is {EMAIL}", "reasoning": f"think {EMAIL}",
                "refusal": f"no {EMAIL}", "vendor_note": f"x {EMAIL}",
                "tool_calls": [{"id": "c1", "type": "function",
                                "function": {"name": "send", "arguments": json.dumps({"to": EMAIL})}}],
            },
        }, {"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": EMAIL}}],
    }
    out = run(json.dumps(doc).encode(), "application/json", "openai")
    assert EMAIL.encode() not in out and b"jane" not in out
    got = json.loads(out)
    msg = got["choices"][0]["message"]
    assert msg["reasoning_content"] == "the user is [EMAIL]" and msg["reasoning"] == "think [EMAIL]"
    assert msg["vendor_note"] == "x [EMAIL]" and msg["refusal"] == "no [EMAIL]"
    assert got["choices"][0]["logprobs"] is None
    assert got["id"] == "chatcmpl-1" and msg["tool_calls"][0]["function"]["name"] == "send"


def test_responses_json_masks_reasoning_summaries() -> None:
    doc = {"id": "resp_1", "object": "response", "output": [
        {"id": "rs_1", "type": "reasoning", "encrypted_content": "opaque",
         "summary": [{"type": "summary_text", "text": f"user {EMAIL}"}],
         "content": [{"type": "reasoning_text", "text": f"r {EMAIL}"}]},
        {"id": "msg_1", "type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": EMAIL, "annotations": []}]},
    ]}
    out = run(json.dumps(doc).encode(), "application/json", "openai")
    assert b"jane" not in out and b"opaque" in out


def test_anthropic_json_thinking_block_loses_its_signature_or_is_refused() -> None:
    doc = {"id": "msg_1", "type": "message", "role": "assistant", "content": [
        {"type": "thinking", "thinking": f"user is {EMAIL}", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "text", "text": "hello"},
    ]}
    out = json.loads(run(json.dumps(doc).encode(), "application/json", "anthropic"))
    assert out["content"][0] == {"type": "thinking", "thinking": "user is [EMAIL]", "signature": ""}
    assert out["content"][1]["data"] == "opaque=="
    with pytest.raises(AnswerRefused):
        run(json.dumps(doc).encode(), "application/json", "anthropic", signed_thinking="refuse")
    clean = {**doc, "content": [{"type": "thinking", "thinking": "fine", "signature": "sig=="}]}
    out = json.loads(run(json.dumps(clean).encode(), "application/json", "anthropic", signed_thinking="refuse"))
    assert out["content"][0]["signature"] == "sig=="  # untouched blocks keep their signature


# -- streamed ---------------------------------------------------------------------------


def chat_stream(field: str) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    ev: list[dict[str, Any] | str] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                             "finish_reason": None}]}]
    for p in pieces(f"the user {EMAIL} asked"):
        ev.append({**base, "choices": [{"index": 0, "delta": {field: p}, "finish_reason": None,
                                        "logprobs": {"content": [{"token": p}]}}]})
    ev.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ev.append("[DONE]")
    return sse(ev)


@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning", "refusal", "vendor_text"])
@settings(deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_chat_stream_masks_every_text_member(field: str, cuts: list[int]) -> None:
    out = run(chat_stream(field), "text/event-stream", "openai", cuts)
    chunks = check_chat_stream(out)
    text = "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c["choices"])
    assert text == "the user [EMAIL] asked"
    assert b"jane" not in out


def responses_stream(kind: str = "response.output_text.delta") -> bytes:
    seq = itertools.count()
    ev: list[dict[str, Any] | str] = [
        {"type": "response.created", "sequence_number": next(seq), "response": {"id": "r", "output": []}},
        {"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
         "item": {"id": "i1", "type": "message"}},
    ]
    extra = {"summary_index": 0} if "summary" in kind else {"content_index": 0}
    for p in pieces(f"write to {EMAIL}"):
        ev.append({"type": kind, "sequence_number": next(seq), "item_id": "i1", "output_index": 0, "delta": p,
                   **extra})
    done = kind[: -len(".delta")] + ".done"
    ev.append({"type": done, "sequence_number": next(seq), "item_id": "i1", "output_index": 0,
               "text": f"write to {EMAIL}", **extra})
    ev.append({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
               "item": {"id": "i1", "type": "message"}})
    ev.append({"type": "response.completed", "sequence_number": next(seq), "response": {"id": "r", "output": [
        {"id": "i1", "type": "message", "content": [{"type": "output_text", "text": f"write to {EMAIL}"}]}]}})
    return sse(ev, named=True)


@pytest.mark.parametrize("kind", ["response.output_text.delta", "response.reasoning_summary_text.delta",
                                  "response.reasoning_text.delta", "response.refusal.delta"])
@settings(deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_responses_stream_masks_and_keeps_sequence_numbers_unique(kind: str, cuts: list[int]) -> None:
    out = run(responses_stream(kind), "text/event-stream", "openai", cuts)
    events = check_responses_stream(out)
    assert b"jane" not in out
    text = "".join(e["delta"] for e in events if e["type"] == kind)
    assert text == "write to [EMAIL]"


def anthropic_stream(thinking: str, text: str) -> bytes:
    ev: list[dict[str, Any] | str] = [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "",
                                                                      "signature": ""}},
    ]
    for p in pieces(thinking):
        ev.append({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}})
    ev.append({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "S=="}})
    ev.append({"type": "content_block_stop", "index": 0})
    ev.append({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})
    for p in pieces(text):
        ev.append({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": p}})
    ev.append({"type": "content_block_stop", "index": 1})
    ev.append({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}})
    ev.append({"type": "message_stop"})
    return sse(ev, named=True)


@settings(deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_anthropic_thinking_is_masked_and_its_signature_dropped(cuts: list[int]) -> None:
    out = run(anthropic_stream(f"user {EMAIL} wants", f"hi {EMAIL}"), "text/event-stream", "anthropic", cuts)
    objs = check_anthropic_stream(out)
    assert b"jane" not in out
    deltas = [o["delta"] for o in objs if o["type"] == "content_block_delta"]
    assert "".join(d.get("thinking", "") for d in deltas) == "user [EMAIL] wants"
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [""]


def test_anthropic_thinking_untouched_keeps_signature_and_refuse_mode_refuses() -> None:
    out = run(anthropic_stream("nothing here", f"hi {EMAIL}"), "text/event-stream", "anthropic",
              signed_thinking="refuse")
    objs = check_anthropic_stream(out)
    assert [o["delta"]["signature"] for o in objs if o["type"] == "content_block_delta"
            and o["delta"]["type"] == "signature_delta"] == ["S=="]
    with pytest.raises(AnswerRefused):
        run(anthropic_stream(f"user {EMAIL}", "hi"), "text/event-stream", "anthropic", signed_thinking="refuse")
