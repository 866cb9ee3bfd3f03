"""A fake LLM upstream, driven by request headers (the outside world is the only thing faked).

Headers it understands:
  x-fake-status: N            answer with status N (default 200)
  x-fake-mode: M              chat (default) | sse | anthropic | anthropic-sse | echo | text
  x-fake-texts: JSON list     the text deltas for sse modes (default: a short sentence)
  x-fake-body: TEXT           the body for mode=text
  x-fake-echo-credential: 1   echo the received authorization/x-api-key in the body and in
                              an `x-upstream-saw` header (like a provider's "invalid key" error)
  x-fake-chunk: N             split the body into N-byte chunks
  x-fake-delay-ms: N          sleep N ms before each chunk / event
  x-fake-usage: N             report N total tokens (prompt 5 + completion N-5) in the usage
  x-fake-tools: JSON list     for mode sse-tools: tool calls [{"name", "arguments"}] after the text
  x-fake-field: NAME          modes chat and sse: the message / delta member carrying the texts
                              (default content; e.g. reasoning_content as reasoning models send)
Every request is recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from extproc.admin.http import Request, Response, serve_http


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: time.perf_counter() at arrival (benchmarks measure hold release latency with it)
    at: float = 0.0


class BackgroundLoop:
    """An asyncio loop in a daemon thread, for in-process fake servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _sse_responses(texts: list[str]) -> list[bytes]:
    seq = iter(range(1000))

    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': next(seq), **data})}\n\n".encode()

    resp = {"id": "resp_fake", "object": "response", "created_at": 1, "status": "in_progress", "model": "fake-model",
            "output": []}
    item = {"id": "msg_fake", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    out = [ev("response.created", {"response": resp}),
           ev("response.output_item.added", {"output_index": 0, "item": item}),
           ev("response.content_part.added", {"item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                              "part": {"type": "output_text", "text": "", "annotations": []}})]
    for t in texts:
        out.append(ev("response.output_text.delta", {"item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                                     "delta": t}))
    whole = "".join(texts)
    part = {"type": "output_text", "text": whole, "annotations": []}
    done_item = {**item, "status": "completed", "content": [part]}
    out += [ev("response.output_text.done", {"item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                             "text": whole}),
            ev("response.content_part.done", {"item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                              "part": part}),
            ev("response.output_item.done", {"output_index": 0, "item": done_item}),
            ev("response.completed", {"response": {**resp, "status": "completed", "output": [done_item],
                                                   "usage": {"input_tokens": 5, "output_tokens": len(texts),
                                                             "total_tokens": 5 + len(texts)}}})]
    return out


def _sse_openai_tools(texts: list[str], tools: list[dict[str, str]]) -> list[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                                      ).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": t}) for t in texts]
    for i, tool in enumerate(tools):
        out.append(chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                          "function": {"name": tool["name"], "arguments": ""}}]}))
        args = tool.get("arguments", "{}")
        for j in range(0, len(args), 5):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]}))
    out.append(chunk({}, "tool_calls"))
    out.append(b"data: [DONE]\n\n")
    return out


def _sse_openai(texts: list[str], usage_total: int | None = None, field: str = "content") -> list[bytes]:
    out = []
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}
    out.append(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                           "finish_reason": None}]}).encode() + b"\n\n")
    for t in texts:
        out.append(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {field: t},
                                                               "finish_reason": None}]}).encode() + b"\n\n")
    total = usage_total if usage_total is not None else 5 + len(texts)
    out.append(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 5, "completion_tokens": total - 5,
                                                 "total_tokens": total}}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _sse_anthropic(texts: list[str]) -> list[bytes]:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    out = [ev("message_start", {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "fake-model", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}})]
    for t in texts:
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": t}}))
    out += [ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": len(texts)}}),
            ev("message_stop", {"type": "message_stop"})]
    return out


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def reset(self) -> None:
        self.requests.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve_http(self.handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def handle(self, req: Request) -> Response:
        self.requests.append(Seen(req.method, req.target, dict(req.headers), req.body, time.perf_counter()))
        h = req.headers
        status = int(h.get("x-fake-status", "200"))
        mode = h.get("x-fake-mode", "chat")
        texts = json.loads(h["x-fake-texts"]) if "x-fake-texts" in h else ["Hello", " from", " the", " fake", "."]
        delay = int(h.get("x-fake-delay-ms", "0")) / 1000
        chunk = int(h.get("x-fake-chunk", "0"))
        headers: list[tuple[str, str]] = []
        saw = h.get("authorization") or h.get("x-api-key") or ""
        if h.get("x-fake-echo-credential") == "1":
            headers.append(("x-upstream-saw", saw))

        pieces: list[bytes]
        if mode == "echo":
            ctype = "application/json"
            pieces = [json.dumps({"method": req.method, "path": req.target, "headers": h,
                                  "body": req.body.decode("utf-8", "replace")}).encode()]
        elif mode in ("deep-json", "deep-sse"):  # hostile nesting (x-fake-depth levels)
            depth = int(h.get("x-fake-depth", "100000"))
            doc = b"[" * depth + b"]" * depth
            if mode == "deep-json":
                ctype, pieces = "application/json", [doc]
            else:
                ctype, pieces = "text/event-stream", [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
                                                      b"data: " + doc + b"\n\n"]
        elif mode == "text":
            ctype = "text/plain"
            pieces = [h.get("x-fake-body", "").encode()]
        elif mode == "sse":
            ctype = "text/event-stream"
            pieces = _sse_openai(texts, int(h["x-fake-usage"]) if "x-fake-usage" in h else None,
                                 h.get("x-fake-field", "content"))
        elif mode == "sse-tools":
            ctype = "text/event-stream"
            pieces = _sse_openai_tools(texts, json.loads(h.get("x-fake-tools", "[]")))
        elif mode == "responses-sse":
            ctype = "text/event-stream"
            pieces = _sse_responses(texts)
        elif mode == "anthropic-sse":
            ctype = "text/event-stream"
            pieces = _sse_anthropic(texts)
        elif mode == "anthropic":
            ctype = "application/json"
            pieces = [json.dumps({"id": "msg_fake", "type": "message", "role": "assistant", "model": "fake-model",
                                  "content": [{"type": "text", "text": "".join(texts)}], "stop_reason": "end_turn",
                                  "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 3}}).encode()]
        else:
            ctype = "application/json"
            message = {"role": "assistant", h.get("x-fake-field", "content"): "".join(texts)}
            pieces = [json.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
                                  "model": "fake-model",
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()]
        if status >= 400 and mode not in ("text", "echo"):
            ctype = "application/json"
            msg = "Incorrect API key provided: " + saw if h.get("x-fake-echo-credential") == "1" else "upstream error"
            pieces = [json.dumps({"error": {"message": msg, "type": "invalid_request_error",
                                            "code": "invalid_api_key"}}).encode()]
        headers.append(("content-type", ctype))
        if chunk > 0:
            whole = b"".join(pieces)
            pieces = [whole[i:i + chunk] for i in range(0, len(whole), chunk)]
        if len(pieces) == 1 and delay == 0:
            return Response(status, headers, pieces[0])

        async def gen() -> AsyncIterator[bytes]:
            for p in pieces:
                if delay:
                    await asyncio.sleep(delay)
                yield p

        return Response(status, headers, gen())
