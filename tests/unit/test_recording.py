"""The record model: masking of recorded bodies, truncation markers, sessions, settings."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.errors import ConfigError
from extproc.identity.model import Identity
from extproc.llmapi.usage import Usage
from extproc.masking import default_profile
from extproc.policy.model import Decision, RuleMatch
from extproc.recording.model import (
    InteractionRecorder,
    RecordingSettings,
    interaction_log_line,
    mask_pieces,
    merge_interaction,
    next_session,
    recording_profile,
    safe_label,
    safe_token,
    session_from_header,
    summarize,
)

CRED = "sk-proj-INJECTEDcredential0123456789abcdef"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
ALICE = Identity("alice", ("eng", "ml"), "https://issuer", "alice", 0.0, workload="ns/sa")
T0 = 1_700_000_000.0


def recorder(s: RecordingSettings | None = None, **kw: Any) -> InteractionRecorder:
    rec = InteractionRecorder(s or RecordingSettings(), now=T0, interaction_id=uuid.uuid4().hex,
                              secrets=(CRED, TOKEN, None))
    rec.request(request_id="req-1", method="POST", path="/openai/chat/completions?user=bob@example.com",
                provider="openai", route="/chat/completions", caller=ALICE, **kw)
    return rec


def deliver(rec: InteractionRecorder, chunks: list[bytes], *, step: float = 0.05) -> dict[str, Any]:
    rec.response_headers(200, now=T0 + 0.2, content_type="text/event-stream")
    for i, c in enumerate(chunks):
        rec.response_chunk(c, T0 + 0.3 + i * step)
    return rec.complete(Usage(10, 20), now=T0 + 1.0)


def text_of(complete: dict[str, Any]) -> str:
    return "".join(c[1] for c in complete["response"]["chunks"])


def test_start_entry_masks_request_body_path_credentials_and_token() -> None:
    rec = recorder(session_header="sess-42")
    body = json.dumps({"messages": [{"role": "user", "content": f"mail bob@example.com key {CRED} tok {TOKEN}"}]})
    d = Decision(action="mask", mode="shadow", rule_id="pii", message="", status=200,
                 matches=(RuleMatch("pii", "mask", "enforce"), RuleMatch("later", "block", "shadow")),
                 model="gpt-4o", operation="chat", stream=True, shadow_action="block", shadow_rule_id="later",
                 mask_counts={"EMAIL": 1})
    start = rec.forwarded(body.encode(), decision=d, approval_id="apr-1", now=T0 + 0.01)
    raw = json.dumps(start)
    assert "bob@example.com" not in raw and CRED not in raw and TOKEN not in raw
    assert start["request"]["masked"] == {"EMAIL": 1, "SECRET": 2}
    assert start["request"]["bytes"] == len(body.encode()) and start["request"]["truncated"] is False
    assert start["path"] == "/openai/chat/completions?user=[EMAIL]"
    assert start["kind"] == "start" and start["forwarded"] is True
    assert start["session_id"] == "sess-42" and start["session_source"] == "header"
    assert start["received_at_ms"] == 1_700_000_000_000 and start["forwarded_at_ms"] == 1_700_000_000_010
    assert start["caller"] == {"user": "alice", "groups": ["eng", "ml"], "issuer": "https://issuer",
                               "workload": "ns/sa"}
    assert (start["model"], start["operation"], start["stream"], start["approval_id"]) == (
        "gpt-4o", "chat", True, "apr-1")
    assert start["decision"]["rules"] == [{"rule_id": "pii", "action": "mask", "mode": "enforce"},
                                          {"rule_id": "later", "action": "block", "mode": "shadow"}]
    assert start["decision"]["shadow_action"] == "block"
    # only JSON types, no floats: the canonical form round-trips exactly
    assert json.loads(json.dumps(start)) == start
    assert not any(isinstance(v, float) for v in _leaves(start))


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


def test_credential_split_across_chunks_is_masked_in_the_chunk_where_it_ends() -> None:
    rec = recorder()
    rec.forwarded(b"{}", now=T0 + 0.01)
    cut1, cut2 = 10, 25
    chunks = [b"data: here " + CRED[:cut1].encode(), CRED[cut1:cut2].encode(),
              CRED[cut2:].encode() + b" and carol@exa", b"mple.org done\n\n"]
    comp = deliver(rec, chunks)
    assert CRED not in json.dumps(comp)
    for n in range(6, len(CRED)):
        assert CRED[:n] not in text_of(comp)
    assert comp["response"]["chunks"] == [[0, "data: here "], [100, "[SECRET] and "], [150, "[EMAIL] done\n\n"]]
    assert comp["response"]["masked"] == {"EMAIL": 1, "SECRET": 1}
    assert comp["response"]["bytes"] == sum(map(len, chunks))
    assert comp["usage"] == {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
    assert comp["status"] == 200 and comp["stream"] is True
    assert comp["latency_ms"] == 1000 and comp["ttfb_ms"] == 290
    assert comp["first_byte_at_ms"] == 1_700_000_000_300


PIECES = ["hello ", "bob@example.com", " ", CRED, TOKEN, " 4242 4242 4242 4242 ", "ünïcödé ", "\n", "data: "]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(PIECES), max_size=12), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_recorded_chunks_concatenate_to_the_masked_whole_for_any_chunking(parts: list[str], cuts: list[int]) -> None:
    data = " ".join(parts).encode()  # separated: adjacency quirks belong to the masking engine tests
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    rec = recorder()
    rec.forwarded(None, now=T0)
    comp = deliver(rec, chunks)
    profile = recording_profile(RecordingSettings().masking, (CRED, TOKEN))
    assert text_of(comp) == profile.mask(data.decode())[0]
    assert CRED not in text_of(comp) and TOKEN not in text_of(comp) and "bob@example.com" not in text_of(comp)
    offsets = [c[0] for c in comp["response"]["chunks"]]
    assert offsets == sorted(offsets)


def test_request_body_over_the_limit_is_truncated_without_leaking_a_value_across_the_cut() -> None:
    s = RecordingSettings(max_body_bytes=100)
    for at in range(60, 120, 3):
        rec = recorder(s)
        body = ("x " * 200).encode()
        body = body[:at] + CRED.encode() + body[at:]
        start = rec.forwarded(body, now=T0)
        req = start["request"]
        assert req["truncated"] is True and req["bytes"] == len(body)
        assert len(req["body"].encode()) <= 100
        for n in range(8, len(CRED)):
            assert CRED[:n] not in req["body"], (at, n)


def test_response_limits_mark_truncation_and_keep_text_after_the_chunk_limit() -> None:
    s = RecordingSettings(max_body_bytes=1000, max_chunks=3)
    rec = recorder(s)
    rec.forwarded(None, now=T0)
    comp = deliver(rec, [f"part{i} ".encode() for i in range(10)])
    r = comp["response"]
    assert r["chunks_truncated"] is True and r["truncated"] is False
    assert len(r["chunks"]) == 3
    assert text_of(comp) == "".join(f"part{i} " for i in range(10))

    s = RecordingSettings(max_body_bytes=50)
    rec = recorder(s)
    rec.forwarded(None, now=T0)
    big = [b"y" * 40 for _ in range(30)] + [CRED.encode()]
    comp = deliver(rec, big)
    r = comp["response"]
    assert r["truncated"] is True and r["bytes"] == 40 * 30 + len(CRED)
    assert len(text_of(comp).encode()) <= 50

    # a cut-off collection never emits the start of a value that may continue past it
    pieces, truncated, _ = mask_pieces(recording_profile(RecordingSettings().masking, (CRED,)),
                                       [b"ok " + CRED[:20].encode()], 1000, complete=False)
    assert truncated and CRED[:8] not in "".join(pieces)


def test_zero_body_limit_keeps_only_sizes() -> None:
    rec = recorder(RecordingSettings(max_body_bytes=0))
    start = rec.forwarded(b"secret prompt", now=T0)
    assert start["request"] == {"body": "", "bytes": 13, "truncated": True, "masked": {}}


def test_refused_interaction_yields_both_entries() -> None:
    rec = recorder()
    d = Decision(action="block", mode="enforce", rule_id="no-secrets", message="blocked", status=403)
    start, comp = rec.refused(403, "policy_blocked", body=b'{"p": "bob@example.com"}',
                              reply=b'{"error": "blocked"}', decision=d, now=T0 + 0.02)
    assert start["forwarded"] is False and start["forwarded_at_ms"] is None
    assert start["decision"]["action"] == "block" and "[EMAIL]" in start["request"]["body"]
    assert comp["status"] == 403 and comp["error"] == "policy_blocked"
    assert text_of(comp) == '{"error": "blocked"}'
    view = merge_interaction(start, comp)
    assert view["complete"] is True and summarize(view)["action"] == "block"


def test_request_must_come_first() -> None:
    rec = InteractionRecorder(RecordingSettings(), now=T0, interaction_id=uuid.uuid4().hex)
    with pytest.raises(RuntimeError):
        rec.forwarded(b"", now=T0)


def test_merge_and_summary_of_an_incomplete_interaction() -> None:
    rec = recorder()
    start = rec.forwarded(b"{}", now=T0)
    view = merge_interaction(start, None)
    assert view["complete"] is False and summarize(view)["complete"] is False
    assert summarize(view)["user"] == "alice" and summarize(view)["status"] is None


def test_log_line_has_no_bodies() -> None:
    rec = recorder()
    start = rec.forwarded(b'{"prompt": "UNIQUE-PROMPT-TEXT"}', now=T0)
    comp = deliver(rec, [b"UNIQUE-ANSWER-TEXT"])
    for line in (interaction_log_line(start, comp), interaction_log_line(merge_interaction(start, comp))):
        raw = json.dumps(line)
        assert "UNIQUE-PROMPT-TEXT" not in raw and "UNIQUE-ANSWER-TEXT" not in raw
        assert line["event"] == "interaction" and line["user"] == "alice" and line["status"] == 200
        assert line["output_tokens"] == 20 and line["response_chunks"] == 1 and line["complete"] is True
    assert interaction_log_line(start)["complete"] is False
    assert interaction_log_line(comp)["status"] == 200


def test_next_session_gap_rule() -> None:
    assert next_session(None, 100.0, 1800, "new") == ("new", 100.0)
    assert next_session(("s1", 100.0), 1900.0, 1800, "new") == ("s1", 1900.0)
    assert next_session(("s1", 100.0), 1900.5, 1800, "new") == ("new", 1900.5)
    assert next_session(("s1", 500.0), 400.0, 1800, "new") == ("s1", 500.0)  # late entry


def test_session_header_values() -> None:
    assert session_from_header(" abc-1 ") == "abc-1"
    assert session_from_header("conv:42/b") == "conv:42/b"
    for bad in (None, "", "a b", "x" * 200, "-lead", "a*b"):
        assert session_from_header(bad) is None
    rec = recorder(session_header="has space")
    start = rec.forwarded(None, now=T0)
    assert start["session_id"] is None and start["session_source"] == "gap"


PII = ("bob.smith@example.com", "+1 415 555 0132", "4242 4242 4242 4242", "257-28-8896")


@pytest.mark.parametrize("pii", PII)
def test_caller_supplied_identifiers_never_carry_pii_into_a_record(pii: str) -> None:
    rec = InteractionRecorder(RecordingSettings(), now=T0, interaction_id=uuid.uuid4().hex)
    rec.request(request_id=f"req-{pii}", method="POST", path=f"/openai/x/{pii}", provider="openai",
                route=f"/x/{pii}", caller=ALICE, session_header=pii.replace(" ", ""))
    rec.tools = [{"tool": f"lookup_{pii}", "server": "crm", "argument_digest": "d", "action": "allow",
                  "mode": "enforce", "rule_id": None}]
    start = rec.forwarded(b"{}", model=f"gpt-4o {pii}", now=T0)
    complete = rec.complete(now=T0 + 1)
    line = interaction_log_line(start, complete)
    for doc in (start, complete, line):
        assert pii not in json.dumps(doc) and pii.replace(" ", "") not in json.dumps(doc)
    assert start["request_id"] == f"iid-{rec.interaction_id}" == complete["request_id"]
    assert start["session_id"] is None  # ignored: the gap rule applies
    assert start["model"].startswith("gpt-4o [")


def test_plain_identifiers_are_kept_as_given() -> None:
    rec = InteractionRecorder(RecordingSettings(), now=T0, interaction_id=uuid.uuid4().hex)
    rec.request(request_id="7f3c-aa:1", method="POST", path="/openai/x", provider="openai", caller=ALICE,
                session_header="conv-42")
    start = rec.forwarded(b"{}", model="claude-3-5-sonnet-20241022", now=T0)
    assert (start["request_id"], start["session_id"], start["model"]) == (
        "7f3c-aa:1", "conv-42", "claude-3-5-sonnet-20241022")
    assert rec.label("accounts/fireworks/models/llama-v3p1-8b") == "accounts/fireworks/models/llama-v3p1-8b"
    assert rec.label("bad\x00name\nhere") == "badnamehere"


@settings(deadline=None)
@given(st.text(max_size=40), st.sampled_from(PII), st.text(max_size=40))
def test_no_label_or_token_keeps_a_detected_value(before: str, pii: str, after: str) -> None:
    profile = default_profile()
    value = before + " " + pii + " " + after
    assert safe_token(value, profile) is None
    label = safe_label(value, profile) or ""
    assert pii not in label and len(label) <= 128
    assert session_from_header(pii.replace(" ", ""), profile) is None


# -- settings ------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = RecordingSettings.from_config(None)
    assert (s.enabled, s.mode, s.session_header, s.session_gap_seconds) == (True, "required", "x-session-id", 1800)
    assert (s.max_body_bytes, s.max_chunks) == (256 * 1024, 2000)
    assert s.auditors.groups == () and s.auditors.users == ()
    assert "EMAIL" in s.masking.entities and "SECRET" in s.masking.entities


def test_settings_full() -> None:
    s = RecordingSettings.from_config({
        "enabled": False, "mode": "best_effort", "session_header": "x-conversation", "session_gap_seconds": 60,
        "max_body_bytes": 1024, "max_chunks": 10, "retention": {"max_age_hours": 24, "max_entries": 500},
        "spool": {"path": "/tmp/spool.jsonl", "max_bytes": 4096}, "masking": {"entities": ["EMAIL"]},
        "auditors": {"groups": ["security"], "users": ["carol"]},
    })
    assert (s.enabled, s.mode, s.session_header, s.session_gap_seconds) == (False, "best_effort", "x-conversation", 60)
    assert (s.retention.max_age_hours, s.retention.max_entries) == (24, 500)
    assert (s.spool.path, s.spool.max_bytes) == ("/tmp/spool.jsonl", 4096)
    assert s.masking.entities == frozenset({"EMAIL"})
    assert s.auditors.groups == ("security",) and s.auditors.users == ("carol",)


@pytest.mark.parametrize(
    ("raw", "path", "line"),
    [
        ({"mode": "sometimes"}, "recording.mode", 3),
        ({"bogus": 1}, "recording.bogus", 3),
        ({"max_body_bytes": -1}, "recording.max_body_bytes", 3),
        ({"retention": {"max_age_hours": "1d"}}, "recording.retention.max_age_hours", 4),
        ({"masking": {"entities": ["NOPE"]}}, "recording.masking.entities[0]", 4),
        ({"auditors": {"groups": "security"}}, "recording.auditors.groups", 4),
        ({"session_header": "X Session"}, "recording.session_header", 3),
        ({"enabled": "yes"}, "recording.enabled", 3),
    ],
)
def test_settings_errors_name_path_and_line(raw: dict[str, Any], path: str, line: int) -> None:
    lines = {"recording": 2}
    for key, value in raw.items():
        lines[f"recording.{key}"] = 3
        if isinstance(value, dict):
            for sub in value:
                lines[f"recording.{key}.{sub}"] = 4
    with pytest.raises(ConfigError) as ei:
        RecordingSettings.from_config(raw, file="x.yaml", lines=lines)
    err = ei.value
    assert err.path == path and err.file == "x.yaml" and err.line == line, str(err)


@given(st.uuids(version=4), st.booleans())
@example(uuid.UUID("a9b2531d-3362-4382-8690-c0d85114a286"), True)  # "3362 4382 8690" reads as a phone
def test_the_gateways_request_id_is_kept_whatever_its_digits_look_like(rid: uuid.UUID, hyphens: bool) -> None:
    # About one uuid4 in a thousand has digit groups a detector reads as a phone number; the
    # record must still be found by the id the caller was given.
    value = str(rid) if hyphens else rid.hex
    rec = InteractionRecorder(RecordingSettings(), now=T0, interaction_id=uuid.uuid4().hex)
    rec.request(request_id=value, method="POST", path="/openai/x", provider="openai", caller=ALICE)
    assert rec.forwarded(b"{}", now=T0)["request_id"] == value == rec.complete(now=T0 + 1)["request_id"]
