"""The Anthropic Messages API (and the legacy Text Completions endpoint)."""

from __future__ import annotations

from typing import Any

from extproc.llmapi import (
    Extraction,
    JsonPath,
    TextRef,
    any_body,
    estimate_tokens,
    max_output_tokens,
    parse_json_object,
    string_leaves,
)
from extproc.llmapi.attachments import Attachment, find_attachments
from extproc.llmapi.coverage import REQUEST_MAPS, part_refs, remaining_refs

__all__ = ["extract", "operation_for"]


def operation_for(method: str, path: str) -> tuple[str, bool]:
    """(operation, whether the body is a Messages request) for a normalized path."""
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:] or "/"
    if path == "/models" or path.startswith("/models/"):
        return "models", False
    if method != "POST":
        return "other", False
    if path == "/messages":
        return "messages", True
    if path == "/messages/count_tokens":
        # Not a generation, so not "messages" (budgets would count it), but the whole
        # prompt still leaves for the provider: read it like one.
        return "other", True
    if path == "/complete":
        return "completions", False
    return "other", False


def extract(method: str, path: str, body: bytes | None) -> Extraction:
    operation, is_messages = operation_for(method, path)
    if operation == "models" or (operation == "other" and not is_messages):
        # Not a prompt we model, but whatever it carries still leaves for the provider.
        return any_body(operation, body)
    doc, error = parse_json_object(body)
    if doc is None:
        return Extraction(operation=operation, governed=True, error=error)
    texts: list[TextRef] = []
    attachments: tuple[Attachment, ...] = ()
    if is_messages:
        _messages(doc, texts)
        # Everything the code above does not read, by the coverage map.
        texts.extend(remaining_refs(REQUEST_MAPS["messages"], doc))
        attachments = tuple(find_attachments("messages", doc))
        texts.extend(ref for a in attachments if (ref := a.ref("attachment")) is not None)
    elif isinstance(doc.get("prompt"), str):
        texts.append(TextRef(("prompt",), "prompt", doc["prompt"]))
    model = doc.get("model")
    return Extraction(
        operation=operation,
        governed=True,
        model=model if isinstance(model, str) else None,
        stream=doc.get("stream") is True,
        texts=tuple(texts),
        max_output_tokens=max_output_tokens(doc),
        prompt_tokens=estimate_tokens(texts),
        document=doc,
        attachments=attachments,
    )


def _messages(doc: dict[str, Any], out: list[TextRef]) -> None:
    system = doc.get("system")
    if isinstance(system, str):
        out.append(TextRef(("system",), "system", system))
    elif isinstance(system, list):
        _blocks(system, ("system",), "system", out)
    messages = doc.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                continue
            role = msg.get("role") if isinstance(msg.get("role"), str) else "unknown"
            content = msg.get("content")
            path: JsonPath = ("messages", i, "content")
            if isinstance(content, str):
                out.append(TextRef(path, str(role), content))
            elif isinstance(content, list):
                _blocks(content, path, str(role), out)


#: Block types read by the code below (attachments by the attachment inspector).
_DEDICATED = frozenset({"text", "tool_result", "tool_use", "server_tool_use", "document", "image"})


def _blocks(blocks: list[Any], path: JsonPath, role: str, out: list[TextRef], *, nested: bool = False) -> None:
    for j, block in enumerate(blocks):
        if isinstance(block, str):
            out.append(TextRef((*path, j), role, block))
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        base: JsonPath = (*path, j)
        if isinstance(block.get("text"), str):
            out.append(TextRef((*base, "text"), role, block["text"]))
        if kind not in _DEDICATED:
            # thinking, search results, server tool results, unknown blocks: by the map.
            rest = {k: v for k, v in block.items() if k != "text"}
            out.extend(part_refs(REQUEST_MAPS["messages"], rest, base, role))
        if kind in ("tool_use", "server_tool_use") and isinstance(block.get("name"), str):
            out.append(TextRef((*base, "name"), "tool_call", block["name"]))
        if kind == "tool_result" and not nested:
            content = block.get("content")
            if isinstance(content, str):
                out.append(TextRef((*base, "content"), "tool", content))
            elif isinstance(content, list):
                _blocks(content, (*base, "content"), "tool", out, nested=True)
        elif kind in ("tool_use", "server_tool_use") and "input" in block:
            out.extend(TextRef(p, "tool_call", s) for p, s in string_leaves(block["input"], (*base, "input")))
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                out.append(TextRef((*base, "source", "data"), role, source["data"]))
            elif (
                isinstance(source, dict) and source.get("type") == "content" and isinstance(source.get("content"), list)
            ):
                _blocks(source["content"], (*base, "source", "content"), role, out, nested=True)
