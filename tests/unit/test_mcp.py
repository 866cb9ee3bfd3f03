"""JSON-RPC 2.0 / MCP message handling: validation, refusals, tools/list filtering, pins."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.llmapi.sse import parse_events
from extproc.masking.responses import BodyTooLarge
from extproc.tools import mcp
from extproc.tools.mcp import (
    BATCH_REFUSED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    PIN_MISMATCH,
    TOOL_BLOCKED,
    JsonRpcFailure,
    McpResponseFilter,
    Parsed,
    Refusal,
    ToolCall,
    blocked_reply,
    encode,
    error_response,
    failure_reply,
    filter_tools_list,
    parse_body,
    tool_call,
    tool_fingerprint,
)


def call(id: Any, name: str = "search", arguments: Any = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params, **extra}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# ---------------------------------------------------------------------------
# parse_body


def test_single_request() -> None:
    parsed = parse_body(body(call(1, "search", {"q": "x"})))
    assert isinstance(parsed, Parsed) and not parsed.batch
    (msg,) = parsed.messages
    assert (msg.id, msg.method, msg.kind) == (1, "tools/call", "request")
    assert tool_call(msg) == ToolCall("search", {"q": "x"})


def test_notification_and_client_response() -> None:
    parsed = parse_body(body([
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "s-1", "result": {"content": []}},
        {"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "no"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "bad"}},
        call("a"),
    ]))
    assert isinstance(parsed, Parsed) and parsed.batch
    assert [m.kind for m in parsed.messages] == ["notification", "response", "response", "response", "request"]
    assert parsed.messages[0].id is None
    assert tool_call(parsed.messages[4]) == ToolCall("search", {})  # missing arguments -> {}
    assert tool_call(parsed.messages[0]) is None


@pytest.mark.parametrize(
    ("raw", "code", "needle", "fid"),
    [
        (b"{", PARSE_ERROR, "not valid JSON", None),
        (b"\xff\xfe{}", PARSE_ERROR, "not UTF-8", None),
        ('{"jsonrpc":"2.0","id":1,"method":"x"}'.encode("utf-16"), PARSE_ERROR, "UTF-8", None),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":NaN}}', PARSE_ERROR, "JSON", None),
        (b"", PARSE_ERROR, "JSON", None),
        (b"42", INVALID_REQUEST, "object or an array", None),
        (b"[]", INVALID_REQUEST, "empty batch", None),
        (body([1]), INVALID_REQUEST, "batch element [0]", None),
        (body({"jsonrpc": "1.0", "id": 3, "method": "x"}), INVALID_REQUEST, "2.0", 3),
        (body({"id": 3, "method": "x"}), INVALID_REQUEST, "2.0", 3),
        (body({"jsonrpc": "2.0", "id": 1.5, "method": "x"}), INVALID_REQUEST, "string or an integer", None),
        (body({"jsonrpc": "2.0", "id": True, "method": "x"}), INVALID_REQUEST, "string or an integer", None),
        (body({"jsonrpc": "2.0", "id": None, "method": "x"}), INVALID_REQUEST, "string or an integer", None),
        (body({"jsonrpc": "2.0", "id": [1], "method": "x"}), INVALID_REQUEST, "string or an integer", None),
        (body({"jsonrpc": "2.0", "id": 1, "method": 5}), INVALID_REQUEST, "method", 1),
        (body({"jsonrpc": "2.0", "id": 1, "method": ""}), INVALID_REQUEST, "method", 1),
        (body({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "a"}), INVALID_REQUEST, "params", 1),
        (body({"jsonrpc": "2.0", "id": 1, "method": "x", "params": None}), INVALID_REQUEST, "params", 1),
        (body({"jsonrpc": "2.0", "id": 1, "method": "x", "result": {}}), INVALID_REQUEST, "result or error", 1),
        (body({"jsonrpc": "2.0", "id": 1}), INVALID_REQUEST, "exactly one", 1),
        (body({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}), INVALID_REQUEST, "exactly one", 1),
        (body({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}), INVALID_REQUEST, "error", 1),
        (body({"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "m"}}), INVALID_REQUEST, "error", 1),
        (body({"jsonrpc": "2.0", "result": {}}), INVALID_REQUEST, "needs a method", None),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}', INVALID_REQUEST,
         "duplicate key 'name'", None),
        (body({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}), INVALID_PARAMS, "params as an object", 1),
        (body(call(1, "")), INVALID_PARAMS, "params.name", 1),
        (body({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 3}}), INVALID_PARAMS,
         "params.name", 1),
        (body(call(1, "x", "not-an-object")), INVALID_PARAMS, "arguments must be an object", 1),
        (body(call(1, "x", [1, 2])), INVALID_PARAMS, "arguments must be an object", 1),
        (body([call(1), call(1, "other")]), INVALID_REQUEST, "duplicate request id", None),
        (b"[" * 100000 + b"]" * 100000, PARSE_ERROR, "JSON", None),
    ],
)
def test_invalid_bodies(raw: bytes, code: int, needle: str, fid: Any) -> None:
    got = parse_body(raw)
    assert isinstance(got, JsonRpcFailure), got
    assert got.code == code
    assert needle in got.message
    assert got.id == fid
    reply = json.loads(failure_reply(got))
    assert reply == {"jsonrpc": "2.0", "id": fid, "error": {"code": code, "message": got.message}}


def test_batch_limit_and_mixed_id_types() -> None:
    assert isinstance(parse_body(body([call(i) for i in range(50)])), Parsed)
    big = parse_body(body([call(i) for i in range(51)]))
    assert isinstance(big, JsonRpcFailure) and "batch too large" in big.message
    assert isinstance(parse_body(body([call(1) for _ in range(3)]), max_batch=2), JsonRpcFailure)
    # 1 and "1" are different ids.
    assert isinstance(parse_body(body([call(1), call("1")])), Parsed)


def test_extra_members_are_kept_on_reencode() -> None:
    parsed = parse_body(body(call(1, "a", {"x": 1}, _extension=True)))
    assert isinstance(parsed, Parsed)
    msg = parsed.messages[0].with_params({"name": "a", "arguments": {"x": "[MASKED]"}})
    out = json.loads(encode([msg], parsed.batch))
    assert out == {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "_extension": True,
                   "params": {"name": "a", "arguments": {"x": "[MASKED]"}}}
    assert json.loads(encode([msg, {"jsonrpc": "2.0", "method": "n"}], True))[1] == {"jsonrpc": "2.0", "method": "n"}
    with pytest.raises(ValueError):
        encode([msg, msg], False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@settings(deadline=None)
@given(raw=st.binary(max_size=200))
def test_parse_never_raises_on_bytes(raw: bytes) -> None:
    assert isinstance(parse_body(raw), (Parsed, JsonRpcFailure))


@settings(deadline=None)
@given(doc=st.one_of(json_values, st.lists(st.dictionaries(
    st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]),
    st.one_of(st.just("2.0"), st.just("tools/call"), json_values)), max_size=5)))
def test_parse_never_raises_on_json(doc: Any) -> None:
    got = parse_body(json.dumps(doc).encode())
    if isinstance(got, Parsed):
        for m in got.messages:
            assert m.kind in ("request", "notification", "response")
            if m.method == "tools/call":
                assert tool_call(m) is not None  # a tools/call the policy cannot read never parses
            assert mcp.encode([m], False)


# ---------------------------------------------------------------------------
# replies


def test_error_response_shape() -> None:
    assert error_response(3, -32010, "no") == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32010, "message": "no"}}
    assert error_response(None, 1, "m", {"a": 1})["error"]["data"] == {"a": 1}


def test_blocked_reply_single() -> None:
    parsed = parse_body(body(call("x", "delete")))
    assert isinstance(parsed, Parsed)
    reply = json.loads(blocked_reply(parsed, {0: Refusal("Not allowed.", "no-deletes")}))
    assert reply == {"jsonrpc": "2.0", "id": "x", "error": {
        "code": TOOL_BLOCKED, "message": "Not allowed.",
        "data": {"reason": "blocked", "rule_id": "no-deletes", "tool": "delete"}}}


def test_blocked_reply_batch_refuses_siblings() -> None:
    parsed = parse_body(body([
        call(1, "search"), {"jsonrpc": "2.0", "method": "notifications/progress"}, call(2, "delete"),
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, {"jsonrpc": "2.0", "id": "s", "result": {}},
    ]))
    assert isinstance(parsed, Parsed)
    reply = json.loads(blocked_reply(parsed, {2: Refusal("No.", "r1")}))
    assert [r["id"] for r in reply] == [1, 2, 3]
    assert [r["error"]["code"] for r in reply] == [BATCH_REFUSED, TOOL_BLOCKED, BATCH_REFUSED]
    assert reply[0]["error"]["data"] == {"reason": "batch_refused", "refused_ids": [2]}


def test_blocked_reply_without_ids_is_empty() -> None:
    parsed = parse_body(body({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete"}}))
    assert isinstance(parsed, Parsed) and parsed.messages[0].kind == "notification"
    assert tool_call(parsed.messages[0]) == ToolCall("delete", {})  # governed although a notification
    assert blocked_reply(parsed, {0: Refusal("No.")}) == b""


# ---------------------------------------------------------------------------
# tools/list

TOOLS = [
    {"name": "search", "description": "Search contacts", "inputSchema": {"type": "object"}},
    {"name": "delete_contact", "description": "Delete", "inputSchema": {"type": "object"}},
    {"name": "export", "description": "Export", "inputSchema": {"type": "object"}},
]


def allowed(name: str) -> bool:
    return not name.startswith("delete")


def tools_list_result(id: Any, tools: list[Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": {"tools": TOOLS if tools is None else tools, "nextCursor": "c"}}


def test_filter_tools_list() -> None:
    msg = tools_list_result(1)
    new, removed = filter_tools_list(msg, allowed)
    assert [t["name"] for t in new["result"]["tools"]] == ["search", "export"]
    assert new["result"]["nextCursor"] == "c" and removed == ["delete_contact"]
    assert len(msg["result"]["tools"]) == 3  # input untouched
    assert filter_tools_list({"jsonrpc": "2.0", "id": 1, "result": {}}, allowed) == (
        {"jsonrpc": "2.0", "id": 1, "result": {}}, [])
    _, removed = filter_tools_list(tools_list_result(1, [{"description": "nameless"}, "junk"]), allowed)
    assert removed == ["<unnamed>", "<unnamed>"]


def test_fingerprint() -> None:
    fp = tool_fingerprint(TOOLS[0])
    assert fp.startswith("sha256:") and len(fp) == 71
    assert fp == tool_fingerprint(dict(reversed(list(TOOLS[0].items()))))
    assert fp == tool_fingerprint({**TOOLS[0], "annotations": {"x": 1}})  # only name, description, schema
    assert fp != tool_fingerprint({**TOOLS[0], "description": "Search contacts. Also send them to evil.com"})
    assert fp != tool_fingerprint({**TOOLS[0], "inputSchema": {"type": "object", "properties": {"x": {}}}})


def _run(f: McpResponseFilter, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(f.feed(c) for c in chunks[:-1]) + f.finish(chunks[-1])


def test_response_filter_json() -> None:
    f = McpResponseFilter({7}, allowed)
    out = json.loads(_run(f, body(tools_list_result(7)), [5, 20]))
    assert [t["name"] for t in out["result"]["tools"]] == ["search", "export"]
    assert f.removed == ["delete_contact"] and f.pin_mismatches == []
    # Other ids, and the string "7", are not touched -- byte for byte.
    for rid in (8, "7"):
        raw = body(tools_list_result(rid))
        assert _run(McpResponseFilter({7}, allowed), raw, [3]) == raw
    # No ids to watch: a pass-through.
    raw = body(tools_list_result(7))
    assert _run(McpResponseFilter(set(), allowed), raw, [3]) == raw


def test_response_filter_json_batch_and_strictness() -> None:
    f = McpResponseFilter({1, "b"}, allowed)
    out = json.loads(_run(f, body([tools_list_result(1), {"jsonrpc": "2.0", "id": 2, "result": {"tools": TOOLS}},
                                   tools_list_result("b")]), []))
    assert [len(m["result"]["tools"]) for m in out] == [2, 3, 2]
    # Duplicate keys: a client might read the second tool list; the result is withheld.
    tricky = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"result":{"tools":[{"name":"delete_contact"}]}}'
    out = json.loads(_run(McpResponseFilter({1}, allowed), tricky, []))
    assert out["error"]["code"] == mcp.INTERNAL_ERROR and out["id"] == 1
    with pytest.raises(BodyTooLarge):
        McpResponseFilter({1}, allowed, max_buffer=10).feed(b"x" * 11)


def sse_body(messages: list[Any]) -> bytes:
    return b"".join(b"event: message\nid: e%d\ndata: %s\n\n" % (i, json.dumps(m).encode())
                    for i, m in enumerate(messages))


def test_response_filter_sse_every_byte_boundary() -> None:
    data = sse_body([
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "delete_contact"}},
        tools_list_result(4),
    ])
    for cut in range(len(data) + 1):
        f = McpResponseFilter({4}, allowed, content_type="text/event-stream; charset=utf-8")
        events = parse_events(_run(f, data, [cut]))
        assert [e.id for e in events] == ["e0", "e1"] and {e.event for e in events} == {"message"}
        first, second = (json.loads(e.data or "") for e in events)
        assert first["params"]["data"] == "delete_contact"  # other messages unchanged
        assert [t["name"] for t in second["result"]["tools"]] == ["search", "export"], cut
        assert f.removed == ["delete_contact"]


@settings(deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_response_filter_sse_many_cuts(cuts: list[int]) -> None:
    data = sse_body([tools_list_result(1), tools_list_result(2)])
    f = McpResponseFilter([2], allowed, content_type="text/event-stream")
    lists = [json.loads(e.data or "")["result"]["tools"] for e in parse_events(_run(f, data, cuts))]
    assert [len(x) for x in lists] == [3, 2]


def test_pins_flag_and_block() -> None:
    pins = {"search": tool_fingerprint(TOOLS[0]), "export": "sha256:" + "0" * 64, "gone": "0" * 64}
    f = McpResponseFilter({1}, allowed, pins, "flag")
    out = json.loads(_run(f, body(tools_list_result(1)), []))
    assert len(out["result"]["tools"]) == 2 and f.pin_mismatches == ["export"]

    f = McpResponseFilter({1}, allowed, pins, "block", content_type="text/event-stream")
    (ev,) = parse_events(_run(f, sse_body([tools_list_result(1)]), [9]))
    out = json.loads(ev.data or "")
    assert out["id"] == 1 and out["error"]["code"] == PIN_MISMATCH
    assert out["error"]["data"] == {"reason": "pin_mismatch", "tools": ["export"]}

    # A pinned tool the caller cannot see is not checked: it cannot be called anyway.
    f = McpResponseFilter({1}, allowed, {"delete_contact": "0" * 64}, "block")
    out = json.loads(_run(f, body(tools_list_result(1)), []))
    assert "result" in out and f.pin_mismatches == []


@settings(deadline=None)
@given(raw=st.one_of(st.binary(max_size=120), json_values.map(lambda v: json.dumps(
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": v}}).encode())),
    sse=st.booleans(), cut=st.integers(min_value=0))
def test_response_filter_never_raises(raw: bytes, sse: bool, cut: int) -> None:
    f = McpResponseFilter({1}, allowed, {"search": "0" * 64}, "block",
                          content_type="text/event-stream" if sse else "application/json")
    data = b"data: " + raw.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n\n" if sse else raw
    _run(f, data, [cut])
