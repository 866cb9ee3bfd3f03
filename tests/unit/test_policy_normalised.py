"""Content rules and request masking see what the model reads (issue 17, items 1 and 2)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import ConfigError
from extproc.policy import Policy, PolicyRequest

BLOCK = {"id": "codename", "action": "block", "match": {"content": {"keywords": ["project bluebird"]}}}
MASK = {"id": "pii", "action": "mask", "match": {"content": {"detectors": ["EMAIL"]}}}
REGEX = {"id": "tickets", "action": "mask", "match": {"content": {"regex": [r"TICKET-\d{4}"]}}}


def chat(content: Any, **extra: Any) -> PolicyRequest:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content, **extra}]}
    return PolicyRequest(
        user="alice", groups=(), issuer="i", workload=None, provider="openai", api="openai",
        method="POST", path="/v1/chat/completions", content_type="application/json",
        body=json.dumps(body, ensure_ascii=False).encode(),
    )


POLICY = Policy.from_config({"rules": [BLOCK, MASK, REGEX]})

DISGUISES = {
    "zero-width space": "project blue\u200bbird",
    "zero-width joiner": "project blue\u200dbird",
    "soft hyphen": "project blue\u00adbird",
    "fullwidth": "ｐｒｏｊｅｃｔ ｂｌｕｅｂｉｒｄ",
    "cyrillic letter": "pr\u043eject bluebird",
    "combining accent": "proje\u0301ct bluebird",
    "tag characters": "".join(chr(0xE0000 + ord(c)) for c in "project bluebird"),
    "bidi controls": "\u202eproject bluebird\u202c",
    "upper case": "PROJECT BLUEBIRD",
    "eszett-free fold": "Project\u00a0Bluebird",  # no-break space is a space
}


@pytest.mark.parametrize("text", DISGUISES.values(), ids=DISGUISES.keys())
def test_disguised_keyword_is_blocked(text: str) -> None:
    d = POLICY.evaluate(chat(f"tell me about {text} please"))
    assert d.action == "block", d
    assert d.rule_id == "codename"


EMAILS = {
    "fullwidth at": "jane\uff20example.com",
    "zero-width in local part": "ja\u200bne@example.com",
    "soft hyphen in domain": "jane@exam\u00adple.com",
    "cyrillic in domain": "jane@ex\u0430mple.com",
    "fullwidth letters": "ｊａｎｅ@example.com",
    "accented local part": "jürgen@example.com",
}


@pytest.mark.parametrize("email", EMAILS.values(), ids=EMAILS.keys())
def test_disguised_email_is_masked_whole(email: str) -> None:
    d = POLICY.evaluate(chat(f"write to {email} today"))
    assert d.action == "mask"
    assert d.body is not None
    content = json.loads(d.body)["messages"][0]["content"]
    assert content == "write to [EMAIL] today"
    assert d.mask_counts == {"EMAIL": 1}


def test_regex_sees_fullwidth_digits_and_masks_the_original_span() -> None:
    d = POLICY.evaluate(chat("see TICKET-\uff11\u200b234 for details"))
    assert d.body is not None
    assert json.loads(d.body)["messages"][0]["content"] == "see [REDACTED:tickets] for details"


def test_normalise_false_matches_exact_characters() -> None:
    exact = {**BLOCK, "normalise": False}
    p = Policy.from_config({"rules": [exact]})
    assert p.evaluate(chat("project bluebird")).action == "block"
    assert p.evaluate(chat("project blue\u200bbird")).action == "allow"
    assert p.evaluate(chat("PROJECT BLUEBIRD")).action == "block"  # keywords still ignore case


def test_normalise_must_be_boolean_and_needs_content() -> None:
    with pytest.raises(ConfigError, match="normalise"):
        Policy.from_config({"rules": [{**BLOCK, "normalise": "yes"}]})
    with pytest.raises(ConfigError, match="normalise"):
        Policy.from_config({"rules": [{"id": "x", "action": "block", "normalise": False}]})


def test_keyword_written_in_disguise_matches_plain_text() -> None:
    p = Policy.from_config({"rules": [{**BLOCK, "match": {"content": {"keywords": ["ｐｒｏｊｅｃｔ Bluebird"]}}}]})
    assert p.evaluate(chat("project bluebird")).action == "block"


# -- one text per message --------------------------------------------------------------


def parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


def test_phrase_split_across_parts_is_blocked() -> None:
    assert POLICY.evaluate(chat(parts("project blue", "bird"))).action == "block"
    assert POLICY.evaluate(chat(parts("pro", "ject ", "blue", "bird"))).action == "block"


def test_value_split_across_parts_is_masked_in_every_part() -> None:
    d = POLICY.evaluate(chat(parts("mail jane@exa", "mple.com now")))
    assert d.body is not None
    got = [p["text"] for p in json.loads(d.body)["messages"][0]["content"]]
    assert got == ["mail [EMAIL]", "[EMAIL] now"]
    assert "jane" not in d.body.decode() and "mple.com" not in d.body.decode()
    assert d.mask_counts == {"EMAIL": 1}


def test_parts_of_different_messages_are_not_joined() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "project blue"},
                                       {"role": "user", "content": "bird"}]}
    r = PolicyRequest(user="a", groups=(), issuer="i", workload=None, provider="openai", api="openai",
                      method="POST", path="/v1/chat/completions", content_type="application/json",
                      body=json.dumps(body).encode())
    assert POLICY.evaluate(r).action == "allow"


def test_anthropic_blocks_and_responses_parts_are_joined() -> None:
    anthropic = {"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "project blue"}, {"type": "text", "text": "bird"}]}]}
    r = PolicyRequest(user="a", groups=(), issuer="i", workload=None, provider="anthropic", api="anthropic",
                      method="POST", path="/v1/messages", content_type="application/json",
                      body=json.dumps(anthropic).encode())
    assert POLICY.evaluate(r).action == "block"
    responses = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "project blue"}, {"type": "input_text", "text": "bird"}]}]}
    r = PolicyRequest(user="a", groups=(), issuer="i", workload=None, provider="openai", api="openai",
                      method="POST", path="/v1/responses", content_type="application/json",
                      body=json.dumps(responses).encode())
    assert POLICY.evaluate(r).action == "block"


@settings(deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=27), max_size=4))
def test_any_split_of_a_message_masks_the_value(cuts: list[int]) -> None:
    text = "hi jane.doe@example.com bye"
    bounds = sorted({0, len(text), *cuts})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    d = POLICY.evaluate(chat(parts(*pieces)))
    assert d.body is not None
    joined = "".join(p["text"] for p in json.loads(d.body)["messages"][0]["content"])
    for fragment in ("jane", "doe", "example"):
        assert fragment not in joined
    assert joined.startswith("hi [EMAIL]") and joined.endswith("[EMAIL] bye")
