"""Stream grammars of the streamed APIs, as checkers: a masked stream must still satisfy them.

Each checker takes the parsed SSE events of one answer and raises AssertionError naming the
first violation. Shared by the unit tests (synthetic events) and the e2e tests (real Envoy).
"""

from __future__ import annotations

import json
from typing import Any

from extproc.llmapi.sse import SseEvent, parse_events


def _payloads(events: list[SseEvent]) -> list[Any]:
    return [e.data for e in events if e.data is not None]


def check_chat_stream(body: bytes) -> list[dict[str, Any]]:
    """OpenAI chat completions: JSON chunks with choices, ``[DONE]`` once and last, nothing
    for a choice after its finish_reason (usage-only chunks excepted)."""
    datas = _payloads(parse_events(body))
    assert datas, "empty stream"
    assert datas[-1].strip() == "[DONE]", "stream must end with [DONE]"
    assert sum(1 for d in datas if d.strip() == "[DONE]") == 1, "[DONE] more than once"
    finished: set[Any] = set()
    chunks = []
    for d in datas[:-1]:
        obj = json.loads(d)
        chunks.append(obj)
        assert obj.get("object", "chat.completion.chunk") == "chat.completion.chunk", obj
        assert isinstance(obj.get("choices"), list), obj
        for choice in obj["choices"]:
            idx = choice["index"]
            assert idx not in finished, f"choice {idx} continued after its finish_reason"
            delta = choice.get("delta", {})
            assert isinstance(delta, dict)
            if choice.get("finish_reason") is not None:
                finished.add(idx)
    return chunks


def check_responses_stream(body: bytes) -> list[dict[str, Any]]:
    """OpenAI Responses: unique, consecutive sequence numbers; deltas of an item between its
    ``output_item.added`` and ``output_item.done``, before their own ``*.done``; a final
    ``response.completed`` (or incomplete/failed) last."""
    events = [json.loads(d) for d in _payloads(parse_events(body))]
    assert events, "empty stream"
    seqs = [e["sequence_number"] for e in events if "sequence_number" in e]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"sequence numbers not consecutive: {seqs}"
    open_items: set[Any] = set()
    closed_items: set[Any] = set()
    done_keys: set[Any] = set()
    for e in events:
        kind = e["type"]
        if kind == "response.output_item.added":
            open_items.add(e["item"].get("id"))
        elif kind == "response.output_item.done":
            closed_items.add(e["item"].get("id"))
        elif kind.endswith(".delta"):
            item = e.get("item_id")
            assert item in open_items and item not in closed_items, f"{kind} outside its item: {e}"
            key = (kind[: -len(".delta")], item, e.get("content_index"), e.get("summary_index"))
            assert key not in done_keys, f"{kind} after its .done: {e}"
        elif kind.endswith(".done"):
            done_keys.add((kind[: -len(".done")], e.get("item_id"), e.get("content_index"), e.get("summary_index")))
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed"), events[-1]
    return events


_ANTHROPIC_DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
    "server_tool_use": {"input_json_delta"},
}


def check_anthropic_stream(body: bytes) -> list[dict[str, Any]]:
    """Anthropic messages: message_start first, message_stop last; per block index a
    content_block_start, deltas of the block's kind, one content_block_stop."""
    events = parse_events(body)
    objs = []
    for e in events:
        if e.data is None:
            continue
        obj = json.loads(e.data)
        if e.event is not None:
            assert e.event == obj["type"], f"event name {e.event} != type {obj['type']}"
        objs.append(obj)
    assert objs and objs[0]["type"] == "message_start", "must start with message_start"
    assert objs[-1]["type"] == "message_stop", "must end with message_stop"
    blocks: dict[int, str] = {}
    stopped: set[int] = set()
    for obj in objs:
        kind = obj["type"]
        if kind == "content_block_start":
            i = obj["index"]
            assert i not in blocks, f"block {i} started twice"
            blocks[i] = obj["content_block"]["type"]
        elif kind == "content_block_delta":
            i = obj["index"]
            assert i in blocks and i not in stopped, f"delta outside block {i}"
            allowed = _ANTHROPIC_DELTAS.get(blocks[i])
            if allowed is not None:
                assert obj["delta"]["type"] in allowed, f"{obj['delta']['type']} in a {blocks[i]} block"
        elif kind == "content_block_stop":
            i = obj["index"]
            assert i in blocks and i not in stopped, f"block {i} stopped twice or never started"
            stopped.add(i)
    assert set(blocks) == stopped, "a block was never stopped"
    return objs
