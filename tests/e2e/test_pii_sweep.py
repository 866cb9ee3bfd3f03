"""PII placed in every request field and header the gateway reads never reaches Redis (keys or
values of any type), the recording spool, or a log line in raw form (issue 13, point 3).

Each field carries its own e-mail address, so a failure names the field that leaked.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sweep(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A replica with a Redis of its own, so the sweep sees only what these requests left."""
    with Stack(tmp_path_factory.mktemp("sweep"), parent=stack, own_redis=True).running() as s:
        yield s


def send(s: Stack, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=60)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def dump_redis(url: str) -> bytes:
    """Every key name and every value, whatever its type."""
    r = redis.Redis.from_url(url)
    out: list[bytes] = []
    for key in r.scan_iter(count=1000):
        out.append(key)
        t = r.type(key)
        if t == b"string":
            out.append(r.get(key) or b"")
        elif t == b"hash":
            out.extend(b for kv in r.hgetall(key).items() for b in kv)
        elif t == b"zset":
            out.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif t == b"set":
            out.extend(r.smembers(key))
        elif t == b"list":
            out.extend(r.lrange(key, 0, -1))
        elif t == b"stream":
            for sid, fields in r.xrange(key):
                out.append(sid)
                out.extend(b for kv in fields.items() for b in kv)
        else:
            raise AssertionError(f"unexpected type {t!r} for {key!r}")
    return b"\n".join(out)


def test_no_user_controlled_value_is_stored_or_logged_raw(sweep: Stack) -> None:
    s = sweep
    tag = uuid.uuid4().hex[:8]
    pii = {f: f"{f}.{tag}@example.com" for f in (
        "model", "session", "request_id", "user_agent", "path", "query", "content", "metadata", "user_field",
        "tool_name", "big_model", "anthropic_model", "anthropic_metadata", "mcp_tool", "mcp_argument",
        "blocked_model", "header_other")}
    token = s.token("sweeper")
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}

    def common(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**auth, "x-session-id": pii["session"], "x-request-id": f"rid-{pii['request_id']}",
                "user-agent": f"agent/{pii['user_agent']}", "x-custom": pii["header_other"], **(extra or {})}

    chat = {"model": pii["model"], "user": pii["user_field"], "metadata": {"who": pii["metadata"]},
            "messages": [{"role": "user", "content": f"write to {pii['content']}"}],
            "tools": [{"type": "function", "function": {"name": f"lookup_{pii['tool_name']}", "parameters": {}}}]}
    statuses = {
        "chat": send(s, "POST", f"/fake/chat/completions?to={pii['query']}", json.dumps(chat).encode(), common()),
        "path": send(s, "POST", f"/fake/files/{pii['path']}", b"{}", common()),
        # over inspection.offload_bytes: inspected in a worker process
        "big": send(s, "POST", "/fake/chat/completions", json.dumps({
            "model": pii["big_model"], "messages": [{"role": "user", "content": "x " * 40_000}]}).encode(), common()),
        "anthropic": send(s, "POST", "/anthropic/v1/messages", json.dumps({
            "model": pii["anthropic_model"], "max_tokens": 5, "metadata": {"user_id": pii["anthropic_metadata"]},
            "messages": [{"role": "user", "content": "hi"}]}).encode(), common({"x-fake-mode": "anthropic"})),
        "mcp": send(s, "POST", "/mcp/crm", json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": f"lookup_{pii['mcp_tool']}", "arguments": {"q": pii["mcp_argument"]}}}).encode(),
            common({"accept": "application/json, text/event-stream"})),
        "blocked": send(s, "POST", "/fake/chat/completions", json.dumps({
            "model": pii["blocked_model"], "messages": [{"role": "user", "content": "about project falcon"}]}).encode(),
            common()),
    }
    assert statuses["chat"] == 200 and statuses["big"] == 200 and statuses["blocked"] == 403, statuses

    # every interaction was recorded (so the sweep below looks at real records)
    r = redis.Redis.from_url(s.redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kinds = [json.loads(f[b"entry"])["kind"] for _, f in r.xrange("extproc:records")]
        if kinds.count("complete") >= len(statuses):
            break
        time.sleep(0.1)
    assert kinds.count("start") >= len(statuses), kinds

    stored = dump_redis(s.redis_url)
    spool = s.workdir / "spool.jsonl"
    stored += spool.read_bytes() if spool.exists() else b""
    extproc_log = s.procs["extproc"].log_path.read_bytes()
    envoy_log = s.procs["envoy"].log_path.read_bytes()
    leaks: dict[str, list[str]] = {}
    for field, value in pii.items():
        where = [name for name, data in (("redis", stored), ("extproc log", extproc_log), ("envoy log", envoy_log))
                 if value.encode() in data]
        # Envoy logs the x-request-id it forwards; choosing it is issue 18's (the gateway's own id).
        if field == "request_id":
            where = [w for w in where if w != "envoy log"]
        if where:
            leaks[field] = where
    assert not leaks, leaks
    # ...and the masked records are really there: the model placeholders, the masked path.
    text = stored.decode("utf-8", "replace")
    assert "[EMAIL]" in text and "/fake/files/" in text
    summary: dict[str, Any] = {"keys": len(list(r.scan_iter())), "bytes": len(stored)}
    assert summary["keys"] > 5, summary


def test_lookups_by_session_model_and_request_id_still_work_through_the_cli(sweep: Stack) -> None:
    s = sweep
    tag = uuid.uuid4().hex[:8]
    model, session = f"sweep-model-{tag}", f"conv-{tag}"
    c = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=60)
    try:
        c.request("POST", "/fake/chat/completions",
                  body=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
                  headers={"authorization": f"Bearer {s.token('looker')}", "content-type": "application/json",
                           "x-session-id": session})
        resp = c.getresponse()
        resp.read()
        rid = resp.getheader("x-request-id") or ""
    finally:
        c.close()
    assert resp.status == 200 and rid
    auditor = s.token("audrey", groups=("auditors",))
    deadline = time.monotonic() + 10
    while True:
        shown = s.cli("sessions", "show", rid, "--json", token=auditor)
        if shown.returncode == 0 and json.loads(shown.stdout).get("complete"):
            break
        assert time.monotonic() < deadline, shown.stderr
        time.sleep(0.2)
    assert json.loads(shown.stdout)["model"] == model
    for flag, value in (("--model", model), ("--session", session)):
        out = s.cli("sessions", "list", flag, value, "--json", token=auditor)
        assert out.returncode == 0, out.stderr
        assert [json.loads(x)["request_id"] for x in out.stdout.splitlines() if x.strip()] == [rid], flag
    names = b"\n".join(redis.Redis.from_url(s.redis_url).scan_iter(count=1000))
    for raw in (model, session, rid):
        assert raw.encode() not in names  # indexed by HMAC only
