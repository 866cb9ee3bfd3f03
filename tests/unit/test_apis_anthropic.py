"""Content extraction from Anthropic Messages requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.llmapi import extract


def _ex(body: Any, path: str = "/v1/messages", method: str = "POST") -> Any:
    return extract("anthropic", method, path, json.dumps(body).encode())


def test_system_messages_and_blocks() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": True,
        "system": [{"type": "text", "text": "sys block"}],
        "messages": [
            {"role": "user", "content": "plain user"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "calling tool"},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "search",
                        "input": {"query": "find bob", "opts": {"tags": ["x", "y"]}, "n": 3},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "result"}],
                    },
                    {"type": "tool_result", "tool_use_id": "t2", "content": "string result"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "doc text"},
                    },
                ],
            },
        ],
        "tools": [{"name": "search", "description": "searches", "input_schema": {"type": "object"}}],
    }
    ex = _ex(body)
    assert ex.operation == "messages" and ex.model == "claude-sonnet-4-5"
    assert ex.stream is True and ex.max_output_tokens == 100
    got = {t.path: (t.role, t.text) for t in ex.texts}
    assert got == {
        ("system", 0, "text"): ("system", "sys block"),
        ("messages", 0, "content"): ("user", "plain user"),
        ("messages", 1, "content", 0, "text"): ("assistant", "calling tool"),
        ("messages", 1, "content", 1, "input", "query"): ("tool_call", "find bob"),
        ("messages", 1, "content", 1, "input", "opts", "tags", 0): ("tool_call", "x"),
        ("messages", 1, "content", 1, "input", "opts", "tags", 1): ("tool_call", "y"),
        ("messages", 2, "content", 0, "content", 0, "text"): ("tool", "result"),
        ("messages", 2, "content", 1, "content"): ("tool", "string result"),
        ("messages", 2, "content", 3, "source", "data"): ("user", "doc text"),
        ("tools", 0, "description"): ("tool_definition", "searches"),
        ("tools", 0, "name"): ("tool_definition", "search"),
        ("messages", 1, "content", 1, "name"): ("tool_call", "search"),
    }


def test_system_string() -> None:
    ex = _ex({"model": "m", "system": "be nice", "messages": []})
    assert [(t.path, t.text) for t in ex.texts] == [(("system",), "be nice")]


@pytest.mark.parametrize(
    ("method", "path", "operation", "governed"),
    [
        ("POST", "/v1/messages", "messages", True),
        ("POST", "/messages", "messages", True),
        ("POST", "/v1/messages/count_tokens", "other", True),
        ("POST", "/v1/complete", "completions", True),
        # not modelled, but the JSON body they carry is still read (every string)
        ("GET", "/v1/models", "models", True),
        ("GET", "/v1/messages/batches", "other", True),
    ],
)
def test_operations(method: str, path: str, operation: str, governed: bool) -> None:
    ex = extract("anthropic", method, path, b'{"model": "m", "messages": []}')
    assert (ex.operation, ex.governed) == (operation, governed)


def test_count_tokens_body_is_read_like_messages() -> None:
    ex = _ex({"model": "m", "messages": [{"role": "user", "content": "hello"}]}, "/v1/messages/count_tokens")
    assert [t.text for t in ex.texts] == ["hello"]
    assert extract("anthropic", "POST", "/v1/messages/count_tokens", b"nope").error is not None


def test_invalid_body_on_messages() -> None:
    ex = extract("anthropic", "POST", "/v1/messages", b"\x00\x01")
    assert ex.error is not None and ex.governed
