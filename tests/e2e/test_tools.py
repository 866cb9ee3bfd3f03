"""Tool governance end to end: the official `mcp` SDK client, through a real Envoy and the
ext_proc server, against an MCP server built with the same SDK; and tool calls a model emits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import time
from typing import Any

import openai
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


async def _session(s: Stack, token: str, work: Any) -> Any:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(f"{s.gateway}/mcp/crm", http_client=http), mode="legacy") as c:
        return await work(c)


def run(s: Stack, token: str, work: Any) -> Any:
    return asyncio.run(_session(s, token, work))


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def test_allowed_denied_and_listed_tools(stack: Stack) -> None:
    s = stack
    s.mcp.calls.clear()

    async def refused(c: Any, name: str, args: dict[str, Any]) -> str:
        try:
            await c.call_tool(name, args)
        except MCPError as exc:  # the JSON-RPC error the gateway answered with
            return f"{exc.error.code}: {exc.error.message}"
        return "not refused"

    async def work(c: Any) -> Any:
        listed = await c.list_tools()
        ok = await c.call_tool("delete_records", {"env": "staging", "ids": [1, 2]})
        denied = await refused(c, "delete_records", {"env": "production", "ids": [3]})
        hidden = await refused(c, "dump_secrets", {})
        return listed, ok, denied, hidden

    listed, ok, denied, hidden = run(s, s.token(), work)
    names = {t.name for t in listed.tools}
    assert "dump_secrets" not in names  # never callable by anyone: absent from tools/list
    assert {"search", "delete_records", "send_email"} <= names
    assert text_of(ok) == "deleted 2 records in staging" and not ok.is_error
    assert ("delete_records", {"env": "staging", "ids": [1, 2]}) in s.mcp.calls
    # Denied calls come back as JSON-RPC errors, and the server never saw them.
    assert denied == "-32010: No deletes in production."
    assert hidden == "-32010: Secret dumps are not allowed."
    assert not any(c[0] == "dump_secrets" or c[1].get("env") == "production" for c in s.mcp.calls)


def test_denied_tool_is_a_jsonrpc_error_with_the_rule_id(stack: Stack) -> None:
    s = stack
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "delete_records", "arguments": {"env": "production", "ids": [1]}}})
    status, doc = _post(s, body.encode())
    assert status == 200
    assert doc["id"] == 7 and doc["error"]["data"]["rule_id"] == "no-prod-deletes"
    assert "No deletes in production." in doc["error"]["message"]


def _post(s: Stack, body: bytes, token: str | None = None) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=15)
    c.request("POST", "/mcp/crm", body=body, headers={
        "authorization": f"Bearer {token or s.token()}", "content-type": "application/json",
        "accept": "application/json, text/event-stream"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", -32700),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}', -32600),
    (b'{"jsonrpc": "2.0", "id": true, "method": "tools/list"}', -32600),
    (b'{"jsonrpc": "2.0", "id": 1}', -32600),
    (json.dumps([{"jsonrpc": "2.0", "id": i, "method": "tools/list"} for i in range(500)]).encode(), -32600),
    (b"[]", -32600),
])
def test_malformed_jsonrpc_gets_a_clear_error_and_never_reaches_the_server(stack: Stack, body: bytes,
                                                                          code: int) -> None:
    s = stack
    before = len(s.mcp.calls)
    status, doc = _post(s, body)
    assert status == 400
    assert doc["jsonrpc"] == "2.0" and doc["error"]["code"] == code and doc["error"]["message"]
    assert len(s.mcp.calls) == before


def test_pii_in_tool_results_and_arguments_is_masked(stack: Stack) -> None:
    s = stack
    s.mcp.calls.clear()

    async def work(c: Any) -> Any:
        return await c.call_tool("search", {"query": "alice@corp.example"})

    res = run(s, s.token(), work)
    out = text_of(res)
    assert "bob@example.com" not in out and "983-264" not in out
    assert "[EMAIL]" in out and "[PHONE]" in out
    assert s.mcp.calls == [("search", {"query": "[EMAIL]"})]  # arguments masked before forwarding


def test_tool_requiring_approval_is_held_until_approved(long_holds: Stack) -> None:
    s = long_holds
    s.mcp.calls.clear()
    approver = s.token("lee-tools", groups=("legal",))
    before = {a["id"] for a in json.loads(s.cli("approvals", "list", "--json", token=approver).stdout)}

    async def work(c: Any) -> Any:
        return await c.call_tool("send_email", {"to": "cfo@example.com", "body": "numbers"})

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(run, s, s.token("tom"), work)
        aid = None
        deadline = time.monotonic() + 30
        while aid is None and time.monotonic() < deadline:
            r = s.cli("approvals", "list", "--json", token=approver)
            new = [a["id"] for a in json.loads(r.stdout) if a["id"] not in before]
            aid = new[0] if new else None
            time.sleep(0.1)
        assert aid is not None
        assert s.mcp.calls == []  # held: the server has not seen it
        assert s.cli("approvals", "approve", aid, token=approver).returncode == 0
        res = fut.result(15)
    assert text_of(res) == "sent to cfo@example.com"
    assert s.mcp.calls == [("send_email", {"to": "cfo@example.com", "body": "numbers"})]


def test_forbidden_tool_call_in_a_streamed_model_answer_is_removed_and_recorded(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    c = openai.OpenAI(api_key=s.token(), base_url=s.gateway + "/fake", max_retries=0)
    tools = [{"name": "run_shell", "arguments": json.dumps({"cmd": "rm -rf /"})},
             {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}]
    raw = c.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse-tools", "x-fake-texts": json.dumps(["Sure. "]),
                       "x-fake-tools": json.dumps(tools)})
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for ch in raw.parse():
        for choice in ch.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                entry["name"] += tc.function.name or "" if tc.function else ""
                entry["arguments"] += tc.function.arguments or "" if tc.function else ""
    assert [v["name"] for v in calls.values()] == ["get_weather"]  # run_shell removed, the other kept
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert finish == "tool_calls"
    rid = raw.headers["x-request-id"]
    auditor = s.token("audrey", groups=("auditors",))
    deadline = time.monotonic() + 30
    while True:
        shown = s.cli("sessions", "show", rid, "--json", token=auditor)
        if (shown.returncode == 0 and json.loads(shown.stdout).get("complete")) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    record = json.loads(shown.stdout)
    assert {"tool": "run_shell", "action": "block", "rule_id": "no-shell", "mode": "enforce"} in \
        record["model_tool_calls"]
