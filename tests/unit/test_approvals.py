"""The pure approval model: digests, transitions, grants, serialisation, the config section."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.approvals.ids import new_approval_id
from extproc.approvals.model import (
    APPROVAL_ID_RE,
    Approval,
    ApprovalError,
    ApprovalSettings,
    ApproverRule,
    Binding,
    Principal,
    Webhook,
    abandon,
    consume,
    content_digest,
    decide,
    expire_if_due,
    grant_usable,
    new_approval,
)
from extproc.approvals.notify import generic_payload, slack_payload
from extproc.config.model import ConfigError, _load_with_lines
from extproc.identity.model import Identity

T0 = 1_700_000_000.0


def ident(user: str, *groups: str, issuer: str = "https://idp") -> Identity:
    return Identity(user=user, groups=groups, issuer=issuer, subject=user, expires_at=T0 + 3600)


ALICE = ident("alice", "eng", "sec")  # the requester; in the approver group herself
BOB = ident("bob", "sec")
CAROL = ident("carol", "sec")
DAVE = ident("dave", "eng")  # no approver
ERIN = ident("erin")  # approver by name
ALICE_OTHER_ISSUER = ident("alice", "sec", issuer="https://ci")


def binding(**kw: str) -> Binding:
    base = {
        "user": "alice",
        "issuer": "https://idp",
        "provider": "openai",
        "route": "/chat/completions",
        "content_digest": content_digest(b'{"model":"m","messages":[]}', api="openai"),
        "policy_version": "pv1",
        "rule_id": "secrets",
    }
    base.update(kw)
    return Binding(**base)


def cfg(quorum: int = 1, **kw: Any) -> ApprovalSettings:
    raw: dict[str, Any] = {"rules": {"secrets": {"groups": ["sec"], "users": ["erin"], "quorum": quorum}}}
    raw.update(kw)
    return ApprovalSettings.from_config(raw)


def pending(quorum: int = 1, **kw: Any) -> Approval:
    return new_approval(
        approval_id=new_approval_id(), binding=binding(), requester=ALICE, settings=cfg(quorum, **kw), now=T0)


# -- content digest ---------------------------------------------------------------------


def test_digest_ignores_key_order_whitespace_and_streaming() -> None:
    a = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    b = b'{ "messages": [ {"content": "hi", "role": "user"} ],\n "model": "m", "stream": true,\n'
    b += b' "stream_options": {"include_usage": true}}'
    assert content_digest(a, api="openai") == content_digest(b, api="openai")
    assert content_digest(a, api="openai").startswith("sha256:")


def test_digest_changes_with_content_and_kept_fields() -> None:
    base = content_digest(b'{"messages":[{"content":"hi"}]}', api="openai")
    assert content_digest(b'{"messages":[{"content":"hi!"}]}', api="openai") != base
    # user and metadata reach the provider: an approval covers them.
    assert content_digest(b'{"messages":[{"content":"hi"}],"user":"u"}', api="openai") != base
    assert content_digest(b'{"messages":[{"content":"hi"}],"metadata":{"a":"b"}}', api="openai") != base
    # stream is only dropped at the top level, never inside the content
    inner = content_digest(b'{"messages":[{"content":"hi","stream":1}]}', api="openai")
    assert inner != base


def test_digest_api_specific_fields() -> None:
    one = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
    two = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}'
    assert content_digest(one, api="mcp") == content_digest(two, api="mcp")
    assert content_digest(one, api="generic") != content_digest(two, api="generic")
    # the flavour is part of the digest
    assert content_digest(one, api="generic") != content_digest(one, api="openai")


def test_digest_duplicate_keys_and_raw_bodies() -> None:
    # A parser that keeps the first duplicate would read "evil": never the digest of {"m":"ok"}.
    assert content_digest(b'{"m":"evil","m":"ok"}', api="openai") != content_digest(b'{"m":"ok"}', api="openai")
    assert content_digest(b"not json", api="openai") != content_digest(b"not json ", api="openai")
    assert content_digest(b"\xff\xfe", api="openai").startswith("sha256:")
    assert content_digest(None, api="openai") == content_digest(b"", api="openai")


# -- transitions -------------------------------------------------------------------------


def test_new_approval_shape() -> None:
    a = pending(quorum=2)
    assert APPROVAL_ID_RE.match(a.id) and a.id != new_approval_id()
    assert a.state == "pending" and a.quorum == 2 and a.expires_at == T0 + 900
    assert a.requester == Principal("alice", "https://idp", ("eng", "sec"))
    assert a.approvers == ApproverRule(groups=("sec",), users=("erin",), quorum=2)


def test_no_approvers_for_rule() -> None:
    s = ApprovalSettings.from_config({"rules": {"other": {"users": ["bob"]}}})
    with pytest.raises(ApprovalError) as exc:
        new_approval(approval_id=new_approval_id(), binding=binding(), requester=ALICE, settings=s, now=T0)
    assert exc.value.code == "no_approvers"
    star = ApprovalSettings.from_config({"rules": {"*": {"users": ["bob"]}}})
    assert new_approval(
        approval_id=new_approval_id(), binding=binding(), requester=ALICE, settings=star, now=T0,
    ).approvers.users == ("bob",)


@pytest.mark.parametrize(
    ("voter", "code"),
    [(ALICE, "self_approval"), (DAVE, "not_an_approver")],
)
def test_refused_voters(voter: Identity, code: str) -> None:
    for verdict, reason in (("approve", ""), ("deny", "no")):
        with pytest.raises(ApprovalError) as exc:
            decide(pending(), voter, verdict, reason, now=T0 + 1)
        assert exc.value.code == code


def test_same_name_other_issuer_is_another_person() -> None:
    a = decide(pending(), ALICE_OTHER_ISSUER, "approve", now=T0 + 1)
    assert a.state == "approved"


def test_current_rule_also_applies() -> None:
    narrower = ApproverRule(users=("carol",))
    with pytest.raises(ApprovalError) as exc:
        decide(pending(), BOB, "approve", now=T0 + 1, rule=narrower)
    assert exc.value.code == "not_an_approver"
    # a wider current rule does not admit someone the recorded rule does not
    with pytest.raises(ApprovalError):
        decide(pending(), DAVE, "approve", now=T0 + 1, rule=ApproverRule(groups=("eng",)))
    assert decide(pending(), CAROL, "approve", now=T0 + 1, rule=narrower).state == "approved"


def test_quorum_and_one_vote_each() -> None:
    a = decide(pending(quorum=2), BOB, "approve", "ok", now=T0 + 1)
    assert a.state == "pending" and a.approvals == 1
    with pytest.raises(ApprovalError) as exc:
        decide(a, BOB, "approve", now=T0 + 2)
    assert exc.value.code == "already_voted"
    a = decide(a, ERIN, "approve", now=T0 + 3)
    assert a.state == "approved" and a.decided_at == T0 + 3 and a.approved_at == T0 + 3
    with pytest.raises(ApprovalError) as exc:
        decide(a, CAROL, "deny", "late", now=T0 + 4)
    assert exc.value.code == "not_pending"


def test_deny_is_final_and_needs_reason() -> None:
    with pytest.raises(ApprovalError) as exc:
        decide(pending(quorum=2), BOB, "deny", "   ", now=T0 + 1)
    assert exc.value.code == "invalid"
    a = decide(decide(pending(quorum=2), BOB, "approve", now=T0 + 1), CAROL, "deny", " too\nrisky ", now=T0 + 2)
    assert a.state == "denied" and a.decisions[-1].reason == "too risky"
    with pytest.raises(ApprovalError) as exc:
        decide(pending(), BOB, "maybe", now=T0)
    assert exc.value.code == "invalid"
    with pytest.raises(ApprovalError):
        decide(pending(), BOB, "approve", "x" * 501, now=T0)


def test_expiry_and_abandon() -> None:
    a = pending()
    assert expire_if_due(a, T0 + 899) is a
    assert expire_if_due(a, T0 + 900).state == "expired"
    with pytest.raises(ApprovalError) as exc:
        decide(a, BOB, "approve", now=T0 + 900)
    assert exc.value.code == "expired"
    ab = abandon(replace(a, owner="h:1:b"), T0 + 5)
    assert ab.state == "abandoned" and ab.owner is None
    with pytest.raises(ApprovalError):
        abandon(ab, T0 + 6)
    approved = decide(a, BOB, "approve", now=T0 + 1)
    assert expire_if_due(approved, T0 + 10_000) is approved


def test_grants() -> None:
    once = decide(pending(), BOB, "approve", now=T0 + 10)
    b = once.binding
    assert not grant_usable(pending(), b, T0 + 11)
    assert grant_usable(once, b, T0 + 11)
    assert not grant_usable(once, replace(b, content_digest="sha256:other"), T0 + 11)
    assert not grant_usable(once, replace(b, policy_version="pv2"), T0 + 11)
    assert not grant_usable(once, replace(b, user="mallory"), T0 + 11)
    used = consume(once, T0 + 12)
    assert used.uses == 1 and not grant_usable(used, b, T0 + 13)
    with pytest.raises(ApprovalError) as exc:
        consume(used, T0 + 13)
    assert exc.value.code == "grant_unusable"
    # an unused once-grant also ends with the window
    assert not grant_usable(once, b, T0 + 10 + 3600)

    win = decide(pending(grant="window", grant_window_seconds=60), BOB, "approve", now=T0 + 10)
    for i in range(3):
        win = consume(win, T0 + 20 + i)
    assert win.uses == 3 and win.grant_expires_at == T0 + 70
    assert grant_usable(win, b, T0 + 69.9) and not grant_usable(win, b, T0 + 70)


def test_json_round_trip() -> None:
    a = decide(decide(pending(quorum=2), BOB, "approve", "fine", now=T0 + 1), ERIN, "approve", now=T0 + 2)
    a = replace(a, owner="host:1:abc")
    assert Approval.from_json(a.to_json()) == a
    doc = json.loads(a.to_json())
    doc["state"] = "bogus"
    with pytest.raises(ValueError):
        Approval.from_dict(doc)


# -- property: no sequence of votes breaks the rules --------------------------------------

VOTERS = (ALICE, ALICE_OTHER_ISSUER, BOB, CAROL, DAVE, ERIN)
ELIGIBLE = {("alice", "https://ci"), ("bob", "https://idp"), ("carol", "https://idp"), ("erin", "https://idp")}


@settings(deadline=None)
@given(
    quorum=st.integers(min_value=1, max_value=4),
    votes=st.lists(st.tuples(st.integers(0, len(VOTERS) - 1), st.sampled_from(["approve", "deny"])), max_size=12),
)
def test_votes_property(quorum: int, votes: list[tuple[int, str]]) -> None:
    a = new_approval(approval_id=new_approval_id(), binding=binding(), requester=ALICE, settings=cfg(), now=T0)
    a = replace(a, approvers=replace(a.approvers, quorum=quorum))
    voted: set[tuple[str, str]] = set()
    expect = "pending"
    for n, (i, verdict) in enumerate(votes):
        voter = VOTERS[i]
        key = (voter.user, voter.issuer)
        try:
            a = decide(a, voter, verdict, "because", now=T0 + n)
        except ApprovalError as exc:
            # refused exactly when the model says so
            assert key not in ELIGIBLE or key in voted or expect != "pending", exc.code
            continue
        assert key in ELIGIBLE and key not in voted and expect == "pending"
        voted.add(key)
        if verdict == "deny":
            expect = "denied"
        elif sum(1 for v in a.decisions if v.verdict == "approve") == quorum:
            expect = "approved"
        assert a.state == expect
    assert all(not v.approver.same_person(a.requester) for v in a.decisions)
    assert all(a.approvers.admits(v.approver) for v in a.decisions)
    assert len({(v.approver.user, v.approver.issuer) for v in a.decisions}) == len(a.decisions)
    if a.state == "approved":
        assert a.approvals == quorum and all(v.verdict == "approve" for v in a.decisions)
    if a.state == "pending":
        assert a.approvals < quorum
    if a.state == "denied":
        assert [v.verdict for v in a.decisions].count("deny") == 1 and a.decisions[-1].verdict == "deny"


# -- configuration ----------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = ApprovalSettings.from_config(None)
    assert (s.hold_seconds, s.ttl_seconds, s.grant, s.grant_window_seconds) == (120, 900, "once", 3600)
    assert s.rules == {} and s.webhooks == () and s.rule_for("x") is None


def test_settings_full() -> None:
    s = ApprovalSettings.from_config(
        {
            "hold_seconds": 60,
            "ttl_seconds": 600,
            "grant": "window",
            "grant_window_seconds": 120,
            "rules": {"secrets": {"groups": "sec", "quorum": 2}, "*": {"users": ["root"]}},
            "webhooks": [
                {"url": "https://hooks.slack.com/services/T/B/X", "format": "slack", "retries": 1},
                {"url_env": "HOOK_URL", "timeout_seconds": 1.5},
            ],
        }
    )
    assert s.rule_for("secrets") == ApproverRule(groups=("sec",), quorum=2)
    assert s.rule_for("other") == ApproverRule(users=("root",))
    assert s.webhooks[0].format == "slack" and s.webhooks[0].retries == 1
    assert s.webhooks[0].describe() == "https://hooks.slack.com"  # never the secret path
    assert s.webhooks[1] == Webhook(url=None, url_env="HOOK_URL", timeout_seconds=1.5)
    assert s.webhooks[1].resolve_url({"HOOK_URL": "http://x/y"}) == "http://x/y"
    assert s.webhooks[1].resolve_url({}) is None


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ([], "approvals", "must be a mapping"),
        ({"hold": 1}, "approvals.hold", "unknown key"),
        ({"hold_seconds": 0}, "approvals.hold_seconds", "between 1 and 3600"),
        ({"hold_seconds": "60"}, "approvals.hold_seconds", "must be an integer"),
        ({"hold_seconds": 300, "ttl_seconds": 200}, "approvals.ttl_seconds", "at least hold_seconds"),
        ({"grant": "twice"}, "approvals.grant", "once, window"),
        ({"rules": []}, "approvals.rules", "must be a mapping"),
        ({"rules": {"a b": {"users": ["x"]}}}, "approvals.rules.a b", "policy rule id"),
        ({"rules": {"x": {}}}, "approvals.rules.x", "names no approvers"),
        ({"rules": {"x": {"groups": [""]}}}, "approvals.rules.x.groups[0]", "non-empty string"),
        ({"rules": {"x": {"groups": {"a": 1}}}}, "approvals.rules.x.groups", "list of strings"),
        ({"rules": {"x": {"users": ["a", "b"], "quorum": 3}}}, "approvals.rules.x.quorum", "only 2 user"),
        ({"rules": {"x": {"users": ["a"], "quorum": 0}}}, "approvals.rules.x.quorum", "between 1 and 10"),
        ({"rules": {"x": {"users": ["a"], "approvers": 1}}}, "approvals.rules.x.approvers", "unknown key"),
        ({"webhooks": {}}, "approvals.webhooks", "must be a list"),
        ({"webhooks": [{}]}, "approvals.webhooks[0]", "exactly one of"),
        ({"webhooks": [{"url": "ftp://x"}]}, "approvals.webhooks[0].url", "http:// or https://"),
        ({"webhooks": [{"url": "http://x", "format": "teams"}]}, "approvals.webhooks[0].format", "generic, slack"),
        ({"webhooks": [{"url": "http://x", "retries": 11}]}, "approvals.webhooks[0].retries", "between 0 and 10"),
        ({"webhooks": [{"url_env": "1X"}]}, "approvals.webhooks[0].url_env", "variable name"),
    ],
)
def test_settings_errors(raw: Any, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ApprovalSettings.from_config(raw, file="x.yaml")
    assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message, str(exc.value)
    assert exc.value.file == "x.yaml"


def test_settings_error_lines() -> None:
    text = "version: 1\napprovals:\n  rules:\n    secrets:\n      groups: [sec]\n      quorum: 99\n"
    data, lines = _load_with_lines(text, "f.yaml")
    with pytest.raises(ConfigError) as exc:
        ApprovalSettings.from_config(data["approvals"], file="f.yaml", lines=lines)
    assert str(exc.value).startswith("f.yaml:6: approvals.rules.secrets.quorum:")
    # a missing key reports the enclosing mapping's line
    data = yaml.safe_load("approvals:\n  rules:\n    secrets: {}\n")
    _, lines = _load_with_lines("approvals:\n  rules:\n    secrets: {}\n", "f.yaml")
    with pytest.raises(ConfigError) as exc:
        ApprovalSettings.from_config(data["approvals"], file="f.yaml", lines=lines)
    assert exc.value.line == 3


# -- notification payloads (pure) ----------------------------------------------------------


def test_slack_payload_escapes_and_hints() -> None:
    a = new_approval(approval_id=new_approval_id(), binding=
        binding(rule_id="secrets"), requester=ident("<!channel>", "eng"), settings=cfg(), now=T0
    )
    text = slack_payload("created", a)["text"]
    assert a.id in text and f"extproc approvals approve {a.id}" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "secrets" in text
    done = decide(a, BOB, "deny", "no <@U123>", now=T0 + 1)
    text = slack_payload("decided", done)["text"]
    assert "denied" in text and "bob" in text and "<@U123>" not in text


def test_generic_payload_is_the_record() -> None:
    a = pending()
    doc = generic_payload("created", a)
    assert doc["event"] == "created" and Approval.from_dict(doc["approval"]) == a
    assert "body" not in json.dumps(doc)
