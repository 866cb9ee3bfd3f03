"""The evasion suite (issue 17): a table of encodings and placements, each tried against a
block rule and a mask rule, for OpenAI chat, Responses and Anthropic messages, through the
real Envoy, with the official SDKs as clients.

The stack's policy blocks the keyword ``project falcon`` (rule ``no-project-falcon``) and
masks e-mail addresses (rule ``mask-contact-data``). A blocked case must answer 403 without
reaching the upstream; a masked case must reach it with no trace of the address in the
field it was put in, however it was disguised. Every bypass found later becomes a row here.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from extproc.text import normalise
from tests.e2e.harness import Stack
from tests.grammar import check_anthropic_stream, check_chat_stream, check_responses_stream

pytestmark = pytest.mark.e2e

PHRASE = "project falcon"
EMAIL = "jane.doe@example.com"


def _tags(s: str) -> str:
    return "".join(chr(0xE0000 + ord(c)) if c.isascii() and c.isprintable() else c for c in s)


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


#: How a value is disguised. Each takes the plain value and returns what is sent.
ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "upper case": str.upper,
    "zero-width space": lambda s: s[:3] + "\u200b" + s[3:],
    "zero-width joiner": lambda s: s[:2] + "\u200d" + s[2:],
    "soft hyphen": lambda s: s[:4] + "\u00ad" + s[4:],
    "fullwidth": _fullwidth,
    "fullwidth at sign only": lambda s: s.replace("@", "\uff20"),
    "cyrillic letter": lambda s: s.replace("o", "\u043e", 1).replace("a", "\u0430", 1),
    "combining accent": lambda s: s[:2] + "\u0301" + s[2:],
    "bidi override": lambda s: "\u202e" + s + "\u202c",
    "tag characters": _tags,
    "every trick at once": lambda s: "\u2066" + _fullwidth(s[:3]) + "\u200b" + s[3:].replace("o", "\u043e", 1),
}


# -- placements: where the value goes in a request, and how to read it back upstream --------

Body = dict[str, Any]
Placement = tuple[Callable[[str], Body], Callable[[Body], str]]


def _b64_text(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _data_url_text(url: str) -> str:
    return base64.b64decode(url.split(",", 1)[1]).decode()


CHAT: dict[str, Placement] = {
    "content": (lambda v: {"messages": [{"role": "user", "content": f"about {v} today"}]},
                lambda b: b["messages"][0]["content"]),
    "split text parts": (
        lambda v: {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "about " + v[: len(v) // 2]},
            {"type": "text", "text": v[len(v) // 2 :] + " ok"}]}]},
        lambda b: "".join(p["text"] for p in b["messages"][0]["content"])),
    "message name": (lambda v: {"messages": [{"role": "user", "content": "hi", "name": v}]},
                     lambda b: b["messages"][0]["name"]),
    "system message": (lambda v: {"messages": [{"role": "system", "content": f"ctx {v}"},
                                               {"role": "user", "content": "hi"}]},
                       lambda b: b["messages"][0]["content"]),
    "response_format description": (
        lambda v: {"messages": [{"role": "user", "content": "hi"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "description": f"about {v}",
                                                   "schema": {"type": "object"}}}},
        lambda b: b["response_format"]["json_schema"]["description"]),
    "tool description": (
        lambda v: {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
            "name": "f", "description": f"about {v}", "parameters": {"type": "object"}}}]},
        lambda b: b["tools"][0]["function"]["description"]),
    "unknown field": (lambda v: {"messages": [{"role": "user", "content": "hi"}], "vendor_note": f"about {v}"},
                      lambda b: b["vendor_note"]),
    "text file attachment": (
        lambda v: {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "read this"},
            {"type": "file", "file": {"filename": "n.txt", "file_data": f"data:text/plain;base64,{_b64_text(v)}"}}]}]},
        lambda b: _data_url_text(b["messages"][0]["content"][1]["file"]["file_data"])),
}
CHAT_STORED: dict[str, Placement] = {
    "user": (lambda v: {"messages": [{"role": "user", "content": "hi"}], "user": v}, lambda b: b["user"]),
    "metadata": (lambda v: {"messages": [{"role": "user", "content": "hi"}], "metadata": {"who": v}, "store": True},
                 lambda b: b["metadata"]["who"]),
}

RESPONSES: dict[str, Placement] = {
    "input string": (lambda v: {"input": f"about {v} today"}, lambda b: b["input"]),
    "instructions": (lambda v: {"input": "hi", "instructions": f"ctx {v}"}, lambda b: b["instructions"]),
    "split input parts": (
        lambda v: {"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "about " + v[: len(v) // 2]},
            {"type": "input_text", "text": v[len(v) // 2 :] + " ok"}]}]},
        lambda b: "".join(p["text"] for p in b["input"][0]["content"])),
    "text format schema": (
        lambda v: {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                                      "schema": {"type": "object", "description": f"about {v}"}}}},
        lambda b: b["text"]["format"]["schema"]["description"]),
    "input_file attachment": (
        lambda v: {"input": [{"role": "user", "content": [
            {"type": "input_file", "filename": "n.md", "file_data": f"data:text/markdown;base64,{_b64_text(v)}"}]}]},
        lambda b: _data_url_text(b["input"][0]["content"][0]["file_data"])),
}
RESPONSES_STORED: dict[str, Placement] = {
    "safety_identifier": (lambda v: {"input": "hi", "safety_identifier": v}, lambda b: b["safety_identifier"]),
}

ANTHROPIC: dict[str, Placement] = {
    "content": (lambda v: {"messages": [{"role": "user", "content": f"about {v} today"}]},
                lambda b: b["messages"][0]["content"]),
    "split blocks": (
        lambda v: {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "about " + v[: len(v) // 2]}, {"type": "text", "text": v[len(v) // 2 :]}]}]},
        lambda b: "".join(p["text"] for p in b["messages"][0]["content"])),
    "system": (lambda v: {"system": f"ctx {v}", "messages": [{"role": "user", "content": "hi"}]},
               lambda b: b["system"]),
    "tool description": (
        lambda v: {"messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"name": "f", "description": f"about {v}", "input_schema": {"type": "object"}}]},
        lambda b: b["tools"][0]["description"]),
    "base64 text document": (
        lambda v: {"messages": [{"role": "user", "content": [{"type": "document", "source": {
            "type": "base64", "media_type": "text/plain", "data": _b64_text(f"notes: {v}")}}]}]},
        lambda b: base64.b64decode(b["messages"][0]["content"][0]["source"]["data"]).decode()),
}
ANTHROPIC_STORED: dict[str, Placement] = {
    "metadata.user_id": (lambda v: {"messages": [{"role": "user", "content": "hi"}], "metadata": {"user_id": v}},
                         lambda b: b["metadata"]["user_id"]),
}


_CLIENTS: dict[tuple[int, str], Any] = {}


def _client(s: Stack, kind: str) -> Any:
    # One client per stack: building an SDK client (and minting a token) per case would
    # dominate the suite's run time.
    key = (id(s), kind)
    if key not in _CLIENTS:
        if kind == "openai":
            _CLIENTS[key] = openai.OpenAI(api_key=s.token(), base_url=s.gateway + "/fake", max_retries=0, timeout=30)
        else:
            _CLIENTS[key] = anthropic.Anthropic(api_key=s.token(), base_url=s.gateway + "/anthropic", max_retries=0,
                                                timeout=30)
    return _CLIENTS[key]


def _send(s: Stack, api: str, body: Body) -> int:
    """Send with the official SDK; the status the client saw (200, or the APIStatusError's)."""
    try:
        if api == "chat":
            c = _client(s, "openai")
            known = {k: v for k, v in body.items() if k in ("messages", "response_format", "tools", "user",
                                                             "metadata", "store")}
            extra = {k: v for k, v in body.items() if k not in known}
            c.chat.completions.create(model="gpt-4o", **known, extra_body=extra or None)
        elif api == "responses":
            c = _client(s, "openai")
            c.responses.with_raw_response.create(model="gpt-4.1", **body)
        else:
            a = _client(s, "anthropic")
            a.messages.create(model="claude", max_tokens=16, extra_headers={"x-fake-mode": "anthropic"}, **body)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.status_code
    return 200


def _upstream_body(s: Stack) -> Body:
    assert s.upstream.requests, "the request did not reach the upstream"
    body: Body = json.loads(s.upstream.requests[-1].body)
    return body


TABLES = {"chat": CHAT, "responses": RESPONSES, "messages": ANTHROPIC}
STORED = {"chat": CHAT_STORED, "responses": RESPONSES_STORED, "messages": ANTHROPIC_STORED}
BLOCK_CASES = [(api, place, enc) for api, table in TABLES.items() for place in table for enc in ENCODINGS]
MASK_CASES = [(api, place, enc) for api, table in {**TABLES}.items() for place in table for enc in ENCODINGS] + [
    (api, place, enc) for api, table in STORED.items() for place in table for enc in ENCODINGS]


@pytest.mark.parametrize(("api", "placement", "encoding"), BLOCK_CASES)
def test_disguised_phrase_is_blocked(stack: Stack, api: str, placement: str, encoding: str) -> None:
    build, _ = TABLES[api][placement]
    stack.upstream.reset()
    status = _send(stack, api, build(ENCODINGS[encoding](PHRASE)))
    assert status == 403, f"{api} / {placement} / {encoding}: got {status}"
    assert stack.upstream.requests == [], "a blocked request reached the upstream"


@pytest.mark.parametrize(("api", "placement", "encoding"), MASK_CASES)
def test_disguised_email_is_masked(stack: Stack, api: str, placement: str, encoding: str) -> None:
    build, read = {**TABLES[api], **STORED[api]}[placement]
    stack.upstream.reset()
    status = _send(stack, api, build(ENCODINGS[encoding](EMAIL)))
    assert status == 200, f"{api} / {placement} / {encoding}: got {status}"
    sent = read(_upstream_body(stack))
    assert "[EMAIL]" in sent, sent
    seen = normalise(sent, fold=True)
    for fragment in ("jane", "doe", "example.com"):
        assert fragment not in seen, f"{fragment!r} leaked in {sent!r}"


# -- answers: every text member masked, every stream still valid for its grammar ---------------


def _raw(s: Stack, path: str, body: Body, headers: dict[str, str]) -> bytes:
    req = urllib.request.Request(s.gateway + path, data=json.dumps(body).encode(), method="POST", headers={
        "authorization": f"Bearer {s.token()}", "content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        data: bytes = r.read()
    return data


DISGUISED_ANSWER = ["Write to ja\u200bne.d", "oe\uff20exa", "mple.com now"]


@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_chat_stream_answer_fields_masked_and_grammatical(stack: Stack, field: str) -> None:
    out = _raw(stack, "/masked/v1/chat/completions",
               {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True},
               {"x-fake-mode": "sse", "x-fake-field": field, "x-fake-texts": json.dumps(DISGUISED_ANSWER)})
    chunks = check_chat_stream(out)
    text = "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c["choices"])
    assert text == "Write to [EMAIL] now"


@pytest.mark.parametrize("field", ["content", "reasoning_content"])
def test_chat_json_answer_fields_masked_with_the_sdk(stack: Stack, field: str) -> None:
    c = openai.OpenAI(api_key=stack.token(), base_url=stack.gateway + "/masked", max_retries=0, timeout=30)
    raw = c.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "go"}],
        extra_headers={"x-fake-field": field, "x-fake-texts": json.dumps(DISGUISED_ANSWER)})
    msg = json.loads(raw.text)["choices"][0]["message"]
    assert msg[field] == "Write to [EMAIL] now"
    assert raw.parse().choices[0].message is not None


def test_responses_stream_masked_with_unique_sequence_numbers(stack: Stack) -> None:
    out = _raw(stack, "/masked/v1/responses", {"model": "m", "input": "go", "stream": True},
               {"x-fake-mode": "responses-sse", "x-fake-texts": json.dumps(DISGUISED_ANSWER)})
    events = check_responses_stream(out)
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Write to [EMAIL] now"
    # And the official SDK reads the same stream.
    c = openai.OpenAI(api_key=stack.token(), base_url=stack.gateway + "/masked", max_retries=0, timeout=30)
    stream = c.responses.create(model="m", input="go", stream=True, extra_headers={
        "x-fake-mode": "responses-sse", "x-fake-texts": json.dumps(DISGUISED_ANSWER)})
    seqs = [ev.sequence_number for ev in stream]
    assert len(seqs) == len(set(seqs))


def test_anthropic_stream_masked_and_grammatical(stack: Stack) -> None:
    out = _raw(stack, "/masked-anthropic/v1/messages",
               {"model": "c", "max_tokens": 50, "messages": [{"role": "user", "content": "go"}], "stream": True},
               {"x-fake-mode": "anthropic-sse", "x-fake-texts": json.dumps(DISGUISED_ANSWER)})
    objs = check_anthropic_stream(out)
    text = "".join(o["delta"].get("text", "") for o in objs if o["type"] == "content_block_delta")
    assert text == "Write to [EMAIL] now"


def test_errors_on_openai_routes_have_openai_shape(stack: Stack) -> None:
    c = openai.OpenAI(api_key=stack.token(), base_url=stack.gateway + "/fake", max_retries=0, timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "project falcon"}])
    body = exc.value.response.json()
    assert set(body) == {"error"} and body["error"]["param"] is None
    assert body["error"]["type"] == "permission_error" and body["error"]["code"]
    a = anthropic.Anthropic(api_key=stack.token(), base_url=stack.gateway + "/anthropic", max_retries=0, timeout=30)
    with pytest.raises(anthropic.PermissionDeniedError) as aexc:
        a.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "project falcon"}])
    abody = aexc.value.response.json()
    assert abody["type"] == "error" and abody["error"]["type"] == "permission_error"
