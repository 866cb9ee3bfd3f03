"""Protocol-aware response body maskers: mask the text a user reads, keep the protocol valid.

``body_masker_for(content_type, api, profile)`` picks one per response:

* ``text/event-stream``: events are parsed incrementally; each text stream (OpenAI chat
  ``choices[i].delta.<any text member>`` -- content, refusal, reasoning_content,
  reasoning -- and ``tool_calls[j].function.arguments`` / legacy ``choices[i].text``;
  Responses API ``response.*.delta``; Anthropic ``content_block_delta`` text, thinking and
  input_json deltas) gets its own ``NormalisedStreamingMasker``, so a value split across
  events, or disguised with invisible or look-alike characters, is still found. Text held back is
  emitted by a later event, so a delta may shrink or become empty; all other fields stay.
  **Flush strategy**: OpenAI chat -- the held text is appended to the delta of the chunk
  that carries the choice's ``finish_reason``; if a stream ends without one, a synthetic
  copy of that choice's last chunk carrying the held text goes before ``data: [DONE]``
  (or at the end). Anthropic -- a synthetic ``content_block_delta`` for the block goes
  right before its ``content_block_stop`` (or ``message_stop`` / the end). Responses API --
  a synthetic copy of the last ``*.delta`` event goes right before the matching ``*.done``
  (or ``response.completed`` / the end), with a sequence number of its own (later events
  are renumbered, so numbers stay unique and consecutive); recaps carry whole texts, which
  are masked whole (not counted again). ``[DONE]`` stays last. Other ``data:`` that is not
  JSON is masked as plain text; JSON of an unknown shape has all its string values masked
  except identifiers (``STRUCTURAL_KEYS``). A thinking block whose text was masked loses its
  signature, or the answer is refused (``signed_thinking``).
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
from extproc.llmapi import NestingTooDeep, load_bounded
from extproc.llmapi.sse import DEFAULT_MAX_EVENT_SIZE, SseEvent, SseParser, serialize_event
from extproc.masking.normalised import NormalisedStreamingMasker, mask_text
from extproc.masking.profile import MaskingProfile
from extproc.masking.streaming import ByteStreamMasker

__all__ = [
    "APIS",
    "SIGNED_THINKING",
    "STRUCTURAL_KEYS",
    "AnswerRefused",
    "BodyMasker",
    "BodyTooLarge",
    "JsonBodyMasker",
    "NestedTooDeep",
    "SseBodyMasker",
    "TextBodyMasker",
    "Uncheckable",
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


class Uncheckable(ExtprocError):
    """An answer this module cannot check; fail closed. The message is safe to show."""


class BodyTooLarge(Uncheckable):
    """A body that must be buffered to be masked exceeds the limit; fail closed."""


class NestedTooDeep(Uncheckable):
    """JSON (a body or an SSE event) nested deeper than any API answer is; fail closed."""


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
    content_type: str,
    api: str,
    profile: MaskingProfile,
    *,
    max_buffer: int = 1 << 20,
    signed_thinking: str = "mask",
) -> BodyMasker:
    """``signed_thinking``: ``mask`` (a thinking block whose text was masked loses its
    signature) or ``refuse`` (such an answer is refused with :class:`AnswerRefused`)."""
    if api not in APIS:
        raise ValueError(f"unknown api {api!r} (expected one of {', '.join(APIS)})")
    if signed_thinking not in SIGNED_THINKING:
        raise ValueError(f"signed_thinking must be one of {', '.join(SIGNED_THINKING)}")
    media = media_type(content_type)
    if media == "text/event-stream":
        return SseBodyMasker(profile, max_event_size=max(max_buffer, DEFAULT_MAX_EVENT_SIZE),
                             signed_thinking=signed_thinking)
    if media in _JSON_TYPES or media.endswith("+json"):
        return JsonBodyMasker(profile, api, max_buffer=max_buffer, signed_thinking=signed_thinking)
    if is_text_content_type(content_type):
        return TextBodyMasker(profile)
    raise UnmaskableContent(f"cannot mask content type {content_type!r}")


#: How a signed Anthropic thinking block whose text needed masking is handled.
SIGNED_THINKING: tuple[str, ...] = ("mask", "refuse")


class AnswerRefused(Exception):
    """The answer cannot be delivered masked and intact (a signed thinking block with
    ``signed_thinking: refuse``); fail closed."""


# ---------------------------------------------------------------------------
# plain text and JSON


class TextBodyMasker:
    def __init__(self, profile: MaskingProfile) -> None:
        self.counts: Counter[str] = Counter()
        self._masker = ByteStreamMasker(NormalisedStreamingMasker(profile, self.counts))

    def feed(self, chunk: bytes) -> bytes:
        return self._masker.feed(chunk)

    def finish(self, chunk: bytes) -> bytes:
        return self._masker.feed(chunk) + self._masker.flush()


class JsonBodyMasker:
    def __init__(self, profile: MaskingProfile, api: str, *, max_buffer: int = 1 << 20,
                 signed_thinking: str = "mask") -> None:
        self.counts: Counter[str] = Counter()
        self._profile = profile
        self._api = api
        self._max = max_buffer
        self._buf = bytearray()
        self._signed_thinking = signed_thinking

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
            doc = load_bounded(text)
        except NestingTooDeep as exc:
            raise NestedTooDeep(f"the answer is {exc}") from None
        except ValueError:
            return self._mask_text(text).encode("utf-8")
        masker = _ValueMasker(self._profile, self.counts, signed_thinking=self._signed_thinking)
        doc = masker.all_strings(doc) if self._api == "generic" else masker.answer(doc)
        return _dumps(doc).encode("utf-8")

    def _mask_text(self, text: str) -> str:
        masked, counts = mask_text(self._profile, text)
        self.counts.update(counts)
        return masked


#: Answer members that are identifiers, enums or opaque tokens, never text a user reads:
#: masking them could only corrupt them (a signature, an encrypted reasoning blob).
STRUCTURAL_KEYS = frozenset({
    "id", "object", "model", "role", "type", "finish_reason", "stop_reason", "status",
    "system_fingerprint", "service_tier", "signature", "encrypted_content", "call_id", "item_id",
    "tool_call_id", "tool_use_id", "previous_response_id", "name", "event_id", "response_id",
})
#: Token-by-token copies of the answer text: a value split over tokens cannot be masked
#: there, so on a masked route they are withheld (null).
WITHHELD_KEYS = frozenset({"logprobs", "top_logprobs"})


class _ValueMasker:
    """Masks whole strings in parsed JSON, optionally counting."""

    def __init__(self, profile: MaskingProfile, counts: Counter[str] | None, *,
                 signed_thinking: str = "mask") -> None:
        self._profile = profile
        self._counts = counts
        self._signed_thinking = signed_thinking

    def text(self, value: str) -> str:
        masked, counts = mask_text(self._profile, value)
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

    def answer(self, value: Any) -> Any:
        """Every text a client reads masked: content, reasoning, refusals, tool arguments and
        unknown fields alike; identifiers and opaque tokens (``STRUCTURAL_KEYS``) kept."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.answer(v) for v in value]
        if not isinstance(value, dict):
            return value
        kind = value.get("type")
        if kind == "redacted_thinking":
            return value  # encrypted by the provider: nothing readable to mask
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in WITHHELD_KEYS and v is not None:
                out[k] = None
            elif k in STRUCTURAL_KEYS and not isinstance(v, dict | list):
                out[k] = v
            else:
                out[k] = self.answer(v)
        if kind == "thinking" and isinstance(value.get("thinking"), str) and out.get("thinking") != value["thinking"]:
            self.thinking_altered()
            out["signature"] = ""
        return out

    def thinking_altered(self) -> None:
        if self._signed_thinking == "refuse":
            raise AnswerRefused("a signed thinking block needed masking (masking.responses.signed_thinking: refuse)")


def _dumps(doc: object) -> str:
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
    "message_delta", "message_stop", "ping", "error",
})
_RESPONSES_FINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "response.done"}
)
# Chat delta members that are not text.
_CHAT_DELTA_STRUCTURE = frozenset({"role"})


class _Stream:
    __slots__ = ("masker", "synthetic")

    def __init__(self, masker: NormalisedStreamingMasker) -> None:
        self.masker = masker
        #: Builds an event carrying held text, modelled on the stream's last event.
        self.synthetic: Callable[[str], SseEvent] = lambda _text: SseEvent()


class SseBodyMasker:
    def __init__(self, profile: MaskingProfile, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
                 signed_thinking: str = "mask") -> None:
        self.counts: Counter[str] = Counter()
        self._profile = profile
        self._parser = SseParser(max_event_size=max_event_size)
        self._streams: dict[_Key, _Stream] = {}
        self._whole = _ValueMasker(profile, self.counts, signed_thinking=signed_thinking)
        # Final recaps repeat text already counted through the deltas.
        self._recap = _ValueMasker(profile, None, signed_thinking=signed_thinking)
        # Responses API: synthetic events get numbers of their own, so every later event
        # moves up by the number inserted before it; numbers stay unique and consecutive.
        self._seq_shift = 0
        self._last_seq: int | None = None
        # Anthropic thinking blocks (by index) whose text was altered by masking.
        self._thinking_altered: set[Any] = set()

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
            obj = load_bounded(ev.data)
        except NestingTooDeep as exc:
            raise NestedTooDeep(f"an event of the answer is {exc}") from None
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
        return [_with_data(ev, _dumps(self._whole.answer(obj)))]

    def _stream(self, key: _Key) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(NormalisedStreamingMasker(self._profile, self.counts))
        return stream

    def _flush_where(self, pred: Callable[[_Key], bool]) -> list[SseEvent]:
        out = []
        for key in [k for k in self._streams if pred(k)]:
            stream = self._streams.pop(key)
            before = sum(self.counts.values())
            text = stream.masker.flush()
            if key[0] == "anthropic" and key[2] == "thinking" and sum(self.counts.values()) != before:
                self._thinking_altered.add(key[1])
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
                # Every text member streams through its own masker: content, refusal,
                # reasoning_content / reasoning (reasoning models), and any unknown one.
                for field in list(delta):
                    value = delta[field]
                    if field in _CHAT_DELTA_STRUCTURE or field == "tool_calls":
                        continue
                    if isinstance(value, str):
                        delta[field] = self._feed_chat(("chat", index, field), value, ev, envelope, index,
                                                       _field_delta(field))
                    elif field in WITHHELD_KEYS:
                        delta[field] = None
                    elif value is not None:
                        delta[field] = self._whole.answer(value)
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        j = call.get("index", 0)
                        fn["arguments"] = self._feed_chat(("chat", index, "tool", j), fn["arguments"], ev,
                                                          envelope, index, _tool_delta(j))
            if isinstance(choice.get("text"), str):
                choice["text"] = self._feed_chat(("chat", index, "text"), choice["text"], ev, envelope, index,
                                                 None)
            for field in WITHHELD_KEYS:
                if choice.get(field) is not None:
                    choice[field] = None
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

    def _renumber(self, obj: dict[str, Any]) -> None:
        seq = obj.get("sequence_number")
        if isinstance(seq, int) and not isinstance(seq, bool):
            obj["sequence_number"] = seq + self._seq_shift
            self._last_seq = obj["sequence_number"]

    def _next_seq(self) -> int | None:
        if self._last_seq is None:
            return None
        self._seq_shift += 1
        self._last_seq += 1
        return self._last_seq

    def _responses(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        # Every "*.delta" with a text delta streams through its own masker: output text,
        # refusals, function-call arguments, reasoning summaries and reasoning text, audio
        # transcripts, and any delta type added later.
        if kind.endswith(".delta") and isinstance(obj.get("delta"), str):
            key = _responses_key(kind, obj)
            stream = self._stream(key)
            template = {k: v for k, v in obj.items() if k not in WITHHELD_KEYS}

            def synthetic(held: str) -> SseEvent:
                event = {**template, "delta": held}
                seq = self._next_seq()
                if seq is not None and "sequence_number" in event:
                    event["sequence_number"] = seq
                return _with_data(ev, _dumps(event))

            stream.synthetic = synthetic
            obj["delta"] = stream.masker.feed(obj["delta"])
            for field in WITHHELD_KEYS:
                if obj.get(field) is not None:
                    obj[field] = None
            self._renumber(obj)
            return [_with_data(ev, _dumps(obj))]
        pre: list[SseEvent] = []
        if kind.endswith(".done"):
            key = _responses_key(kind[: -len(".done")] + ".delta", obj)
            pre = self._flush_where(lambda k: k == key)
        elif kind in _RESPONSES_FINAL:
            pre = self._flush_where(lambda k: k[0] == "responses")
        # Recaps (*.done, content_part.*, output_item.*, response.created/completed...) carry
        # whole texts already counted through their deltas; masked whole, not counted again.
        masker = self._whole if kind == "response.error" or kind.endswith(".failed") else self._recap
        out = masker.answer(obj)
        self._renumber(out)
        return [*pre, _with_data(ev, _dumps(out))]

    # -- Anthropic messages ------------------------------------------------------------------

    def _anthropic(self, ev: SseEvent, obj: dict[str, Any], kind: str) -> list[SseEvent]:
        index = obj.get("index")
        if kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict):
                btype = block.get("type")
                if btype == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
                    block["thinking"] = self._feed_anthropic(ev, index, "thinking_delta", "thinking",
                                                             block["thinking"])
                elif isinstance(block.get("text"), str) and block["text"]:
                    block["text"] = self._feed_anthropic(ev, index, "text_delta", "text", block["text"])
                elif btype != "redacted_thinking":
                    obj["content_block"] = self._whole.answer(block)
            return [_with_data(ev, _dumps(obj))]
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return [ev]
            dtype = delta.get("type")
            if dtype == "signature_delta":
                # The signature covers the thinking text: once masking changed it, the
                # signature would not verify, so it is dropped (or the answer refused).
                pre = self._flush_where(lambda k: k == ("anthropic", index, "thinking"))
                if index in self._thinking_altered:
                    self._whole.thinking_altered()
                    delta["signature"] = ""
                    return [*pre, _with_data(ev, _dumps(obj))]
                return [*pre, ev]
            for field, value in list(delta.items()):
                if field != "type" and isinstance(value, str):
                    delta[field] = self._feed_anthropic(ev, index, str(dtype), field, value)
                    return [_with_data(ev, _dumps(obj))]
            # citations_delta and any delta without a text member: masked whole.
            obj["delta"] = self._whole.answer(delta)
            return [_with_data(ev, _dumps(obj))]
        if kind == "content_block_stop":
            return [*self._flush_where(lambda k: k[0] == "anthropic" and k[1] == index), ev]
        if kind == "message_stop":
            return [*self._flush_where(lambda k: k[0] == "anthropic"), ev]
        if kind in ("message_start", "message_delta", "error"):
            return [_with_data(ev, _dumps(self._whole.answer(obj)))]
        return [ev]

    def _feed_anthropic(self, ev: SseEvent, index: Any, dtype: str, field: str, text: str) -> str:
        thinking = dtype == "thinking_delta"
        key: _Key = ("anthropic", index, "thinking" if thinking else field)
        stream = self._stream(key)
        name = "content_block_delta" if ev.event is not None else None

        def synthetic(held: str) -> SseEvent:
            payload = {"type": "content_block_delta", "index": index, "delta": {"type": dtype, field: held}}
            return SseEvent(data=_dumps(payload), event=name)

        stream.synthetic = synthetic
        before = sum(self.counts.values())
        out = stream.masker.feed(text)
        if thinking and sum(self.counts.values()) != before:
            self._thinking_altered.add(index)
        return out


def _field_delta(field: str) -> Callable[[str], dict[str, Any]]:
    return lambda text: {field: text}


def _tool_delta(index: object) -> Callable[[str], dict[str, Any]]:
    return lambda text: {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


def _responses_key(delta_kind: str, obj: dict[str, Any]) -> _Key:
    return ("responses", delta_kind, obj.get("item_id", obj.get("output_index")), obj.get("content_index"),
            obj.get("summary_index"))


def _with_data(ev: SseEvent, data: str) -> SseEvent:
    return SseEvent(data=data, event=ev.event, id=ev.id, retry=ev.retry, comments=ev.comments)
