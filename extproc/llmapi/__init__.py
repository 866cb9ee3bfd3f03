"""What a request to a model API asks for: its operation, model, and every text the model will see.

Each API flavour has a module (:mod:`extproc.llmapi.openai`, :mod:`extproc.llmapi.anthropic`)
that turns ``method + path + body`` into an :class:`Extraction`. Texts carry the JSON path
they were read from so that masking can write a replacement back (:func:`rewrite`) while
every other value of the body stays as the caller sent it.

A body that cannot be understood on an operation that carries prompts is reported as an
extraction with ``error`` set, never as "no text": policy turns it into a decision, so a
malformed or evasive body is not a silent pass.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc.strictjson import StrictJsonError, loads_strict

__all__ = [
    "GOVERNED_OPERATIONS",
    "OPERATIONS",
    "Extraction",
    "JsonPath",
    "NestingTooDeep",
    "TextRef",
    "any_body",
    "estimate_tokens",
    "extract",
    "load_bounded",
    "max_output_tokens",
    "normalize_path",
    "parse_json_object",
    "rewrite",
    "string_leaves",
]

#: Every operation name an extraction can carry (also the values of ``match.operations``).
OPERATIONS: tuple[str, ...] = (
    "chat",
    "responses",
    "completions",
    "embeddings",
    "messages",
    "models",
    "other",
)
#: Operations whose body is a prompt: a body we cannot read there is an error, not a pass.
GOVERNED_OPERATIONS: frozenset[str] = frozenset({"chat", "responses", "completions", "embeddings", "messages"})

JsonPath = tuple[str | int, ...]

_SURROGATE = re.compile("[\ud800-\udfff]")

#: Tokens added per text item for role markers and message framing. Providers add 3-7;
#: over-estimating slightly is the safe side for budgets.
PER_TEXT_OVERHEAD = 4
#: Deeper bodies are refused: no API nests prompts this deep, and the bound keeps every
#: recursive step after parsing (rewriting, re-serialising) far from the stack limit.
MAX_DEPTH = 64
#: Characters per token for English-like text with the common BPE vocabularies.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class TextRef:
    """One string the model will see, and where it is in the JSON body."""

    path: JsonPath
    #: Who the text speaks as: system, developer, user, assistant, tool, prompt, input...
    role: str
    text: str
    #: ``text`` (the model reads it), ``metadata`` (the provider stores it) or ``unknown``
    #: (a field the coverage map does not know; see ``policy.unknown_fields``).
    kind: str = "text"
    #: How a masked text goes back into the body (attachments: base64 / data URL again).
    encode: Callable[[str], str] | None = field(default=None, compare=False)
    #: False when the text was read from a format that cannot be rewritten (PDF).
    rewritable: bool = True

    def __post_init__(self) -> None:
        # JSON may escape lone surrogates (\ud800) that no UTF-8 matcher (RE2) accepts.
        # Replacing each with U+FFFD keeps every offset, so spans still line up.
        if _SURROGATE.search(self.text):
            object.__setattr__(self, "text", _SURROGATE.sub("\ufffd", self.text))


@dataclass(frozen=True, slots=True)
class Extraction:
    operation: str
    #: True when the body carries content the model sees (the operation is governed, or a
    #: generic API sent a JSON body whose strings were all collected).
    governed: bool
    model: str | None = None
    stream: bool = False
    texts: tuple[TextRef, ...] = ()
    max_output_tokens: int | None = None
    prompt_tokens: int = 0
    #: The parsed body (a dict for the known APIs); only :func:`rewrite` should use it.
    document: Any = None
    #: Why a governed body could not be understood; safe to show to the caller.
    error: str | None = None
    #: Images, audio and files in the body (``extproc.llmapi.attachments.Attachment``).
    attachments: tuple[Any, ...] = ()
    #: A body is present that nothing can read (not JSON: an upload, audio...). On a model
    #: API route such a body is refused unless the route allows it (``allow_uninspectable``).
    opaque: bool = False


def normalize_path(path: str) -> str:
    """The path without query, duplicate or trailing slashes: the form operations are keyed on."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    while "//" in path:
        path = path.replace("//", "/")
    if len(path) > 1:
        path = path.rstrip("/")
    return path or "/"


def parse_json_object(body: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, why it is not a strict JSON object)."""
    value, error = parse_json(body)
    if error is not None:
        return None, error
    if not isinstance(value, dict):
        return None, f"request body must be a JSON object, got {_json_kind(value)}"
    return value, None


def parse_json(body: bytes | None) -> tuple[Any, str | None]:
    if not body:
        return None, "request body is empty"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"request body is not valid UTF-8 (byte {exc.start})"
    try:
        value = loads_strict(text)
    except StrictJsonError as exc:
        return None, f"request body is not valid JSON: {exc}"
    except json.JSONDecodeError as exc:
        return None, f"request body is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
    except RecursionError:
        return None, "request body is nested too deeply"
    except ValueError as exc:  # e.g. integer strings longer than Python's conversion limit
        return None, f"request body is not valid JSON: {str(exc)[:80]}"
    if _too_deep(text, value):
        return None, f"request body is nested more than {MAX_DEPTH} levels deep"
    return value, None


class NestingTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_DEPTH` (or than Python's parser can follow)."""


def load_bounded(text: str | bytes) -> Any:
    """``json.loads`` for content from outside (upstream answers): ``ValueError`` for invalid
    JSON, :class:`NestingTooDeep` past :data:`MAX_DEPTH` levels. Hostile nesting never reaches
    the recursive code after parsing (masking, re-serialising), nor escapes as a RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise NestingTooDeep(f"nested more than {MAX_DEPTH} levels deep") from None
    if _too_deep(text, value):
        raise NestingTooDeep(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _too_deep(text: str | bytes, value: object) -> bool:
    """``value`` (parsed from ``text``) nests more than :data:`MAX_DEPTH` levels. Each level
    opens a bracket, so a text with no more brackets than that cannot, and counting them (in C)
    is far cheaper than walking the value."""
    opens = text.count(b"{") + text.count(b"[") if isinstance(text, bytes) else text.count("{") + text.count("[")
    return opens > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH)


def _depth_exceeds(value: object, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d >= limit:
                return True
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def estimate_tokens(texts: Iterable[TextRef], token_ids: int = 0) -> int:
    """ceil(chars / 4) + 4 per text item, plus token ids sent as integers (embeddings, completions)."""
    total = token_ids
    for t in texts:
        if t.kind == "metadata":
            continue  # stored beside the prompt, not tokenised into it
        total += math.ceil(len(t.text) / CHARS_PER_TOKEN) + PER_TEXT_OVERHEAD
    return total


def max_output_tokens(doc: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_tokens_to_sample"):
        v = doc.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None


def string_leaves(value: object, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    """Every string inside ``value`` with its path; iterative, so depth cannot overflow the stack."""
    stack: list[tuple[JsonPath, Any]] = [(path, value)]
    while stack:
        p, v = stack.pop()
        if isinstance(v, str):
            yield p, v
        elif isinstance(v, dict):
            stack.extend(((*p, k), v[k]) for k in reversed(list(v)))
        elif isinstance(v, list):
            stack.extend(((*p, i), v[i]) for i in range(len(v) - 1, -1, -1))


def extract(api: str, method: str, path: str, body: bytes | None) -> Extraction:
    """The operation and content of one request to a provider of flavour ``api``.

    ``path`` is the path after the provider prefix. Never raises on any body.
    """
    # Imported here: the flavour modules import this package's types.
    from extproc.llmapi import anthropic, openai

    p = normalize_path(path)
    m = method.upper()
    if api == "openai":
        return openai.extract(m, p, body)
    if api == "anthropic":
        return anthropic.extract(m, p, body)
    return any_body("other", body)


def any_body(operation: str, body: bytes | None, model: str | None = None) -> Extraction:
    """A body of an operation we do not model (a generic API, or an unknown path of a known one).

    Every string of a JSON body is treated as prompt text, so content rules apply whatever the
    operation is: an unknown path is no way around them. A non-JSON body is ``opaque``: it may
    be a legitimate upload, and the route decides whether it may pass unread.
    """
    if not body or not body.strip():
        return Extraction(operation=operation, governed=False, model=model)
    value, error = parse_json(body)
    if error is not None:
        # A body that looks like JSON but is broken (or evasively deep) is refused like
        # one on a known API; anything else is an opaque payload we do not claim to read.
        looks_json = body.lstrip()[:1] in (b"{", b"[")
        if looks_json:
            return Extraction(operation=operation, governed=True, model=model, error=error)
        return Extraction(operation=operation, governed=False, model=model, opaque=True)
    texts = tuple(TextRef(p, "value", s) for p, s in string_leaves(value, ()))
    named = value.get("model") if isinstance(value, dict) else None
    return Extraction(
        operation=operation,
        governed=True,
        model=named if isinstance(named, str) else model,
        stream=isinstance(value, dict) and value.get("stream") is True,
        texts=texts,
        max_output_tokens=max_output_tokens(value) if isinstance(value, dict) else None,
        prompt_tokens=estimate_tokens(texts),
        document=value,
    )


def rewrite(document: Any, replacements: Mapping[JsonPath, str]) -> bytes:
    """The body with the strings at ``replacements`` paths replaced; all else kept.

    Only the containers on a replaced path are copied, so the caller's parsed document is
    untouched and large untouched subtrees are shared, not duplicated.
    """
    trie: dict[Any, Any] = {}
    for path, value in replacements.items():
        node = trie
        for step in path[:-1]:
            node = node.setdefault(step, {})
        if path:
            node[path[-1]] = _Leaf(value)
    if () in replacements:  # a body that is a bare string (generic APIs)
        new: Any = replacements[()]
    else:
        new = _apply(document, trie) if replacements else document
    try:
        return json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (valid as JSON escapes) cannot be UTF-8: keep them as escapes.
        return json.dumps(new, ensure_ascii=True, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class _Leaf:
    value: str


def _apply(value: Any, trie: Mapping[Any, Any]) -> Any:
    # Paths come from the extractors, so each step exists; a stale one is skipped, not fatal.
    if isinstance(value, dict):
        out_d = dict(value)
        for key, sub in trie.items():
            if key in out_d:
                out_d[key] = sub.value if isinstance(sub, _Leaf) else _apply(out_d[key], sub)
        return out_d
    if isinstance(value, list):
        out_l = list(value)
        for key, sub in trie.items():
            if isinstance(key, int) and 0 <= key < len(out_l):
                out_l[key] = sub.value if isinstance(sub, _Leaf) else _apply(out_l[key], sub)
        return out_l
    return value
