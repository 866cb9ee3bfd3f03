"""The machine at the edge: ambiguous paths, bodies of unmodelled operations, Envoy's own answers."""

from __future__ import annotations

import dataclasses
import json

import pytest

from extproc.datapath.machine import Continue, Gateway, NeedBudget, Phase, Reply, RequestMachine, Router
from tests.unit.test_machine import ALICE, governed, headers


def _body(gw: Gateway, path: str, body: bytes) -> tuple[RequestMachine, object]:
    m = RequestMachine(gw)
    m.on_request_headers(headers(path, authorization="Bearer a.b.c"), False)
    m.on_identity(ALICE)
    return m, m.on_request_body(body, True)


@pytest.mark.parametrize("path", ["/openai/chat%2Fcompletions", "/openai/chat/completions;x=y",
                                  "/openai/x/../chat/completions", "/openai/chat%252Fcompletions"])
def test_ambiguous_paths_are_refused_before_routing(path: str) -> None:
    m = RequestMachine(governed())
    d = m.on_request_headers(headers(path, authorization="Bearer a.b.c"), False)
    assert isinstance(d, Reply) and d.status == 400 and d.code == "invalid_path"
    assert m.info.provider is None  # not even routed


@pytest.mark.parametrize("path", ["/openai/assistants", "/openai/models/x", "/anthropic/v1/whatever"])
def test_content_rules_apply_to_operations_the_gateway_does_not_model(path: str) -> None:
    _, d = _body(governed(), path, json.dumps({"deep": [{"note": "Falcon plans"}]}).encode())
    assert isinstance(d, Reply) and d.code == "policy_blocked"
    _, need = _body(governed(), path, json.dumps({"deep": [{"note": "mail a@b.example"}]}).encode())
    assert isinstance(need, NeedBudget) or isinstance(need, Continue)


def test_an_unmodelled_operation_is_masked() -> None:
    gw = governed()
    gw = dataclasses.replace(gw, policy=gw.policy.__class__.from_config({"rules": [
        {"id": "mask-email", "match": {"content": {"detectors": ["EMAIL"]}}, "action": "mask"}]}))
    _, d = _body(gw, "/openai/assistants", json.dumps({"x": {"y": "mail a@b.example"}}).encode())
    assert isinstance(d, Continue) and d.body is not None
    assert json.loads(d.body) == {"x": {"y": "mail [EMAIL]"}}


def test_a_body_that_cannot_be_read_is_refused_on_a_model_api() -> None:
    _, d = _body(governed(), "/openai/audio/transcriptions", b"--b\r\n\r\nFalcon\r\n--b--")
    assert isinstance(d, Reply) and (d.status, d.code) == (403, "uninspectable_body")


def test_a_route_may_allow_unreadable_bodies_on_listed_paths() -> None:
    gw = governed()
    providers = [p.model_copy(update={"allow_uninspectable": ("/files", "/audio/*")}) if p.name == "openai" else p
                 for p in gw.router._routes]
    gw = dataclasses.replace(gw, router=Router(providers))
    for path in ("/openai/files", "/openai/audio/transcriptions"):
        _, d = _body(gw, path, b"\x89PNG binary")
        assert not isinstance(d, Reply), path
    _, d = _body(gw, "/openai/images/edits", b"\x89PNG binary")
    assert isinstance(d, Reply) and d.code == "uninspectable_body"


def test_an_unreadable_body_on_a_generic_api_passes() -> None:
    m = RequestMachine(governed())
    d = m.on_request_headers(headers("/open/upload"), False)
    assert isinstance(d, Continue)
    assert not isinstance(m.on_request_body(b"\x00\x01binary", True), Reply)


def test_envoys_own_answer_before_routing_passes_untouched() -> None:
    """A local reply to a request that never reached us (Envoy refused it first)."""
    m = RequestMachine(governed())
    d = m.on_response_headers({":status": "404", "content-type": "application/json"}, False)
    assert d == Continue()
    body = b'{"error": {"code": "no_route"}}'
    assert m.on_response_body(body, True) == Continue() and m.phase is Phase.DONE
