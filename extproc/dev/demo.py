"""A tiny offline model endpoint for the local stack: OpenAI- and Anthropic-compatible.

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/messages``, plain
and ``stream: true`` (SSE, one word per event), by echoing the last user message. It checks
that the gateway injected its key, so the demo shows credential injection working: a request
that reaches it without the key gets the provider-style 401.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from extproc.admin.http import Request, Response, serve_http

__all__ = ["DemoModel", "serve_demo"]

MODEL = "extproc-demo-1"


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _answer(prompt: str) -> str:
    prompt = " ".join(prompt.split())[:500]
    return f"Hello from the extproc demo model. You said: {prompt}" if prompt else "Hello from the extproc demo model."


def _err(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}
    return Response.json(status, json.dumps(body).encode())


class DemoModel:
    def __init__(self, api_key: str | None, *, word_delay: float = 0.02) -> None:
        self.api_key = api_key
        self.word_delay = word_delay

    def _authorised(self, req: Request) -> bool:
        if not self.api_key:
            return True
        got = req.headers.get("x-api-key") or req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(got.encode(), self.api_key.encode())

    async def __call__(self, req: Request) -> Response:
        if req.path in ("/healthz", "/"):
            return Response.json(200, b'{"status":"ok"}')
        if not self._authorised(req):
            return _err(401, "Incorrect API key provided to the demo model.")
        if req.method == "GET" and req.path == "/v1/models":
            data = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "extproc"}]}
            return Response.json(200, json.dumps(data).encode())
        if req.method != "POST" or req.path not in ("/v1/chat/completions", "/v1/messages"):
            return Response.json(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            err = b'{"error":{"message":"body must be a JSON object","type":"invalid_request_error"}}'
            return Response.json(400, err)
        text = _answer(_last_user_text(body.get("messages")))
        raw_model = body.get("model")
        model = raw_model if isinstance(raw_model, str) else MODEL
        if req.path == "/v1/chat/completions":
            return self._openai(text, model, bool(body.get("stream")))
        return self._anthropic(text, model, bool(body.get("stream")))

    def _openai(self, text: str, model: str, stream: bool) -> Response:
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        words = text.split(" ")
        usage = {"prompt_tokens": 8, "completion_tokens": len(words), "total_tokens": 8 + len(words)}
        if not stream:
            data = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }
            return Response.json(200, json.dumps(data).encode())

        async def events() -> AsyncIterator[bytes]:
            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
                c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
                return b"data: " + json.dumps(c).encode() + b"\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for i, w in enumerate(words):
                await asyncio.sleep(self.word_delay)
                yield chunk({"content": w if i == 0 else " " + w})
            yield chunk({}, "stop", usage=usage)
            yield b"data: [DONE]\n\n"

        return Response(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], events())

    def _anthropic(self, text: str, model: str, stream: bool) -> Response:
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        words = text.split(" ")
        usage = {"input_tokens": 8, "output_tokens": len(words)}
        if not stream:
            data = {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
            }
            return Response.json(200, json.dumps(data).encode())

        async def events() -> AsyncIterator[bytes]:
            def ev(name: str, data: dict[str, Any]) -> bytes:
                return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

            yield ev("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 8, "output_tokens": 0}}})
            yield ev("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
            for i, w in enumerate(words):
                await asyncio.sleep(self.word_delay)
                yield ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": w if i == 0 else " " + w}})
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield ev("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": len(words)}})
            yield ev("message_stop", {"type": "message_stop"})

        return Response(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], events())


async def serve_demo(host: str, port: int, api_key: str | None) -> asyncio.Server:
    return await serve_http(DemoModel(api_key), host, port)
