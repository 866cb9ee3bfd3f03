"""The OpenAI API (and compatible servers): Chat Completions, Responses, legacy Completions, Embeddings.

Paths are accepted with or without the ``/v1`` version segment, and in the Azure OpenAI
form ``/openai/deployments/<deployment>/<operation>`` (the deployment is the model when
the body names none).
"""

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
from extproc.llmapi.attachments import find_attachments
from extproc.llmapi.coverage import REQUEST_MAPS, FieldMap, part_refs, remaining_refs

__all__ = ["extract", "operation_for"]

_OPERATIONS = {
    "/chat/completions": "chat",
    "/responses": "responses",
    "/completions": "completions",
    "/embeddings": "embeddings",
}


def operation_for(method: str, path: str) -> tuple[str, str | None]:
    """(operation, Azure deployment name or None) for a normalized path."""
    deployment = None
    if path.startswith("/openai/deployments/"):
        rest = path[len("/openai/deployments/") :]
        deployment, _, tail = rest.partition("/")
        path = "/" + tail
    elif path.startswith("/openai/"):
        path = path[len("/openai") :]
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:] or "/"
    if path == "/models" or path.startswith("/models/"):
        return "models", deployment
    op = _OPERATIONS.get(path)
    if op is not None and method == "POST":
        return op, deployment or None
    return "other", deployment or None


def extract(method: str, path: str, body: bytes | None) -> Extraction:
    operation, deployment = operation_for(method, path)
    if operation in ("models", "other"):
        # Not a prompt we model, but whatever it carries still leaves for the provider.
        return any_body(operation, body, deployment)
    doc, error = parse_json_object(body)
    if doc is None:
        return Extraction(operation=operation, governed=True, model=deployment, error=error)
    texts: list[TextRef] = []
    token_ids = 0
    if operation == "chat":
        _chat(doc, texts)
    elif operation == "responses":
        _responses(doc, texts)
    elif operation == "completions":
        token_ids = _prompts(doc, "prompt", texts)
        if isinstance(doc.get("suffix"), str):
            texts.append(TextRef(("suffix",), "prompt", doc["suffix"]))
    else:
        token_ids = _prompts(doc, "input", texts)
    # Everything the code above does not read, by the coverage map: other text fields,
    # stored metadata, structure that fails its shape, unknown fields.
    texts.extend(remaining_refs(REQUEST_MAPS[operation], doc))
    attachments = tuple(find_attachments(operation, doc))
    texts.extend(ref for a in attachments if (ref := a.ref("attachment")) is not None)
    model = doc.get("model")
    return Extraction(
        operation=operation,
        governed=True,
        model=model if isinstance(model, str) else deployment,
        stream=doc.get("stream") is True,
        texts=tuple(texts),
        max_output_tokens=max_output_tokens(doc),
        prompt_tokens=estimate_tokens(texts, token_ids),
        document=doc,
        attachments=attachments,
    )


def _chat(doc: dict[str, Any], out: list[TextRef]) -> None:
    messages = doc.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                continue
            role = msg.get("role") if isinstance(msg.get("role"), str) else "unknown"
            base: JsonPath = ("messages", i)
            _content(msg.get("content"), (*base, "content"), str(role), out, REQUEST_MAPS["chat"])
            if isinstance(msg.get("refusal"), str):
                out.append(TextRef((*base, "refusal"), str(role), msg["refusal"]))
            calls = msg.get("tool_calls")
            if isinstance(calls, list):
                for j, call in enumerate(calls):
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                        out.append(TextRef((*base, "tool_calls", j, "function", "name"), "tool_call", fn["name"]))
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        out.append(
                            TextRef(
                                (*base, "tool_calls", j, "function", "arguments"),
                                "tool_call",
                                fn["arguments"],
                            )
                        )
            legacy = msg.get("function_call")
            if isinstance(legacy, dict):
                for key in ("name", "arguments"):
                    if isinstance(legacy.get(key), str):
                        out.append(TextRef((*base, "function_call", key), "tool_call", legacy[key]))
    prediction = doc.get("prediction")
    if isinstance(prediction, dict):
        _content(prediction.get("content"), ("prediction", "content"), "prediction", out, REQUEST_MAPS["chat"])


def _content(content: Any, path: JsonPath, role: str, out: list[TextRef], fmap: FieldMap) -> None:
    """A string, or a list of parts: text parts in order (matched joined), other parts by
    the coverage map (attachments are read by the attachment inspector)."""
    if isinstance(content, str):
        out.append(TextRef(path, role, content))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, str):
                out.append(TextRef((*path, j), role, part))
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(TextRef((*path, j, "text"), role, part["text"]))
                    rest = {k: v for k, v in part.items() if k != "text"}
                else:
                    rest = dict(part)
                out.extend(part_refs(fmap, rest, (*path, j), role))


def _responses(doc: dict[str, Any], out: list[TextRef]) -> None:
    if isinstance(doc.get("instructions"), str):
        out.append(TextRef(("instructions",), "developer", doc["instructions"]))
    items = doc.get("input")
    if isinstance(items, str):
        out.append(TextRef(("input",), "user", items))
    elif isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(TextRef(("input", i), "user", item))
                continue
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            role = item.get("role") if isinstance(item.get("role"), str) else str(kind or "input")
            base: JsonPath = ("input", i)
            fmap = REQUEST_MAPS["responses"]
            _content(item.get("content"), (*base, "content"), str(role), out, fmap)
            # Tool results the model reads, and tool calls it made earlier in the thread.
            output = item.get("output")
            if isinstance(output, str):
                out.append(TextRef((*base, "output"), "tool", output))
            elif isinstance(output, list):
                _content(output, (*base, "output"), "tool", out, fmap)
            if isinstance(item.get("arguments"), str):
                out.append(TextRef((*base, "arguments"), "tool_call", item["arguments"]))
            if isinstance(item.get("input"), str):
                out.append(TextRef((*base, "input"), "tool_call", item["input"]))
            summary = item.get("summary")
            if isinstance(summary, list):
                _content(summary, (*base, "summary"), "assistant", out, fmap)
    prompt = doc.get("prompt")
    if isinstance(prompt, dict):
        for key, value in prompt.items():
            if key == "variables":
                out.extend(TextRef(p, "user", s) for p, s in string_leaves(value, ("prompt", "variables")))
            elif not (isinstance(value, str) and len(value) <= 256 and value.isprintable()):
                # id and version are identifiers; anything else is read.
                out.extend(TextRef(p, "unknown", s, "unknown") for p, s in string_leaves(value, ("prompt", key)))


def _prompts(doc: dict[str, Any], key: str, out: list[TextRef]) -> int:
    """Collect a string-or-list prompt; returns how many token ids were sent as integers."""
    value = doc.get(key)
    role = "prompt" if key == "prompt" else "input"
    if isinstance(value, str):
        out.append(TextRef((key,), role, value))
        return 0
    token_ids = 0
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(TextRef((key, i), role, item))
            elif isinstance(item, int) and not isinstance(item, bool):
                token_ids += 1
            elif isinstance(item, list):
                token_ids += sum(1 for t in item if isinstance(t, int) and not isinstance(t, bool))
    return token_ids
