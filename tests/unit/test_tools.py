"""Tool policy (``tools:`` section) and the guard on model-emitted tool calls."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import ConfigError
from extproc.llmapi.sse import parse_events, serialize_event
from extproc.masking import default_profile
from extproc.masking.responses import BodyTooLarge
from extproc.tools.config import parse_argument_path
from extproc.tools.guard import ToolCallGuard
from extproc.tools.model import ToolPolicy, ToolRequest, argument_digest, mask_arguments

CONFIG: dict[str, Any] = {
    "mode": "enforce",
    "default": "allow",
    "rules": [
        {
            "id": "no-prod-deletes",
            "match": {"tool": "delete_*", "servers": ["crm"], "arguments": [{"path": "env", "equals": "production"}]},
            "action": "block",
            "message": "No deletes in production.",
        },
        {"id": "no-drop", "match": {"tool": "sql", "arguments": [{"path": "query", "regex": r"(?i)drop\s+table"}]},
         "action": "block"},
        {"id": "big-export", "match": {"tool": "export", "arguments": [{"path": "limit", "gt": 1000}]},
         "action": "require_approval"},
        {"id": "contractors-no-shell", "match": {"tool": ["shell", "exec_*"], "groups": ["contractors"]},
         "action": "block"},
        {"id": "mask-email", "match": {"tool": "send_mail"}, "action": "mask", "mask": {"results": False}},
        {"id": "watch-nested", "match": {"tool": "update", "arguments": [{"path": "where.ids[1]", "gte": 5}]},
         "action": "block", "mode": "shadow"},
    ],
    "pins": {"crm": {"search": "sha256:" + "a" * 64}},
    "on_pin_mismatch": "block",
}
POLICY = ToolPolicy.from_config(CONFIG, file="cfg.yaml")


def req(tool: str, args: dict[str, Any] | None = None, *, server: str = "crm", user: str = "alice",
        groups: tuple[str, ...] = ("eng",)) -> ToolRequest:
    return ToolRequest(user=user, groups=groups, server=server, tool=tool, arguments={} if args is None else args)


# ---------------------------------------------------------------------------
# configuration


def test_loads_and_normalises_pins() -> None:
    assert len(POLICY.rules) == 6
    assert POLICY.pins_for("crm") == {"search": "sha256:" + "a" * 64}
    assert POLICY.pins_for("other") == {}
    assert POLICY.on_pin_mismatch == "block"
    assert ToolPolicy.empty().is_empty and not POLICY.is_empty
    assert POLICY.version == ToolPolicy.from_config(json.loads(json.dumps(CONFIG))).version


def _rule_cfg(**rule: Any) -> dict[str, Any]:
    return {"rules": [{"id": "ok", "action": "allow"}, {"id": "r", **rule}]}


@pytest.mark.parametrize(
    ("raw", "path", "needle"),
    [
        ({"rules": [], "bogus": 1}, "tools.bogus", "unknown key"),
        ({"mode": "loud"}, "tools.mode", "must be one of enforce, shadow"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "q", "regex": "(?=x)y"}]}),
         "tools.rules[1].match.arguments[0].regex", "lookahead is not supported by RE2"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "q", "regex": "a*"}]}),
         "tools.rules[1].match.arguments[0].regex", "matches the empty string"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "a..b", "equals": 1}]}),
         "tools.rules[1].match.arguments[0].path", "dotted path"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "a"}]}),
         "tools.rules[1].match.arguments[0]", "needs an operator"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "a", "gt": "5"}]}),
         "tools.rules[1].match.arguments[0].gt", "must be a number"),
        (_rule_cfg(action="block", match={"arguments": [{"path": "a", "gt": True}]}),
         "tools.rules[1].match.arguments[0].gt", "must be a number"),
        (_rule_cfg(action="block", match={"arguments": []}), "tools.rules[1].match.arguments", "non-empty list"),
        (_rule_cfg(action="block", match={"tool": []}), "tools.rules[1].match.tool", "must not be empty"),
        (_rule_cfg(action="block", match={"tools": "x"}), "tools.rules[1].match.tools", "did you mean 'tool'"),
        (_rule_cfg(action="allow", message="hi"), "tools.rules[1].message", "only for block"),
        (_rule_cfg(action="block", mask={"arguments": True}), "tools.rules[1].mask", "only mask rules"),
        (_rule_cfg(action="mask", mask={"arguments": False, "results": False}), "tools.rules[1].mask",
         "masks nothing"),
        (_rule_cfg(action="nuke"), "tools.rules[1].action", "must be one of"),
        ({"rules": [{"action": "block"}]}, "tools.rules[0]", "missing required key 'id'"),
        ({"rules": [{"id": "a"}]}, "tools.rules[0]", "missing required key 'action'"),
        ({"rules": [{"id": "a", "action": "block"}, {"id": "a", "action": "allow"}]}, "tools.rules[1].id",
         "already used"),
        ({"pins": {"crm": {"search": "abc"}}}, "tools.pins.crm.search", "sha256 fingerprint"),
        ({"on_pin_mismatch": "explode"}, "tools.on_pin_mismatch", "flag, block"),
    ],
)
def test_config_errors(raw: dict[str, Any], path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        ToolPolicy.from_config(raw, file="cfg.yaml", lines={path: 7, "tools": 1})
    assert info.value.path == path
    assert needle in info.value.message
    assert info.value.file == "cfg.yaml"
    assert info.value.line == 7


def test_config_error_line_falls_back_to_enclosing_key() -> None:
    raw = {"rules": [{"id": "a", "action": "block", "match": {"arguments": [{"path": "q", "regex": "(?<=a)b"}]}}]}
    with pytest.raises(ConfigError) as info:
        ToolPolicy.from_config(raw, file="f.yaml", lines={"tools.rules[0]": 12})
    assert info.value.line == 12
    assert "lookbehind" in str(info.value) and "f.yaml:12" in str(info.value)


@pytest.mark.parametrize(
    ("path", "segments"),
    [("env", ("env",)), ("where.env", ("where", "env")), ("ids[0]", ("ids", 0)),
     ("a[1][2].b", ("a", 1, 2, "b")), ("x-y z", ("x-y z",))],
)
def test_argument_paths(path: str, segments: tuple[Any, ...]) -> None:
    assert parse_argument_path(path) == segments


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b", "[0]", "a[x]", "a[0", "a]"])
def test_bad_argument_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_argument_path(bad)


# ---------------------------------------------------------------------------
# evaluation


def test_glob_server_and_argument_equals() -> None:
    d = POLICY.evaluate(req("delete_contact", {"env": "production"}))
    assert (d.action, d.rule_id, d.message) == ("block", "no-prod-deletes", "No deletes in production.")
    assert d.refused and d.tool == "delete_contact" and d.server == "crm"
    assert POLICY.evaluate(req("delete_contact", {"env": "staging"})).action == "allow"
    assert POLICY.evaluate(req("delete_contact", {"env": "production"}, server="billing")).action == "allow"
    # Globs are case-sensitive: Delete_ is another tool.
    assert POLICY.evaluate(req("Delete_contact", {"env": "production"})).action == "allow"
    # Missing path: the condition does not hold.
    assert POLICY.evaluate(req("delete_contact", {})).action == "allow"


def test_regex_is_searched_in_strings_and_inside_containers() -> None:
    assert POLICY.evaluate(req("sql", {"query": "select 1; DROP   TABLE users"})).rule_id == "no-drop"
    assert POLICY.evaluate(req("sql", {"query": "select * from drops"})).action == "allow"
    # Wrapping the value in a list or object does not evade the rule.
    assert POLICY.evaluate(req("sql", {"query": ["ok", {"x": "drop table t"}]})).action == "block"
    assert POLICY.evaluate(req("sql", {"query": 42})).action == "allow"


@pytest.mark.parametrize(
    ("limit", "action"),
    [(1001, "require_approval"), (1000, "allow"), (1000.5, "require_approval"), ("5000", "require_approval"),
     (" 5000 ", "require_approval"), ("5e3", "require_approval"), ("lots", "allow"), (True, "allow"),
     (None, "allow"), ([5000], "allow"), ("9" * 5000, "allow")],
)
def test_numeric_comparisons(limit: Any, action: str) -> None:
    assert POLICY.evaluate(req("export", {"limit": limit})).action == action


def test_equals_is_json_equality() -> None:
    policy = ToolPolicy.from_config({"rules": [
        {"id": "t", "match": {"arguments": [{"path": "flag", "equals": True}]}, "action": "block"},
        {"id": "n", "match": {"arguments": [{"path": "n", "equals": 1}]}, "action": "block"},
        {"id": "o", "match": {"arguments": [{"path": "o", "equals": {"a": [1, "x"]}}]}, "action": "block"},
        {"id": "i", "match": {"arguments": [{"path": "env", "in": ["prod", "production"]}]}, "action": "block"},
        {"id": "e", "match": {"tool": "needs_reason", "arguments": [{"path": "reason", "exists": False}]},
         "action": "block"},
    ]})

    def action(args: dict[str, Any], tool: str = "t") -> str:
        return policy.evaluate(req(tool, args)).action

    assert action({"flag": True}) == "block"
    assert action({"flag": 1}) == "allow"  # true is not 1
    assert action({"n": 1.0}) == "block"
    assert action({"n": True}) == "allow"
    assert action({"o": {"a": [1, "x"]}}) == "block"
    assert action({"o": {"a": [1, "x"], "b": 2}}) == "allow"
    assert action({"env": "production"}) == "block"
    assert action({"env": "dev"}) == "allow"
    assert action({}, "needs_reason") == "block"
    assert action({"reason": "ticket 1"}, "needs_reason") == "allow"


def test_nested_paths_and_shadow() -> None:
    d = POLICY.evaluate(req("update", {"where": {"ids": [1, 7]}}))
    assert (d.action, d.mode, d.shadow_action, d.shadow_rule_id) == ("allow", "shadow", "block", "watch-nested")
    assert [m.rule_id for m in d.matches] == ["watch-nested"]
    d = POLICY.evaluate(req("update", {"where": {"ids": [9]}}))  # index 1 missing
    assert (d.action, d.mode, d.matches) == ("allow", "enforce", ())


def test_group_scoping_and_mask_flags() -> None:
    assert POLICY.evaluate(req("exec_cmd", groups=("contractors",))).action == "block"
    assert POLICY.evaluate(req("shell", groups=("eng",))).action == "allow"
    d = POLICY.evaluate(req("send_mail", {"to": "x@example.com"}))
    assert (d.action, d.mask_arguments, d.mask_results) == ("mask", True, False)


def test_most_restrictive_wins_and_default_block() -> None:
    policy = ToolPolicy.from_config({"default": "block", "default_message": "Ask first.", "rules": [
        {"id": "reads", "match": {"tool": "get_*"}, "action": "allow"},
        {"id": "mask-reads", "match": {"tool": "get_*"}, "action": "mask"},
        {"id": "secret", "match": {"tool": "get_secret"}, "action": "require_approval"},
        {"id": "never", "match": {"tool": "get_secret", "users": ["mallory"]}, "action": "block"},
    ]})
    assert policy.evaluate(req("get_user")).action == "mask"
    assert policy.evaluate(req("get_secret")).rule_id == "secret"
    assert policy.evaluate(req("get_secret", user="mallory")).rule_id == "never"
    d = policy.evaluate(req("put_user"))
    assert (d.action, d.rule_id, d.message) == ("block", None, "Ask first.")


def test_unreadable_arguments_fail_closed() -> None:
    policy = ToolPolicy.from_config({"default": "block", "rules": [
        {"id": "small", "match": {"tool": "export", "arguments": [{"path": "limit", "lte": 10}]}, "action": "allow"},
        {"id": "no-prod", "match": {"tool": "deploy", "arguments": [{"path": "env", "equals": "prod"}]},
         "action": "block"},
        {"id": "deploy", "match": {"tool": "deploy"}, "action": "allow"},
    ]})
    unreadable = ToolRequest(user="a", groups=(), server="s", tool="export", arguments=None)
    assert policy.evaluate(unreadable).action == "block"  # the allow rule cannot vouch for it
    assert policy.evaluate(ToolRequest("a", (), "s", "deploy", None)).rule_id == "no-prod"
    assert policy.evaluate(ToolRequest("a", (), "s", "deploy", {"env": "dev"})).action == "allow"


def test_may_call() -> None:
    # Argument-conditioned block rules do not hide a tool.
    assert POLICY.may_call("alice", ["eng"], "crm", "delete_contact")
    assert not POLICY.may_call("alice", ["contractors"], "crm", "shell")
    assert POLICY.may_call("alice", ["eng"], "crm", "shell")
    shadow = ToolPolicy.from_config({"mode": "shadow", "rules": [{"id": "x", "match": {"tool": "shell"},
                                                                   "action": "block"}]})
    assert shadow.may_call("alice", [], "crm", "shell")
    assert shadow.evaluate(req("shell")).mode == "shadow"
    closed = ToolPolicy.from_config({"default": "block", "rules": [
        {"id": "r", "match": {"tool": "read_*", "arguments": [{"path": "n", "lt": 5}]}, "action": "allow"}]})
    assert closed.may_call("a", [], "s", "read_file")
    assert not closed.may_call("a", [], "s", "write_file")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)


@settings(deadline=None)
@given(args=st.dictionaries(st.sampled_from(["env", "query", "limit", "where", "ids", "x"]), json_values),
       tool=st.sampled_from(["delete_x", "sql", "export", "update", "shell", "send_mail", ""]))
def test_evaluate_never_raises(args: dict[str, Any], tool: str) -> None:
    d = POLICY.evaluate(req(tool, args))
    assert d.action in ("allow", "mask", "require_approval", "block")
    assert argument_digest(tool, args).startswith("sha256:")


def test_evaluate_survives_deep_nesting() -> None:
    deep: Any = "drop table x"
    for _ in range(5000):
        deep = [deep]
    assert POLICY.evaluate(req("sql", {"query": deep})).action == "block"
    masked, _ = mask_arguments({"q": deep}, default_profile())
    assert masked is not None


def test_argument_digest_is_canonical() -> None:
    a = argument_digest("t", {"a": 1, "b": {"c": [1, 2]}})
    assert a == argument_digest("t", {"b": {"c": [1, 2]}, "a": 1})
    assert a != argument_digest("u", {"a": 1, "b": {"c": [1, 2]}})
    assert a != argument_digest("t", {"a": 2, "b": {"c": [1, 2]}})
    assert len(a) == len("sha256:") + 64


def test_mask_arguments() -> None:
    args = {"to": "bob@example.com", "cc": ["carol@example.org", 3], "n": 1, "deep": {"x": "bob@example.com"}}
    masked, counts = mask_arguments(args, default_profile())
    assert "bob@example.com" not in json.dumps(masked) and "carol" not in json.dumps(masked)
    assert masked["n"] == 1 and masked["cc"][1] == 3
    assert counts["EMAIL"] == 3
    assert args["to"] == "bob@example.com"  # not changed in place


# ---------------------------------------------------------------------------
# model-emitted tool calls

GUARD_POLICY = ToolPolicy.from_config({"rules": [
    {"id": "no-rm", "match": {"tool": "delete_file"}, "action": "block", "message": "Deleting files is off."},
    {"id": "no-prod", "match": {"tool": "deploy", "arguments": [{"path": "env", "equals": "prod"}]},
     "action": "block"},
    {"id": "ask", "match": {"tool": "wire_money"}, "action": "require_approval"},
]})


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {payload}\n\n".encode()
    return out


def _run(guard: ToolCallGuard, body: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(body) + 1) for c in cuts})
    bounds = [0, *points, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(guard.feed(c) for c in chunks[:-1]) + guard.finish(chunks[-1])


def _guard(api: str, content_type: str = "text/event-stream", on_forbidden: str = "remove") -> ToolCallGuard:
    return ToolCallGuard(GUARD_POLICY, "alice", ["eng"], api, on_forbidden,  # type: ignore[arg-type]
                         content_type=content_type, provider="openai")


# -- OpenAI chat ---------------------------------------------------------------------------

BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def chat_stream(calls: list[tuple[str, str]], text_before: str = "Let me ", text_after: str = "") -> bytes:
    events: list[tuple[str | None, Any]] = [(None, _chunk({"role": "assistant", "content": ""}))]
    for piece in (text_before[:3], text_before[3:]):
        events.append((None, _chunk({"content": piece})))
    for j, (name, args) in enumerate(calls):
        events.append((None, _chunk({"tool_calls": [{"index": j, "id": f"call_{j}", "type": "function",
                                                     "function": {"name": name, "arguments": ""}}]})))
        for k in range(0, len(args), 4):
            events.append((None, _chunk({"tool_calls": [{"index": j, "function": {"arguments": args[k:k + 4]}}]})))
    if text_after:
        events.append((None, _chunk({"content": text_after})))
    events.append((None, _chunk({}, "tool_calls" if calls else "stop")))
    events.append((None, {**BASE, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    events.append((None, "[DONE]"))
    return _sse(events)


def accumulate_chat(out: bytes) -> dict[str, Any]:
    text, calls, finish, errors, done = "", {}, None, [], 0
    for ev in parse_events(out):
        assert ev.data is not None
        if ev.data == "[DONE]":
            done += 1
            continue
        assert done == 0, "nothing after [DONE]"
        obj = json.loads(ev.data)
        if "error" in obj:
            errors.append(obj["error"])
            continue
        for choice in obj["choices"]:
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                acc = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                acc["name"] += fn.get("name") or ""
                acc["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": text, "calls": [calls[i] for i in sorted(calls)], "indexes": sorted(calls), "finish": finish,
            "errors": errors, "done": done}


ARGS_OK = json.dumps({"env": "staging", "path": "/tmp/x"})
ARGS_PROD = json.dumps({"env": "prod"})


def test_chat_sse_allowed_call_passes_unchanged_in_meaning() -> None:
    body = chat_stream([("deploy", ARGS_OK)], text_after="!")
    guard = _guard("openai")
    got = accumulate_chat(_run(guard, body, []))
    assert got == accumulate_chat(body)
    assert [d.action for d in guard.decisions] == ["allow"] and guard.blocked == []


@settings(deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_chat_sse_removes_forbidden_call_among_parallel_calls(cuts: list[int]) -> None:
    body = chat_stream([("deploy", ARGS_OK), ("deploy", ARGS_PROD), ("read_file", '{"p": "a"}')])
    guard = _guard("openai")
    got = accumulate_chat(_run(guard, body, cuts))
    assert got["text"] == "Let me "
    assert got["calls"] == [{"name": "deploy", "arguments": ARGS_OK}, {"name": "read_file", "arguments": '{"p": "a"}'}]
    assert got["indexes"] == [0, 1]  # renumbered so client accumulators stay dense
    assert got["finish"] == "tool_calls" and got["done"] == 1
    assert guard.blocked == ["deploy"]
    assert [d.rule_id for d in guard.decisions] == [None, "no-prod", None]


def test_chat_sse_every_byte_boundary() -> None:
    body = chat_stream([("delete_file", '{"path": "/etc/passwd"}')], text_after=" done")
    for cut in range(len(body) + 1):
        guard = _guard("openai")
        got = accumulate_chat(_run(guard, body, [cut]))
        assert got["calls"] == [] and got["finish"] == "stop", cut
        assert got["text"] == "Let me  done"
        assert guard.blocked == ["delete_file"]


def test_chat_sse_text_is_not_held() -> None:
    body = chat_stream([("delete_file", '{"path": "/x/y/z/long/path"}')])
    guard = _guard("openai")
    first_text = body.index(b"me ") + 10
    # The text is out before the tool call even starts; the call is not out before it ends.
    out = guard.feed(body[:first_text])
    assert b"Let" in out
    call_start = body.index(b"delete_file") + 40
    assert b"delete_file" not in guard.feed(body[first_text:call_start])


def test_chat_sse_error_mode() -> None:
    body = chat_stream([("deploy", ARGS_OK), ("wire_money", '{"amount": 5}')], text_after="more")
    guard = _guard("openai", on_forbidden="error")
    out = _run(guard, body, [17, 400])
    got = accumulate_chat(out)
    assert got["calls"] == [{"name": "deploy", "arguments": ARGS_OK}]
    assert len(got["errors"]) == 1 and got["errors"][0]["code"] == "tool_call_blocked"
    assert "wire_money" in got["errors"][0]["message"]
    # Text is never held, so text streamed while the call was held is already out.
    assert got["done"] == 1 and got["text"] == "Let me more"
    assert b"usage" not in out  # the rest of the stream is replaced


def test_chat_json() -> None:
    doc = {"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "deploy", "arguments": ARGS_PROD}},
            {"id": "b", "type": "function", "function": {"name": "read_file", "arguments": "{}"}},
        ]}}]}
    guard = _guard("openai", "application/json")
    out = json.loads(_run(guard, json.dumps(doc).encode(), [10]))
    assert [c["id"] for c in out["choices"][0]["message"]["tool_calls"]] == ["b"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    doc["choices"][0]["message"]["tool_calls"].pop()
    guard = _guard("openai", "application/json")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert "tool_calls" not in out["choices"][0]["message"] and out["choices"][0]["finish_reason"] == "stop"
    guard = _guard("openai", "application/json", "error")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert out["error"]["code"] == "tool_call_blocked"


def test_chat_json_invalid_arguments_fail_closed_and_allowed_body_is_byte_identical() -> None:
    doc = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"tool_calls": [
        {"id": "a", "function": {"name": "deploy", "arguments": '{"env": "prod"'}}]}}]}
    guard = _guard("openai", "application/json")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert "tool_calls" not in out["choices"][0]["message"]
    body = b'{ "choices": [ {"index": 0, "message": {"content": "hi"}} ] }'
    assert _run(_guard("openai", "application/json"), body, [3]) == body


def test_json_buffer_limit() -> None:
    guard = ToolCallGuard(GUARD_POLICY, "a", [], "openai", content_type="application/json", max_buffer=10)
    with pytest.raises(BodyTooLarge):
        guard.feed(b"x" * 11)


def test_other_content_types_pass_through() -> None:
    guard = _guard("openai", "text/plain")
    assert guard.feed(b"delete_file") == b"delete_file" and guard.finish(b"") == b""


# -- OpenAI Responses --------------------------------------------------------------------

def responses_stream(calls: list[tuple[str, str]]) -> bytes:
    events: list[tuple[str | None, Any]] = [
        ("response.created", {"type": "response.created", "response": {"id": "r", "output": []}}),
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                        "item": {"type": "message", "id": "m0", "content": []}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "output_index": 0,
                                        "item_id": "m0", "content_index": 0, "delta": "Working"}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                       "item": {"type": "message", "id": "m0"}}),
    ]
    output: list[dict[str, Any]] = [{"type": "message", "id": "m0"}]
    for n, (name, args) in enumerate(calls, start=1):
        item = {"type": "function_call", "id": f"fc{n}", "call_id": f"call{n}", "name": name, "arguments": ""}
        events.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": n,
                                                      "item": item}))
        for k in range(0, len(args), 5):
            events.append(("response.function_call_arguments.delta", {
                "type": "response.function_call_arguments.delta", "output_index": n, "item_id": f"fc{n}",
                "delta": args[k:k + 5]}))
        events.append(("response.function_call_arguments.done", {
            "type": "response.function_call_arguments.done", "output_index": n, "item_id": f"fc{n}",
            "arguments": args}))
        events.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": n,
                                                     "item": {**item, "arguments": args}}))
        output.append({**item, "arguments": args})
    events.append(("response.completed", {"type": "response.completed", "response": {"id": "r",
                                                                                       "output": output}}))
    return _sse(events)


def accumulate_responses(out: bytes) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    completed, errors = None, []
    for ev in parse_events(out):
        obj = json.loads(ev.data or "")
        if obj["type"] == "error":
            errors.append(obj)
        elif obj["type"] == "response.output_item.added":
            assert obj["output_index"] == len(items)  # dense, as the SDK's accumulator requires
            items.append({**obj["item"]})
        elif obj["type"] == "response.function_call_arguments.delta":
            items[obj["output_index"]]["arguments"] += obj["delta"]
        elif obj["type"] == "response.completed":
            completed = [(i["type"], i.get("name")) for i in obj["response"]["output"]]
    return {"items": [(i["type"], i.get("name"), i.get("arguments")) for i in items], "completed": completed,
            "errors": errors}


@settings(deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_responses_sse_remove(cuts: list[int]) -> None:
    body = responses_stream([("delete_file", '{"p": "/"}'), ("deploy", ARGS_OK)])
    guard = _guard("openai")
    got = accumulate_responses(_run(guard, body, cuts))
    assert got["items"] == [("message", None, None), ("function_call", "deploy", ARGS_OK)]
    assert got["completed"] == [("message", None), ("function_call", "deploy")]
    assert guard.blocked == ["delete_file"]


def test_responses_sse_error() -> None:
    body = responses_stream([("deploy", ARGS_PROD)])
    guard = _guard("openai", on_forbidden="error")
    out = _run(guard, body, [50])
    got = accumulate_responses(out)
    assert got["items"] == [("message", None, None)] and got["completed"] is None
    assert got["errors"][0]["code"] == "tool_call_blocked" and got["errors"][0]["error"]["code"] == "tool_call_blocked"
    assert parse_events(out)[-1].event == "error"


def test_responses_json() -> None:
    doc = {"object": "response", "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
        {"type": "function_call", "name": "wire_money", "arguments": '{"amount": 1}', "call_id": "x"}]}
    guard = _guard("openai", "application/json")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert [i["type"] for i in out["output"]] == ["message"]
    assert [d.action for d in guard.decisions] == ["require_approval"]


# -- Anthropic ---------------------------------------------------------------------------------

def anthropic_stream(blocks: list[tuple[str, str]]) -> bytes:
    """blocks: ("text", text) or (tool name, input JSON)."""
    events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "content": [], "stop_reason": None}})]
    for i, (kind, payload) in enumerate(blocks):
        if kind == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": payload}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": f"tu{i}", "name": kind, "input": {}}}))
            for k in range(0, len(payload), 3):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": payload[k:k + 3]}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    tool = any(k != "text" for k, _ in blocks)
    events.append(("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": "tool_use" if tool else "end_turn"}, "usage": {"output_tokens": 9}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return _sse(events)


def accumulate_anthropic(out: bytes) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    stop, errors = None, []
    for ev in parse_events(out):
        obj = json.loads(ev.data or "")
        assert ev.event == obj["type"]
        if obj["type"] == "error":
            errors.append(obj["error"])
        elif obj["type"] == "content_block_start":
            assert obj["index"] == len(blocks)
            blocks.append({**obj["content_block"], "json": ""})
        elif obj["type"] == "content_block_delta":
            d = obj["delta"]
            blocks[obj["index"]]["json" if d["type"] == "input_json_delta" else "text"] += \
                d.get("partial_json", d.get("text", ""))
        elif obj["type"] == "message_delta":
            stop = obj["delta"]["stop_reason"]
    return {"blocks": [(b["type"], b.get("name") or b.get("text"), b["json"]) for b in blocks], "stop": stop,
            "errors": errors}


@settings(deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_anthropic_sse_remove_parallel(cuts: list[int]) -> None:
    body = anthropic_stream([("text", "Sure."), ("deploy", ARGS_PROD), ("deploy", ARGS_OK), ("text", "Bye")])
    guard = _guard("anthropic")
    got = accumulate_anthropic(_run(guard, body, cuts))
    assert got["blocks"] == [("text", "Sure.", ""), ("tool_use", "deploy", ARGS_OK), ("text", "Bye", "")]
    assert got["stop"] == "tool_use"
    assert guard.blocked == ["deploy"]


def test_anthropic_sse_only_call_removed_every_boundary() -> None:
    body = anthropic_stream([("text", "Sure."), ("delete_file", '{"path": "/"}')])
    for cut in range(0, len(body) + 1, 3):
        guard = _guard("anthropic")
        got = accumulate_anthropic(_run(guard, body, [cut, cut + 50]))
        assert got["blocks"] == [("text", "Sure.", "")], cut
        assert got["stop"] == "end_turn"


def test_anthropic_sse_error() -> None:
    body = anthropic_stream([("text", "Sure."), ("delete_file", '{"path": "/"}'), ("text", "after")])
    guard = _guard("anthropic", on_forbidden="error")
    got = accumulate_anthropic(_run(guard, body, [99]))
    assert got["blocks"] == [("text", "Sure.", "")]
    assert got["errors"] == [{"type": "permission_error",
                              "message": "The model called tool 'delete_file', which is not allowed: "
                                         "Deleting files is off."}]
    assert got["stop"] is None


def test_anthropic_json() -> None:
    doc = {"type": "message", "stop_reason": "tool_use", "content": [
        {"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t", "name": "deploy", "input": {"env": "prod"}}]}
    guard = _guard("anthropic", "application/json")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert out["content"] == [{"type": "text", "text": "ok"}] and out["stop_reason"] == "end_turn"
    guard = _guard("anthropic", "application/json", "error")
    out = json.loads(_run(guard, json.dumps(doc).encode(), []))
    assert out["type"] == "error" and out["error"]["type"] == "permission_error"


def test_truncated_stream_decides_held_call_fail_closed() -> None:
    body = anthropic_stream([("deploy", ARGS_OK)])
    cut = body.index(b"content_block_stop")
    guard = _guard("anthropic")
    out = guard.feed(body[: cut - 20]) + guard.finish(b"")
    # Arguments incomplete -> unreadable -> the argument-conditioned block rule applies.
    assert b"tool_use" not in out and guard.blocked == ["deploy"]


@settings(deadline=None)
@given(data=st.lists(st.one_of(st.text(max_size=30), json_values.map(json.dumps)), max_size=8),
       api=st.sampled_from(["openai", "anthropic"]))
def test_guard_never_raises_on_odd_events(data: list[str], api: str) -> None:
    body = b"".join(f"data: {d}\n\n".encode() for d in data if "\n" not in d and "\r" not in d)
    guard = _guard(api)
    _run(guard, body, [5])


@settings(deadline=None)
@given(doc=json_values)
def test_guard_never_raises_on_odd_json(doc: Any) -> None:
    for api in ("openai", "anthropic"):
        for shape in ({"choices": [{"message": {"tool_calls": [doc]}}]}, {"output": [doc]}, {"content": [doc]}, doc):
            _run(_guard(api, "application/json"), json.dumps(shape).encode(), [])


def test_responses_recap_decides_calls_without_item_done() -> None:
    events = [e for e in parse_events(responses_stream([("deploy", ARGS_PROD), ("deploy", ARGS_OK)]))
              if e.event != "response.output_item.done" or '"m0"' in (e.data or "")]
    body = b"".join(serialize_event(e) for e in events)
    guard = _guard("openai")
    got = accumulate_responses(_run(guard, body, [100]))
    assert got["items"] == [("message", None, None), ("function_call", "deploy", ARGS_OK)]
    assert got["completed"] == [("message", None), ("function_call", "deploy")]
    assert guard.blocked == ["deploy"]
