"""Policy through the real data path: block, mask, shadow, group scope, budgets across replicas."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e


def oai(stack: Stack, token: str, prefix: str = "/fake") -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=stack.gateway + prefix, max_retries=0, timeout=20)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def metrics(stack: Stack) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['admin']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_block_rule_gets_403_with_rule_id_and_upstream_sees_nothing(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(s, s.token()).chat.completions.create(model="m", messages=ask("Status of Project Falcon?"))  # type: ignore[arg-type]
    err = exc.value.body
    assert isinstance(err, dict)
    assert err["code"] == "policy_blocked" and err["rule_id"] == "no-project-falcon"
    assert err["message"] == "Project Falcon is confidential."
    # OpenAI's error shape (param included) plus the gateway's ids; the pattern is never shown.
    assert set(err) == {"message", "type", "param", "code", "request_id", "rule_id"}
    assert exc.value.response.headers["x-extproc-rule"] == "no-project-falcon"
    assert s.upstream.requests == []

    c = anthropic.Anthropic(api_key=s.token(), base_url=s.gateway + "/anthropic", max_retries=0, timeout=20)
    with pytest.raises(anthropic.PermissionDeniedError):
        c.messages.create(model="claude", max_tokens=10,  # type: ignore[arg-type]
                          messages=[{"role": "user", "content": [{"type": "text", "text": "project  FALCON plan"}]}])
    assert s.upstream.requests == []


def test_mask_rule_redacts_the_prompt_and_keeps_the_rest(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    oai(s, s.token()).chat.completions.create(
        model="gpt-test", temperature=0.25, messages=ask("Mail bob@example.com or call +1-983-264-4179."),  # type: ignore[arg-type]
    )
    body = json.loads(s.upstream.requests[0].body)
    assert body["messages"][1]["content"] == "Mail [EMAIL] or call [PHONE]."
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["model"] == "gpt-test" and body["temperature"] == 0.25
    assert int(s.upstream.requests[0].headers["content-length"]) == len(s.upstream.requests[0].body)

    s.upstream.reset()
    c = anthropic.Anthropic(api_key=s.token(), base_url=s.gateway + "/anthropic", max_retries=0, timeout=20)
    c.messages.create(model="claude", max_tokens=10, system="Reply to alice@corp.example",  # type: ignore[arg-type]
                      messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-mode": "anthropic"})
    sent = json.loads(s.upstream.requests[0].body)
    assert sent["system"] == "Reply to [EMAIL]" and sent["max_tokens"] == 10


def test_shadow_rule_lets_the_request_through_and_says_shadow(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    before = metrics(s)
    out = oai(s, s.token()).chat.completions.create(model="m", messages=ask("This memo is INTERNAL ONLY."))  # type: ignore[arg-type]
    assert out.choices[0].message.content
    assert len(s.upstream.requests) == 1
    line = 'extproc_policy_decisions_total{action="allow",mode="shadow",rule="-"}'
    after = metrics(s)
    for _ in range(40):  # counted when the ext_proc stream closes, just after the answer
        if line in after:
            break
        time.sleep(0.05)
        after = metrics(s)
    assert line in after
    shadow = 'extproc_policy_shadow_matches_total{action="block",rule="trial-internal-only"}'
    assert shadow in after and (shadow not in before or _value(after, shadow) > _value(before, shadow))


def _value(text: str, prefix: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(prefix)).split()[-1])


def test_group_scoped_rule_applies_only_to_that_group(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(s, s.token("carl", groups=("contractors",))).chat.completions.create(
            model="m", messages=ask("What is the salary band?"))  # type: ignore[arg-type]
    assert isinstance(exc.value.body, dict) and exc.value.body["rule_id"] == "contractors-no-salaries"
    assert s.upstream.requests == []
    out = oai(s, s.token("erin", groups=("engineering",))).chat.completions.create(
        model="m", messages=ask("What is the salary band?"))  # type: ignore[arg-type]
    assert out.choices[0].message.content and len(s.upstream.requests) == 1


def test_require_approval_fails_closed_until_approved(fresh_upstream: Stack) -> None:
    s = fresh_upstream
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(s, s.token()).chat.completions.create(model="m", messages=ask("Review this term sheet"))  # type: ignore[arg-type]
    assert isinstance(exc.value.body, dict) and exc.value.body["rule_id"] == "deal-approval"
    assert s.upstream.requests == []


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\xfd", b"[1,2,3]", b'{"messages": "x", "a": NaN}'])
def test_unparsable_body_is_refused_not_passed(fresh_upstream: Stack, body: bytes) -> None:
    import http.client

    s = fresh_upstream
    conn = http.client.HTTPConnection("127.0.0.1", s.ports["http"], timeout=10)
    conn.request("POST", "/fake/chat/completions", body=body,
                 headers={"authorization": f"Bearer {s.token()}", "content-type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    assert r.status == 400 and data["error"]["code"] == "unreadable_body"
    assert s.upstream.requests == []


# -- budgets across two ext_proc replicas sharing one Redis ----------------------------------


@pytest.fixture(scope="module")
def replica(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("replica"), parent=stack).running() as r:
        yield r


def _clear_of_window_edge(window: int = 60, margin: float = 5.0) -> None:
    """Budgets use fixed windows: start a counting test well inside one."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.1)


def test_request_budget_is_exact_across_two_replicas(fresh_upstream: Stack, replica: Stack) -> None:
    s = fresh_upstream
    _clear_of_window_edge()
    user = f"budget-{uuid.uuid4().hex[:8]}"
    token = s.token(user)
    results = []
    for i in range(6):
        gw = s if i % 2 == 0 else replica
        try:
            oai(gw, token).chat.completions.create(model="m", messages=ask("hello"))  # type: ignore[arg-type]
            results.append(200)
        except openai.RateLimitError as exc:
            results.append(429)
            assert int(exc.response.headers["retry-after"]) >= 1
            assert isinstance(exc.body, dict) and exc.body["code"] == "budget_exceeded"
    assert results == [200, 200, 200, 429, 429, 429]
    assert len(s.upstream.requests) == 3


def test_streamed_usage_is_charged_to_the_token_budget(fresh_upstream: Stack, replica: Stack) -> None:
    s = fresh_upstream
    _clear_of_window_edge(margin=8.0)
    user = f"token-{uuid.uuid4().hex[:8]}"
    token = s.token(user)
    stream = oai(s, token).chat.completions.create(
        model="m", messages=ask("hi"), stream=True,  # type: ignore[arg-type]
        extra_headers={"x-fake-mode": "sse", "x-fake-usage": "100"},
    )
    chunks = list(stream)
    assert chunks
    # The gateway asked the provider for usage in the stream.
    assert json.loads(s.upstream.requests[0].body)["stream_options"] == {"include_usage": True}
    import time

    deadline = time.monotonic() + 30
    status = 200
    while time.monotonic() < deadline:  # the charge is applied just after the stream ends
        try:
            oai(replica, token).chat.completions.create(model="m", messages=ask("again"))  # type: ignore[arg-type]
        except openai.RateLimitError as exc:
            status = exc.status_code
            assert isinstance(exc.body, dict) and exc.body["budget_id"] == "tokens"
            break
        time.sleep(0.1)
    assert status == 429


def test_hot_reload_swaps_policy_and_rejects_an_invalid_one(fresh_upstream: Stack, replica: Stack) -> None:
    import signal
    import time

    import yaml

    s = replica
    original = s.config_path.read_text()
    cfg = yaml.safe_load(original)
    cfg["policy"]["rules"].insert(0, {"id": "no-kittens", "match": {"content": {"keywords": ["kitten"]}},
                                      "action": "block", "message": "No kittens."})

    def blocked() -> bool:
        try:
            oai(s, s.token()).chat.completions.create(model="m", messages=ask("a kitten picture"))  # type: ignore[arg-type]
        except openai.PermissionDeniedError:
            return True
        return False

    def wait_for(want: bool) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if blocked() == want:
                return True
            time.sleep(0.2)
        return False

    try:
        assert not blocked()
        s.config_path.write_text(yaml.safe_dump(cfg))  # picked up by the file watcher
        assert wait_for(True)
        bad = yaml.safe_load(original)
        bad["policy"]["rules"][0]["action"] = "explode"
        s.config_path.write_text(yaml.safe_dump(bad))
        time.sleep(2.5)
        assert blocked()  # the invalid file was refused: the kitten rule still serves
        log = s.procs["extproc"].output()
        assert "reload (file change) rejected" in log and "policy.rules[0].action" in log
        s.config_path.write_text(original)
        s.procs["extproc"].signal(signal.SIGHUP)
        assert wait_for(False)
        # Turning recording off needs a restart: the reload keeps it rather than half-apply it.
        no_rec = yaml.safe_load(original)
        no_rec.pop("recording")
        s.config_path.write_text(yaml.safe_dump(no_rec))
        deadline = time.monotonic() + 30
        while "turning recording on or off needs a restart" not in s.procs["extproc"].output():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert not blocked()
    finally:
        s.config_path.write_text(original)
