"""Content extraction from OpenAI-style requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.llmapi import extract


def _ex(path: str, body: Any, method: str = "POST") -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return extract("openai", method, path, raw)


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/chat/completions", "chat"),
        ("POST", "/v1/chat/completions", "chat"),
        ("POST", "/v1/chat/completions/", "chat"),
        ("POST", "//v1//chat/completions?x=1", "chat"),
        ("POST", "/responses", "responses"),
        ("POST", "/v1/completions", "completions"),
        ("POST", "/embeddings", "embeddings"),
        ("GET", "/models", "models"),
        ("GET", "/v1/models/gpt-4o", "models"),
        ("GET", "/v1/chat/completions", "other"),
        ("GET", "/v1/responses/resp_123", "other"),
        ("POST", "/v1/files", "other"),
        ("POST", "/openai/deployments/my-gpt/chat/completions", "chat"),
    ],
)
def test_operation_from_method_and_path(method: str, path: str, operation: str) -> None:
    assert _ex(path, {"model": "m", "messages": []}, method).operation == operation


def test_chat_messages_parts_and_tool_calls() -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "max_completion_tokens": 77,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "dev note"}]},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "text", "text": "what is this"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"q": "secret arg"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "tool said hi"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "looks things up"}}],
    }
    ex = _ex("/v1/chat/completions", body)
    assert ex.error is None and ex.governed
    assert ex.model == "gpt-4o" and ex.stream is True and ex.max_output_tokens == 77
    got = {(t.path, t.role, t.text) for t in ex.texts}
    assert got == {
        (("messages", 0, "content"), "system", "be brief"),
        (("messages", 1, "content", 0, "text"), "developer", "dev note"),
        (("messages", 2, "content", 1, "text"), "user", "what is this"),
        (("messages", 3, "tool_calls", 0, "function", "arguments"), "tool_call", '{"q": "secret arg"}'),
        (("messages", 3, "tool_calls", 0, "function", "name"), "tool_call", "f"),
        (("messages", 4, "content"), "tool", "tool said hi"),
        (("tools", 0, "function", "description"), "tool_definition", "looks things up"),
        (("tools", 0, "function", "name"), "tool_definition", "f"),
    }


def test_responses_input_forms() -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "you are terse",
        "max_output_tokens": 10,
        "input": [
            {"role": "user", "content": "plain"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "part"},
                    {"type": "input_image", "image_url": "x"},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]},
            {"type": "function_call", "call_id": "1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "1", "output": "result text"},
        ],
    }
    ex = _ex("/responses", body)
    texts = {t.path: t.text for t in ex.texts}
    assert texts == {
        ("instructions",): "you are terse",
        ("input", 0, "content"): "plain",
        ("input", 1, "content", 0, "text"): "part",
        ("input", 2, "content", 0, "text"): "earlier",
        ("input", 3, "arguments"): '{"a":1}',
        ("input", 3, "name"): "f",
        ("input", 4, "output"): "result text",
    }
    assert ex.max_output_tokens == 10
    assert [t.text for t in _ex("/responses", {"model": "m", "input": "just a string"}).texts] == ["just a string"]


def test_completions_and_embeddings_token_arrays_are_not_text() -> None:
    ex = _ex("/completions", {"model": "m", "prompt": ["one", "two"], "suffix": "end"})
    assert [t.text for t in ex.texts] == ["one", "two", "end"]
    ex = _ex("/embeddings", {"model": "m", "input": [[1, 2, 3], [4, 5]]})
    assert ex.texts == () and ex.prompt_tokens == 5
    ex = _ex("/embeddings", {"model": "m", "input": "embed me"})
    assert [t.path for t in ex.texts] == [("input",)]
    ex = _ex("/embeddings", {"model": "m", "input": ["a", "b"]})
    assert [t.path for t in ex.texts] == [("input", 0), ("input", 1)]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"str"', "JSON object"),
        (b'{"model": "a", "model": "b"}', "duplicate key"),
        (b'{"temperature": NaN}', "NaN"),
        (b"[" * 100 + b"]" * 100, "nested"),
    ],
)
def test_unreadable_governed_body_is_an_error_not_empty(raw: bytes, why: str) -> None:
    ex = extract("openai", "POST", "/v1/chat/completions", raw)
    assert ex.governed and ex.error is not None and why in ex.error
    assert ex.texts == ()


def test_unmodelled_operations_read_a_json_body_and_flag_an_unreadable_one() -> None:
    """No operation is a way around content rules: its JSON strings are texts; a body that is
    not JSON is flagged ``opaque`` (a model API route refuses it unless allowed)."""
    ex = extract("openai", "GET", "/v1/models", b"\xff garbage")
    assert ex.operation == "models" and ex.error is None and not ex.governed and ex.opaque
    ex = extract("openai", "POST", "/v1/assistants", b'{"instructions": "secret plan", "n": [{"x": "y"}]}')
    assert ex.operation == "other" and ex.governed and [t.text for t in ex.texts] == ["secret plan", "y"]
    ex = extract("openai", "GET", "/v1/models", None)
    assert ex.operation == "models" and not ex.governed and not ex.opaque


def test_azure_deployment_is_the_model_when_body_has_none() -> None:
    ex = _ex("/openai/deployments/prod-gpt4/chat/completions", {"messages": []})
    assert ex.model == "prod-gpt4"


def test_token_estimate_is_documented_formula() -> None:
    ex = _ex("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x" * 9}]})
    assert ex.prompt_tokens == 3 + 4  # ceil(9/4) + per-text overhead
