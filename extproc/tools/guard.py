"""The guard on the tool calls a *model* emits in a provider response.

OpenAI chat completions and Responses, Anthropic messages; JSON bodies and SSE streams. Each
call is decided by the ``tools:`` policy (``model``); :class:`ToolCallGuard` removes the
forbidden ones or ends the response with an error. Pure; never raises on response content.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from extproc.llmapi.sse import DEFAULT_MAX_EVENT_SIZE, SseEvent, SseParser, serialize_event
from extproc.masking.responses import BodyTooLarge, media_type
from extproc.tools.config import DEFAULT_BLOCK_MESSAGE
from extproc.tools.model import ToolDecision, ToolPolicy, ToolRequest

__all__ = ["ToolCallGuard"]

#: A held call's arguments were not given whole (only streamed as deltas).
_MISSING: object = object()
_Key = tuple[Any, ...]
_ANTHROPIC_TYPES = frozenset({
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop", "ping", "error",
})


@dataclass
class _Call:
    """A streamed tool call being held until its arguments are complete."""

    key: _Key
    name: str = ""
    arguments: str = ""
    #: Arguments given whole (Anthropic ``input``, a Responses ``*.done`` event); wins over deltas.
    final: Any = _MISSING
    #: Held events: (original event, parsed data) -- rebuilt on release so indexes can shift.
    events: list[tuple[SseEvent, Any]] = field(default_factory=list)


class ToolCallGuard:
    """Checks tool calls a model emits in a provider response; ``BodyMasker``-style feed/finish.

    ``api`` is ``openai`` (chat completions and Responses, told apart by shape) or
    ``anthropic``. Calls the policy blocks (or would hold for approval, which a response
    cannot wait for) are forbidden: ``on_forbidden="remove"`` drops them (renumbering later
    calls and blocks so client accumulators stay consistent, and turning a finish reason that
    announced tool calls into a normal stop when none is left); ``"error"`` replaces the rest
    of the response with one error event (JSON: the whole body with an error document).

    In SSE a tool call's events are held from its start until its arguments are complete,
    then released in order or dropped; everything else flows through immediately.
    """

    def __init__(
        self,
        policy: ToolPolicy,
        user: str,
        groups: Sequence[str],
        api: Literal["openai", "anthropic"],
        on_forbidden: Literal["remove", "error"] = "remove",
        *,
        content_type: str = "application/json",
        provider: str = "",
        max_buffer: int = 1 << 20,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        if api not in ("openai", "anthropic"):
            raise ValueError(f"unknown api {api!r}")
        self._policy = policy
        self._user = user
        self._groups = tuple(groups)
        self._api = api
        self._error = on_forbidden == "error"
        self._provider = provider
        self._media = media_type(content_type)
        self._sse = SseParser(max_event_size=max_event_size) if self._media == "text/event-stream" else None
        self._json = self._sse is None and (self._media in ("application/json", "text/json")
                                            or self._media.endswith("+json"))
        self._buf = bytearray()
        self._max = max_buffer
        self._held: dict[_Key, _Call] = {}
        self._dead = False
        # Per container ("chat", choice) / ("responses",) / ("anthropic",): removed and kept indexes.
        self._removed: dict[_Key, list[int]] = {}
        self._kept: Counter[_Key] = Counter()
        self._responses_seen = False
        self.decisions: list[ToolDecision] = []
        self.blocked: list[str] = []

    # -- plumbing ------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if self._sse is not None:
            return self._emit(self._sse.feed(chunk))
        if not self._json:
            return chunk  # not a shape that carries tool calls
        self._buf += chunk
        if len(self._buf) > self._max:
            raise BodyTooLarge(f"response larger than {self._max} bytes")
        return b""

    def finish(self, chunk: bytes) -> bytes:
        if self._sse is not None:
            out = self._emit(self._sse.feed(chunk)) + self._emit(self._sse.close())
            if not self._dead:
                out += b"".join(serialize_event(e) for e in self._complete(lambda _k: True))
            return out
        if not self._json:
            return chunk
        out = self.feed(chunk)
        body = bytes(self._buf)
        self._buf.clear()
        return out + self._json_body(body)

    def _emit(self, events: list[SseEvent]) -> bytes:
        out: list[SseEvent] = []
        for ev in events:
            if self._dead:
                break
            out.extend(self._event(ev))
        return b"".join(serialize_event(e) for e in out)

    def _decide(self, name: str, arguments: Mapping[str, Any] | None) -> bool:
        """Record the decision; True when the call may stay."""
        decision = self._policy.evaluate(ToolRequest(
            user=self._user, groups=self._groups, server=self._provider, tool=name, arguments=arguments))
        self.decisions.append(decision)
        if decision.action in ("block", "require_approval"):
            self.blocked.append(name)
            return False
        return True

    def _shift(self, container: _Key, index: Any) -> Any:
        if not isinstance(index, int) or isinstance(index, bool):
            return index
        return index - sum(1 for r in self._removed.get(container, ()) if r < index)

    # -- JSON bodies ---------------------------------------------------------------------

    def _json_body(self, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return body  # no client reads tool calls from it either
        if not isinstance(doc, dict):
            return body
        changed = False
        if isinstance(doc.get("choices"), list):
            changed = self._json_chat(doc)
        elif isinstance(doc.get("output"), list):
            changed = self._json_responses(doc)
        elif isinstance(doc.get("content"), list):
            changed = self._json_anthropic(doc)
        if self._dead:
            return self._error_document()
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass") \
            if changed else body

    def _forbidden(self, name: object, arguments: Mapping[str, Any] | None) -> bool:
        allowed = self._decide(name if isinstance(name, str) else "", arguments)
        if not allowed and self._error:
            self._dead = True
        return not allowed

    def _json_chat(self, doc: dict[str, Any]) -> bool:
        changed = False
        for choice in doc["choices"]:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                kept = []
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    fn = fn if isinstance(fn, dict) else {}
                    if self._forbidden(fn.get("name"), _object_or_none(fn.get("arguments"))):
                        changed = True
                    else:
                        kept.append(call)
                if len(kept) != len(calls):
                    if kept:
                        message["tool_calls"] = kept
                    else:
                        del message["tool_calls"]
                        if choice.get("finish_reason") == "tool_calls":
                            choice["finish_reason"] = "stop"
            legacy = message.get("function_call")
            if isinstance(legacy, dict) and self._forbidden(legacy.get("name"),
                                                            _object_or_none(legacy.get("arguments"))):
                del message["function_call"]
                if choice.get("finish_reason") == "function_call":
                    choice["finish_reason"] = "stop"
                changed = True
        return changed

    def _json_responses(self, doc: dict[str, Any]) -> bool:
        kept = []
        for item in doc["output"]:
            if isinstance(item, dict) and item.get("type") == "function_call" and self._forbidden(
                    item.get("name"), _object_or_none(item.get("arguments"))):
                continue
            kept.append(item)
        if len(kept) == len(doc["output"]):
            return False
        doc["output"] = kept
        return True

    def _json_anthropic(self, doc: dict[str, Any]) -> bool:
        kept = []
        for block in doc["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                args = block.get("input")
                if self._forbidden(block.get("name"), args if isinstance(args, dict) else None):
                    continue
            kept.append(block)
        if len(kept) == len(doc["content"]):
            return False
        doc["content"] = kept
        if doc.get("stop_reason") == "tool_use" and not any(
                isinstance(b, dict) and b.get("type") == "tool_use" for b in kept):
            doc["stop_reason"] = "end_turn"
        return True

    def _error_document(self) -> bytes:
        message = self._error_message()
        if self._api == "anthropic":
            doc: dict[str, Any] = {"type": "error", "error": {"type": "permission_error", "message": message}}
        else:
            doc = {"error": {"message": message, "type": "tool_call_blocked", "code": "tool_call_blocked",
                             "param": None}}
        return json.dumps(doc, separators=(",", ":")).encode()

    def _error_message(self) -> str:
        last = next((d for d in reversed(self.decisions) if d.action in ("block", "require_approval")), None)
        text = last.message if last is not None and last.message else DEFAULT_BLOCK_MESSAGE
        return f"The model called tool {last.tool!r}, which is not allowed: {text}" if last else text

    # -- SSE dispatch ----------------------------------------------------------------------

    def _event(self, ev: SseEvent) -> list[SseEvent]:
        if ev.data is None:
            return [ev]
        if ev.data.strip() == "[DONE]":
            pre = self._complete(lambda _k: True)
            return pre if self._dead else [*pre, ev]
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError):
            return [ev]
        if not isinstance(obj, dict):
            return [ev]
        kind = obj.get("type") if isinstance(obj.get("type"), str) else None
        if isinstance(obj.get("choices"), list):
            return self._chat(ev, obj)
        if isinstance(kind, str) and kind.startswith("response."):
            return self._responses(ev, obj, kind)
        if kind in _ANTHROPIC_TYPES:
            return self._anthropic(ev, obj, kind)
        return [ev]

    def _complete(self, pred: Callable[[_Key], bool]) -> list[SseEvent]:
        """Decide every held call whose key satisfies ``pred``; the events to emit now."""
        out: list[SseEvent] = []
        for key in [k for k in self._held if pred(k)]:
            if self._dead:
                break
            call = self._held.pop(key)
            container, index = key[:-1], key[-1]
            args = call.final if call.final is not _MISSING else _object_or_none(call.arguments or "{}")
            if not isinstance(args, Mapping):
                args = None
            if self._decide(call.name, args):
                self._kept[container] += 1
                out.extend(self._rebuild(ev, obj) for ev, obj in call.events)
            elif self._error:
                self._dead = True
                out.extend(self._tail())
            else:
                self._removed.setdefault(container, []).append(index)
        return out

    def _tail(self) -> list[SseEvent]:
        """What replaces the rest of the stream after a forbidden call in error mode."""
        self._dead = True
        message = self._error_message()
        if self._api == "anthropic":
            data = {"type": "error", "error": {"type": "permission_error", "message": message}}
            return [SseEvent(data=_dumps(data), event="error")]
        error = {"message": message, "type": "tool_call_blocked", "code": "tool_call_blocked", "param": None}
        if self._responses_seen and self._api == "openai":
            # ResponseErrorEvent's fields, plus "error", on which the SDK raises APIError.
            recap = {"type": "error", "code": "tool_call_blocked", "message": message, "param": None, "error": error}
            return [SseEvent(data=_dumps(recap), event="error")]
        return [SseEvent(data=_dumps({"error": error})), SseEvent(data="[DONE]")]

    def _rebuild(self, ev: SseEvent, obj: Any) -> SseEvent:
        """A held event with its indexes shifted past calls removed before it."""
        if isinstance(obj, dict):
            obj = self._renumber(obj)
        return _with_data(ev, _dumps(obj)) if obj is not None else ev

    def _renumber(self, obj: dict[str, Any]) -> dict[str, Any]:
        if isinstance(obj.get("choices"), list):
            for choice in obj["choices"]:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    container = ("chat", choice.get("index", 0))
                    for call in choice["delta"].get("tool_calls") or ():
                        if isinstance(call, dict) and "index" in call:
                            call["index"] = self._shift(container, call["index"])
        elif "output_index" in obj:
            obj["output_index"] = self._shift(("responses",), obj["output_index"])
        elif obj.get("type") in _ANTHROPIC_TYPES and "index" in obj:
            obj["index"] = self._shift(("anthropic",), obj["index"])
        return obj

    # -- OpenAI chat completions -------------------------------------------------------------

    def _chat(self, ev: SseEvent, obj: dict[str, Any]) -> list[SseEvent]:
        out: list[SseEvent] = []
        envelope = {k: v for k, v in obj.items() if k != "choices"}
        rest: list[Any] = []
        for position, choice in enumerate(obj["choices"]):
            if not isinstance(choice, dict):
                rest.append(choice)
                continue
            i = _index(choice.get("index"), position)
            delta = choice.get("delta")
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if isinstance(delta, dict) and isinstance(calls, list) and calls:
                for entry in calls:
                    j = _index(entry.get("index"), 0) if isinstance(entry, dict) else 0
                    key = ("chat", i, j)
                    # OpenAI streams one call after another: a new index completes the others.
                    out += self._complete(_other_calls_of(i, key))
                    call = self._held.get(key)
                    if call is None:
                        call = self._held[key] = _Call(key)
                    fn = entry.get("function") if isinstance(entry, dict) else None
                    if isinstance(fn, dict):
                        # Concatenated, as the SDK's stream accumulator does.
                        if isinstance(fn.get("name"), str):
                            call.name += fn["name"]
                        if isinstance(fn.get("arguments"), str):
                            call.arguments += fn["arguments"]
                    piece = {**envelope, "choices": [{"index": i, "delta": {"tool_calls": [entry]},
                                                      "finish_reason": None}]}
                    call.events.append((ev, piece))
                choice = {**choice, "delta": {k: v for k, v in delta.items() if k != "tool_calls"}}
                if not _chat_choice_matters(choice):
                    continue
            if choice.get("finish_reason") is not None:
                out += self._complete(_calls_of(i))
                if self._dead:
                    return out
                container = ("chat", i)
                if self._removed.get(container) and not self._kept[container] and \
                        choice.get("finish_reason") in ("tool_calls", "function_call"):
                    choice = {**choice, "finish_reason": "stop"}
            rest.append(choice)
        if self._dead:
            return out
        if rest or not obj["choices"]:
            out.append(_with_data(ev, _dumps({**obj, "choices": rest})))
        elif obj.get("usage"):
            out.append(_with_data(ev, _dumps({**obj, "choices": []})))
        return out

    # -- OpenAI Responses ----------------------------------------------------------------------

    def _responses(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        self._responses_seen = True
        index = _index(obj.get("output_index"), None)
        key = ("responses", index)
        if kind == "response.output_item.added":
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                call = self._held[key] = _Call(key)
                call.name = str(item["name"]) if isinstance(item.get("name"), str) else ""
                if isinstance(item.get("arguments"), str):
                    call.arguments = item["arguments"]
                call.events.append((ev, obj))
                return []
        held = self._held.get(key) if index is not None else None
        if held is not None:
            call = held
            call.events.append((ev, obj))
            if kind == "response.function_call_arguments.delta" and isinstance(obj.get("delta"), str):
                call.arguments += obj["delta"]
            elif kind == "response.function_call_arguments.done" and isinstance(obj.get("arguments"), str):
                call.final = _object_or_none(obj["arguments"])
            elif kind == "response.output_item.done":
                item = obj.get("item")
                if isinstance(item, dict):
                    if isinstance(item.get("name"), str):
                        call.name = item["name"]
                    if isinstance(item.get("arguments"), str):
                        call.final = _object_or_none(item["arguments"])
                return self._complete(lambda k: k == key)
            return []
        pre: list[SseEvent] = []
        response = obj.get("response")
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            # A final recap (completed / incomplete / failed): decide anything still held and
            # drop removed calls from the recap too, or the client would see them there.
            pre = self._complete(lambda k: k[0] == "responses")
            if self._dead:
                return pre
            removed = set(self._removed.get(("responses",), ()))
            output = [it for n, it in enumerate(response["output"])
                      if not (n in removed and isinstance(it, dict) and it.get("type") == "function_call")]
            if len(output) != len(response["output"]):
                obj = {**obj, "response": {**response, "output": output}}
                return [*pre, _with_data(ev, _dumps(obj))]
        if "output_index" in obj and self._removed.get(("responses",)):
            return [*pre, _with_data(ev, _dumps(self._renumber(obj)))]
        return [*pre, ev]

    # -- Anthropic messages ----------------------------------------------------------------------

    def _anthropic(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        index = _index(obj.get("index"), None)
        key = ("anthropic", index)
        if kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                call = self._held[key] = _Call(key)
                call.name = str(block["name"]) if isinstance(block.get("name"), str) else ""
                if isinstance(block.get("input"), dict) and block["input"]:
                    call.final = block["input"]
                call.events.append((ev, obj))
                return []
        held = self._held.get(key) if index is not None else None
        if held is not None and kind in ("content_block_delta", "content_block_stop"):
            call = held
            call.events.append((ev, obj))
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "input_json_delta" and \
                    isinstance(delta.get("partial_json"), str):
                call.arguments += delta["partial_json"]
                call.final = _MISSING  # streamed input replaces the (empty) start input
            if kind == "content_block_stop":
                return self._complete(lambda k: k == key)
            return []
        pre: list[SseEvent] = []
        if kind in ("message_delta", "message_stop"):
            pre = self._complete(lambda k: k[0] == "anthropic")
            if self._dead:
                return pre
        if kind == "message_delta":
            delta = obj.get("delta")
            container = ("anthropic",)
            if isinstance(delta, dict) and delta.get("stop_reason") == "tool_use" and \
                    self._removed.get(container) and not self._kept[container]:
                obj = {**obj, "delta": {**delta, "stop_reason": "end_turn"}}
                return [*pre, _with_data(ev, _dumps(obj))]
        if "index" in obj and self._removed.get(("anthropic",)):
            return [*pre, _with_data(ev, _dumps(self._renumber(obj)))]
        return [*pre, ev]


def _calls_of(choice: object) -> Callable[[_Key], bool]:
    return lambda k: k[:2] == ("chat", choice)


def _other_calls_of(choice: object, key: _Key) -> Callable[[_Key], bool]:
    return lambda k: k[:2] == ("chat", choice) and k != key


def _index(value: Any, fallback: Any) -> Any:
    """An index usable as a key: providers send ints; anything else (even unhashable) falls back."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return fallback


def _chat_choice_matters(choice: dict[str, Any]) -> bool:
    """Whether what is left of a choice after taking its tool calls out is worth an event."""
    if choice.get("finish_reason") is not None or choice.get("logprobs"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(v not in (None, "", [], {}) for v in delta.values())


def _object_or_none(text: object) -> Mapping[str, Any] | None:
    if isinstance(text, Mapping):
        return text
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _dumps(doc: object) -> str:
    try:
        out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(doc, separators=(",", ":"))
    return out


def _with_data(ev: SseEvent, data: str) -> SseEvent:
    return SseEvent(data=data, event=ev.event, id=ev.id, retry=ev.retry, comments=ev.comments)
