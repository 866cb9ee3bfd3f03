"""Token usage as the provider reports it, read from a response body as it streams by.

OpenAI: ``usage.{prompt,completion,total}_tokens`` in a JSON body or the final SSE chunk (the
gateway asks for it with ``stream_options.include_usage`` when a token budget applies).
Anthropic: ``usage.input_tokens`` in ``message_start`` and ``output_tokens`` in
``message_delta`` (or both in a JSON body). Responses API: ``response.usage`` in
``response.completed``. Pure: feed bytes, read ``total`` at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage", "UsageTracker"]

MAX_JSON = 4 * 1024 * 1024
MAX_LINE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageTracker:
    def __init__(self, content_type: str) -> None:
        self._sse = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        self._buf = bytearray()
        self._overflow = False
        self._input = 0
        self._output = 0
        self._seen = False

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._buf += chunk
        if not self._sse:
            if len(self._buf) > MAX_JSON:
                self._overflow = True
                self._buf.clear()
            return
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest if len(rest) <= MAX_LINE else b"")
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._take(bytes(line[5:]))

    def finish(self) -> Usage | None:
        if self._buf and not self._overflow:
            if self._sse:
                for line in bytes(self._buf).split(b"\n"):
                    if line.startswith(b"data:"):
                        self._take(line[5:])
            else:
                self._take(bytes(self._buf))
        self._buf.clear()
        return Usage(self._input, self._output) if self._seen else None

    def _take(self, raw: bytes) -> None:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # hostile nesting: the masker refuses the answer
            return
        if not isinstance(doc, dict):
            return
        for usage in _usages(doc):
            self._seen = True
            inp = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            # Anthropic streams report input once and output cumulatively: keep the maxima.
            self._input = max(self._input, inp)
            self._output = max(self._output, out)


def _usages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for holder in (doc, doc.get("message"), doc.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            found.append(holder["usage"])
    return found


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
