"""Incremental ``text/event-stream`` parser and serializer (WHATWG HTML, "server-sent events").

Bytes may be split anywhere, including inside a UTF-8 character or between the CR and LF
of a line ending. Lines end in LF, CRLF or CR; ``data:`` lines of one event are joined
with LF; a line starting with ``:`` is a comment; a line without a colon is a field name
with an empty value; unknown fields are ignored; a blank line ends the event.

Unlike a browser, which drops events without data, this parser yields every non-empty
event (including comment-only keep-alives and ``retry:``-only events), because a proxy
must forward them. At end of input a pending, unterminated event is yielded too, so
nothing is silently dropped. Serialization normalises line endings to LF.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from extproc.errors import ExtprocError

__all__ = ["DEFAULT_MAX_EVENT_SIZE", "SseError", "SseEvent", "SseParser", "parse_events", "serialize_event"]

DEFAULT_MAX_EVENT_SIZE = 1 << 20
_EOL = re.compile(r"\r\n|\r|\n")


class SseError(ExtprocError, ValueError):
    """The stream cannot be parsed safely (e.g. an event or line beyond the size limit)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    #: ``data:`` lines joined by LF; None when the event had no data field.
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    #: Comment lines without the leading colon, in order.
    comments: tuple[str, ...] = ()


class SseParser:
    """Feed bytes, get complete events. ``close()`` at end of input."""

    __slots__ = ("_comments", "_data", "_decoder", "_event", "_id", "_max", "_pending", "_retry", "_size",
                 "_started")

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max = max_event_size
        # Invalid UTF-8 becomes U+FFFD, as the spec requires; it never raises.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        return self._lines(self._decoder.decode(chunk), final=False)

    def close(self) -> list[SseEvent]:
        out = self._lines(self._decoder.decode(b"", final=True), final=True)
        if self._pending:
            line, self._pending = self._pending, ""
            self._line(line, out)
        self._dispatch(out)
        return out

    def _lines(self, text: str, *, final: bool) -> list[SseEvent]:
        out: list[SseEvent] = []
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buf = self._pending + text if self._pending else text
        pos = 0
        for m in _EOL.finditer(buf):
            if m.group() == "\r" and m.end() == len(buf) and not final:
                break  # an LF may follow in the next chunk
            self._line(buf[pos : m.start()], out)
            pos = m.end()
        self._pending = buf[pos:]
        if len(self._pending) + self._size > self._max:
            raise SseError(f"event larger than {self._max} characters")
        return out

    def _line(self, line: str, out: list[SseEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        self._size += len(line) + 1
        if self._size > self._max:
            raise SseError(f"event larger than {self._max} characters")
        if line[0] == ":":
            self._comments.append(line[1:])
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        # Any other field name is ignored, as the spec says.

    def _dispatch(self, out: list[SseEvent]) -> None:
        if self._data or self._event is not None or self._id is not None or self._retry is not None \
                or self._comments:
            out.append(SseEvent(
                data="\n".join(self._data) if self._data else None,
                event=self._event,
                id=self._id,
                retry=self._retry,
                comments=tuple(self._comments),
            ))
        self._reset()


def serialize_event(event: SseEvent) -> bytes:
    """One event as UTF-8 bytes, LF line endings, terminated by a blank line."""
    lines = [":" + c for c in event.comments]
    if event.event is not None:
        lines.append("event: " + _one_line(event.event))
    if event.id is not None:
        lines.append("id: " + _one_line(event.id))
    if event.retry is not None:
        lines.append(f"retry: {event.retry}")
    if event.data is not None:
        lines.extend("data: " + part for part in _EOL.split(event.data))
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


def parse_events(data: bytes, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> list[SseEvent]:
    """Parse a complete stream."""
    parser = SseParser(max_event_size=max_event_size)
    return parser.feed(data) + parser.close()


def _one_line(value: str) -> str:
    # A field value cannot span lines; a newline here would inject fields.
    return _EOL.sub(" ", value)
