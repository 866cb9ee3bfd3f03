"""Attachments in a request: found, decoded where they are text, and described for policy.

Where attachments are (per the coverage map):

* OpenAI chat: ``file`` parts (``file.file_data``, a data URL), ``image_url`` parts,
  ``input_audio`` parts;
* OpenAI Responses: ``input_file`` (``file_data``), ``input_image`` (``image_url``), ``input_audio``;
* Anthropic: ``document`` and ``image`` blocks with a ``base64`` source.

Text-like media (text/*, JSON, XML, HTML, CSV, markdown) are decoded and become texts the
content rules read; masking rewrites them and encodes them back the way they came (data
URL or bare base64). PDF text is extracted with pypdf, within bounds, and is read but
cannot be rewritten: a mask rule that would change it refuses the request. Everything is
bounded: decoded size, PDF pages, extracted text, and pypdf's own decompression limits, so
a "zip bomb" PDF is refused rather than expanded. Images, audio and files referenced by id
or URL cannot be read; ``policy.attachments`` rules decide about them (and about any
attachment, by media type and size).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from extproc.llmapi import JsonPath, TextRef

__all__ = [
    "MAX_ATTACHMENT_BYTES",
    "Attachment",
    "find_attachments",
    "is_text_media",
]

#: Decoded bytes above which an attachment is refused outright (providers cap far lower).
MAX_ATTACHMENT_BYTES = 32 << 20
#: PDF bounds: pages read and characters of text extracted; beyond them the PDF is refused.
MAX_PDF_PAGES = 500
MAX_PDF_TEXT = 4 << 20
#: Per-stream decompression cap handed to pypdf (its defaults allow 75 MB per stream).
MAX_PDF_STREAM = 16 << 20

_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/xhtml+xml", "application/x-ndjson",
    "application/jsonl", "application/yaml", "application/x-yaml", "application/csv", "application/javascript",
})
_EXTENSIONS = {
    ".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv",
    ".json": "application/json", ".xml": "application/xml", ".html": "text/html", ".htm": "text/html",
    ".pdf": "application/pdf", ".yaml": "application/yaml", ".yml": "application/yaml",
}
_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.IGNORECASE)


def is_text_media(media: str) -> bool:
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment. ``size`` is the decoded size (None when only referenced)."""

    path: JsonPath
    media_type: str
    #: image | audio | document
    category: str
    size: int | None
    #: Its text, when the gateway can read it (text-like media, PDF).
    text: str | None = None
    #: How masked text goes back into the body; None when the format cannot be rewritten.
    encode: Callable[[str], str] | None = None
    #: Why it could not be read (bad base64, a PDF over the bounds...), for a 400.
    error: str | None = None

    def ref(self, role: str) -> TextRef | None:
        if self.text is None:
            return None
        return TextRef(self.path, role, self.text, "text", self.encode, rewritable=self.encode is not None)


def _decode_data_url(value: str) -> tuple[str, bytes, Callable[[bytes], str]] | None:
    """(media type, bytes, re-encoder) of a data URL, or None if it is not one."""
    m = _DATA_URL.match(value)
    if m is None:
        return None
    media = m.group(1).strip().lower() or "text/plain"
    params = m.group(2)
    payload = value[m.end():]
    prefix = value[: m.end()]
    if ";base64" in params.lower():
        data = base64.b64decode(payload, validate=False)
        return media, data, lambda b: prefix + base64.b64encode(b).decode("ascii")
    return media, unquote_to_bytes(payload), lambda b: prefix + b.decode("utf-8")


def _decode_b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _guess(filename: Any, media: str) -> str:
    if media not in ("", "application/octet-stream") or not isinstance(filename, str):
        return media
    lower = filename.lower()
    for ext, guessed in _EXTENSIONS.items():
        if lower.endswith(ext):
            return guessed
    return media


def _category(media: str) -> str:
    if media.startswith("image/"):
        return "image"
    if media.startswith("audio/"):
        return "audio"
    return "document"


def _build(path: JsonPath, media: str, data: bytes | None, reencode: Callable[[bytes], str] | None,
           category: str | None = None) -> Attachment:
    cat = category or _category(media)
    if data is None:
        return Attachment(path, media or "application/octet-stream", cat, None)
    size = len(data)
    if size > MAX_ATTACHMENT_BYTES:
        return Attachment(path, media, cat, size, error=f"attachment over {MAX_ATTACHMENT_BYTES} bytes")
    if is_text_media(media):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Attachment(path, media, cat, size, error=f"{media} attachment is not valid UTF-8")
        encode = (lambda s: reencode(s.encode("utf-8"))) if reencode is not None else None
        return Attachment(path, media, cat, size, text=text, encode=encode)
    if media == "application/pdf":
        pdf, error = pdf_text(data)
        return Attachment(path, media, cat, size, text=pdf, error=error)
    return Attachment(path, media, cat, size)


def pdf_text(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, why the PDF cannot be read within the bounds)."""
    import pypdf

    # pypdf's own limits (a context variable, so this thread only), tightened: every
    # decoder stops at MAX_PDF_STREAM bytes and raises LimitReachedError.
    limits = {name: MAX_PDF_STREAM for name in (
        "maximum_declared_stream_length", "array_based_stream_maximum_output_length",
        "jbig2_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
        "zlib_maximum_output_length", "brotli_maximum_output_length", "image_maximum_buffer_size",
    )}
    limits["stream_decoding_work_maximum_length"] = 4 * MAX_PDF_STREAM
    with pypdf.apply_configuration(None, **limits):
        return _pdf_text(pypdf, data)


def _pdf_text(pypdf: Any, data: bytes) -> tuple[str | None, str | None]:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            return None, "the PDF attachment is encrypted and cannot be inspected"
        if len(reader.pages) > MAX_PDF_PAGES:
            return None, f"the PDF attachment has more than {MAX_PDF_PAGES} pages"
        parts: list[str] = []
        total = 0
        for page in reader.pages:
            piece = page.extract_text() or ""
            total += len(piece)
            if total > MAX_PDF_TEXT:
                return None, "the PDF attachment holds more text than the gateway inspects"
            parts.append(piece)
        return "\n".join(parts), None
    except pypdf.errors.LimitReachedError:
        return None, "the PDF attachment expands beyond the inspection limits (refused as a decompression bomb)"
    except Exception:
        return None, "the PDF attachment could not be read"


def find_attachments(operation: str, doc: Mapping[str, Any]) -> Iterator[Attachment]:
    """Every attachment of a request body of ``operation`` (chat, responses, messages)."""
    if operation == "chat":
        yield from _openai_parts(doc.get("messages"), "messages", "content")
    elif operation == "responses":
        yield from _openai_parts(doc.get("input"), "input", "content")
    elif operation == "messages":
        yield from _anthropic(doc)


def _openai_parts(items: Any, key: str, content_key: str) -> Iterator[Attachment]:
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(content_key), list):
            continue
        for j, part in enumerate(item[content_key]):
            if isinstance(part, dict):
                yield from _openai_part(part, (key, i, content_key, j))


def _openai_part(part: dict[str, Any], base: JsonPath) -> Iterator[Attachment]:
    kind = part.get("type")
    if kind == "file" and isinstance(part.get("file"), dict):
        f = part["file"]
        yield _file(f.get("file_data"), f.get("filename"), (*base, "file", "file_data"))
    elif kind == "input_file":
        if "file_data" in part:
            yield _file(part.get("file_data"), part.get("filename"), (*base, "file_data"))
        else:
            yield Attachment((*base, "file_url"), _guess(part.get("filename"), ""), "document", None)
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        yield _image(url, (*base, "image_url", "url"))
    elif kind == "input_image":
        yield _image(part.get("image_url"), (*base, "image_url"))
    elif kind == "input_audio":
        nested = part.get("input_audio")
        audio: dict[str, Any] = nested if isinstance(nested, dict) else part
        fmt = audio.get("format") if isinstance(audio.get("format"), str) else "wav"
        data = audio.get("data")
        size = _b64_size(data)
        yield Attachment((*base, "input_audio", "data"), f"audio/{fmt}", "audio", size)


def _b64_size(data: Any) -> int | None:
    if not isinstance(data, str):
        return None
    return len(data) * 3 // 4


def _file(value: Any, filename: Any, path: JsonPath) -> Attachment:
    if not isinstance(value, str):
        return Attachment(path, _guess(filename, ""), "document", None)
    try:
        decoded = _decode_data_url(value)
        if decoded is not None:
            media, data, reencode = decoded
            return _build(path, _guess(filename, media), data, reencode)
        data = _decode_b64(value)  # a bare base64 payload
    except (binascii.Error, ValueError):
        return Attachment(path, _guess(filename, ""), "document", None, error="attachment data is not valid base64")
    return _build(path, _guess(filename, "application/octet-stream"), data,
                  lambda b: base64.b64encode(b).decode("ascii"))


def _image(url: Any, path: JsonPath) -> Attachment:
    if isinstance(url, str) and url[:5].lower() == "data:":
        m = _DATA_URL.match(url)
        media = (m.group(1).strip().lower() if m else "") or "image/unknown"
        return Attachment(path, media, "image", len(url) * 3 // 4)
    return Attachment(path, "image/unknown", "image", None)


def _anthropic(doc: Mapping[str, Any]) -> Iterator[Attachment]:
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
            continue
        for j, block in enumerate(msg["content"]):
            yield from _anthropic_block(block, ("messages", i, "content", j))
            if isinstance(block, dict) and block.get("type") == "tool_result" and isinstance(
                    block.get("content"), list):
                for k, inner in enumerate(block["content"]):
                    yield from _anthropic_block(inner, ("messages", i, "content", j, "content", k))


def _anthropic_block(block: Any, base: JsonPath) -> Iterator[Attachment]:
    if not isinstance(block, dict) or block.get("type") not in ("image", "document"):
        return
    source = block.get("source")
    if not isinstance(source, dict):
        return
    stype = source.get("type")
    declared = source.get("media_type")
    media: str = declared if isinstance(declared, str) else ""
    category = "image" if block["type"] == "image" else None
    if stype == "base64" and isinstance(source.get("data"), str):
        try:
            data = _decode_b64(source["data"])
        except (binascii.Error, ValueError):
            yield Attachment((*base, "source", "data"), media, category or "document", None,
                             error="attachment data is not valid base64")
            return
        yield _build((*base, "source", "data"), media.lower(), data, lambda b: base64.b64encode(b).decode("ascii"),
                     category)
    elif stype in ("url", "file"):
        yield Attachment((*base, "source"), media.lower() or ("image/unknown" if category else "document/unknown"),
                         category or "document", None)
    # "text" and "content" sources are plain text, read by the extractor.
