"""The coverage map: every field of a supported API is classified, the doc is generated from
it, and every class is enforced as documented (issue 17, item 3)."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest

from extproc.llmapi import coverage
from extproc.policy import Policy, PolicyRequest

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
START, END = "<!-- coverage-map:start -->", "<!-- coverage-map:end -->"


def _keys(td: Any) -> set[str]:
    out: set[str] = set()
    for cls in (*getattr(td, "__orig_bases__", ()), td):
        out |= set(getattr(cls, "__annotations__", {}))
    out |= set(getattr(td, "__required_keys__", set())) | set(getattr(td, "__optional_keys__", set()))
    return out


def _type_literals(td: Any) -> set[str]:
    hints = getattr(td, "__annotations__", {})
    raw = hints.get("type")
    if raw is None:
        return set()
    try:
        resolved = typing.get_type_hints(td)["type"]
    except Exception:
        return set()
    args = typing.get_args(resolved)
    while args and not all(isinstance(a, str) for a in args):
        args = tuple(x for a in args for x in (typing.get_args(a) or (a,)) if not isinstance(a, type(None)))
        if all(isinstance(a, str) for a in args):
            break
        break
    return {a for a in args if isinstance(a, str)}


def _classified(fmap: coverage.FieldMap) -> set[str]:
    return {f.name for f in fmap.fields}


def test_every_top_level_sdk_field_is_classified() -> None:
    from anthropic.types import message_create_params as anthropic_params
    from openai.types import completion_create_params, embedding_create_params
    from openai.types.chat import completion_create_params as chat_params
    from openai.types.responses import response_create_params

    cases = {
        "chat": chat_params.CompletionCreateParamsBase,
        "responses": response_create_params.ResponseCreateParamsBase,
        "completions": completion_create_params.CompletionCreateParamsBase,
        "embeddings": embedding_create_params.EmbeddingCreateParams,
        "messages": anthropic_params.MessageCreateParamsBase,
    }
    for op, td in cases.items():
        keys = _keys(td)
        assert keys, op
        missing = keys - _classified(coverage.REQUEST_MAPS[op]) - {"stream"}
        assert missing == set(), f"{op}: unclassified fields {sorted(missing)}"


def test_every_chat_message_member_and_part_type_is_classified() -> None:
    from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

    fmap = coverage.REQUEST_MAPS["chat"]
    members = {f.name for f in fmap.message_fields}
    for td in typing.get_args(ChatCompletionMessageParam):
        assert _keys(td) - members == set(), td.__name__
    assert fmap.part_types is not None
    for td in typing.get_args(ChatCompletionContentPartParam):
        for literal in _type_literals(td):
            assert literal in fmap.part_types, (td.__name__, literal)


def test_every_anthropic_block_type_is_classified() -> None:
    import anthropic.types as at

    fmap = coverage.REQUEST_MAPS["messages"]
    assert fmap.part_types is not None
    seen = 0
    for name in dir(at):
        if not name.endswith("BlockParam") or name in ("ContentBlockParam",):
            continue
        td = getattr(at, name)
        for literal in _type_literals(td):
            seen += 1
            # Blocks that only occur nested inside a tool result are read as its content.
            nested = name.endswith(("ResultBlockParam", "OutputBlockParam", "ErrorBlockParam", "StateBlockParam"))
            assert literal in fmap.part_types or nested, (name, literal)
    assert seen > 10


def test_doc_table_is_generated_from_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, "docs/policy.md lacks the coverage-map markers"
    published = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert published == coverage.markdown(), (
        "docs/policy.md's coverage map is stale: regenerate it with "
        "`python -m extproc.llmapi.coverage > /tmp/map.md` and paste it between the markers"
    )


# -- enforcement per class ----------------------------------------------------------------

BLOCK = {"id": "codename", "action": "block", "match": {"content": {"keywords": ["bluebird"]}}}
MASK = {"id": "pii", "action": "mask", "match": {"content": {"detectors": ["EMAIL"]}}}
EMAIL = "jane@example.com"


def _req(path: str, body: dict[str, Any], api: str = "openai") -> PolicyRequest:
    return PolicyRequest(user="a", groups=(), issuer="i", workload=None, provider=api, api=api, method="POST",
                         path=path, content_type="application/json", body=json.dumps(body).encode())


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra}


MODEL_VISIBLE = {
    "message name": _chat(messages=[{"role": "user", "content": "hi", "name": "bluebird"}]),
    "response_format description": _chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "description": "about bluebird", "schema": {"type": "object"}}}),
    "tool parameter description": _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "description": "bluebird"}}}}}]),
    "unknown top-level field": _chat(vendor_extra={"note": "bluebird"}),
    "unknown message member": _chat(messages=[{"role": "user", "content": "hi", "extra": "bluebird"}]),
    "unknown part type": _chat(messages=[{"role": "user", "content": [{"type": "vendor", "body": "bluebird"}]}]),
    "structure with text in it": _chat(service_tier="please tell me about bluebird"),
}


@pytest.mark.parametrize("body", MODEL_VISIBLE.values(), ids=MODEL_VISIBLE.keys())
def test_model_visible_fields_are_matched(body: dict[str, Any]) -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    assert p.evaluate(_req("/v1/chat/completions", body)).action == "block"


STORED = {
    "user": _chat(user=EMAIL),
    "metadata": _chat(metadata={"customer": EMAIL}),
    "safety_identifier": _chat(safety_identifier=EMAIL),
}


@pytest.mark.parametrize("body", STORED.values(), ids=STORED.keys())
def test_stored_identifiers_are_masked(body: dict[str, Any]) -> None:
    d = Policy.from_config({"rules": [MASK]}).evaluate(_req("/v1/chat/completions", body))
    assert d.action == "mask" and d.body is not None
    assert EMAIL not in d.body.decode() and "[EMAIL]" in d.body.decode()


def test_block_rules_match_metadata_only_when_asked() -> None:
    body = _chat(metadata={"project": "bluebird"})
    assert Policy.from_config({"rules": [BLOCK]}).evaluate(_req("/v1/chat/completions", body)).action == "allow"
    asks = {**BLOCK, "match": {"content": {"keywords": ["bluebird"], "metadata": True}}}
    assert Policy.from_config({"rules": [asks]}).evaluate(_req("/v1/chat/completions", body)).action == "block"


def test_unknown_fields_refuse_and_pass() -> None:
    body = _chat(vendor_extra="bluebird")
    refuse = Policy.from_config({"rules": [BLOCK], "unknown_fields": "refuse"})
    d = refuse.evaluate(_req("/v1/chat/completions", body))
    assert d.action == "block" and d.status == 400 and "vendor_extra" in d.message
    assert refuse.evaluate(_req("/v1/chat/completions", _chat(user="u1"))).action == "allow"
    passing = Policy.from_config({"rules": [BLOCK], "unknown_fields": "pass"})
    assert passing.evaluate(_req("/v1/chat/completions", body)).action == "allow"


def test_responses_and_anthropic_fields() -> None:
    p = Policy.from_config({"rules": [BLOCK]})
    responses = {"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                                                  "schema": {"description": "bluebird"}}}}
    assert p.evaluate(_req("/v1/responses", responses)).action == "block"
    anthropic = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "search_result", "source": "s", "title": "bluebird", "content": []}]}]}
    assert p.evaluate(_req("/v1/messages", anthropic, api="anthropic")).action == "block"
    thinking = {"model": "c", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "about bluebird", "signature": "s"}]}]}
    assert p.evaluate(_req("/v1/messages", thinking, api="anthropic")).action == "block"
    m = Policy.from_config({"rules": [MASK]})
    d = m.evaluate(_req("/v1/messages", {"model": "c", "max_tokens": 5, "messages": [],
                                         "metadata": {"user_id": EMAIL}}, api="anthropic"))
    assert d.body is not None and EMAIL not in d.body.decode()
