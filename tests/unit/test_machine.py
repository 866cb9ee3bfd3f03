from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.config.model import AuthConfig, CredentialConfig, ProviderConfig
from extproc.datapath.machine import (
    CLIENT_REQUEST_ID_HEADER,
    Continue,
    Gateway,
    NeedIdentity,
    Phase,
    ProtocolError,
    Reply,
    RequestMachine,
    Router,
    client_request_id,
)
from extproc.identity.model import AuthError, Identity

KEY = "sk-provider-secret-123456"


def providers() -> list[ProviderConfig]:
    return [
        ProviderConfig(name="openai", api="openai", base_url="https://api.openai.com/v1", prefix="/openai",
                       credential=CredentialConfig(env="K"), auth=AuthConfig(header="authorization", scheme="Bearer ")),
        ProviderConfig(name="anthropic", api="anthropic", base_url="https://api.anthropic.com", prefix="/anthropic",
                       credential=CredentialConfig(env="A"), auth=AuthConfig(header="x-api-key", scheme=""),
                       headers={"anthropic-beta": "x"}),
        ProviderConfig(name="open", api="generic", base_url="http://x", prefix="/open", credential=None,
                       auth=AuthConfig(header="authorization", scheme="Bearer "), authenticate=False),
        ProviderConfig(name="down", api="openai", base_url="http://x", prefix="/down",
                       credential=CredentialConfig(env="MISSING"),
                       auth=AuthConfig(header="authorization", scheme="Bearer ")),
    ]


def ids() -> Callable[[], str]:
    """Plain, predictable ids: the machine is handed its id source."""
    counter = itertools.count(1)
    return lambda: f"id-{next(counter)}"


def gateway() -> Gateway:
    creds = {"openai": KEY, "anthropic": "sk-ant-provider-secret"}
    return Gateway(router=Router(providers()), credential=creds.get, all_credentials=lambda: list(creds.values()),
                   clock=lambda: 0.0, new_id=ids(), timer=lambda: 0.0)


ALICE = Identity(user="alice", groups=("eng",), issuer="i", subject="alice", expires_at=1e12)


def headers(path: str, **extra: str) -> dict[str, str]:
    return {":method": "POST", ":path": path, "x-request-id": "rid-1", **extra}


def authed(path: str = "/openai/chat/completions", eos: bool = False, **h: str) -> tuple[RequestMachine, Continue]:
    m = RequestMachine(gateway(), request_id="gw-1")
    need = m.on_request_headers(headers(path, authorization="Bearer a.b.c", **h), eos)
    assert isinstance(need, NeedIdentity) and need.token == "a.b.c"
    d = m.on_identity(ALICE)
    assert isinstance(d, Continue)
    return m, d


def test_injects_credential_and_strips_caller_auth() -> None:
    m, d = authed(**{"x-api-key": "caller"})
    assert d.skip_request_body  # no policy: Envoy need not send the body at all
    assert m.phase is Phase.FORWARDED
    assert ("authorization", f"Bearer {KEY}") in d.set_headers
    assert "x-api-key" in d.remove_headers and "authorization" not in d.remove_headers
    assert m.info.identity == ALICE and m.info.provider == "openai"


def test_anthropic_sends_x_api_key_and_static_headers() -> None:
    m = RequestMachine(gateway(), request_id="gw-1")
    need = m.on_request_headers(headers("/anthropic/v1/messages", **{"x-api-key": "h.p.s"}), False)
    assert isinstance(need, NeedIdentity) and need.token == "h.p.s"
    d = m.on_identity(ALICE)
    assert isinstance(d, Continue)
    assert dict(d.set_headers) == {"x-api-key": "sk-ant-provider-secret", "anthropic-beta": "x",
                                   "x-request-id": "gw-1"}
    assert set(d.remove_headers) == {"authorization", "proxy-authorization", CLIENT_REQUEST_ID_HEADER}


@pytest.mark.parametrize(
    ("path", "hdrs", "status", "code"),
    [
        ("/nowhere", {}, 404, "no_route"),
        ("/openai/x", {}, 401, "missing_token"),
        ("/openai/x", {"authorization": "Basic Zm9vOmJhcg=="}, 401, "missing_token"),
        ("/openaix/y", {"authorization": "Bearer a.b.c"}, 404, "no_route"),
    ],
)
def test_immediate_replies(path: str, hdrs: dict[str, str], status: int, code: str) -> None:
    m = RequestMachine(gateway(), request_id="gw-1")
    d = m.on_request_headers(headers(path, **hdrs), False)
    assert isinstance(d, Reply) and d.status == status and d.code == code
    body = json.loads(d.body)
    assert body["error"]["code"] == code and body["error"]["request_id"] == "gw-1"
    assert ("x-request-id", "gw-1") in d.headers and m.info.client_request_id == "rid-1"
    assert m.phase is Phase.DONE
    with pytest.raises(ProtocolError):
        m.on_request_body(b"{}", True)


def test_auth_failure_and_missing_credential() -> None:
    m = RequestMachine(gateway(), request_id="gw-1")
    m.on_request_headers(headers("/openai/x", authorization="Bearer a.b.c"), False)
    d = m.on_identity(AuthError("token_expired", "the token has expired"))
    assert isinstance(d, Reply) and d.status == 401
    m2 = RequestMachine(gateway(), request_id="gw-1")
    m2.on_request_headers(headers("/down/x", authorization="Bearer a.b.c"), False)
    d2 = m2.on_identity(ALICE)
    assert isinstance(d2, Reply) and d2.status == 503 and d2.code == "credential_unavailable"
    assert "MISSING" in json.loads(d2.body)["error"]["message"]


def test_unauthenticated_route_forwards_without_identity() -> None:
    m = RequestMachine(gateway(), request_id="gw-1")
    d = m.on_request_headers(headers("/open/x", authorization="Bearer caller"), True)
    assert isinstance(d, Continue) and d.set_headers == (("x-request-id", "gw-1"),)
    assert "authorization" in d.remove_headers
    assert m.phase is Phase.FORWARDED


def test_response_scrubbing_headers_and_split_body() -> None:
    m, _ = authed()
    m.on_request_body(b"{}", True)
    d = m.on_response_headers({":status": "401", "content-length": "99", "x-echo": f"Bearer {KEY}"}, False)
    assert ("x-echo", "Bearer [REDACTED]") in d.set_headers and d.remove_headers == ("content-length",)
    out = b""
    body = f'{{"error":"bad key {KEY}"}}'.encode()
    for i in range(0, len(body), 4):
        c = m.on_response_body(body[i:i + 4], False)
        out += body[i:i + 4] if c.body is None else c.body
    last = m.on_response_body(b"", True)
    out += last.body or b""
    assert out == b'{"error":"bad key [REDACTED]"}'
    assert m.info.secrets_scrubbed == 2 and m.info.status == 401
    assert m.phase is Phase.DONE


def test_protocol_errors() -> None:
    m = RequestMachine(gateway(), request_id="gw-1")
    with pytest.raises(ProtocolError):
        m.on_response_body(b"x", False)
    with pytest.raises(ProtocolError):
        m.on_identity(ALICE)
    m2, _ = authed()
    with pytest.raises(ProtocolError):
        m2.on_request_headers(headers("/openai/x"), False)


def test_router_longest_prefix() -> None:
    r = Router(providers())
    assert r.match("/openai/v1/x?y=1").name == "openai"  # type: ignore[union-attr]
    assert r.match("/openai") is not None and r.match("/open").name == "open"  # type: ignore[union-attr]
    assert r.match("/opena") is None


# -- policy, budgets, masking -----------------------------------------------------------

from extproc.datapath.machine import ChargeUsage, NeedBudget, ResponseMasking  # noqa: E402
from extproc.masking import default_profile  # noqa: E402
from extproc.policy import Policy  # noqa: E402
from extproc.policy.model import BudgetOutcome  # noqa: E402

POLICY = Policy.from_config({
    "rules": [
        {"id": "no-falcon", "match": {"content": {"keywords": ["falcon"]}}, "action": "block", "message": "no"},
        {"id": "mask-email", "match": {"content": {"detectors": ["EMAIL"]}}, "action": "mask"},
    ],
    "budgets": [{"id": "t", "per": "user", "tokens": 100, "window_seconds": 60}],
})


def governed(masking: ResponseMasking | None = None) -> Gateway:
    g = gateway()
    return Gateway(router=g.router, credential=g.credential, all_credentials=g.all_credentials, policy=POLICY,
                   governed=True, masking=masking or ResponseMasking(), clock=lambda: 0.0,
                   new_id=ids(), timer=lambda: 0.0)


def to_body(gw: Gateway, body: dict[str, object]) -> tuple[RequestMachine, object]:
    m = RequestMachine(gw, request_id="gw-1")
    m.on_request_headers(headers("/openai/chat/completions", authorization="Bearer a.b.c"), False)
    m.on_identity(ALICE)
    return m, m.on_request_body(json.dumps(body).encode(), True)


def test_policy_block_at_body() -> None:
    m, d = to_body(governed(), {"model": "x", "messages": [{"role": "user", "content": "Falcon status"}]})
    assert isinstance(d, Reply) and d.status == 403 and json.loads(d.body)["error"]["rule_id"] == "no-falcon"
    assert m.info.decision is not None and m.info.decision.rule_id == "no-falcon"


def test_policy_mask_then_budget_then_forward_with_new_length() -> None:
    m, need = to_body(governed(), {"model": "x", "stream": True,
                                   "messages": [{"role": "user", "content": "mail a@b.example now"}]})
    assert isinstance(need, NeedBudget) and need.charges[0].tokens_limit == 100
    d = m.on_budget(BudgetOutcome(allowed=True))
    assert isinstance(d, Continue) and d.body is not None
    sent = json.loads(d.body)
    assert sent["messages"][0]["content"] == "mail [EMAIL] now"
    assert sent["stream_options"] == {"include_usage": True}  # token budget: ask for streamed usage
    assert ("content-length", str(len(d.body))) in d.set_headers


def test_budget_refusal_and_unavailable() -> None:
    m, _ = to_body(governed(), {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    r = m.on_budget(BudgetOutcome(allowed=False, status=429, budget_id="t", limit="tokens", retry_after=7))
    assert isinstance(r, Reply) and r.status == 429 and ("retry-after", "7") in r.headers
    m2, _ = to_body(governed(), {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    r2 = m2.on_budget(BudgetOutcome(allowed=False, status=503, budget_id="t", unavailable=True))
    assert isinstance(r2, Reply) and r2.status == 503 and r2.code == "budget_unavailable"


def test_usage_from_the_response_becomes_a_charge_effect() -> None:
    m, need = to_body(governed(), {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(need, NeedBudget)
    m.on_budget(BudgetOutcome(allowed=True))
    m.on_response_headers({":status": "200", "content-type": "application/json"}, False)
    m.on_response_body(b'{"choices":[],"usage":{"prompt_tokens":3,', False)
    m.on_response_body(b'"completion_tokens":40,"total_tokens":43}}', True)
    assert m.effects == [ChargeUsage(need.charges, 43, need.prompt_tokens, 0.0)]


def test_response_masking_of_split_sse_and_unmaskable_content() -> None:
    gw = governed(ResponseMasking(profile=default_profile()))
    m, _ = to_body(gw, {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    m.on_budget(BudgetOutcome(allowed=True))
    m.on_response_headers({":status": "200", "content-type": "text/event-stream"}, False)
    ev = 'data: {{"choices":[{{"index":0,"delta":{{"content":"{}"}}}}]}}\n\n'
    out = b""
    for part in ("write bob@exa", "mple.com ok"):
        c = m.on_response_body(ev.format(part).encode(), False)
        out += c.body if c.body is not None else ev.format(part).encode()
    c = m.on_response_body(b"data: [DONE]\n\n", True)
    out += c.body if c.body is not None else b"data: [DONE]\n\n"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in out.decode().splitlines() if line.startswith("data: {"))
    assert text == "write [EMAIL] ok"
    assert m.info.response_masked["EMAIL"] == 1

    m2, _ = to_body(gw, {"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    m2.on_budget(BudgetOutcome(allowed=True))
    r = m2.on_response_headers({":status": "200", "content-type": "image/png"}, False)
    assert isinstance(r, Reply) and r.status == 502 and r.code == "unmaskable_response"


def test_error_shape_follows_the_route_api() -> None:
    # OpenAI routes: exactly OpenAI's envelope, no top-level "type"; Anthropic routes: Anthropic's.
    m = RequestMachine(gateway())
    d = m.on_request_headers(headers("/openai/v1/chat/completions"), False)
    assert isinstance(d, Reply) and d.status == 401
    body = json.loads(d.body)
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["type"] == "authentication_error" and body["error"]["param"] is None
    m = RequestMachine(gateway())
    d = m.on_request_headers(headers("/anthropic/v1/messages"), False)
    assert isinstance(d, Reply)
    body = json.loads(d.body)
    assert body["type"] == "error" and body["request_id"] == m.info.request_id != "rid-1"
    assert body["error"]["type"] == "authentication_error" and isinstance(body["error"]["message"], str)
    m = RequestMachine(gateway())
    d = m.on_request_headers(headers("/nowhere"), False)
    assert isinstance(d, Reply)
    body = json.loads(d.body)
    assert body["type"] == "error" and body["error"]["request_id"] == m.info.request_id != "rid-1"


# ---------------------------------------------------------------------------
# the state table, walked exhaustively

from dataclasses import replace  # noqa: E402

from extproc.approvals.model import ApprovalSettings  # noqa: E402
from extproc.datapath.inspect import InspectionFailed  # noqa: E402
from extproc.datapath.machine import (  # noqa: E402
    TRANSITIONS,
    ApprovalResult,
    Event,
    NeedApproval,
    NeedRecordStart,
    RecordEntries,
)
from extproc.recording.model import RecordingSettings  # noqa: E402
from extproc.tools.model import ToolPolicy  # noqa: E402

CALLS: dict[Event, Callable[[RequestMachine], object]] = {
    Event.REQUEST_HEADERS: lambda m: m.on_request_headers(headers("/openai/x"), False),
    Event.IDENTITY: lambda m: m.on_identity(ALICE),
    Event.REQUEST_BODY: lambda m: m.on_request_body(b"{}", True),
    Event.REQUEST_TRAILERS: lambda m: m.on_request_trailers(),
    Event.INSPECTION: lambda m: m.on_inspection(InspectionFailed("timeout")),
    Event.APPROVAL: lambda m: m.on_approval(ApprovalResult("approved", "apr_1")),
    Event.BUDGET: lambda m: m.on_budget(BudgetOutcome(allowed=True)),
    Event.RECORD_START: lambda m: m.on_record_start(True),
    Event.RESPONSE_HEADERS: lambda m: m.on_response_headers({":status": "200"}, False),
    Event.RESPONSE_BODY: lambda m: m.on_response_body(b"x", False),
    Event.RESPONSE_TRAILERS: lambda m: m.on_response_trailers(),
}


@pytest.mark.parametrize(("phase", "event"), [
    (p, e) for p in Phase for e in Event if (p, e) not in TRANSITIONS
])
def test_every_event_a_phase_does_not_accept_is_a_protocol_error(phase: Phase, event: Event) -> None:
    m = RequestMachine(governed())
    m.phase = phase
    with pytest.raises(ProtocolError, match=f"in phase {phase.value}"):
        CALLS[event](m)
    assert m.phase is phase  # refused before anything changed


def test_the_table_names_every_event_and_no_path_leaves_it() -> None:
    assert {e for _, e in TRANSITIONS} == set(Event)
    assert all(Phase.DONE not in {p for p, _ in TRANSITIONS} for _ in [0])  # DONE accepts nothing


def step(m: RequestMachine, event: Event, call: Callable[[], object]) -> object:
    """Drive one event and check the move against the table."""
    before = m.phase
    out = call()
    assert m.phase in TRANSITIONS[(before, event)], (before, event, m.phase)
    return out


# ---------------------------------------------------------------------------
# approvals, record start and MCP, with plain values

APPROVAL_POLICY = Policy.from_config({"rules": [
    {"id": "merger", "match": {"content": {"keywords": ["merger"]}}, "action": "require_approval",
     "message": "M&A talk needs legal"},
]})
APPROVALS = ApprovalSettings.from_config({"hold_seconds": 30, "rules": {"merger": {"groups": ["legal"]}}})


def held(approvals: ApprovalSettings | None = APPROVALS) -> tuple[RequestMachine, object]:
    gw = replace(governed(), policy=APPROVAL_POLICY, approvals=approvals)
    m = RequestMachine(gw)
    step(m, Event.REQUEST_HEADERS,
         lambda: m.on_request_headers(headers("/openai/chat/completions", authorization="Bearer a.b.c"), False))
    step(m, Event.IDENTITY, lambda: m.on_identity(ALICE))
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "the merger plan"}]}).encode()
    return m, step(m, Event.REQUEST_BODY, lambda: m.on_request_body(body, True))


def test_approval_hold_binds_the_request_and_approved_forwards_it() -> None:
    m, need = held()
    assert isinstance(need, NeedApproval) and m.phase is Phase.HOLD
    assert need.hold_seconds == 30 and need.message == "M&A talk needs legal"
    b = need.binding
    assert (b.user, b.issuer, b.provider, b.route, b.rule_id) == ("alice", "i", "openai", "/chat/completions", "merger")
    assert b.content_digest.startswith("sha256:") and b.policy_version == APPROVAL_POLICY.version
    d = step(m, Event.APPROVAL, lambda: m.on_approval(ApprovalResult("approved", "apr_1")))
    assert d == Continue()  # the body goes as sent; the credential went with the headers
    assert m.phase is Phase.FORWARDED and m.info.approval == ApprovalResult("approved", "apr_1")


@pytest.mark.parametrize(("state", "status", "code"), [
    ("denied", 403, "approval_denied"),
    ("pending", 403, "approval_pending"),
    ("no_approvers", 403, "approval_unavailable"),
    ("unavailable", 503, "approval_unavailable"),
])
def test_approval_outcomes_that_refuse(state: str, status: int, code: str) -> None:
    m, need = held()
    assert isinstance(need, NeedApproval)
    r = step(m, Event.APPROVAL, lambda: m.on_approval(ApprovalResult(state, "apr_9", reason="no")))
    assert isinstance(r, Reply) and (r.status, r.code) == (status, code)
    err = json.loads(r.body)["error"]
    assert err["code"] == code and err["rule_id"] == "merger"
    assert m.phase is Phase.DONE


def test_approval_rule_without_approvals_configured_fails_closed() -> None:
    _, r = held(approvals=None)
    assert isinstance(r, Reply) and r.status == 403 and r.code == "approval_unavailable"


def recorded_gateway() -> Gateway:
    return replace(governed(), recording=RecordingSettings(), clock=itertools.count(100).__next__)


def test_record_start_is_written_before_forwarding_and_completed_after() -> None:
    m = RequestMachine(recorded_gateway())
    step(m, Event.REQUEST_HEADERS, lambda: m.on_request_headers(
        headers("/openai/chat/completions", authorization="Bearer a.b.c", **{"x-session-id": "s-42"}), False))
    step(m, Event.IDENTITY, lambda: m.on_identity(ALICE))
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi bob@example.com"}]}).encode()
    need = step(m, Event.REQUEST_BODY, lambda: m.on_request_body(body, True))
    assert isinstance(need, NeedBudget)
    need2 = step(m, Event.BUDGET, lambda: m.on_budget(BudgetOutcome(allowed=True)))
    assert isinstance(need2, NeedRecordStart) and m.phase is Phase.RECORD
    entry = need2.entry
    assert entry["request_id"] == m.info.request_id and entry["caller"]["user"] == "alice" and entry["forwarded"]
    assert "bob@example.com" not in json.dumps(entry)  # masked before it is ever written
    d = step(m, Event.RECORD_START, lambda: m.on_record_start(True))
    assert isinstance(d, Continue) and d.body is not None and m.phase is Phase.FORWARDED
    step(m, Event.RESPONSE_HEADERS,
         lambda: m.on_response_headers({":status": "200", "content-type": "application/json"}, False))
    step(m, Event.RESPONSE_BODY, lambda: m.on_response_body(b'{"choices":[]}', True))
    rec = [e for e in m.effects if isinstance(e, RecordEntries)]
    assert len(rec) == 1 and rec[0].start is entry and not rec[0].write_start
    assert rec[0].complete["interaction_id"] == entry["interaction_id"]


def test_record_start_refused_fails_closed_and_nothing_is_completed() -> None:
    m = RequestMachine(replace(recorded_gateway(), policy=Policy.empty(), governed=False))
    step(m, Event.REQUEST_HEADERS,
         lambda: m.on_request_headers(headers("/openai/chat/completions", authorization="Bearer a.b.c"), False))
    step(m, Event.IDENTITY, lambda: m.on_identity(ALICE))
    need = step(m, Event.REQUEST_BODY, lambda: m.on_request_body(b'{"model":"m"}', True))
    assert isinstance(need, NeedRecordStart)
    r = step(m, Event.RECORD_START, lambda: m.on_record_start(False))
    assert isinstance(r, Reply) and (r.status, r.code) == (503, "recording_unavailable")
    # What is left to write is the refusal itself (best effort), never a forwarded interaction.
    rec = [e for e in m.effects if isinstance(e, RecordEntries)]
    assert len(rec) == 1 and rec[0].write_start and not rec[0].start["forwarded"]
    assert rec[0].complete["error"] == "recording_unavailable"
    assert rec[0].complete["status"] == 503


MCP_TOOLS = ToolPolicy.from_config({"rules": [
    {"id": "no-delete", "match": {"tool": "delete_*"}, "action": "block", "message": "no deletes"},
    {"id": "export", "match": {"tool": "export"}, "action": "require_approval"},
]})


def mcp_gateway(approvals: ApprovalSettings | None = APPROVALS) -> Gateway:
    g = gateway()
    mcp_provider = ProviderConfig(name="crm", api="mcp", base_url="http://crm", prefix="/mcp/crm", credential=None,
                                  auth=AuthConfig(header="authorization", scheme="Bearer "))
    return replace(g, router=Router([*providers(), mcp_provider]), tools=MCP_TOOLS, approvals=approvals)


def mcp_call(gw: Gateway, name: str, rpc_id: int = 1) -> tuple[RequestMachine, object]:
    m = RequestMachine(gw)
    step(m, Event.REQUEST_HEADERS, lambda: m.on_request_headers(
        headers("/mcp/crm", authorization="Bearer a.b.c", **{"content-type": "application/json"}), False))
    step(m, Event.IDENTITY, lambda: m.on_identity(ALICE))
    body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                       "params": {"name": name, "arguments": {"q": 1}}}).encode()
    return m, step(m, Event.REQUEST_BODY, lambda: m.on_request_body(body, True))


def test_mcp_blocked_tool_gets_a_jsonrpc_error_and_allowed_one_passes() -> None:
    m, r = mcp_call(mcp_gateway(), "delete_account", rpc_id=7)
    assert isinstance(r, Reply) and r.status == 200 and r.code == "tool_blocked"
    doc = json.loads(r.body)
    assert doc["id"] == 7 and "no deletes" in doc["error"]["message"]
    assert [td.action for td in m.info.tool_decisions] == ["block"]
    m2, d = mcp_call(mcp_gateway(), "search")
    assert isinstance(d, Continue) and m2.phase is Phase.FORWARDED


def test_mcp_tool_needing_approval_is_held_and_refused_in_jsonrpc_terms() -> None:
    m, need = mcp_call(mcp_gateway(), "export", rpc_id=3)
    assert isinstance(need, NeedApproval) and need.binding.route == "tools/call:export"
    r = step(m, Event.APPROVAL, lambda: m.on_approval(ApprovalResult("denied", "apr_2", reason="not today")))
    assert isinstance(r, Reply) and r.code == "approval_denied"
    doc = json.loads(r.body)
    assert doc["id"] == 3 and "not today" in doc["error"]["message"]
    _, r2 = mcp_call(mcp_gateway(approvals=None), "export")
    assert isinstance(r2, Reply) and r2.code == "approval_unavailable"


def test_mcp_tools_list_answer_is_filtered_by_policy() -> None:
    m = RequestMachine(mcp_gateway())
    m.on_request_headers(headers("/mcp/crm", authorization="Bearer a.b.c"), False)
    m.on_identity(ALICE)
    m.on_request_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', True)
    m.on_response_headers({":status": "200", "content-type": "application/json"}, False)
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "search", "inputSchema": {"type": "object"}},
        {"name": "delete_account", "inputSchema": {"type": "object"}},
    ]}}
    d = m.on_response_body(json.dumps(answer).encode(), True)
    assert isinstance(d, Continue) and d.body is not None
    assert [t["name"] for t in json.loads(d.body)["result"]["tools"]] == ["search"]
    assert m.info.tools_hidden == ["delete_account"]


# -- request identity: the gateway's, never the caller's ----------------------------------

_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"


@given(st.text(alphabet=_SAFE, min_size=1, max_size=128).filter(lambda v: v != "-"))
def test_a_safe_client_request_id_is_kept_as_is(value: str) -> None:
    assert client_request_id(value) == value


@given(st.text(max_size=300))
def test_a_client_request_id_is_kept_only_in_the_strict_shape(value: str) -> None:
    kept = client_request_id(value)
    if kept is not None:
        assert kept == value and 1 <= len(value) <= 128 and set(value) <= set(_SAFE)
    if len(value) > 128 or not set(value) <= set(_SAFE) or value in ("", "-"):
        assert kept is None


def test_the_callers_request_id_is_an_attribute_and_the_gateways_goes_upstream() -> None:
    m = RequestMachine(gateway(), request_id="gw-7")
    m.on_request_headers({":method": "POST", ":path": "/openai/x", "authorization": "Bearer a.b.c",
                          CLIENT_REQUEST_ID_HEADER: "client-abc", "x-request-id": "envoy-own"}, False)
    d = m.on_identity(ALICE)
    assert isinstance(d, Continue)
    assert m.info.request_id == "gw-7" and m.info.client_request_id == "client-abc"
    assert ("x-request-id", "gw-7") in d.set_headers
    assert CLIENT_REQUEST_ID_HEADER in d.remove_headers  # an internal header never leaves


def test_a_hostile_client_request_id_is_dropped_and_the_answer_carries_the_gateways() -> None:
    m = RequestMachine(gateway(), request_id="gw-8")
    d = m.on_request_headers({":method": "GET", ":path": "/nowhere", "x-request-id": "x" * 129}, True)
    assert isinstance(d, Reply)
    assert m.info.client_request_id is None
    assert json.loads(d.body)["error"]["request_id"] == "gw-8" and ("x-request-id", "gw-8") in d.headers
    m2 = RequestMachine(gateway(), request_id="gw-9")
    m2.on_request_headers({":method": "GET", ":path": "/nowhere", "x-request-id": "a b\nc"}, True)
    assert m2.info.client_request_id is None


def test_response_body_is_skipped_only_when_nothing_reads_it() -> None:
    bare = Gateway(router=Router(providers()), credential=lambda _: None, all_credentials=lambda: [],
                   clock=lambda: 0.0, new_id=ids(), timer=lambda: 0.0)
    m = RequestMachine(bare)
    d = m.on_request_headers(headers("/open/x"), True)
    assert isinstance(d, Continue)
    r = m.on_response_headers({":status": "200", "content-length": "5"}, False)
    assert r.skip_response_body and r.remove_headers == ()  # the body passes untouched, length and all
    assert m.phase is Phase.DONE and m.info.status == 200
    assert m.on_response_body(b"hello", True) == Continue()  # if Envoy sends it anyway, it passes
    # With a credential to scrub, the body is read.
    m2, _ = authed(eos=True)
    assert not m2.on_response_headers({":status": "200"}, False).skip_response_body
    # With masking (even without credentials) it is read too.
    masked = Gateway(router=Router(providers()), credential=lambda _: None, all_credentials=lambda: [],
                     clock=lambda: 0.0, new_id=ids(), timer=lambda: 0.0,
                     masking=ResponseMasking(profile=default_profile()))
    m3 = RequestMachine(masked)
    m3.on_request_headers(headers("/open/x"), True)
    assert not m3.on_response_headers({":status": "200", "content-type": "application/json"},
                                      False).skip_response_body


def test_an_empty_client_request_id_header_means_the_x_request_id_is_envoys_own() -> None:
    m = RequestMachine(gateway(), request_id="gw-10")
    m.on_request_headers({":method": "POST", ":path": "/openai/x", "authorization": "Bearer a.b.c",
                          CLIENT_REQUEST_ID_HEADER: "", "x-request-id": "0b6e1d7a-envoy-generated"}, False)
    assert m.info.client_request_id is None
    other = RequestMachine(gateway(), request_id="gw-11")  # another proxy passing the caller's id on
    other.on_request_headers({":method": "POST", ":path": "/openai/x", "authorization": "Bearer a.b.c",
                              "x-request-id": "caller-7"}, False)
    assert other.info.client_request_id == "caller-7"
