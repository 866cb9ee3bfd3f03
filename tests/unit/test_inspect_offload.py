"""Large request bodies are inspected by a job (``extproc.datapath.inspect``) that gives exactly
what the machine decides inline; the machine asks for it with ``NeedInspection`` and stays pure."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.datapath.inspect import (
    Compiled,
    InspectionFailed,
    InspectionSettings,
    InspectionSpec,
    inspection_settings,
    run_job,
)
from extproc.datapath.machine import (
    Continue,
    Gateway,
    NeedIdentity,
    NeedInspection,
    NeedRecordStart,
    Phase,
    RecordEntries,
    Reply,
    RequestMachine,
    Router,
)
from extproc.errors import ConfigError
from extproc.policy import Policy
from extproc.recording.model import RecordingSettings
from tests.unit.test_machine import ALICE, KEY, headers, providers

POLICY: dict[str, Any] = {
    "rules": [
        {"id": "no-falcon", "match": {"content": {"keywords": ["project falcon"]}}, "action": "block",
         "message": "no"},
        {"id": "mask-contact", "match": {"content": {"detectors": ["EMAIL", "PHONE"]}}, "action": "mask"},
    ],
}


def gateway(*, offload: int | None, policy: Any = POLICY, recording: bool = True) -> Gateway:
    creds = {"openai": KEY}
    spec = InspectionSpec.of(policy, None, None, recording)
    return Gateway(
        router=Router(providers()), credential=creds.get, all_credentials=lambda: list(creds.values()),
        clock=lambda: 0.0, new_id=lambda: "id-1", timer=lambda: 0.0,
        policy=Policy.from_config(policy) if policy is not None else Policy.empty(),
        governed=policy is not None, recording=RecordingSettings() if recording else None,
        inspection=InspectionSettings(offload_bytes=offload if offload is not None else 1 << 30,
                                      workers=1 if offload is not None else 0, max_bytes=1 << 20),
        inspection_spec=spec if offload is not None else None,
    )


def body(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def start(gw: Gateway) -> RequestMachine:
    m = RequestMachine(gw)
    assert isinstance(m.on_request_headers(headers("/openai/chat/completions", authorization="Bearer a.b.c"), False),
                      NeedIdentity)
    assert isinstance(m.on_identity(ALICE), Continue)
    return m


def finish(m: RequestMachine, d: Any) -> tuple[Any, dict[str, Any] | None]:
    """Drive the machine to its request-side decision; returns it and the record's start entry."""
    entry = None
    if isinstance(d, NeedRecordStart):
        entry = d.entry
        d = m.on_record_start(True)
    if isinstance(d, Reply):
        effects = [e for e in m.effects if isinstance(e, RecordEntries)]
        entry = effects[0].start if effects else None
    return d, entry


def run(text: str, offload: int | None) -> tuple[Any, dict[str, Any] | None]:
    m = start(gateway(offload=offload))
    d = m.on_request_body(body(text), True)
    if isinstance(d, NeedInspection):
        assert m.phase is Phase.INSPECT
        d = m.on_inspection(run_job(d.job, Compiled()))
    return finish(m, d)


@pytest.mark.parametrize("text", [
    "hello, plain text",
    "mail bob@example.com or call +1 415 555 0132",
    "about project falcon, from bob@example.com",
])
def test_offloaded_inspection_decides_and_records_like_inline(text: str) -> None:
    inline, inline_entry = run(text, None)
    off, off_entry = run(text, 10)
    assert type(off) is type(inline)
    if isinstance(inline, Continue):
        assert off.body == inline.body and off.set_headers == inline.set_headers
    else:
        assert off.status == inline.status and off.code == inline.code
    assert inline_entry is not None and off_entry is not None
    assert off_entry["request"] == inline_entry["request"]
    assert off_entry["decision"] == inline_entry["decision"]


@settings(deadline=None)
@given(st.lists(st.sampled_from(["word ", "bob@example.com ", "+1 415 555 0132 ", "project falcon ", "é ",
                                 "4242 4242 4242 4242 "]), max_size=30))
def test_offload_is_equivalent_to_inline(parts: list[str]) -> None:
    text = "".join(parts)
    inline, inline_entry = run(text, None)
    off, off_entry = run(text, 0)
    assert type(off) is type(inline)
    assert getattr(off, "body", None) == getattr(inline, "body", None)
    assert (off_entry or {}).get("request") == (inline_entry or {}).get("request")


def test_small_bodies_stay_inline_and_large_ones_are_offloaded() -> None:
    gw = gateway(offload=1000)
    assert not isinstance(start(gw).on_request_body(body("x" * 10), True), NeedInspection)
    need = start(gw).on_request_body(body("x" * 2000), True)
    assert isinstance(need, NeedInspection)
    assert need.timeout_seconds == gw.inspection.timeout_seconds
    assert need.job.request is not None and need.job.record is not None


def test_recorded_only_route_offloads_the_record_masking() -> None:
    m = start(gateway(offload=10, policy=None))
    need = m.on_request_body(body("reach me at bob@example.com"), True)
    assert isinstance(need, NeedInspection) and need.job.request is None
    d, entry = finish(m, m.on_inspection(run_job(need.job, Compiled())))
    assert isinstance(d, Continue) and entry is not None
    assert "bob@example.com" not in entry["request"]["body"] and entry["request"]["masked"] == {"EMAIL": 1}


@pytest.mark.parametrize(("reason", "code"), [("timeout", "inspection_timeout"), ("error", "inspection_failed")])
def test_failed_inspection_fails_closed_and_records_no_body(reason: str, code: str) -> None:
    m = start(gateway(offload=10))
    need = m.on_request_body(body("secret bob@example.com"), True)
    assert isinstance(need, NeedInspection)
    d, entry = finish(m, m.on_inspection(InspectionFailed(reason)))
    assert isinstance(d, Reply) and d.status == 503 and d.code == code
    assert json.loads(d.body)["error"]["code"] == code
    assert entry is not None and entry["request"]["body"] == "" and entry["forwarded"] is False


def test_body_over_the_bound_is_refused_without_inspection() -> None:
    gw = dataclasses.replace(gateway(offload=10), inspection=InspectionSettings(max_bytes=1024, workers=1))
    d = start(gw).on_request_body(body("x" * 2000), True)
    assert isinstance(d, Reply) and d.status == 413 and d.code == "body_too_large"


def test_inspection_settings_are_validated() -> None:
    assert inspection_settings(None, max_message_timeout_seconds=600) == InspectionSettings()
    s = inspection_settings({"offload_bytes": 0, "workers": 4, "timeout_seconds": 10, "max_bytes": 2048},
                            max_message_timeout_seconds=600)
    assert (s.offload_bytes, s.workers, s.timeout_seconds, s.max_bytes) == (0, 4, 10, 2048)
    for bad in ({"workers": -1}, {"timeout_seconds": 0}, {"nope": 1}, {"max_bytes": True}):
        with pytest.raises(ConfigError):
            inspection_settings(bad, max_message_timeout_seconds=600)
    with pytest.raises(ConfigError, match="max_message_timeout"):
        inspection_settings({"timeout_seconds": 60}, max_message_timeout_seconds=30)
