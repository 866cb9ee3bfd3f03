from __future__ import annotations

import json

import pytest

from extproc.config.model import AuthConfig, CredentialConfig, ProviderConfig
from extproc.datapath.machine import (
    Continue,
    Gateway,
    NeedIdentity,
    Phase,
    ProtocolError,
    Reply,
    RequestMachine,
    Router,
)
from extproc.identity.jwt import AuthError, Identity

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


def gateway() -> Gateway:
    creds = {"openai": KEY, "anthropic": "sk-ant-provider-secret"}
    return Gateway(router=Router(providers()), credential=creds.get, all_credentials=lambda: list(creds.values()),
                   clock=lambda: 0.0)


ALICE = Identity(user="alice", groups=("eng",), issuer="i", subject="alice", expires_at=1e12)


def headers(path: str, **extra: str) -> dict[str, str]:
    return {":method": "POST", ":path": path, "x-request-id": "rid-1", **extra}


def authed(path: str = "/openai/chat/completions", eos: bool = False, **h: str) -> tuple[RequestMachine, Continue]:
    m = RequestMachine(gateway())
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
    m = RequestMachine(gateway())
    need = m.on_request_headers(headers("/anthropic/v1/messages", **{"x-api-key": "h.p.s"}), False)
    assert isinstance(need, NeedIdentity) and need.token == "h.p.s"
    d = m.on_identity(ALICE)
    assert isinstance(d, Continue)
    assert dict(d.set_headers) == {"x-api-key": "sk-ant-provider-secret", "anthropic-beta": "x"}
    assert set(d.remove_headers) == {"authorization", "proxy-authorization"}


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
    m = RequestMachine(gateway())
    d = m.on_request_headers(headers(path, **hdrs), False)
    assert isinstance(d, Reply) and d.status == status and d.code == code
    body = json.loads(d.body)
    assert body["error"]["code"] == code and body["error"]["request_id"] == "rid-1"
    assert ("x-request-id", "rid-1") in d.headers
    assert m.phase is Phase.DONE
    with pytest.raises(ProtocolError):
        m.on_request_body(b"{}", True)


def test_auth_failure_and_missing_credential() -> None:
    m = RequestMachine(gateway())
    m.on_request_headers(headers("/openai/x", authorization="Bearer a.b.c"), False)
    d = m.on_identity(AuthError("token_expired", "the token has expired"))
    assert isinstance(d, Reply) and d.status == 401
    m2 = RequestMachine(gateway())
    m2.on_request_headers(headers("/down/x", authorization="Bearer a.b.c"), False)
    d2 = m2.on_identity(ALICE)
    assert isinstance(d2, Reply) and d2.status == 503 and d2.code == "credential_unavailable"
    assert "MISSING" in json.loads(d2.body)["error"]["message"]


def test_unauthenticated_route_forwards_without_identity() -> None:
    m = RequestMachine(gateway())
    d = m.on_request_headers(headers("/open/x", authorization="Bearer caller"), True)
    assert isinstance(d, Continue) and d.set_headers == ()
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
    m = RequestMachine(gateway())
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
                   governed=True, masking=masking or ResponseMasking(), clock=lambda: 0.0)


def to_body(gw: Gateway, body: dict[str, object]) -> tuple[RequestMachine, object]:
    m = RequestMachine(gw)
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
