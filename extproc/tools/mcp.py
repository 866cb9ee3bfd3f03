"""JSON-RPC 2.0 / MCP (streamable HTTP) messages: strict parsing, refusals, tools/list filtering.

A streamable-HTTP MCP client POSTs one JSON-RPC message, or a batch (an array), per request;
the server answers with JSON or with ``text/event-stream`` whose ``data:`` fields are JSON-RPC
messages. Everything here is pure: the data path parses the request body with
:func:`parse_body`, lets the tool policy decide on every ``tools/call`` and either forwards,
answers with :func:`blocked_reply`, or rewrites the body with :func:`encode`. On the way back
:class:`McpResponseFilter` removes tools the caller may never call from ``tools/list`` results
and compares the rest against pinned fingerprints (:func:`tool_fingerprint`).

Validation is deliberately stricter than many servers: the gateway decides on what it parsed,
so anything a server might read differently (duplicate object keys, ``NaN``, a ``tools/call``
whose ``arguments`` is not an object, ids of odd types) is refused rather than forwarded.
Nothing here raises on bad input: failures are values (:class:`JsonRpcFailure`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from extproc.llmapi.sse import DEFAULT_MAX_EVENT_SIZE, SseEvent, SseParser, serialize_event
from extproc.masking.responses import BodyTooLarge, media_type
from extproc.strictjson import DuplicateKey, loads_strict

__all__ = [
    "APPROVAL_DENIED",
    "BATCH_REFUSED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "PIN_MISMATCH",
    "TOOL_BLOCKED",
    "JsonRpcFailure",
    "McpResponseFilter",
    "Message",
    "MessageKind",
    "Parsed",
    "Refusal",
    "ToolCall",
    "blocked_reply",
    "encode",
    "error_response",
    "failure_reply",
    "filter_tools_list",
    "loads_strict",
    "parse_body",
    "tool_call",
    "tool_fingerprint",
]

# JSON-RPC 2.0 reserved codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Gateway codes, in the "server error" range -32000..-32099. The MCP SDKs already use -32000
# (connection closed), -32001 (request timeout), -32002 (resource not found), -32020..-32022
# and -32042, so ours start at -32010 to stay unambiguous for clients that switch on codes.
#: A ``tools/call`` refused by the tool policy.
TOOL_BLOCKED = -32010
#: A request of a batch that was refused because another call in the same batch was blocked.
BATCH_REFUSED = -32011
#: A ``tools/call`` that needed a human approval that was not given.
APPROVAL_DENIED = -32012
#: A ``tools/list`` result withheld because a pinned tool's definition changed.
PIN_MISMATCH = -32013

MessageKind = Literal["request", "notification", "response"]
JsonId = str | int


@dataclass(frozen=True, slots=True)
class JsonRpcFailure:
    """The body is not acceptable JSON-RPC. ``id`` is the request's when it could be read."""

    code: int
    message: str
    id: JsonId | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One validated JSON-RPC message. ``raw`` is the whole object, extra members included."""

    id: JsonId | None
    method: str | None
    params: dict[str, Any] | list[Any] | None
    kind: MessageKind
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    def with_params(self, params: dict[str, Any] | list[Any]) -> Message:
        """The same message with new params (e.g. masked tool arguments), ready for :func:`encode`."""
        raw = dict(self.raw)
        raw["params"] = params
        return Message(id=self.id, method=self.method, params=params, kind=self.kind, raw=raw)


@dataclass(frozen=True, slots=True)
class Parsed:
    messages: tuple[Message, ...]
    #: The body was an array; replies must then be an array too.
    batch: bool


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one message of a body is refused; becomes a JSON-RPC error for that request."""

    message: str
    rule_id: str | None = None
    code: int = TOOL_BLOCKED
    #: Machine-readable reason for ``error.data.reason``: blocked | approval_denied | ...
    reason: str = "blocked"


# ---------------------------------------------------------------------------
# parsing


def _valid_id(value: object) -> bool:
    # MCP: "a string or integer", never null; bool is an int subclass in Python but not in JSON.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _message(obj: object) -> Message | JsonRpcFailure:
    if not isinstance(obj, dict):
        return JsonRpcFailure(INVALID_REQUEST, f"a message must be an object, got {_kind(obj)}")
    rid = obj.get("id")
    good_id = rid if _valid_id(rid) else None
    if obj.get("jsonrpc") != "2.0":
        return JsonRpcFailure(INVALID_REQUEST, 'jsonrpc must be "2.0"', good_id)
    if "id" in obj and not _valid_id(rid) and not ("error" in obj and rid is None):
        return JsonRpcFailure(INVALID_REQUEST, f"id must be a string or an integer, got {_kind(rid)}")
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            return JsonRpcFailure(INVALID_REQUEST, "method must be a non-empty string", good_id)
        if "result" in obj or "error" in obj:
            return JsonRpcFailure(INVALID_REQUEST, "a request cannot carry result or error", good_id)
        params = obj.get("params")
        if "params" in obj and not isinstance(params, (dict, list)):
            return JsonRpcFailure(INVALID_REQUEST, f"params must be an object or an array, got {_kind(params)}",
                                  good_id)
        kind: MessageKind = "request" if "id" in obj else "notification"
        msg = Message(id=good_id, method=method, params=params, kind=kind, raw=obj)
        if method == "tools/call":
            problem = _tool_call_problem(params)
            if problem:
                return JsonRpcFailure(INVALID_PARAMS, problem, good_id)
        return msg
    # A response the client sends back (to a server's sampling / elicitation request).
    if "id" not in obj:
        return JsonRpcFailure(INVALID_REQUEST, "a message needs a method, or an id with result or error")
    if ("result" in obj) == ("error" in obj):
        return JsonRpcFailure(INVALID_REQUEST, "a response carries exactly one of result and error", good_id)
    if "error" in obj:
        err = obj["error"]
        code = err.get("code") if isinstance(err, dict) else None
        if not (isinstance(code, int) and not isinstance(code, bool) and isinstance(err.get("message"), str)):
            return JsonRpcFailure(INVALID_REQUEST, "error must be an object with an integer code and a message",
                                  good_id)
    return Message(id=good_id, method=None, params=None, kind="response", raw=obj)


def _tool_call_problem(params: object) -> str:
    # Refused here rather than forwarded: a lenient server could call a tool whose name or
    # arguments the policy could not read.
    if not isinstance(params, dict):
        return "tools/call needs params as an object"
    if not isinstance(params.get("name"), str) or not params["name"]:
        return "tools/call needs params.name as a non-empty string"
    if "arguments" in params and not isinstance(params["arguments"], dict):
        return f"tools/call params.arguments must be an object, got {_kind(params['arguments'])}"
    return ""


def parse_body(body: bytes, *, max_batch: int = 50) -> Parsed | JsonRpcFailure:
    """Validate a client-to-server body. Never raises.

    A batch is all or nothing: one invalid element fails the whole body (with ``id`` None),
    so the gateway never forwards a body it only partly understood.
    """
    try:
        doc = loads_strict(body)
    except DuplicateKey as exc:
        return JsonRpcFailure(INVALID_REQUEST, str(exc))
    except UnicodeDecodeError:
        return JsonRpcFailure(PARSE_ERROR, "body is not UTF-8")
    except (ValueError, RecursionError):
        return JsonRpcFailure(PARSE_ERROR, "body is not valid JSON")
    if isinstance(doc, list):
        if not doc:
            return JsonRpcFailure(INVALID_REQUEST, "empty batch")
        if len(doc) > max_batch:
            return JsonRpcFailure(INVALID_REQUEST, f"batch too large ({len(doc)} messages, at most {max_batch})")
        out: list[Message] = []
        seen: set[tuple[type, JsonId]] = set()
        for i, item in enumerate(doc):
            msg = _message(item)
            if isinstance(msg, JsonRpcFailure):
                return JsonRpcFailure(msg.code, f"batch element [{i}]: {msg.message}")
            if msg.kind == "request" and msg.id is not None:
                # Replies are matched by id; two requests with one id make refusals ambiguous.
                key = (type(msg.id), msg.id)
                if key in seen:
                    return JsonRpcFailure(INVALID_REQUEST, f"batch element [{i}]: duplicate request id {msg.id!r}")
                seen.add(key)
            out.append(msg)
        return Parsed(messages=tuple(out), batch=True)
    if isinstance(doc, dict):
        single = _message(doc)
        if isinstance(single, JsonRpcFailure):
            return single
        return Parsed(messages=(single,), batch=False)
    return JsonRpcFailure(INVALID_REQUEST, f"body must be an object or an array, got {_kind(doc)}")


def tool_call(msg: Message) -> ToolCall | None:
    """The tool call of a ``tools/call`` message (request or, oddly, notification), else None.

    Notifications count too: a lenient server might still run them, so they are governed.
    """
    if msg.method != "tools/call" or not isinstance(msg.params, dict):
        return None
    name = msg.params.get("name")
    args = msg.params.get("arguments", {})
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return ToolCall(name=name, arguments=args)


# ---------------------------------------------------------------------------
# replies


def error_response(id: JsonId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": err}


def _dumps(doc: object) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes survive as escapes
        return json.dumps(doc, separators=(",", ":")).encode("ascii")


def encode(messages: Sequence[Message | Mapping[str, Any]], batch: bool) -> bytes:
    """Serialize messages back to a body: an array when ``batch``, else the single object."""
    docs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in messages]
    if batch:
        return _dumps(docs)
    if len(docs) != 1:
        raise ValueError("a non-batch body holds exactly one message")
    return _dumps(docs[0])


def failure_reply(failure: JsonRpcFailure) -> bytes:
    """The body answering an unacceptable request (always a single object, as JSON-RPC says)."""
    return _dumps(error_response(failure.id, failure.code, failure.message))


def blocked_reply(parsed: Parsed, refusals: Mapping[int, Refusal]) -> bytes:
    """The HTTP 200 body sent instead of forwarding, when any message is refused.

    ``refusals`` maps positions in ``parsed.messages`` to why they are refused. The whole body
    is refused: in a batch, each other request gets a :data:`BATCH_REFUSED` error naming the
    refused ids, because forwarding part of a batch would run its siblings in a context the
    client did not ask for, and a batch is small enough to retry without the refused call.
    Notifications and client responses get no reply (JSON-RPC). When nothing in the body has
    an id the result is ``b""``: answer ``202 Accepted`` with no body, as streamable HTTP does.
    """
    refused_ids = [parsed.messages[i].id for i in sorted(refusals) if 0 <= i < len(parsed.messages)]
    replies: list[dict[str, Any]] = []
    for i, msg in enumerate(parsed.messages):
        if msg.kind != "request":
            continue
        refusal = refusals.get(i)
        if refusal is not None:
            data: dict[str, Any] = {"reason": refusal.reason, "rule_id": refusal.rule_id}
            if msg.method == "tools/call" and isinstance(msg.params, dict):
                data["tool"] = msg.params.get("name")
            replies.append(error_response(msg.id, refusal.code, refusal.message, data))
        else:
            replies.append(error_response(
                msg.id, BATCH_REFUSED, "Not forwarded: another call in the same batch was refused.",
                {"reason": "batch_refused", "refused_ids": [r for r in refused_ids if r is not None]},
            ))
    if not replies:
        return b""
    return _dumps(replies) if parsed.batch else _dumps(replies[0])


# ---------------------------------------------------------------------------
# tools/list


def tool_fingerprint(tool: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of name, description and inputSchema as canonical JSON.

    What a model reads to decide to call a tool; a server that changes it after review (a
    "rug pull") changes the fingerprint. Missing fields count as null.
    """
    doc = {"name": tool.get("name"), "description": tool.get("description"), "inputSchema": tool.get("inputSchema")}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def _normal_pin(value: str) -> str:
    return value.lower().removeprefix("sha256:")


def filter_tools_list(message: dict[str, Any], allowed: Callable[[str], bool]) -> tuple[dict[str, Any], list[str]]:
    """Drop tools the caller may never call from a ``tools/list`` result message.

    Returns a new message (the input is not changed) and the removed names. A tool entry
    without a string name is dropped too: the client could not call it by a name we checked.
    """
    result = message.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(tools, list):
        return message, []
    kept: list[Any] = []
    removed: list[str] = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and allowed(name):
            kept.append(tool)
        else:
            removed.append(name if isinstance(name, str) else "<unnamed>")
    if not removed:
        return message, []
    return {**message, "result": {**result, "tools": kept}}, removed


class McpResponseFilter:
    """Rewrites ``tools/list`` results in an MCP response body, JSON or SSE, chunk by chunk.

    Same contract as :class:`extproc.masking.responses.BodyMasker`: ``feed`` each chunk,
    ``finish`` with the last, concatenate the outputs. Only results whose id is one of
    ``request_ids_for_tools_list`` are touched; every other message passes unchanged (SSE
    events are re-serialized, which normalises line endings). Pins (tool name -> fingerprint,
    for this server) are checked on the tools that remain after filtering; a mismatch is
    recorded in ``pin_mismatches`` and with ``on_pin_mismatch="block"`` the whole result
    becomes a :data:`PIN_MISMATCH` error. Unpinned and missing tools are not mismatches.

    A watched body that is JSON but not strict JSON (duplicate keys, NaN) is replaced by an
    error, since the client might read a tool list we did not filter. Non-JSON passes.
    JSON bodies are buffered up to ``max_buffer`` (``BodyTooLarge`` beyond); SSE is not.
    """

    def __init__(
        self,
        request_ids_for_tools_list: Iterable[JsonId],
        allowed: Callable[[str], bool],
        pins: Mapping[str, str] | None = None,
        on_pin_mismatch: Literal["flag", "block"] = "flag",
        *,
        content_type: str = "application/json",
        max_buffer: int = 1 << 20,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        self._ids = {(type(i), i) for i in request_ids_for_tools_list if _valid_id(i)}
        self._allowed = allowed
        self._pins = {k: _normal_pin(v) for k, v in (pins or {}).items()}
        self._block = on_pin_mismatch == "block"
        self._media = media_type(content_type)
        self._sse = SseParser(max_event_size=max_event_size) if self._media == "text/event-stream" else None
        self._buf = bytearray()
        self._max = max_buffer
        self.removed: list[str] = []
        self.pin_mismatches: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self._ids)

    def feed(self, chunk: bytes) -> bytes:
        if not self._ids:
            return chunk
        if self._sse is not None:
            return b"".join(serialize_event(self._event(e)) for e in self._sse.feed(chunk))
        self._buf += chunk
        if len(self._buf) > self._max:
            raise BodyTooLarge(f"MCP response larger than {self._max} bytes")
        return b""

    def finish(self, chunk: bytes) -> bytes:
        if not self._ids:
            return chunk
        if self._sse is not None:
            events = self._sse.feed(chunk) + self._sse.close()
            return b"".join(serialize_event(self._event(e)) for e in events)
        self._buf += chunk
        if len(self._buf) > self._max:
            raise BodyTooLarge(f"MCP response larger than {self._max} bytes")
        body = bytes(self._buf)
        self._buf.clear()
        out = self._rewrite(body.decode("utf-8", "replace") if body else "")
        return body if out is None else out.encode("utf-8")

    def _event(self, ev: SseEvent) -> SseEvent:
        if ev.data is None:
            return ev
        out = self._rewrite(ev.data)
        if out is None:
            return ev
        return SseEvent(data=out, event=ev.event, id=ev.id, retry=ev.retry, comments=ev.comments)

    def _rewrite(self, text: str) -> str | None:
        """The rewritten text, or None to leave it as it was."""
        try:
            doc = loads_strict(text)
        except (ValueError, RecursionError):
            try:
                loose = json.loads(text)
            except (ValueError, RecursionError):
                return None  # not JSON at all: no client reads a tool list from it
            rid = loose.get("id") if isinstance(loose, dict) else None
            reply = error_response(rid if _valid_id(rid) else None, INTERNAL_ERROR,
                                   "The gateway could not read this response.")
            return _dumps(reply).decode("utf-8")
        if isinstance(doc, list):
            items = [self._one(m) for m in doc]
            if all(new is old for new, old in zip(items, doc, strict=True)):
                return None
            return _dumps(items).decode("utf-8")
        new = self._one(doc)
        return None if new is doc else _dumps(new).decode("utf-8")

    def _one(self, msg: Any) -> Any:
        if not isinstance(msg, dict) or "result" not in msg:
            return msg
        rid = msg.get("id")
        if not _valid_id(rid) or (type(rid), rid) not in self._ids:
            return msg
        new, removed = filter_tools_list(msg, self._allowed)
        self.removed.extend(removed)
        result = new.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        mismatched: list[str] = []
        for tool in tools if isinstance(tools, list) else ():
            name = tool.get("name")
            pin = self._pins.get(name) if isinstance(name, str) else None
            if pin is not None and _normal_pin(tool_fingerprint(tool)) != pin:
                mismatched.append(name)
        self.pin_mismatches.extend(mismatched)
        if mismatched and self._block:
            return error_response(
                rid, PIN_MISMATCH,
                "The tool list was withheld: a pinned tool's definition changed since it was reviewed.",
                {"reason": "pin_mismatch", "tools": mismatched},
            )
        return new
