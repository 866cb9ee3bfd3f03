"""Protocol-aware response body maskers: mask the text a user reads, keep the protocol valid.

``body_masker_for(content_type, api, profile)`` picks one per response:

* ``text/event-stream``: events are parsed incrementally; each text stream (OpenAI chat
  ``choices[i].delta.content`` / ``.refusal`` / ``tool_calls[j].function.arguments`` /
  legacy ``choices[i].text``; Responses API ``response.*.delta``; Anthropic
  ``content_block_delta`` ``text_delta`` / ``input_json_delta``) gets its own
  ``StreamingMasker``, so a value split across events is still found. Text held back is
  emitted by a later event, so a delta may shrink or become empty; all other fields stay.
  **Flush strategy**: OpenAI chat -- the held text is appended to the delta of the chunk
  that carries the choice's ``finish_reason``; if a stream ends without one, a synthetic
  copy of that choice's last chunk carrying the held text goes before ``data: [DONE]``
  (or at the end). Anthropic -- a synthetic ``content_block_delta`` for the block goes
  right before its ``content_block_stop`` (or ``message_stop`` / the end). Responses API --
  a synthetic copy of the last ``*.delta`` event goes right before the matching ``*.done``
  (or ``response.completed`` / the end); ``*.done``, ``content_part.done``,
  ``output_item.done`` and ``response.completed`` carry whole texts, which are masked
  whole (not counted again). ``[DONE]`` stays last. Other ``data:`` that is not JSON is
  masked as plain text; JSON of an unknown shape has all its string values masked.
  Anthropic ``thinking_delta`` is passed unchanged: its signature covers the text.
* JSON (``application/json``, ``*+json``): buffered up to ``max_buffer``, the known
  answer fields are masked (chat, legacy completions, Responses, Anthropic messages);
  JSON of another shape, or any shape for ``api="generic"``, has every string value
  masked; invalid JSON is masked as plain text.
* Other text types (``text/*``, NDJSON, XML, ...): masked as a byte stream with bounded
  hold-back, so no buffering limit applies.
* Anything else: ``UnmaskableContent`` -- the caller decides (see
  ``is_text_content_type``); this module never passes bytes through unmasked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from extproc.errors import ExtprocError
from extproc.llmapi.sse import DEFAULT_MAX_EVENT_SIZE, SseEvent, SseParser, serialize_event
from extproc.masking.profile import MaskingProfile
from extproc.masking.streaming import ByteStreamMasker, StreamingMasker

__all__ = [
    "APIS",
    "BodyMasker",
    "BodyTooLarge",
    "JsonBodyMasker",
    "SseBodyMasker",
    "TextBodyMasker",
    "UnmaskableContent",
    "body_masker_for",
    "is_text_content_type",
    "media_type",
]

APIS: tuple[str, ...] = ("openai", "anthropic", "generic")
_JSON_TYPES = frozenset({"application/json", "text/json"})
_TEXT_APPLICATION_TYPES = frozenset({
    "application/x-ndjson", "application/jsonl", "application/xml", "application/javascript",
    "application/x-www-form-urlencoded", "application/yaml", "application/x-yaml", "application/graphql",
})


class BodyTooLarge(ExtprocError):
    """A body that must be buffered to be masked exceeds the limit; fail closed."""


class UnmaskableContent(ExtprocError):
    """The content type is not text; masking it would corrupt it."""


class BodyMasker(Protocol):
    """One per response. ``finish`` gets the last chunk and returns everything still held."""

    @property
    def counts(self) -> Counter[str]: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self, chunk: bytes) -> bytes: ...


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_text_content_type(content_type: str) -> bool:
    """True for types this module can mask. A missing content type counts as text."""
    media = media_type(content_type)
    return (
        media == ""
        or media.startswith("text/")
        or media in _JSON_TYPES
        or media in _TEXT_APPLICATION_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def body_masker_for(
    content_type: str, api: str, profile: MaskingProfile, *, max_buffer: int = 1 << 20
) -> BodyMasker:
    if api not in APIS:
        raise ValueError(f"unknown api {api!r} (expected one of {', '.join(APIS)})")
    media = media_type(content_type)
    if media == "text/event-stream":
        return SseBodyMasker(profile, max_event_size=max(max_buffer, DEFAULT_MAX_EVENT_SIZE))
    if media in _JSON_TYPES or media.endswith("+json"):
        return JsonBodyMasker(profile, api, max_buffer=max_buffer)
    if is_text_content_type(content_type):
        return TextBodyMasker(profile)
    raise UnmaskableContent(f"cannot mask content type {content_type!r}")


# ---------------------------------------------------------------------------
# plain text and JSON


class TextBodyMasker:
    def __init__(self, profile: MaskingProfile) -> None:
        self.counts: Counter[str] = Counter()
        self._masker = ByteStreamMasker(profile, self.counts)

    def feed(self, chunk: bytes) -> bytes:
        return self._masker.feed(chunk)

    def finish(self, chunk: bytes) -> bytes:
        return self._masker.feed(chunk) + self._masker.flush()


class JsonBodyMasker:
    def __init__(self, profile: MaskingProfile, api: str, *, max_buffer: int = 1 << 20) -> None:
        self.counts: Counter[str] = Counter()
        self._profile = profile
        self._api = api
        self._max = max_buffer
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        if len(self._buf) > self._max:
            raise BodyTooLarge(f"response body over {self._max} bytes")
        return b""

    def finish(self, chunk: bytes) -> bytes:
        self.feed(chunk)
        text = bytes(self._buf).decode("utf-8", "replace")
        self._buf.clear()
        try:
            doc = json.loads(text)
        except ValueError:
            return self._mask_text(text).encode("utf-8")
        masker = _ValueMasker(self._profile, self.counts)
        if self._api == "generic" or not mask_answer_fields(doc, masker):
            doc = masker.all_strings(doc)
        return _dumps(doc).encode("utf-8")

    def _mask_text(self, text: str) -> str:
        masked, counts = self._profile.mask(text)
        self.counts.update(counts)
        return masked


class _ValueMasker:
    """Masks whole strings in parsed JSON, optionally counting."""

    def __init__(self, profile: MaskingProfile, counts: Counter[str] | None) -> None:
        self._profile = profile
        self._counts = counts

    def text(self, value: str) -> str:
        masked, counts = self._profile.mask(value)
        if self._counts is not None:
            self._counts.update(counts)
        return masked

    def field(self, obj: Any, key: str) -> None:
        if isinstance(obj, dict) and isinstance(obj.get(key), str):
            obj[key] = self.text(obj[key])

    def all_strings(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.all_strings(v) for v in value]
        if isinstance(value, dict):
            return {k: self.all_strings(v) for k, v in value.items()}
        return value


def mask_answer_fields(doc: Any, masker: _ValueMasker) -> bool:
    """Mask the answer texts of a known non-streamed response shape in place.

    Returns False when the shape is not recognised.
    """
    if not isinstance(doc, dict):
        return False
    if isinstance(doc.get("choices"), list):  # OpenAI chat / legacy completions
        for choice in doc["choices"]:
            if not isinstance(choice, dict):
                continue
            masker.field(choice, "text")
            message = choice.get("message")
            if isinstance(message, dict):
                _mask_chat_message(message, masker)
        return True
    if isinstance(doc.get("output"), list):  # OpenAI Responses
        for item in doc["output"]:
            _mask_response_item(item, masker)
        masker.field(doc, "output_text")
        return True
    if doc.get("type") == "message" and isinstance(doc.get("content"), list):  # Anthropic
        for block in doc["content"]:
            _mask_anthropic_block(block, masker)
        return True
    return False


def _mask_chat_message(message: dict[str, Any], masker: _ValueMasker) -> None:
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = masker.text(content)
    elif isinstance(content, list):
        for part in content:
            masker.field(part, "text")
    masker.field(message, "refusal")
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            masker.field(call.get("function"), "arguments")
    masker.field(message.get("function_call"), "arguments")


def _mask_response_item(item: Any, masker: _ValueMasker) -> None:
    if not isinstance(item, dict):
        return
    for part in item.get("content") or ():
        masker.field(part, "text")
        masker.field(part, "refusal")
    masker.field(item, "arguments")


def _mask_anthropic_block(block: Any, masker: _ValueMasker) -> None:
    if not isinstance(block, dict):
        return
    masker.field(block, "text")
    if block.get("type") == "tool_use" and "input" in block:
        block["input"] = masker.all_strings(block["input"])


def _dumps(doc: Any) -> str:
    try:
        out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        out.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
        out = json.dumps(doc, separators=(",", ":"))
    return out


# ---------------------------------------------------------------------------
# server-sent events

_Key = tuple[Hashable, ...]
_ANTHROPIC_TYPES = frozenset({
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop", "ping",
})
# Responses API: delta event type -> (done event type, field in the done event)
_RESPONSES_STREAMS = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.refusal.delta": ("response.refusal.done", "refusal"),
    "response.function_call_arguments.delta": ("response.function_call_arguments.done", "arguments"),
}
_RESPONSES_DONE = {done: (delta, field) for delta, (done, field) in _RESPONSES_STREAMS.items()}
_RESPONSES_FINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "response.done"}
)


class _Stream:
    __slots__ = ("masker", "synthetic")

    def __init__(self, masker: StreamingMasker) -> None:
        self.masker = masker
        #: Builds an event carrying held text, modelled on the stream's last event.
        self.synthetic: Callable[[str], SseEvent] = lambda _text: SseEvent()


class SseBodyMasker:
    def __init__(self, profile: MaskingProfile, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self.counts: Counter[str] = Counter()
        self._profile = profile
        self._parser = SseParser(max_event_size=max_event_size)
        self._streams: dict[_Key, _Stream] = {}
        self._whole = _ValueMasker(profile, self.counts)
        # Final recaps repeat text already counted through the deltas.
        self._recap = _ValueMasker(profile, None)

    def feed(self, chunk: bytes) -> bytes:
        return self._write(self._parser.feed(chunk))

    def finish(self, chunk: bytes) -> bytes:
        out = self._write(self._parser.feed(chunk)) + self._write(self._parser.close())
        return out + b"".join(serialize_event(e) for e in self._flush_where(lambda _k: True))

    def _write(self, events: list[SseEvent]) -> bytes:
        return b"".join(serialize_event(out) for ev in events for out in self._event(ev))

    # -- dispatch ----------------------------------------------------------------------

    def _event(self, ev: SseEvent) -> list[SseEvent]:
        if ev.data is None:
            return [ev]
        if ev.data.strip() == "[DONE]":
            return [*self._flush_where(lambda _k: True), ev]
        try:
            obj = json.loads(ev.data)
        except ValueError:
            return [_with_data(ev, self._whole.text(ev.data))]
        if not isinstance(obj, dict):
            return [_with_data(ev, _dumps(self._whole.all_strings(obj)))]
        kind = obj.get("type")
        if isinstance(obj.get("choices"), list):
            return self._chat(ev, obj)
        if isinstance(kind, str) and kind.startswith("response."):
            return self._responses(ev, obj, kind)
        if kind in _ANTHROPIC_TYPES:
            return self._anthropic(ev, obj, kind)
        return [_with_data(ev, _dumps(self._whole.all_strings(obj)))]

    def _stream(self, key: _Key) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(StreamingMasker(self._profile, self.counts))
        return stream

    def _flush_where(self, pred: Callable[[_Key], bool]) -> list[SseEvent]:
        out = []
        for key in [k for k in self._streams if pred(k)]:
            stream = self._streams.pop(key)
            text = stream.masker.flush()
            if text:
                out.append(stream.synthetic(text))
        return out

    def _take(self, key: _Key) -> str:
        stream = self._streams.pop(key, None)
        return stream.masker.flush() if stream is not None else ""

    # -- OpenAI chat completions (and legacy completions) ----------------------------------

    def _chat(self, ev: SseEvent, obj: dict[str, Any]) -> list[SseEvent]:
        envelope = {k: v for k, v in obj.items() if k not in ("choices", "usage")}
        for position, choice in enumerate(obj["choices"]):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            finished = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for field in ("content", "refusal"):
                    if isinstance(delta.get(field), str):
                        key = ("chat", index, field)
                        delta[field] = self._feed_chat(key, delta[field], ev, envelope, index,
                                                       _field_delta(field))
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        j = call.get("index", 0)
                        fn["arguments"] = self._feed_chat(("chat", index, "tool", j), fn["arguments"], ev,
                                                          envelope, index, _tool_delta(j))
            if isinstance(choice.get("text"), str):
                choice["text"] = self._feed_chat(("chat", index, "text"), choice["text"], ev, envelope, index,
                                                 None)
            if finished:
                self._finish_choice(choice, index)
        return [_with_data(ev, _dumps(obj))]

    def _feed_chat(
        self,
        key: _Key,
        text: str,
        ev: SseEvent,
        envelope: dict[str, Any],
        index: Any,
        delta_for: Callable[[str], dict[str, Any]] | None,
    ) -> str:
        stream = self._stream(key)

        def synthetic(held: str) -> SseEvent:
            if delta_for is None:
                choice: dict[str, Any] = {"index": index, "text": held, "finish_reason": None}
            else:
                choice = {"index": index, "delta": delta_for(held), "finish_reason": None}
            return _with_data(ev, _dumps({**envelope, "choices": [choice]}))

        stream.synthetic = synthetic
        return stream.masker.feed(text)

    def _finish_choice(self, choice: dict[str, Any], index: Any) -> None:
        # The finishing chunk carries whatever its streams still hold.
        for key in [k for k in self._streams if k[0] == "chat" and k[1] == index]:
            held = self._take(key)
            if not held:
                continue
            field = key[2]
            if field == "text":
                choice["text"] = choice.get("text", "") + held
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            if field == "tool":
                calls = delta.get("tool_calls")
                if not isinstance(calls, list):
                    calls = delta["tool_calls"] = []
                for call in calls:
                    if isinstance(call, dict) and call.get("index", 0) == key[3] and isinstance(
                            call.get("function"), dict):
                        call["function"]["arguments"] = call["function"].get("arguments", "") + held
                        break
                else:
                    calls.append({"index": key[3], "function": {"arguments": held}})
            else:
                delta[field] = (delta.get(field) or "") + held

    # -- OpenAI Responses API --------------------------------------------------------------

    def _responses(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        if kind in _RESPONSES_STREAMS and isinstance(obj.get("delta"), str):
            key = _responses_key(kind, obj)
            stream = self._stream(key)
            template = dict(obj)

            def synthetic(held: str) -> SseEvent:
                return _with_data(ev, _dumps({**template, "delta": held}))

            stream.synthetic = synthetic
            obj["delta"] = stream.masker.feed(obj["delta"])
            return [_with_data(ev, _dumps(obj))]
        if kind in _RESPONSES_DONE:
            delta_kind, field = _RESPONSES_DONE[kind]
            key = _responses_key(delta_kind, obj)
            pre = self._flush_where(lambda k: k == key)
            self._recap.field(obj, field)
            return [*pre, _with_data(ev, _dumps(obj))]
        if kind == "response.content_part.done":
            part = obj.get("part")
            self._recap.field(part, "text")
            self._recap.field(part, "refusal")
            return [_with_data(ev, _dumps(obj))]
        if kind == "response.output_item.done":
            _mask_response_item(obj.get("item"), self._recap)
            return [_with_data(ev, _dumps(obj))]
        if kind in _RESPONSES_FINAL:
            pre = self._flush_where(lambda k: k[0] == "responses")
            response = obj.get("response")
            if isinstance(response, dict):
                for item in response.get("output") or ():
                    _mask_response_item(item, self._recap)
            return [*pre, _with_data(ev, _dumps(obj))]
        if kind == "response.error" or kind.endswith(".failed"):
            return [_with_data(ev, _dumps(self._whole.all_strings(obj)))]
        return [ev]

    # -- Anthropic messages ------------------------------------------------------------------

    def _anthropic(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        index = obj.get("index")
        if kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict):
                if isinstance(block.get("text"), str) and block["text"]:
                    block["text"] = self._feed_anthropic(ev, index, "text_delta", "text", block["text"])
                elif block.get("type") == "tool_use" and block.get("input"):
                    block["input"] = self._whole.all_strings(block["input"])
            return [_with_data(ev, _dumps(obj))]
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for dtype, field in (("text_delta", "text"), ("input_json_delta", "partial_json")):
                    if delta.get("type") == dtype and isinstance(delta.get(field), str):
                        delta[field] = self._feed_anthropic(ev, index, dtype, field, delta[field])
                        return [_with_data(ev, _dumps(obj))]
            return [ev]
        if kind == "content_block_stop":
            return [*self._flush_where(lambda k: k == ("anthropic", index)), ev]
        if kind == "message_stop":
            return [*self._flush_where(lambda k: k[0] == "anthropic"), ev]
        return [ev]

    def _feed_anthropic(self, ev: SseEvent, index: Any, dtype: str, field: str, text: str) -> str:
        stream = self._stream(("anthropic", index))
        name = "content_block_delta" if ev.event is not None else None

        def synthetic(held: str) -> SseEvent:
            payload = {"type": "content_block_delta", "index": index, "delta": {"type": dtype, field: held}}
            return SseEvent(data=_dumps(payload), event=name)

        stream.synthetic = synthetic
        return stream.masker.feed(text)


def _field_delta(field: str) -> Callable[[str], dict[str, Any]]:
    return lambda text: {field: text}


def _tool_delta(index: Any) -> Callable[[str], dict[str, Any]]:
    return lambda text: {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


def _responses_key(delta_kind: str, obj: dict[str, Any]) -> _Key:
    return ("responses", delta_kind, obj.get("item_id", obj.get("output_index")), obj.get("content_index"))


def _with_data(ev: SseEvent, data: str) -> SseEvent:
    return SseEvent(data=data, event=ev.event, id=ev.id, retry=ev.retry, comments=ev.comments)

