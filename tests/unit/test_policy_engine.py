"""Policy evaluation: matching, conflict resolution, shadow mode, masking, budgets, robustness."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.policy import Decision, Policy, PolicyRequest


def req(
    content: str | None = "hello",
    *,
    user: str = "alice",
    groups: tuple[str, ...] = ("engineering",),
    provider: str = "openai",
    api: str = "openai",
    model: str = "gpt-4o",
    path: str = "/v1/chat/completions",
    method: str = "POST",
    body: bytes | None = None,
    workload: str | None = None,
    issuer: str = "https://idp",
) -> PolicyRequest:
    if body is None and content is not None:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()
    return PolicyRequest(
        user=user,
        groups=groups,
        issuer=issuer,
        workload=workload,
        provider=provider,
        api=api,
        method=method,
        path=path,
        content_type="application/json",
        body=body,
    )


def rule(rid: str, action: str, **kw: Any) -> dict[str, Any]:
    return {"id": rid, "action": action, **kw}


def kw(*words: str) -> dict[str, Any]:
    return {"content": {"keywords": list(words)}}


def policy(*rules: dict[str, Any], **top: Any) -> Policy:
    return Policy.from_config({"rules": list(rules), **top})


# -- conflict resolution -----------------------------------------------------------


def test_most_restrictive_enforced_action_wins_regardless_of_order() -> None:
    rules = [
        rule("a", "allow"),
        rule("m", "mask", match=kw("x")),
        rule("r", "require_approval", match=kw("x")),
        rule("b", "block", match=kw("x")),
    ]
    for order in (rules, rules[::-1]):
        d = policy(*order).evaluate(req("x"))
        assert (d.action, d.rule_id, d.status) == ("block", "b", 403)
        assert {m.rule_id for m in d.matches} == {"a", "m", "r", "b"}


def test_ties_go_to_the_earlier_rule() -> None:
    d = policy(rule("first", "block", match=kw("x")), rule("second", "block", match=kw("x"))).evaluate(req("x"))
    assert d.rule_id == "first"
    assert [m.rule_id for m in d.matches] == ["first", "second"]


def test_no_match_is_allow_with_no_rule() -> None:
    d = policy(rule("b", "block", match=kw("secret"))).evaluate(req("nothing here"))
    assert (d.action, d.rule_id, d.status, d.matches, d.body) == ("allow", None, 200, (), None)


def test_block_message_is_the_authors_or_names_the_rule_never_the_pattern() -> None:
    d = policy(rule("b", "block", match={"content": {"regex": ["sup3r-s3cret-[0-9]+"]}})).evaluate(
        req("sup3r-s3cret-1")
    )
    assert "b" in d.message and "s3cret" not in d.message
    d = policy(rule("b", "block", match=kw("x"), message="No.")).evaluate(req("x"))
    assert d.message == "No."


def test_default_block_is_an_allowlist() -> None:
    p = policy(
        rule("eng", "allow", match={"groups": ["engineering"]}),
        rule("m", "mask", match=kw("x")),
        default="block",
        default_message="Not allowed.",
    )
    assert p.evaluate(req("x")).action == "mask"
    d = p.evaluate(req("x", groups=("sales",)))
    assert (d.action, d.rule_id, d.message) == ("block", None, "Not allowed.")
    assert [m.rule_id for m in d.matches] == ["m"]


# -- shadow ------------------------------------------------------------------------


def test_shadow_matches_are_recorded_but_never_enforced() -> None:
    p = policy(rule("s", "block", match=kw("x"), mode="shadow"), rule("m", "mask", match=kw("x")))
    d = p.evaluate(req("x"))
    assert (d.action, d.mode, d.rule_id) == ("mask", "shadow", "m")
    assert (d.shadow_action, d.shadow_rule_id) == ("block", "s")
    assert d.body is not None


def test_shadow_less_restrictive_than_outcome_is_not_a_shadow_decision() -> None:
    d = policy(rule("s", "mask", match=kw("x"), mode="shadow"), rule("b", "block", match=kw("x"))).evaluate(req("x"))
    assert (d.action, d.mode, d.shadow_action) == ("block", "enforce", None)
    assert [(m.rule_id, m.mode) for m in d.matches] == [("s", "shadow"), ("b", "enforce")]


def test_shadow_mask_does_not_rewrite() -> None:
    d = policy(rule("m", "mask", match=kw("x"), mode="shadow")).evaluate(req("a x b"))
    assert (d.action, d.mode, d.body, dict(d.mask_counts)) == ("allow", "shadow", None, {})


def test_global_shadow_mode() -> None:
    d = policy(rule("b", "block", match=kw("x")), mode="shadow").evaluate(req("x"))
    assert (d.action, d.mode, d.shadow_rule_id) == ("allow", "shadow", "b")


# -- selectors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "request_kw", "hit"),
    [
        ({"users": ["al*"]}, {}, True),
        ({"users": ["bob"]}, {}, False),
        ({"groups": ["eng*"]}, {}, True),
        ({"groups": ["contractors"]}, {"groups": ()}, False),
        ({"issuers": ["https://idp"]}, {}, True),
        ({"workloads": ["system:serviceaccount:ci:*"]}, {}, False),
        (
            {"workloads": ["system:serviceaccount:ci:*"]},
            {"workload": "system:serviceaccount:ci:runner"},
            True,
        ),
        ({"providers": ["anthropic"]}, {}, False),
        ({"models": ["GPT-4*"]}, {}, True),
        ({"models": ["gpt-3*"]}, {}, False),
        ({"models": ["*"]}, {"method": "GET", "path": "/v1/models", "content": None}, False),
        ({"operations": ["chat"]}, {}, True),
        ({"operations": ["embeddings"]}, {}, False),
        ({"operations": ["models"]}, {"method": "GET", "path": "/v1/models", "content": None}, True),
        ({"users": ["alice"], "groups": ["sales"]}, {}, False),  # fields are ANDed
        ({"groups": ["sales", "engineering"]}, {}, True),  # values are ORed
    ],
)
def test_selectors(match: dict[str, Any], request_kw: dict[str, Any], hit: bool) -> None:
    d = policy(rule("b", "block", match=match)).evaluate(req(**request_kw))
    assert (d.action == "block") is hit


def test_unless_exempts() -> None:
    p = policy(rule("r", "require_approval", match=kw("merger"), unless={"groups": ["legal"]}))
    assert p.evaluate(req("the merger")).action == "require_approval"
    assert p.evaluate(req("the merger", groups=("legal", "x"))).action == "allow"


# -- masking -----------------------------------------------------------------------


def test_mask_rules_combine_and_only_text_changes() -> None:
    body = {
        "model": "gpt-4o",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "falcon is a codename"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "ticket ABC-1234 about Falcon"},
                    {"type": "image_url", "image_url": {"url": "https://falcon/x.png"}},
                ],
            },
        ],
        "metadata": {"falcon": "falcon"},
    }
    p = policy(
        rule("codename", "mask", match=kw("falcon")),
        rule(
            "tickets",
            "mask",
            match={"content": {"regex": ["[A-Z]{3}-[0-9]{4}"]}},
            masking={"replacement": "[TICKET]"},
        ),
    )
    d = p.evaluate(req(body=json.dumps(body).encode()))
    assert (d.action, d.rule_id) == ("mask", "codename")
    assert d.body is not None
    out = json.loads(d.body)
    assert out["messages"][0]["content"] == "[REDACTED:codename] is a codename"
    assert out["messages"][1]["content"][0]["text"] == "ticket [TICKET] about [REDACTED:codename]"
    # Everything the model does not read as text is left alone.
    assert out["messages"][1]["content"][1] == body["messages"][1]["content"][1]  # type: ignore[index]
    assert out["metadata"] == body["metadata"] and out["temperature"] == 0.2
    assert dict(d.mask_counts) == {"rule:codename": 2, "rule:tickets": 1}


def test_overlapping_mask_spans_merge() -> None:
    p = policy(rule("a", "mask", match=kw("project falcon")), rule("b", "mask", match=kw("falcon roadmap")))
    d = p.evaluate(req("see project falcon roadmap now"))
    assert d.body is not None
    assert json.loads(d.body)["messages"][0]["content"] == "see [REDACTED:a] now"


def test_require_approval_carries_the_masked_body_for_after_approval() -> None:
    p = policy(rule("r", "require_approval", match=kw("merger")), rule("m", "mask", match=kw("acme")))
    d = p.evaluate(req("merger with acme"))
    assert d.action == "require_approval" and d.body is not None and b"acme" not in d.body


def test_block_never_carries_a_body() -> None:
    p = policy(rule("b", "block", match=kw("x")), rule("m", "mask", match=kw("x")))
    assert p.evaluate(req("x")).body is None


def test_detectors_mask_with_typed_placeholders_and_styles() -> None:
    pytest.importorskip("extproc.masking")
    p = Policy.from_config(
        {
            "rules": [
                rule("pii", "mask", match={"content": {"detectors": ["EMAIL"]}}),
                rule(
                    "cards",
                    "mask",
                    match={"content": {"detectors": ["CREDIT_CARD"]}},
                    masking={"style": "last4"},
                ),
                rule("keys", "block", match={"content": {"detectors": ["SECRET"]}}),
            ]
        }
    )
    d = p.evaluate(req("mail bob@example.com, card 4111 1111 1111 1111"))
    assert d.action == "mask" and d.body is not None
    text = json.loads(d.body)["messages"][0]["content"]
    assert "bob@example.com" not in text and "[EMAIL]" in text
    assert "4111 1111 1111 1111" not in text and text.endswith("1111")
    assert dict(d.mask_counts) == {"CREDIT_CARD": 1, "EMAIL": 1}
    assert p.evaluate(req("no pii here")).action == "allow"


def test_custom_entities_and_hash_style_from_the_masking_section() -> None:
    pytest.importorskip("extproc.masking")
    from extproc.config.model import ConfigError

    masking = {"custom": [{"name": "EMPLOYEE_ID", "pattern": "E-[0-9]{6}"}], "hash_key": "k"}
    mask = rule("emp", "mask", match={"content": {"detectors": ["EMPLOYEE_ID"]}}, masking={"style": "hash"})
    p = Policy.from_config({"rules": [mask]}, masking_config=masking)
    d = p.evaluate(req("ask E-123456 today"))
    assert d.body is not None
    text = json.loads(d.body)["messages"][0]["content"]
    assert text.startswith("ask [EMPLOYEE_ID:") and "123456" not in text
    with pytest.raises(ConfigError) as exc:
        Policy.from_config({"rules": [mask]}, masking_config={"custom": masking["custom"]})
    assert exc.value.path == "policy.rules[0].masking.style" and "hash_key" in exc.value.message


def test_unknown_detector_is_a_config_error() -> None:
    pytest.importorskip("extproc.masking")
    from extproc.config.model import ConfigError

    with pytest.raises(ConfigError) as exc:
        Policy.from_config({"rules": [rule("x", "block", match={"content": {"detectors": ["EMAILS"]}})]})
    assert exc.value.path == "policy.rules[0].match.content.detectors[0]" and "EMAIL" in exc.value.message


# -- unreadable bodies -------------------------------------------------------------


def test_unparsable_body_blocks_with_400_by_default() -> None:
    d = policy().evaluate(req(body=b"{oops"))
    assert (d.action, d.status, d.rule_id) == ("block", 400, None)
    assert d.error is not None and "not valid JSON" in d.message


def test_unparsable_body_allow_still_applies_identity_rules() -> None:
    p = policy(
        rule("b", "block", match={"groups": ["contractors"]}),
        rule("k", "block", match=kw("x")),
        on_unparsable_body="allow",
    )
    assert p.evaluate(req(body=b"\xff")).action == "allow"
    d = p.evaluate(req(body=b"\xff", groups=("contractors",)))
    assert (d.action, d.rule_id) == ("block", "b")


def test_empty_policy_allows_everything() -> None:
    d = Policy.empty().evaluate(req(body=b"\xff"))
    assert d.action == "allow" and d.error is not None and d.budgets == ()


def test_internal_error_fails_closed() -> None:
    p = policy(rule("b", "block", match=kw("x")))

    class Boom:
        def applies(self, *a: Any) -> bool:
            raise RuntimeError("bug")

    object.__setattr__(p.spec, "rules", (Boom(),))
    d = p.evaluate(req("x"))
    assert (d.action, d.status) == ("block", 500)


# -- budgets -----------------------------------------------------------------------


def test_budget_charges() -> None:
    p = Policy.from_config(
        {
            "budgets": [
                {"id": "u", "per": "user", "requests": 10},
                {
                    "id": "g",
                    "per": "group",
                    "tokens": 100,
                    "match": {"groups": ["eng*"]},
                    "window_seconds": 3600,
                },
                {"id": "r", "per": "route", "requests": 5, "fail": "open"},
                {"id": "m", "per": "model", "requests": 5},
                {"id": "all", "per": "global", "requests": 5},
                {"id": "sales", "requests": 1, "match": {"groups": ["sales"]}},
            ]
        }
    )
    d = p.evaluate(req(user="a:b", groups=("engineering", "eng-ops", "x")))
    keys = [(c.budget_id, c.key) for c in d.budgets]
    assert keys == [
        ("u", "budget:u:user:a%3Ab"),
        ("g", "budget:g:group:engineering"),
        ("g", "budget:g:group:eng-ops"),
        ("r", "budget:r:route:openai"),
        ("m", "budget:m:model:openai:gpt-4o"),
        ("all", "budget:all:global"),
    ]
    g = d.budgets[1]
    assert (g.window_seconds, g.tokens_limit, g.requests_limit, g.fail) == (3600, 100, None, "closed")
    assert d.budgets[3].fail == "open"


def test_group_budget_without_groups_uses_a_shared_bucket() -> None:
    p = Policy.from_config({"budgets": [{"id": "g", "per": "group", "requests": 1}]})
    assert [c.key for c in p.evaluate(req(groups=())).budgets] == ["budget:g:group:-"]


def test_blocked_requests_charge_no_budget() -> None:
    p = Policy.from_config({"rules": [rule("b", "block", match=kw("x"))], "budgets": [{"id": "u", "requests": 1}]})
    assert p.evaluate(req("x")).budgets == ()
    assert len(p.evaluate(req("y")).budgets) == 1


def test_decision_carries_request_facts() -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "x" * 40}],
    }
    d = policy().evaluate(req(body=json.dumps(body).encode()))
    assert (d.operation, d.model, d.stream, d.prompt_tokens, d.max_output_tokens) == (
        "chat",
        "gpt-4o",
        True,
        14,
        9,
    )
    assert d.policy_version


# -- robustness --------------------------------------------------------------------

try:
    import extproc.masking  # noqa: F401

    _DETECTORS: list[dict[str, Any]] = [rule("d", "mask", match={"content": {"detectors": ["EMAIL", "PHONE"]}})]
except ImportError:  # the robustness properties still hold for keyword and regex rules
    _DETECTORS = []

ROBUST = Policy.from_config(
    {
        "rules": [
            *_DETECTORS,
            rule("b", "block", match={"content": {"keywords": ["falcon"], "regex": ["sk-[a-z]{4}"]}}),
            rule("m", "mask", match={"content": {"keywords": ["a", "b"], "regex": ["[0-9]+"]}}),
            rule(
                "r",
                "require_approval",
                match={"models": ["x*"], "content": {"keywords": ["c"]}},
                mode="shadow",
            ),
        ],
        "budgets": [{"id": "u", "requests": 5}],
    }
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(alphabet="ab c0@.\n\ud800é", max_size=16),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "model",
                    "messages",
                    "role",
                    "content",
                    "text",
                    "type",
                    "input",
                    "system",
                    "prompt",
                    "tool_calls",
                    "function",
                    "arguments",
                    "tools",
                    "x",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=30,
)
shaped = st.fixed_dictionaries(
    {
        "model": st.text(max_size=3),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": json_values}),
            max_size=4,
        ),
    }
)
paths = st.sampled_from(
    [
        "/v1/chat/completions",
        "/responses",
        "/completions",
        "/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        "/other",
    ]
)
apis = st.sampled_from(["openai", "anthropic", "generic", "mcp"])


def _check(d: Decision) -> None:
    assert d.action in ("allow", "block", "mask", "require_approval")
    if d.body is not None:
        json.loads(d.body)  # a rewritten body is always valid JSON


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, shaped), apis, paths)
def test_evaluate_never_raises_on_any_json(value: Any, api: str, path: str) -> None:
    raw = json.dumps(value).encode("utf-8", "surrogatepass")
    r = req(body=raw, api=api, path=path)
    _check(ROBUST._evaluate(r))  # the inner function: its bugs must not hide behind the safety net


@settings(deadline=None)
@given(st.binary(max_size=200), apis, paths, st.sampled_from(["POST", "GET", "post"]))
def test_evaluate_never_raises_on_any_bytes(raw: bytes, api: str, path: str, method: str) -> None:
    _check(ROBUST._evaluate(req(body=raw, api=api, path=path, method=method)))
